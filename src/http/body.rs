//! Response bodies, and request bodies as a stream of chunks.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use hyper::body::{Frame, Incoming, SizeHint};

use crate::storage::{ByteStream, ObjectBody};

/// The body of an answer: nothing, a buffer sent with the headers, or a stream.
pub enum Body {
    /// No bytes (HEAD answers, 201/204).
    Empty,
    /// Bytes in memory: small objects and error texts.
    Full(Bytes),
    /// Streamed object bytes; its length is in the Content-Length header.
    Stream(ByteStream),
}

impl From<ObjectBody> for Body {
    fn from(b: ObjectBody) -> Self {
        match b {
            ObjectBody::Bytes(b) => Body::Full(b),
            ObjectBody::Stream(s) => Body::Stream(s),
        }
    }
}

impl From<Vec<u8>> for Body {
    fn from(v: Vec<u8>) -> Self {
        Body::Full(Bytes::from(v))
    }
}

impl From<String> for Body {
    fn from(s: String) -> Self {
        Body::Full(Bytes::from(s))
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        match this {
            Body::Empty => Poll::Ready(None),
            Body::Full(b) => {
                let b = std::mem::take(b);
                *this = Body::Empty;
                Poll::Ready((!b.is_empty()).then(|| Ok(Frame::data(b))))
            }
            Body::Stream(s) => s
                .as_mut()
                .poll_next(cx)
                .map(|c| c.map(|r| r.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Empty)
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(b) => SizeHint::with_exact(b.len() as u64),
            Body::Stream(_) => SizeHint::default(),
        }
    }
}

/// A request body as a stream of data chunks (trailers are ignored).
pub struct Chunks(pub Incoming);

impl Stream for Chunks {
    type Item = Result<Bytes, hyper::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let body = &mut self.get_mut().0;
        loop {
            match hyper::body::Body::poll_frame(Pin::new(body), cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => return Poll::Ready(Some(Ok(data))),
                    // A trailers frame: nothing the cache needs.
                    Err(_) => continue,
                },
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// The most an early answer makes the server read and throw away of an HTTP/2 upload.
const DISCARD_LIMIT: u64 = 64 << 20;
/// The most an early answer makes the server read and throw away of an HTTP/1.1
/// upload before closing the connection, and the longest it spends on that. A
/// proxy or client stops sending as soon as it reads the answer, long before either.
const H1_DISCARD_LIMIT: u64 = 256 << 20;
const H1_DISCARD_TIME: Duration = Duration::from_secs(5);

/// Reads and throws away, in the background, a request body that an answer given
/// before reading it (401, 403, 413, a bad key) left unread, so that the client can
/// read that answer.
///
/// HTTP/2: dropping the body resets the stream (`RST_STREAM` with `NO_ERROR`, as RFC
/// 9113 §8.1 allows), and libcurl (so Nix) then reports "Stream error in the HTTP/2
/// framing layer" and retries instead of showing the status. Bodies declared larger
/// than [`DISCARD_LIMIT`] are not worth the bandwidth and are reset at once; the drain
/// also stops at that limit and when the client goes idle for `idle`.
///
/// HTTP/1.1: the answer says `Connection: close`, and closing a socket with unread
/// bytes in it makes the kernel send a reset, which throws away the answer still in
/// the peer's receive buffer. A streaming reverse proxy (nginx with
/// `proxy_request_buffering off`, Caddy) still sending the body then reports 502
/// instead of the 401. Reading on for a while ([`H1_DISCARD_LIMIT`] bytes or
/// [`H1_DISCARD_TIME`]) gives the peer time to read the answer and stop sending.
/// Reading no longer asks a client that sent `Expect: 100-continue` for its body
/// (hyper sends no `100 Continue` once the answer is out), but Go's proxies (Caddy)
/// send it anyway.
pub fn discard_unread(body: Incoming, parts: &hyper::http::request::Parts, idle: Duration) {
    if hyper::body::Body::is_end_stream(&body) {
        return;
    }
    let (limit, deadline) = if parts.version == hyper::Version::HTTP_2 {
        let declared = parts
            .headers
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > DISCARD_LIMIT) {
            return;
        }
        (DISCARD_LIMIT, None)
    } else {
        (H1_DISCARD_LIMIT, Some(H1_DISCARD_TIME))
    };
    tokio::spawn(async move {
        let drain = async {
            let mut chunks = Chunks(body);
            let mut read = 0u64;
            while read <= limit {
                match tokio::time::timeout(idle, futures_util::StreamExt::next(&mut chunks)).await {
                    Ok(Some(Ok(data))) => read += data.len() as u64,
                    _ => break,
                }
            }
        };
        match deadline {
            Some(d) => {
                let _ = tokio::time::timeout(d, drain).await;
            }
            None => drain.await,
        }
    });
}
