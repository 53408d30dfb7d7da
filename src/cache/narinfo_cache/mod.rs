//! Narinfo answers held in memory, for GET and HEAD only.
//!
//! Real traffic is skewed: many machines substitute the same closures, so a few
//! thousand narinfos take most of the requests. Those are answered from here without
//! asking storage, within a byte budget; eviction (quick_cache's CLOCK-style hot and
//! cold queues) keeps what is asked for again through a scan of one-off keys.
//!
//! An answer held here must never be older than what the storage says, except within
//! a bound the operator chose:
//! - the directory backend is watched ([`Coherence::Watched`]): every object written,
//!   replaced or removed there (by this server or anyone else) drops its entry when
//!   the watch reports it, and entries are only used while the watch runs;
//! - storage others write to without telling (S3, [`Coherence::Ttl`]): entries live
//!   for the TTL (`NIX_STORED_S3_NARINFO_TTL`), counted from before the read.
//!
//! Only narinfos that exist are held. Misses on the directory are answered by the
//! narinfo index already (see [`super::index`]); on S3, a remembered miss would hide
//! what another server uploads, which Nix asks for right after (two servers behind
//! one bucket must not disagree about it).
//!
//! Writes and removals through this server drop the entry at once in both modes
//! (see [`invalidating`]). A read that raced with a write never stores what it read:
//! every invalidation bumps a counter the read noted before it started.
//!
//! Only the HTTP answers read from here. Upload checks (references, merges) and
//! retention ask storage themselves.

pub mod invalidating;

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::index::{fingerprint, Spread};
use crate::prometheus::sample;
use crate::storage::ObjectMeta;

/// Bytes counted for an entry besides its body and tag: the table's slot and index
/// (key, entry, links), the buffer's allocation header and shared count.
const ENTRY_OVERHEAD: u64 = 160;

/// Counters reads note before asking storage; an invalidation bumps its key's.
const STRIPES: usize = 256;

/// How entries stay true to the storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coherence {
    /// Nothing is held (an unwatchable directory, a zero TTL or budget).
    Off,
    /// Storage that reports every change ([`NarinfoCache::set_watched`]).
    Watched,
    /// Storage written by others unseen: entries, present or absent, live this long.
    Ttl(Duration),
}

/// A narinfo's store hash, as the 32 characters of its name, with its hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    /// The fingerprint with its bits spread over the word: store hashes are
    /// uniform, so this is all the hashing they need, and every bit of it then
    /// counts towards the shard and the stripe.
    mixed: u64,
    name: [u8; 32],
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.mixed);
    }
}

impl Key {
    fn of(store_hash: &str) -> Option<Key> {
        let name: [u8; 32] = store_hash.as_bytes().try_into().ok()?;
        // MurmurHash3's finaliser: every bit of the fingerprint moves every bit.
        let mut x = fingerprint(store_hash)?;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^= x >> 33;
        Some(Key { mixed: x, name })
    }

    /// The key of a storage key, when it names a narinfo at the top level.
    fn of_storage_key(key: &str) -> Option<Key> {
        Key::of(key.strip_suffix(".narinfo")?)
    }
}

/// A narinfo held in memory: what a GET needs to answer it. One allocation holds
/// the body and the entity tag; a copy of the entry is a reference count.
#[derive(Debug, Clone)]
pub struct Entry {
    /// When the read that produced it started.
    fetched: Instant,
    /// The body, the entity tag (`"version"`), then the body's length in decimal:
    /// the answer's headers, prebuilt.
    buf: Bytes,
    body_len: usize,
    tag_len: usize,
}

impl Entry {
    /// The answer for a narinfo read now: `body` (copied: it may be a slice of a much
    /// larger read buffer, S3's) with its headers.
    pub fn new(meta: &ObjectMeta, body: &[u8]) -> Entry {
        Entry::read_at(Instant::now(), meta, body)
    }

    fn read_at(fetched: Instant, meta: &ObjectMeta, body: &[u8]) -> Entry {
        let length = body.len().to_string();
        let tag_len = meta.version.len() + 2;
        let mut buf = Vec::with_capacity(body.len() + tag_len + length.len());
        buf.extend_from_slice(body);
        buf.push(b'"');
        buf.extend_from_slice(meta.version.as_bytes());
        buf.push(b'"');
        buf.extend_from_slice(length.as_bytes());
        Entry {
            fetched,
            buf: Bytes::from(buf),
            body_len: body.len(),
            tag_len,
        }
    }

    /// The narinfo.
    pub fn body(&self) -> Bytes {
        self.buf.slice(..self.body_len)
    }

    /// The entity tag of the answer, quoted, ready for a header.
    pub fn etag(&self) -> Bytes {
        self.buf.slice(self.body_len..self.body_len + self.tag_len)
    }

    /// The body's length in decimal, ready for a `Content-Length` header.
    pub fn content_length(&self) -> Bytes {
        self.buf.slice(self.body_len + self.tag_len..)
    }

    /// Size and version, as storage reports them.
    pub fn meta(&self) -> ObjectMeta {
        let tag = &self.buf[self.body_len..self.body_len + self.tag_len];
        ObjectMeta {
            size: self.body_len as u64,
            version: String::from_utf8_lossy(&tag[1..tag.len() - 1]).into_owned(),
        }
    }

    fn weight(&self) -> u64 {
        self.buf.len() as u64 + ENTRY_OVERHEAD
    }
}

#[derive(Clone)]
struct Weigh;

impl quick_cache::Weighter<Key, Entry> for Weigh {
    fn weight(&self, _key: &Key, val: &Entry) -> u64 {
        val.weight()
    }
}

/// Counts evictions (entries that went for want of room).
#[derive(Clone, Default)]
struct Evictions(Arc<AtomicU64>);

impl quick_cache::Lifecycle<Key, Entry> for Evictions {
    type RequestState = ();
    fn on_evict(&self, _state: &mut (), _key: Key, _val: Entry) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

type Table = quick_cache::sync::Cache<Key, Entry, Weigh, Spread, Evictions>;

/// What a read notes before asking storage, to store what it finds afterwards.
#[derive(Debug)]
pub struct Ticket {
    key: Key,
    stripe: usize,
    seen: u64,
    started: Instant,
}

/// The narinfo answers held in memory.
pub struct NarinfoCache {
    table: Option<Table>,
    coherence: Coherence,
    budget: u64,
    /// With [`Coherence::Watched`]: whether the watch reports changes now.
    watched: AtomicBool,
    stripes: Box<[AtomicU64]>,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: Evictions,
}

impl NarinfoCache {
    /// A cache of at most `budget` bytes (estimated), kept true to storage as
    /// `coherence` says.
    pub fn new(budget: u64, coherence: Coherence) -> Self {
        let coherence = match coherence {
            Coherence::Ttl(ttl) if ttl.is_zero() => Coherence::Off,
            _ if budget == 0 => Coherence::Off,
            c => c,
        };
        let evictions = Evictions::default();
        let table = (coherence != Coherence::Off).then(|| {
            // Narinfos run to about a kilobyte with their entry.
            let items = usize::try_from(budget / 1024).unwrap_or(usize::MAX).max(16);
            let options = quick_cache::OptionsBuilder::new()
                .estimated_items_capacity(items)
                .weight_capacity(budget)
                .build();
            match options {
                Ok(o) => Table::with_options(o, Weigh, Spread, evictions.clone()),
                // Only a bad hot or ghost share fails to build, and none is set.
                Err(_) => Table::with(items, budget, Weigh, Spread, evictions.clone()),
            }
        });
        NarinfoCache {
            table,
            coherence,
            budget,
            watched: AtomicBool::new(false),
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions,
        }
    }

    /// How entries stay true to the storage.
    pub fn coherence(&self) -> Coherence {
        self.coherence
    }

    fn table(&self) -> Option<&Table> {
        let table = self.table.as_ref()?;
        match self.coherence {
            Coherence::Watched if !self.watched.load(Ordering::Acquire) => None,
            _ => Some(table),
        }
    }

    fn stripe(&self, key: &Key) -> usize {
        (key.mixed as usize) % self.stripes.len()
    }

    /// The held narinfo of `store_hash`; `None` means: ask storage.
    pub fn get(&self, store_hash: &str) -> Option<Entry> {
        let table = self.table()?;
        let key = Key::of(store_hash)?;
        let entry = table.get(&key).filter(|e| match self.coherence {
            Coherence::Ttl(ttl) => e.fetched.elapsed() < ttl,
            _ => true,
        });
        if entry.is_some() {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        entry
    }

    /// Notes a read of the narinfo of `store_hash` that is about to ask storage (a
    /// miss); `None` when nothing read would be kept.
    pub fn ticket(&self, store_hash: &str) -> Option<Ticket> {
        self.table()?;
        let key = Key::of(store_hash)?;
        self.misses.fetch_add(1, Ordering::Relaxed);
        let stripe = self.stripe(&key);
        Some(Ticket {
            key,
            stripe,
            seen: self.stripes[stripe].load(Ordering::SeqCst),
            started: Instant::now(),
        })
    }

    /// Keeps the narinfo the read of `ticket` found, unless the key changed since
    /// the ticket was taken.
    pub fn insert(&self, ticket: Ticket, meta: &ObjectMeta, body: &Bytes) {
        if self.table().is_some() {
            let started = ticket.started;
            self.insert_entry(ticket, Entry::read_at(started, meta, body));
        }
    }

    /// [`NarinfoCache::insert`] of an answer already built (its age counts from the
    /// ticket).
    pub fn insert_entry(&self, ticket: Ticket, mut entry: Entry) {
        let Some(table) = self.table() else { return };
        let counter = &self.stripes[ticket.stripe];
        if counter.load(Ordering::SeqCst) != ticket.seen {
            return;
        }
        entry.fetched = ticket.started;
        if entry.weight() > table.shard_capacity() {
            return;
        }
        table.insert(ticket.key, entry);
        // An invalidation between the check above and the insert may have run
        // before the entry was there to drop: look again.
        if counter.load(Ordering::SeqCst) != ticket.seen {
            table.remove(&ticket.key);
        }
    }

    /// Drops what is held for the storage key `key` (written or removed now).
    pub fn invalidate(&self, key: &str) {
        let Some(key) = Key::of_storage_key(key) else {
            return;
        };
        let Some(table) = self.table.as_ref() else {
            return;
        };
        self.stripes[self.stripe(&key)].fetch_add(1, Ordering::SeqCst);
        table.remove(&key);
    }

    /// Drops everything (changes were missed).
    pub fn clear(&self) {
        for s in self.stripes.iter() {
            s.fetch_add(1, Ordering::SeqCst);
        }
        if let Some(table) = self.table.as_ref() {
            table.clear();
        }
    }

    /// With [`Coherence::Watched`]: whether the storage watch reports every change
    /// now. Entries are used only while it does; they are dropped when it stops.
    pub fn set_watched(&self, watched: bool) {
        if !watched {
            self.watched.store(false, Ordering::Release);
            self.clear();
        } else {
            self.watched.store(true, Ordering::Release);
        }
    }

    /// Bytes (estimated) the entries take.
    pub fn bytes(&self) -> u64 {
        self.table.as_ref().map_or(0, Table::weight)
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.table.as_ref().map_or(0, Table::len)
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the cache's metrics in Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        let budget = if self.table.is_some() { self.budget } else { 0 };
        sample(
            out,
            "nix_stored_narinfo_cache_budget_bytes",
            "gauge",
            "Most bytes the in-memory narinfo cache holds (NIX_STORED_NARINFO_CACHE_SIZE; 0: off).",
            budget,
        );
        sample(
            out,
            "nix_stored_narinfo_cache_bytes",
            "gauge",
            "Bytes the narinfo cache's entries take (estimated).",
            self.bytes(),
        );
        sample(
            out,
            "nix_stored_narinfo_cache_entries",
            "gauge",
            "Narinfos held in memory.",
            self.len() as u64,
        );
        sample(
            out,
            "nix_stored_narinfo_cache_hits_total",
            "counter",
            "Narinfo GETs and HEADs answered from memory.",
            self.hits.load(Ordering::Relaxed),
        );
        sample(
            out,
            "nix_stored_narinfo_cache_misses_total",
            "counter",
            "Narinfo GETs and HEADs that asked storage while the cache was on.",
            self.misses.load(Ordering::Relaxed),
        );
        sample(
            out,
            "nix_stored_narinfo_cache_evictions_total",
            "counter",
            "Entries dropped to stay within the budget.",
            self.evictions.0.load(Ordering::Relaxed),
        );
    }
}

#[cfg(test)]
mod tests;
