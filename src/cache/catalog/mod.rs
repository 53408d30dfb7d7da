//! The catalog: what the cache holds, by name, for the page people read
//! (`GET /`, `/path/<hash>`, `/api/...`).
//!
//! The page reads the graph of stored paths that retention keeps (`cache::graph`),
//! with its labels (name, sizes, signers: about 24 bytes a path plus its name). One
//! index, not two: it is built from a listing of the storage at start ([`load`], or
//! retention's first pass, which reads every narinfo anyway), updated when a
//! narinfo is stored (ingest), appears from another writer (the storage watch) and
//! is removed (retention). Every read is answered from memory, so the page and its
//! search cost no storage request.
//!
//! The API is five reads: [`Catalog::figures`], [`Catalog::latest`],
//! [`Catalog::search`], [`Catalog::path`] and [`Catalog::signers`].

pub mod load;

#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub use crate::cache::graph::query::{
    Closure, Figures, PathDetail, PathLink, PathSummary, SignerCount,
};
use crate::cache::graph::{shared, Graph, PathHash, Record};

/// Referrers listed by [`Catalog::path`] (all are counted).
pub const MAX_REFERRERS: usize = 500;

/// Paths a closure is walked to at most: about 6 ms. Real closures hold thousands
/// of paths; a graph whose closures hold most of the cache (the retention
/// benchmark's: 577,000 paths took 70 ms) gets lower bounds instead.
pub const CLOSURE_LIMIT: u64 = 50_000;

/// The catalog of one cache: the page's view of the graph it shares with retention.
pub struct Catalog {
    /// Whether the page is served at all (`NIX_STORED_PAGE`).
    enabled: bool,
    /// Whether the graph keeps labels: from the page's first visit on, so that a
    /// server whose page nobody opens spends nothing on it.
    kept: AtomicBool,
    graph: Arc<RwLock<Graph>>,
    complete: AtomicBool,
}

impl Catalog {
    /// A catalog over a new, empty graph; `enabled` when the page is served.
    pub fn new(enabled: bool) -> Self {
        Catalog {
            enabled,
            kept: AtomicBool::new(false),
            graph: Arc::new(RwLock::new(Graph::default())),
            complete: AtomicBool::new(false),
        }
    }

    /// The graph it reads, for retention to share.
    pub fn graph(&self) -> &Arc<RwLock<Graph>> {
        &self.graph
    }

    /// Whether the page is served.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether the catalog is kept (the page was opened).
    pub fn kept(&self) -> bool {
        self.kept.load(Ordering::Acquire)
    }

    /// Starts keeping the catalog, once, when the page is served: `true` for the
    /// caller that must now load it (see [`load::spawn`]). From here on, uploads,
    /// retention and the storage watch label what they record.
    pub fn start_keeping(&self) -> bool {
        if !self.enabled || self.kept() {
            return false;
        }
        let mut graph = self.write();
        if self.kept.swap(true, Ordering::AcqRel) {
            return false;
        }
        graph.keep_labels();
        true
    }

    fn read(&self) -> RwLockReadGuard<'_, Graph> {
        shared::read(&self.graph)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Graph> {
        shared::write(&self.graph)
    }

    /// Paths and bytes stored.
    pub fn figures(&self) -> Figures {
        self.read().figures(self.complete.load(Ordering::Acquire))
    }

    /// The `n` paths stored last, newest first.
    pub fn latest(&self, n: usize) -> Vec<PathSummary> {
        self.read().latest(n)
    }

    /// Up to `n` paths whose name contains `query` (case-sensitive), newest first.
    pub fn search(&self, query: &str, n: usize) -> Vec<PathSummary> {
        self.read().search(query, n)
    }

    /// The stored path of store hash `hash` (nix32), if any.
    pub fn path(&self, hash: &str) -> Option<PathDetail> {
        self.read().path(hash, MAX_REFERRERS, CLOSURE_LIMIT)
    }

    /// The key names that signed stored paths, with how many each signed, most first.
    pub fn signers(&self) -> Vec<SignerCount> {
        self.read().signers()
    }

    /// Whether the narinfo of `hash` is in the graph.
    pub fn holds(&self, hash: &PathHash) -> bool {
        self.read().stored_id(hash).is_some()
    }

    /// Records the stored narinfo `record` of `hash`: `bytes` of narinfo and NAR,
    /// `stored` seconds since the epoch.
    pub fn insert(&self, hash: &PathHash, record: &Record, stored: u32, bytes: u64) {
        if self.kept() {
            self.write().insert_record(hash, record, stored, bytes);
        }
    }

    /// The narinfo of `hash` was removed from storage.
    pub fn remove(&self, hash: &PathHash) {
        if self.kept() {
            self.write().remove(hash);
        }
    }

    /// Bytes the graph holds on the heap (with retention's share of it).
    pub fn heap_bytes(&self) -> usize {
        self.read().heap_bytes()
    }

    /// Gives back the memory a load grew, and orders the names by time.
    pub fn shrink(&self) {
        if self.kept() {
            self.write().shrink();
        }
    }

    /// Marks the start-up listing as done: the figures are whole from now on.
    pub fn finish_load(&self) {
        self.complete.store(true, Ordering::Release);
    }
}
