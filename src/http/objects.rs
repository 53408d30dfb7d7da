//! GET, HEAD and PUT of cache objects.

use futures_util::StreamExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{HeaderMap, Method, Request, StatusCode};

use super::auth::{Access, Principal};
use super::body::{self, Body, Chunks};
use super::error::HttpError;
use super::range::{self, RangeRequest};
use super::{AppState, Response};
use crate::cache::ingest::{BodyError, PutOutcome};
use crate::cache::key::{KeyError, Kind, ObjectKey};
use crate::cache::{narinfo_cache, Narinfo};
use crate::storage::{ObjectBody, ObjectMeta};

/// NARs are named by their content hash and never change.
const IMMUTABLE_MAX_AGE: u32 = 365 * 24 * 3600;

/// Handles a request for a cache object (or for a path that names none): authorises
/// it, then dispatches on the method.
pub async fn handle(
    app: &AppState,
    key: Result<ObjectKey, KeyError>,
    req: Request<Incoming>,
) -> Response {
    let (parts, body) = req.into_parts();
    let mut body = Some(body);
    let resp = authorised(app, key, &parts, &mut body).await;
    if let Some(unread) = body {
        body::discard_unread(unread, &parts, app.body_timeout);
    }
    resp
}

/// Answers the request, taking `body` only once the upload is accepted: an answer
/// given before leaves it there (see [`body::discard_unread`]).
async fn authorised(
    app: &AppState,
    key: Result<ObjectKey, KeyError>,
    parts: &hyper::http::request::Parts,
    body: &mut Option<Incoming>,
) -> Response {
    let access = match parts.method {
        Method::GET | Method::HEAD => Access::Read,
        Method::PUT => Access::Write,
        _ => return HttpError::MethodNotAllowed.into_response(),
    };
    let principal = match app.authenticate(&parts.headers, &parts.extensions, access) {
        Ok(p) => p,
        Err(e) => return app.refused(access, e),
    };
    let mut resp = match dispatch(app, &parts.method, key, &parts.headers, body).await {
        Ok(r) => r,
        Err(e) => app.refused(access, e),
    };
    // The log writes "-" for a request without one: an anonymous answer (most
    // reads) carries nothing, and allocates no extension map.
    if principal != Principal::Anonymous {
        resp.extensions_mut().insert(principal);
    }
    resp
}

async fn dispatch(
    app: &AppState,
    method: &Method,
    key: Result<ObjectKey, KeyError>,
    headers: &HeaderMap,
    body: &mut Option<Incoming>,
) -> Result<Response, HttpError> {
    let key = match key {
        Ok(k) => k,
        // For reads, a malformed key is simply something this cache does not have.
        Err(e) if *method != Method::PUT => {
            return Err(HttpError::NotFound(format!("not found: {e}")))
        }
        Err(e) => return Err(HttpError::Cache(e.into())),
    };
    if *method != Method::PUT {
        if let Some(resp) = not_modified(app, &key, headers).await? {
            return Ok(resp);
        }
    }
    match *method {
        Method::PUT => put(app, &key, headers, body).await,
        // What HEAD's answer needs, without opening the object: an S3 GET or a
        // file's first bytes would be fetched only for `head` to drop them, and a
        // presigned redirect is signed for GET alone.
        Method::HEAD => headers_only(app, &key).await,
        _ => get(app, &key, headers).await,
    }
}

/// `Cache-Control` values, computed once.
pub struct CachePolicy {
    immutable: HeaderValue,
    mutable: HeaderValue,
}

impl CachePolicy {
    /// Shared caches (CDNs) may keep answers unless reads need credentials.
    pub fn new(private: bool) -> Self {
        let scope = if private { "private" } else { "public" };
        let value =
            |s: String| HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static("no-cache"));
        CachePolicy {
            immutable: value(format!("{scope}, max-age={IMMUTABLE_MAX_AGE}, immutable")),
            // Narinfos are rewritten (`nix store sign --store` adds a signature) and
            // removed (retention): a cache must ask each time, which costs a 304
            // when nothing changed (see [`not_modified`]). nginx does not store such
            // answers at all, so a removed path is gone from it at once.
            mutable: value(format!("{scope}, no-cache")),
        }
    }
}

fn cache_control(app: &AppState, kind: Kind) -> HeaderValue {
    if kind.immutable() {
        app.cache_policy.immutable.clone()
    } else {
        app.cache_policy.mutable.clone()
    }
}

/// The entity tag of a stored object. A NAR's name is its content hash: the best
/// validator there is, and the same on every server and backend. Other objects use
/// the backend's version.
fn entity_tag(key: &ObjectKey, meta: &ObjectMeta) -> String {
    match key.nar_file_hash() {
        Some(fh) => format!("\"{fh}\""),
        None => format!("\"{}\"", meta.version),
    }
}

/// Headers shared by GET and HEAD of a stored object.
fn object_headers(app: &AppState, key: &ObjectKey, meta: &ObjectMeta, h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(key.kind().content_type()),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CACHE_CONTROL, cache_control(app, key.kind()));
    if let Ok(v) = HeaderValue::from_str(&entity_tag(key, meta)) {
        h.insert(header::ETAG, v);
    }
}

/// Whether `If-None-Match` names the object's current tag (or `*`), compared weakly
/// as RFC 9110 §13.1.2 asks.
fn matches_if_none_match(headers: &HeaderMap, tag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == tag)
}

/// A `304 Not Modified` for a conditional request whose copy is current: what a
/// cache revalidating a narinfo gets when nothing changed, instead of the object.
async fn not_modified(
    app: &AppState,
    key: &ObjectKey,
    headers: &HeaderMap,
) -> Result<Option<Response>, HttpError> {
    if !headers.contains_key(header::IF_NONE_MATCH) || key.kind() == Kind::CacheInfo {
        return Ok(None);
    }
    let Some(meta) = app.cache.stat(key).await? else {
        return Ok(None);
    };
    if !matches_if_none_match(headers, &entity_tag(key, &meta)) {
        return Ok(None);
    }
    let mut resp = Response::new(Body::Empty);
    *resp.status_mut() = StatusCode::NOT_MODIFIED;
    object_headers(app, key, &meta, resp.headers_mut());
    resp.headers_mut().remove(header::CONTENT_TYPE);
    Ok(Some(resp))
}

fn not_found(key: &ObjectKey) -> HttpError {
    HttpError::NotFound(format!("{} is not in this cache", key.as_str()))
}

fn cache_info(app: &AppState) -> Response {
    let text = app.cache.cache_info().to_owned();
    let len = text.len();
    let mut resp = Response::new(Body::from(text));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(Kind::CacheInfo.content_type()),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::CACHE_CONTROL, cache_control(app, Kind::CacheInfo));
    resp
}

/// A GET's answer without its body (which [`super::head`] would drop anyway): the
/// object looked up, not opened.
async fn headers_only(app: &AppState, key: &ObjectKey) -> Result<Response, HttpError> {
    if key.kind() == Kind::CacheInfo {
        return Ok(cache_info(app));
    }
    let meta = app.cache.stat(key).await?.ok_or_else(|| not_found(key))?;
    let mut resp = Response::new(Body::Empty);
    object_headers(app, key, &meta, resp.headers_mut());
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(meta.size));
    Ok(resp)
}

/// A narinfo answered with the headers its entry carries: a GET of a popular
/// narinfo costs no storage request and no formatting, any other one no formatting.
fn from_memory(app: &AppState, key: &ObjectKey, entry: &narinfo_cache::Entry) -> Response {
    let mut resp = Response::new(Body::Full(entry.body()));
    // Room for these and the request id, without growing.
    *resp.headers_mut() = HeaderMap::with_capacity(8);
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_maybe_shared(entry.content_length()) {
        h.insert(header::CONTENT_LENGTH, v);
    }
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(key.kind().content_type()),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CACHE_CONTROL, cache_control(app, key.kind()));
    if let Ok(v) = HeaderValue::from_maybe_shared(entry.etag()) {
        h.insert(header::ETAG, v);
    }
    resp
}

async fn get(app: &AppState, key: &ObjectKey, headers: &HeaderMap) -> Result<Response, HttpError> {
    if key.kind() == Kind::CacheInfo {
        return Ok(cache_info(app));
    }
    if key.kind() == Kind::NarInfo && !headers.contains_key(header::RANGE) {
        match app.cache.narinfo(key).await? {
            Narinfo::Found(entry) => return Ok(from_memory(app, key, &entry)),
            Narinfo::Absent => return Err(not_found(key)),
            Narinfo::Large => {}
        }
    }
    if let Some(location) = app
        .cache
        .redirect_url(key)
        .await?
        .and_then(|url| HeaderValue::from_str(&url).ok())
    {
        return Ok(redirect(location));
    }
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(range::parse);
    let (offset, end) = match range {
        None => (0, None),
        Some(RangeRequest::From { start, end }) => (start, end),
        Some(RangeRequest::Suffix(n)) => {
            let meta = app.cache.stat(key).await?.ok_or_else(|| not_found(key))?;
            (meta.size.saturating_sub(n), None)
        }
    };
    let reader = app
        .cache
        .open(key, offset, end)
        .await?
        .ok_or_else(|| not_found(key))?;
    let size = reader.meta.size;
    let mut resp;
    if range.is_some() {
        if offset >= size {
            return Err(HttpError::RangeNotSatisfiable(size));
        }
        let last = end.map_or(size - 1, |e| e.min(size - 1));
        let len = last - offset + 1;
        resp = Response::new(match reader.body {
            ObjectBody::Bytes(b) => Body::Full(b.slice(..(len as usize).min(b.len()))),
            ObjectBody::Stream(s) => Body::Stream(range::take_bytes(s, len)),
        });
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        let h = resp.headers_mut();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {offset}-{last}/{size}")) {
            h.insert(header::CONTENT_RANGE, v);
        }
    } else {
        resp = Response::new(Body::from(reader.body));
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    }
    object_headers(app, key, &reader.meta, resp.headers_mut());
    Ok(resp)
}

/// A `307` to where the object can be fetched directly. Not cacheable: the URL
/// expires, and a shared cache would hand it out after that.
/// (A URL that is no header value is served here instead.)
fn redirect(location: HeaderValue) -> Response {
    let mut resp = Response::new(Body::Empty);
    *resp.status_mut() = StatusCode::TEMPORARY_REDIRECT;
    let h = resp.headers_mut();
    h.insert(header::LOCATION, location);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    resp
}

async fn put(
    app: &AppState,
    key: &ObjectKey,
    headers: &HeaderMap,
    body: &mut Option<Incoming>,
) -> Result<Response, HttpError> {
    let encoded = headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().is_empty() && v.as_bytes() != b"identity");
    if encoded {
        return Err(HttpError::UnsupportedEncoding);
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // Everything decidable without the body is decided before reading it: a client
    // that sent `Expect: 100-continue` then keeps its body and can retry.
    let permit = app.cache.precheck_upload(key, declared)?;

    let Some(body) = body.take() else {
        return Err(HttpError::Cache(crate::cache::CacheError::BodyBroken(
            "request body already taken".into(),
        )));
    };
    let timeout = app.body_timeout;
    let stream = Chunks(body);
    let body = Box::pin(futures_util::stream::unfold(
        Some(stream),
        move |state| async move {
            let mut stream = state?;
            match tokio::time::timeout(timeout, stream.next()).await {
                Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(stream))),
                Ok(Some(Err(e))) => Some((Err(BodyError::Broken(e.to_string())), None)),
                Ok(None) => None,
                Err(_) => Some((Err(BodyError::Idle), None)),
            }
        },
    ));
    let status = match app.cache.put(key, permit, body).await? {
        PutOutcome::Created => StatusCode::CREATED,
        PutOutcome::Replaced | PutOutcome::Ignored => StatusCode::NO_CONTENT,
    };
    let mut resp = Response::new(Body::Empty);
    *resp.status_mut() = status;
    Ok(resp)
}

impl AppState {
    /// The error answer, with a refused upload counted by its reason.
    fn refused(&self, access: Access, e: HttpError) -> Response {
        if access == Access::Write {
            self.metrics.rejected(e.reject_reason());
        }
        e.into_response()
    }
}

/// The principal of a request, for the access log.
pub fn principal_of(resp: &Response) -> &str {
    resp.extensions()
        .get::<Principal>()
        .map_or("-", Principal::log_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_lists_and_weak_tags() {
        let mut h = HeaderMap::new();
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"a\", W/\"b\""),
        );
        assert!(matches_if_none_match(&h, "\"a\""));
        assert!(matches_if_none_match(&h, "\"b\""));
        assert!(!matches_if_none_match(&h, "\"c\""));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(matches_if_none_match(&h, "\"c\""));
        assert!(!matches_if_none_match(&HeaderMap::new(), "\"a\""));
    }
}
