//! Prometheus metrics: counters kept in fixed arrays of atomics, so that counting a
//! request costs a few relaxed increments and no lock, and rendered as the text
//! exposition format on `GET /metrics`.

pub mod activity;
mod labels;
mod render;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use labels::{method_index, status_index, BUCKETS_US, METHODS, ROUTES, STATUSES};
pub use labels::{RejectReason, Route};

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
    /// The last day's uploads, downloads and hits, for the page; only kept while the
    /// page is on (an atomic add per request, like the counters above).
    pub activity: Option<activity::Activity>,
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
            activity: None,
        }
    }
}

impl Metrics {
    /// The counters, and the page's activity figures when `page` is on.
    pub fn new(page: bool) -> Self {
        Metrics {
            activity: page.then(activity::Activity::default),
            ..Metrics::default()
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
        let Some(activity) = &self.activity else {
            return;
        };
        let event = match (o.route, o.method, o.status) {
            (Route::NarInfo, &hyper::Method::GET, 200) => Some(activity::Event::Hit),
            (Route::NarInfo, &hyper::Method::GET, 404) => Some(activity::Event::Miss),
            (Route::NarInfo, &hyper::Method::PUT, 201) => Some(activity::Event::Upload),
            (Route::Nar, &hyper::Method::GET, 200 | 206 | 307) => Some(activity::Event::Download),
            _ => None,
        };
        if let Some(event) = event {
            activity.record(event);
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
