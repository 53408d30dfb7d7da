//! Symbolic links planted in the cache directory by another writer of it (rsync,
//! `nix copy --to file://`, anyone with write access) are never followed: a linked
//! object reads as absent, an upload through a linked directory is refused with 409
//! and writes nothing outside, and the clean-up of `.tmp` at start never leaves the
//! cache. Filesystem backend only.

mod common;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

use common::*;

const STORE: &str = "/nix/store";

fn nar_key(nar: &[u8]) -> String {
    format!("nar/{}.nar", nix32_sha256(nar))
}

/// Asserts that `path` answers 404 to GET and HEAD, and that none of `secret` leaks.
fn absent(s: &Server, path: &str, secret: &[u8]) {
    let g = get(s, path);
    assert_eq!(g.status, 404, "GET {path}: {}", g.text());
    assert_ne!(g.body, secret, "GET {path} served the link's target");
    let h = head(s, path);
    assert_eq!(h.status, 404, "HEAD {path}");
}

/// The files below `dir`, with their contents.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    files_below(dir)
        .into_iter()
        .map(|f| {
            let bytes = std::fs::read(dir.join(&f)).unwrap_or_default();
            (f, bytes)
        })
        .collect()
}

#[test]
fn a_symlinked_nar_is_absent() {
    if fs_only("symlinks in a cache directory") {
        return;
    }
    let root = temp_dir("symlink-nar");
    let outside = temp_dir("symlink-nar-outside");
    std::fs::create_dir(root.join("nar")).unwrap();
    // One small (read inline) and one large (streamed) target.
    let mut keys = Vec::new();
    for (name, size) in [("small", 100), ("large", 300 * 1024)] {
        let nar = nar_of(&vec![b's'; size]);
        std::fs::write(outside.join(name), &nar).unwrap();
        let key = nar_key(&nar);
        symlink(outside.join(name), root.join(&key)).unwrap();
        keys.push((key, nar));
    }
    let s = ServerBuilder::new().dir(&root).start();
    for (key, nar) in &keys {
        absent(&s, &format!("/{key}"), nar);
    }
    assert!(
        eventually(Duration::from_secs(10), || s
            .log()
            .contains("symbolic link")),
        "the refused link is logged:\n{}",
        s.log()
    );
    drop(s);
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_dir_all(&outside);
}

#[test]
fn a_symlinked_narinfo_is_absent() {
    if fs_only("symlinks in a cache directory") {
        return;
    }
    let root = temp_dir("symlink-narinfo");
    let outside = temp_dir("symlink-narinfo-outside");
    let nar = nar_of(b"linked narinfo");
    std::fs::create_dir(root.join("nar")).unwrap();
    std::fs::write(root.join(nar_key(&nar)), &nar).unwrap();
    let before = store_hash("planted before start");
    let after = store_hash("planted while running");
    for h in [&before, &after] {
        let info = NarInfo::uncompressed(STORE, h, "linked", &nar, &[]).render();
        std::fs::write(outside.join(h), &info).unwrap();
    }
    // Seen by the listing at start...
    symlink(
        outside.join(&before),
        root.join(format!("{before}.narinfo")),
    )
    .unwrap();
    let s = ServerBuilder::new().dir(&root).start();
    // ...and by the watch while running.
    symlink(outside.join(&after), root.join(format!("{after}.narinfo"))).unwrap();
    for h in [&before, &after] {
        let secret = std::fs::read(outside.join(h)).unwrap();
        absent(&s, &format!("/{h}.narinfo"), &secret);
    }
    // The NAR itself is a plain file and served.
    assert_eq!(get(&s, &format!("/{}", nar_key(&nar))).status, 200);
    drop(s);
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_dir_all(&outside);
}

#[test]
fn a_symlinked_nar_directory_is_neither_read_nor_written() {
    if fs_only("symlinks in a cache directory") {
        return;
    }
    let root = temp_dir("symlink-nardir");
    let outside = temp_dir("symlink-nardir-outside");
    let there = nar_of(b"outside the cache");
    std::fs::write(
        outside.join(nar_key(&there).trim_start_matches("nar/")),
        &there,
    )
    .unwrap();
    symlink(&outside, root.join("nar")).unwrap();
    let before = snapshot(&outside);
    let s = ServerBuilder::new().dir(&root).start();
    absent(&s, &format!("/{}", nar_key(&there)), &there);

    let nar = nar_of(b"uploaded through a linked nar/");
    let r = put(&s, &format!("/{}", nar_key(&nar)), &nar);
    assert_eq!(
        r.status,
        409,
        "a hostile directory is refused, not a crash: {}",
        r.text()
    );
    assert!(r.text().contains("symbolic link"), "{}", r.text());
    assert_eq!(snapshot(&outside), before, "nothing written outside");
    assert!(s.pending().is_empty(), "{:?}", s.pending());
    assert!(
        eventually(Duration::from_secs(5), || s
            .log()
            .contains("upload refused")),
        "{}",
        s.log()
    );
    // Other objects are still stored.
    let h = store_hash("a log");
    let r = put(&s, &format!("/log/{h}-x.drv"), b"build log");
    assert_eq!(r.status, 201, "{}", r.text());
    drop(s);
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_dir_all(&outside);
}

#[test]
fn a_symlinked_tmp_is_replaced_not_emptied() {
    if fs_only("symlinks in a cache directory") {
        return;
    }
    let root = temp_dir("symlink-tmp");
    let outside = temp_dir("symlink-tmp-outside");
    std::fs::write(outside.join("precious"), b"keep me").unwrap();
    std::fs::create_dir(outside.join("sub")).unwrap();
    std::fs::write(outside.join("sub/also"), b"and me").unwrap();
    symlink(&outside, root.join(".tmp")).unwrap();
    let before = snapshot(&outside);
    let s = ServerBuilder::new().dir(&root).start();
    assert_eq!(
        snapshot(&outside),
        before,
        "start emptied the link's target"
    );
    let md = std::fs::symlink_metadata(root.join(".tmp")).unwrap();
    assert!(md.is_dir(), ".tmp is a directory of the cache again");
    assert!(
        eventually(Duration::from_secs(10), || s.log().contains(".tmp")),
        "{}",
        s.log()
    );
    // Uploads go through the new .tmp, not the old target.
    let nar = nar_of(b"after the swap");
    let r = put(&s, &format!("/{}", nar_key(&nar)), &nar);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(snapshot(&outside), before);
    assert_eq!(s.store.read(&nar_key(&nar)).unwrap(), nar);
    drop(s);
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_dir_all(&outside);
}
