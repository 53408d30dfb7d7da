//! Which narinfos exist, in memory.
//!
//! Substitution asks every configured cache for every path, so most narinfo requests
//! a cache sees are for paths it does not have. With this index such a request is
//! answered without asking storage at all. The index may only err on the side of
//! "may exist": a stale or missing entry must never hide an object. It is therefore
//! used only while it is complete, i.e. after a full listing, with the backend's
//! watch reporting everything written since (by this server or anyone else), and
//! it is filled before an upload becomes visible. When the watch loses events the
//! index is rebuilt, and when a backend cannot watch, there is no index.

use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, RwLock};

use tokio::sync::mpsc;

use super::key::nix32_digit;
use super::narinfo_cache::NarinfoCache;
use crate::storage::{Storage, TopLevelEvent};

/// Nix32 characters of a store hash that make up its fingerprint (12 × 5 = 60 bits;
/// the index keeps 32 of them, see [`slot`], the narinfo cache hashes all of them).
const FINGERPRINT_CHARS: usize = 12;

/// The set of narinfos in storage, by fingerprint of their store hash.
pub struct NarinfoIndex {
    inner: RwLock<Inner>,
}

struct Inner {
    /// Whether `keys` holds every narinfo in storage.
    complete: bool,
    keys: HashSet<u32, Spread>,
}

impl Default for NarinfoIndex {
    fn default() -> Self {
        Self::new()
    }
}

impl NarinfoIndex {
    /// An empty, incomplete index: every lookup goes to storage until it is built.
    pub fn new() -> Self {
        NarinfoIndex {
            inner: RwLock::new(Inner {
                complete: false,
                keys: HashSet::with_hasher(Spread),
            }),
        }
    }

    /// `false` only when the narinfo of `store_hash` is certainly not in storage.
    pub fn may_exist(&self, store_hash: &str) -> bool {
        let Some(fp) = fingerprint(store_hash) else {
            return true;
        };
        let inner = self.read();
        !inner.complete || inner.keys.contains(&slot(fp))
    }

    /// Records a narinfo; called before an upload of it becomes visible.
    pub fn insert(&self, store_hash: &str) {
        if let Some(fp) = fingerprint(store_hash) {
            self.write().keys.insert(slot(fp));
        }
    }

    /// Whether lookups are answered from the index.
    pub fn is_complete(&self) -> bool {
        self.read().complete
    }

    /// Number of narinfos known.
    pub fn len(&self) -> usize {
        self.read().keys.len()
    }

    /// Whether no narinfo is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn insert_names(&self, names: &[String]) {
        let mut inner = self.write();
        for name in names {
            if let Some(fp) = name.strip_suffix(".narinfo").and_then(fingerprint) {
                inner.keys.insert(slot(fp));
            }
        }
    }

    fn set_complete(&self, complete: bool) {
        self.write().complete = complete;
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        // Every update leaves the set valid: a panic elsewhere cannot corrupt it.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// The first [`FINGERPRINT_CHARS`] characters of a nix32 store hash as a number;
/// `None` for anything that is not a store hash.
pub(crate) fn fingerprint(store_hash: &str) -> Option<u64> {
    let bytes = store_hash.as_bytes();
    if bytes.len() != 32 {
        return None;
    }
    let mut fp = 0u64;
    for (i, c) in bytes.iter().enumerate() {
        let digit = nix32_digit(*c)?;
        if i < FINGERPRINT_CHARS {
            fp = fp << 5 | u64::from(digit);
        }
    }
    Some(fp)
}

/// What the set keeps of a fingerprint: its top 32 bits. At a million paths, a
/// lookup for an absent path finds a present one's bits with a probability of
/// 1 in 4 000 (and then asks storage); the table takes 5 bytes a slot instead of 9
/// (10 MiB at a million paths instead of 19), which leaves room for the narinfo
/// cache.
fn slot(fp: u64) -> u32 {
    (fp >> (FINGERPRINT_CHARS * 5 - 32)) as u32
}

/// Store hashes are already uniformly distributed: spreading the fingerprint's bits
/// over the word (for the table's control bytes) is all the hashing they need, and
/// much cheaper than SipHash on the hot path.
#[derive(Clone, Copy, Default)]
pub(crate) struct Spread;

/// [`Spread`]'s hasher.
pub(crate) struct SpreadHasher(u64);

impl BuildHasher for Spread {
    type Hasher = SpreadHasher;
    fn build_hasher(&self) -> SpreadHasher {
        SpreadHasher(0)
    }
}

impl Hasher for SpreadHasher {
    fn finish(&self) -> u64 {
        self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n);
    }
}

/// Called with the names of objects the watch saw appear (written by this server or
/// another writer).
pub type OnAdded = Box<dyn Fn(&[String]) + Send + Sync>;

/// Builds the index from a full listing and keeps it complete from the backend's
/// watch; returns when the backend cannot watch (the index then stays incomplete,
/// so unused) or the watch ends. What the watch sees appear is also told `added`;
/// `answers` (the narinfo cache) hears of every change, and is used only while the
/// watch runs.
pub async fn maintain(
    index: Arc<NarinfoIndex>,
    storage: Arc<dyn Storage>,
    added: OnAdded,
    answers: Arc<NarinfoCache>,
) {
    let (watch_tx, mut watch) = mpsc::channel(256);
    match storage.watch_top_level(watch_tx) {
        Ok(true) => answers.set_watched(true),
        Ok(false) => {
            tracing::info!("narinfo index: off (this storage cannot be watched for changes)");
            return;
        }
        Err(e) => {
            tracing::warn!("narinfo index: off (cannot watch the storage: {e})");
            return;
        }
    }
    loop {
        let started = std::time::Instant::now();
        let (list_tx, mut listed) = mpsc::channel(4);
        let lister = {
            let storage = storage.clone();
            tokio::spawn(async move { storage.list_top_level(list_tx).await })
        };
        // The watch was installed before the listing started, so between them they
        // see everything; news is applied while the listing runs.
        let mut lost = false;
        let mut listing = true;
        while listing {
            tokio::select! {
                batch = listed.recv() => match batch {
                    Some(names) => index.insert_names(&names),
                    None => listing = false,
                },
                event = watch.recv() => match event {
                    Some(TopLevelEvent::Added(names)) => {
                        index.insert_names(&names);
                        invalidate(&answers, &names);
                        added(&names);
                    }
                    Some(TopLevelEvent::Changed(names)) => invalidate(&answers, &names),
                    Some(TopLevelEvent::Lost) => {
                        answers.clear();
                        lost = true;
                    }
                    None => {
                        answers.set_watched(false);
                        return;
                    }
                },
            }
        }
        match lister.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!("narinfo index: off (listing the storage failed: {e})");
                answers.set_watched(false);
                return;
            }
            Err(e) => {
                tracing::warn!("narinfo index: off (listing the storage failed: {e})");
                answers.set_watched(false);
                return;
            }
        }
        if lost {
            continue;
        }
        index.set_complete(true);
        tracing::info!(
            "narinfo index: {} narinfos, built in {} ms",
            index.len(),
            started.elapsed().as_millis()
        );
        loop {
            match watch.recv().await {
                Some(TopLevelEvent::Added(names)) => {
                    index.insert_names(&names);
                    invalidate(&answers, &names);
                    added(&names);
                }
                Some(TopLevelEvent::Changed(names)) => invalidate(&answers, &names),
                Some(TopLevelEvent::Lost) => {
                    tracing::warn!("narinfo index: changes were missed; rebuilding it");
                    answers.clear();
                    index.set_complete(false);
                    break;
                }
                None => {
                    answers.set_watched(false);
                    index.set_complete(false);
                    tracing::warn!("narinfo index: off (the storage watch ended)");
                    return;
                }
            }
        }
    }
}

fn invalidate(answers: &NarinfoCache, names: &[String]) {
    for name in names {
        answers.invalidate(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0123456789abcdfghijklmnpqrsvwxyz";
    const B: &str = "zyxwvsrqpnmlkjihgfdcba9876543210";

    #[test]
    fn incomplete_index_answers_maybe() {
        let idx = NarinfoIndex::new();
        assert!(idx.may_exist(A));
        idx.set_complete(true);
        assert!(!idx.may_exist(A));
        idx.insert(A);
        assert!(idx.may_exist(A));
        assert!(!idx.may_exist(B));
    }

    #[test]
    fn names_other_than_narinfos_are_ignored() {
        let idx = NarinfoIndex::new();
        idx.insert_names(&[
            format!("{A}.narinfo"),
            format!("{B}.ls"),
            "nix-cache-info".into(),
            "short.narinfo".into(),
            format!("{}.narinfo", &B[..31]),
        ]);
        idx.set_complete(true);
        assert_eq!(idx.len(), 1);
        assert!(idx.may_exist(A));
        assert!(!idx.may_exist(B));
    }

    /// A storage whose watch reports what the test sends.
    struct Watchable {
        inner: crate::storage::memory::MemoryStorage,
        sink: std::sync::Mutex<Option<mpsc::Sender<TopLevelEvent>>>,
    }

    #[async_trait::async_trait]
    impl Storage for Watchable {
        async fn stat(
            &self,
            key: &str,
        ) -> crate::storage::Result<Option<crate::storage::ObjectMeta>> {
            self.inner.stat(key).await
        }
        async fn open(
            &self,
            key: &str,
            offset: u64,
        ) -> crate::storage::Result<Option<crate::storage::ObjectReader>> {
            self.inner.open(key, offset).await
        }
        async fn begin_upload(
            &self,
            key: &str,
        ) -> crate::storage::Result<Box<dyn crate::storage::Upload>> {
            self.inner.begin_upload(key).await
        }
        fn watch_top_level(
            &self,
            sink: mpsc::Sender<TopLevelEvent>,
        ) -> crate::storage::Result<bool> {
            *self.sink.lock().unwrap() = Some(sink);
            Ok(true)
        }
        async fn list_objects(
            &self,
            folder: &str,
            sink: mpsc::Sender<Vec<crate::storage::Listed>>,
        ) -> crate::storage::Result<()> {
            self.inner.list_objects(folder, sink).await
        }
        async fn delete(&self, keys: &[String]) -> crate::storage::Result<()> {
            self.inner.delete(keys).await
        }
        fn describe(&self) -> String {
            "watchable".into()
        }
    }

    /// Waits (at most 10 s) for `f`.
    async fn eventually(mut f: impl FnMut() -> bool) -> bool {
        for _ in 0..1000 {
            if f() {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        f()
    }

    #[tokio::test]
    async fn the_watch_drops_held_narinfos_and_the_cache_stops_with_it() {
        use crate::cache::narinfo_cache::{Coherence, NarinfoCache};
        let storage = Arc::new(Watchable {
            inner: Default::default(),
            sink: std::sync::Mutex::new(None),
        });
        let answers = Arc::new(NarinfoCache::new(1 << 20, Coherence::Watched));
        let index = Arc::new(NarinfoIndex::new());
        tokio::spawn(maintain(
            index.clone(),
            storage.clone(),
            Box::new(|_| {}),
            answers.clone(),
        ));
        assert!(eventually(|| index.is_complete()).await);
        let sink = storage.sink.lock().unwrap().clone().unwrap();
        let meta = crate::storage::ObjectMeta {
            size: 1,
            version: "v".into(),
        };
        let hold = |h: &str| {
            let t = answers.ticket(h).expect("on while watched");
            answers.insert(t, &meta, &bytes::Bytes::from_static(b"x"));
            assert!(answers.get(h).is_some());
        };
        let events = [
            TopLevelEvent::Added(vec![format!("{A}.narinfo")]),
            TopLevelEvent::Changed(vec![format!("{A}.narinfo")]),
            TopLevelEvent::Lost,
        ];
        for event in events {
            hold(A);
            hold(B);
            let lost = event == TopLevelEvent::Lost;
            sink.send(event).await.unwrap();
            assert!(eventually(|| answers.get(A).is_none()).await);
            assert_eq!(
                answers.get(B).is_none(),
                lost,
                "only a loss drops the others"
            );
            assert!(eventually(|| index.is_complete()).await);
        }
        hold(A);
        drop(sink);
        *storage.sink.lock().unwrap() = None;
        assert!(
            eventually(|| answers.ticket(A).is_none()).await,
            "off without a watch"
        );
        assert!(answers.get(A).is_none());
    }

    #[test]
    fn fingerprints_need_a_store_hash() {
        assert_eq!(fingerprint("00000000000000000000000000000000"), Some(0));
        assert!(fingerprint("e000000000000000000000000000000e").is_none());
        assert!(fingerprint("00000000000000000000000000000000x").is_none());
        assert_ne!(fingerprint(A), fingerprint(B));
    }
}
