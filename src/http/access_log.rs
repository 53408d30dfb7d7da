//! One log line per request, and a request id on every answer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use hyper::body::{Body as _, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::Request;

use super::body::Body;
use super::client::ClientAddr;
use super::error::ErrorDetail;
use super::head;
use super::metrics::Observation;
use super::objects::principal_of;
use super::router::Target;
use super::{AppState, Response};
use crate::logging;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Handles the request, tags the answer with an id, drops its body if it answers a
/// HEAD (see [`head`]), counts it, and logs method,
/// path, HTTP version, status, bytes in and out, duration (to the response headers),
/// user and id.
pub async fn logged(app: &AppState, mut req: Request<Incoming>) -> Response {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    // Behind a trusted proxy, the client it names is the client, for the throttle
    // (which reads it from the extensions) as for this log.
    let client = req.extensions().get::<ClientAddr>().copied().map(|peer| {
        let client = app.trusted_proxies.client(peer, req.headers());
        req.extensions_mut().insert(client);
        client
    });
    let started = Instant::now();
    let method = req.method().clone();
    // The path only: query strings are not part of any key and are not logged. The
    // URI is kept (a reference count) and the path made printable only when logged.
    let uri = req.uri().clone();
    let bytes_in = content_length(req.headers());
    let version = version_text(req.version());
    let target = Target::parse(req.uri().path());
    let route = target.label();
    let in_flight = app.metrics.start();
    let mut resp = super::route(app, target, req).await;
    drop(in_flight);
    let mut hex = [0u8; 16];
    let id_text = hex_id(id, &mut hex);
    if let Ok(v) = HeaderValue::from_str(id_text) {
        resp.headers_mut().insert("x-request-id", v);
    }
    if let Some(d) = resp.extensions_mut().remove::<ErrorDetail>() {
        let path = loggable_path(uri.path());
        tracing::error!("request {id_text} ({method} {path}): {}", d.detail);
        *resp.body_mut() = Body::from(format!(
            "{} (request id {id_text}; the server's log has the details)\n",
            d.public
        ));
    }
    // Last, once the body is final: the error text above is part of what HEAD drops.
    if head::is_head(&method) {
        head::strip_body(&mut resp);
    }
    let elapsed = started.elapsed();
    // Streamed bodies carry an explicit Content-Length; generated ones know their size.
    let bytes_out = resp
        .body()
        .size_hint()
        .exact()
        .unwrap_or_else(|| content_length(resp.headers()));
    let status = resp.status().as_u16();
    app.metrics.observe(&Observation {
        route,
        method: &method,
        status,
        bytes_in,
        bytes_out,
        elapsed,
    });
    if logging::access_enabled() {
        logging::access(&logging::AccessLine {
            method: method.as_str(),
            path: &loggable_path(uri.path()),
            version,
            status,
            bytes_in,
            bytes_out,
            micros: elapsed.as_micros(),
            user: principal_of(&resp),
            id: id_text,
            client: client.map(|c| c.ip()),
        });
    }
    resp
}

/// The version as a request line writes it (HTTP/2 has no request line; `HTTP/2` as
/// curl and nginx print it).
fn version_text(v: hyper::Version) -> &'static str {
    match v {
        hyper::Version::HTTP_11 => "HTTP/1.1",
        hyper::Version::HTTP_2 => "HTTP/2",
        hyper::Version::HTTP_10 => "HTTP/1.0",
        hyper::Version::HTTP_09 => "HTTP/0.9",
        hyper::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/?",
    }
}

/// The path as it goes into the log: printable ASCII as it is, every other byte
/// percent-encoded. The request line parser lets any UTF-8 through, including C1
/// controls (`\u{9b}` starts a terminal escape sequence) and bidirectional
/// overrides, which must not reach an operator's terminal or log viewer raw.
fn loggable_path(path: &str) -> std::borrow::Cow<'_, str> {
    if path.bytes().all(|b| b.is_ascii_graphic()) {
        return std::borrow::Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len() + 16);
    for b in path.bytes() {
        if b.is_ascii_graphic() {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    std::borrow::Cow::Owned(out)
}

/// `id` in lowercase hex, without allocating.
fn hex_id(mut id: u64, buf: &mut [u8; 16]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b"0123456789abcdef"[(id & 15) as usize];
        id >>= 4;
        if id == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}

fn content_length(h: &hyper::HeaderMap) -> u64 {
    h.get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::hex_id;

    #[test]
    fn paths_are_logged_printable() {
        use super::loggable_path;
        assert_eq!(loggable_path("/nar/abc.nar"), "/nar/abc.nar");
        assert_eq!(loggable_path("/a\u{9b}31m"), "/a%C2%9B31m");
        assert_eq!(loggable_path("/\u{202e}x"), "/%E2%80%AEx");
        assert_eq!(loggable_path("/é"), "/%C3%A9");
    }

    #[test]
    fn request_ids_are_lowercase_hex() {
        let mut buf = [0; 16];
        assert_eq!(hex_id(0, &mut buf), "0");
        assert_eq!(hex_id(0xbeef, &mut buf), "beef");
        assert_eq!(hex_id(u64::MAX, &mut buf), "ffffffffffffffff");
    }
}
