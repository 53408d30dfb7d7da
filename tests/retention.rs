//! Retention, black-box: quota, age, pins, 507, uses that survive a restart, passes
//! killed at random points and passes racing uploads. After each, every narinfo the
//! cache holds must have its NAR and the narinfos of its references.
//!
//! Runs on the directory backend, and on S3 when the suite points it at Garage.

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::*;

const STORE: &str = "/nix/store";

/// One uploaded store path.
#[derive(Clone, Debug)]
struct Path {
    hash: String,
    base: String,
}

impl Path {
    fn narinfo(&self) -> String {
        format!("/{}.narinfo", self.hash)
    }
}

/// Uploads a path whose NAR holds `size` bytes derived from `seed`, referencing `refs`.
/// Returns the path and the status of the narinfo upload.
fn upload(s: &Server, seed: &str, refs: &[&Path], size: usize) -> (Path, u16) {
    let hash = store_hash(seed);
    let name = format!(
        "p-{}",
        seed.replace(|c: char| !c.is_ascii_alphanumeric(), "")
    );
    let mut contents = seed.as_bytes().to_vec();
    contents.resize(size.max(seed.len()), b'x');
    let nar = nar_of(&contents);
    let bases: Vec<&str> = refs.iter().map(|r| r.base.as_str()).collect();
    let info = NarInfo::uncompressed(STORE, &hash, &name, &nar, &bases);
    let r = put(s, &format!("/{}", info.url), &nar);
    assert!(
        matches!(r.status, 200 | 201 | 204 | 409),
        "NAR upload: {} {}",
        r.status,
        r.text()
    );
    let r = put(s, &format!("/{hash}.narinfo"), info.render().as_bytes());
    let path = Path {
        base: format!("{hash}-{name}"),
        hash,
    };
    (path, r.status)
}

/// Uploads a path that must be accepted.
fn stored(s: &Server, seed: &str, refs: &[&Path], size: usize) -> Path {
    let (p, status) = upload(s, seed, refs, size);
    assert!(matches!(status, 200 | 201 | 204), "{seed}: {status}");
    p
}

fn gc_server(store: &Store) -> ServerBuilder {
    ServerBuilder::new()
        .store(store)
        .env("NIX_STORED_GC_INTERVAL", "1")
}

#[test]
fn a_quota_removes_the_least_recently_used_closures_and_keeps_used_ones() {
    let store = Store::fresh("quota");
    let s = gc_server(&store).env("NIX_STORED_MAX_SIZE", "300K").start();
    wait_passes(&s, 0, 1);
    // Two-path closures of about 40 KiB; the first one is used all along.
    let kept_lib = stored(&s, "kept-lib", &[], 20_000);
    let kept = stored(&s, "kept-app", &[&kept_lib], 20_000);
    let mut closures = Vec::new();
    for i in 0..14 {
        let lib = stored(&s, &format!("lib{i}"), &[], 20_000);
        let app = stored(&s, &format!("app{i}"), &[&lib], 20_000);
        closures.push((app, lib));
        assert_eq!(get(&s, &kept.narinfo()).status, 200, "{}", s.log());
        // Keeps the clock moving between uses: recency counts in seconds.
        std::thread::sleep(Duration::from_millis(300));
    }
    let passes = metric(&s, "nix_stored_retention_passes_total");
    wait_passes(&s, passes, 2);
    assert_closed(&store);
    assert_eq!(get(&s, &kept.narinfo()).status, 200);
    assert_eq!(get(&s, &kept_lib.narinfo()).status, 200);
    let (oldest_app, oldest_lib) = &closures[0];
    assert_eq!(get(&s, &oldest_app.narinfo()).status, 404, "{}", s.log());
    assert_eq!(get(&s, &oldest_lib.narinfo()).status, 404);
    let (newest_app, _) = closures.last().unwrap();
    assert_eq!(get(&s, &newest_app.narinfo()).status, 200);
    let stored_bytes = metric(&s, "nix_stored_stored_bytes");
    assert!(stored_bytes <= 300 * 1024, "{stored_bytes}");
    assert!(metric(&s, "nix_stored_retention_removed_paths_total") >= 2);
    assert!(metric(&s, "nix_stored_retention_removed_bytes_total") > 0);
    assert_eq!(metric(&s, "nix_stored_retention_quota_bytes"), 300 * 1024);
    assert!(s.log().contains("retention pass: removed"), "{}", s.log());
}

/// Sets the modification time of every object of a directory store back by `age`.
fn age_objects(dir: &std::path::Path, age: Duration) {
    let when = SystemTime::now() - age;
    for f in files_below(dir) {
        if f.starts_with(".tmp") || f.starts_with("nix-stored/") {
            continue;
        }
        let file = std::fs::File::options()
            .write(true)
            .open(dir.join(&f))
            .unwrap();
        file.set_modified(when).unwrap();
    }
}

#[test]
fn paths_unused_past_the_retention_age_go_and_downloads_count_across_a_restart() {
    if fs_only("sets modification times of files") {
        return;
    }
    let store = Store::fresh("age");
    let mut s = gc_server(&store).env("NIX_STORED_RETENTION", "30d").start();
    let lib = stored(&s, "age-lib", &[], 1000);
    let app = stored(&s, "age-app", &[&lib], 1000);
    let used_lib = stored(&s, "used-lib", &[], 1000);
    let used = stored(&s, "used-app", &[&used_lib], 1000);
    let other = stored(&s, "other", &[], 1000);
    // Downloads of `used` (narinfo) and `other` (its NAR): their uses are written out
    // when the server stops.
    assert_eq!(get(&s, &used.narinfo()).status, 200);
    let other_info = String::from_utf8(store.read(&other.narinfo()).unwrap()).unwrap();
    let other_nar = other_info
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .unwrap()
        .to_owned();
    assert_eq!(get(&s, &format!("/{other_nar}")).status, 200);
    assert!(s.terminate().success());
    age_objects(store.dir().unwrap(), Duration::from_secs(40 * 86_400));

    // The dry run reports, and changes nothing.
    let before = store.files();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nix-stored"))
        .args(["gc", "--dry-run"])
        .env("NIX_STORED_PATH", store.dir().unwrap())
        .env("NIX_STORED_RETENTION", "30d")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains(&app.hash) && report.contains(&lib.hash),
        "{report}"
    );
    assert!(report.contains("expired"), "{report}");
    assert!(
        !report.contains(&used.hash) && !report.contains(&other.hash),
        "{report}"
    );
    assert_eq!(store.files(), before, "a dry run changes nothing");

    let s = gc_server(&store).env("NIX_STORED_RETENTION", "30d").start();
    wait_passes(&s, 0, 1);
    assert_closed(&store);
    assert_eq!(get(&s, &app.narinfo()).status, 404, "{}", s.log());
    assert_eq!(get(&s, &lib.narinfo()).status, 404);
    assert_eq!(get(&s, &used.narinfo()).status, 200);
    assert_eq!(
        get(&s, &used_lib.narinfo()).status,
        200,
        "kept by its referrer's use"
    );
    assert_eq!(
        get(&s, &other.narinfo()).status,
        200,
        "kept by its NAR's download"
    );
}

#[test]
fn pins_keep_closures_and_an_upload_that_cannot_fit_gets_507() {
    let store = Store::fresh("pins");
    let dir = temp_dir("pins-file");
    let pins = dir.join("pins");
    std::fs::write(&pins, "").unwrap();
    let s = gc_server(&store)
        .env("NIX_STORED_MAX_SIZE", "200K")
        .env("NIX_STORED_PINS", pins.to_str().unwrap())
        .start();
    let lib = stored(&s, "pinned-lib", &[], 70_000);
    let app = stored(&s, "pinned-app", &[&lib], 70_000);
    std::fs::write(&pins, format!("# the release\n{STORE}/{}\n", app.base)).unwrap();
    let passes = metric(&s, "nix_stored_retention_passes_total");
    wait_passes(&s, passes, 2);
    assert!(metric(&s, "nix_stored_retention_pinned_bytes") >= 140_000);
    // Newer paths push the cache over its quota: they go, the pinned closure stays.
    for i in 0..4 {
        stored(&s, &format!("newer{i}"), &[], 30_000);
        std::thread::sleep(Duration::from_millis(200));
    }
    let passes = metric(&s, "nix_stored_retention_passes_total");
    wait_passes(&s, passes, 2);
    assert_closed(&store);
    assert_eq!(get(&s, &app.narinfo()).status, 200);
    assert_eq!(get(&s, &lib.narinfo()).status, 200);
    // 140 KB pinned: 100 KB can never fit in 200 KiB; nothing stored is harmed.
    let before = store.files();
    let big = nar_of(&vec![b'y'; 100_000]);
    let r = put(&s, &format!("/nar/{}.nar", nix32_sha256(&big)), &big);
    assert_eq!(r.status, 507, "{}", r.text());
    assert!(r.text().contains("NIX_STORED_MAX_SIZE"), "{}", r.text());
    assert_eq!(store.files(), before);
    // Unpinned (SIGHUP re-reads the file), the closure is an ordinary one again.
    std::fs::write(&pins, "").unwrap();
    unsafe_sighup(s.pid());
    for i in 0..6 {
        stored(&s, &format!("newest{i}"), &[], 30_000);
        std::thread::sleep(Duration::from_millis(200));
    }
    let passes = metric(&s, "nix_stored_retention_passes_total");
    wait_passes(&s, passes, 2);
    assert_closed(&store);
    assert_eq!(get(&s, &app.narinfo()).status, 404, "{}", s.log());
}

fn unsafe_sighup(pid: u32) {
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[test]
fn passes_killed_at_any_point_never_break_a_closure() {
    let store = Store::fresh("gc-kill");
    let rounds = if s3_backend() { 6 } else { 20 };
    let mut n = 0;
    for round in 0..rounds {
        let mut s = gc_server(&store).env("NIX_STORED_MAX_SIZE", "64K").start();
        // Three-path closures of 6 KB; the cache keeps about ten of them. Times count
        // in seconds, so a pass may take a path just uploaded as soon as an older
        // one: then its referrer is refused (409, or 400 once it is gone).
        for _ in 0..8 {
            let (a, _) = upload(&s, &format!("k{n}a"), &[], 2000);
            let (b, status) = upload(&s, &format!("k{n}b"), &[&a], 2000);
            assert!(matches!(status, 201 | 400 | 409), "{status}");
            let (_, status) = upload(&s, &format!("k{n}c"), &[&b, &a], 2000);
            assert!(matches!(status, 201 | 400 | 409), "{status}");
            n += 1;
        }
        // Killed while a pass removes, at a different point each round.
        std::thread::sleep(Duration::from_millis(5 + (round * 37 % 200) as u64));
        s.kill9();
        assert_closed(&store);
    }
    let s = gc_server(&store).env("NIX_STORED_MAX_SIZE", "64K").start();
    wait_passes(&s, 0, 2);
    assert_closed(&store);
    // What narinfos use fits the quota; NARs of refused narinfo uploads stay for the
    // orphans' grace period (Nix uploads a NAR well before its narinfo).
    let held = served_bytes(&store);
    assert!(held <= 64 * 1024, "{held}");
}

/// Bytes of the narinfos and the NARs they use.
fn served_bytes(store: &Store) -> u64 {
    let files = store.files();
    let mut bytes = 0;
    for f in files.iter().filter(|f| f.ends_with(".narinfo")) {
        let Some(info) = store.read(f) else { continue };
        bytes += info.len() as u64;
        let text = String::from_utf8_lossy(&info);
        if let Some(url) = text.lines().find_map(|l| l.strip_prefix("URL: ")) {
            bytes += store.read(url).map_or(0, |n| n.len() as u64);
        }
    }
    bytes
}

/// Narinfo uploads by answer: stored, refused as their reference is gone ("upload it
/// first"), refused as it is being removed.
type Tally = std::sync::Mutex<(u32, u32, u32)>;

/// Uploads bottoms, and tops that reference an earlier bottom (`older(i)`: the very
/// paths a pass is about to remove), while `more(i)`; counts the tops' answers.
fn race(
    s: &Server,
    tag: &str,
    older: impl Fn(usize) -> usize,
    more: impl Fn(usize) -> bool,
    counts: &Tally,
) {
    let mut bottoms: Vec<Path> = Vec::new();
    let mut i = 0usize;
    while more(i) {
        let (b, _) = upload(s, &format!("{tag}b{i}"), &[], 3000);
        bottoms.push(b);
        let old = &bottoms[older(i)];
        let (_, status) = upload(s, &format!("{tag}t{i}"), &[old], 1000);
        let mut c = counts.lock().unwrap();
        match status {
            201 | 204 => c.0 += 1,
            400 => c.1 += 1,
            409 => c.2 += 1,
            other => panic!("narinfo upload answered {other}"),
        }
        drop(c);
        i += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn uploads_racing_passes_never_leave_a_dangling_narinfo() {
    let store = Store::fresh("gc-race");
    let s = gc_server(&store).env("NIX_STORED_MAX_SIZE", "96K").start();
    let counts = Tally::default();
    std::thread::scope(|scope| {
        for t in 0..4 {
            let s = &s;
            let counts = &counts;
            scope.spawn(move || {
                race(
                    s,
                    &format!("r{t}"),
                    |i| i.saturating_sub(8),
                    |i| i < 40,
                    counts,
                )
            });
        }
        scope.spawn(|| {
            for _ in 0..30 {
                assert_closed(&store);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
    });
    // A pass that began during the uploads may have planned before the cache was
    // over its quota; the next one removes.
    wait_passes(&s, metric(&s, "nix_stored_retention_passes_total"), 2);
    assert_closed(&store);
    let (ok, gone, going) = *counts.lock().unwrap();
    eprintln!("tops stored {ok}, refused as gone {gone}, refused as being removed {going}");
    assert!(ok > 0);
    assert!(metric(&s, "nix_stored_retention_removed_paths_total") > 0);
}

#[test]
fn settings_are_checked() {
    for (var, value) in [
        ("NIX_STORED_MAX_SIZE", "lots"),
        ("NIX_STORED_MAX_SIZE", "0"),
        ("NIX_STORED_RETENTION", "forever"),
        ("NIX_STORED_GC_INTERVAL", "0"),
    ] {
        let (status, log) = ServerBuilder::new().env(var, value).start_expect_failure();
        assert!(!status.success());
        let flag = var
            .trim_start_matches("NIX_STORED_")
            .to_lowercase()
            .replace('_', "-");
        assert!(log.contains(var) || log.contains(&flag), "{var}: {log}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nix-stored"))
        .args(["gc", "--dry-run"])
        .env("NIX_STORED_PATH", temp_dir("gc-off"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("retention is off"));
}

#[test]
fn servers_sharing_a_bucket_keep_every_closure_while_a_third_removes() {
    if s3_only("several servers share one bucket") {
        return;
    }
    let store = Store::fresh("shared");
    let gc = gc_server(&store)
        .env("NIX_STORED_MAX_SIZE", "96K")
        .env("NIX_STORED_S3_NARINFO_TTL", "1000")
        .start();
    // The first pass leaves the marker that makes the others record their uses.
    let first = wait_passes(&gc, 0, 1);
    let uploaders: Vec<Server> = (0..2)
        .map(|_| {
            ServerBuilder::new()
                .store(&store)
                .env("NIX_STORED_S3_NARINFO_TTL", "1000")
                .start()
        })
        .collect();
    let done = std::sync::atomic::AtomicBool::new(false);
    let counts = Tally::default();
    std::thread::scope(|scope| {
        for (t, s) in uploaders.iter().enumerate() {
            let (done, counts) = (&done, &counts);
            scope.spawn(move || {
                race(
                    s,
                    &format!("s{t}"),
                    // Halfway back: old enough to be chosen by a pass now and then.
                    |i| i / 2,
                    |_| !done.load(std::sync::atomic::Ordering::Relaxed),
                    counts,
                )
            });
        }
        scope.spawn(|| {
            // Stops the uploaders however this thread ends, a failed check included.
            struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
            impl Drop for Stop<'_> {
                fn drop(&mut self) {
                    self.0.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
            let _stop = Stop(&done);
            let deadline = Instant::now() + Duration::from_secs(240);
            while metric(&gc, "nix_stored_retention_passes_total") < first + 2 {
                assert!(
                    Instant::now() < deadline,
                    "no passes ({} failed); log:\n{}",
                    metric(&gc, "nix_stored_retention_failed_passes_total"),
                    gc.log()
                );
                assert_closed(&store);
                std::thread::sleep(Duration::from_millis(500));
            }
        });
    });
    assert_closed(&store);
    let (ok, gone, going) = *counts.lock().unwrap();
    eprintln!("tops stored {ok}, refused as gone {gone}, refused as being removed {going}");
    assert!(ok > 0);
    assert!(metric(&gc, "nix_stored_retention_removed_paths_total") > 0);
    // A download on an uploader is written out for the passes (here at its stop).
    let journals = |store: &Store| {
        store
            .files()
            .iter()
            .filter(|f| f.starts_with("nix-stored/used/"))
            .count()
    };
    let before = journals(&store);
    let mut u = uploaders.into_iter().next().unwrap();
    let any = store
        .files()
        .into_iter()
        .find(|f| f.ends_with(".narinfo"))
        .unwrap();
    assert_eq!(get(&u, &format!("/{any}")).status, 200);
    assert!(u.terminate().success());
    assert_eq!(journals(&store), before + 1, "{}", u.log());
}
