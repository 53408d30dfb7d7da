//! The graph as retention and the catalog share it: one lock, taken so that a request
//! that must wait for it (a pass plans with it for seconds at a million paths) never
//! holds up the other requests of the async worker it runs on.

use std::sync::{
    LockResult, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError, TryLockResult,
};

use super::Graph;

/// Runs `work`, which may take long (a walk over a million nodes, or a wait for the
/// graph), without holding up the requests the calling async worker serves: tokio
/// moves them to another thread meanwhile.
pub fn off_worker<T>(work: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

/// The graph, for reading.
pub fn read(graph: &RwLock<Graph>) -> RwLockReadGuard<'_, Graph> {
    take(graph.try_read(), || graph.read())
}

/// The graph, for writing.
pub fn write(graph: &RwLock<Graph>) -> RwLockWriteGuard<'_, Graph> {
    take(graph.try_write(), || graph.write())
}

/// The lock at once when it is free (nearly always), else waited for off the worker.
fn take<G>(tried: TryLockResult<G>, wait: impl FnOnce() -> LockResult<G>) -> G {
    // Every update leaves the graph valid: a panic elsewhere cannot corrupt it.
    match tried {
        Ok(guard) => guard,
        Err(TryLockError::Poisoned(e)) => e.into_inner(),
        Err(TryLockError::WouldBlock) => {
            off_worker(|| wait().unwrap_or_else(PoisonError::into_inner))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, RwLock};

    use super::*;

    /// A wait for the graph from a worker, from work already moved off one, and
    /// from the blocking pool: each gets the lock once the holder lets go.
    #[test]
    fn waits_for_the_graph_wherever_they_run() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let graph = Arc::new(RwLock::new(Graph::default()));
        for case in 0..3 {
            let held = write(&graph);
            let g = graph.clone();
            let waiter = rt.spawn(async move {
                match case {
                    0 => drop(write(&g)),
                    1 => off_worker(|| drop(read(&g))),
                    _ => tokio::task::spawn_blocking(move || drop(write(&g)))
                        .await
                        .unwrap(),
                }
            });
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert!(!waiter.is_finished(), "case {case}: the lock was held");
            drop(held);
            rt.block_on(waiter).unwrap();
        }
    }
}
