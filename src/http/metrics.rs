//! Prometheus metrics: counters kept in fixed arrays of atomics, so that counting a
//! request costs a few relaxed increments and no lock, and rendered as the text
//! exposition format on `GET /metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// What a request was for: the `route` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/nix-cache-info`.
    CacheInfo,
    /// `/<hash>.narinfo`.
    NarInfo,
    /// `/nar/…`.
    Nar,
    /// `/<hash>.ls`.
    Listing,
    /// `/log/…`.
    Log,
    /// `/debuginfo/…`.
    DebugInfo,
    /// `/realisations/…` and `/build-trace-v2/…`.
    Realisation,
    /// `/metrics`.
    Metrics,
    /// `/healthz` and `/readyz`.
    Health,
    /// `/openapi.json`.
    OpenApi,
    /// Anything else (answered 404 or 405).
    Other,
}

const ROUTES: [&str; 11] = [
    "nix-cache-info",
    "narinfo",
    "nar",
    "ls",
    "log",
    "debuginfo",
    "realisation",
    "metrics",
    "health",
    "openapi",
    "other",
];

impl Route {
    fn index(self) -> usize {
        self as usize
    }
}

const METHODS: [&str; 4] = ["GET", "HEAD", "PUT", "other"];

fn method_index(m: &hyper::Method) -> usize {
    match *m {
        hyper::Method::GET => 0,
        hyper::Method::HEAD => 1,
        hyper::Method::PUT => 2,
        _ => 3,
    }
}

/// Every status this server answers with; anything else is counted as `other`.
const STATUSES: [u16; 23] = [
    200, 201, 204, 206, 304, 307, 400, 401, 403, 404, 405, 408, 409, 411, 413, 415, 416, 429, 431,
    500, 502, 503, 507,
];

fn status_index(s: u16) -> usize {
    STATUSES
        .iter()
        .position(|&x| x == s)
        .unwrap_or(STATUSES.len())
}

/// Upper bounds of the latency histogram buckets, in microseconds.
const BUCKETS_US: [u64; 13] = [
    250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000, 2_500_000,
    10_000_000,
];

/// Why an upload was refused: the `reason` label of
/// `nix_stored_uploads_rejected_total`. `http::error` says which error is which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// Missing or wrong credentials.
    Unauthorized,
    /// Too many wrong credentials from the client's network.
    Throttled,
    /// Credentials that do not allow uploads.
    Forbidden,
    /// A path that is no cache key.
    InvalidKey,
    /// The body broke a verification rule.
    Verification,
    /// The body contradicts what the cache holds.
    Conflict,
    /// Over the size limit.
    TooLarge,
    /// The body stopped arriving.
    BodyTimeout,
    /// The body could not be read.
    BodyBroken,
    /// A content-encoded body.
    ContentEncoding,
    /// The storage is full.
    StorageFull,
    /// The storage failed.
    StorageError,
    /// No room in the memory budget.
    MemoryBudget,
}

impl RejectReason {
    /// Every reason, in the order of their counters.
    pub const ALL: [RejectReason; 13] = [
        RejectReason::Unauthorized,
        RejectReason::Throttled,
        RejectReason::Forbidden,
        RejectReason::InvalidKey,
        RejectReason::Verification,
        RejectReason::Conflict,
        RejectReason::TooLarge,
        RejectReason::BodyTimeout,
        RejectReason::BodyBroken,
        RejectReason::ContentEncoding,
        RejectReason::StorageFull,
        RejectReason::StorageError,
        RejectReason::MemoryBudget,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            RejectReason::Unauthorized => "unauthorized",
            RejectReason::Throttled => "throttled",
            RejectReason::Forbidden => "forbidden",
            RejectReason::InvalidKey => "invalid_key",
            RejectReason::Verification => "verification",
            RejectReason::Conflict => "conflict",
            RejectReason::TooLarge => "too_large",
            RejectReason::BodyTimeout => "body_timeout",
            RejectReason::BodyBroken => "body_broken",
            RejectReason::ContentEncoding => "content_encoding",
            RejectReason::StorageFull => "storage_full",
            RejectReason::StorageError => "storage_error",
            RejectReason::MemoryBudget => "memory_budget",
        }
    }
}

const N_ROUTES: usize = ROUTES.len();
const N_METHODS: usize = METHODS.len();
const N_STATUSES: usize = STATUSES.len() + 1;
const N_BUCKETS: usize = BUCKETS_US.len() + 1;

/// The server's counters.
pub struct Metrics {
    requests: Box<[AtomicU64]>,
    latency: Box<[AtomicU64]>,
    latency_sum_us: [AtomicU64; N_ROUTES],
    bytes_in: [AtomicU64; N_ROUTES],
    bytes_out: [AtomicU64; N_ROUTES],
    rejected: [AtomicU64; RejectReason::ALL.len()],
    in_flight: AtomicI64,
    connections_refused: AtomicU64,
    auth_throttled: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        let zeros = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect();
        Metrics {
            requests: zeros(N_ROUTES * N_METHODS * N_STATUSES),
            latency: zeros(N_ROUTES * N_BUCKETS),
            latency_sum_us: Default::default(),
            bytes_in: Default::default(),
            bytes_out: Default::default(),
            rejected: Default::default(),
            in_flight: AtomicI64::new(0),
            connections_refused: AtomicU64::new(0),
            auth_throttled: AtomicU64::new(0),
        }
    }
}

/// Counts a request as in flight until dropped.
pub struct InFlight<'a>(&'a AtomicI64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One finished request, as counted.
pub struct Observation<'a> {
    /// The request's route.
    pub route: Route,
    /// Its method.
    pub method: &'a hyper::Method,
    /// The answer's status.
    pub status: u16,
    /// Declared request body size.
    pub bytes_in: u64,
    /// Answer body size.
    pub bytes_out: u64,
    /// Time to the answer's headers.
    pub elapsed: Duration,
}

impl Metrics {
    /// Marks a request as started; it stops counting as in flight when the guard drops.
    pub fn start(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(&self.in_flight)
    }

    /// Counts a finished request.
    pub fn observe(&self, o: &Observation<'_>) {
        let r = o.route.index();
        let i = (r * N_METHODS + method_index(o.method)) * N_STATUSES + status_index(o.status);
        self.requests[i].fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(o.elapsed.as_micros()).unwrap_or(u64::MAX);
        let b = BUCKETS_US
            .iter()
            .position(|&le| us <= le)
            .unwrap_or(BUCKETS_US.len());
        self.latency[r * N_BUCKETS + b].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us[r].fetch_add(us, Ordering::Relaxed);
        if o.bytes_in > 0 {
            self.bytes_in[r].fetch_add(o.bytes_in, Ordering::Relaxed);
        }
        if o.bytes_out > 0 {
            self.bytes_out[r].fetch_add(o.bytes_out, Ordering::Relaxed);
        }
    }

    /// Counts a refused upload.
    pub fn rejected(&self, reason: RejectReason) {
        self.rejected[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection refused because its client address had as many open as
    /// it may.
    pub fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request refused unchecked because its client sent too many wrong
    /// credentials.
    pub fn auth_throttled(&self) {
        self.auth_throttled.fetch_add(1, Ordering::Relaxed);
    }

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
            "Bytes of the memory budget taken by upload buffers and the S3 narinfo memo.",
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

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_line_up_with_their_names() {
        assert_eq!(ROUTES[Route::Other.index()], "other");
        assert_eq!(ROUTES[Route::OpenApi.index()], "openapi");
        for (i, reason) in RejectReason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i, "{}", reason.label());
        }
    }

    #[test]
    fn counts_render_as_prometheus_text() {
        let m = Metrics::default();
        let guard = m.start();
        m.observe(&Observation {
            route: Route::NarInfo,
            method: &hyper::Method::GET,
            status: 404,
            bytes_in: 0,
            bytes_out: 62,
            elapsed: Duration::from_micros(700),
        });
        m.observe(&Observation {
            route: Route::Nar,
            method: &hyper::Method::PUT,
            status: 299,
            bytes_in: 10,
            bytes_out: 0,
            elapsed: Duration::from_secs(60),
        });
        m.rejected(RejectReason::Verification);
        m.connection_refused();
        m.auth_throttled();
        m.auth_throttled();
        let text = m.render(Some((3, 4096)), None, (1 << 20, 4096));
        drop(guard);
        for line in [
            "nix_stored_requests_total{route=\"narinfo\",method=\"GET\",status=\"404\"} 1",
            "nix_stored_requests_total{route=\"nar\",method=\"PUT\",status=\"other\"} 1",
            "nix_stored_request_duration_seconds_bucket{route=\"narinfo\",le=\"0.0005\"} 0",
            "nix_stored_request_duration_seconds_bucket{route=\"narinfo\",le=\"0.001\"} 1",
            "nix_stored_request_duration_seconds_bucket{route=\"nar\",le=\"10\"} 0",
            "nix_stored_request_duration_seconds_bucket{route=\"nar\",le=\"+Inf\"} 1",
            "nix_stored_request_duration_seconds_sum{route=\"narinfo\"} 0.0007",
            "nix_stored_sent_bytes_total{route=\"narinfo\"} 62",
            "nix_stored_received_bytes_total{route=\"nar\"} 10",
            "nix_stored_uploads_rejected_total{reason=\"verification\"} 1",
            "nix_stored_requests_in_flight 1",
            "nix_stored_connections_refused_total 1",
            "nix_stored_auth_throttled_total 2",
            "nix_stored_stored_objects 3",
            "nix_stored_stored_bytes 4096",
            "nix_stored_memory_budget_bytes 1048576",
            "nix_stored_memory_budget_in_use_bytes 4096",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert!(!text.contains("nix_stored_narinfos"));
        assert_eq!(m.in_flight.load(Ordering::Relaxed), 0);
    }
}
