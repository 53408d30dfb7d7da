//! One log line per request, and a request id on every answer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::body::HttpBody as _;
use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

use super::objects::principal_of;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Middleware: tags the request with an id, and logs method, path, status, bytes in
/// and out, duration (to the response headers), user and id.
pub async fn log_request(req: Request, next: Next) -> Response {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let started = Instant::now();
    let method = req.method().clone();
    // The path only: query strings are not part of any key and are not logged.
    let path = req.uri().path().to_owned();
    let bytes_in = content_length(req.headers());
    let mut resp = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(&format!("{id:x}")) {
        resp.headers_mut().insert("x-request-id", v);
    }
    // Streamed bodies carry an explicit Content-Length; generated ones know their size.
    let bytes_out = if method == axum::http::Method::HEAD {
        0
    } else {
        resp.body()
            .size_hint()
            .exact()
            .unwrap_or_else(|| content_length(resp.headers()))
    };
    // The request line parser only lets printable ASCII through, so the path needs
    // no escaping.
    tracing::info!(
        "{method} {path} {} in={bytes_in} out={bytes_out} {}us user={} id={id:x}",
        resp.status().as_u16(),
        started.elapsed().as_micros(),
        principal_of(&resp),
    );
    resp
}

fn content_length(h: &axum::http::HeaderMap) -> u64 {
    h.get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
