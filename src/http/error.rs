//! The one place where errors become HTTP answers.
//!
//! Rules from the protocol: absent is always 404 (never 5xx); auth failures are 401
//! with a Basic challenge, or 403; upload rejections are 4xx with a one-line reason;
//! nothing an upload did wrong ever yields a 5xx (old Nix clients cannot retry a PUT).

use hyper::header::{self, HeaderValue};
use hyper::StatusCode;

use super::auth::AuthError;
use super::body::Body;
use super::metrics::RejectReason;
use super::Response;
use crate::cache::retention::RetentionError;
use crate::cache::CacheError;
use crate::storage::StorageError;

/// What went wrong behind a 5xx answer, for the log only: backend error texts name
/// endpoints, buckets and paths that are none of the client's business. The access
/// log writes it with the request id and puts that id in the answer's generic body.
#[derive(Debug, Clone)]
pub struct ErrorDetail {
    /// The generic text for the client, before the request id is added.
    pub public: &'static str,
    /// The full reason, for the operator.
    pub detail: String,
}

/// `Retry-After` of an answer refusing a connection over the per-address limit: the
/// client's other connections end within a header timeout once idle, a few seconds
/// is a guess that spares a retry storm.
const TOO_MANY_CONNECTIONS_RETRY_SECS: u64 = 2;

/// `Retry-After` of an upload refused while a reference is pulled from an upstream.
const REFERENCE_RETRY_AFTER_SECS: u64 = 30;

/// `Retry-After` of an answer for an unavailable storage: object_store has already
/// retried for a while; a few seconds more spares it a storm of retries.
const STORAGE_RETRY_AFTER_SECS: u64 = 5;

/// Whole seconds to wait, rounded up: a client retrying after `Retry-After` is then
/// never early.
fn retry_after_secs(wait: std::time::Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

/// An error answer of the HTTP layer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Authentication or authorisation failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The cache layer refused or failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The object does not exist (or the path names no object).
    #[error("{0}")]
    NotFound(String),
    /// A query parameter of the page's API that is out of its range.
    #[error("{0}")]
    BadQuery(String),
    /// A method other than GET, HEAD and PUT.
    #[error("method not allowed; this cache supports GET, HEAD and PUT")]
    MethodNotAllowed,
    /// A method other than GET and HEAD on a read-only resource.
    #[error("method not allowed; this resource supports GET and HEAD")]
    ReadOnly,
    /// A range that starts at or past the end of the object.
    #[error("requested range starts beyond the {0} bytes of the object")]
    RangeNotSatisfiable(u64),
    /// Too many wrong credentials from the client's network: retry after this long.
    #[error("too many wrong credentials from this address; retry in {} s", retry_after_secs(*.0))]
    Throttled(std::time::Duration),
    /// The client's address has as many connections open as it may.
    #[error("too many connections from this address; retry later")]
    TooManyConnections,
    /// An upload whose body is content-encoded.
    #[error("uploads with Content-Encoding are not supported; upload without narinfo-compression/ls-compression/log-compression")]
    UnsupportedEncoding,
}

impl HttpError {
    fn status(&self) -> StatusCode {
        match self {
            HttpError::Auth(AuthError::Unauthorized(_) | AuthError::BadCredentials(_)) => {
                StatusCode::UNAUTHORIZED
            }
            HttpError::Throttled(_) => StatusCode::TOO_MANY_REQUESTS,
            HttpError::TooManyConnections => StatusCode::SERVICE_UNAVAILABLE,
            HttpError::Auth(AuthError::Forbidden(_)) => StatusCode::FORBIDDEN,
            HttpError::NotFound(_) => StatusCode::NOT_FOUND,
            HttpError::BadQuery(_) => StatusCode::BAD_REQUEST,
            HttpError::MethodNotAllowed | HttpError::ReadOnly => StatusCode::METHOD_NOT_ALLOWED,
            HttpError::RangeNotSatisfiable(_) => StatusCode::RANGE_NOT_SATISFIABLE,
            HttpError::UnsupportedEncoding => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            HttpError::Cache(e) => match e {
                CacheError::BadKey(_) | CacheError::Rejected(_) | CacheError::BodyBroken(_) => {
                    StatusCode::BAD_REQUEST
                }
                CacheError::Conflict(_) | CacheError::Retention(RetentionError::Removing(_)) => {
                    StatusCode::CONFLICT
                }
                // The quota is this cache's room: the upload cannot fit, as on a
                // full disk.
                CacheError::Retention(RetentionError::OverQuota { .. }) => {
                    StatusCode::INSUFFICIENT_STORAGE
                }
                CacheError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                CacheError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
                // Temporary, and said so with Retry-After; the one 5xx an upload can
                // get without a server fault (old Nix clients do not retry a PUT, so
                // bodies are streamed wherever possible to make it rare).
                CacheError::MemoryBudget { .. } => StatusCode::SERVICE_UNAVAILABLE,
                // Temporary too: the reference is on its way from an upstream.
                CacheError::ReferencePending(_) => StatusCode::SERVICE_UNAVAILABLE,
                CacheError::Storage(StorageError::Full) => StatusCode::INSUFFICIENT_STORAGE,
                CacheError::Storage(StorageError::Io(_)) => StatusCode::INTERNAL_SERVER_ERROR,
                // The storage, this server's upstream, refused it or is away.
                CacheError::Storage(StorageError::Permission(_)) => StatusCode::BAD_GATEWAY,
                CacheError::Storage(StorageError::Unavailable(_)) => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                // The cache directory's state conflicts with the write: a client
                // error code, so that the refusal is not mistaken for a crash.
                CacheError::Storage(StorageError::Refused(_)) => StatusCode::CONFLICT,
            },
        }
    }
}

impl HttpError {
    /// Why an upload failed, as counted in the metrics.
    pub fn reject_reason(&self) -> RejectReason {
        match self {
            HttpError::Auth(AuthError::Unauthorized(_) | AuthError::BadCredentials(_)) => {
                RejectReason::Unauthorized
            }
            HttpError::Throttled(_) => RejectReason::Throttled,
            HttpError::Auth(AuthError::Forbidden(_)) => RejectReason::Forbidden,
            HttpError::UnsupportedEncoding => RejectReason::ContentEncoding,
            HttpError::Cache(CacheError::Rejected(_) | CacheError::ReferencePending(_)) => {
                RejectReason::Verification
            }
            HttpError::Cache(
                CacheError::Conflict(_) | CacheError::Retention(RetentionError::Removing(_)),
            ) => RejectReason::Conflict,
            HttpError::Cache(CacheError::Retention(RetentionError::OverQuota { .. })) => {
                RejectReason::StorageFull
            }
            HttpError::Cache(CacheError::TooLarge { .. }) => RejectReason::TooLarge,
            HttpError::Cache(CacheError::BodyTimeout) => RejectReason::BodyTimeout,
            HttpError::Cache(CacheError::BodyBroken(_)) => RejectReason::BodyBroken,
            HttpError::Cache(CacheError::MemoryBudget { .. }) => RejectReason::MemoryBudget,
            HttpError::Cache(CacheError::Storage(StorageError::Full)) => RejectReason::StorageFull,
            HttpError::Cache(CacheError::Storage(
                StorageError::Io(_)
                | StorageError::Refused(_)
                | StorageError::Permission(_)
                | StorageError::Unavailable(_),
            )) => RejectReason::StorageError,
            HttpError::Cache(CacheError::BadKey(_))
            | HttpError::NotFound(_)
            | HttpError::BadQuery(_)
            | HttpError::MethodNotAllowed
            | HttpError::ReadOnly
            | HttpError::RangeNotSatisfiable(_)
            | HttpError::TooManyConnections => RejectReason::InvalidKey,
        }
    }

    /// The answer: the status, and the reason as one line of text.
    pub fn into_response(self) -> Response {
        let status = self.status();
        // A storage failure's text can name S3 endpoints, buckets and paths: the
        // client gets a generic line, the access log the cause. Every other answer,
        // 503s for memory or connections and 507 included, says only what the
        // client may know.
        let public = match &self {
            HttpError::Cache(CacheError::Storage(StorageError::Io(_))) => {
                Some("internal server error")
            }
            HttpError::Cache(CacheError::Storage(StorageError::Permission(_))) => {
                Some("the cache storage denied the server access")
            }
            HttpError::Cache(CacheError::Storage(StorageError::Unavailable(_))) => {
                Some("the cache storage is unavailable; retry later")
            }
            _ => None,
        };
        let detail = public.map(|public| ErrorDetail {
            public,
            detail: self.to_string(),
        });
        if matches!(self, HttpError::Cache(CacheError::MemoryBudget { .. })) {
            tracing::warn!("{self}");
        } else if let HttpError::Cache(CacheError::Storage(StorageError::Refused(_))) = &self {
            tracing::error!("upload refused: {self}");
        }
        let mut body = match &detail {
            Some(d) => d.public.to_owned(),
            None => self.to_string().replace('\n', " "),
        };
        body.push('\n');
        let mut resp = Response::new(Body::from(body));
        *resp.status_mut() = status;
        if let Some(d) = detail {
            resp.extensions_mut().insert(d);
        }
        let h = resp.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        match &self {
            // A refused client gets no kept-alive connection: it would hold one of the
            // server's connection slots without being allowed anything. (HTTP/2 has
            // no such header; the server turns it into a graceful close.)
            HttpError::Auth(AuthError::Unauthorized(_) | AuthError::BadCredentials(_)) => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"nix-stored\""),
                );
                h.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            HttpError::Auth(AuthError::Forbidden(_)) => {
                h.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            HttpError::Throttled(wait) => {
                h.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after_secs(*wait)),
                );
                h.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            HttpError::TooManyConnections => {
                h.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(TOO_MANY_CONNECTIONS_RETRY_SECS),
                );
                h.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            HttpError::MethodNotAllowed => {
                h.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, PUT"));
            }
            HttpError::ReadOnly => {
                h.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            }
            HttpError::RangeNotSatisfiable(size) => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    h.insert(header::CONTENT_RANGE, v);
                }
            }
            // An unread or half-read body cannot be resumed on this connection (a
            // full disk is found before the body or in the middle of it).
            HttpError::Cache(
                CacheError::BodyTimeout
                | CacheError::BodyBroken(_)
                | CacheError::TooLarge { .. }
                | CacheError::Retention(RetentionError::OverQuota { .. })
                | CacheError::Storage(StorageError::Full | StorageError::Refused(_)),
            ) => {
                h.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            HttpError::Cache(CacheError::Storage(StorageError::Unavailable(_))) => {
                h.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(STORAGE_RETRY_AFTER_SECS),
                );
            }
            HttpError::Cache(CacheError::ReferencePending(_)) => {
                h.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(REFERENCE_RETRY_AFTER_SECS),
                );
            }
            HttpError::Cache(CacheError::MemoryBudget { retry_after, .. }) => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
                h.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        resp
    }
}
