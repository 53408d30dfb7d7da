//! Accepting connections, per-connection limits, and graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::http::AppState;

/// Connection limit when none is configured and descriptors allow it.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Descriptors kept out of the per-connection budget: the listener, the log, the
/// runtime's epoll and eventfds, inotify, the root directory, the blocking pool's
/// occasional files.
const RESERVED_FDS: u64 = 64;
/// Descriptors a connection can hold at once: its socket, and the object it
/// streams or the temporary file it uploads into (HTTP/1 has one request at a time).
const FDS_PER_CONNECTION: u64 = 2;

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
    /// How long in-flight requests get after SIGTERM/SIGINT.
    pub grace: Duration,
}

/// Raises the soft limit on open files to the hard limit (the default soft limit
/// of 1024 is far below what a server with thousands of clients needs) and returns
/// the limit in force.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit; raising the soft limit up to the hard
        // one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    Ok(lim.rlim_cur)
}

/// The connection limit: `configured` if set, else the default lowered to what
/// `nofile` descriptors can hold.
pub fn connection_limit(configured: Option<usize>, nofile: u64) -> usize {
    let fits = nofile.saturating_sub(RESERVED_FDS) / FDS_PER_CONNECTION;
    let fits = usize::try_from(fits).unwrap_or(usize::MAX).max(1);
    configured.unwrap_or_else(|| DEFAULT_MAX_CONNECTIONS.min(fits))
}

/// Whether `limit` connections can run out of descriptors under `nofile`.
pub fn limit_exceeds_descriptors(limit: usize, nofile: u64) -> bool {
    (limit as u64).saturating_mul(FDS_PER_CONNECTION) + RESERVED_FDS > nofile
}

/// Serves `app` on `listener` until SIGTERM or SIGINT, then lets in-flight requests
/// finish for up to `options.grace`.
pub async fn serve(
    listener: TcpListener,
    app: Arc<AppState>,
    options: ServeOptions,
) -> io::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout)
        // A client may shut down its sending side once the request is sent
        // (`nc -N`, some scripts): it still gets its answer. Without this, hyper
        // dropped the request on that EOF, and an upload fully received could be
        // stored with no answer sent.
        .half_close(true)
        .keep_alive(true);
    // One permit per connection: at the limit the loop stops accepting, and new
    // connections wait in the kernel's backlog until a connection ends (idle ones
    // end after the header timeout), instead of failing on a missing descriptor
    // in the middle of a request.
    let slots = Arc::new(Semaphore::new(options.max_connections));
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut warned_full = false;
    loop {
        if slots.available_permits() == 0 && !warned_full {
            tracing::warn!(
                "{} connections open, the NIX_STORED_MAX_CONNECTIONS limit: new connections wait until one ends",
                options.max_connections
            );
        }
        warned_full = slots.available_permits() == 0;
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(s) => s,
                // The semaphore is never closed.
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut shutdown => break,
        };
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
        let io = WriteStallGuard::new(stream, options.write_stall_timeout);
        let conn = http.serve_connection(TokioIo::new(io), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("connection ended: {e}");
            }
            drop(slot);
        });
    }
    drop(listener);
    crate::systemd::notify("STOPPING=1");
    tracing::info!(
        "shutting down: waiting up to {}s for in-flight requests",
        options.grace.as_secs()
    );
    if tokio::time::timeout(options.grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "in-flight requests did not finish within {}s; exiting",
            options.grace.as_secs()
        );
    }
    Ok(())
}

/// A connection whose writes fail once the client has taken no byte for `limit`.
///
/// A client that requests a large object and then stops reading would otherwise
/// hold its connection, the object's descriptor and its slot forever: hyper has no
/// write timeout. Any progress resets the clock, so slow but live clients are fine.
struct WriteStallGuard<T> {
    inner: T,
    limit: Duration,
    /// Allocated at the first stall, then reset: most connections never stall.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    armed: bool,
}

impl<T> WriteStallGuard<T> {
    fn new(inner: T, limit: Duration) -> Self {
        WriteStallGuard {
            inner,
            limit,
            timer: None,
            armed: false,
        }
    }

    /// Passes a write's outcome through, failing it when it has been pending for
    /// longer than the limit.
    fn watch<R>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if r.is_ready() {
            self.armed = false;
            return r;
        }
        let deadline = tokio::time::Instant::now() + self.limit;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.armed {
            timer.as_mut().reset(deadline);
            self.armed = true;
        }
        if timer.as_mut().poll(cx).is_ready() {
            self.armed = false;
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took no bytes for the body timeout",
            )));
        }
        Poll::Pending
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteStallGuard<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteStallGuard<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(cx, r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_limit_fits_the_descriptors() {
        assert_eq!(connection_limit(None, 1_048_576), DEFAULT_MAX_CONNECTIONS);
        assert_eq!(connection_limit(None, 1024), 480);
        assert_eq!(connection_limit(None, 10), 1);
        assert_eq!(connection_limit(Some(50_000), 1024), 50_000);
        assert!(limit_exceeds_descriptors(50_000, 1024));
        assert!(!limit_exceeds_descriptors(480, 1024));
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_the_client_never_takes_fails_after_the_limit() {
        use tokio::io::AsyncWriteExt;
        // A pipe whose reader never reads: writes block once its buffer is full.
        let (client, server) = tokio::io::duplex(1024);
        let mut guarded = WriteStallGuard::new(server, Duration::from_secs(5));
        let err = guarded.write_all(&[0u8; 4096]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_is_not_cut_off() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(1024);
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            let mut total = 0;
            while total < 8192 {
                // Each pause is shorter than the limit; their sum is far longer.
                tokio::time::sleep(Duration::from_secs(4)).await;
                total += client.read(&mut buf).await.unwrap();
            }
            total
        });
        let mut guarded = WriteStallGuard::new(server, Duration::from_secs(5));
        guarded.write_all(&[0u8; 8192]).await.unwrap();
        assert_eq!(reader.await.unwrap(), 8192);
    }
}
