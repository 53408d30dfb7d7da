//! The storage as the cache layer uses it: every write and removal through this
//! server drops the narinfo cache's entry for the key once it took effect, whoever
//! asked for it (uploads, pulls from upstream, retention's removals and withdrawals).

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc::Sender;

use super::NarinfoCache;
use crate::storage::{
    Listed, ObjectMeta, ObjectReader, Result, Storage, TopLevelEvent, Upload, Usage,
};

/// `inner`, telling `cache` about every write and removal.
pub struct Invalidating {
    inner: Arc<dyn Storage>,
    cache: Arc<NarinfoCache>,
}

impl Invalidating {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Storage>, cache: Arc<NarinfoCache>) -> Self {
        Invalidating { inner, cache }
    }
}

/// Drops the entries of `keys` when it goes: once a write or removal returned, or
/// was given up halfway.
struct InvalidateOnDrop<'a> {
    cache: &'a NarinfoCache,
    keys: &'a [String],
}

impl Drop for InvalidateOnDrop<'_> {
    fn drop(&mut self) {
        for key in self.keys {
            self.cache.invalidate(key);
        }
    }
}

struct InvalidatingUpload {
    inner: Box<dyn Upload>,
    key: String,
    cache: Arc<NarinfoCache>,
}

#[async_trait]
impl Upload for InvalidatingUpload {
    async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        self.inner.write(chunk).await
    }

    async fn commit(self: Box<Self>) -> Result<bool> {
        let InvalidatingUpload { inner, key, cache } = *self;
        // After the new object is visible (a failed commit may have half happened),
        // and also when the commit is dropped halfway (its client gone), which may
        // have made it visible all the same.
        let _invalidate = InvalidateOnDrop {
            cache: &cache,
            keys: std::slice::from_ref(&key),
        };
        inner.commit().await
    }
}

#[async_trait]
impl Storage for Invalidating {
    async fn stat(&self, key: &str) -> Result<Option<ObjectMeta>> {
        self.inner.stat(key).await
    }

    async fn open(&self, key: &str, offset: u64) -> Result<Option<ObjectReader>> {
        self.inner.open(key, offset).await
    }

    async fn begin_upload(&self, key: &str) -> Result<Box<dyn Upload>> {
        let inner = self.inner.begin_upload(key).await?;
        Ok(Box::new(InvalidatingUpload {
            inner,
            key: key.to_owned(),
            cache: self.cache.clone(),
        }))
    }

    async fn list_top_level(&self, sink: Sender<Vec<String>>) -> Result<()> {
        self.inner.list_top_level(sink).await
    }

    fn watch_top_level(&self, sink: Sender<TopLevelEvent>) -> Result<bool> {
        self.inner.watch_top_level(sink)
    }

    async fn list_objects(&self, folder: &str, sink: Sender<Vec<Listed>>) -> Result<()> {
        self.inner.list_objects(folder, sink).await
    }

    async fn delete(&self, keys: &[String]) -> Result<()> {
        let _invalidate = InvalidateOnDrop {
            cache: &self.cache,
            keys,
        };
        self.inner.delete(keys).await
    }

    async fn usage(&self) -> Result<Option<Usage>> {
        self.inner.usage().await
    }

    fn ensure_room(&self, size: u64) -> Result<()> {
        self.inner.ensure_room(size)
    }

    async fn presign_get(&self, key: &str) -> Result<Option<String>> {
        self.inner.presign_get(key).await
    }

    fn shared(&self) -> bool {
        self.inner.shared()
    }

    fn scratch_file(&self) -> std::io::Result<std::fs::File> {
        self.inner.scratch_file()
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}
