//! Graceful shutdown: SIGTERM or SIGINT stops the accept loop, every connection is
//! told, and in-flight requests get the grace period.

use std::time::Duration;

use tokio::sync::watch;

/// Tells every connection that the server stops, and waits for them to end.
///
/// Each connection holds a receiver: stopping is a send, and waiting for every
/// connection to end is waiting for the channel to close. hyper-util's
/// `GracefulShutdown` is not used because an idle HTTP/2 connection must also be
/// shut down gracefully on its own, and one mechanism serves both.
pub(super) struct Stopper(watch::Sender<()>);

impl Stopper {
    pub(super) fn new() -> Self {
        Stopper(watch::channel(()).0)
    }

    /// What a connection watches to learn that the server stops.
    pub(super) fn subscribe(&self) -> watch::Receiver<()> {
        self.0.subscribe()
    }

    /// Tells the connections, announces the shutdown and waits up to `grace` for them.
    pub(super) async fn stop(self, grace: Duration) {
        let _ = self.0.send(());
        crate::systemd::notify("STOPPING=1");
        tracing::info!(
            "shutting down: waiting up to {}s for in-flight requests",
            grace.as_secs()
        );
        if tokio::time::timeout(grace, self.0.closed()).await.is_err() {
            tracing::warn!(
                "in-flight requests did not finish within {}s; exiting",
                grace.as_secs()
            );
        }
    }
}

/// Returns at SIGTERM or SIGINT (never, if the signals cannot be watched).
pub(super) async fn signal() {
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
