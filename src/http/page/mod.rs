//! The page for people (`GET /`, `/path/<hash>`) and its data as JSON (`/api/…`):
//! how to use the cache, what it holds, a search by name. Read from the catalog,
//! never from a walk of the storage; readable by whoever may read the cache, and
//! showing nothing a reader could not fetch.

mod escape;
mod html;
mod json;
mod view;

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, StatusCode};

use super::auth::Access;
use super::error::HttpError;
use super::router::Page;
use super::{AppState, Response};
use escape::query_param;

/// Answers `GET /`, `/path/<hash>` (`json == false`) or `/api/…` (`json == true`).
pub async fn handle(app: &AppState, page: Page, json: bool, req: Request<Incoming>) -> Response {
    let (parts, _body) = req.into_parts();
    // As on every route: methods the server has no use for are refused outright;
    // GET, HEAD and PUT check credentials first, so that a wrong password gets 401
    // whatever the route, and only then is a PUT refused here.
    let known = matches!(
        parts.method,
        hyper::Method::GET | hyper::Method::HEAD | hyper::Method::PUT
    );
    if !known {
        return HttpError::ReadOnly.into_response();
    }
    let principal = match app.authenticate(&parts.headers, &parts.extensions, Access::Read) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    if !matches!(parts.method, hyper::Method::GET | hyper::Method::HEAD) {
        let mut resp = HttpError::ReadOnly.into_response();
        resp.extensions_mut().insert(principal);
        return resp;
    }
    if !app.cache.catalog().enabled() {
        let mut resp = HttpError::NotFound(
            "the page is off on this server (NIX_STORED_PAGE=true turns it on)".into(),
        )
        .into_response();
        resp.extensions_mut().insert(principal);
        return resp;
    }
    app.cache.open_catalog();
    let mut resp = match answer(app, page, json, &parts).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    resp.extensions_mut().insert(principal);
    resp
}

async fn answer(
    app: &AppState,
    page: Page,
    json: bool,
    parts: &hyper::http::request::Parts,
) -> Result<Response, HttpError> {
    let query = parts.uri.query();
    let catalog = app.cache.catalog();
    match page {
        Page::Summary => {
            let summary = view::summary(app, parts);
            if json {
                return Ok(json_answer(&json::summary(&summary)));
            }
            let q = query_param(query, "q").map(|q| q.trim().to_owned());
            let results = q
                .as_deref()
                .filter(|q| !q.is_empty())
                .map(|q| catalog.search(q, view::PAGE_RESULTS));
            let search = q.as_deref().zip(results.as_deref());
            Ok(html_answer(html::summary(&summary, search)))
        }
        Page::Search => {
            let q = query_param(query, "q").unwrap_or_default();
            let q = q.trim();
            let limit = match query_param(query, "limit") {
                None => view::PAGE_RESULTS,
                Some(l) => l
                    .parse::<usize>()
                    .ok()
                    .filter(|l| (1..=view::MAX_RESULTS).contains(l))
                    .ok_or_else(|| {
                        HttpError::BadQuery(format!(
                            "limit must be a number from 1 to {}",
                            view::MAX_RESULTS
                        ))
                    })?,
            };
            let results = catalog.search(q, limit);
            Ok(json_answer(&json::search(q, &results)))
        }
        Page::Path(hash) => {
            let Some(v) = view::path(app, &hash).await? else {
                return Err(HttpError::NotFound(format!(
                    "no store path with hash {hash:?} is in this cache"
                )));
            };
            if json {
                return Ok(json_answer(&json::path(&v)));
            }
            let store_dir = app.cache.settings().store_dir.as_str();
            Ok(html_answer(html::path(&v, store_dir)))
        }
    }
}

/// Nothing on the page runs or loads from elsewhere: the policy says so to the
/// browser too, should an escape ever be missed.
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// A generated answer that browsers must not sniff into another type.
fn answer_with(content_type: &'static str, body: Vec<u8>) -> Response {
    let mut resp = super::service::answer(StatusCode::OK, content_type, body);
    resp.headers_mut().insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    resp
}

fn html_answer(text: String) -> Response {
    let mut resp = answer_with("text/html; charset=utf-8", text.into_bytes());
    resp.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    resp
}

fn json_answer(value: &serde_json::Value) -> Response {
    let text = serde_json::to_vec_pretty(value).unwrap_or_default();
    answer_with("application/json", text)
}
