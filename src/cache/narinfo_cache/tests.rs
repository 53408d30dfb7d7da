use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::invalidating::Invalidating;
use super::*;
use crate::storage::memory::MemoryStorage;
use crate::storage::Storage;

const NIX32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// A store hash from a number (distinct numbers, distinct hashes and fingerprints).
fn hash(mut n: u64) -> String {
    let mut out = [b'0'; 32];
    for c in out.iter_mut().take(13) {
        *c = NIX32[(n % 32) as usize];
        n /= 32;
    }
    String::from_utf8(out.to_vec()).unwrap()
}

fn meta(size: usize) -> ObjectMeta {
    ObjectMeta {
        size: size as u64,
        version: "v1".into(),
    }
}

fn put(c: &NarinfoCache, n: u64, size: usize) {
    let h = hash(n);
    let t = c.ticket(&h).expect("the cache is on");
    c.insert(t, &meta(size), &Bytes::from(vec![b'x'; size]));
}

fn watched(budget: u64) -> NarinfoCache {
    let c = NarinfoCache::new(budget, Coherence::Watched);
    c.set_watched(true);
    c
}

#[test]
fn answers_what_was_read_with_its_tag() {
    let c = watched(1 << 20);
    assert!(c.get(&hash(1)).is_none());
    put(&c, 1, 500);
    let e = c.get(&hash(1)).expect("held");
    assert_eq!(e.body().len(), 500);
    assert_eq!(&e.etag()[..], b"\"v1\"");
    assert_eq!(&e.content_length()[..], b"500");
    assert_eq!(e.meta(), meta(500));
    let mut text = String::new();
    c.render_metrics(&mut text);
    assert!(
        text.contains("nix_stored_narinfo_cache_hits_total 1\n"),
        "{text}"
    );
    assert!(
        text.contains("nix_stored_narinfo_cache_misses_total 1\n"),
        "{text}"
    );
    assert!(
        text.contains("nix_stored_narinfo_cache_budget_bytes 1048576\n"),
        "{text}"
    );
    assert!(
        text.contains("nix_stored_narinfo_cache_entries 1\n"),
        "{text}"
    );
}

#[test]
fn stays_within_its_budget_and_counts_evictions() {
    let budget = 256 << 10;
    let c = watched(budget);
    for n in 0..2000 {
        put(&c, n, 900);
        assert!(c.bytes() <= budget, "{} > {budget}", c.bytes());
    }
    assert!(
        c.len() > 100,
        "most of the budget is used: {} entries",
        c.len()
    );
    let mut text = String::new();
    c.render_metrics(&mut text);
    let evictions: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("nix_stored_narinfo_cache_evictions_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(evictions >= 2000 - c.len() as u64 - 1, "{evictions}");
}

#[test]
fn hot_entries_survive_a_scan() {
    let c = watched(512 << 10);
    // A hot set of a fifth of the budget, asked for again and again.
    let hot: Vec<u64> = (0..100).collect();
    for &n in &hot {
        put(&c, n, 900);
    }
    for _ in 0..3 {
        for &n in &hot {
            assert!(c.get(&hash(n)).is_some());
        }
    }
    // A scan of ten budgets' worth of one-off keys.
    for n in 1000..7000 {
        put(&c, n, 900);
        if n % 50 == 0 {
            for &h in &hot {
                c.get(&hash(h));
            }
        }
    }
    let kept = hot.iter().filter(|&&n| c.get(&hash(n)).is_some()).count();
    assert!(
        kept >= 90,
        "only {kept} of 100 hot entries survived the scan"
    );
}

#[test]
fn an_invalidation_during_a_read_keeps_the_read_out() {
    let c = watched(1 << 20);
    let h = hash(7);
    let t = c.ticket(&h).unwrap();
    c.invalidate(&format!("{h}.narinfo"));
    c.insert(t, &meta(3), &Bytes::from_static(b"old"));
    assert!(
        c.get(&h).is_none(),
        "a read older than the write is not kept"
    );
    // Other keys' and other kinds' changes do not matter to it.
    let t = c.ticket(&h).unwrap();
    c.invalidate(&format!("{}.narinfo", hash(8)));
    c.invalidate(&format!("{h}.ls"));
    c.invalidate("nix-cache-info");
    c.insert(t, &meta(3), &Bytes::from_static(b"new"));
    assert_eq!(&c.get(&h).unwrap().body()[..], b"new");
    c.invalidate(&format!("{h}.narinfo"));
    assert!(c.get(&h).is_none());
    // A clear counts as a change of every key.
    let t = c.ticket(&h).unwrap();
    c.clear();
    c.insert(t, &meta(3), &Bytes::from_static(b"old"));
    assert!(c.get(&h).is_none());
}

#[test]
fn a_watched_cache_is_used_only_while_the_watch_runs() {
    let c = NarinfoCache::new(1 << 20, Coherence::Watched);
    assert!(c.ticket(&hash(1)).is_none(), "no watch yet");
    c.set_watched(true);
    put(&c, 1, 10);
    assert!(c.get(&hash(1)).is_some());
    c.set_watched(false);
    assert!(c.get(&hash(1)).is_none());
    c.set_watched(true);
    assert!(c.get(&hash(1)).is_none(), "emptied when the watch stopped");
}

#[test]
fn entries_under_a_ttl_expire() {
    let c = NarinfoCache::new(1 << 20, Coherence::Ttl(Duration::from_secs(5)));
    put(&c, 1, 10);
    assert!(c.get(&hash(1)).is_some(), "no watch needed");
    let mut t = c.ticket(&hash(2)).unwrap();
    // A read that started longer ago than the TTL.
    t.started = Instant::now() - Duration::from_secs(6);
    c.insert(t, &meta(3), &Bytes::from_static(b"abc"));
    assert!(c.get(&hash(2)).is_none());
    let off = NarinfoCache::new(1 << 20, Coherence::Ttl(Duration::ZERO));
    assert_eq!(off.coherence(), Coherence::Off);
    assert!(off.ticket(&hash(1)).is_none());
    assert!(NarinfoCache::new(0, Coherence::Watched)
        .ticket(&hash(1))
        .is_none());
}

#[tokio::test]
async fn writes_and_removals_through_the_storage_drop_entries() {
    let cache = Arc::new(watched(1 << 20));
    let storage = Invalidating::new(Arc::new(MemoryStorage::default()), cache.clone());
    let h = hash(3);
    let key = format!("{h}.narinfo");
    put(&cache, 3, 10);
    let mut up = storage.begin_upload(&key).await.unwrap();
    up.write(b"new").await.unwrap();
    assert!(cache.get(&h).is_some(), "not before the commit");
    up.commit().await.unwrap();
    assert!(cache.get(&h).is_none(), "dropped by the commit");
    put(&cache, 3, 10);
    storage.delete(std::slice::from_ref(&key)).await.unwrap();
    assert!(cache.get(&h).is_none(), "dropped by the removal");
}
