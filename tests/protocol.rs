//! The binary-cache protocol as a client sees it: every object kind, its headers,
//! misses, overwrites, ranges, methods, `Expect: 100-continue`, malformed keys and the
//! on-disk layout.

mod common;

use std::io::{BufReader, Write};

use common::*;

const STORE: &str = "/nix/store";
const CACHE_INFO: &str = "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n";
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
const MUTABLE: &str = "public, no-cache";
const DEBUG_ID: &str = "02623eda209c26a59b1a8638ff7752f6b945c26b";

/// The NAR extensions Nix writes, with the compression name of each.
const EXTENSIONS: &[&str] = &[
    ".nar",
    ".nar.xz",
    ".nar.zst",
    ".nar.bz2",
    ".nar.br",
    ".nar.lz4",
    ".nar.lzip",
];

fn drv(hash: &str) -> String {
    format!("{hash}-hello-1.0.drv")
}

/// One object to upload: key, body, expected Content-Type, expected Cache-Control.
struct Object {
    path: String,
    body: Vec<u8>,
    ctype: &'static str,
    cache_control: &'static str,
}

/// One object of every kind (a NAR per extension), in upload order (NARs before the
/// narinfo that points at one of them).
fn every_kind(h: &str) -> Vec<Object> {
    let mut out = Vec::new();
    let plain_nar = nar_of(b"the plain NAR\n");
    for ext in EXTENSIONS {
        // Every file is a real NAR, compressed as its extension says.
        let compression = COMPRESSIONS
            .iter()
            .find(|(_, e)| format!(".nar{e}") == *ext)
            .map_or("none", |(c, _)| c);
        let body = compress(&plain_nar, compression);
        out.push(Object {
            path: format!("/nar/{}{ext}", nix32_sha256(&body)),
            body,
            ctype: "application/x-nix-nar",
            cache_control: IMMUTABLE,
        });
    }
    out.push(Object {
        path: format!("/{h}.narinfo"),
        body: NarInfo::uncompressed(STORE, h, "hello-1.0", &plain_nar, &[])
            .render()
            .into_bytes(),
        ctype: "text/x-nix-narinfo",
        cache_control: MUTABLE,
    });
    out.push(Object {
        path: format!("/{h}.ls"),
        body: br#"{"version":1,"root":{"type":"regular","size":14,"narOffset":96}}"#.to_vec(),
        ctype: "application/json",
        cache_control: MUTABLE,
    });
    out.push(Object {
        path: format!("/log/{}", drv(h)),
        body: b"unpacking sources\nbuilding\ninstalling\n".to_vec(),
        ctype: "text/plain; charset=utf-8",
        cache_control: MUTABLE,
    });
    out.push(Object {
        path: format!("/debuginfo/{DEBUG_ID}.debug"),
        body: br#"{"archive":"../nar/x.nar","member":"lib/debug/.build-id/02/623e.debug"}"#
            .to_vec(),
        ctype: "application/json",
        cache_control: MUTABLE,
    });
    out.push(Object {
        path: format!("/realisations/sha256:{}!out.doi", "0123456789abcdef".repeat(4)),
        body: br#"{"id":"sha256:x!out","outPath":"y-hello","signatures":[],"dependentRealisations":{}}"#
            .to_vec(),
        ctype: "application/json",
        cache_control: MUTABLE,
    });
    out.push(Object {
        path: format!("/build-trace-v2/{}-x.drv/out.doi", h),
        body: br#"{"outPath":"y-hello","signatures":[]}"#.to_vec(),
        ctype: "application/json",
        cache_control: MUTABLE,
    });
    out
}

fn assert_object_headers(r: &Response, o: &Object, what: &str) {
    assert_eq!(r.status, 200, "{what} {}: {}", o.path, r.text());
    assert_eq!(r.header("content-type"), Some(o.ctype), "{what} {}", o.path);
    assert_eq!(
        r.header("content-length"),
        Some(o.body.len().to_string().as_str()),
        "{what} {}",
        o.path
    );
    assert_eq!(
        r.header("accept-ranges"),
        Some("bytes"),
        "{what} {}",
        o.path
    );
    assert_eq!(
        r.header("cache-control"),
        Some(o.cache_control),
        "{what} {}",
        o.path
    );
    assert!(r.header("etag").is_some(), "{what} {}: no ETag", o.path);
    assert!(
        r.header("x-request-id").is_some_and(|v| !v.is_empty()),
        "{what} {}: no X-Request-Id",
        o.path
    );
}

fn assert_miss(r: &Response, path: &str, what: &str) {
    assert_eq!(r.status, 404, "{what} {path}: {}", r.text());
    assert_eq!(r.header("cache-control"), Some("no-store"), "{what} {path}");
    assert!(r.header("x-request-id").is_some(), "{what} {path}");
}

#[test]
fn every_object_kind_round_trips_with_its_headers() {
    let s = ServerBuilder::new().start();
    let h = store_hash("round-trip");
    for o in every_kind(&h) {
        assert_miss(&head(&s, &o.path), &o.path, "HEAD before PUT");
        assert_miss(&get(&s, &o.path), &o.path, "GET before PUT");

        let r = put(&s, &o.path, &o.body);
        assert_eq!(r.status, 201, "PUT {}: {}\n{}", o.path, r.text(), s.log());
        assert!(r.header("x-request-id").is_some(), "PUT {}", o.path);

        let g1 = get(&s, &o.path);
        assert_object_headers(&g1, &o, "GET");
        assert_eq!(g1.body, o.body, "GET {} body", o.path);

        let g2 = get(&s, &o.path);
        assert_object_headers(&g2, &o, "second GET");
        assert_eq!(g2.body, o.body);
        assert_eq!(
            g1.header("etag"),
            g2.header("etag"),
            "ETag of {} changed",
            o.path
        );

        let hd = head(&s, &o.path);
        assert_object_headers(&hd, &o, "HEAD");
        assert!(hd.body.is_empty());
        assert_eq!(
            hd.header("etag"),
            g1.header("etag"),
            "HEAD ETag of {}",
            o.path
        );

        if o.path.starts_with("/nar/") {
            let fh = &o.path[5..57];
            assert!(
                g1.header("etag").unwrap().contains(fh),
                "a NAR's ETag is its file hash: {:?}",
                g1.header("etag")
            );
        }
    }
}

#[test]
fn nix_cache_info_is_generated_and_put_is_ignored() {
    let s = ServerBuilder::new().start();
    let r = get(&s, "/nix-cache-info");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/x-nix-cache-info"));
    assert_eq!(r.text(), CACHE_INFO);
    assert_eq!(
        r.header("content-length"),
        Some(CACHE_INFO.len().to_string().as_str())
    );
    assert_eq!(r.header("cache-control"), Some(MUTABLE));
    let hd = head(&s, "/nix-cache-info");
    assert_eq!(hd.status, 200);
    assert!(hd.body.is_empty());
    assert_eq!(hd.header("content-length"), r.header("content-length"));

    // Written at start for file:// (and Nix's s3://) use.
    let on_disk = String::from_utf8(s.store.read("nix-cache-info").unwrap()).unwrap();
    assert!(on_disk.contains("StoreDir: /nix/store\n"), "{on_disk:?}");

    // PUT is accepted and ignored: nothing written, the served file does not change.
    let r = put(
        &s,
        "/nix-cache-info",
        b"StoreDir: /elsewhere\nPriority: 1\n",
    );
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(get(&s, "/nix-cache-info").text(), CACHE_INFO);
    assert_eq!(
        String::from_utf8(s.store.read("nix-cache-info").unwrap()).unwrap(),
        on_disk
    );
}

#[test]
fn nix_cache_info_follows_the_configuration() {
    let s = ServerBuilder::new()
        .env("NIX_STORED_PRIORITY", "41")
        .env("NIX_STORED_STORE_DIR", "/gnu/store")
        .start();
    assert_eq!(
        get(&s, "/nix-cache-info").text(),
        "StoreDir: /gnu/store\nWantMassQuery: 1\nPriority: 41\n"
    );
}

#[test]
fn an_existing_nix_cache_info_file_is_kept() {
    let store = Store::fresh("keep-info");
    let mine = "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 10\n";
    store.write("nix-cache-info", mine.as_bytes());
    let s = ServerBuilder::new().store(&store).start();
    assert_eq!(get(&s, "/nix-cache-info").status, 200);
    assert_eq!(
        store.read("nix-cache-info").unwrap(),
        mine.as_bytes(),
        "nix-cache-info is written only if missing"
    );
    drop(s);
    store.remove();
}

#[test]
fn misses_are_404_no_store_for_every_kind() {
    let s = ServerBuilder::new().start();
    let h = store_hash("miss");
    for o in every_kind(&h) {
        for method in ["GET", "HEAD"] {
            let r = send(s.addr, method, &o.path, &[], b"");
            assert_miss(&r, &o.path, method);
            if method == "GET" {
                assert!(
                    r.header("content-type")
                        .is_some_and(|v| v.starts_with("text/plain")),
                    "{:?}",
                    r.header("content-type")
                );
                let text = r.text();
                assert!(
                    !text.trim_end().is_empty() && !text.trim_end().contains('\n'),
                    "one-line reason expected: {text:?}"
                );
            } else {
                assert!(r.body.is_empty());
            }
        }
    }
    // Info lines are written in batches (at most 50 ms apart).
    assert!(
        eventually(std::time::Duration::from_secs(5), || s
            .log()
            .contains("404")),
        "requests are logged:\n{}",
        s.log()
    );
}

#[test]
fn mutable_objects_are_overwritten() {
    let s = ServerBuilder::new().start();
    let h = store_hash("overwrite");
    let nar_a = nar_of(b"first version");
    let nar_b = nar_of(b"second, longer version of the file");
    for nar in [&nar_a, &nar_b] {
        assert_eq!(
            put(&s, &format!("/nar/{}.nar", nix32_sha256(nar)), nar).status,
            201
        );
    }
    // A narinfo may only gain signatures and move to another NAR file of the same
    // contents (tests/integrity.rs has the rest).
    let unsigned = NarInfo::uncompressed(STORE, &h, "p", &nar_a, &[]);
    let info_a = unsigned.render();
    let mut info_b = unsigned.clone();
    info_b.sign(STORE, "builder-1", &signing_key(1));
    let info_b = info_b.render();

    let cases: Vec<(String, Vec<u8>, Vec<u8>)> = vec![
        (
            format!("/{h}.narinfo"),
            info_a.into_bytes(),
            info_b.into_bytes(),
        ),
        (
            format!("/{h}.ls"),
            br#"{"version":1,"root":{"type":"regular","size":1}}"#.to_vec(),
            br#"{"version":1,"root":{"type":"regular","size":22,"narOffset":96}}"#.to_vec(),
        ),
        (
            format!("/log/{}", drv(&h)),
            b"attempt 1\n".to_vec(),
            b"attempt 2: a longer log\n".to_vec(),
        ),
        (
            format!("/debuginfo/{DEBUG_ID}.debug"),
            br#"{"archive":"a"}"#.to_vec(),
            br#"{"archive":"bb","member":"c"}"#.to_vec(),
        ),
        (
            format!("/realisations/sha256:{}!out.doi", "ab".repeat(32)),
            br#"{"outPath":"a"}"#.to_vec(),
            br#"{"outPath":"bb","signatures":[]}"#.to_vec(),
        ),
        (
            format!("/build-trace-v2/{}/out.doi", drv(&h)),
            br#"{"outPath":"a"}"#.to_vec(),
            br#"{"outPath":"bb","signatures":[]}"#.to_vec(),
        ),
    ];
    for (path, first, second) in cases {
        let r = put(&s, &path, &first);
        assert_eq!(r.status, 201, "{path}: {}", r.text());
        let g1 = get(&s, &path);
        assert_eq!(g1.body, first, "{path}");

        let r = put(&s, &path, &second);
        assert_eq!(r.status, 204, "re-PUT {path}: {}", r.text());
        let g2 = get(&s, &path);
        assert_eq!(g2.status, 200);
        assert_eq!(g2.body, second, "{path} serves the new bytes");
        assert_eq!(
            g2.header("content-length"),
            Some(second.len().to_string().as_str())
        );
        assert_ne!(
            g1.header("etag"),
            g2.header("etag"),
            "{path}: the ETag must change with the content"
        );
        let on_disk = s.store.read(&path).unwrap();
        assert_eq!(on_disk, second, "{path} on disk");

        // Same bytes again: still a successful overwrite.
        let r = put(&s, &path, &second);
        assert_eq!(r.status, 204, "idempotent re-PUT {path}: {}", r.text());
        assert_eq!(get(&s, &path).body, second);
    }

    // A NAR re-uploaded with the same (necessarily identical) bytes is fine too.
    let key = format!("/nar/{}.nar", nix32_sha256(&nar_a));
    let r = put(&s, &key, &nar_a);
    assert!(matches!(r.status, 201 | 204), "{}: {}", r.status, r.text());
    assert_eq!(get(&s, &key).body, nar_a);
}

#[test]
fn ranges() {
    let s = ServerBuilder::new().start();
    let contents: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
    let nar = nar_of(&contents);
    let len = nar.len();
    let key = format!("/nar/{}.nar", nix32_sha256(&nar));
    assert_eq!(put(&s, &key, &nar).status, 201);
    let full = get(&s, &key);
    let etag = full.header("etag").unwrap().to_owned();

    let range = |spec: &str| send(s.addr, "GET", &key, &[("Range", spec)], b"");
    let expect_206 = |spec: &str, a: usize, b: usize| {
        let r = range(spec);
        assert_eq!(r.status, 206, "{spec}: {}", r.text());
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes {a}-{b}/{len}").as_str()),
            "{spec}"
        );
        assert_eq!(r.body, &nar[a..=b], "{spec}");
        assert_eq!(
            r.header("content-length"),
            Some((b - a + 1).to_string().as_str()),
            "{spec}"
        );
        assert_eq!(r.header("etag"), Some(etag.as_str()), "{spec}");
        assert_eq!(r.header("content-type"), Some("application/x-nix-nar"));
    };
    expect_206("bytes=100-", 100, len - 1);
    expect_206("bytes=0-", 0, len - 1);
    expect_206("bytes=10-19", 10, 19);
    expect_206("bytes=0-0", 0, 0);
    expect_206(&format!("bytes={}-{}", len - 1, len - 1), len - 1, len - 1);
    expect_206("bytes=-8", len - 8, len - 1);
    // An end past the last byte is clamped (RFC 9110 §14.1.2).
    expect_206(&format!("bytes=5-{}", len + 1000), 5, len - 1);

    for spec in [format!("bytes={len}-"), format!("bytes={}-", len + 10)] {
        let r = range(&spec);
        assert_eq!(r.status, 416, "{spec}: {}", r.text());
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes */{len}").as_str()),
            "{spec}"
        );
    }

    // Ranges work on mutable objects too (resumable log downloads).
    let h = store_hash("range-log");
    let log_path = format!("/log/{}", drv(&h));
    let log = b"0123456789abcdefghij".to_vec();
    assert_eq!(put(&s, &log_path, &log).status, 201);
    let r = send(s.addr, "GET", &log_path, &[("Range", "bytes=5-9")], b"");
    assert_eq!(r.status, 206);
    assert_eq!(r.body, b"56789");
    assert_eq!(r.header("content-range"), Some("bytes 5-9/20"));
}

#[test]
fn other_methods_get_405_with_allow() {
    let s = ServerBuilder::new().start();
    let nar = nar_of(b"x");
    let key = format!("/nar/{}.nar", nix32_sha256(&nar));
    assert_eq!(put(&s, &key, &nar).status, 201);
    let h = store_hash("absent");
    for path in [key.as_str(), "/nix-cache-info", &format!("/{h}.narinfo")] {
        for method in ["POST", "DELETE", "PATCH", "OPTIONS"] {
            let body: &[u8] = if method == "POST" || method == "PATCH" {
                b"data"
            } else {
                b""
            };
            let r = send(s.addr, method, path, &[], body);
            assert_eq!(r.status, 405, "{method} {path}: {}", r.text());
            let allow = r.header("allow").unwrap_or_default().replace(' ', "");
            assert_eq!(allow, "GET,HEAD,PUT", "{method} {path}");
        }
    }
    // DELETE did not delete.
    assert_eq!(get(&s, &key).body, nar);
}

#[test]
fn expect_100_continue_before_the_body() {
    let s = ServerBuilder::new().start();
    let nar = nar_of(b"sent after 100 Continue");
    let key = format!("/nar/{}.nar", nix32_sha256(&nar));
    let mut stream = connect(s.addr);
    let head_bytes = request_head(
        s.addr,
        "PUT",
        &key,
        &[("Expect", "100-continue")],
        Some(nar.len() as u64),
    );
    stream.write_all(&head_bytes).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let interim = read_head(&mut reader).expect("an answer before the body");
    assert_eq!(
        interim.status, 100,
        "expected `HTTP/1.1 100 Continue` before the body, got {} {:?}",
        interim.status, interim.headers
    );
    stream.write_all(&nar).unwrap();
    let r = read_response(&mut reader, false).unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(get(&s, &key).body, nar);
}

/// Keys that are not cache objects, for GET/HEAD (404, or 400 for what the HTTP
/// parser refuses) and PUT (400).
fn malformed_keys() -> Vec<Vec<u8>> {
    let nar = nar_of(b"malformed");
    let fh = nix32_sha256(&nar);
    let h = store_hash("malformed");
    let mut keys: Vec<String> = vec![
        "/../x".into(),
        "/../../x".into(),
        "/nar/../x".into(),
        "/nar/../../x".into(),
        "/nar/../../etc/passwd".into(),
        "/../etc/passwd".into(),
        "/%2e%2e/x".into(),
        "/%2E%2E/x".into(),
        "/nar/%2e%2e/x".into(),
        "/nar/%2e%2e/%2e%2e/x".into(),
        format!("/nar%2F{fh}.nar"),
        format!("/nar%2f{fh}.nar"),
        format!("/nar/{fh}%2Enar"),
        format!("/%2e%2e%2F{h}.narinfo"),
        // Escaped letters, digits, `-` and `_`: no client needs them, and decoding
        // them would let `/%6E%61%72/…` past a proxy rule written for `/nar/`.
        format!("/%6E%61%72/{fh}.nar"),
        format!("/%6e%61%72/{fh}.nar"),
        format!("/nar/{}%{:02X}.nar", &fh[..51], fh.as_bytes()[51]),
        format!("/{}%{:02x}.narinfo", &h[..31], h.as_bytes()[31]),
        format!("/log/{h}-a%2Db.drv"),
        "/log/../x".into(),
        "/log/..".into(),
        "/log/../../x".into(),
        format!("/log/../{h}.narinfo"),
        format!("/log/..%2F{h}.narinfo"),
        format!("/{h}.narinfo/../x"),
        "/..\\x".into(),
        format!("/log\\..\\{h}.narinfo"),
        "/.tmp/x".into(),
        "/.tmp".into(),
        "/x".into(),
        // (`/` is the page for people: tests/page.rs.)
        "/nar/".into(),
        "/nar".into(),
        "/log/".into(),
        "/nix-cache-info/x".into(),
        // Empty segments.
        format!("//{h}.narinfo"),
        format!("/nar//{fh}.nar"),
        format!("/log//{h}-x.drv"),
        // Wrong lengths.
        format!("/{}.narinfo", &h[..31]),
        format!("/{h}a.narinfo"),
        format!("/{}.ls", &h[..31]),
        format!("/nar/{}.nar", &fh[..51]),
        format!("/nar/{fh}0.nar"),
        format!("/debuginfo/{}.debug", &DEBUG_ID[..39]),
        format!("/debuginfo/{DEBUG_ID}0.debug"),
        format!("/realisations/sha256:{}!out.doi", "a".repeat(63)),
        // Uppercase.
        format!("/{}.narinfo", h.to_uppercase()),
        format!("/nar/{}.nar", fh.to_uppercase()),
        format!("/debuginfo/{}.debug", DEBUG_ID.to_uppercase()),
        format!("/{h}.NARINFO"),
        format!("/nar/{fh}.NAR"),
        // A SHA-256 in nix32 starts with 0 or 1 (52 × 5 bits = 260 > 256).
        format!("/nar/z{}.nar", &fh[1..]),
        // Unknown extensions and shapes.
        format!("/nar/{fh}.nar.gz"),
        format!("/nar/{fh}.nar.xz.zst"),
        format!("/nar/{fh}.tar"),
        format!("/nar/{fh}"),
        format!("/nar/{fh}.nar/"),
        format!("/{h}.nar"),
        format!("/{h}.txt"),
        format!("/{h}"),
        format!("/{h}.narinfo.tmp"),
        format!("/log/{h}"),
        format!("/log/{h}-x"),
        format!("/log/{}", &h[..20]),
        format!("/debuginfo/{DEBUG_ID}"),
        format!("/realisations/{}!out.doi", "a".repeat(64)),
        format!("/build-trace-v2/{h}-x.drv/../out.doi"),
        format!("/build-trace-v2/{h}-x.drv"),
    ];
    // e, o, u, t are not nix32.
    for c in ['e', 'o', 'u', 't'] {
        keys.push(format!("/{c}{}.narinfo", &h[1..]));
        keys.push(format!("/{c}{}.ls", &h[1..]));
        keys.push(format!("/nar/{}{c}.nar", &fh[..51]));
        keys.push(format!("/log/{c}{}-x.drv", &h[1..]));
    }
    let mut raw: Vec<Vec<u8>> = keys.into_iter().map(String::into_bytes).collect();
    // NUL bytes, raw and encoded.
    raw.push(format!("/{h}.narinfo\0").into_bytes());
    raw.push(format!("/log/{h}-x\0.drv").into_bytes());
    raw.push(format!("/\0{h}.narinfo").into_bytes());
    raw.push(format!("/{h}.narinfo%00").into_bytes());
    raw.push(format!("/log/{h}-x%00.drv").into_bytes());
    raw
}

fn raw_answer(
    addr: std::net::SocketAddr,
    method: &str,
    target: &[u8],
    body: &[u8],
) -> Option<Response> {
    let mut req = Vec::new();
    req.extend_from_slice(method.as_bytes());
    req.push(b' ');
    req.extend_from_slice(target);
    req.extend_from_slice(format!(" HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n").as_bytes());
    if method == "PUT" {
        req.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(body);
    // A connection closed without an answer is acceptable only for bytes the HTTP
    // parser cannot read at all; the caller decides.
    try_raw_request(addr, &req).ok()
}

#[test]
fn malformed_keys_and_traversal_are_refused_and_write_nothing() {
    let base = temp_dir("traversal");
    let store = base.join("store");
    // A decoy the traversal attempts would hit.
    let outside = base.join("x");
    let s = if s3_backend() {
        ServerBuilder::new().start()
    } else {
        ServerBuilder::new().dir(&store).start()
    };
    let before = entries_below(&base);
    let stored_before = s.store.files();

    // A valid NAR body, so that only the key can be the reason for a refusal.
    let body = nar_of(b"malformed");
    for target in malformed_keys() {
        let shown = String::from_utf8_lossy(&target).into_owned();
        let has_nul = target.contains(&0);
        for method in ["GET", "HEAD"] {
            match raw_answer(s.addr, method, &target, b"") {
                Some(r) => {
                    assert!(
                        matches!(r.status, 404 | 400),
                        "{method} {shown:?}: expected 404 (or 400), got {}: {}",
                        r.status,
                        r.text()
                    );
                    if method == "GET" {
                        assert!(!r.text().contains("root:"), "{shown:?} leaked a file");
                    }
                }
                None => assert!(
                    has_nul,
                    "{method} {shown:?}: connection closed without answer"
                ),
            }
        }
        match raw_answer(s.addr, "PUT", &target, &body) {
            Some(r) => assert_eq!(
                r.status,
                400,
                "PUT {shown:?}: expected 400, got {}: {}",
                r.status,
                r.text()
            ),
            None => assert!(has_nul, "PUT {shown:?}: connection closed without answer"),
        }
    }

    assert!(!outside.exists(), "a PUT wrote {}", outside.display());
    assert_eq!(
        entries_below(&base),
        before,
        "malformed PUTs must not create anything, inside or outside the store"
    );
    assert_eq!(
        s.store.files(),
        stored_before,
        "malformed PUTs stored nothing"
    );
    // The server still works.
    assert_eq!(get(&s, "/nix-cache-info").status, 200);
    drop(s);
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn query_strings_do_not_change_the_key() {
    let s = ServerBuilder::new().start();
    let nar = nar_of(b"query");
    let key = format!("/nar/{}.nar", nix32_sha256(&nar));
    assert_eq!(put(&s, &key, &nar).status, 201);
    // Nix passes a narinfo URL's query string through to the NAR request.
    let r = get(&s, &format!("{key}?download=1"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, nar);
}

#[test]
fn directory_layout_is_a_file_cache() {
    let store = Store::fresh("layout");
    if let Some(dir) = store.dir() {
        // Leftovers of an interrupted upload are removed at start.
        std::fs::create_dir_all(dir.join(".tmp")).unwrap();
        std::fs::write(dir.join(".tmp").join("upload-leftover"), b"partial").unwrap();
    }
    let s = ServerBuilder::new().store(&store).start();
    assert!(
        store.exists("nix-cache-info"),
        "nix-cache-info written at start"
    );
    assert!(
        store.pending().is_empty(),
        ".tmp emptied at start: {:?}",
        store.pending()
    );

    let h = store_hash("layout");
    let objects = every_kind(&h);
    for o in &objects {
        let r = put(&s, &o.path, &o.body);
        assert_eq!(r.status, 201, "{}: {}", o.path, r.text());
    }
    let mut expected: Vec<String> = objects
        .iter()
        .map(|o| o.path.trim_start_matches('/').to_owned())
        .collect();
    expected.push("nix-cache-info".into());
    expected.sort();
    assert_eq!(store.files(), expected, "exactly the documented files");
    for o in &objects {
        assert_eq!(
            store.read(&o.path).unwrap(),
            o.body,
            "{} in the store",
            o.path
        );
    }
    // Explicit spot checks of the documented paths (also what `nix copy --to
    // file://` and `s3://` write).
    for key in [
        format!("{h}.narinfo"),
        format!("{h}.ls"),
        format!("log/{}", drv(&h)),
        format!("debuginfo/{DEBUG_ID}.debug"),
        format!(
            "realisations/sha256:{}!out.doi",
            "0123456789abcdef".repeat(4)
        ),
        format!("build-trace-v2/{h}-x.drv/out.doi"),
    ] {
        assert!(store.exists(&key), "{key} is stored");
    }
    // Nothing but the documented top-level entries.
    let mut top: Vec<String> = store
        .files()
        .iter()
        .map(|f| f.split('/').next().unwrap_or("").to_owned())
        .collect();
    top.dedup();
    let allowed = [
        ".tmp",
        "build-trace-v2",
        "debuginfo",
        "log",
        "nar",
        "nix-cache-info",
        "realisations",
        &format!("{h}.ls"),
        &format!("{h}.narinfo"),
    ];
    for name in &top {
        assert!(allowed.contains(&name.as_str()), "unexpected entry {name}");
    }
    assert!(s.pending().is_empty(), ".tmp empty after uploads");
    drop(s);

    // A store written this way is served as it is by a new process.
    let s = ServerBuilder::new().store(&store).start();
    for o in &objects {
        assert_eq!(get(&s, &o.path).body, o.body, "{} after restart", o.path);
    }
    drop(s);
    store.remove();
}

#[test]
fn errors_are_one_line_text() {
    let s = ServerBuilder::new().start();
    let nar = nar_of(b"error body");
    let wrong = nix32_sha256(b"something else");
    let r = put(&s, &format!("/nar/{wrong}.nar"), &nar);
    assert_eq!(r.status, 400);
    assert!(
        r.header("content-type")
            .is_some_and(|v| v.starts_with("text/plain")),
        "{:?}",
        r.header("content-type")
    );
    let text = r.text();
    assert!(
        !text.trim().is_empty() && !text.trim_end().contains('\n'),
        "{text:?}"
    );
    assert!(r.header("x-request-id").is_some());
    assert!(r.header("content-length").is_some());
}

/// A TCP relay to `target` that can be cut: the network between the server and its
/// bucket, as a tripped switch or a firewall change would cut it.
#[cfg(feature = "s3")]
struct Relay {
    addr: std::net::SocketAddr,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

#[cfg(feature = "s3")]
impl Relay {
    fn start(target: std::net::SocketAddr) -> Relay {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, k) = (cut.clone(), conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if c.load(Ordering::SeqCst) {
                    // Cut: refuse by closing at once, as a dead peer would reset.
                    drop(client);
                    continue;
                }
                let Ok(upstream) = std::net::TcpStream::connect(target) else {
                    continue;
                };
                let mut held = k.lock().unwrap();
                held.push(client.try_clone().unwrap());
                held.push(upstream.try_clone().unwrap());
                drop(held);
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), upstream.try_clone().unwrap()),
                    (upstream, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Relay { addr, cut, conns }
    }

    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

#[cfg(feature = "s3")]
#[test]
fn an_unreachable_bucket_is_503_with_retry_after_and_no_details() {
    if s3_only("the network to a bucket") {
        return;
    }
    let endpoint = garage().endpoint.clone();
    let target: std::net::SocketAddr = endpoint
        .trim_start_matches("http://")
        .parse()
        .expect("Garage listens on an address");
    let relay = Relay::start(target);
    let s = ServerBuilder::new()
        .env("NIX_STORED_S3_ENDPOINT", &format!("http://{}", relay.addr))
        .start();
    let h = store_hash("unreachable");
    assert_eq!(get(&s, &format!("/{h}.narinfo")).status, 404);
    relay.cut();
    // object_store retries for NIX_STORED's 15 s before it gives up.
    let r = get(&s, &format!("/{h}.narinfo"));
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
    let id = r.header("x-request-id").unwrap().to_owned();
    assert!(
        r.text().starts_with("the cache storage is unavailable"),
        "{}",
        r.text()
    );
    assert!(r.text().contains(&id), "{}", r.text());
    for secret in [relay.addr.to_string(), garage().bucket.clone()] {
        assert!(
            !r.text().contains(&secret),
            "the body names {secret}: {}",
            r.text()
        );
    }
}
