//! Paths whose upstream narinfo is verified and answered from memory while their
//! pull (references, NAR, then the narinfo) runs: per server, gone once the narinfo
//! is stored or the pull failed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::spool::Spool;
use crate::budget::Reservation;
use crate::cache::narinfo::CheckedNarInfo;

/// A path being pulled.
pub struct PendingPath {
    /// Its store hash.
    pub hash: String,
    /// The narinfo as the upstream sent it (and as it will be stored).
    pub narinfo: bytes::Bytes,
    /// What the narinfo says.
    pub checked: CheckedNarInfo,
    /// The upstream it came from (an index into the settings).
    pub upstream: usize,
    /// The narinfo's share of the memory budget.
    _memory: Reservation,
    /// `Some(stored)` once the pull ended.
    done: watch::Sender<Option<bool>>,
    /// Its NAR's download, once started; never restarted.
    nar: Mutex<Option<Arc<Spool>>>,
}

impl PendingPath {
    /// Waits for the pull to end: `true` when the path is stored.
    pub async fn wait(&self) -> bool {
        let mut rx = self.done.subscribe();
        let stored = match rx.wait_for(Option::is_some).await {
            Ok(done) => done.unwrap_or(false),
            Err(_) => false,
        };
        stored
    }

    /// Whether its NAR's download started and failed.
    pub fn nar_failed(&self) -> bool {
        let nar = self.nar.lock().unwrap_or_else(|e| e.into_inner());
        nar.as_ref().is_some_and(|s| s.failed())
    }

    /// The NAR's download, started by `start` if none was.
    pub fn spool_or_start<E>(
        &self,
        start: impl FnOnce() -> Result<Arc<Spool>, E>,
    ) -> Result<Arc<Spool>, E> {
        let mut nar = self.nar.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(spool) = nar.as_ref() {
            return Ok(spool.clone());
        }
        let spool = start()?;
        *nar = Some(spool.clone());
        Ok(spool)
    }
}

/// The pending paths of this server.
#[derive(Default)]
pub struct Pending {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_hash: HashMap<String, Arc<PendingPath>>,
    /// NAR key -> the path whose NAR it is.
    by_nar: HashMap<String, Arc<PendingPath>>,
    /// Store hash -> the reference its pull waits for.
    waits: HashMap<String, String>,
}

impl Pending {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pending path of `hash`.
    pub fn get(&self, hash: &str) -> Option<Arc<PendingPath>> {
        self.inner().by_hash.get(hash).cloned()
    }

    /// The pending path whose NAR is `nar_key`.
    pub fn by_nar(&self, nar_key: &str) -> Option<Arc<PendingPath>> {
        self.inner().by_nar.get(nar_key).cloned()
    }

    /// Makes a verified narinfo pending.
    pub fn insert(
        &self,
        hash: &str,
        narinfo: Vec<u8>,
        checked: CheckedNarInfo,
        upstream: usize,
        memory: Reservation,
    ) -> Arc<PendingPath> {
        let path = Arc::new(PendingPath {
            hash: hash.to_owned(),
            narinfo: narinfo.into(),
            checked,
            upstream,
            _memory: memory,
            done: watch::channel(None).0,
            nar: Mutex::default(),
        });
        let mut inner = self.inner();
        inner.by_hash.insert(hash.to_owned(), path.clone());
        let nar = path.checked.nar.as_str().to_owned();
        inner.by_nar.entry(nar).or_insert_with(|| path.clone());
        path
    }

    /// Ends `path`'s pull: it is no longer pending, and whoever waits for it learns
    /// whether it is stored.
    pub fn remove(&self, path: &Arc<PendingPath>, stored: bool) {
        {
            let mut inner = self.inner();
            if inner
                .by_hash
                .get(&path.hash)
                .is_some_and(|p| Arc::ptr_eq(p, path))
            {
                inner.by_hash.remove(&path.hash);
            }
            let nar = path.checked.nar.as_str();
            if inner.by_nar.get(nar).is_some_and(|p| Arc::ptr_eq(p, path)) {
                inner.by_nar.remove(nar);
            }
            inner.waits.remove(&path.hash);
        }
        path.done.send_replace(Some(stored));
    }

    /// Records that the pull of `waiter` waits for that of `target`; `false` (and
    /// nothing recorded) when `target` already waits, through others, for `waiter`:
    /// a cycle of references, which a real closure never has, would wait forever.
    pub fn start_wait(&self, waiter: &str, target: &str) -> bool {
        let mut inner = self.inner();
        let mut at = target;
        // Each pull waits for one reference at a time: the waits form chains.
        for _ in 0..=inner.waits.len() {
            if at == waiter {
                return false;
            }
            match inner.waits.get(at) {
                Some(next) => at = next,
                None => break,
            }
        }
        inner.waits.insert(waiter.to_owned(), target.to_owned());
        true
    }

    /// The pull of `waiter` waits no more.
    pub fn end_wait(&self, waiter: &str) {
        self.inner().waits.remove(waiter);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_that_would_close_a_cycle_are_refused() {
        let p = Pending::default();
        assert!(p.start_wait("a", "b"));
        assert!(p.start_wait("b", "c"));
        assert!(!p.start_wait("c", "a"));
        assert!(!p.start_wait("c", "c"));
        p.end_wait("a");
        assert!(p.start_wait("c", "a"));
    }
}
