//! A storage backend in memory, for unit tests of the cache's rules: every upload
//! rule can be checked in milliseconds, without a directory or a bucket.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;

use super::{Listed, ObjectBody, ObjectMeta, ObjectReader, Result, Storage, Upload};

/// Objects in a map, replaced whole on commit like the real backends do.
#[derive(Default)]
pub struct MemoryStorage {
    objects: Arc<Mutex<BTreeMap<String, Bytes>>>,
    times: Mutex<BTreeMap<String, u64>>,
}

impl MemoryStorage {
    /// The bytes stored under `key`, if any.
    pub fn get(&self, key: &str) -> Option<Bytes> {
        self.lock().get(key).cloned()
    }

    /// Stores `bytes` under `key` directly, as another writer of the storage would.
    pub fn insert(&self, key: &str, bytes: &[u8]) {
        self.lock()
            .insert(key.to_owned(), Bytes::copy_from_slice(bytes));
    }

    /// Sets the modification time `key` is listed with (seconds since the epoch);
    /// objects are otherwise listed as modified now.
    pub fn set_modified(&self, key: &str, secs: u64) {
        self.times
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_owned(), secs);
    }

    fn modified(&self, key: &str) -> u64 {
        let times = self.times.lock().unwrap_or_else(|e| e.into_inner());
        times.get(key).copied().unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        })
    }

    /// Every key, sorted.
    pub fn keys(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Bytes>> {
        self.objects.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn meta(bytes: &Bytes) -> ObjectMeta {
    ObjectMeta {
        size: bytes.len() as u64,
        version: format!("{:p}-{}", bytes.as_ptr(), bytes.len()),
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    async fn stat(&self, key: &str) -> Result<Option<ObjectMeta>> {
        Ok(self.lock().get(key).map(meta))
    }

    async fn open(&self, key: &str, offset: u64) -> Result<Option<ObjectReader>> {
        Ok(self.lock().get(key).map(|b| {
            let start = usize::try_from(offset).unwrap_or(usize::MAX).min(b.len());
            ObjectReader {
                meta: meta(b),
                body: ObjectBody::Bytes(b.slice(start..)),
            }
        }))
    }

    async fn begin_upload(&self, key: &str) -> Result<Box<dyn Upload>> {
        Ok(Box::new(MemoryUpload {
            objects: self.objects.clone(),
            key: key.to_owned(),
            buf: Vec::new(),
        }))
    }

    async fn list_objects(
        &self,
        folder: &str,
        sink: tokio::sync::mpsc::Sender<Vec<Listed>>,
    ) -> Result<()> {
        let listed = self
            .lock()
            .iter()
            .filter(|(key, _)| key.rsplit_once('/').map_or("", |(dir, _)| dir) == folder)
            .map(|(key, bytes)| Listed {
                key: key.clone(),
                size: bytes.len() as u64,
                modified: self.modified(key),
            })
            .collect();
        let _ = sink.send(listed).await;
        Ok(())
    }

    async fn delete(&self, keys: &[String]) -> Result<()> {
        let mut objects = self.lock();
        for key in keys {
            objects.remove(key);
        }
        Ok(())
    }

    fn describe(&self) -> String {
        "memory".to_owned()
    }
}

struct MemoryUpload {
    objects: Arc<Mutex<BTreeMap<String, Bytes>>>,
    key: String,
    buf: Vec<u8>,
}

#[async_trait]
impl Upload for MemoryUpload {
    async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        self.buf.extend_from_slice(chunk);
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<bool> {
        let mut objects = self.objects.lock().unwrap_or_else(|e| e.into_inner());
        Ok(objects.insert(self.key, Bytes::from(self.buf)).is_none())
    }
}
