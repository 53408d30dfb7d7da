//! The HTTP edge: routing, authentication, error mapping, logging.

pub mod access_log;
pub mod auth;
pub mod body;
pub mod error;
pub mod objects;
pub mod range;

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
}

/// Answers one request. Every path names an object (or nothing): there is no routing
/// beyond what `cache::key` parses, so requests go straight to the object handler,
/// wrapped by the access log.
pub async fn serve_request(
    app: Arc<AppState>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Response {
    access_log::logged(&app, req).await
}
