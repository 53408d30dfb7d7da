//! The accept loop's admission: the connection cap, the per-address slots, and the
//! refusal of connections over their address's limit.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::address_slots::{AddressSlot, AddressSlots};
use super::stall::WriteStallGuard;
use super::ServeOptions;
use crate::http::client::ClientAddr;
use crate::http::metrics::Metrics;

/// Connections over their address's limit being answered at once; more are closed
/// unanswered. They hold descriptors but no connection slot.
const REFUSALS_AT_ONCE: usize = 64;

/// The limits connections are admitted under.
pub(super) struct Gate {
    slots: Arc<Semaphore>,
    per_address: Arc<AddressSlots>,
    refusals: Arc<Semaphore>,
}

/// Where an accepted connection stands; what it holds is given back when it ends.
pub(super) enum Admission {
    /// Served, with its places under the connection limit and its address's.
    Served(Held),
    /// Over its address's limit: answered 503 and closed.
    Refused(OwnedSemaphorePermit),
}

/// A served connection's places under the connection limits, held for its life.
pub(super) type Held = (OwnedSemaphorePermit, AddressSlot);

/// A connection taken from the listener.
pub(super) struct Accepted {
    pub(super) io: WriteStallGuard<TcpStream>,
    pub(super) client: ClientAddr,
    pub(super) admission: Admission,
}

impl Gate {
    pub(super) fn new(options: &ServeOptions) -> Self {
        Gate {
            slots: Arc::new(Semaphore::new(options.max_connections)),
            per_address: AddressSlots::new(options.max_connections_per_address),
            refusals: Arc::new(Semaphore::new(REFUSALS_AT_ONCE)),
        }
    }

    /// Waits for a free connection slot, then for a connection; `None` once
    /// `shutdown` completes. At the limit the loop stops accepting, and new
    /// connections wait in the kernel's backlog until a connection ends (idle ones end
    /// after the header timeout), instead of failing on a missing descriptor in the
    /// middle of a request.
    ///
    /// A connection from an address that has its limit open is refused: it gives its
    /// slot back at once, and is answered 503 (or closed unanswered when many
    /// refusals are in progress already).
    pub(super) async fn next(
        &self,
        listener: &TcpListener,
        options: &ServeOptions,
        metrics: &Metrics,
        shutdown: &mut Pin<&mut impl Future<Output = ()>>,
    ) -> Option<Accepted> {
        loop {
            if self.slots.available_permits() == 0 {
                tracing::warn!(
                    "{} connections open, the NIX_STORED_MAX_CONNECTIONS limit: new connections wait until one ends",
                    options.max_connections
                );
            }
            let slot = tokio::select! {
                slot = self.slots.clone().acquire_owned() => slot.ok()?,
                _ = shutdown.as_mut() => return None,
            };
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = shutdown.as_mut() => return None,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let client = ClientAddr::of(peer);
            let admission = match self.per_address.acquire(client.ip()) {
                Some(place) => Admission::Served((slot, place)),
                None => {
                    metrics.connection_refused();
                    drop(slot);
                    let Ok(refusal) = self.refusals.clone().try_acquire_owned() else {
                        tracing::debug!(
                            "connection from {client} closed: over NIX_STORED_MAX_CONNECTIONS_PER_ADDRESS, and {REFUSALS_AT_ONCE} refusals in progress"
                        );
                        continue;
                    };
                    tracing::debug!(
                        "connection from {client} refused: {} open, the NIX_STORED_MAX_CONNECTIONS_PER_ADDRESS limit",
                        options.max_connections_per_address
                    );
                    Admission::Refused(refusal)
                }
            };
            let _ = stream.set_nodelay(true);
            return Some(Accepted {
                io: WriteStallGuard::new(stream, options.write_stall_timeout),
                client,
                admission,
            });
        }
    }
}
