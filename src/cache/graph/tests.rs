//! The graph's rules, on small hand-made graphs.

use super::*;
use nix_derivation::nixbase32;

fn h(n: u8) -> PathHash {
    [n; 20]
}

fn nar(n: u8) -> NarPrint {
    NarPrint::from(n)
}

/// a -> b -> c, d alone; times: a 100, b 10, c 5, d 50.
fn sample() -> Graph {
    let mut g = Graph::default();
    g.insert(&h(1), nar(1), &[h(2)], 100, 10);
    g.insert(&h(2), nar(2), &[h(3)], 10, 10);
    g.insert(&h(3), nar(3), &[], 5, 10);
    g.insert(&h(4), nar(4), &[], 50, 10);
    g
}

fn order(plan: &Plan) -> Vec<u8> {
    plan.paths.iter().map(|d| d.hash[0]).collect()
}

#[test]
fn a_rewritten_narinfo_keeps_a_placeholder_both_versions_reference() {
    let mut g = Graph::default();
    // 1 references 2, which is not stored: a placeholder.
    g.insert(&h(1), nar(1), &[h(2)], 10, 10);
    // Another writer rewrites 1's narinfo with one more reference.
    g.insert(&h(1), nar(1), &[h(2), h(3)], 20, 10);
    let two = g.id(&h(2)).expect("2 keeps its node");
    assert_eq!(g.nodes[two as usize].state, State::Absent);
    assert_eq!(g.nodes[two as usize].referrers, 1);
    // A new path must not take 2's slot.
    g.insert(&h(4), nar(4), &[], 30, 10);
    assert_ne!(g.id(&h(4)), Some(two));
    assert_eq!(g.id(&h(2)), Some(two));
}

#[test]
fn effective_recency_flows_down_the_closure() {
    let g = sample();
    let eff = g.effective_recency();
    let of = |n: u8| eff[g.id(&h(n)).unwrap() as usize];
    assert_eq!((of(1), of(2), of(3), of(4)), (100, 100, 100, 50));
}

#[test]
fn plans_remove_referrers_first_and_oldest_first() {
    let g = sample();
    let all = g.plan(&[], 0, &[], |_| true);
    assert_eq!(order(&all), vec![4, 1, 2, 3]);
    // Expiry alone: only what is older than 60.
    let expired = g.plan(&[], 60, &[], |_| false);
    assert_eq!(order(&expired), vec![4]);
    // A quota that needs 20 bytes freed.
    let quota = g.plan(&[], 0, &[], |chosen| 40u64.saturating_sub(chosen) > 20);
    assert_eq!(order(&quota), vec![4, 1]);
}

#[test]
fn pinned_closures_and_their_referrers_stay() {
    let g = sample();
    let pinned = g.closure(&[h(2)]);
    let plan = g.plan(&pinned, 0, &[], |_| true);
    // b and c are pinned; a references b but is not pinned itself.
    assert_eq!(order(&plan), vec![4, 1]);
    assert_eq!(g.bytes_of(&pinned), 20);
}

#[test]
fn loose_objects_take_their_turn_by_recency() {
    let g = sample();
    let plan = g.plan(&[], 70, &[(1, 5), (60, 5), (200, 5)], |_| false);
    assert_eq!(order(&plan), vec![4]);
    assert_eq!(plan.loose, 2);
}

#[test]
fn holds_and_new_referrers_keep_a_path() {
    let mut g = sample();
    let plan = g.plan(&[], 0, &[], |_| true);
    // An upload now references d: d is not removed, and neither would be a path
    // below it.
    assert!(g.hold(&h(4)));
    assert!(!g.start_removal(&plan.paths[0]));
    g.release_hold(&h(4));
    assert!(g.start_removal(&plan.paths[0]));
    // Being removed: new references to it are refused.
    assert!(!g.hold(&h(4)));
    g.finish_removal(&plan.paths[0]);
    assert!(!g.is_stored(&h(4)));
    // c cannot go before a and b.
    let c = plan.paths.iter().find(|d| d.hash == h(3)).unwrap();
    assert!(!g.start_removal(c));
    for d in &plan.paths[1..] {
        assert!(g.start_removal(d), "{:?}", d.hash[0]);
        g.finish_removal(d);
    }
    assert_eq!(g.stored(), 0);
    assert!(g.ids.is_empty(), "placeholders and nodes are all released");
}

#[test]
fn an_aborted_removal_restores_the_counts() {
    let mut g = sample();
    let plan = g.plan(&[], 0, &[], |_| true);
    let a = plan.paths.iter().find(|d| d.hash == h(1)).unwrap();
    assert!(g.start_removal(a));
    g.abort_removal(a);
    let b = plan.paths.iter().find(|d| d.hash == h(2)).unwrap();
    assert!(!g.start_removal(b), "a references b again");
}

/// a and b go in one chunk; a is kept after all (downloaded since it was chosen):
/// b, which a references again, must be kept too, and so must c below b.
#[test]
fn a_path_kept_after_its_chunk_started_keeps_what_it_references() {
    let mut g = sample();
    let plan = g.plan(&[], 0, &[], |_| true);
    let chunk: Vec<&Doomed> = plan.paths.iter().filter(|d| d.hash != h(4)).collect();
    for d in &chunk {
        assert!(g.start_removal(d), "{:?}", d.hash[0]);
    }
    let a = chunk.iter().find(|d| d.hash == h(1)).unwrap();
    g.abort_removal(a);
    let mut going: Vec<&Doomed> = chunk.iter().copied().filter(|d| d.hash != h(1)).collect();
    g.keep_referenced(&mut going, |d| *d);
    assert!(going.is_empty(), "{going:?}");
    for n in [1, 2, 3] {
        assert!(g.is_stored(&h(n)), "{n}");
    }
    // The counts are whole again: b and c cannot start while a stays.
    let b = chunk.iter().find(|d| d.hash == h(2)).unwrap();
    assert!(!g.start_removal(b));
}

/// A narinfo read again while a pass removes it (the page's load, another writer's
/// rewrite) does not take its references' referrer counts down a second time.
#[test]
fn a_path_stored_again_while_it_is_removed_keeps_the_counts_whole() {
    let mut g = sample();
    let plan = g.plan(&[], 0, &[], |_| true);
    let a = plan.paths.iter().find(|d| d.hash == h(1)).unwrap();
    assert!(g.start_removal(a));
    // Read again with another reference list.
    g.insert(&h(1), nar(1), &[h(2), h(4)], 100, 10);
    g.abort_removal(a);
    let b = g.id(&h(2)).unwrap();
    assert_eq!(g.nodes[b as usize].referrers, 1);
    let d = g.id(&h(4)).unwrap();
    assert_eq!(g.nodes[d as usize].referrers, 0);
}

#[test]
fn references_to_missing_paths_are_placeholders() {
    let mut g = Graph::default();
    g.insert(&h(1), nar(1), &[h(9)], 10, 1);
    assert!(!g.is_stored(&h(9)));
    g.insert(&h(9), nar(9), &[], 5, 1);
    let plan = g.plan(&[], 0, &[], |_| true);
    assert_eq!(order(&plan), vec![1, 9]);
    g.remove(&h(1));
    g.remove(&h(9));
    assert!(g.ids.is_empty());
}

#[test]
fn cycles_from_foreign_writers_are_never_removed() {
    let mut g = Graph::default();
    g.insert(&h(1), nar(1), &[h(2)], 10, 1);
    g.insert(&h(2), nar(2), &[h(1)], 10, 1);
    assert!(g.plan(&[], u32::MAX, &[], |_| true).paths.is_empty());
}

#[test]
fn nar_keys_round_trip() {
    let key = format!("nar/{}.nar.zst", nixbase32::encode(&[3u8; 32]));
    let parsed = NarKey::parse(&key).unwrap();
    assert_eq!(parsed.key(), key);
    assert!(NarKey::parse("nar/x.nar").is_none());
    assert!(NarKey::parse(&key.replace(".zst", ".gz")).is_none());
}

#[test]
fn the_reference_arena_is_compacted() {
    let mut g = Graph::default();
    for round in 0..3u32 {
        for i in 0..40_000u32 {
            let mut hash = [0u8; 20];
            hash[..4].copy_from_slice(&i.to_le_bytes());
            hash[4] = 1;
            let mut r = hash;
            r[4] = 2;
            g.insert(&hash, nar(1), &[r], round, 1);
            g.remove(&hash);
        }
    }
    assert!(g.refs.len() < 200_000, "{}", g.refs.len());
}

/// Memory of a million paths with five references each (run by hand:
/// `cargo test --release --lib million -- --ignored --nocapture`).
#[test]
#[ignore]
fn a_million_paths() {
    fn rss_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
    let before = rss_kib();
    let mut g = Graph::default();
    let hash = |i: u32| {
        let mut h = [0u8; 20];
        h[..4].copy_from_slice(&i.wrapping_mul(2_654_435_761).to_le_bytes());
        h[4..8].copy_from_slice(&i.to_le_bytes());
        h
    };
    for i in 0..1_000_000u32 {
        let refs: Vec<PathHash> = (1..=5)
            .filter(|k| i >= *k * 7)
            .map(|k| hash(i - k * 7))
            .collect();
        let mut nar = [0u8; 32];
        nar[..4].copy_from_slice(&i.to_le_bytes());
        g.insert(
            &hash(i),
            NarKey { hash: nar, ext: 1 }.print(),
            &refs,
            i,
            1000,
        );
    }
    g.shrink();
    let loaded = rss_kib();
    let users = g.nar_users(None);
    let plan = g.plan(&[], 0, &[], |chosen| chosen < 100_000_000);
    let peak = rss_kib();
    eprintln!(
        "node {} bytes; graph of 1M paths: {} MiB; with a pass's NAR users and plan ({} paths): {} MiB",
        std::mem::size_of::<Node>(),
        (loaded - before) / 1024,
        plan.paths.len(),
        (peak - before) / 1024
    );
    drop(users);
}
