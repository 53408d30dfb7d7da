//! Serving connections: one accept loop ([`accept`]) under the connection limits
//! ([`limits`]), one connection-serving path for every protocol ([`connection`];
//! HTTP/2 specifics in `http2`, TLS in `handshake`), writes guarded against stalled
//! clients ([`stall`]), and graceful shutdown ([`shutdown`]).

mod accept;
mod address_slots;
mod connection;
#[cfg(feature = "tls")]
mod handshake;
#[cfg(feature = "tls")]
mod http2;
mod limits;
mod shutdown;
mod stall;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;

use crate::http::AppState;
use accept::{Accepted, Admission, Gate, Held};
use connection::{Connection, Protocol, Protocols, REFUSAL_TIME};
pub use limits::{
    connection_limit, limit_exceeds_descriptors, per_address_limit, raise_nofile_limit,
    DEFAULT_MAX_CONNECTIONS,
};
use stall::WriteStallGuard;

/// How connections are served.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// How long a client may take to send the request headers; also how long an
    /// idle keep-alive connection stays open.
    pub header_timeout: Duration,
    /// How long a response may wait for the client to take more bytes.
    pub write_stall_timeout: Duration,
    /// Most connections served at once.
    pub max_connections: usize,
    /// Most connections served at once per client address.
    pub max_connections_per_address: usize,
    /// How long in-flight requests get after SIGTERM/SIGINT.
    pub grace: Duration,
}

/// What connections speak underneath HTTP.
#[derive(Clone)]
pub enum Transport {
    /// Plain TCP: HTTP/1.1.
    Plain,
    /// TLS: HTTP/2 when the client offers it by ALPN, HTTP/1.1 otherwise.
    #[cfg(feature = "tls")]
    Tls(Arc<crate::tls::Tls>),
}

/// Serves `app` on `listener` until SIGTERM or SIGINT, then lets in-flight requests
/// finish for up to `options.grace`.
pub async fn serve(
    listener: TcpListener,
    app: Arc<AppState>,
    options: ServeOptions,
    transport: Transport,
) -> io::Result<()> {
    let protocols = Arc::new(Protocols::new(&options));
    let gate = Gate::new(&options);
    let stopper = shutdown::Stopper::new();
    let signal = shutdown::signal();
    tokio::pin!(signal);
    while let Some(accepted) = gate
        .next(&listener, &options, &app.metrics, &mut signal)
        .await
    {
        let Accepted {
            io,
            client,
            admission,
        } = accepted;
        match admission {
            Admission::Served(held) => {
                let conn = Connection {
                    protocols: Arc::clone(&protocols),
                    app: Arc::clone(&app),
                    client,
                    stop: stopper.subscribe(),
                };
                tokio::spawn(serve_accepted(transport.clone(), io, conn, held));
            }
            Admission::Refused(refusal) => {
                tokio::spawn(refuse_accepted(
                    transport.clone(),
                    io,
                    Arc::clone(&protocols),
                    refusal,
                ));
            }
        }
    }
    drop(listener);
    stopper.stop(options.grace).await;
    Ok(())
}

type Io = WriteStallGuard<TcpStream>;

/// One admitted connection, over its transport.
async fn serve_accepted(
    transport: Transport,
    io: Io,
    conn: Connection,
    // Held for the connection's life: its places under the connection limits.
    _held: Held,
) {
    match transport {
        Transport::Plain => connection::serve(io, Protocol::Http1, conn).await,
        #[cfg(feature = "tls")]
        Transport::Tls(tls) => {
            let mut conn = conn;
            if let Some((stream, protocol)) =
                handshake::accept(tls.acceptor(), io, &mut conn.stop).await
            {
                connection::serve(stream, protocol, conn).await;
            }
        }
    }
}

/// One connection over its address's limit: answered 503 within [`REFUSAL_TIME`].
async fn refuse_accepted(
    transport: Transport,
    io: Io,
    protocols: Arc<Protocols>,
    // Held while the refusal is in progress.
    _refusal: OwnedSemaphorePermit,
) {
    let refused = async {
        match transport {
            Transport::Plain => connection::refuse(io, Protocol::Http1, &protocols).await,
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => {
                if let Some((stream, protocol)) =
                    handshake::accept_refused(tls.acceptor(), io).await
                {
                    connection::refuse(stream, protocol, &protocols).await;
                }
            }
        }
    };
    let _ = tokio::time::timeout(REFUSAL_TIME, refused).await;
}
