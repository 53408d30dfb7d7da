//! The in-memory narinfo cache, black-box: narinfos asked for again are answered from
//! memory (the same answer as from storage), and never after they changed: an
//! overwrite through the server, a write or removal behind its back in the directory,
//! a removal by retention.
//!
//! Runs on the directory backend, and on S3 when the suite points it at Garage.

mod common;

use std::time::Duration;

use common::*;

const STORE: &str = "/nix/store";

const HITS: &str = "nix_stored_narinfo_cache_hits_total";

/// Waits until the cache is in use: on a directory once its watch runs (the index
/// build logs it), on S3 at once.
fn cache_on(s: &Server) {
    if s3_backend() {
        return;
    }
    assert!(
        eventually(Duration::from_secs(20), || s
            .log()
            .contains(" narinfos, built in ")),
        "the index (and the watch) never started:\n{}",
        s.log()
    );
}

/// Uploads a path whose NAR holds `contents`; returns its hash and narinfo.
fn upload(s: &Server, seed: &str, refs: &[&str]) -> (String, NarInfo) {
    let hash = store_hash(seed);
    let nar = nar_of(seed.as_bytes());
    let info = NarInfo::uncompressed(STORE, &hash, "p", &nar, refs);
    let r = put(s, &format!("/{}", info.url), &nar);
    assert!(matches!(r.status, 201 | 204), "{} {}", r.status, r.text());
    let r = put(s, &format!("/{hash}.narinfo"), info.render().as_bytes());
    assert!(matches!(r.status, 201 | 204), "{} {}", r.status, r.text());
    (hash, info)
}

/// GETs the narinfo until a GET is answered from memory. The watch may report the
/// upload's own file after the first GET held it, which drops it once (an
/// invalidation is never wrong); a narinfo never held fails this.
fn get_cached(s: &Server, path: &str) -> Response {
    for _ in 0..20 {
        let first = get(s, path);
        assert_eq!(first.status, 200, "{}", first.text());
        let hits = metric(s, HITS);
        let second = get(s, path);
        if metric(s, HITS) == hits + 1 {
            return second;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("{path} was never answered from memory");
}

#[test]
fn a_held_narinfo_is_answered_as_from_storage() {
    let s = ServerBuilder::new().start();
    cache_on(&s);
    let (hash, info) = upload(&s, "same answer", &[]);
    let path = format!("/{hash}.narinfo");
    let from_storage = get(&s, &path);
    let hits = metric(&s, HITS);
    let from_memory = get(&s, &path);
    let head_from_memory = head(&s, &path);
    assert_eq!(
        metric(&s, HITS),
        hits + 2,
        "GET and HEAD answered from memory"
    );
    assert_eq!(from_memory.status, 200);
    assert_eq!(from_memory.body, info.render().as_bytes());
    assert_eq!(from_memory.body, from_storage.body);
    for name in [
        "content-type",
        "content-length",
        "etag",
        "cache-control",
        "accept-ranges",
    ] {
        assert_eq!(
            from_memory.header(name),
            from_storage.header(name),
            "{name}"
        );
        assert_eq!(
            head_from_memory.header(name),
            from_storage.header(name),
            "HEAD {name}"
        );
    }
    // A HEAD first fills the cache too.
    let (hash2, _) = upload(&s, "head first", &[]);
    let path2 = format!("/{hash2}.narinfo");
    assert_eq!(head(&s, &path2).status, 200);
    let hits = metric(&s, HITS);
    assert_eq!(get(&s, &path2).status, 200);
    assert_eq!(metric(&s, HITS), hits + 1, "held since the HEAD");
    // Revalidation against the held answer's tag, and ranges, as from storage.
    let etag = from_storage.header("etag").unwrap().to_owned();
    let r = send(
        s.addr,
        "GET",
        &path,
        &[("If-None-Match", etag.as_str())],
        b"",
    );
    assert_eq!(r.status, 304);
    let r = send(s.addr, "GET", &path, &[("Range", "bytes=0-9")], b"");
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &info.render().as_bytes()[..10]);
}

#[test]
fn an_overwrite_through_the_server_is_answered_at_once() {
    let s = ServerBuilder::new().start();
    cache_on(&s);
    let (hash, mut info) = upload(&s, "re-signed", &[]);
    let path = format!("/{hash}.narinfo");
    assert_eq!(get_cached(&s, &path).body, info.render().as_bytes());
    // Re-signed, as `nix store sign --store` does: the stored narinfo gains the Sig.
    info.sign(STORE, "later-1", &signing_key(7));
    let r = put(&s, &path, info.render().as_bytes());
    assert_eq!(r.status, 204, "{}", r.text());
    let after = get(&s, &path);
    assert_eq!(after.status, 200);
    assert!(
        after.text().contains("Sig: later-1:"),
        "the new narinfo, not the held one: {}",
        after.text()
    );
    assert_eq!(
        head(&s, &path).header("content-length"),
        after.header("content-length")
    );
}

#[test]
fn changes_behind_the_servers_back_are_seen() {
    if fs_only("writes into the directory behind the server") {
        return;
    }
    let s = ServerBuilder::new().start();
    cache_on(&s);
    let hash = store_hash("behind its back");
    let path = format!("/{hash}.narinfo");
    let file = s.dir.join(format!("{hash}.narinfo"));
    std::fs::write(&file, "StorePath: one\n").unwrap();
    assert!(eventually(Duration::from_secs(5), || get(&s, &path).status == 200));
    assert_eq!(get_cached(&s, &path).text(), "StorePath: one\n");
    let seen = |want: &str| eventually(Duration::from_secs(10), || get(&s, &path).text() == want);

    // Written in place (truncated and rewritten).
    std::fs::write(&file, "StorePath: two\n").unwrap();
    assert!(seen("StorePath: two\n"), "a write in place is seen");
    assert_eq!(get_cached(&s, &path).text(), "StorePath: two\n");

    // Replaced by a rename, as `nix copy --to file://` writes.
    let tmp = s.dir.join(format!("{hash}.narinfo.tmp"));
    std::fs::write(&tmp, "StorePath: three\n").unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    assert!(seen("StorePath: three\n"), "a replacement is seen");
    assert_eq!(get_cached(&s, &path).text(), "StorePath: three\n");

    // Removed.
    std::fs::remove_file(&file).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || get(&s, &path).status == 404),
        "a removal is seen"
    );
    assert_eq!(head(&s, &path).status, 404);
}

#[test]
fn a_narinfo_removed_by_retention_is_gone_at_once() {
    let store = Store::fresh("narinfo-cache-gc");
    let s = ServerBuilder::new()
        .store(&store)
        .env("NIX_STORED_GC_INTERVAL", "1")
        .env("NIX_STORED_MAX_SIZE", "100K")
        .start();
    cache_on(&s);
    wait_passes(&s, 0, 1);
    // The victim is read (and held) first, then every other path is more recent.
    let (victim, _) = upload(&s, &format!("victim {:0>20000}", 0), &[]);
    let victim_path = format!("/{victim}.narinfo");
    get_cached(&s, &victim_path);
    std::thread::sleep(Duration::from_millis(1100));
    for i in 0..6 {
        upload(&s, &format!("newer {i} {:0>20000}", i), &[]);
    }
    let passes = metric(&s, "nix_stored_retention_passes_total");
    let removed = |s: &Server| metric(s, "nix_stored_retention_removed_paths_total");
    let before = removed(&s);
    wait_passes(&s, passes, 2);
    assert!(removed(&s) > before, "the pass removed paths:\n{}", s.log());
    assert!(
        !store.exists(&victim_path[1..]),
        "the least recently used path went:\n{}",
        s.log()
    );
    assert_eq!(
        get(&s, &victim_path).status,
        404,
        "not answered from memory"
    );
    assert_eq!(head(&s, &victim_path).status, 404);
}

#[test]
fn metrics_show_the_cache_and_zero_turns_it_off() {
    let s = ServerBuilder::new()
        .env("NIX_STORED_NARINFO_CACHE_SIZE", "2M")
        .start();
    cache_on(&s);
    assert_eq!(metric(&s, "nix_stored_narinfo_cache_budget_bytes"), 2 << 20);
    let (hash, _) = upload(&s, "counted", &[]);
    let misses = metric(&s, "nix_stored_narinfo_cache_misses_total");
    get_cached(&s, &format!("/{hash}.narinfo"));
    assert!(metric(&s, "nix_stored_narinfo_cache_misses_total") > misses);
    assert_eq!(metric(&s, "nix_stored_narinfo_cache_entries"), 1);
    let bytes = metric(&s, "nix_stored_narinfo_cache_bytes");
    assert!(bytes > 100 && bytes < 4096, "{bytes}");
    let text = get(&s, "/metrics").text();
    assert!(
        text.contains("nix_stored_narinfo_cache_evictions_total 0"),
        "{text}"
    );

    let off = ServerBuilder::new()
        .env("NIX_STORED_NARINFO_CACHE_SIZE", "0")
        .start();
    cache_on(&off);
    let (hash, _) = upload(&off, "not held", &[]);
    for _ in 0..3 {
        assert_eq!(get(&off, &format!("/{hash}.narinfo")).status, 200);
    }
    assert_eq!(metric(&off, "nix_stored_narinfo_cache_budget_bytes"), 0);
    assert_eq!(metric(&off, HITS), 0);
    assert_eq!(metric(&off, "nix_stored_narinfo_cache_entries"), 0);
}
