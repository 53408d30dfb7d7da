//! Settings for running behind a reverse proxy (nginx, Caddy): which proxies'
//! forwarding headers are believed, and the URL clients use from outside.

use super::forwarded::TrustedProxies;

/// Command line and environment of the reverse-proxy settings.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ProxyArgs {
    /// Reverse proxies (addresses or CIDR blocks, separated by commas or spaces) whose
    /// X-Forwarded-For / Forwarded headers name the client, for the access log and the
    /// wrong-password throttle (never for authorisation; connection limits stay per
    /// TCP peer). Unset: the headers are ignored, the TCP peer is the client.
    #[arg(long, env = "NIX_STORED_TRUSTED_PROXIES")]
    pub trusted_proxies: Option<String>,

    /// The URL clients reach this server at from outside (http:// or https://, e.g.
    /// https://cache.example.org), when a reverse proxy stands in front of it.
    #[arg(long, env = "NIX_STORED_PUBLIC_URL")]
    pub public_url: Option<String>,
}

/// The validated reverse-proxy settings.
#[derive(Debug, Clone, Default)]
pub struct ProxySettings {
    /// Proxies whose forwarding headers are believed.
    pub trusted: TrustedProxies,
    /// The outside URL, without a trailing slash.
    pub public_url: Option<String>,
}

impl ProxySettings {
    /// Checks the settings; the error is a one-line message naming the variable.
    pub fn from_args(args: &ProxyArgs) -> Result<Self, String> {
        let trusted = TrustedProxies::parse(args.trusted_proxies.as_deref().unwrap_or(""))
            .map_err(|e| format!("NIX_STORED_TRUSTED_PROXIES: {e}"))?;
        let public_url = args
            .public_url
            .as_deref()
            .filter(|u| !u.is_empty())
            .map(public_url)
            .transpose()
            .map_err(|e| format!("NIX_STORED_PUBLIC_URL: {e}"))?;
        Ok(ProxySettings {
            trusted,
            public_url,
        })
    }
}

/// `url` if it is an absolute http(s) URL with a host and no query or fragment,
/// without its trailing slashes.
fn public_url(url: &str) -> Result<String, String> {
    let bad = |why: &str| Err(format!("{url:?} {why}"));
    let Some((scheme, rest)) = url.split_once("://") else {
        return bad("is no URL (expected e.g. https://cache.example.org)");
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return bad("is neither http:// nor https://");
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("contains white space or control characters");
    }
    if url.contains(['?', '#']) {
        return bad("has a query or fragment");
    }
    let authority = rest.split('/').next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if authority.contains('@') {
        return bad("contains credentials");
    }
    let host_only = match host.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map(|(h, _)| h).unwrap_or(""),
        None => host.split(':').next().unwrap_or(""),
    };
    if host_only.is_empty() {
        return bad("has no host");
    }
    if let Some((_, port)) = host.rsplit_once(':').filter(|_| !host.ends_with(']')) {
        if port.parse::<u16>().is_err() {
            return bad("has an invalid port");
        }
    }
    Ok(url.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_urls_are_checked() {
        assert_eq!(
            public_url("https://cache.example.org/").as_deref(),
            Ok("https://cache.example.org")
        );
        assert!(public_url("http://[2001:db8::1]:8080/nix").is_ok());
        assert!(public_url("HTTPS://cache.example.org:443").is_ok());
        for bad in [
            "cache.example.org",
            "ftp://cache.example.org",
            "https://",
            "https://:80",
            "https://a.org:x",
            "https://u:p@a.org",
            "https://a.org/?q",
            "https://a .org",
        ] {
            assert!(public_url(bad).is_err(), "{bad}");
        }
    }
}
