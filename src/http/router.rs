//! The route table: every request path is parsed once, here, into what it names.
//! Handlers, metric labels and log fields all derive from the [`Target`].
//!
//! | path                                   | target                     |
//! |----------------------------------------|----------------------------|
//! | `/metrics`                             | [`Target::Metrics`]        |
//! | `/healthz`, `/readyz`                  | [`Target::Healthz`], [`Target::Readyz`] |
//! | `/openapi.json`                        | [`Target::OpenApi`]        |
//! | `/`, `/path/<hash>`                    | [`Target::Page`]           |
//! | `/api/summary`, `/api/search`, `/api/path/<hash>` | [`Target::Api`] |
//! | anything `cache::key` accepts          | [`Target::Object`]         |
//! | anything else                          | [`Target::Invalid`]: 404 to reads, 400 to uploads |

use super::metrics::Route;
use crate::cache::key::{KeyError, Kind, ObjectKey};

/// What a request path names.
#[derive(Debug)]
pub enum Target {
    /// A cache object (validated key).
    Object(ObjectKey),
    /// No cache object, with the key parser's reason.
    Invalid(KeyError),
    /// `/metrics`.
    Metrics,
    /// `/healthz`: the process answers.
    Healthz,
    /// `/readyz`: the storage answers.
    Readyz,
    /// `/openapi.json`.
    OpenApi,
    /// The page for people: `/` or a path's page.
    Page(Page),
    /// The page's data as JSON under `/api/`.
    Api(Page),
}

/// What the page (or its JSON twin) shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Page {
    /// The cache's summary (`/`, `/api/summary`); `/` also searches.
    Summary,
    /// A search by name (`/api/search`).
    Search,
    /// One store path, by the hash as written in the request.
    Path(String),
}

impl Target {
    /// Parses a request path (as sent, percent-encoded, without the query). None of
    /// the server's own paths can be a cache key, so the order does not matter.
    pub fn parse(path: &str) -> Target {
        match path {
            "/metrics" => Target::Metrics,
            "/healthz" => Target::Healthz,
            "/readyz" => Target::Readyz,
            "/openapi.json" => Target::OpenApi,
            "/" => Target::Page(Page::Summary),
            "/api/summary" => Target::Api(Page::Summary),
            "/api/search" => Target::Api(Page::Search),
            _ if path.starts_with("/path/") => Target::Page(Page::Path(path[6..].to_owned())),
            _ if path.starts_with("/api/path/") => Target::Api(Page::Path(path[10..].to_owned())),
            _ => match ObjectKey::parse(path) {
                Ok(key) => Target::Object(key),
                Err(e) => Target::Invalid(e),
            },
        }
    }

    /// The `route` label of the request metrics.
    pub fn label(&self) -> Route {
        match self {
            Target::Object(key) => match key.kind() {
                Kind::CacheInfo => Route::CacheInfo,
                Kind::NarInfo => Route::NarInfo,
                Kind::Nar => Route::Nar,
                Kind::Listing => Route::Listing,
                Kind::Log => Route::Log,
                Kind::DebugInfo => Route::DebugInfo,
                Kind::Realisation => Route::Realisation,
            },
            Target::Invalid(_) => Route::Other,
            Target::Metrics => Route::Metrics,
            Target::Healthz | Target::Readyz => Route::Health,
            Target::OpenApi => Route::OpenApi,
            Target::Page(_) => Route::Page,
            Target::Api(_) => Route::Api,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "0a2v3f8dzxkymxpq4x5ifnh5i8m8kl3d";

    #[test]
    fn every_path_has_one_target_and_label() {
        let cases = [
            ("/metrics", Route::Metrics),
            ("/healthz", Route::Health),
            ("/readyz", Route::Health),
            ("/openapi.json", Route::OpenApi),
            ("/nix-cache-info", Route::CacheInfo),
            (&format!("/{H}.narinfo"), Route::NarInfo),
            (&format!("/{H}.ls"), Route::Listing),
            (&format!("/log/{H}-x.drv"), Route::Log),
            ("/nar/x.nar", Route::Other),
            ("/metrics/", Route::Other),
            ("/", Route::Page),
            (&format!("/path/{H}"), Route::Page),
            ("/api/summary", Route::Api),
            ("/api/search", Route::Api),
            (&format!("/api/path/{H}"), Route::Api),
            ("/api/", Route::Other),
        ];
        for (path, label) in cases {
            assert_eq!(Target::parse(path).label(), label, "{path}");
        }
    }
}
