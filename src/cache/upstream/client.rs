//! Requests to upstream caches: plain GETs with a bounded wait for the answer and
//! for each piece of its body.

use std::time::Duration;

use bytes::Bytes;
use reqwest::{StatusCode, Url};

/// Why an upstream request gave nothing usable.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Connection refused, reset, TLS failure, a body cut short, …
    #[error("{0}")]
    Unreachable(String),
    /// No answer (or no next piece of the body) within the timeout.
    #[error("no answer within {0} s")]
    Timeout(u64),
    /// An answer other than success or absence.
    #[error("answered {0}")]
    Status(u16),
    /// The answer was refused by verification.
    #[error("{0}")]
    Refused(String),
}

/// An HTTP client for every upstream.
pub struct Client {
    http: reqwest::Client,
    timeout: Duration,
}

impl Client {
    /// A client whose requests wait `timeout` for each answer and body piece.
    pub fn new(timeout: Duration) -> Result<Self, String> {
        // reqwest's rustls comes without a crypto provider: ring, the server's own.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .user_agent(concat!("nix-stored/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the upstream HTTP client: {e}"))?;
        Ok(Client { http, timeout })
    }

    /// The timeout, in seconds, for messages.
    fn secs(&self) -> u64 {
        self.timeout.as_secs()
    }

    /// GETs `url`: `Ok(None)` when the upstream says it has no such object.
    pub async fn get(&self, url: Url) -> Result<Option<Body>, UpstreamError> {
        let send = self.http.get(url).send();
        let resp = tokio::time::timeout(self.timeout, send)
            .await
            .map_err(|_| UpstreamError::Timeout(self.secs()))?
            .map_err(describe)?;
        match resp.status() {
            s if s.is_success() => Ok(Some(Body {
                resp,
                timeout: self.timeout,
            })),
            // What Nix itself takes for "not in this cache".
            StatusCode::NOT_FOUND | StatusCode::GONE | StatusCode::FORBIDDEN => Ok(None),
            s => Err(UpstreamError::Status(s.as_u16())),
        }
    }
}

/// The body of a successful answer, read piece by piece.
pub struct Body {
    resp: reqwest::Response,
    timeout: Duration,
}

impl Body {
    /// The next piece, `None` at the end. A body shorter than its declared length
    /// is an error, not an end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, UpstreamError> {
        tokio::time::timeout(self.timeout, self.resp.chunk())
            .await
            .map_err(|_| UpstreamError::Timeout(self.timeout.as_secs()))?
            .map_err(describe)
    }

    /// The whole body, refused past `limit` bytes.
    pub async fn read_all(mut self, limit: usize) -> Result<Vec<u8>, UpstreamError> {
        let mut buf = Vec::new();
        while let Some(chunk) = self.chunk().await? {
            if buf.len() + chunk.len() > limit {
                return Err(UpstreamError::Refused(format!(
                    "the answer is larger than {limit} bytes"
                )));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf)
    }
}

/// A reqwest error with its causes (its own message alone says "error sending
/// request"), without the URL, which may hold credentials.
fn describe(e: reqwest::Error) -> UpstreamError {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    UpstreamError::Unreachable(text)
}
