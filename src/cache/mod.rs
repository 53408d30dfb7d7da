//! Cache logic between the HTTP edge and storage: which keys exist, what an upload
//! must satisfy before it becomes visible, and what `nix-cache-info` says.

pub mod catalog;
pub mod compression;
pub mod graph;
pub mod index;
pub mod ingest;
pub mod json_check;
pub mod key;
pub mod nar;
pub mod nar_verify;
pub mod narinfo;
pub mod narinfo_cache;
pub mod retention;
#[cfg(test)]
mod rules_tests;
pub mod upstream;
pub mod verified;

/// Cases per generated-input test: `default`, ten times as many with
/// `NIX_STORED_ROBUST_FULL=1`, or `NIX_STORED_FUZZ_CASES`.
#[cfg(test)]
pub(crate) fn fuzz_cases(default: u32) -> u32 {
    if let Some(n) = std::env::var("NIX_STORED_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return n;
    }
    if std::env::var("NIX_STORED_ROBUST_FULL").as_deref() == Ok("1") {
        default * 10
    } else {
        default
    }
}

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use nix_derivation::StoreDir;
use nix_narinfo::TrustedPublicKey;

use crate::budget::{Budget, Reservation};
use crate::storage::{ObjectBody, ObjectMeta, ObjectReader, Storage, StorageError};
use key::{Kind, ObjectKey};

/// How the cache behaves, independent of where it stores objects.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// The store directory clients use, e.g. `/nix/store`.
    pub store_dir: StoreDir,
    /// The `Priority` advertised in `nix-cache-info` (lower is preferred).
    pub priority: i64,
    /// The largest upload accepted, in bytes.
    pub max_upload_size: u64,
    /// Keys a narinfo must be signed by; empty means no signature is required.
    pub trusted_keys: Vec<TrustedPublicKey>,
    /// Quota, age limit and pins.
    pub retention: retention::settings::RetentionSettings,
    /// How long another server sharing the storage may still answer a narinfo from
    /// memory after it is removed (the narinfo cache's TTL on S3; zero otherwise).
    pub narinfo_linger: std::time::Duration,
    /// Whether the catalog of stored paths (the page's) is kept.
    pub page: bool,
    /// Bytes of narinfo answers held in memory (0: none).
    pub narinfo_cache_size: u64,
    /// How those answers stay true to the storage.
    pub narinfo_cache_coherence: narinfo_cache::Coherence,
}

/// Errors of the cache layer. `http::error` maps each to a status code.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The path is not a cache key.
    #[error("invalid key: {0}")]
    BadKey(#[from] key::KeyError),
    /// The upload broke a verification rule; nothing was stored.
    #[error("{0}")]
    Rejected(String),
    /// The upload contradicts what the cache already holds under its key (a narinfo
    /// that would change a stored path); nothing was stored.
    #[error("{0}")]
    Conflict(String),
    /// The upload is larger than allowed.
    #[error("upload of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Declared or received size.
        size: u64,
        /// The applicable limit.
        limit: u64,
    },
    /// The client stopped sending the body.
    #[error("the request body was idle for too long")]
    BodyTimeout,
    /// The body could not be read (client gone, malformed framing).
    #[error("the request body could not be read: {0}")]
    BodyBroken(String),
    /// Holding the body would take the server past its memory budget; other uploads
    /// hold it now, so the same upload can succeed a little later.
    #[error("the server's memory budget of {limit} bytes (NIX_STORED_MEMORY_BUDGET) is taken by other uploads; retry in {retry_after} s")]
    MemoryBudget {
        /// The budget, in bytes.
        limit: u64,
        /// Seconds after which a retry is worth it.
        retry_after: u64,
    },
    /// Retention refused the upload (it references what a pass removes, or it
    /// cannot fit in the quota).
    #[error(transparent)]
    Retention(#[from] retention::RetentionError),
    /// The upload references a path this server is still pulling from an upstream,
    /// and the pull did not end within the wait: the same upload succeeds later.
    #[error("reference {0} is still being fetched from an upstream; retry later")]
    ReferencePending(String),
    /// The storage backend failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<retention::doom::DoomCheck> for CacheError {
    fn from(e: retention::doom::DoomCheck) -> Self {
        match e {
            retention::doom::DoomCheck::Refused(e) => CacheError::Retention(e),
            retention::doom::DoomCheck::Storage(e) => CacheError::Storage(e),
        }
    }
}

/// Upper bound on a `.ls` listing (validated as it streams, in constant memory):
/// the listing of a store path with a hundred thousand files is about 10 MiB.
pub const MAX_LISTING_SIZE: u64 = 64 << 20;

/// Seconds a client refused for lack of memory is told to wait: the buffers that
/// take the budget are held for the time of one small upload.
pub const MEMORY_RETRY_AFTER_SECS: u64 = 2;

/// What [`Cache::precheck_upload`] grants an upload: the memory its body may be held
/// in, for the kinds that are read whole (or, for a NAR whose uploader reserved it
/// beforehand, its decoder's).
#[derive(Debug)]
pub struct UploadPermit {
    memory: Option<Reservation>,
}

/// The cache: validated access to a storage backend.
pub struct Cache {
    storage: Arc<dyn Storage>,
    settings: CacheSettings,
    cache_info: String,
    index: Arc<index::NarinfoIndex>,
    /// Narinfo answers held in memory, for GET and HEAD.
    answers: Arc<narinfo_cache::NarinfoCache>,
    stored: Arc<StoredTotals>,
    /// Serialises the read-merge-write of narinfo uploads per key (striped), so that
    /// two concurrent re-signings cannot drop each other's signature.
    narinfo_locks: Box<[tokio::sync::Mutex<()>]>,
    budget: Arc<Budget>,
    verified: verified::VerifiedNars,
    retention: Arc<retention::Retention>,
    /// The pull-through upstream caches, if any.
    #[cfg(feature = "upstream")]
    upstreams: Option<upstream::Upstreams>,
}

/// What [`Cache::narinfo`] found.
pub enum Narinfo {
    /// No such narinfo.
    Absent,
    /// The narinfo, with its answer's headers.
    Found(narinfo_cache::Entry),
    /// A narinfo too large to be read whole (beyond any Nix writes): to be streamed.
    Large,
}

/// Stripes of [`Cache::narinfo_locks`]: uploads of different paths rarely share one.
const NARINFO_LOCK_STRIPES: usize = 64;

/// What the cache holds, for metrics: counted once at start by walking the storage,
/// then kept up to date with the objects created through this server. Objects other
/// writers add, and size changes of replaced objects, show at the next start.
#[derive(Debug, Default)]
pub struct StoredTotals {
    objects: AtomicU64,
    bytes: AtomicU64,
    counted: AtomicBool,
}

impl StoredTotals {
    /// Objects and bytes, or `None` until the first count finished.
    pub fn get(&self) -> Option<(u64, u64)> {
        self.counted.load(Ordering::Acquire).then(|| {
            (
                self.objects.load(Ordering::Relaxed),
                self.bytes.load(Ordering::Relaxed),
            )
        })
    }

    fn created(&self, size: u64) {
        self.objects.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(size, Ordering::Relaxed);
    }
}

impl Cache {
    /// Creates the cache over `storage`; bodies held in memory draw from `budget`.
    pub fn new(storage: Arc<dyn Storage>, settings: CacheSettings, budget: Arc<Budget>) -> Self {
        let answers = Arc::new(narinfo_cache::NarinfoCache::new(
            settings.narinfo_cache_size,
            settings.narinfo_cache_coherence,
        ));
        // Every write and removal of this server, whoever makes it, drops the answer.
        let storage: Arc<dyn Storage> = Arc::new(narinfo_cache::invalidating::Invalidating::new(
            storage,
            answers.clone(),
        ));
        let cache_info = format!(
            "StoreDir: {}\nWantMassQuery: 1\nPriority: {}\n",
            settings.store_dir.as_str(),
            settings.priority
        );
        let retention = Arc::new(retention::Retention::new(
            storage.clone(),
            settings.retention.clone(),
            settings.narinfo_linger,
            Arc::new(catalog::Catalog::new(settings.page)),
        ));
        Cache {
            retention,
            storage,
            settings,
            cache_info,
            index: Arc::new(index::NarinfoIndex::new()),
            answers,
            stored: Arc::default(),
            verified: verified::VerifiedNars::default(),
            narinfo_locks: (0..NARINFO_LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            budget,
            #[cfg(feature = "upstream")]
            upstreams: None,
        }
    }

    #[cfg(feature = "upstream")]
    /// The cache with pull-through `upstreams`: narinfos storage lacks are asked of them.
    pub fn with_upstreams(mut self, upstreams: Option<upstream::Upstreams>) -> Self {
        self.upstreams = upstreams;
        self
    }

    #[cfg(feature = "upstream")]
    /// The pull-through upstreams, for metrics.
    pub fn upstreams(&self) -> Option<&upstream::Upstreams> {
        self.upstreams.as_ref()
    }

    /// Without the upstream feature nothing is ever pulled: a miss stays a miss.
    #[cfg(not(feature = "upstream"))]
    async fn upstream_stat(
        self: &Arc<Self>,
        _key: &ObjectKey,
    ) -> Result<Option<ObjectMeta>, CacheError> {
        Ok(None)
    }

    #[cfg(not(feature = "upstream"))]
    async fn upstream_open(
        self: &Arc<Self>,
        _key: &ObjectKey,
        _offset: u64,
        _end: Option<u64>,
    ) -> Result<Option<ObjectReader>, CacheError> {
        Ok(None)
    }

    #[cfg(not(feature = "upstream"))]
    async fn upstream_reference(&self, _hash: &str) -> Result<bool, CacheError> {
        Ok(false)
    }

    /// The memory budget shared by everything that holds client data in memory.
    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    fn out_of_memory(&self) -> CacheError {
        CacheError::MemoryBudget {
            limit: self.budget.limit(),
            retry_after: MEMORY_RETRY_AFTER_SECS,
        }
    }

    /// Counts what the storage holds in the background, for [`Cache::stored`].
    pub fn start_usage_count(&self) {
        let (storage, stored) = (self.storage.clone(), self.stored.clone());
        tokio::spawn(async move {
            match storage.usage().await {
                Ok(Some(u)) => {
                    // Uploads finished during the walk were counted already; they may be
                    // counted twice if the walk saw them too (the figure is a gauge, not
                    // an inventory).
                    stored.objects.fetch_add(u.objects, Ordering::Relaxed);
                    stored.bytes.fetch_add(u.bytes, Ordering::Relaxed);
                    stored.counted.store(true, Ordering::Release);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!("cannot count the stored objects: {e}"),
            }
        });
    }

    /// Objects and bytes stored, once counted.
    pub fn stored(&self) -> &StoredTotals {
        &self.stored
    }

    /// Whether the storage answers and holds a cache: the one object every cache has
    /// (written at start, and by `nix copy --to`) is looked up. A missing one means
    /// the directory or bucket went away underneath the server.
    pub async fn storage_ready(&self) -> Result<(), CacheError> {
        match self.storage.stat("nix-cache-info").await? {
            Some(_) => Ok(()),
            None => Err(CacheError::Storage(StorageError::Io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "nix-cache-info is missing from the storage",
            )))),
        }
    }

    /// Starts building and maintaining the in-memory narinfo index in the background;
    /// until it is complete, every lookup goes to storage.
    pub fn start_index(&self) {
        let (catalog, storage) = (self.catalog().clone(), self.storage.clone());
        let added: index::OnAdded =
            Box::new(move |names| catalog::load::added(&catalog, &storage, names));
        tokio::spawn(index::maintain(
            self.index.clone(),
            self.storage.clone(),
            added,
            self.answers.clone(),
        ));
    }

    /// Opens the catalog of stored paths (the page's) at the page's first visit:
    /// it is loaded in the background, and kept from then on.
    pub fn open_catalog(&self) {
        if self.catalog().start_keeping() {
            catalog::load::spawn(self.catalog().clone(), self.storage.clone());
        }
    }

    /// The catalog of stored paths.
    pub fn catalog(&self) -> &Arc<catalog::Catalog> {
        self.retention.catalog()
    }

    /// The stored narinfo of store hash `hash`, for the page (not a use of it, for
    /// retention); `None` when absent or larger than a narinfo can be.
    pub async fn narinfo_text(&self, hash: &str) -> Result<Option<Vec<u8>>, CacheError> {
        let key = format!("{hash}.narinfo");
        let limit = narinfo::MAX_NARINFO_SIZE;
        Ok(crate::storage::read_whole(self.storage.as_ref(), &key, limit).await?)
    }

    /// Starts retention in the background: passes, when a quota or an age limit is
    /// set; on shared storage without them, the uses other servers' passes need.
    pub fn start_retention(&self) {
        tokio::spawn(self.retention.clone().run());
    }

    /// Retention, for its passes, status and metrics.
    pub fn retention(&self) -> &Arc<retention::Retention> {
        &self.retention
    }

    /// The narinfo index, for status reports.
    pub fn index(&self) -> &index::NarinfoIndex {
        &self.index
    }

    /// Whether storage needs asking: `false` for a narinfo the index knows is absent.
    fn may_exist(&self, key: &ObjectKey) -> bool {
        match (key.kind(), key.store_hash()) {
            (Kind::NarInfo, Some(hash)) => self.index.may_exist(hash),
            _ => true,
        }
    }

    /// The `nix-cache-info` document, generated from the settings.
    pub fn cache_info(&self) -> &str {
        &self.cache_info
    }

    /// The settings this cache runs with.
    pub fn settings(&self) -> &CacheSettings {
        &self.settings
    }

    /// The narinfo answers held in memory, for metrics.
    pub fn narinfo_cache(&self) -> &narinfo_cache::NarinfoCache {
        &self.answers
    }

    /// A narinfo GET answered from memory: the held narinfo, `None` when storage
    /// must be asked. Counts as a use, as a read from storage does.
    pub fn narinfo_in_memory(&self, key: &ObjectKey) -> Option<narinfo_cache::Entry> {
        let entry = self.held(key)?;
        self.retention.record_use(key.as_str());
        Some(entry)
    }

    /// A narinfo GET's answer, from memory or read now (and then kept): the narinfo
    /// with its headers built once.
    pub async fn narinfo(self: &Arc<Self>, key: &ObjectKey) -> Result<Narinfo, CacheError> {
        if let Some(entry) = self.narinfo_in_memory(key) {
            return Ok(Narinfo::Found(entry));
        }
        let mut found = Narinfo::Absent;
        if self.may_exist(key) {
            found = self.read_narinfo(key, self.ticket(key)).await?;
        }
        if !matches!(found, Narinfo::Absent) {
            self.retention.record_use(key.as_str());
            return Ok(found);
        }
        // From an upstream: never held, since a pending narinfo is no stored one (a
        // pull that fails leaves nothing to drop it); a path being pulled is no use
        // of a stored one, for retention.
        Ok(match self.upstream_open(key, 0, None).await? {
            None => Narinfo::Absent,
            Some(ObjectReader {
                meta,
                body: ObjectBody::Bytes(bytes),
            }) => Narinfo::Found(narinfo_cache::Entry::new(&meta, &bytes)),
            Some(_) => Narinfo::Large,
        })
    }

    async fn read_narinfo(
        &self,
        key: &ObjectKey,
        ticket: Option<narinfo_cache::Ticket>,
    ) -> Result<Narinfo, CacheError> {
        Ok(match self.storage.open(key.as_str(), 0).await? {
            None => Narinfo::Absent,
            Some(ObjectReader {
                meta,
                body: ObjectBody::Bytes(bytes),
            }) => {
                let entry = narinfo_cache::Entry::new(&meta, &bytes);
                if let Some(ticket) = ticket {
                    self.answers.insert_entry(ticket, entry.clone());
                }
                Narinfo::Found(entry)
            }
            Some(_) => Narinfo::Large,
        })
    }

    /// The held narinfo of a narinfo key; `None` for other keys or when not held.
    fn held(&self, key: &ObjectKey) -> Option<narinfo_cache::Entry> {
        if key.kind() != Kind::NarInfo {
            return None;
        }
        self.answers.get(key.store_hash()?)
    }

    /// What a read of a narinfo notes before asking storage, to keep its answer.
    fn ticket(&self, key: &ObjectKey) -> Option<narinfo_cache::Ticket> {
        if key.kind() != Kind::NarInfo {
            return None;
        }
        self.answers.ticket(key.store_hash()?)
    }

    /// Metadata of an object, `None` when absent. With upstreams, a narinfo storage
    /// lacks is looked up in them, and a path being pulled is answered from memory.
    pub async fn stat(self: &Arc<Self>, key: &ObjectKey) -> Result<Option<ObjectMeta>, CacheError> {
        let mut meta = None;
        if let Some(entry) = self.held(key) {
            meta = Some(entry.meta());
        } else if self.may_exist(key) {
            meta = match self.ticket(key) {
                // A narinfo is read whole to be held: the directory reads a small
                // object for its validator anyway, and an S3 GET of a kilobyte costs
                // what its HEAD does.
                Some(ticket) => match self.storage.open(key.as_str(), 0).await? {
                    Some(ObjectReader {
                        meta,
                        body: ObjectBody::Bytes(bytes),
                    }) => {
                        self.answers.insert(ticket, &meta, &bytes);
                        Some(meta)
                    }
                    other => other.map(|r| r.meta),
                },
                None => self.storage.stat(key.as_str()).await?,
            };
        }
        if meta.is_some() {
            self.retention.record_use(key.as_str());
            return Ok(meta);
        }
        // A path being pulled is no use of a stored one, for retention.
        self.upstream_stat(key).await
    }

    /// Opens an object from `offset`, `None` when absent. `end` (inclusive) is where
    /// the caller stops reading, if not at the end: a NAR still arriving from an
    /// upstream then holds its last byte back only until the file is verified.
    pub async fn open(
        self: &Arc<Self>,
        key: &ObjectKey,
        offset: u64,
        end: Option<u64>,
    ) -> Result<Option<ObjectReader>, CacheError> {
        let mut reader = None;
        if let Some(entry) = self.held(key) {
            let body = entry.body();
            reader = Some(ObjectReader {
                meta: entry.meta(),
                body: ObjectBody::Bytes(body.slice((offset as usize).min(body.len())..)),
            });
        } else if self.may_exist(key) {
            let ticket = self.ticket(key).filter(|_| offset == 0);
            reader = self.storage.open(key.as_str(), offset).await?;
            if let (
                Some(ticket),
                Some(ObjectReader {
                    meta,
                    body: ObjectBody::Bytes(bytes),
                }),
            ) = (ticket, &reader)
            {
                self.answers.insert(ticket, meta, bytes);
            }
        }
        if reader.is_some() {
            self.retention.record_use(key.as_str());
            return Ok(reader);
        }
        self.upstream_open(key, offset, end).await
    }

    /// Where a client can download `key` directly: a presigned URL, for NARs only and
    /// only when the backend is configured for it. `None` means: serve it here.
    /// Checks that the object exists first, so a missing NAR is still a plain 404.
    pub async fn redirect_url(&self, key: &ObjectKey) -> Result<Option<String>, CacheError> {
        if key.kind() != Kind::Nar {
            return Ok(None);
        }
        let Some(url) = self.storage.presign_get(key.as_str()).await? else {
            return Ok(None);
        };
        match self.storage.stat(key.as_str()).await? {
            Some(_) => Ok(Some(url)),
            None => Ok(None),
        }
    }

    /// The largest body accepted for this kind of object.
    pub fn upload_limit(&self, kind: Kind) -> u64 {
        match kind {
            // Small documents are read whole into memory to be validated.
            Kind::NarInfo | Kind::Realisation | Kind::DebugInfo => narinfo::MAX_NARINFO_SIZE as u64,
            Kind::Listing => MAX_LISTING_SIZE.min(self.settings.max_upload_size),
            _ => self.settings.max_upload_size,
        }
    }

    /// Checks what can be checked before reading an upload's body, so that a client
    /// can be refused before it sends (and loses) the body. A body to be held whole
    /// gets its declared size from the memory budget here (or grows its share as it
    /// arrives, without a Content-Length).
    pub fn precheck_upload(
        &self,
        key: &ObjectKey,
        declared: Option<u64>,
    ) -> Result<UploadPermit, CacheError> {
        let limit = self.upload_limit(key.kind());
        match declared {
            Some(size) if size > limit => return Err(CacheError::TooLarge { size, limit }),
            // Never stored, so it needs no room.
            _ if key.kind() == Kind::CacheInfo => {}
            Some(size) => {
                self.retention.check_room(size)?;
                self.storage.ensure_room(size)?
            }
            None => {}
        }
        let memory = match key.kind() {
            Kind::NarInfo | Kind::Realisation | Kind::DebugInfo => Some(
                self.budget
                    .try_reserve(declared.unwrap_or(0))
                    .ok_or_else(|| self.out_of_memory())?,
            ),
            _ => None,
        };
        Ok(UploadPermit { memory })
    }
}
