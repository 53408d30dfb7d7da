//! The HTTP edge: routing, authentication, error mapping, logging.

pub mod access_log;
pub mod auth;
pub mod error;
pub mod objects;
pub mod range;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::Router;

use crate::cache::Cache;
use auth::Auth;

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

/// The application: every path goes to the object handler, which validates it.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .fallback(objects::handle)
        .with_state(state)
        // Upload size is enforced by the cache layer, per kind of object.
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn(access_log::log_request))
}
