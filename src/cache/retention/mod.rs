//! Retention: a size quota, an age limit and pins, enforced by passes that never
//! break a closure.
//!
//! Every narinfo this cache serves has its NAR and the narinfos of its references
//! (uploads are refused otherwise, see `ingest`). Passes keep it so, at every instant
//! and across a crash at any point:
//! - a path is removed only once no stored narinfo references it (its referrers are
//!   removed first), and never while an upload that references it is in flight
//!   ([`Retention::hold_narinfo`]); an upload that references a path being removed is
//!   refused instead;
//! - a narinfo is removed, durably, before its NAR and listing; a NAR shared by several
//!   narinfos goes with the last of them;
//! - the closures of pinned paths are never chosen.
//!
//! Which paths go is decided by *effective recency*: the latest use of a path or of any
//! path whose closure holds it, so a client that fetches a closure keeps all of it.

pub mod doom;
mod holds;
mod metrics;
mod pass;
pub mod pins;
mod removal;
mod schedule;
pub mod settings;
mod survey;
#[cfg(test)]
mod tests;
pub mod uses;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::cache::graph::{FileHash, Graph};
pub use holds::Hold;
use holds::NarActivity;
pub use pass::{PassReport, Why};
use pins::Pins;
use settings::RetentionSettings;
use uses::{Used, Uses};

use crate::storage::{Storage, StorageError};

/// A NAR uploaded less than this long ago is not an orphan yet: Nix uploads a NAR
/// before its narinfo, and a client may upload a closure for many minutes.
pub const ORPHAN_GRACE_SECS: u32 = 3600;

/// Left in shared storage by a server that runs passes, so that the others record
/// uses too.
pub const PASSES_MARKER: &str = "nix-stored/passes";

/// How often uses are written out when nothing else forces it.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(300);

/// Seconds since the Unix epoch, as the graph keeps times.
pub fn now_secs() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
}

/// Counters of the passes, for `/metrics`.
#[derive(Debug, Default)]
pub struct PassStats {
    /// Passes finished.
    pub passes: AtomicU64,
    /// Passes that failed (a storage error; the next pass starts over).
    pub failed_passes: AtomicU64,
    /// Store paths removed.
    pub paths_removed: AtomicU64,
    /// Objects removed (narinfos, NARs, listings, orphans, logs, …).
    pub objects_removed: AtomicU64,
    /// Bytes removed.
    pub bytes_removed: AtomicU64,
    /// Duration of the last pass, in milliseconds.
    pub last_pass_ms: AtomicU64,
    /// Bytes held by the closures of the pinned paths, at the last pass.
    pub pinned_bytes: AtomicU64,
}

/// Why an upload was refused by retention.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    /// The upload references something a pass is removing.
    #[error("{0}")]
    Removing(String),
    /// The upload cannot fit in the quota even if every unpinned path went.
    #[error("an upload of {size} bytes cannot fit in the quota of {quota} bytes (NIX_STORED_MAX_SIZE), {pinned} of which are held by pinned closures")]
    OverQuota {
        /// Declared size.
        size: u64,
        /// The quota.
        quota: u64,
        /// Bytes of the pinned closures.
        pinned: u64,
    },
}

/// Retention of one cache.
pub struct Retention {
    storage: Arc<dyn Storage>,
    settings: RetentionSettings,
    /// The graph of stored paths, shared with the page (the catalog).
    graph: Arc<RwLock<Graph>>,
    nars: Mutex<HashMap<FileHash, NarActivity>>,
    uses: Uses,
    /// Latest uses of objects without references (logs, …), by key, as merged from
    /// the journals.
    loose_uses: Mutex<HashMap<Box<str>, u32>>,
    pins: Mutex<Pins>,
    /// URLs of stored narinfos that could not be read as such (another writer's):
    /// the files they name are never taken for orphans.
    foreign_urls: Mutex<std::collections::HashSet<String>>,
    /// Bytes stored, as of the last listing plus what was uploaded since.
    bytes: AtomicU64,
    /// Objects stored, likewise.
    objects: AtomicU64,
    /// Whether the graph holds every stored narinfo (after the first pass's listing).
    loaded: AtomicBool,
    wake: tokio::sync::Notify,
    /// Rung when enough uses are held that they should be written out now.
    uses_full: tokio::sync::Notify,
    /// Time between removing narinfos and their NARs: how long another server may
    /// still answer a removed narinfo from memory (the narinfo cache's TTL on S3).
    narinfo_linger: Duration,
    /// Time between a pass's intent and its first removal: long enough for other
    /// servers sharing the storage to see the intent (zero when none can).
    settle: Duration,
    /// The intents of passes, as uploads on shared storage check them.
    doom: doom::Board,
    /// Whether uses are recorded and written out: on a server that runs passes, and
    /// on one that shares its storage with a server that does.
    journaling: AtomicBool,
    /// Pass counters.
    pub stats: PassStats,
    /// What the page shows, from the same graph: told when the first listing is done.
    catalog: Arc<crate::cache::catalog::Catalog>,
}

impl Retention {
    /// Retention over `storage`. `narinfo_linger` is how long another server may still
    /// serve a narinfo this one removed; `catalog` holds the graph passes share with the page.
    pub fn new(
        storage: Arc<dyn Storage>,
        settings: RetentionSettings,
        narinfo_linger: Duration,
        catalog: Arc<crate::cache::catalog::Catalog>,
    ) -> Self {
        let storage_shared = storage.shared();
        let enabled = settings.enabled();
        Retention {
            storage,
            pins: Mutex::new(Pins::new(settings.pins.clone())),
            foreign_urls: Mutex::default(),
            settings,
            graph: catalog.graph().clone(),
            nars: Mutex::default(),
            uses: Uses::default(),
            loose_uses: Mutex::default(),
            bytes: AtomicU64::new(0),
            objects: AtomicU64::new(0),
            loaded: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
            uses_full: tokio::sync::Notify::new(),
            narinfo_linger,
            settle: if storage_shared {
                doom::SETTLE
            } else {
                Duration::ZERO
            },
            doom: doom::Board::default(),
            journaling: AtomicBool::new(enabled),
            stats: PassStats::default(),
            catalog,
        }
    }

    /// The catalog of stored paths, which passes keep current as they remove.
    pub fn catalog(&self) -> &Arc<crate::cache::catalog::Catalog> {
        &self.catalog
    }

    /// The settings.
    pub fn settings(&self) -> &RetentionSettings {
        &self.settings
    }

    /// Whether this server runs passes.
    pub fn enabled(&self) -> bool {
        self.settings.enabled()
    }

    fn graph(&self) -> std::sync::RwLockWriteGuard<'_, Graph> {
        crate::cache::graph::shared::write(&self.graph)
    }

    /// Whether the graph is kept: for passes, or for the page.
    fn indexing(&self) -> bool {
        self.enabled() || self.catalog.kept()
    }

    fn nars(&self) -> std::sync::MutexGuard<'_, HashMap<FileHash, NarActivity>> {
        self.nars.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Objects and bytes stored, once the first pass listed them: exact at each
    /// pass, plus what was uploaded since.
    pub fn stored(&self) -> Option<(u64, u64)> {
        self.loaded.load(Ordering::Acquire).then(|| {
            (
                self.objects.load(Ordering::Relaxed),
                self.bytes.load(Ordering::Relaxed),
            )
        })
    }

    /// Records a download or upload of `key`.
    pub fn record_use(&self, key: &str) {
        if !self.journaling.load(Ordering::Relaxed) {
            return;
        }
        if let Some(used) = Used::of_key(key) {
            if self.uses.record(used, now_secs()) {
                self.uses_full.notify_one();
            }
        }
    }

    /// Records `size` new bytes stored; starts a pass when they take the cache over
    /// its quota.
    pub fn created(&self, size: u64) {
        self.objects.fetch_add(1, Ordering::Relaxed);
        let now = self.bytes.fetch_add(size, Ordering::Relaxed) + size;
        if self.settings.max_size.is_some_and(|q| now > q) {
            self.wake.notify_one();
        }
    }

    /// Refuses an upload of `size` bytes that cannot fit in the quota even once every
    /// unpinned path is removed; starts a pass when it would take the cache over.
    pub fn check_room(&self, size: u64) -> Result<(), RetentionError> {
        let Some(quota) = self.settings.max_size else {
            return Ok(());
        };
        let pinned = self.stats.pinned_bytes.load(Ordering::Relaxed);
        if size.saturating_add(pinned) > quota {
            return Err(RetentionError::OverQuota {
                size,
                quota,
                pinned,
            });
        }
        if self.bytes.load(Ordering::Relaxed).saturating_add(size) > quota {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Wakes the pass loop (an upload went over the quota, or SIGHUP).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Re-reads the pins file (SIGHUP).
    pub fn reload_pins(&self) {
        self.pins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .refresh(true);
    }

    /// One pass: what it removes (or, with `dry_run`, would remove).
    pub async fn pass(&self, dry_run: bool) -> Result<PassReport, StorageError> {
        pass::run(self, dry_run).await
    }
}
