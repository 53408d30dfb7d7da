//! The server's own resources, next to the cache objects: `/metrics`, `/healthz`,
//! `/readyz` and `/openapi.json`. None of their paths can be a cache key.

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode};
use std::time::{Duration, Instant};

use super::auth::Access;
use super::body::Body;
use super::error::{ErrorDetail, HttpError};
use super::{openapi, AppState, Response};

/// `GET /metrics`: Prometheus text, readable by whoever may read the cache.
pub fn metrics(app: &AppState, req: &Request<Incoming>) -> Response {
    if let Err(e) = read_only(req.method()) {
        return e.into_response();
    }
    let principal = match app.authenticate(req.headers(), req.extensions(), Access::Read) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let cache = &app.cache;
    let narinfos = cache.index().is_complete().then(|| cache.index().len());
    let memory = (cache.budget().limit(), cache.budget().in_use());
    let stored = cache.retention().stored().or(cache.stored().get());
    let mut text = app.metrics.render(stored, narinfos, memory);
    cache.retention().render_metrics(&mut text);
    cache.narinfo_cache().render_metrics(&mut text);
    #[cfg(feature = "upstream")]
    if let Some(up) = cache.upstreams() {
        up.render_metrics(&mut text);
    }
    let mut resp = answer(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        text.into_bytes(),
    );
    resp.extensions_mut().insert(principal);
    resp
}

/// `GET /healthz`: the process is up and answering. No credentials needed, so that
/// a load balancer or systemd can probe it; it reveals nothing about the cache.
pub fn healthz(req: &Request<Incoming>) -> Response {
    if let Err(e) = read_only(req.method()) {
        return e.into_response();
    }
    answer(
        StatusCode::OK,
        "text/plain; charset=utf-8",
        b"ok\n".to_vec(),
    )
}

/// How long a readiness result is reused: probes need no credentials, so each one
/// must not cost a storage request (a flood of them would be a flood of S3 calls).
const READINESS_TTL: Duration = Duration::from_secs(1);

/// The last readiness check, shared by the probes of the next [`READINESS_TTL`].
#[derive(Default)]
pub struct Readiness {
    last: std::sync::Mutex<Option<(Instant, Result<(), String>)>>,
    /// Held while the storage is asked, so that concurrent probes ask once.
    refresh: tokio::sync::Mutex<()>,
}

impl Readiness {
    fn fresh(&self) -> Option<Result<(), String>> {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.as_ref()
            .filter(|(at, _)| at.elapsed() < READINESS_TTL)
            .map(|(_, r)| r.clone())
    }

    async fn check(&self, cache: &crate::cache::Cache) -> Result<(), String> {
        if let Some(r) = self.fresh() {
            return r;
        }
        let _refreshing = self.refresh.lock().await;
        if let Some(r) = self.fresh() {
            return r;
        }
        let r = cache.storage_ready().await.map_err(|e| e.to_string());
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), r.clone()));
        r
    }
}

/// `GET /readyz`: the storage backend answers a lookup (checked at most once a
/// second); 503 if not, with the reason in the log only.
pub async fn readyz(app: &AppState, req: &Request<Incoming>) -> Response {
    if let Err(e) = read_only(req.method()) {
        return e.into_response();
    }
    match app.readiness.check(&app.cache).await {
        Ok(()) => answer(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            b"ready\n".to_vec(),
        ),
        Err(reason) => {
            let mut resp = answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain; charset=utf-8",
                b"not ready\n".to_vec(),
            );
            // The access log writes the reason and replaces the body with one that
            // carries the request id (and no Content-Length of the old one).
            resp.headers_mut().remove(header::CONTENT_LENGTH);
            resp.extensions_mut().insert(ErrorDetail {
                public: "not ready",
                detail: format!("readiness check failed: {reason}"),
            });
            resp
        }
    }
}

/// `GET /openapi.json`: the description of this HTTP interface, public like a manual.
pub fn openapi(req: &Request<Incoming>) -> Response {
    if let Err(e) = read_only(req.method()) {
        return e.into_response();
    }
    answer(
        StatusCode::OK,
        "application/json",
        openapi::document().as_bytes().to_vec(),
    )
}

fn read_only(method: &Method) -> Result<(), HttpError> {
    match *method {
        Method::GET | Method::HEAD => Ok(()),
        _ => Err(HttpError::ReadOnly),
    }
}

/// A generated answer; its body is dropped for HEAD by [`super::head`].
pub(super) fn answer(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response {
    let len = body.len();
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
