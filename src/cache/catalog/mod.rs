//! The catalog: what the cache holds, by name, for the page people read
//! (`GET /`, `/path/<hash>`, `/api/...`).
//!
//! A compact in-memory index of the stored paths (about 120 bytes a path with its
//! name and five references, see [`Catalog::heap_bytes`]): built from a listing of
//! the storage at start ([`load`], or retention's first pass, which reads every
//! narinfo anyway), updated when a narinfo is stored (ingest), appears from another
//! writer (the storage watch) and is removed (retention). Every read is answered
//! from memory, so the page and its search cost no storage request.
//!
//! The API is five reads: [`Catalog::figures`], [`Catalog::latest`],
//! [`Catalog::search`], [`Catalog::path`] and [`Catalog::signers`].

pub mod load;
mod query;
pub mod record;
mod signers;
mod table;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

use crate::cache::retention::graph::{path_hash, PathHash};
pub use record::Record;
use table::Table;

/// Referrers listed by [`Catalog::path`] (all are counted).
pub const MAX_REFERRERS: usize = 500;

/// Paths a closure is walked to at most: about 6 ms. Real closures hold thousands
/// of paths; a graph whose closures hold most of the cache (the retention
/// benchmark's: 577,000 paths took 70 ms) gets lower bounds instead.
pub const CLOSURE_LIMIT: u64 = 50_000;

/// Totals over the stored paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Figures {
    /// Stored paths (narinfos).
    pub paths: u64,
    /// Their NarSize, summed.
    pub nar_bytes: u64,
    /// Their FileSize (the NAR files as stored), summed.
    pub file_bytes: u64,
    /// Whether the start-up listing is done (before, the figures are partial).
    pub complete: bool,
}

/// One stored path, as lists show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathSummary {
    /// Its store hash (nix32).
    pub hash: String,
    /// The name after the hash.
    pub name: String,
    /// `NarSize`.
    pub nar_size: u64,
    /// `FileSize`.
    pub file_size: u64,
    /// When its narinfo was first stored, in seconds since the epoch.
    pub stored: u32,
    /// The key names of its signatures; `None` for one of the keys beyond the
    /// catalog's table of names.
    pub signers: Vec<Option<String>>,
}

/// A path another path points at, or is pointed at by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathLink {
    /// Its store hash (nix32).
    pub hash: String,
    /// Its name, when its narinfo is stored.
    pub name: Option<String>,
}

/// One stored path with its neighbours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathDetail {
    /// The path.
    pub summary: PathSummary,
    /// Its references (itself left out).
    pub references: Vec<PathLink>,
    /// Stored paths that reference it, newest first, at most [`MAX_REFERRERS`].
    pub referrers: Vec<PathLink>,
    /// How many stored paths reference it.
    pub referrers_total: usize,
    /// Its closure.
    pub closure: Closure,
}

/// The closure of a path, itself included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closure {
    /// Its stored paths.
    pub paths: u64,
    /// Their NarSize, summed.
    pub nar_size: u64,
    /// Its paths whose narinfo is not stored.
    pub missing: u64,
    /// Whether it was walked whole; if not (past [`CLOSURE_LIMIT`] paths), the
    /// figures are lower bounds.
    pub complete: bool,
}

/// A key name with the number of stored paths it signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignerCount {
    /// The key's name (before the colon of `Sig`); `None` for all keys beyond the
    /// catalog's table of names.
    pub name: Option<String>,
    /// Stored paths it signed.
    pub paths: u64,
}

/// The catalog of one cache.
pub struct Catalog {
    /// Whether it is kept at all (`NIX_STORED_PAGE`): when not, every update is
    /// ignored and it holds nothing.
    enabled: bool,
    table: RwLock<Table>,
    complete: AtomicBool,
}

impl Catalog {
    /// A catalog, empty; kept up to date only when `enabled`.
    pub fn new(enabled: bool) -> Self {
        Catalog {
            enabled,
            table: RwLock::default(),
            complete: AtomicBool::new(false),
        }
    }

    /// Whether the catalog is kept (the page is on).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        // Every update leaves the table valid: a panic elsewhere cannot corrupt it.
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Paths and bytes stored.
    pub fn figures(&self) -> Figures {
        let t = self.read().totals;
        Figures {
            paths: t.paths,
            nar_bytes: t.nar_bytes,
            file_bytes: t.file_bytes,
            complete: self.complete.load(Ordering::Acquire),
        }
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
        let hash = path_hash(hash)?;
        let table = self.read();
        let id = table.stored_id(&hash)?;
        Some(table.detail(id, MAX_REFERRERS, CLOSURE_LIMIT))
    }

    /// The key names that signed stored paths, with how many each signed, most first.
    pub fn signers(&self) -> Vec<SignerCount> {
        self.read()
            .signers
            .counted()
            .into_iter()
            .map(|(name, paths)| SignerCount { name, paths })
            .collect()
    }

    /// Whether the narinfo of `hash` is in the catalog.
    pub fn holds(&self, hash: &PathHash) -> bool {
        self.read().stored_id(hash).is_some()
    }

    /// Records a stored narinfo, `stored` seconds since the epoch (one whose name
    /// Nix would refuse is left out: the arena holds names of at most 211 bytes).
    pub fn insert(&self, record: &Record, stored: u32) {
        if self.enabled && record::valid_name(&record.name) {
            self.write().insert(record, stored);
        }
    }

    /// Records the narinfo `text` stored for store hash `hash` (nix32); one that
    /// cannot be read is left out.
    pub fn insert_narinfo(&self, hash: &str, text: &[u8], stored: u32) {
        if !self.enabled {
            return;
        }
        if let Some(record) = path_hash(hash).and_then(|h| record::parse(&h, text)) {
            self.insert(&record, stored);
        }
    }

    /// The narinfo of `hash` was removed from storage.
    pub fn remove(&self, hash: &PathHash) {
        if self.enabled {
            self.write().remove(hash);
        }
    }

    /// Bytes the catalog holds on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.read().heap_bytes()
    }

    /// Marks the start-up listing as done, and gives back the memory it grew (once).
    pub fn finish_load(&self) {
        if self.enabled && !self.complete.load(Ordering::Acquire) {
            self.write().shrink();
            self.complete.store(true, Ordering::Release);
        }
    }
}
