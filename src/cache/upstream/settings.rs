//! Settings of the pull-through upstream caches: which caches, which keys their
//! narinfos must be signed with, and how long to wait and to remember misses.

use std::time::Duration;

use nix_narinfo::TrustedPublicKey;
#[cfg(feature = "upstream")]
use reqwest::Url;

use crate::config::values::{self, TrustedKeys};

/// Command line and environment of the upstream settings.
#[derive(Debug, Clone, clap::Args)]
pub struct UpstreamArgs {
    /// Space-separated URLs of binary caches (e.g. https://cache.nixos.org), asked in
    /// this order for a narinfo this cache does not hold; a verified hit is stored here
    /// and served. Credentials as userinfo (https://user:pass@host). Unset: none.
    #[arg(long, env = "NIX_STORED_UPSTREAMS", hide_env_values = true)]
    pub upstreams: Option<String>,

    /// Space-separated public keys (`name:base64`, as in nix.conf's
    /// trusted-public-keys) an upstream narinfo must carry a valid signature by; one
    /// that does not is never stored or served. Required with NIX_STORED_UPSTREAMS.
    #[arg(long, env = "NIX_STORED_UPSTREAM_KEYS", default_value = "", value_parser = values::trusted_keys)]
    pub upstream_keys: TrustedKeys,

    /// Seconds an upstream gets to deliver a whole narinfo (connect, headers and body:
    /// a narinfo request waits at most this per upstream), and, for a NAR, to answer
    /// and to send each next piece; then it counts as down for that request.
    #[arg(long, env = "NIX_STORED_UPSTREAM_TIMEOUT", default_value = "10", value_parser = clap::value_parser!(u64).range(1..))]
    pub upstream_timeout: u64,

    /// Seconds a path no upstream had (or could deliver) is answered 404 without
    /// asking them again. 0: ask every time.
    #[arg(long, env = "NIX_STORED_UPSTREAM_NEGATIVE_TTL", default_value = "60")]
    pub upstream_negative_ttl: u64,
}

/// One upstream cache.
#[derive(Clone)]
pub struct UpstreamUrl {
    /// The URL requests are made from, with its credentials, without a trailing slash.
    #[cfg(feature = "upstream")]
    pub(super) base: Url,
    /// The URL without credentials, for logs and metrics.
    pub name: String,
}

impl std::fmt::Debug for UpstreamUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credentials.
        f.write_str(&self.name)
    }
}

/// The validated upstream settings.
#[derive(Debug, Clone, Default)]
pub struct UpstreamSettings {
    /// The caches, in priority order; empty: no upstream.
    pub upstreams: Vec<UpstreamUrl>,
    /// Keys an upstream narinfo must be signed with.
    pub keys: Vec<TrustedPublicKey>,
    /// The time for a whole narinfo, and for each answer and body piece of a NAR.
    pub timeout: Duration,
    /// How long a miss is remembered.
    pub negative_ttl: Duration,
}

impl UpstreamSettings {
    /// Checks the settings; the error is a one-line message naming the variable.
    pub fn from_args(args: &UpstreamArgs) -> Result<Self, String> {
        let listed = args.upstreams.as_deref().unwrap_or("").split_whitespace();
        if cfg!(not(feature = "upstream")) && listed.clone().next().is_some() {
            return Err(
                "upstream caches are configured (NIX_STORED_UPSTREAMS) but this binary was built without the upstream feature".into(),
            );
        }
        let upstreams = listed
            .map(|u| parse_url(u).map_err(|e| format!("NIX_STORED_UPSTREAMS: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        if !upstreams.is_empty() && args.upstream_keys.0.is_empty() {
            return Err(
                "NIX_STORED_UPSTREAMS needs NIX_STORED_UPSTREAM_KEYS: the public keys upstream narinfos must be signed with".into(),
            );
        }
        Ok(UpstreamSettings {
            upstreams,
            keys: args.upstream_keys.0.clone(),
            timeout: Duration::from_secs(args.upstream_timeout),
            negative_ttl: Duration::from_secs(args.upstream_negative_ttl),
        })
    }

    /// Whether any upstream is configured.
    pub fn enabled(&self) -> bool {
        !self.upstreams.is_empty()
    }
}

/// An http(s) URL with a host and no query or fragment.
#[cfg(feature = "upstream")]
fn parse_url(text: &str) -> Result<UpstreamUrl, String> {
    // The text may hold a password: errors name the redacted form only.
    let redacted = redact(text);
    let url = Url::parse(text.trim_end_matches('/'))
        .map_err(|e| format!("{redacted:?} is not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{redacted:?} is neither http:// nor https://"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{redacted:?} has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{redacted:?} has a query or fragment"));
    }
    let mut public = url.clone();
    let _ = public.set_username("");
    let _ = public.set_password(None);
    let name = public.as_str().trim_end_matches('/').to_owned();
    Ok(UpstreamUrl { base: url, name })
}

/// Never called: the lean build refuses upstreams before parsing them.
#[cfg(not(feature = "upstream"))]
fn parse_url(text: &str) -> Result<UpstreamUrl, String> {
    Err(format!(
        "{:?}: this binary has no upstream client",
        redact(text)
    ))
}

/// `text` with anything between `://` and `@` replaced.
fn redact(text: &str) -> String {
    match text.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
                None => text.to_owned(),
            }
        }
        None => text.to_owned(),
    }
}

#[cfg(feature = "upstream")]
impl UpstreamUrl {
    /// The URL of `path` (relative, e.g. `<hash>.narinfo`) on this upstream.
    pub(super) fn join(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        let base_path = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{base_path}/{path}"));
        url
    }
}

#[cfg(all(test, feature = "upstream"))]
mod tests {
    use super::*;

    fn args(upstreams: &str, keys: &str) -> UpstreamArgs {
        UpstreamArgs {
            upstreams: Some(upstreams.into()),
            upstream_keys: values::trusted_keys(keys).unwrap(),
            upstream_timeout: 10,
            upstream_negative_ttl: 60,
        }
    }

    const KEY: &str = "test-cache-1:DZFFwF/5PPclp0cIqjJCty5ElDaVKFCiNBqWUhBOK08=";

    #[test]
    fn urls_keep_credentials_for_requests_only() {
        let s = UpstreamSettings::from_args(&args(
            "https://user:s3cret@cache.example.org/sub/ http://127.0.0.1:8080",
            KEY,
        ))
        .unwrap();
        assert_eq!(s.upstreams.len(), 2);
        assert_eq!(s.upstreams[0].name, "https://cache.example.org/sub");
        assert!(!format!("{s:?}").contains("s3cret"));
        let url = s.upstreams[0].join("abc.narinfo");
        assert_eq!(
            url.as_str(),
            "https://user:s3cret@cache.example.org/sub/abc.narinfo"
        );
        assert_eq!(
            s.upstreams[1].join("nar/x.nar.xz").as_str(),
            "http://127.0.0.1:8080/nar/x.nar.xz"
        );
    }

    #[test]
    fn upstreams_need_keys_and_valid_urls() {
        let e = UpstreamSettings::from_args(&args("https://cache.nixos.org", "")).unwrap_err();
        assert!(e.contains("NIX_STORED_UPSTREAM_KEYS"), "{e}");
        for bad in ["ftp://x", "https://x/?q", "not a url", "https://u:pw@/"] {
            let e = UpstreamSettings::from_args(&args(bad, KEY)).unwrap_err();
            assert!(e.starts_with("NIX_STORED_UPSTREAMS"), "{e}");
            assert!(!e.contains("pw@"), "{e}");
        }
        let none = UpstreamSettings::from_args(&UpstreamArgs {
            upstreams: None,
            ..args("", "")
        })
        .unwrap();
        assert!(!none.enabled());
    }
}
