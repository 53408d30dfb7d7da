//! The HTTP edge: routing, authentication, error mapping, logging.

pub mod access_log;
pub mod auth;
pub mod body;
pub mod error;
pub mod metrics;
pub mod objects;
pub mod openapi;
pub mod range;
pub mod service;

use std::sync::Arc;
use std::time::Duration;

use crate::cache::Cache;
use auth::Auth;

/// An answer of this server.
pub type Response = hyper::Response<body::Body>;

/// Everything a request handler needs.
pub struct AppState {
    /// The cache.
    pub cache: Cache,
    /// The access policy.
    pub auth: Auth,
    /// How long an upload body may stay idle.
    pub body_timeout: Duration,
    /// `Cache-Control` header values.
    pub cache_policy: objects::CachePolicy,
    /// Request counters.
    pub metrics: metrics::Metrics,
    /// Whether `/metrics` is served.
    pub metrics_enabled: bool,
    /// The last readiness check, reused for a second.
    pub readiness: service::Readiness,
}

/// Answers one request, logged and counted. Every path names a cache object (or
/// nothing) except the server's own few resources, so there is no router: the
/// route is known from the path's shape, and `cache::key` validates the rest.
pub async fn serve_request(
    app: Arc<AppState>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Response {
    access_log::logged(&app, req).await
}

async fn route(
    app: &AppState,
    route: metrics::Route,
    req: hyper::Request<hyper::body::Incoming>,
) -> Response {
    use metrics::Route;
    match route {
        Route::Metrics if app.metrics_enabled => service::metrics(app, &req),
        Route::Health if req.uri().path() == "/healthz" => service::healthz(&req),
        Route::Health => service::readyz(app, &req).await,
        Route::OpenApi => service::openapi(&req),
        _ => objects::handle(app, req).await,
    }
}
