//! The one connection-serving path of every protocol (HTTP/1.1 over TCP or TLS,
//! HTTP/2 over TLS): the protocol builders, configured once, the service that hands
//! each request to the HTTP layer, graceful shutdown, and the 503 of refused
//! connections.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use super::ServeOptions;
use crate::http::client::ClientAddr;
use crate::http::{AppState, Response};

/// How long a connection over its address's limit gets to send a request and take
/// its 503, TLS handshake included.
pub(super) const REFUSAL_TIME: Duration = Duration::from_secs(2);

/// The protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Protocol {
    /// HTTP/1.1 (and 1.0).
    Http1,
    /// HTTP/2, chosen by ALPN.
    #[cfg(feature = "tls")]
    Http2,
}

/// The protocol builders, configured once for the server's life.
pub(super) struct Protocols {
    http1: http1::Builder,
    /// HTTP/1 of a refused connection: one request, no keep-alive.
    refusal_http1: http1::Builder,
    #[cfg(feature = "tls")]
    pub(super) http2: hyper::server::conn::http2::Builder<hyper_util::rt::TokioExecutor>,
    /// An HTTP/2 connection without a request in progress for this long is closed, as
    /// an HTTP/1.1 connection is when its next request's headers do not arrive in time.
    #[cfg(feature = "tls")]
    pub(super) idle: Duration,
}

impl Protocols {
    pub(super) fn new(options: &ServeOptions) -> Self {
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(options.header_timeout)
            // A client may shut down its sending side once the request is sent
            // (`nc -N`, some scripts): it still gets its answer. Without this, hyper
            // dropped the request on that EOF, and an upload fully received could be
            // stored with no answer sent.
            .half_close(true)
            .keep_alive(true);
        let mut refusal_http1 = http1::Builder::new();
        refusal_http1
            .timer(TokioTimer::new())
            .header_read_timeout(REFUSAL_TIME)
            .half_close(true)
            .keep_alive(false);
        Protocols {
            http1,
            refusal_http1,
            #[cfg(feature = "tls")]
            http2: super::http2::builder(),
            #[cfg(feature = "tls")]
            idle: options.header_timeout,
        }
    }
}

/// What a served connection needs besides its stream.
pub(super) struct Connection {
    pub(super) protocols: Arc<Protocols>,
    pub(super) app: Arc<AppState>,
    pub(super) client: ClientAddr,
    /// Changes when the server stops.
    pub(super) stop: watch::Receiver<()>,
}

/// Answers one request: the one way into the HTTP layer, whatever the protocol.
pub(super) async fn answer(
    app: Arc<AppState>,
    client: ClientAddr,
    mut req: hyper::Request<hyper::body::Incoming>,
) -> Response {
    req.extensions_mut().insert(client);
    crate::http::serve_request(app, req).await
}

/// Serves `io`, speaking `protocol`, until the client leaves or the server stops.
pub(super) async fn serve<I>(io: I, protocol: Protocol, conn: Connection)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let result = match protocol {
        Protocol::Http1 => serve_http1(io, conn).await,
        #[cfg(feature = "tls")]
        Protocol::Http2 => super::http2::serve(io, conn).await,
    };
    if let Err(e) = result {
        tracing::debug!("connection ended: {e}");
    }
}

async fn serve_http1<I>(io: I, conn: Connection) -> hyper::Result<()>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Connection {
        protocols,
        app,
        client,
        mut stop,
    } = conn;
    let service = service_fn(move |req| {
        let app = Arc::clone(&app);
        async move { Ok::<_, Infallible>(answer(app, client, req).await) }
    });
    let served = protocols.http1.serve_connection(TokioIo::new(io), service);
    tokio::pin!(served);
    tokio::select! {
        done = served.as_mut() => return done,
        _ = stop.changed() => {}
    }
    served.as_mut().graceful_shutdown();
    served.await
}

/// Answers a connection over its address's limit with 503 and `Retry-After` (an
/// answer Nix reports, and retries, where a reset would read as a network failure),
/// then closes it. The caller bounds it by [`REFUSAL_TIME`], whatever the client does.
pub(super) async fn refuse<I>(io: I, protocol: Protocol, protocols: &Protocols)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match protocol {
        Protocol::Http1 => {
            let service = service_fn(|_req| async {
                Ok::<_, Infallible>(crate::http::too_many_connections())
            });
            let _ = protocols
                .refusal_http1
                .serve_connection(TokioIo::new(io), service)
                .await;
        }
        #[cfg(feature = "tls")]
        Protocol::Http2 => super::http2::refuse(io, &protocols.http2).await,
    }
}
