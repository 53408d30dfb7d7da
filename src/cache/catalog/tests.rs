use std::time::Instant;

use super::*;
use crate::cache::graph::NarKey;

fn hash(i: u32) -> PathHash {
    let mut h = [0u8; 20];
    h[..4].copy_from_slice(&i.wrapping_mul(2_654_435_761).to_le_bytes());
    h[4..8].copy_from_slice(&i.to_le_bytes());
    h
}

fn record(i: u32, name: &str, refs: &[u32], signers: &[&str]) -> Record {
    let mut nar = [0u8; 32];
    nar[..4].copy_from_slice(&i.to_le_bytes());
    Record {
        nar: NarKey { hash: nar, ext: 0 },
        file_size: 500,
        references: refs.iter().map(|r| hash(*r)).collect(),
        name: Some(name.into()),
        nar_size: 1000 + u64::from(i),
        signers: signers.iter().map(|s| s.to_string()).collect(),
    }
}

/// A catalog whose page was opened.
fn kept() -> Catalog {
    let c = Catalog::new(true);
    assert!(c.start_keeping());
    assert!(!c.start_keeping(), "once");
    c
}

fn hex(i: u32) -> String {
    crate::cache::graph::path_hash_str(&hash(i))
}

#[test]
fn nothing_is_kept_until_the_page_is_opened() {
    let c = Catalog::new(true);
    c.insert(&hash(1), &record(1, "glibc-2.40", &[], &["k-1"]), 10, 500);
    assert_eq!(c.figures().paths, 0);
    assert_eq!(c.heap_bytes(), 0);
    assert!(c.start_keeping());
    c.insert(&hash(1), &record(1, "glibc-2.40", &[], &["k-1"]), 10, 500);
    assert_eq!(c.latest(5)[0].name, "glibc-2.40");
    // Off: never kept.
    assert!(!Catalog::new(false).start_keeping());
}

#[test]
fn latest_search_and_figures() {
    let c = kept();
    c.insert(&hash(1), &record(1, "glibc-2.40", &[], &["k-1"]), 10, 500);
    c.insert(
        &hash(2),
        &record(2, "hello-2.12", &[1], &["k-1", "k-2"]),
        20,
        500,
    );
    c.insert(&hash(3), &record(3, "hello-world", &[1, 2], &[]), 30, 500);
    let names = |v: Vec<PathSummary>| v.into_iter().map(|p| p.name).collect::<Vec<_>>();
    assert_eq!(names(c.latest(2)), ["hello-world", "hello-2.12"]);
    assert_eq!(names(c.search("hello", 10)), ["hello-world", "hello-2.12"]);
    assert_eq!(names(c.search("hello", 1)), ["hello-world"]);
    assert_eq!(names(c.search("2.", 10)), ["hello-2.12", "glibc-2.40"]);
    assert!(c.search("<script>", 10).is_empty());
    assert!(c.search("12\nglibc", 10).is_empty());
    let f = c.figures();
    assert_eq!((f.paths, f.file_bytes), (3, 1500));
    assert_eq!(f.nar_bytes, 1001 + 1002 + 1003);
    assert_eq!(
        c.signers(),
        [
            SignerCount {
                name: Some("k-1".into()),
                paths: 2
            },
            SignerCount {
                name: Some("k-2".into()),
                paths: 1
            }
        ]
    );
}

#[test]
fn references_referrers_and_closure() {
    let c = kept();
    // 2 references 9, not stored yet: a placeholder until it is.
    c.insert(&hash(2), &record(2, "b", &[9], &[]), 2, 500);
    c.insert(&hash(3), &record(3, "c", &[2], &[]), 3, 500);
    let p = c.path(&hex(3)).unwrap();
    assert_eq!(p.references[0].name.as_deref(), Some("b"));
    assert_eq!((p.closure.paths, p.closure.missing), (2, 1));
    assert!(c.path(&hex(9)).is_none());
    c.insert(&hash(9), &record(9, "a", &[], &[]), 4, 500);
    let p = c.path(&hex(3)).unwrap();
    assert_eq!((p.closure.paths, p.closure.missing), (3, 0));
    assert_eq!(p.closure.nar_size, 1002 + 1003 + 1009);
    let a = c.path(&hex(9)).unwrap();
    assert_eq!(a.referrers_total, 1);
    assert_eq!(a.referrers[0].name.as_deref(), Some("b"));
    // Removed but referenced: gone from lists, still a link without a name.
    c.remove(&hash(2));
    assert!(c.path(&hex(2)).is_none());
    assert!(c.search("b", 10).is_empty());
    assert_eq!(c.path(&hex(3)).unwrap().references[0].name, None);
    assert_eq!(c.path(&hex(9)).unwrap().referrers_total, 0);
    assert_eq!(c.figures().paths, 2);
}

#[test]
fn closures_are_walked_up_to_a_limit() {
    let c = kept();
    for i in 0..10u32 {
        let refs: Vec<u32> = if i > 0 { vec![i - 1] } else { vec![] };
        c.insert(&hash(i), &record(i, "chain", &refs, &[]), i, 500);
    }
    let t = c.read();
    let closure = |limit| t.path(&hex(9), 10, limit).unwrap().closure;
    let whole = closure(100);
    assert_eq!((whole.paths, whole.complete), (10, true));
    let cut = closure(4);
    assert_eq!((cut.paths, cut.complete), (4, false));
    assert!(closure(10).complete);
}

#[test]
fn stored_again_keeps_one_entry() {
    let c = kept();
    c.insert(&hash(1), &record(1, "x", &[], &["a"]), 5, 500);
    c.insert(&hash(1), &record(1, "x", &[], &["a", "b"]), 6, 500);
    assert_eq!(c.figures().paths, 1);
    assert_eq!(c.latest(10).len(), 1);
    assert_eq!(c.latest(10)[0].signers.len(), 2);
    // Stored again is stored last: it is the newest upload.
    assert_eq!(c.latest(10)[0].stored, 6);
    assert_eq!(c.signers().len(), 2);
}

#[test]
fn compaction_orders_names_by_time() {
    let c = kept();
    c.insert(&hash(1), &record(1, "late", &[], &[]), 50, 500);
    c.insert(&hash(2), &record(2, "early", &[], &[]), 10, 500);
    c.shrink();
    assert_eq!(c.latest(1)[0].name, "late");
    assert_eq!(c.search("a", 10)[0].name, "late");
}

#[test]
fn many_signers_share_the_last_bit() {
    let c = kept();
    for i in 0..40u32 {
        c.insert(
            &hash(i),
            &record(i, "p", &[], &[&format!("key-{i}")]),
            i,
            500,
        );
    }
    let s = c.signers();
    assert_eq!(
        s.iter()
            .filter(|s| s.name.is_none())
            .map(|s| s.paths)
            .sum::<u64>(),
        25
    );
    assert_eq!(s.len(), 16);
}

/// `cargo test --lib a_million_catalogued -- --ignored --nocapture`
#[test]
#[ignore]
fn a_million_catalogued() {
    let c = kept();
    let started = Instant::now();
    for i in 0..1_000_000u32 {
        let refs: Vec<u32> = (1..=5).filter(|k| i >= *k * 7).map(|k| i - k * 7).collect();
        let name = format!(
            "package-{}-{i}.{}",
            ["lib", "bin", "dev", "doc"][i as usize % 4],
            i % 97
        );
        c.insert(
            &hash(i),
            &record(i, &name, &refs, &["cache.example.org-1"]),
            i,
            500,
        );
    }
    c.shrink();
    c.finish_load();
    let built = started.elapsed();
    let time = |f: &dyn Fn() -> usize| {
        let t = Instant::now();
        let n = f();
        (t.elapsed(), n)
    };
    let (rare, n_rare) = time(&|| c.search("-999999.", 20).len());
    let (none, n_none) = time(&|| c.search("nothing-like-this", 20).len());
    let (common, n_common) = time(&|| c.search("dev", 20).len());
    let (latest, _) = time(&|| c.latest(20).len());
    let (path, _) = time(&|| c.path(&hex(500_000)).map_or(0, |p| p.referrers_total));
    let (figures, _) = time(&|| c.signers().len() + c.figures().paths as usize);
    let (referrers, n_referrers) = time(&|| c.path(&hex(500_000)).map_or(0, |p| p.referrers_total));
    assert_eq!(n_referrers, 5);
    eprintln!(
        "1M paths (5M refs): {} MiB on the heap (graph and labels), built in {built:?}; search rare {rare:?} ({n_rare}), no match {none:?} ({n_none}), common {common:?} ({n_common}); latest(20) {latest:?}; path page {path:?} (with referrers {referrers:?}, closure walked to the limit); figures+signers {figures:?}",
        c.heap_bytes() >> 20,
    );
    assert_eq!(n_rare, 1);
    assert_eq!(n_none, 0);
    assert_eq!(n_common, 20);
}

#[test]
fn churn_reuses_slots_and_compacts_without_stale_answers() {
    let c = kept();
    for i in 0..100_000u32 {
        let refs: Vec<u32> = if i >= 3 { vec![i - 3] } else { vec![] };
        c.insert(
            &hash(i),
            &record(i, &format!("old-{i}"), &refs, &[]),
            i,
            500,
        );
    }
    let arena = c.read().name_arena_len();
    // Newest first, so that referenced paths are kept as placeholders meanwhile.
    for i in (0..90_000u32).rev() {
        c.remove(&hash(i));
    }
    assert!(c.read().name_arena_len() < arena / 2, "names compacted");
    // New paths take the freed slots: old order pairs naming them must not answer.
    for i in 200_000..250_000u32 {
        c.insert(&hash(i), &record(i, &format!("new-{i}"), &[], &[]), i, 500);
    }
    assert_eq!(c.figures().paths, 60_000);
    assert_eq!(c.search("old-", 100_000).len(), 10_000);
    assert_eq!(c.search("new-", 100_000).len(), 50_000);
    assert!(c.search("old-8", 10).is_empty());
    assert_eq!(c.search("old-95000", 10)[0].name, "old-95000");
    assert_eq!(c.latest(1)[0].name, "new-249999");
    let p = c.path(&hex(90_001)).unwrap();
    assert_eq!(p.references[0].name, None, "its reference was removed");
    assert_eq!(p.closure.missing, 1);
    assert_eq!(c.path(&hex(90_000)).unwrap().referrers_total, 1);
}

#[test]
fn references_rewritten_keep_a_placeholder_in_both() {
    let c = kept();
    c.insert(&hash(1), &record(1, "a", &[9], &[]), 1, 500);
    // Another writer rewrote it with one more reference: 9 stays known throughout.
    c.insert(&hash(1), &record(1, "a", &[9, 8], &[]), 2, 500);
    // Would take the slot of 9, had it been freed in between.
    c.insert(&hash(5), &record(5, "z", &[], &[]), 3, 500);
    c.insert(&hash(9), &record(9, "x", &[], &[]), 3, 500);
    assert_eq!(c.path(&hex(9)).unwrap().referrers_total, 1);
    let a = c.path(&hex(1)).unwrap();
    let names: Vec<Option<&str>> = a.references.iter().map(|r| r.name.as_deref()).collect();
    assert_eq!(names, [Some("x"), None]);
    assert_eq!((a.closure.paths, a.closure.missing), (2, 1));
    assert_eq!(c.path(&hex(8)), None);
}
