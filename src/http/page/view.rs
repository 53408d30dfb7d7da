//! What the page shows, gathered once for both renderings (HTML and JSON).

use base64::Engine as _;
use hyper::header;
use hyper::http::request::Parts;

use super::super::metrics::activity::Counts;
use super::super::AppState;
use crate::cache::catalog::{Figures, PathDetail, PathSummary, SignerCount};

/// Paths in the list of latest uploads.
pub const LATEST: usize = 20;
/// Most search results a request gets.
pub const MAX_RESULTS: usize = 200;
/// Search results the page lists.
pub const PAGE_RESULTS: usize = 50;

/// How to use the cache.
pub struct Usage {
    /// The substituter URL, as the request reached the server (or the configured
    /// public URL).
    pub url: String,
    /// Its host, for a netrc line.
    pub host: String,
    /// The store directory.
    pub store_dir: String,
    /// `Priority` of nix-cache-info.
    pub priority: i64,
    /// Whether reads need credentials.
    pub read_auth: bool,
    /// The configured trusted keys (`name:base64`): the keys a client should trust.
    pub trusted_keys: Vec<String>,
    /// Key names seen on stored narinfos.
    pub signers: Vec<SignerCount>,
}

/// The cache's summary.
pub struct Summary {
    /// How to use it.
    pub usage: Usage,
    /// Paths and bytes.
    pub figures: Figures,
    /// Bytes stored and the quota, when retention has a quota (and has counted).
    pub quota: Option<(u64, u64)>,
    /// The last hour.
    pub hour: Counts,
    /// The last day.
    pub day: Counts,
    /// The latest uploads.
    pub latest: Vec<PathSummary>,
}

/// A path's page.
pub struct PathView {
    /// From the catalog.
    pub detail: PathDetail,
    /// The stored narinfo's fields, in their order.
    pub fields: Vec<(String, String)>,
    /// Its NAR's key (`nar/…`), when it names one this server serves.
    pub nar: Option<String>,
}

/// The URL the client used to reach the server: the configured public URL, or the
/// request's authority with this server's scheme. A Host that is no host name is
/// ignored.
fn base_url(app: &AppState, parts: &Parts) -> String {
    if let Some(url) = &app.public_url {
        return url.clone();
    }
    let host = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
        })
        .unwrap_or_else(|| "localhost".into());
    let scheme = if app.tls { "https" } else { "http" };
    format!("{scheme}://{host}")
}

fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or("");
    match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or("").to_owned(),
        None => authority.split(':').next().unwrap_or("").to_owned(),
    }
}

/// How to use the cache, as the request sees it.
pub fn usage(app: &AppState, parts: &Parts) -> Usage {
    let url = base_url(app, parts);
    let settings = app.cache.settings();
    Usage {
        host: host_of(&url),
        url,
        store_dir: settings.store_dir.as_str().to_owned(),
        priority: settings.priority,
        read_auth: app.auth.reads_are_private(),
        trusted_keys: settings
            .trusted_keys
            .iter()
            .map(|k| {
                format!(
                    "{}:{}",
                    k.name,
                    base64::engine::general_purpose::STANDARD.encode(k.key.to_bytes())
                )
            })
            .collect(),
        signers: app.cache.catalog().signers(),
    }
}

/// The summary the page and `/api/summary` show.
pub fn summary(app: &AppState, parts: &Parts) -> Summary {
    let catalog = app.cache.catalog();
    let retention = app.cache.retention();
    let quota = retention
        .settings()
        .max_size
        .and_then(|max| retention.stored().map(|(_, bytes)| (bytes, max)));
    // Kept whenever the page is on, which is the only way here.
    let last = |minutes| {
        app.metrics
            .activity
            .as_ref()
            .map(|a| a.last(minutes))
            .unwrap_or_default()
    };
    Summary {
        usage: usage(app, parts),
        figures: catalog.figures(),
        quota,
        hour: last(60),
        day: last(24 * 60),
        latest: catalog.latest(LATEST),
    }
}

/// The page of the path of store hash `hash`, `None` when it is not stored.
pub async fn path(
    app: &AppState,
    hash: &str,
) -> Result<Option<PathView>, crate::cache::CacheError> {
    let Some(detail) = app.cache.catalog().path(hash) else {
        return Ok(None);
    };
    let Some(text) = app.cache.narinfo_text(hash).await? else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&text);
    let fields: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect();
    // Only a NAR key of this cache becomes a link: another writer's URL could point
    // anywhere (`//elsewhere`, `javascript:`).
    let nar = fields
        .iter()
        .find(|(k, _)| k == "URL")
        .map(|(_, v)| v.clone())
        .filter(|u| crate::cache::graph::NarKey::parse(u).is_some());
    Ok(Some(PathView {
        detail,
        fields,
        nar,
    }))
}
