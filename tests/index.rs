//! The in-memory narinfo index: misses are answered from memory, but nothing that is
//! in the directory is ever hidden, whoever wrote it and whenever.

mod common;

use std::time::Duration;

use common::*;

const STORE: &str = "/nix/store";

fn index_complete(s: &Server) -> bool {
    eventually(Duration::from_secs(20), || {
        s.log().contains("narinfo index: ") && s.log().contains(" narinfos, built in ")
    })
}

#[test]
fn paths_present_at_start_are_found_and_absent_ones_are_not() {
    let dir = temp_dir("index-start");
    let hashes: Vec<String> = (0..3000).map(|i| store_hash(&format!("pre-{i}"))).collect();
    for h in &hashes {
        std::fs::write(
            dir.join(format!("{h}.narinfo")),
            format!("StorePath: {STORE}/{h}-x\n"),
        )
        .unwrap();
    }
    let s = ServerBuilder::new().dir(&dir).start();
    assert!(index_complete(&s), "the index is built:\n{}", s.log());
    assert!(
        s.log().contains("narinfo index: 3000 narinfos"),
        "{}",
        s.log()
    );
    for h in hashes.iter().step_by(97) {
        assert_eq!(get(&s, &format!("/{h}.narinfo")).status, 200, "{h}");
        assert_eq!(head(&s, &format!("/{h}.narinfo")).status, 200, "{h}");
    }
    for i in 0..50 {
        let miss = store_hash(&format!("absent-{i}"));
        assert_eq!(get(&s, &format!("/{miss}.narinfo")).status, 404);
        assert_eq!(head(&s, &format!("/{miss}.narinfo")).status, 404);
    }
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn narinfos_written_by_another_tool_are_found_at_once() {
    let s = ServerBuilder::new().start();
    assert!(index_complete(&s), "the index is built:\n{}", s.log());

    // Renamed into place, as `nix copy --to file://` and nix-stored itself do.
    let renamed = store_hash("renamed");
    assert_eq!(get(&s, &format!("/{renamed}.narinfo")).status, 404);
    let tmp = s.dir.join(format!("{renamed}.narinfo.tmp"));
    std::fs::write(&tmp, "StorePath: x\n").unwrap();
    std::fs::rename(&tmp, s.dir.join(format!("{renamed}.narinfo"))).unwrap();
    // inotify delivers the event asynchronously: a few milliseconds.
    assert!(
        eventually(Duration::from_secs(2), || get(
            &s,
            &format!("/{renamed}.narinfo")
        )
        .status
            == 200),
        "a narinfo renamed into the directory is served"
    );

    // Written in place.
    let written = store_hash("written");
    assert_eq!(head(&s, &format!("/{written}.narinfo")).status, 404);
    std::fs::write(s.dir.join(format!("{written}.narinfo")), "StorePath: y\n").unwrap();
    assert!(
        eventually(Duration::from_secs(2), || head(
            &s,
            &format!("/{written}.narinfo")
        )
        .status
            == 200),
        "a narinfo written into the directory is served"
    );
    assert!(!s.log().contains("changes were missed"), "{}", s.log());
}

#[test]
fn an_uploaded_narinfo_is_found_by_the_very_next_request() {
    let s = ServerBuilder::new().start();
    assert!(index_complete(&s), "the index is built:\n{}", s.log());
    for i in 0..20 {
        let nar = nar_of(format!("contents {i}").as_bytes());
        let h = store_hash(&format!("uploaded-{i}"));
        let info = NarInfo::uncompressed(STORE, &h, "p", &nar, &[]);
        assert_eq!(put(&s, &format!("/{}", info.url), &nar).status, 201);
        assert_eq!(get(&s, &format!("/{h}.narinfo")).status, 404);
        assert_eq!(
            put(&s, &format!("/{h}.narinfo"), info.render().as_bytes()).status,
            201
        );
        // No waiting: the index learns of an upload before it becomes visible.
        assert_eq!(head(&s, &format!("/{h}.narinfo")).status, 200);
        assert_eq!(get(&s, &format!("/{h}.narinfo")).text(), info.render());
    }
}
