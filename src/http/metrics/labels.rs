//! The labels of the request metrics, each a fixed set so that its counters can be
//! arrays: routes, methods, statuses, latency buckets and upload rejection reasons.

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
    /// The page for people: `/` and `/path/…`.
    Page,
    /// The page's JSON: `/api/…`.
    Api,
    /// Anything else (answered 404 or 405).
    Other,
}

pub(super) const ROUTES: [&str; 13] = [
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
    "page",
    "api",
    "other",
];

impl Route {
    pub(super) fn index(self) -> usize {
        self as usize
    }
}

pub(super) const METHODS: [&str; 4] = ["GET", "HEAD", "PUT", "other"];

pub(super) fn method_index(m: &hyper::Method) -> usize {
    match *m {
        hyper::Method::GET => 0,
        hyper::Method::HEAD => 1,
        hyper::Method::PUT => 2,
        _ => 3,
    }
}

/// Every status this server answers with; anything else is counted as `other`.
pub(super) const STATUSES: [u16; 23] = [
    200, 201, 204, 206, 304, 307, 400, 401, 403, 404, 405, 408, 409, 411, 413, 415, 416, 429, 431,
    500, 502, 503, 507,
];

pub(super) fn status_index(s: u16) -> usize {
    STATUSES
        .iter()
        .position(|&x| x == s)
        .unwrap_or(STATUSES.len())
}

/// Upper bounds of the latency histogram buckets, in microseconds.
pub(super) const BUCKETS_US: [u64; 13] = [
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
