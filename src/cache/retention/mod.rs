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
pub mod graph;
mod metrics;
mod pass;
pub mod pins;
mod removal;
pub mod settings;
mod survey;
#[cfg(test)]
mod tests;
pub mod uses;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use graph::{path_hash, FileHash, Graph, NarKey, PathHash};
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

/// In-flight work on a NAR file, so that a pass never removes one that an upload is
/// about to reference, and uploads never reference one a pass is removing.
#[derive(Debug, Default, Clone, Copy)]
struct NarActivity {
    holds: u32,
    last: u32,
    removing: bool,
}

/// Counters of the passes, for `/metrics`.
#[derive(Debug, Default)]
pub struct PassStats {
    /// Passes finished.
    pub passes: AtomicU64,
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
    graph: Mutex<Graph>,
    nars: Mutex<HashMap<FileHash, NarActivity>>,
    uses: Uses,
    /// Latest uses of objects without references (logs, …), by key, as merged from
    /// the journals.
    loose_uses: Mutex<HashMap<Box<str>, u32>>,
    pins: Mutex<Pins>,
    /// Bytes stored, as of the last listing plus what was uploaded since.
    bytes: AtomicU64,
    /// Objects stored, likewise.
    objects: AtomicU64,
    /// Whether the graph holds every stored narinfo (after the first pass's listing).
    loaded: AtomicBool,
    wake: tokio::sync::Notify,
    /// Time between removing narinfos and their NARs: how long another server may
    /// still answer a removed narinfo from memory (S3's narinfo memo).
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
}

/// An upload in flight that references paths and a NAR: until it is dropped, none of
/// them can be removed. [`Hold::stored`] records the narinfo once it is committed.
pub struct Hold<'a> {
    retention: &'a Retention,
    refs: Vec<PathHash>,
    nar: Option<NarKey>,
    path: Option<PathHash>,
}

impl Retention {
    /// Retention over `storage`. `narinfo_linger` is how long another server may still
    /// serve a narinfo this one removed.
    pub fn new(
        storage: Arc<dyn Storage>,
        settings: RetentionSettings,
        narinfo_linger: Duration,
    ) -> Self {
        let storage_shared = storage.shared();
        let enabled = settings.enabled();
        Retention {
            storage,
            pins: Mutex::new(Pins::new(settings.pins.clone())),
            settings,
            graph: Mutex::new(Graph::default()),
            nars: Mutex::default(),
            uses: Uses::default(),
            loose_uses: Mutex::default(),
            bytes: AtomicU64::new(0),
            objects: AtomicU64::new(0),
            loaded: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
            narinfo_linger,
            settle: if storage_shared {
                doom::SETTLE
            } else {
                Duration::ZERO
            },
            doom: doom::Board::default(),
            journaling: AtomicBool::new(enabled),
            stats: PassStats::default(),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &RetentionSettings {
        &self.settings
    }

    /// Whether this server runs passes.
    pub fn enabled(&self) -> bool {
        self.settings.enabled()
    }

    fn graph(&self) -> std::sync::MutexGuard<'_, Graph> {
        self.graph.lock().unwrap_or_else(|e| e.into_inner())
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
                self.wake.notify_one();
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

    /// Holds what a narinfo upload of `path` references (its NAR `nar`, its
    /// `refs`) until the returned hold is dropped; refused when a pass is removing
    /// any of them, or the path itself.
    pub fn hold_narinfo(
        &self,
        path: &str,
        nar: &str,
        refs: &[String],
    ) -> Result<Hold<'_>, RetentionError> {
        let mut hold = Hold {
            retention: self,
            refs: Vec::with_capacity(refs.len()),
            nar: None,
            path: path_hash(path),
        };
        if !self.enabled() {
            return Ok(hold);
        }
        let refused = |what: &str| {
            RetentionError::Removing(format!(
                "{what} is being removed by a retention pass; upload it again"
            ))
        };
        let mut graph = self.graph();
        if hold.path.is_some_and(|h| graph.is_removing(&h)) {
            return Err(refused(&format!("path {path}")));
        }
        for r in refs {
            let Some(h) = path_hash(r) else { continue };
            if !graph.hold(&h) {
                drop(graph);
                return Err(refused(&format!("reference {r}")));
            }
            hold.refs.push(h);
        }
        drop(graph);
        if let Some(key) = NarKey::parse(nar) {
            self.hold_nar_key(&key)
                .map_err(|()| refused(&format!("NAR {nar}")))?;
            hold.nar = Some(key);
        }
        Ok(hold)
    }

    /// Holds a NAR while it is uploaded; refused while a pass removes it.
    pub fn hold_nar(&self, nar: &str) -> Result<Hold<'_>, RetentionError> {
        let mut hold = Hold {
            retention: self,
            refs: Vec::new(),
            nar: None,
            path: None,
        };
        if !self.enabled() {
            return Ok(hold);
        }
        if let Some(key) = NarKey::parse(nar) {
            self.hold_nar_key(&key).map_err(|()| {
                RetentionError::Removing(format!(
                    "{nar} is being removed by a retention pass; upload it again"
                ))
            })?;
            hold.nar = Some(key);
        }
        Ok(hold)
    }

    fn hold_nar_key(&self, key: &NarKey) -> Result<(), ()> {
        let mut nars = self.nars();
        let a = nars.entry(key.hash).or_default();
        if a.removing {
            return Err(());
        }
        a.holds += 1;
        a.last = now_secs();
        Ok(())
    }

    /// Whether the NAR may be removed now (no upload holds it, none touched it since
    /// `since`); if so it is marked, and uploads of or referencing it are refused
    /// until [`Retention::nar_removed`].
    fn claim_nar(&self, hash: &FileHash, since: u32) -> bool {
        let mut nars = self.nars();
        let a = nars.entry(*hash).or_default();
        if a.holds > 0 || a.last >= since || a.removing {
            return false;
        }
        a.removing = true;
        true
    }

    fn nar_removed(&self, hash: &FileHash) {
        let mut nars = self.nars();
        if nars.get(hash).is_some_and(|a| a.holds == 0) {
            nars.remove(hash);
        } else if let Some(a) = nars.get_mut(hash) {
            a.removing = false;
        }
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

    /// Runs passes for as long as the runtime runs: the first at once (it loads the
    /// graph), then every interval, and whenever an upload goes over the quota. Uses
    /// are written out between passes.
    pub async fn run(self: Arc<Self>) {
        if !self.enabled() {
            if self.storage.shared() {
                self.journal_for_others().await;
            }
            return;
        }
        if self.storage.shared() {
            if let Err(e) = self.write_marker().await {
                tracing::warn!("cannot mark the storage as one retention passes run on: {e}");
            }
        }
        let mut next_pass = tokio::time::Instant::now();
        loop {
            let flush_at = tokio::time::Instant::now() + FLUSH_INTERVAL;
            let woken = tokio::select! {
                () = tokio::time::sleep_until(next_pass.min(flush_at)) => false,
                () = self.wake.notified() => true,
            };
            let now = tokio::time::Instant::now();
            let over = self
                .settings
                .max_size
                .is_some_and(|q| self.bytes.load(Ordering::Relaxed) > q);
            if now >= next_pass || (woken && over) {
                match self.pass(false).await {
                    Ok(report) => report.log(),
                    Err(e) => tracing::warn!("retention pass failed: {e}"),
                }
                next_pass = tokio::time::Instant::now() + self.settings.interval;
            } else if let Err(e) = self.flush().await {
                tracing::warn!("cannot write the recency journal: {e}");
            }
        }
    }

    /// On shared storage without passes of its own: records and writes out uses
    /// while another server runs passes on the storage (it leaves a marker).
    async fn journal_for_others(&self) {
        loop {
            match self.storage.stat(PASSES_MARKER).await {
                Ok(found) => {
                    let on = found.is_some();
                    if on != self.journaling.swap(on, Ordering::Relaxed) && on {
                        tracing::info!(
                            "another server runs retention passes on this storage: uses are written to {}",
                            uses::JOURNAL_FOLDER
                        );
                    }
                }
                Err(e) => tracing::debug!("cannot look for {PASSES_MARKER}: {e}"),
            }
            if let Err(e) = self.flush().await {
                tracing::warn!("cannot write the recency journal: {e}");
            }
            tokio::time::sleep(FLUSH_INTERVAL).await;
        }
    }

    async fn write_marker(&self) -> Result<(), StorageError> {
        let mut upload = self.storage.begin_upload(PASSES_MARKER).await?;
        upload
            .write(
                b"retention passes run on this storage: every server sharing it writes its uses\n",
            )
            .await?;
        upload.commit().await?;
        Ok(())
    }

    /// Writes out the uses recorded so far (also at shutdown).
    pub async fn flush(&self) -> Result<(), StorageError> {
        if !self.journaling.load(Ordering::Relaxed) {
            return Ok(());
        }
        let uses = self.uses.take();
        uses::write_journal(self.storage.as_ref(), &uses, now_secs()).await
    }

    /// One pass: what it removes (or, with `dry_run`, would remove).
    pub async fn pass(&self, dry_run: bool) -> Result<PassReport, StorageError> {
        pass::run(self, dry_run).await
    }
}

impl Hold<'_> {
    /// The narinfo was committed: the graph learns it (as used now), with `bytes` for
    /// the narinfo and its NAR.
    pub fn stored(&self, bytes: u64) {
        let (Some(path), Some(nar)) = (self.path, self.nar) else {
            return;
        };
        if !self.retention.enabled() {
            return;
        }
        self.retention
            .graph()
            .insert(&path, nar, &self.refs, now_secs(), bytes);
    }
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        if !self.retention.enabled() {
            return;
        }
        if !self.refs.is_empty() {
            let mut graph = self.retention.graph();
            for r in &self.refs {
                graph.release_hold(r);
            }
        }
        if let Some(nar) = self.nar {
            let mut nars = self.retention.nars();
            if let Some(a) = nars.get_mut(&nar.hash) {
                a.holds = a.holds.saturating_sub(1);
                a.last = now_secs();
            }
        }
    }
}
