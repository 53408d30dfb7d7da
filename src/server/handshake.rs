//! The TLS side of HTTPS connections: the handshake, bounded in time, and the protocol
//! the client chose by ALPN (HTTP/2 when it offers `h2`, else HTTP/1.1). Only in builds
//! with the `tls` feature.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::connection::Protocol;

/// How long a client gets to complete the TLS handshake once connected.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Completes the handshake of a served connection; `None` when it fails, takes too
/// long, or the server stops meanwhile.
pub(super) async fn accept<I>(
    acceptor: &TlsAcceptor,
    io: I,
    stop: &mut watch::Receiver<()>,
) -> Option<(TlsStream<I>, Protocol)>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(io));
    let stream = tokio::select! {
        done = handshake => match done {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!("TLS handshake failed: {e}");
                return None;
            }
            Err(_) => {
                tracing::debug!("TLS handshake timed out");
                return None;
            }
        },
        _ = stop.changed() => return None,
    };
    let protocol = protocol(&stream);
    Some((stream, protocol))
}

/// Completes the handshake of a refused connection, whose caller bounds it in time.
pub(super) async fn accept_refused<I>(
    acceptor: &TlsAcceptor,
    io: I,
) -> Option<(TlsStream<I>, Protocol)>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let stream = acceptor.accept(io).await.ok()?;
    let protocol = protocol(&stream);
    Some((stream, protocol))
}

fn protocol<I>(stream: &TlsStream<I>) -> Protocol {
    if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
        Protocol::Http2
    } else {
        Protocol::Http1
    }
}
