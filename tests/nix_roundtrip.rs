//! End to end with the real Nix client (Debian's nix-bin): uploads with `nix copy --to`,
//! substitution back with signature checks, logs, basic auth through a netrc file, and
//! the directory as a `file://` cache in both directions. Each test runs twice: with the
//! host's Nix 2.8 (Debian 12) and with Nix 2.26 in the Debian 13 chroot that
//! `scripts/nix-chroot.sh` prepares (`NIX_STORED_TEST_NIX_CHROOT`).
//!
//! Skipped (with a message) when `nix` or the chroot is missing, unless
//! NIX_STORED_REQUIRE_NIX=1, which the project's test command sets so that CI can never
//! skip them silently.

// HTTPS and S3 helpers throughout: the Nix tests run in the default (full) build.
#![cfg(all(feature = "s3", feature = "tls"))]

mod common;

use std::path::Path;
use std::process::Command;

use common::nix::{Client, Nix};
use common::*;

/// Peak resident memory (VmHWM) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// `nix-store` arguments that realise `path` from the substituter `url` alone,
/// trusting only the key `pk`.
fn realise_args<'a>(path: &'a str, url: &'a str, pk: &'a str) -> [&'a str; 8] {
    [
        "-r",
        path,
        "--option",
        "substituters",
        url,
        "--option",
        "trusted-public-keys",
        pk,
    ]
}

fn zstd_upload_with_listings_and_log_then_substitution(client: Client) {
    let Some(nix) = Nix::new(client) else { return };
    let s = ServerBuilder::new().start();
    let c = nix.build();
    let (sk, pk) = nix.keys();
    let url = s.url();
    nix.copy_to(
        &format!("{url}?compression=zstd&write-nar-listing=true&secret-key={sk}"),
        &c.app,
    );
    nix.ok("nix", &["store", "copy-log", "--to", &url, &c.drv]);
    let files = s.store.files();
    assert_eq!(
        files.iter().filter(|f| f.ends_with(".narinfo")).count(),
        3,
        "{files:?}"
    );
    assert_eq!(files.iter().filter(|f| f.ends_with(".ls")).count(), 3);
    assert_eq!(files.iter().filter(|f| f.ends_with(".nar.zst")).count(), 3);
    assert!(files
        .iter()
        .any(|f| f.starts_with("log/") && f.ends_with(".drv")));

    let before = nix.app_contents(&c);
    nix.delete(&c);
    nix.ok("nix-store", &realise_args(&c.app, &url, &pk));
    assert_eq!(nix.app_contents(&c), before);
    let log = nix.ok("nix", &["log", "--store", &url, &c.app]);
    assert!(log.contains(&format!("building app-{}", c.tag)), "{log}");
}

fn xz_and_uncompressed_round_trips_with_copy_from(client: Client) {
    let Some(nix) = Nix::new(client) else { return };
    let (sk, pk) = nix.keys();
    for (compression, ext) in [("xz", ".nar.xz"), ("none", ".nar")] {
        let s = ServerBuilder::new().start();
        let c = nix.build();
        let before = nix.app_contents(&c);
        nix.copy_to(
            &format!("{}?compression={compression}&secret-key={sk}", s.url()),
            &c.app,
        );
        let nars = s.store.nars();
        assert_eq!(nars.len(), 3);
        assert!(
            nars.iter()
                .all(|f| f.ends_with(ext) && (ext != ".nar" || !f.ends_with(".nar.xz"))),
            "{nars:?}"
        );
        nix.delete(&c);
        nix.ok(
            "nix",
            &[
                "copy",
                "--from",
                &s.url(),
                &c.app,
                "--option",
                "trusted-public-keys",
                &pk,
            ],
        );
        assert!(nix.valid(&c.app));
        assert_eq!(nix.app_contents(&c), before);
    }
}

/// The server decompresses every upload to check the NAR inside: each compression
/// Nix writes must decode as Nix wrote it, and substitute back.
fn every_other_compression_nix_writes_is_verified_and_round_trips(client: Client) {
    let Some(nix) = Nix::new(client) else { return };
    let (sk, pk) = nix.keys();
    for (compression, ext) in [
        ("bzip2", ".nar.bz2"),
        ("br", ".nar.br"),
        ("lzip", ".nar.lzip"),
        ("lz4", ".nar.lz4"),
    ] {
        let s = ServerBuilder::new().start();
        let c = nix.build();
        let before = nix.app_contents(&c);
        nix.copy_to(
            &format!("{}?compression={compression}&secret-key={sk}", s.url()),
            &c.app,
        );
        let nars = s.store.nars();
        assert_eq!(nars.len(), 3, "{compression}: {nars:?}");
        assert!(nars.iter().all(|f| f.ends_with(ext)), "{nars:?}");
        nix.delete(&c);
        nix.ok(
            "nix",
            &[
                "copy",
                "--from",
                &s.url(),
                &c.app,
                "--option",
                "trusted-public-keys",
                &pk,
            ],
        );
        assert!(nix.valid(&c.app), "{compression}");
        assert_eq!(nix.app_contents(&c), before, "{compression}");
    }
}

fn unsigned_uploads_are_not_substituted_with_require_sigs(client: Client) {
    let Some(nix) = Nix::new(client) else { return };
    let s = ServerBuilder::new().start();
    let c = nix.build();
    let (_, pk) = nix.keys();
    nix.copy_to(&format!("{}?compression=zstd", s.url()), &c.app);
    nix.delete(&c);
    let err = nix.fails("nix-store", &realise_args(&c.app, &s.url(), &pk));
    // 2.8: "the substitute for '…' from '…' is not signed by any of the keys in
    // 'trusted-public-keys'"; 2.26: "ignoring substitute for '…' from '…', as it's not
    // signed by any of the keys in 'trusted-public-keys'"; both then fail the build.
    assert!(
        err.contains("not signed by any of the keys in 'trusted-public-keys'"),
        "{err}"
    );
    assert!(!nix.valid(&c.app));
}

fn basic_auth_through_a_netrc_file(client: Client) {
    let Some(nix) = Nix::new(client) else { return };
    // The server, on the host, reads its password file where the client wrote it.
    let passfile = nix.host(nix.write("write-pass", "w-secret\n"));
    let s = ServerBuilder::new()
        .env("NIX_STORED_USER_READ", "reader")
        .env("NIX_STORED_USER_READ_PASS", "r-secret")
        .env("NIX_STORED_USER_WRITE", "writer")
        .env("NIX_STORED_USER_WRITE_PASSFILE", passfile.to_str().unwrap())
        .start();
    let writer = nix.write(
        "netrc-writer",
        "machine 127.0.0.1 login writer password w-secret\n",
    );
    let reader = nix.write(
        "netrc-reader",
        "machine 127.0.0.1 login reader password r-secret\n",
    );
    let (sk, pk) = nix.keys();
    let url = s.url();
    let to = format!("{url}?compression=zstd&secret-key={sk}");
    let c = nix.build();

    nix.fails("nix", &["copy", "--to", &to, &c.app]);
    nix.fails(
        "nix",
        &[
            "copy",
            "--to",
            &to,
            &c.app,
            "--option",
            "netrc-file",
            &reader,
        ],
    );
    assert_eq!(
        s.store.files(),
        vec!["nix-cache-info"],
        "a refused upload stored something"
    );
    nix.ok(
        "nix",
        &[
            "copy",
            "--to",
            &to,
            &c.app,
            "--option",
            "netrc-file",
            &writer,
        ],
    );
    assert_eq!(
        s.store
            .files()
            .iter()
            .filter(|f| f.ends_with(".narinfo"))
            .count(),
        3
    );

    nix.delete(&c);
    let subst = realise_args(c.app.as_str(), url.as_str(), pk.as_str());
    nix.fails("nix-store", &subst);
    let mut with_reader = subst.to_vec();
    with_reader.extend(["--option", "netrc-file", reader.as_str()]);
    nix.ok("nix-store", &with_reader);
    assert!(nix.valid(&c.app));
}

/// Copies every object of `store` into the directory `dir` (on the host).
fn export(store: &Store, dir: &Path) {
    let out = Store::Dir(dir.to_owned());
    for key in store.files() {
        out.write(&key, &store.read(&key).expect("listed object"));
    }
}

/// The objects Nix wrote to `dir`, put into `store` as they are.
fn import(dir: &Path, store: &Store) {
    for key in files_below(dir) {
        store.write(&key, &std::fs::read(dir.join(&key)).unwrap());
    }
}

/// The store is the layout Nix's binary cache stores share (`file://`, and `s3://`,
/// which writes the same keys): what the server stored, Nix reads, and what Nix wrote,
/// the server serves. For S3 the objects go between the bucket and a directory
/// unchanged, because Debian's Nix is built without its S3 store.
fn the_store_directory_is_a_file_cache_both_ways(client: Client) {
    let Some(nix) = Nix::new(client) else { return };
    let (sk, pk) = nix.keys();

    // What the server stored, read by Nix as a file:// cache.
    let s = ServerBuilder::new().start();
    let c = nix.build();
    nix.copy_to(
        &format!("{}?compression=zstd&secret-key={sk}", s.url()),
        &c.app,
    );
    nix.delete(&c);
    // The store as it is when the client can read it, else a copy where it can.
    let (exported, copied) = match &s.store {
        Store::Dir(d) if client == Client::Host => (d.clone(), false),
        other => {
            let dir = nix.temp_dir("export");
            export(other, &nix.host(&dir));
            (dir, true)
        }
    };
    let file_url = format!("file://{}", exported.display());
    nix.ok(
        "nix",
        &[
            "copy",
            "--from",
            &file_url,
            &c.app,
            "--option",
            "trusted-public-keys",
            &pk,
        ],
    );
    assert!(nix.valid(&c.app));
    if copied {
        let _ = std::fs::remove_dir_all(nix.host(&exported));
    }

    // What Nix wrote to a directory (or a bucket), served as it is.
    let dir = nix.temp_dir("filecache");
    let c2 = nix.build();
    nix.copy_to(
        &format!("file://{}?compression=xz&secret-key={sk}", dir.display()),
        &c2.app,
    );
    let host_dir = nix.host(&dir);
    let store = match Store::fresh("nixwritten") {
        Store::Dir(d) => {
            let _ = std::fs::remove_dir_all(&d);
            Store::Dir(host_dir.clone())
        }
        bucket => {
            import(&host_dir, &bucket);
            bucket
        }
    };
    let s2 = ServerBuilder::new().store(&store).start();
    nix.delete(&c2);
    nix.ok("nix-store", &realise_args(&c2.app, &s2.url(), &pk));
    assert!(nix.valid(&c2.app));
    drop(s2);
    std::fs::remove_dir_all(&host_dir).unwrap();
}

/// Several servers in front of one store: a closure uploaded through one is
/// substituted through the other at once (no memory of either hides it).
fn two_servers_on_one_store(client: Client) {
    let Some(nix) = Nix::new(client) else { return };
    let (sk, pk) = nix.keys();
    let store = Store::fresh("shared");
    let a = ServerBuilder::new().store(&store).start();
    let b = ServerBuilder::new().store(&store).start();
    let c = nix.build();
    let subst = |server: &Server| nix.run("nix-store", &realise_args(&c.app, &server.url(), &pk));
    // B is asked first, while it has nothing: a miss must not be remembered.
    let narinfo = format!(
        "/{}.narinfo",
        c.app
            .trim_start_matches("/nix/store/")
            .split('-')
            .next()
            .unwrap()
    );
    assert_eq!(get(&b, &narinfo).status, 404);
    nix.copy_to(
        &format!("{}?compression=zstd&secret-key={sk}", a.url()),
        &c.app,
    );
    nix.delete(&c);
    assert!(subst(&b).status.success(), "substitution through B failed");
    assert!(nix.valid(&c.app));
    // And the other way round, with a new closure.
    let c2 = nix.build();
    nix.copy_to(
        &format!("{}?compression=xz&secret-key={sk}", b.url()),
        &c2.app,
    );
    nix.delete(&c2);
    nix.ok("nix-store", &realise_args(&c2.app, &a.url(), &pk));
    assert!(nix.valid(&c2.app));
    drop((a, b));
    store.remove();
}

/// A closure of six independent leaves under one root: Nix 2.26 uploads independent
/// paths side by side (2.8 one after the other). Each leaf's narinfo must still find
/// its NAR, the root's must find the leaves', and all of it substitutes back.
fn wide_closure_uploads_and_substitutes(client: Client) {
    let Some(nix) = Nix::new(client) else { return };
    let s = ServerBuilder::new().start();
    let (sk, pk) = nix.keys();
    let c = nix.build_attr("wide");
    assert_eq!(c.paths.len(), 7, "{:?}", c.paths);
    nix.copy_to(
        &format!("{}?compression=zstd&secret-key={sk}", s.url()),
        &c.app,
    );
    let files = s.store.files();
    for p in &c.paths {
        let hash = p
            .trim_start_matches("/nix/store/")
            .split('-')
            .next()
            .unwrap();
        assert!(
            files.contains(&format!("{hash}.narinfo")),
            "{p} missing: {files:?}"
        );
    }
    assert_eq!(s.store.nars().len(), 7);

    nix.delete(&c);
    nix.ok("nix-store", &realise_args(&c.app, &s.url(), &pk));
    for p in &c.paths {
        assert!(nix.valid(p), "{p} not substituted");
    }
}

/// The client's view of the server's `nix-cache-info`: `nix store ping` in 2.8,
/// renamed `nix store info` in 2.26 (where `ping` is a deprecated alias).
fn store_info_through_the_client(client: Client) {
    let Some(nix) = Nix::new(client) else { return };
    let s = ServerBuilder::new().start();
    let url = s.url();
    let sub = if nix.newer() { "info" } else { "ping" };
    let out = nix.run("nix", &["store", sub, "--store", &url]);
    assert!(out.status.success(), "nix store {sub} failed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&format!("Store URL: {url}")), "{text}");
}

/// `nix path-info --json --store URL`: a stored path is described from its narinfo;
/// for a path the cache lacks, both exit 0: 2.8 says `"valid": false`, 2.26 `null`.
fn path_info_json_of_stored_and_missing_paths(client: Client) {
    let Some(nix) = Nix::new(client) else { return };
    let s = ServerBuilder::new().start();
    let c = nix.build();
    nix.copy_to(&format!("{}?compression=xz", s.url()), &c.app);
    let url = s.url();
    let json = nix.ok("nix", &["path-info", "--json", "--store", &url, &c.app]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("path-info JSON");
    // 2.8: an array of objects with a "path"; 2.26: an object keyed by path.
    let info = if nix.newer() {
        v.get(&c.app).cloned().expect("keyed by path")
    } else {
        v.as_array()
            .and_then(|a| a.first())
            .cloned()
            .expect("array")
    };
    assert!(
        info["narHash"].as_str().is_some_and(|h| !h.is_empty()),
        "{json}"
    );
    assert!(info["narSize"].as_u64().is_some_and(|n| n > 8192), "{json}");
    let lib = c.paths.iter().find(|p| p.contains("-lib-")).unwrap();
    assert!(
        info["references"]
            .as_array()
            .is_some_and(|r| r.iter().any(|x| x
                .as_str()
                .is_some_and(|x| x.ends_with(lib.trim_start_matches("/nix/store/"))))),
        "{json}"
    );

    let missing = format!("/nix/store/{}-missing", &store_hash("path-info-missing"));
    let out = nix.run("nix", &["path-info", "--json", "--store", &url, &missing]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    if nix.newer() {
        assert!(
            out.status.success(),
            "2.26 path-info of a missing path failed"
        );
        let v: serde_json::Value = serde_json::from_str(&stdout).expect("path-info JSON");
        assert_eq!(v.get(&missing), Some(&serde_json::Value::Null), "{stdout}");
    } else {
        assert!(
            out.status.success(),
            "2.8 path-info of a missing path failed"
        );
        let v: serde_json::Value = serde_json::from_str(&stdout).expect("path-info JSON");
        assert_eq!(
            v,
            serde_json::json!([{ "path": missing, "valid": false }]),
            "{stdout}"
        );
    }
}

with_both_clients!(
    zstd_upload_with_listings_and_log_then_substitution,
    xz_and_uncompressed_round_trips_with_copy_from,
    every_other_compression_nix_writes_is_verified_and_round_trips,
    unsigned_uploads_are_not_substituted_with_require_sigs,
    basic_auth_through_a_netrc_file,
    the_store_directory_is_a_file_cache_both_ways,
    two_servers_on_one_store,
    wide_closure_uploads_and_substitutes,
    store_info_through_the_client,
    path_info_json_of_stored_and_missing_paths,
    substitution_through_presigned_redirects,
    two_gib_nar_streams_through_in_constant_memory,
    https_upload_and_substitution_over_http2,
    a_quota_keeps_what_clients_substitute_and_every_closure_whole,
);

/// Issue 11's promise with a real client: closures uploaded past the quota push the
/// oldest out, a closure another client keeps fetching stays, every narinfo left has
/// its NAR and references, and the kept closure substitutes with require-sigs.
fn a_quota_keeps_what_clients_substitute_and_every_closure_whole(client: Client) {
    let Some(nix) = Nix::new(client) else { return };
    let (sk, pk) = nix.keys();
    let s = ServerBuilder::new()
        .env("NIX_STORED_MAX_SIZE", "64K")
        .env("NIX_STORED_GC_INTERVAL", "1")
        .start();
    let url = s.url();
    let to = format!("{url}?compression=none&secret-key={sk}");
    let kept = nix.build();
    nix.copy_to(&to, &kept.app);
    let mut pushed = Vec::new();
    for _ in 0..9 {
        let c = nix.build();
        nix.copy_to(&to, &c.app);
        pushed.push(c);
        // Another machine substitutes the kept closure: its narinfos, whole.
        nix.ok("nix", &["path-info", "-r", "--store", &url, &kept.app]);
        // Recency counts in seconds.
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let passes = metric(&s, "nix_stored_retention_passes_total");
    wait_passes(&s, passes, 2);
    assert_closed(&s.store);
    let narinfo = |p: &str| format!("/{}.narinfo", &p["/nix/store/".len()..][..32]);
    for p in &kept.paths {
        assert_eq!(
            get(&s, &narinfo(p)).status,
            200,
            "{p} of the kept closure is gone"
        );
    }
    let oldest = &pushed[0];
    for p in &oldest.paths {
        assert_eq!(
            get(&s, &narinfo(p)).status,
            404,
            "{p} of the oldest closure stays"
        );
    }
    assert!(metric(&s, "nix_stored_stored_bytes") <= 64 * 1024);
    nix.delete(&kept);
    nix.ok("nix-store", &realise_args(&kept.app, &url, &pk));
    assert!(nix.valid(&kept.app));
}

/// With NIX_STORED_S3_REDIRECT, NAR downloads are redirects to presigned URLs, which
/// Nix follows: the NAR bytes come from the bucket, not through the server.
fn substitution_through_presigned_redirects(client: Client) {
    if s3_only("presigned redirects are an S3 setting") {
        return;
    }
    let Some(nix) = Nix::new(client) else { return };
    let (sk, pk) = nix.keys();
    let s = ServerBuilder::new()
        .env("NIX_STORED_S3_REDIRECT", "true")
        .env("NIX_STORED_S3_REDIRECT_EXPIRY", "60")
        .start();
    let c = nix.build();
    let before = nix.app_contents(&c);
    nix.copy_to(
        &format!("{}?compression=zstd&secret-key={sk}", s.url()),
        &c.app,
    );
    let nars = s.store.nars();
    assert_eq!(nars.len(), 3, "{nars:?}");
    // One NAR by hand: a 307 to the bucket, whose answer is the NAR itself.
    let r = get(&s, &format!("/{}", nars[0]));
    assert_eq!(r.status, 307, "{}", r.text());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let location = r.header("location").expect("a Location").to_owned();
    assert!(
        location.starts_with(&garage().endpoint) && location.contains("X-Amz-Signature="),
        "{location}"
    );
    let url = location.strip_prefix("http://").unwrap();
    let (host, target) = url.split_at(url.find('/').unwrap());
    let direct = send(host.parse().unwrap(), "GET", target, &[], b"");
    assert_eq!(direct.status, 200, "{}", direct.text());
    assert_eq!(direct.body, s.store.read(&nars[0]).unwrap());
    // HEAD and narinfos are still answered by the server; absent NARs are 404s.
    assert_eq!(head(&s, &format!("/{}", nars[0])).status, 200);
    assert_eq!(
        get(
            &s,
            "/nar/0000000000000000000000000000000000000000000000000000.nar"
        )
        .status,
        404
    );

    nix.delete(&c);
    nix.ok("nix-store", &realise_args(&c.app, &s.url(), &pk));
    assert_eq!(nix.app_contents(&c), before);
    // Every NAR Nix fetched was a redirect (request lines are written in batches:
    // wait for the last ones).
    let nar_gets_logged = || s.log().matches("GET /nar/").count();
    assert!(
        eventually(std::time::Duration::from_secs(5), || nar_gets_logged() >= 5),
        "{}",
        s.log()
    );
    let log = s.log();
    let nar_gets: Vec<&str> = log.lines().filter(|l| l.contains("GET /nar/")).collect();
    assert!(
        nar_gets
            .iter()
            .all(|l| l.contains(" 307 ") || l.contains("/nar/0000")),
        "{nar_gets:#?}"
    );
}

/// Redirects come after authorisation: without the read password there is no URL.
#[test]
fn redirects_need_the_read_password() {
    if s3_only("presigned redirects are an S3 setting") {
        return;
    }
    let s = ServerBuilder::new()
        .env("NIX_STORED_S3_REDIRECT", "1")
        .env("NIX_STORED_USER_READ", "reader")
        .env("NIX_STORED_USER_READ_PASS", "r-secret")
        .start();
    let nar = nar_of(b"redirect with auth");
    let key = format!("/nar/{}.nar", nix32_sha256(&nar));
    assert_eq!(put(&s, &key, &nar).status, 201);
    let r = get(&s, &key);
    assert_eq!(r.status, 401);
    assert!(r.header("location").is_none());
    let auth = basic("reader", "r-secret");
    let r = send(s.addr, "GET", &key, &[("Authorization", &auth)], b"");
    assert_eq!(r.status, 307, "{}", r.text());
}

/// A 2 GiB path up and down through the server: its memory must not grow with the
/// NAR (the server streams). Nix 2.8 itself holds the whole NAR in memory to upload.
fn two_gib_nar_streams_through_in_constant_memory(client: Client) {
    if std::env::var("NIX_STORED_LARGE_TESTS").as_deref() != Ok("1") {
        eprintln!("SKIPPED: set NIX_STORED_LARGE_TESTS=1 for the 2 GiB round trip");
        return;
    }
    let Some(nix) = Nix::new(client) else { return };
    let s = ServerBuilder::new().start();
    let big = nix.work.join(format!("big-{}", std::process::id()));
    let status = Command::new("head")
        .args(["-c", "2G", "/dev/urandom"])
        .stdout(std::fs::File::create(nix.host(&big)).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    let path = nix.ok("nix-store", &["--add", big.to_str().unwrap()]);
    std::fs::remove_file(nix.host(&big)).unwrap();
    let started = std::time::Instant::now();
    nix.copy_to(&format!("{}?compression=none", s.url()), &path);
    let up = started.elapsed();
    let after_upload = peak_rss_kib(s.pid());
    nix.ok("nix-store", &["--delete", &path]);
    let started = std::time::Instant::now();
    // Content-addressed: valid without a signature.
    nix.ok(
        "nix-store",
        &["-r", &path, "--option", "substituters", &s.url()],
    );
    let down = started.elapsed();
    let peak = peak_rss_kib(s.pid());
    eprintln!(
        "2 GiB NAR, {client:?} client: upload {:.1}s, download+import {:.1}s, server peak RSS {} KiB after upload, {} KiB after download",
        up.as_secs_f64(),
        down.as_secs_f64(),
        after_upload,
        peak
    );
    assert!(nix.valid(&path));
    nix.ok("nix-store", &["--delete", &path]);
    assert!(
        peak < 200 * 1024,
        "server peak RSS {peak} KiB for a 2 GiB NAR"
    );
}

/// HTTPS with a self-signed certificate: Nix trusts it through `NIX_SSL_CERT_FILE`
/// (and refuses it without), and its curl negotiates HTTP/2 for uploads and lookups.
fn https_upload_and_substitution_over_http2(client: Client) {
    let Some(mut nix) = Nix::new(client) else {
        return;
    };
    let certs = temp_dir("nix-tls");
    let cert = tls::TestCert::generate(&certs, "nix-stored-test", tls::KeyFormat::Pkcs8Ec);
    let s = ServerBuilder::new().tls(&cert).start();
    let url = s.url();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let ca = nix.import_file(&cert.cert);
    let c = nix.build();
    let (sk, pk) = nix.keys();
    let to = format!("{url}?compression=zstd&secret-key={sk}");

    nix.fails("nix", &["copy", "--to", &to, &c.app]);
    assert_eq!(s.store.files(), vec!["nix-cache-info"]);
    nix.ca_file = Some(ca.clone());
    nix.copy_to(&to, &c.app);
    assert_eq!(
        s.store
            .files()
            .iter()
            .filter(|f| f.ends_with(".narinfo"))
            .count(),
        3
    );

    let before = nix.app_contents(&c);
    nix.delete(&c);
    let subst = realise_args(c.app.as_str(), url.as_str(), pk.as_str());
    nix.ca_file = None;
    nix.fails("nix-store", &subst);
    assert!(!nix.valid(&c.app));
    nix.ca_file = Some(ca);
    nix.ok("nix-store", &subst);
    assert_eq!(nix.app_contents(&c), before);

    // Every request Nix made came over HTTP/2: uploads, lookups and NAR downloads.
    let http2 = |log: &str, method: &str, suffix: &str| {
        log.lines().any(|l| {
            l.contains(&format!(" {method} /"))
                && l.contains(" HTTP/2 ")
                && l.split(' ').any(|w| w.ends_with(suffix))
        })
    };
    assert!(
        eventually(std::time::Duration::from_secs(5), || {
            let log = s.log();
            http2(&log, "PUT", ".narinfo")
                && http2(&log, "PUT", ".nar.zst")
                && http2(&log, "GET", ".narinfo")
                && http2(&log, "GET", ".nar.zst")
        }),
        "{}",
        s.log()
    );
    assert!(!s.log().contains(" HTTP/1.1 "), "{}", s.log());
    drop(s);
    let _ = std::fs::remove_dir_all(&certs);
}
