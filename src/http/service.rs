//! The server's own resources, next to the cache objects: `/metrics`, `/healthz`,
//! `/readyz` and `/openapi.json`. None of their paths can be a cache key.

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode};

use super::auth::Access;
use super::body::Body;
use super::error::HttpError;
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
    let text = app.metrics.render(cache.stored().get(), narinfos);
    let mut resp = answer(
        req.method(),
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
        req.method(),
        StatusCode::OK,
        "text/plain; charset=utf-8",
        b"ok\n".to_vec(),
    )
}

/// `GET /readyz`: the storage backend answers a lookup; 503 with the reason if not.
pub async fn readyz(app: &AppState, req: &Request<Incoming>) -> Response {
    if let Err(e) = read_only(req.method()) {
        return e.into_response();
    }
    let (status, text) = match app.cache.storage_ready().await {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(e) => {
            tracing::warn!("readiness check failed: {e}");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {}\n", e.to_string().replace('\n', " ")),
            )
        }
    };
    answer(
        req.method(),
        status,
        "text/plain; charset=utf-8",
        text.into_bytes(),
    )
}

/// `GET /openapi.json`: the description of this HTTP interface, public like a manual.
pub fn openapi(req: &Request<Incoming>) -> Response {
    if let Err(e) = read_only(req.method()) {
        return e.into_response();
    }
    answer(
        req.method(),
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

fn answer(
    method: &Method,
    status: StatusCode,
    content_type: &'static str,
    body: Vec<u8>,
) -> Response {
    let len = body.len();
    let mut resp = if *method == Method::HEAD {
        Response::new(Body::Empty)
    } else {
        Response::new(Body::from(body))
    };
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
