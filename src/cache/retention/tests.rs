//! Passes over an in-memory storage: what goes, what stays, and that no closure breaks.

use std::sync::Arc;
use std::time::Duration;

use nix_derivation::nixbase32;

use super::settings::RetentionSettings;
use super::{now_secs, Retention};
use crate::cache::graph::path_hash_str;
use crate::storage::memory::MemoryStorage;

const DAY: u64 = 86_400;

fn hash(n: u8) -> String {
    path_hash_str(&[n; 20])
}

fn nar_key(n: u8) -> String {
    format!("nar/{}.nar.xz", nixbase32::encode(&[n; 32]))
}

/// Stores path `n` with references `refs`, `age` seconds old, a NAR of `size` bytes.
fn store(s: &MemoryStorage, n: u8, refs: &[u8], age: u64, size: usize) {
    store_with_nar(s, n, n, refs, age, size)
}

/// As [`store`], with the NAR of path `nar`.
fn store_with_nar(s: &MemoryStorage, n: u8, nar: u8, refs: &[u8], age: u64, size: usize) {
    let now = u64::from(now_secs());
    let refs: Vec<String> = refs.iter().map(|r| format!("{}-p{r}", hash(*r))).collect();
    let narinfo = format!(
        "StorePath: /nix/store/{}-p{n}\nURL: {}\nCompression: xz\nFileSize: {size}\nNarSize: {size}\nReferences: {}\n",
        hash(n),
        nar_key(nar),
        refs.join(" ")
    );
    let key = format!("{}.narinfo", hash(n));
    s.insert(&key, narinfo.as_bytes());
    s.set_modified(&key, now - age);
    s.insert(&nar_key(nar), &vec![0u8; size]);
    s.set_modified(&nar_key(nar), now - age);
}

/// Retention with a 30-day age limit and nothing else.
fn thirty_days(s: &Arc<MemoryStorage>) -> Retention {
    retention(
        s,
        RetentionSettings {
            max_age: Some(Duration::from_secs(30 * DAY)),
            ..Default::default()
        },
    )
}

fn retention(s: &Arc<MemoryStorage>, settings: RetentionSettings) -> Retention {
    Retention::new(
        s.clone(),
        settings,
        Duration::ZERO,
        Arc::new(crate::cache::catalog::Catalog::new(true)),
    )
}

/// Every stored narinfo has its NAR and the narinfos of its references.
fn assert_closed(s: &MemoryStorage) {
    for key in s.keys().iter().filter(|k| k.ends_with(".narinfo")) {
        let text = String::from_utf8(s.get(key).unwrap().to_vec()).unwrap();
        for line in text.lines() {
            if let Some(url) = line.strip_prefix("URL: ") {
                assert!(s.get(url).is_some(), "{key}: NAR {url} missing");
            }
            if let Some(refs) = line.strip_prefix("References: ") {
                for r in refs.split_whitespace() {
                    let r = format!("{}.narinfo", &r[..32]);
                    assert!(s.get(&r).is_some(), "{key}: reference {r} missing");
                }
            }
        }
    }
}

fn present(s: &MemoryStorage, n: u8) -> bool {
    s.get(&format!("{}.narinfo", hash(n))).is_some()
}

#[tokio::test]
async fn a_quota_removes_the_least_recently_used_closure_from_the_top() {
    let s = Arc::new(MemoryStorage::default());
    // Old closure 1 -> 2 -> 3; new closure 4 -> 3 keeps 3 alive; 5 alone, middle-aged.
    store(&s, 3, &[], 9 * DAY, 1000);
    store(&s, 2, &[3], 9 * DAY, 1000);
    store(&s, 1, &[2], 8 * DAY, 1000);
    store(&s, 5, &[], 5 * DAY, 1000);
    store(&s, 4, &[3], DAY, 1000);
    let r = retention(
        &s,
        RetentionSettings {
            max_size: Some(4200),
            ..Default::default()
        },
    );
    let report = r.pass(false).await.unwrap();
    assert_closed(&s);
    // ~6 KB stored, low water 3780: 1 and 2 go (oldest), 3 stays (4 uses it).
    assert!(!present(&s, 1) && !present(&s, 2), "{report:?}");
    assert!(present(&s, 3) && present(&s, 4) && present(&s, 5));
    assert!(s.get(&nar_key(1)).is_none() && s.get(&nar_key(2)).is_none());
    assert_eq!(report.removed.over_quota, 2, "{report:?}");
    assert_eq!(report.removed.paths, 2, "{report:?}");
    assert!(report.bytes_after <= 3780, "{report:?}");
}

#[tokio::test]
async fn retention_age_pins_and_dry_runs() {
    let s = Arc::new(MemoryStorage::default());
    store(&s, 1, &[], 40 * DAY, 10);
    store(&s, 2, &[1], 40 * DAY, 10);
    store(&s, 3, &[], 40 * DAY, 10);
    store(&s, 4, &[], DAY, 10);
    let pins = std::env::temp_dir().join(format!("nix-stored-pins-{}", std::process::id()));
    std::fs::write(&pins, format!("# keep\n/nix/store/{}-p2\n", hash(2))).unwrap();
    let r = retention(
        &s,
        RetentionSettings {
            max_age: Some(Duration::from_secs(30 * DAY)),
            pins: Some(pins.clone()),
            ..Default::default()
        },
    );
    let dry = r.pass(true).await.unwrap();
    assert_eq!(dry.listed.len(), 1);
    assert_eq!(dry.removed.expired, 1);
    assert!(present(&s, 3), "a dry run removes nothing");
    r.pass(false).await.unwrap();
    assert_closed(&s);
    assert!(!present(&s, 3));
    assert!(
        present(&s, 1) && present(&s, 2) && present(&s, 4),
        "pinned closure and young path stay"
    );
    std::fs::write(&pins, "").unwrap();
    r.reload_pins();
    r.pass(false).await.unwrap();
    assert!(!present(&s, 2) && !present(&s, 1) && present(&s, 4));
    let _ = std::fs::remove_file(pins);
}

#[tokio::test]
async fn uses_keep_paths_and_survive_a_restart() {
    let s = Arc::new(MemoryStorage::default());
    store(&s, 1, &[], 40 * DAY, 10);
    store(&s, 2, &[1], 40 * DAY, 10);
    let settings = RetentionSettings {
        max_age: Some(Duration::from_secs(30 * DAY)),
        ..Default::default()
    };
    {
        // A first server learns the graph, sees 2 downloaded, and stops.
        let r = retention(
            &s,
            RetentionSettings {
                max_age: None,
                max_size: Some(1 << 40),
                ..settings.clone()
            },
        );
        r.pass(false).await.unwrap();
        r.record_use(&format!("{}.narinfo", hash(2)));
        r.flush().await.unwrap();
    }
    let r = retention(&s, settings);
    r.pass(false).await.unwrap();
    assert!(
        present(&s, 1) && present(&s, 2),
        "the use of 2 keeps its closure"
    );
}

#[tokio::test]
async fn orphans_go_after_the_grace_period_and_shared_nars_with_the_last_user() {
    let s = Arc::new(MemoryStorage::default());
    let now = u64::from(now_secs());
    s.insert(&nar_key(7), b"old orphan");
    s.set_modified(&nar_key(7), now - 2 * 3600);
    s.insert(&nar_key(8), b"young orphan");
    // 2 shares the NAR of 1 and is young.
    store_with_nar(&s, 2, 1, &[], DAY, 10);
    store(&s, 1, &[], 40 * DAY, 10);
    let r = thirty_days(&s);
    r.pass(false).await.unwrap();
    assert!(s.get(&nar_key(7)).is_none());
    assert!(s.get(&nar_key(8)).is_some());
    assert!(!present(&s, 1) && present(&s, 2));
    assert!(s.get(&nar_key(1)).is_some(), "still used by 2");
    assert_closed(&s);
}

#[tokio::test]
async fn an_upload_holding_a_reference_keeps_it_and_one_to_a_removed_path_is_refused() {
    let s = Arc::new(MemoryStorage::default());
    store(&s, 1, &[], 40 * DAY, 10);
    let r = thirty_days(&s);
    let hold = r
        .hold_narinfo(&hash(9), &nar_key(9), &[hash(1)])
        .expect("nothing is being removed");
    r.pass(false).await.unwrap();
    assert!(present(&s, 1), "held by the upload in flight");
    drop(hold);
    r.pass(false).await.unwrap();
    assert!(!present(&s, 1));
    assert!(s.keys().iter().all(|k| !k.starts_with("nar/")));
}

#[tokio::test]
async fn an_upload_that_cannot_fit_is_refused() {
    let s = Arc::new(MemoryStorage::default());
    store(&s, 1, &[], DAY, 600);
    let pins = std::env::temp_dir().join(format!("nix-stored-pins-q-{}", std::process::id()));
    std::fs::write(&pins, hash(1)).unwrap();
    let r = retention(
        &s,
        RetentionSettings {
            max_size: Some(1000),
            pins: Some(pins.clone()),
            ..Default::default()
        },
    );
    r.pass(false).await.unwrap();
    // The pinned path holds its 600-byte NAR and a narinfo of about 150 bytes.
    assert!(r.check_room(100).is_ok());
    assert!(r.check_room(400).is_err(), "750 pinned + 400 > 1000");
    assert!(r.check_room(2000).is_err());
    let _ = std::fs::remove_file(pins);
}

#[tokio::test]
async fn a_narinfo_it_cannot_read_keeps_its_file() {
    let s = Arc::new(MemoryStorage::default());
    let now = u64::from(now_secs());
    let url = "nar/written-by-another-tool.nar.gz";
    let key = format!("{}.narinfo", hash(1));
    s.insert(
        &key,
        format!(
            "StorePath: /nix/store/{}-p\nURL: {url}\nFileSize: 3\nReferences: \n",
            hash(1)
        )
        .as_bytes(),
    );
    s.insert(url, b"nar");
    s.set_modified(url, now - 40 * DAY);
    s.set_modified(&key, now - 40 * DAY);
    let r = thirty_days(&s);
    r.pass(false).await.unwrap();
    assert!(s.get(&key).is_some() && s.get(url).is_some());
}
