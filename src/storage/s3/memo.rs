//! Narinfos recently read from the bucket, answered from memory for a short time.
//!
//! A narinfo hit over S3 is a round trip to the store; on a busy cache most hits are
//! for the same few thousand narinfos that every client asks for. Only narinfos that
//! exist are remembered, so nothing another server uploads is ever hidden: a
//! negative answer always comes from the bucket. What may be stale for up to the TTL
//! is a narinfo that was replaced (re-signed) or deleted through another server or
//! tool; the HTTP answers already allow caches to keep narinfos for 60 seconds.
//! Uploads through this server forget the key at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::budget::{Budget, Reservation};
use crate::storage::ObjectMeta;

/// The memo's share of the memory budget: at most this fraction of it. Within that,
/// entries also give way (oldest first) when more than three quarters of the budget
/// are in use, so that uploads always find a quarter of it free.
const BUDGET_SHARE_DIVISOR: u64 = 4;

/// Bytes counted for an entry besides its key and body: the map slots, the
/// metadata, the version string's allocation.
const ENTRY_OVERHEAD: u64 = 160;

struct Entry {
    /// When the read that produced the entry was started: the age is counted from
    /// before the bucket answered, never from after.
    fetched: Instant,
    meta: ObjectMeta,
    bytes: Bytes,
    /// Position in [`Entries::order`].
    seq: u64,
    /// What the entry takes from the memory budget, given back when it goes.
    memory: Reservation,
}

#[derive(Default)]
struct Entries {
    by_key: HashMap<String, Entry>,
    /// Keys by insertion, oldest first: what goes when room is needed.
    order: BTreeMap<u64, String>,
    next_seq: u64,
    /// Bytes counted for all entries.
    bytes: u64,
}

impl Entries {
    fn remove(&mut self, key: &str) {
        if let Some(e) = self.by_key.remove(key) {
            self.order.remove(&e.seq);
            self.bytes -= e.memory.bytes();
        }
    }

    /// Drops the oldest entry; `false` when there is none.
    fn evict_oldest(&mut self) -> bool {
        match self.order.pop_first() {
            Some((_, key)) => {
                if let Some(e) = self.by_key.remove(&key) {
                    self.bytes -= e.memory.bytes();
                }
                true
            }
            None => false,
        }
    }
}

/// The remembered narinfos.
pub struct Memo {
    ttl: Duration,
    budget: Arc<Budget>,
    /// Most bytes the memo holds: its share of the budget.
    max_bytes: u64,
    entries: RwLock<Entries>,
}

impl Memo {
    /// A memo keeping entries for `ttl` (zero keeps nothing), in at most a quarter
    /// of `budget`.
    pub fn new(ttl: Duration, budget: Arc<Budget>) -> Self {
        Memo {
            ttl,
            max_bytes: budget.limit() / BUDGET_SHARE_DIVISOR,
            budget,
            entries: RwLock::new(Entries::default()),
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
        let e = entries.by_key.get(key)?;
        (e.fetched.elapsed() < self.ttl).then(|| (e.meta.clone(), e.bytes.clone()))
    }

    /// Remembers an object read whole, from a read started at `fetched`, making
    /// room by forgetting the oldest entries; not at all when even an empty memo
    /// could not hold it.
    pub fn put(&self, key: &str, meta: &ObjectMeta, bytes: &Bytes, fetched: Instant) {
        if !self.applies(key) {
            return;
        }
        let cost = (key.len() + meta.version.len() + bytes.len()) as u64 + ENTRY_OVERHEAD;
        if cost > self.max_bytes {
            return;
        }
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        entries.remove(key);
        while entries.bytes + cost > self.max_bytes && entries.evict_oldest() {}
        let memory = loop {
            let ceiling = self.budget.limit() - self.budget.limit() / 4;
            match self.budget.try_reserve_below(cost, ceiling) {
                Some(r) => break r,
                // Uploads hold much of the budget: they go first.
                None if entries.evict_oldest() => continue,
                None => return,
            }
        };
        let seq = entries.next_seq;
        entries.next_seq += 1;
        entries.order.insert(seq, key.to_owned());
        entries.bytes += cost;
        entries.by_key.insert(
            key.to_owned(),
            Entry {
                fetched,
                meta: meta.clone(),
                // A copy: the body may be a slice of the HTTP client's much larger read
                // buffer, which a shared `Bytes` would keep alive (tens of KiB per
                // narinfo, over 100 MiB for a full memo).
                bytes: Bytes::copy_from_slice(bytes),
                seq,
                memory,
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

    /// Most bytes the memo holds.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Bytes counted for the entries held.
    #[cfg(test)]
    pub fn bytes(&self) -> u64 {
        self.entries.read().unwrap_or_else(|e| e.into_inner()).bytes
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

    fn budget() -> Arc<Budget> {
        Budget::new(1 << 20)
    }

    #[test]
    fn remembers_narinfos_for_the_ttl_only() {
        let m = Memo::new(Duration::from_millis(200), budget());
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
        let off = Memo::new(Duration::ZERO, budget());
        off.put("x.narinfo", &meta(), &b, Instant::now());
        assert!(off.get("x.narinfo").is_none());
    }

    fn narinfo(n: usize, size: usize) -> (String, Bytes) {
        (format!("{n:032}.narinfo"), Bytes::from(vec![b'x'; size]))
    }

    #[test]
    fn stays_within_its_share_of_the_budget_evicting_the_oldest() {
        let b = Budget::new(64 << 10);
        let m = Memo::new(Duration::from_secs(60), b.clone());
        let share = (64 << 10) / BUDGET_SHARE_DIVISOR;
        for n in 0..100 {
            let (key, body) = narinfo(n, 1000);
            m.put(&key, &meta(), &body, Instant::now());
            assert!(m.bytes() <= share, "{} > {share}", m.bytes());
            assert_eq!(b.in_use(), m.bytes(), "entries are counted in the budget");
        }
        let (newest, _) = narinfo(99, 0);
        let (oldest, _) = narinfo(0, 0);
        assert!(m.get(&newest).is_some(), "the newest entry stays");
        assert!(m.get(&oldest).is_none(), "the oldest went first");
        let held = (0..100)
            .filter(|&n| m.get(&narinfo(n, 0).0).is_some())
            .count();
        assert!(held >= 10, "most of the share is used: {held} entries");
        // The survivors are the most recent ones, without gaps.
        assert!((100 - held..100).all(|n| m.get(&narinfo(n, 0).0).is_some()));

        let (big, body) = narinfo(1000, share as usize);
        m.put(&big, &meta(), &body, Instant::now());
        assert!(m.get(&big).is_none(), "larger than the share: not kept");

        m.forget(&newest);
        assert!(m.get(&newest).is_none());
        assert_eq!(b.in_use(), m.bytes(), "forgetting gives the bytes back");
    }

    #[test]
    fn replacing_a_key_counts_it_once() {
        let b = Budget::new(64 << 10);
        let m = Memo::new(Duration::from_secs(60), b.clone());
        let (key, body) = narinfo(1, 500);
        for _ in 0..10 {
            m.put(&key, &meta(), &body, Instant::now());
        }
        assert!(m.bytes() < 1000, "one entry: {}", m.bytes());
        assert_eq!(b.in_use(), m.bytes());
    }

    #[test]
    fn gives_way_to_uploads_when_the_budget_is_taken() {
        let b = Budget::new(64 << 10);
        let m = Memo::new(Duration::from_secs(60), b.clone());
        for n in 0..5 {
            let (key, body) = narinfo(n, 1000);
            m.put(&key, &meta(), &body, Instant::now());
        }
        let before = m.bytes();
        assert!(before > 0);
        // Uploads take the budget up to the memo's ceiling of three quarters.
        let ceiling = b.limit() * 3 / 4;
        let uploads = b.try_reserve(ceiling - b.in_use()).expect("fits");
        let (key, body) = narinfo(10, 1000);
        m.put(&key, &meta(), &body, Instant::now());
        assert!(
            m.get(&key).is_some(),
            "room was made by evicting older entries"
        );
        assert!(m.bytes() <= before);
        assert!(m.get(&narinfo(0, 0).0).is_none(), "the oldest went");
        assert!(b.in_use() <= ceiling);
        drop(uploads);

        // With everything taken, the memo empties itself and keeps nothing new.
        let all = b
            .try_reserve(b.limit() - b.in_use())
            .expect("the rest is free");
        let (key, body) = narinfo(11, 1000);
        m.put(&key, &meta(), &body, Instant::now());
        assert!(m.get(&key).is_none());
        assert_eq!(m.bytes(), 0);
        drop(all);
        assert_eq!(b.in_use(), 0);
    }
}
