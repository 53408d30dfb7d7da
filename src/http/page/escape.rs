//! The one escaping function of the page: everything that reaches its HTML from
//! outside (names, narinfo fields, key names, the Host header, the query) goes
//! through [`html`].

use std::fmt::{self, Display, Write};

/// `text` made safe as HTML text and as a double- or single-quoted attribute value.
pub struct Html<'a>(pub &'a str);

/// Shorthand for [`Html`].
pub fn html(text: &str) -> Html<'_> {
    Html(text)
}

impl Display for Html<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..i])?;
            f.write_str(match rest.as_bytes()[i] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[i + 1..];
        }
        f.write_str(rest)
    }
}

/// `text` percent-encoded as a query value (everything but unreserved characters).
pub fn query_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The value of parameter `name` in a query string, percent-decoded (`+` is a
/// space); `None` when absent or not UTF-8.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    let query = query?;
    let raw = query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)?
        .1;
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(raw.get(i + 1..i + 3).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_is_escaped() {
        assert_eq!(
            html("<script>alert('x')</script> & \"q\"").to_string(),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert_eq!(html("hello-2.12").to_string(), "hello-2.12");
        assert_eq!(html("&amp;").to_string(), "&amp;amp;");
        assert_eq!(html("é<").to_string(), "é&lt;");
    }

    #[test]
    fn queries_round_trip() {
        assert_eq!(query_param(Some("q=hello"), "q").as_deref(), Some("hello"));
        assert_eq!(
            query_param(Some("a=1&q=a+b%2Fc"), "q").as_deref(),
            Some("a b/c")
        );
        assert_eq!(
            query_param(Some("q=%3Cx%3E%"), "q").as_deref(),
            Some("<x>%")
        );
        assert_eq!(query_param(Some("q"), "q").as_deref(), Some(""));
        assert_eq!(query_param(Some("q=%ff"), "q"), None);
        assert_eq!(query_param(None, "q"), None);
        assert_eq!(query_value("a b&<"), "a%20b%26%3C");
    }
}
