//! Response bodies, and request bodies as a stream of chunks.

use std::pin::Pin;
use std::task::{Context, Poll};

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
