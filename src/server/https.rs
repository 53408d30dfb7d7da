//! HTTPS serving: rustls in front of HTTP/1.1 and HTTP/2 (by ALPN), with the same
//! limits and shutdown as plain HTTP. Only in builds with the `tls` feature.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use hyper_util::rt::TokioExecutor;
use tokio::sync::Notify;

use super::*;
use crate::http::body::Body;
use crate::tls::Tls;

/// [`refuse_http1`] over TLS: HTTP/2 streams get the 503 too, and the connection is
/// closed gracefully after the first.
async fn refuse_tls(
    stream: WriteStallGuard<TcpStream>,
    acceptor: tokio_rustls::TlsAcceptor,
    protocols: Arc<Protocols>,
    refusal: OwnedSemaphorePermit,
) {
    let refused = async {
        let Ok(stream) = acceptor.accept(stream).await else {
            return;
        };
        if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
            let http1 = Arc::new(refusal_http1());
            return refuse_http1(TokioIo::new(stream), http1, refusal).await;
        }
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
        let conn = protocols
            .http2
            .serve_connection(TokioIo::new(stream), service);
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = answered.notified() => {}
        }
        conn.as_mut().graceful_shutdown();
        let _ = conn.await;
    };
    let _ = tokio::time::timeout(REFUSAL_TIME, refused).await;
}

/// How long a client gets to complete the TLS handshake once connected.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
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
    /// An HTTP/2 connection without a request in progress for this long is closed, as
    /// an HTTP/1.1 connection is when its next request's headers do not arrive in time.
    idle: Duration,
}

/// Serves `app` over TLS on `listener` until SIGTERM or SIGINT: HTTP/2 when the client
/// offers it by ALPN, HTTP/1.1 otherwise. Shutdown as in [`serve`].
pub async fn serve_tls(
    listener: TcpListener,
    app: Arc<AppState>,
    options: ServeOptions,
    tls: Arc<Tls>,
) -> io::Result<()> {
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout)
        .half_close(true)
        .keep_alive(true);
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEPALIVE)
        .keep_alive_timeout(H2_KEEPALIVE)
        .max_concurrent_streams(H2_MAX_STREAMS);
    let protocols = Arc::new(Protocols {
        http1,
        http2,
        idle: options.header_timeout,
    });
    // Each connection holds a receiver: shutdown is a send, and waiting for every
    // connection to end is waiting for the channel to close. hyper-util's
    // `GracefulShutdown` cannot be used here because an idle HTTP/2 connection must
    // also be shut down gracefully on its own.
    let (stop, _) = tokio::sync::watch::channel(());
    let limits = Limits::new(&options);
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    while let Some(accepted) =
        next_connection(&listener, &limits, &options, &app.metrics, &mut shutdown).await
    {
        let Accepted {
            io,
            client,
            admission,
        } = accepted;
        let held = match admission {
            Admission::Served(slot, place) => (slot, place),
            Admission::Refused(refusal) => {
                tokio::spawn(refuse_tls(
                    io,
                    tls.acceptor().clone(),
                    Arc::clone(&protocols),
                    refusal,
                ));
                continue;
            }
        };
        tokio::spawn(tls_connection(
            io,
            tls.acceptor().clone(),
            Arc::clone(&protocols),
            Arc::clone(&app),
            stop.subscribe(),
            client,
            held,
        ));
    }
    drop(listener);
    let _ = stop.send(());
    drain(options.grace, stop.closed()).await;
    Ok(())
}

/// One TLS connection: handshake (bounded in time), then HTTP/2 or HTTP/1.1.
async fn tls_connection(
    stream: WriteStallGuard<TcpStream>,
    acceptor: tokio_rustls::TlsAcceptor,
    protocols: Arc<Protocols>,
    app: Arc<AppState>,
    mut stop: tokio::sync::watch::Receiver<()>,
    client: ClientAddr,
    // Held for the connection's life: its places under the connection limits.
    _held: (OwnedSemaphorePermit, AddressSlot),
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
        serve_h2(stream, &protocols.http2, protocols.idle, app, client, stop).await
    } else {
        serve_h1(stream, &protocols.http1, app, client, stop).await
    };
    if let Err(e) = result {
        tracing::debug!("connection ended: {e}");
    }
}

type TlsStream = tokio_rustls::server::TlsStream<WriteStallGuard<TcpStream>>;

async fn serve_h1(
    stream: TlsStream,
    http1: &hyper::server::conn::http1::Builder,
    app: Arc<AppState>,
    client: ClientAddr,
    mut stop: tokio::sync::watch::Receiver<()>,
) -> hyper::Result<()> {
    let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        let app = app.clone();
        req.extensions_mut().insert(client);
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
    idle: Duration,
    app: Arc<AppState>,
    client: ClientAddr,
    mut stop: tokio::sync::watch::Receiver<()>,
) -> hyper::Result<()> {
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
        service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            let app = app.clone();
            let closing = Arc::clone(&closing);
            let stream = activity.begin();
            let head = req.method() == hyper::Method::HEAD;
            req.extensions_mut().insert(client);
            async move {
                let mut resp = crate::http::serve_request(app, req).await;
                if head {
                    without_body(&mut resp);
                }
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
    let conn = http2.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        done = conn.as_mut() => return done,
        _ = stop.changed() => {
            // In-flight streams get the server's whole grace period.
            conn.as_mut().graceful_shutdown();
            return conn.await;
        }
        _ = closing.notified() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                done = conn.as_mut() => return done,
                _ = stop.changed() => return conn.await,
            }
        }
        _ = activity.idle(idle) => {}
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
