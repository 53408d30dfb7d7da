//! Narinfos recently read from the bucket, answered from memory for a short time.
//!
//! A narinfo hit over S3 is a round trip to the store; on a busy cache most hits are
//! for the same few thousand narinfos that every client asks for. Only narinfos that
//! exist are remembered, so nothing another server uploads is ever hidden: a
//! negative answer always comes from the bucket. What may be stale for up to the TTL
//! is a narinfo that was replaced (re-signed) or deleted through another server or
//! tool; the HTTP answers already allow caches to keep narinfos for 60 seconds.
//! Uploads through this server forget the key at once.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::storage::ObjectMeta;

/// Entries kept at most: narinfos are about 1 KiB, so this bounds the memory to a
/// few tens of MiB.
const MAX_ENTRIES: usize = 32 * 1024;

struct Entry {
    /// When the read that produced the entry was started: the age is counted from
    /// before the bucket answered, never from after.
    fetched: Instant,
    meta: ObjectMeta,
    bytes: Bytes,
}

/// The remembered narinfos.
pub struct Memo {
    ttl: Duration,
    entries: RwLock<HashMap<String, Entry>>,
}

impl Memo {
    /// A memo keeping entries for `ttl`; zero keeps nothing.
    pub fn new(ttl: Duration) -> Self {
        Memo {
            ttl,
            entries: RwLock::new(HashMap::new()),
        }
    }

    fn applies(&self, key: &str) -> bool {
        !self.ttl.is_zero() && key.ends_with(".narinfo") && !key.contains('/')
    }

    /// The remembered object under `key`, when younger than the TTL.
    pub fn get(&self, key: &str) -> Option<(ObjectMeta, Bytes)> {
        if !self.applies(key) {
            return None;
        }
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        let e = entries.get(key)?;
        (e.fetched.elapsed() < self.ttl).then(|| (e.meta.clone(), e.bytes.clone()))
    }

    /// Remembers an object read whole, from a read started at `fetched`.
    pub fn put(&self, key: &str, meta: &ObjectMeta, bytes: &Bytes, fetched: Instant) {
        if !self.applies(key) {
            return;
        }
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_ENTRIES {
            let ttl = self.ttl;
            entries.retain(|_, e| e.fetched.elapsed() < ttl);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(
            key.to_owned(),
            Entry {
                fetched,
                meta: meta.clone(),
                // A copy: the body may be a slice of the HTTP client's much larger read
                // buffer, which a shared `Bytes` would keep alive (tens of KiB per
                // narinfo, over 100 MiB for a full memo).
                bytes: Bytes::copy_from_slice(bytes),
            },
        );
    }

    /// Drops `key`, which this server is replacing.
    pub fn forget(&self, key: &str) {
        if !self.applies(key) {
            return;
        }
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> ObjectMeta {
        ObjectMeta {
            size: 3,
            version: "v".into(),
        }
    }

    #[test]
    fn remembers_narinfos_for_the_ttl_only() {
        let m = Memo::new(Duration::from_millis(200));
        let b = Bytes::from_static(b"abc");
        m.put("x.narinfo", &meta(), &b, Instant::now());
        m.put("nar/x.nar", &meta(), &b, Instant::now());
        assert!(m.get("x.narinfo").is_some());
        assert!(m.get("nar/x.nar").is_none());
        m.forget("x.narinfo");
        assert!(m.get("x.narinfo").is_none());
        m.put(
            "y.narinfo",
            &meta(),
            &b,
            Instant::now() - Duration::from_millis(300),
        );
        assert!(m.get("y.narinfo").is_none(), "older than the TTL");
        let off = Memo::new(Duration::ZERO);
        off.put("x.narinfo", &meta(), &b, Instant::now());
        assert!(off.get("x.narinfo").is_none());
    }
}
