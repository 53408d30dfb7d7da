//! `/metrics` in the Prometheus text exposition format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use super::labels::{RejectReason, BUCKETS_US, METHODS, ROUTES, STATUSES};
use super::{Metrics, N_BUCKETS, N_METHODS, N_STATUSES};
use crate::prometheus::header;

impl Metrics {
    /// The text exposition format (version 0.0.4). `stored` is (objects, bytes) once
    /// counted; `narinfos` the size of the narinfo index when it is complete;
    /// `memory` the memory budget's (size, bytes in use).
    pub fn render(
        &self,
        stored: Option<(u64, u64)>,
        narinfos: Option<usize>,
        memory: (u64, u64),
    ) -> String {
        let mut out = String::with_capacity(8192);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);

        header(
            &mut out,
            "nix_stored_requests_total",
            "counter",
            "Requests answered, by route, method and status.",
        );
        for (r, route) in ROUTES.iter().enumerate() {
            for (m, method) in METHODS.iter().enumerate() {
                for s in 0..N_STATUSES {
                    let n = load(&self.requests[(r * N_METHODS + m) * N_STATUSES + s]);
                    if n == 0 {
                        continue;
                    }
                    let status = STATUSES.get(s).map_or("other".to_owned(), u16::to_string);
                    let _ = writeln!(
                        out,
                        "nix_stored_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {n}"
                    );
                }
            }
        }

        header(
            &mut out,
            "nix_stored_request_duration_seconds",
            "histogram",
            "Time from the request to the answer's headers, by route.",
        );
        for (r, route) in ROUTES.iter().enumerate() {
            let counts: Vec<u64> = (0..N_BUCKETS)
                .map(|b| load(&self.latency[r * N_BUCKETS + b]))
                .collect();
            let total: u64 = counts.iter().sum();
            if total == 0 {
                continue;
            }
            let mut cumulative = 0;
            for (b, le) in BUCKETS_US.iter().enumerate() {
                cumulative += counts[b];
                let _ = writeln!(
                    out,
                    "nix_stored_request_duration_seconds_bucket{{route=\"{route}\",le=\"{}\"}} {cumulative}",
                    *le as f64 / 1e6
                );
            }
            let _ = writeln!(
                out,
                "nix_stored_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {total}"
            );
            let _ = writeln!(
                out,
                "nix_stored_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                load(&self.latency_sum_us[r]) as f64 / 1e6
            );
            let _ = writeln!(
                out,
                "nix_stored_request_duration_seconds_count{{route=\"{route}\"}} {total}"
            );
        }

        for (name, help, values) in [
            (
                "nix_stored_received_bytes_total",
                "Request body bytes (as declared by Content-Length), by route.",
                &self.bytes_in,
            ),
            (
                "nix_stored_sent_bytes_total",
                "Answer body bytes, by route.",
                &self.bytes_out,
            ),
        ] {
            header(&mut out, name, "counter", help);
            for (r, route) in ROUTES.iter().enumerate() {
                let _ = writeln!(out, "{name}{{route=\"{route}\"}} {}", load(&values[r]));
            }
        }

        header(
            &mut out,
            "nix_stored_uploads_rejected_total",
            "counter",
            "Uploads refused, by reason; nothing of them was stored.",
        );
        for (i, reason) in RejectReason::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "nix_stored_uploads_rejected_total{{reason=\"{}\"}} {}",
                reason.label(),
                load(&self.rejected[i])
            );
        }

        header(
            &mut out,
            "nix_stored_connections_refused_total",
            "counter",
            "Connections refused because their client address had NIX_STORED_MAX_CONNECTIONS_PER_ADDRESS open.",
        );
        let _ = writeln!(
            out,
            "nix_stored_connections_refused_total {}",
            load(&self.connections_refused)
        );
        header(
            &mut out,
            "nix_stored_auth_throttled_total",
            "counter",
            "Requests answered 429 without checking their credentials: their client address sent too many wrong ones.",
        );
        let _ = writeln!(
            out,
            "nix_stored_auth_throttled_total {}",
            load(&self.auth_throttled)
        );

        header(
            &mut out,
            "nix_stored_requests_in_flight",
            "gauge",
            "Requests received and not yet answered.",
        );
        let _ = writeln!(
            out,
            "nix_stored_requests_in_flight {}",
            self.in_flight.load(Ordering::Relaxed)
        );

        let (budget, in_use) = memory;
        header(
            &mut out,
            "nix_stored_memory_budget_bytes",
            "gauge",
            "Memory allowed for client data held whole (NIX_STORED_MEMORY_BUDGET).",
        );
        let _ = writeln!(out, "nix_stored_memory_budget_bytes {budget}");
        header(
            &mut out,
            "nix_stored_memory_budget_in_use_bytes",
            "gauge",
            "Bytes of the memory budget taken by upload buffers and NAR decoders.",
        );
        let _ = writeln!(out, "nix_stored_memory_budget_in_use_bytes {in_use}");

        if let Some((objects, bytes)) = stored {
            header(
                &mut out,
                "nix_stored_stored_objects",
                "gauge",
                "Objects in the cache: counted at start, plus those uploaded since.",
            );
            let _ = writeln!(out, "nix_stored_stored_objects {objects}");
            header(
                &mut out,
                "nix_stored_stored_bytes",
                "gauge",
                "Bytes in the cache: counted at start, plus those uploaded since.",
            );
            let _ = writeln!(out, "nix_stored_stored_bytes {bytes}");
        }
        if let Some(n) = narinfos {
            header(
                &mut out,
                "nix_stored_narinfos",
                "gauge",
                "Narinfos in the in-memory index (present while the index is complete).",
            );
            let _ = writeln!(out, "nix_stored_narinfos {n}");
        }
        out
    }
}
