//! Accepting connections, per-connection limits, and graceful shutdown.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::http::body::Body;
use crate::http::AppState;
use crate::tls::Tls;

/// How long a client may take to send the request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `app` on `listener` until SIGTERM or SIGINT, then lets in-flight requests
/// finish for up to `grace`.
pub async fn serve(
    listener: TcpListener,
    app: Arc<AppState>,
    grace: Duration,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(true);
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                let service = service_fn(move |req| {
                    let app = app.clone();
                    async move { Ok::<_, Infallible>(crate::http::serve_request(app, req).await) }
                });
                let conn = http.serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!("connection ended: {e}");
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    drain(grace, graceful.shutdown()).await;
    Ok(())
}

/// Announces the shutdown and waits up to `grace` for `in_flight` (the connections).
async fn drain(grace: Duration, in_flight: impl std::future::Future<Output = ()>) {
    crate::systemd::notify("STOPPING=1");
    tracing::info!(
        "shutting down: waiting up to {}s for in-flight requests",
        grace.as_secs()
    );
    if tokio::time::timeout(grace, in_flight).await.is_err() {
        tracing::warn!(
            "in-flight requests did not finish within {}s; exiting",
            grace.as_secs()
        );
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending::<()>().await,
    }
}

/// How long a client gets to complete the TLS handshake once connected.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// An HTTP/2 connection without a request in progress for this long is closed, as an
/// HTTP/1.1 connection is when its next request's headers do not arrive in time.
const H2_IDLE_TIMEOUT: Duration = HEADER_TIMEOUT;
/// Interval of HTTP/2 pings, and how long an answer may take: a peer that vanished
/// in the middle of a stream is noticed instead of holding the connection.
const H2_KEEPALIVE: Duration = Duration::from_secs(20);
/// Streams one HTTP/2 connection may have open at once (Nix asks for narinfos in
/// parallel); hyper's default is not part of its stable interface.
const H2_MAX_STREAMS: u32 = 256;
/// How long an idle HTTP/2 connection gets to say goodbye (GOAWAY, ping) before it
/// is dropped.
const H2_CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// The two protocol builders of HTTPS connections, configured once.
struct Protocols {
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
}

/// Serves `app` over TLS on `listener` until SIGTERM or SIGINT: HTTP/2 when the client
/// offers it by ALPN, HTTP/1.1 otherwise. Shutdown as in [`serve`].
pub async fn serve_tls(
    listener: TcpListener,
    app: Arc<AppState>,
    grace: Duration,
    tls: Arc<Tls>,
) -> std::io::Result<()> {
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(true);
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEPALIVE)
        .keep_alive_timeout(H2_KEEPALIVE)
        .max_concurrent_streams(H2_MAX_STREAMS);
    let protocols = Arc::new(Protocols { http1, http2 });
    // Each connection holds a receiver: shutdown is a send, and waiting for every
    // connection to end is waiting for the channel to close. hyper-util's
    // `GracefulShutdown` cannot be used here because an idle HTTP/2 connection must
    // also be shut down gracefully on its own.
    let (stop, _) = tokio::sync::watch::channel(());
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(tls_connection(
                    stream,
                    tls.acceptor().clone(),
                    Arc::clone(&protocols),
                    Arc::clone(&app),
                    stop.subscribe(),
                ));
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = stop.send(());
    drain(grace, stop.closed()).await;
    Ok(())
}

/// One TLS connection: handshake (bounded in time), then HTTP/2 or HTTP/1.1.
async fn tls_connection(
    stream: tokio::net::TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    protocols: Arc<Protocols>,
    app: Arc<AppState>,
    mut stop: tokio::sync::watch::Receiver<()>,
) {
    let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
    let stream = tokio::select! {
        done = handshake => match done {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!("TLS handshake failed: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!("TLS handshake timed out");
                return;
            }
        },
        _ = stop.changed() => return,
    };
    let result = if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
        serve_h2(stream, &protocols.http2, app, stop).await
    } else {
        serve_h1(stream, &protocols.http1, app, stop).await
    };
    if let Err(e) = result {
        tracing::debug!("connection ended: {e}");
    }
}

type TlsStream = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

async fn serve_h1(
    stream: TlsStream,
    http1: &hyper::server::conn::http1::Builder,
    app: Arc<AppState>,
    mut stop: tokio::sync::watch::Receiver<()>,
) -> hyper::Result<()> {
    let service = service_fn(move |req| {
        let app = app.clone();
        async move { Ok::<_, Infallible>(crate::http::serve_request(app, req).await) }
    });
    let conn = http1.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        done = conn.as_mut() => return done,
        _ = stop.changed() => {}
    }
    conn.as_mut().graceful_shutdown();
    conn.await
}

async fn serve_h2(
    stream: TlsStream,
    http2: &hyper::server::conn::http2::Builder<TokioExecutor>,
    app: Arc<AppState>,
    mut stop: tokio::sync::watch::Receiver<()>,
) -> hyper::Result<()> {
    let activity = Arc::new(Activity::new());
    let service = {
        let activity = Arc::clone(&activity);
        service_fn(move |req| {
            let app = app.clone();
            let stream = activity.begin();
            let head = req.method() == hyper::Method::HEAD;
            async move {
                let mut resp = crate::http::serve_request(app, req).await;
                if head {
                    without_body(&mut resp);
                }
                Ok::<_, Infallible>(resp.map(|body| Tracked {
                    body,
                    // The stream counts as open until hyper drops the body, once sent.
                    _stream: stream,
                }))
            }
        })
    };
    let conn = http2.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        done = conn.as_mut() => return done,
        _ = stop.changed() => {
            // In-flight streams get the server's whole grace period.
            conn.as_mut().graceful_shutdown();
            return conn.await;
        }
        _ = activity.idle(H2_IDLE_TIMEOUT) => {}
    }
    if !activity.any_request() {
        // Possibly still waiting for the client's preface, which a graceful shutdown
        // would wait for too: there is no one to say goodbye to.
        return Ok(());
    }
    conn.as_mut().graceful_shutdown();
    tokio::time::timeout(H2_CLOSE_TIMEOUT, conn)
        .await
        .unwrap_or(Ok(()))
}

/// Turns a GET answer into the HEAD answer. hyper's HTTP/1 side drops the body of an
/// answer to HEAD and still announces its length; its HTTP/2 side would send the body
/// as DATA frames, which curl (and so Nix) rejects as a protocol error.
fn without_body(resp: &mut crate::http::Response) {
    use hyper::body::Body as _;
    if !resp.headers().contains_key(hyper::header::CONTENT_LENGTH) {
        if let Some(len) = resp.body().size_hint().exact() {
            resp.headers_mut()
                .insert(hyper::header::CONTENT_LENGTH, len.into());
        }
    }
    *resp.body_mut() = Body::Empty;
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
