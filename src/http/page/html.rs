//! The page as HTML: server-rendered, one inline style sheet, no script. Every value
//! from outside goes through [`html`].

use std::fmt::Write;

use super::escape::{html, query_value};
use super::view::{PathView, Summary, Usage};
use crate::cache::catalog::{PathLink, PathSummary};

const STYLE: &str = include_str!("style.css");

/// `bytes` for people: 1.5 MiB.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Seconds since the epoch as UTC `YYYY-MM-DD HH:MM` (Howard Hinnant's
/// days-to-civil algorithm).
pub fn time(secs: u32) -> String {
    let days = i64::from(secs / 86_400);
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60
    )
}

fn head(out: &mut String, title: &str) {
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<meta name=\"color-scheme\" content=\"light dark\">\
<title>{}</title><style>{STYLE}</style></head><body><main>",
        html(title)
    );
}

fn foot(out: &mut String) {
    out.push_str(
        "<p class=\"muted\">Served by nix-stored · <a href=\"/api/summary\">JSON</a> · \
<a href=\"/openapi.json\">OpenAPI</a></p></main></body></html>\n",
    );
}

fn signers_text(p: &PathSummary) -> String {
    let names: Vec<&str> = p
        .signers
        .iter()
        .map(|s| s.as_deref().unwrap_or("(other key)"))
        .collect();
    if names.is_empty() {
        "unsigned".into()
    } else {
        names.join(", ")
    }
}

fn path_table(out: &mut String, paths: &[PathSummary]) {
    out.push_str(
        "<div class=\"table\"><table><thead><tr><th>Name</th><th class=\"num\">Size</th>\
<th class=\"hide-narrow\">Signed by</th><th class=\"hide-narrow\">Stored (UTC)</th></tr></thead><tbody>",
    );
    for p in paths {
        let _ = write!(
            out,
            "<tr><td class=\"name\"><a href=\"/path/{}\">{}</a></td><td class=\"num\">{}</td>\
<td class=\"hide-narrow\">{}</td><td class=\"hide-narrow\">{}</td></tr>",
            html(&p.hash),
            html(&p.name),
            size(p.file_size),
            html(&signers_text(p)),
            time(p.stored)
        );
    }
    out.push_str("</tbody></table></div>");
}

fn figure(out: &mut String, value: &str, label: &str) {
    let _ = write!(
        out,
        "<div class=\"figure\"><b>{}</b><span>{}</span></div>",
        html(value),
        html(label)
    );
}

fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn rate(r: Option<f64>) -> String {
    r.map_or_else(|| "–".into(), |r| format!("{:.0} %", r * 100.0))
}

/// The keys a client should trust: the configured ones, or the names seen on
/// stored narinfos with a placeholder for the key.
fn key_list(u: &Usage) -> Vec<String> {
    if !u.trusted_keys.is_empty() {
        return u.trusted_keys.clone();
    }
    u.signers
        .iter()
        .filter_map(|s| s.name.as_ref())
        .map(|n| format!("{n}:<public key>"))
        .collect()
}

fn usage_section(out: &mut String, u: &Usage) {
    let keys = key_list(u);
    let _ = write!(
        out,
        "<section id=\"use\"><h2>Use this cache</h2><p>Substituter URL: <code>{}</code></p>",
        html(&u.url)
    );
    out.push_str("<p>In <code>nix.conf</code> (<code>/etc/nix/nix.conf</code>):</p><pre>");
    let _ = writeln!(out, "extra-substituters = {}", html(&u.url));
    if !keys.is_empty() {
        let _ = writeln!(out, "extra-trusted-public-keys = {}", html(&keys.join(" ")));
    }
    if u.read_auth {
        out.push_str("netrc-file = /etc/nix/netrc\n");
    }
    out.push_str("</pre><p>On NixOS (<code>configuration.nix</code>):</p><pre>nix.settings = {\n");
    let _ = writeln!(out, "  substituters = [ \"{}\" ];", html(&u.url));
    if !keys.is_empty() {
        let quoted: Vec<String> = keys.iter().map(|k| format!("\"{k}\"")).collect();
        let _ = writeln!(
            out,
            "  trusted-public-keys = [ {} ];",
            html(&quoted.join(" "))
        );
    }
    if u.read_auth {
        out.push_str("  netrc-file = \"/etc/nix/netrc\";\n");
    }
    out.push_str("};</pre>");
    if u.read_auth {
        let _ = write!(
            out,
            "<p>Reading needs credentials: put the read user's in <code>/etc/nix/netrc</code>:</p>\
<pre>machine {} login &lt;user&gt; password &lt;password&gt;</pre>",
            html(&u.host)
        );
    }
    if u.trusted_keys.is_empty() && !keys.is_empty() {
        out.push_str(
            "<p class=\"muted\">Replace <code>&lt;public key&gt;</code> with the public key of \
each signer you trust (from <code>nix key convert-secret-to-public</code>).</p>",
        );
    }
    if u.signers.is_empty() {
        out.push_str("<p class=\"muted\">No stored path is signed yet.</p>");
    } else {
        out.push_str("<p>Signing keys seen on stored paths:</p><ul class=\"links\">");
        for s in &u.signers {
            let _ = write!(
                out,
                "<li><code>{}</code> – {}</li>",
                html(s.name.as_deref().unwrap_or("(other keys)")),
                count(s.paths, "path", "paths")
            );
        }
        out.push_str("</ul>");
    }
    out.push_str("</section>");
}

fn search_form(out: &mut String, query: &str) {
    let _ = write!(
        out,
        "<form action=\"/\" method=\"get\" role=\"search\"><input type=\"search\" name=\"q\" \
value=\"{}\" placeholder=\"Search by name, e.g. hello\" aria-label=\"Search by name\">\
<button type=\"submit\">Search</button></form>",
        html(query)
    );
}

/// `GET /`: the summary, and the results of a search when there is a query.
pub fn summary(s: &Summary, search: Option<(&str, &[PathSummary])>) -> String {
    let mut out = String::with_capacity(16 * 1024);
    head(&mut out, &format!("Nix binary cache at {}", s.usage.url));
    let _ = write!(
        out,
        "<header><h1>Nix binary cache</h1><span class=\"muted\">{}</span></header>",
        html(&s.usage.url)
    );
    out.push_str("<section id=\"search\"><h2>Search</h2>");
    search_form(&mut out, search.map_or("", |(q, _)| q));
    if let Some((q, results)) = search {
        if results.is_empty() {
            let _ = write!(
                out,
                "<p>No stored path has <code>{}</code> in its name.</p>",
                html(q)
            );
        } else {
            let _ = write!(
                out,
                "<p>{} with <code>{}</code> in their name, newest first{}:</p>",
                count(results.len() as u64, "path", "paths"),
                html(q),
                if results.len() == super::view::PAGE_RESULTS {
                    " (the first ones; <a href=\"/api/search?q=".to_owned()
                        + &html(&query_value(q)).to_string()
                        + "&amp;limit=200\">more as JSON</a>)"
                } else {
                    String::new()
                }
            );
            path_table(&mut out, results);
        }
    }
    out.push_str("</section>");
    usage_section(&mut out, &s.usage);
    out.push_str("<section id=\"figures\"><h2>Figures</h2><div class=\"figures\">");
    let f = &s.figures;
    figure(&mut out, &f.paths.to_string(), "store paths");
    figure(&mut out, &size(f.file_bytes), "NAR files stored");
    figure(&mut out, &size(f.nar_bytes), "unpacked (NarSize)");
    if let Some((stored, max)) = s.quota {
        let used = if max > 0 {
            stored as f64 * 100.0 / max as f64
        } else {
            0.0
        };
        figure(
            &mut out,
            &format!("{used:.0} %"),
            &format!("of the {} quota ({})", size(max), size(stored)),
        );
    }
    figure(&mut out, &s.hour.uploads.to_string(), "uploads, last hour");
    figure(&mut out, &s.day.uploads.to_string(), "uploads, last day");
    figure(
        &mut out,
        &s.hour.downloads.to_string(),
        "downloads, last hour",
    );
    figure(
        &mut out,
        &s.day.downloads.to_string(),
        "downloads, last day",
    );
    figure(&mut out, &rate(s.hour.hit_rate()), "hit rate, last hour");
    figure(&mut out, &rate(s.day.hit_rate()), "hit rate, last day");
    out.push_str("</div>");
    if !f.complete {
        out.push_str("<p class=\"muted\">Still reading the cache: figures are partial.</p>");
    }
    out.push_str("</section><section id=\"latest\"><h2>Latest uploads</h2>");
    if s.latest.is_empty() {
        out.push_str("<p class=\"muted\">Nothing stored yet.</p>");
    } else {
        path_table(&mut out, &s.latest);
    }
    out.push_str("</section>");
    foot(&mut out);
    out
}

fn links(out: &mut String, links: &[PathLink]) {
    if links.is_empty() {
        out.push_str("<p class=\"muted\">None.</p>");
        return;
    }
    out.push_str("<ul class=\"links\">");
    for l in links {
        match &l.name {
            Some(name) => {
                let _ = write!(
                    out,
                    "<li><a href=\"/path/{}\">{}-{}</a></li>",
                    html(&l.hash),
                    html(&l.hash),
                    html(name)
                );
            }
            None => {
                let _ = write!(
                    out,
                    "<li><code>{}</code> <span class=\"muted\">(not in this cache)</span></li>",
                    html(&l.hash)
                );
            }
        }
    }
    out.push_str("</ul>");
}

/// `GET /path/<hash>`: one path.
pub fn path(v: &PathView, store_dir: &str) -> String {
    let p = &v.detail.summary;
    let full = format!("{store_dir}/{}-{}", p.hash, p.name);
    let mut out = String::with_capacity(8 * 1024);
    head(&mut out, &format!("{} – Nix binary cache", p.name));
    let _ = write!(
        out,
        "<header><h1>{}</h1><a href=\"/\">← the cache</a></header><section id=\"path\">\
<p><code>{}</code></p><div class=\"figures\">",
        html(&p.name),
        html(&full)
    );
    figure(&mut out, &size(p.nar_size), "NAR size");
    figure(&mut out, &size(p.file_size), "file size");
    let c = &v.detail.closure;
    let at_least = if c.complete { "" } else { "≥ " };
    figure(
        &mut out,
        &format!("{at_least}{}", size(c.nar_size)),
        "closure size",
    );
    figure(
        &mut out,
        &format!("{at_least}{}", c.paths),
        "paths in its closure",
    );
    out.push_str("</div>");
    if !c.complete {
        let _ = write!(
            out,
            "<p class=\"muted\">Its closure was walked to {} paths only: the figures are lower bounds.</p>",
            crate::cache::catalog::CLOSURE_LIMIT
        );
    }
    if c.missing > 0 {
        let _ = write!(
            out,
            "<p class=\"muted\">{} of its closure not in this cache.</p>",
            count(c.missing, "path", "paths")
        );
    }
    if let Some(nar) = &v.nar {
        let _ = write!(
            out,
            "<p><a href=\"/{}\" download>Download the NAR</a> · <a href=\"/{}.narinfo\">narinfo</a></p>",
            html(nar),
            html(&p.hash)
        );
    }
    out.push_str("</section><section id=\"narinfo\"><h2>Narinfo</h2><dl>");
    for (k, value) in &v.fields {
        if k == "References" {
            continue;
        }
        let _ = write!(
            out,
            "<dt>{}</dt><dd><code>{}</code></dd>",
            html(k),
            html(value)
        );
    }
    let _ = write!(
        out,
        "<dt>Stored</dt><dd>{} UTC</dd></dl></section><section id=\"references\"><h2>References ({})</h2>",
        time(p.stored),
        v.detail.references.len()
    );
    links(&mut out, &v.detail.references);
    let _ = write!(
        out,
        "</section><section id=\"referrers\"><h2>Referrers ({})</h2>",
        v.detail.referrers_total
    );
    links(&mut out, &v.detail.referrers);
    if v.detail.referrers_total > v.detail.referrers.len() {
        let _ = write!(
            out,
            "<p class=\"muted\">The {} newest are listed.</p>",
            v.detail.referrers.len()
        );
    }
    out.push_str("</section>");
    foot(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_times() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(3 << 30), "3.0 GiB");
        assert_eq!(time(0), "1970-01-01 00:00");
        assert_eq!(time(951_782_400), "2000-02-29 00:00");
        assert_eq!(time(1_764_547_500), "2025-12-01 00:05");
    }
}
