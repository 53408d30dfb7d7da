//! What HTTP/2 connections need beyond HTTP/1.1's: no `Connection` header, a graceful
//! close where HTTP/1.1 says `Connection: close`, and idle tracking (hyper closes idle
//! HTTP/1.1 connections by the header timeout, but has nothing alike for HTTP/2).
//! Only in builds with the `tls` feature: HTTP/2 is negotiated by ALPN.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;

use super::connection::{answer, Connection};
use crate::http::body::Body;

/// Interval of HTTP/2 pings, and how long an answer may take: a peer that vanished
/// in the middle of a stream is noticed instead of holding the connection.
const H2_KEEPALIVE: Duration = Duration::from_secs(20);
/// Streams one HTTP/2 connection may have open at once (Nix asks for narinfos in
/// parallel); hyper's default is not part of its stable interface.
const H2_MAX_STREAMS: u32 = 256;
/// How long an idle HTTP/2 connection gets to say goodbye (GOAWAY, ping) before it
/// is dropped.
const H2_CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP/2 builder of every connection.
pub(super) fn builder() -> http2::Builder<TokioExecutor> {
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEPALIVE)
        .keep_alive_timeout(H2_KEEPALIVE)
        .max_concurrent_streams(H2_MAX_STREAMS);
    http2
}

/// Serves an HTTP/2 connection until the client leaves, the server stops, a refusal
/// closes it, or it has been idle for the header timeout.
pub(super) async fn serve<I>(io: I, conn: Connection) -> hyper::Result<()>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Connection {
        protocols,
        app,
        client,
        mut stop,
    } = conn;
    let activity = Arc::new(Activity::new());
    // Set by a refusal (401, 403, 429), which ends an HTTP/1.1 connection with
    // `Connection: close`: HTTP/2 has no such header, the connection is closed
    // gracefully instead (GOAWAY: streams in progress finish, new ones go elsewhere).
    // An upload whose body broke closes an HTTP/1.1 connection too, but only because
    // the rest of the body cannot be skipped there; in HTTP/2 that is the stream's
    // business, and the other uploads on the connection go on.
    let closing = Arc::new(Notify::new());
    let service = {
        let activity = Arc::clone(&activity);
        let closing = Arc::clone(&closing);
        service_fn(move |req| {
            let app = Arc::clone(&app);
            let closing = Arc::clone(&closing);
            let stream = activity.begin();
            async move {
                let mut resp = answer(app, client, req).await;
                // Connection-specific headers are not HTTP/2's (hyper would drop it
                // with a warning).
                resp.headers_mut().remove(hyper::header::CONNECTION);
                if refuses_the_client(resp.status()) {
                    closing.notify_one();
                }
                Ok::<_, Infallible>(resp.map(|body| Tracked {
                    body,
                    // The stream counts as open until hyper drops the body, once sent.
                    _stream: stream,
                }))
            }
        })
    };
    let served = protocols.http2.serve_connection(TokioIo::new(io), service);
    tokio::pin!(served);
    tokio::select! {
        done = served.as_mut() => return done,
        _ = stop.changed() => {
            // In-flight streams get the server's whole grace period.
            served.as_mut().graceful_shutdown();
            return served.await;
        }
        _ = closing.notified() => {
            served.as_mut().graceful_shutdown();
            tokio::select! {
                done = served.as_mut() => return done,
                _ = stop.changed() => return served.await,
            }
        }
        _ = activity.idle(protocols.idle) => {}
    }
    if !activity.any_request() {
        // Possibly still waiting for the client's preface, which a graceful shutdown
        // would wait for too: there is no one to say goodbye to.
        return Ok(());
    }
    served.as_mut().graceful_shutdown();
    tokio::time::timeout(H2_CLOSE_TIMEOUT, served)
        .await
        .unwrap_or(Ok(()))
}

/// The HTTP/2 side of a refused connection: every stream gets the 503, and the
/// connection is closed gracefully after the first.
pub(super) async fn refuse<I>(io: I, http2: &http2::Builder<TokioExecutor>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let answered = Arc::new(Notify::new());
    let service = {
        let answered = Arc::clone(&answered);
        service_fn(move |_req| {
            answered.notify_one();
            let mut resp = crate::http::too_many_connections();
            resp.headers_mut().remove(hyper::header::CONNECTION);
            async move { Ok::<_, Infallible>(resp) }
        })
    };
    let served = http2.serve_connection(TokioIo::new(io), service);
    tokio::pin!(served);
    tokio::select! {
        _ = served.as_mut() => return,
        _ = answered.notified() => {}
    }
    served.as_mut().graceful_shutdown();
    let _ = served.await;
}

/// Whether an answer refuses the client itself (its credentials, or its rights), after
/// which its connection is not kept: a refused client must not hold a slot.
fn refuses_the_client(status: hyper::StatusCode) -> bool {
    matches!(
        status,
        hyper::StatusCode::UNAUTHORIZED
            | hyper::StatusCode::FORBIDDEN
            | hyper::StatusCode::TOO_MANY_REQUESTS
    )
}

/// Requests in progress on one HTTP/2 connection, and when the last one ended.
struct Activity {
    start: std::time::Instant,
    open: AtomicUsize,
    /// Milliseconds after `start` when a request last started or ended.
    last: AtomicU64,
    any: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: std::time::Instant::now(),
            open: AtomicUsize::new(0),
            last: AtomicU64::new(0),
            any: AtomicBool::new(false),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn begin(self: &Arc<Self>) -> OpenStream {
        self.any.store(true, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::SeqCst);
        self.last.store(self.now(), Ordering::SeqCst);
        OpenStream(Arc::clone(self))
    }

    fn any_request(&self) -> bool {
        self.any.load(Ordering::Relaxed)
    }

    /// Returns once no request has been in progress for `limit`.
    async fn idle(&self, limit: Duration) {
        loop {
            let wait = if self.open.load(Ordering::SeqCst) == 0 {
                let since = Duration::from_millis(
                    self.now().saturating_sub(self.last.load(Ordering::SeqCst)),
                );
                match limit.checked_sub(since) {
                    Some(left) if !left.is_zero() => left,
                    _ => return,
                }
            } else {
                limit
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// One request in progress; ends when dropped.
struct OpenStream(Arc<Activity>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        // `last` first: whoever sees the count drop to zero sees the time too.
        self.0.last.store(self.0.now(), Ordering::SeqCst);
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its request counted as in progress.
struct Tracked {
    body: Body,
    _stream: OpenStream,
}

impl hyper::body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}
