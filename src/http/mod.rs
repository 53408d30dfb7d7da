//! The HTTP edge: routing, authentication, error mapping, logging.

pub mod access_log;
pub mod auth;
pub mod body;
pub mod client;
pub mod error;
pub mod forwarded;
pub mod head;
pub mod metrics;
pub mod objects;
pub mod openapi;
pub mod page;
pub mod proxy;
pub mod range;
pub mod router;
pub mod service;
pub mod throttle;

use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::http::Extensions;
use hyper::HeaderMap;

use crate::cache::Cache;
use auth::{Access, Auth, AuthError, Principal};
use client::ClientAddr;
use error::HttpError;
use throttle::AuthThrottle;

/// An answer of this server.
pub type Response = hyper::Response<body::Body>;

/// Everything a request handler needs.
pub struct AppState {
    /// The cache (shared with the pulls from upstream it runs in their own tasks).
    pub cache: Arc<Cache>,
    /// The access policy.
    pub auth: Auth,
    /// Wrong credentials by client network.
    pub throttle: AuthThrottle,
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
    /// Reverse proxies whose forwarding headers name the client.
    pub trusted_proxies: forwarded::TrustedProxies,
    /// The URL clients reach the server at from outside, if configured.
    pub public_url: Option<String>,
    /// Whether the server speaks HTTPS (for the URL the page shows).
    pub tls: bool,
}

/// Answers one request, logged and counted; [`router`] says what its path names.
pub async fn serve_request(
    app: Arc<AppState>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Response {
    access_log::logged(&app, req).await
}

/// The answer to every request on a connection over the per-address limit.
pub fn too_many_connections() -> Response {
    HttpError::TooManyConnections.into_response()
}

impl AppState {
    /// Decides whether a request may do `access`. Credentials from a client network
    /// that sent too many wrong ones are refused unchecked (see [`throttle`]).
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        extensions: &Extensions,
        access: Access,
    ) -> Result<Principal, HttpError> {
        if !headers.contains_key(hyper::header::AUTHORIZATION) {
            return Ok(self.auth.check(headers, access)?);
        }
        let network = extensions.get::<ClientAddr>().map(|c| c.network());
        let attempt = self
            .throttle
            .admit(network, Instant::now())
            .map_err(|wait| {
                self.metrics.auth_throttled();
                HttpError::Throttled(wait)
            })?;
        let result = self.auth.check(headers, access);
        match &result {
            Err(AuthError::BadCredentials(_)) => self.throttle.failed(attempt, Instant::now()),
            // The credentials named a user (who may not be allowed this).
            Ok(_) | Err(AuthError::Forbidden(_)) => self.throttle.succeeded(attempt),
            Err(AuthError::Unauthorized(_)) => {}
        }
        Ok(result?)
    }
}

async fn route(
    app: &AppState,
    target: router::Target,
    req: hyper::Request<hyper::body::Incoming>,
) -> Response {
    use router::Target;
    match target {
        Target::Metrics if app.metrics_enabled => service::metrics(app, &req),
        // Turned off: as absent as any other path that is no cache key.
        Target::Metrics => {
            let key = crate::cache::key::ObjectKey::parse(req.uri().path());
            objects::handle(app, key, req).await
        }
        Target::Healthz => service::healthz(&req),
        Target::Readyz => service::readyz(app, &req).await,
        Target::OpenApi => service::openapi(&req),
        Target::Page(page) => page::handle(app, page, false, req).await,
        Target::Api(page) => page::handle(app, page, true, req).await,
        Target::Object(key) => objects::handle(app, Ok(key), req).await,
        Target::Invalid(e) => objects::handle(app, Err(e), req).await,
    }
}
