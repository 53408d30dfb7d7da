//! Retention's figures in the Prometheus text format.

use std::sync::atomic::Ordering;

use super::Retention;
use crate::prometheus::sample;

impl Retention {
    /// Appends retention's metrics to `out` (nothing when retention is off).
    pub fn render_metrics(&self, out: &mut String) {
        if !self.enabled() {
            return;
        }
        let s = &self.stats;
        if let Some(quota) = self.settings.max_size {
            sample(
                out,
                "nix_stored_retention_quota_bytes",
                "gauge",
                "The quota on stored bytes (NIX_STORED_MAX_SIZE).",
                quota,
            );
        }
        sample(
            out,
            "nix_stored_retention_pinned_bytes",
            "gauge",
            "Bytes held by the closures of the pinned paths, at the last pass.",
            s.pinned_bytes.load(Ordering::Relaxed),
        );
        sample(
            out,
            "nix_stored_retention_passes_total",
            "counter",
            "Retention passes finished.",
            s.passes.load(Ordering::Relaxed),
        );
        sample(
            out,
            "nix_stored_retention_failed_passes_total",
            "counter",
            "Retention passes that failed on a storage error (the next one starts over).",
            s.failed_passes.load(Ordering::Relaxed),
        );
        sample(
            out,
            "nix_stored_retention_removed_paths_total",
            "counter",
            "Store paths removed by retention passes.",
            s.paths_removed.load(Ordering::Relaxed),
        );
        sample(
            out,
            "nix_stored_retention_removed_objects_total",
            "counter",
            "Objects removed by retention passes (narinfos, NARs, listings, orphans, logs, ...).",
            s.objects_removed.load(Ordering::Relaxed),
        );
        sample(
            out,
            "nix_stored_retention_removed_bytes_total",
            "counter",
            "Bytes removed by retention passes.",
            s.bytes_removed.load(Ordering::Relaxed),
        );
        sample(
            out,
            "nix_stored_retention_last_pass_seconds",
            "gauge",
            "Duration of the last retention pass.",
            format_args!(
                "{:.3}",
                s.last_pass_ms.load(Ordering::Relaxed) as f64 / 1000.0
            ),
        );
    }
}
