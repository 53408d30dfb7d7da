//! Per-upstream counters, rendered into `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// What one upstream delivered.
#[derive(Debug, Default)]
pub struct UpstreamStats {
    /// Paths it delivered, verified and now stored here.
    pub hits: AtomicU64,
    /// Narinfos it answered as absent.
    pub misses: AtomicU64,
    /// Bytes received from it (narinfos and NAR files).
    pub bytes: AtomicU64,
    /// Requests that failed: unreachable, timed out, an unexpected status, or an
    /// answer refused by verification (bad signature, wrong hash, truncated).
    pub errors: AtomicU64,
}

impl UpstreamStats {
    pub(super) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// A metric family: its name, its help text, and which counter it reads.
type Family = (&'static str, &'static str, fn(&UpstreamStats) -> &AtomicU64);

/// Appends the counters of every upstream (`(name, stats)`) to `out`.
pub(super) fn render<'a>(
    out: &mut String,
    upstreams: impl Iterator<Item = (&'a str, &'a UpstreamStats)> + Clone,
) {
    let families: [Family; 4] = [
        (
            "nix_stored_upstream_hits_total",
            "Store paths fetched from an upstream, verified and stored.",
            |s| &s.hits,
        ),
        (
            "nix_stored_upstream_misses_total",
            "Narinfos an upstream answered as absent.",
            |s| &s.misses,
        ),
        (
            "nix_stored_upstream_received_bytes_total",
            "Bytes received from an upstream (narinfos and NAR files).",
            |s| &s.bytes,
        ),
        (
            "nix_stored_upstream_errors_total",
            "Upstream requests that failed or whose answer was refused by verification.",
            |s| &s.errors,
        ),
    ];
    for (name, help, field) in families {
        crate::prometheus::header(out, name, "counter", help);
        for (upstream, stats) in upstreams.clone() {
            let value = field(stats).load(Ordering::Relaxed);
            let label = upstream.replace('\\', "\\\\").replace('"', "\\\"");
            let _ = writeln!(out, "{name}{{upstream=\"{label}\"}} {value}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_one_series_per_upstream() {
        let a = UpstreamStats::default();
        let b = UpstreamStats::default();
        UpstreamStats::add(&a.hits, 2);
        UpstreamStats::add(&b.errors, 1);
        let mut out = String::new();
        render(&mut out, [("http://a", &a), ("http://b", &b)].into_iter());
        for line in [
            "nix_stored_upstream_hits_total{upstream=\"http://a\"} 2",
            "nix_stored_upstream_hits_total{upstream=\"http://b\"} 0",
            "nix_stored_upstream_errors_total{upstream=\"http://b\"} 1",
            "nix_stored_upstream_misses_total{upstream=\"http://a\"} 0",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} missing in\n{out}");
        }
    }
}
