//! Black-box tests of the HTTP interface: the real binary on an ephemeral port.

mod support;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::*;

const H1: &str = "nx73vzmbhpb3836sq4af0c7y7rlw5z6y";
const H2: &str = "5xf4hlminf1vnpb5awkarlb8wxix6mca";
const DRV: &str = "nx73vzmbhpb3836sq4af0c7y7rlw5z6y-hello.drv";

/// Uploads a NAR and its narinfo, returning the NAR key.
fn upload_path(s: &Server, hash: &str, contents: &[u8], refs: &[&str]) -> String {
    let nar = nar_of(contents);
    let key = format!("/nar/{}.nar", nix32_sha256(&nar));
    assert_eq!(put(s, &key, &nar).status, 201, "{}", s.log());
    let info = narinfo_for(hash, "p", &nar, refs);
    let r = put(s, &format!("/{hash}.narinfo"), info.as_bytes());
    assert!(matches!(r.status, 201 | 204), "{} {}", r.status, r.text());
    key
}

#[test]
fn every_object_kind_round_trips_with_its_headers() {
    let s = ServerBuilder::new().start();
    let nar = nar_of(b"hello");
    let fh = nix32_sha256(&nar);
    let objects: Vec<(String, Vec<u8>, &str)> = vec![
        (
            format!("/nar/{fh}.nar"),
            nar.clone(),
            "application/x-nix-nar",
        ),
        (
            format!("/{H1}.narinfo"),
            narinfo_for(H1, "p", &nar, &[]).into_bytes(),
            "text/x-nix-narinfo",
        ),
        (
            format!("/{H1}.ls"),
            br#"{"version":1,"root":{"type":"regular","size":5}}"#.to_vec(),
            "application/json",
        ),
        (
            format!("/log/{DRV}"),
            b"building...\ndone\n".to_vec(),
            "text/plain; charset=utf-8",
        ),
        (
            "/debuginfo/02623eda209c26a59b1a8638ff7752f6b945c26b.debug".into(),
            br#"{"archive":"../nar/x.nar","member":"lib/x"}"#.to_vec(),
            "application/json",
        ),
        (
            format!("/realisations/sha256:{}!out.doi", "ab".repeat(32)),
            br#"{"id":"x","outPath":"y"}"#.to_vec(),
            "application/json",
        ),
        (
            format!("/build-trace-v2/{DRV}/out.doi"),
            br#"{"outPath":"y","signatures":[]}"#.to_vec(),
            "application/json",
        ),
    ];
    for (path, body, ctype) in &objects {
        assert_eq!(head(&s, path).status, 404, "{path} before upload");
        let r = put(&s, path, body);
        assert_eq!(r.status, 201, "{path}: {}", r.text());
        let g = get(&s, path);
        assert_eq!(g.status, 200, "{path}");
        assert_eq!(&g.body, body, "{path}");
        assert_eq!(g.header("content-type"), Some(*ctype), "{path}");
        assert_eq!(
            g.header("content-length"),
            Some(body.len().to_string().as_str())
        );
        assert_eq!(g.header("accept-ranges"), Some("bytes"));
        let etag = g.header("etag").expect("etag").to_owned();
        assert_eq!(
            get(&s, path).header("etag"),
            Some(etag.as_str()),
            "stable etag"
        );
        let h = head(&s, path);
        assert_eq!(h.status, 200);
        assert_eq!(
            h.header("content-length"),
            Some(body.len().to_string().as_str())
        );
        let cc = g.header("cache-control").unwrap();
        if path.starts_with("/nar/") {
            assert_eq!(cc, "public, max-age=31536000, immutable");
        } else {
            assert_eq!(cc, "public, max-age=60");
        }
    }
    // The directory is a file:// cache with exactly the documented layout.
    let mut expected: Vec<String> = objects.iter().map(|(p, _, _)| p[1..].to_owned()).collect();
    expected.push("nix-cache-info".into());
    expected.sort();
    assert_eq!(files_below(&s.dir), expected);
}

#[test]
fn nix_cache_info_is_generated_and_its_put_is_ignored() {
    let s = ServerBuilder::new()
        .env("NIX_STORED_PRIORITY", "41")
        .start();
    let r = get(&s, "/nix-cache-info");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.text(),
        "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 41\n"
    );
    assert_eq!(r.header("content-type"), Some("text/x-nix-cache-info"));
    assert!(matches!(
        put(&s, "/nix-cache-info", b"StoreDir: /gnu/store\n").status,
        200 | 201 | 204
    ));
    assert_eq!(get(&s, "/nix-cache-info").text(), r.text());
    assert_eq!(head(&s, "/nix-cache-info").status, 200);
}

#[test]
fn misses_are_404_and_not_cacheable() {
    let s = ServerBuilder::new().start();
    for path in [
        format!("/{H1}.narinfo"),
        format!("/nar/{}.nar.xz", nix32_sha256(b"x")),
        format!("/log/{DRV}"),
    ] {
        for r in [get(&s, &path), head(&s, &path)] {
            assert_eq!(r.status, 404, "{path}");
            assert_eq!(r.header("cache-control"), Some("no-store"));
        }
    }
}

#[test]
fn overwrites_are_idempotent_for_mutable_objects() {
    let s = ServerBuilder::new().start();
    let path = format!("/log/{DRV}");
    assert_eq!(put(&s, &path, b"first").status, 201);
    assert_eq!(put(&s, &path, b"second, longer").status, 204);
    assert_eq!(get(&s, &path).body, b"second, longer");
    upload_path(&s, H1, b"one", &[]);
    let nar = nar_of(b"two");
    put(&s, &format!("/nar/{}.nar", nix32_sha256(&nar)), &nar);
    let info = narinfo_for(H1, "p", &nar, &[]);
    assert_eq!(
        put(&s, &format!("/{H1}.narinfo"), info.as_bytes()).status,
        204
    );
    assert_eq!(get(&s, &format!("/{H1}.narinfo")).text(), info);
}

#[test]
fn ranges_resume_downloads() {
    let s = ServerBuilder::new().start();
    let contents: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let nar = nar_of(&contents);
    let path = format!("/nar/{}.nar", nix32_sha256(&nar));
    put(&s, &path, &nar);
    let len = nar.len();
    for (range, from, to) in [
        ("bytes=100-", 100, len - 1),
        ("bytes=10-19", 10, 19),
        ("bytes=-7", len - 7, len - 1),
        ("bytes=70000-", 70000, len - 1),
    ] {
        let r = send(s.addr, "GET", &path, &[("Range", range)], b"");
        assert_eq!(r.status, 206, "{range}");
        assert_eq!(r.body, &nar[from..=to], "{range}");
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes {from}-{to}/{len}").as_str())
        );
    }
    let r = send(
        s.addr,
        "GET",
        &path,
        &[("Range", &format!("bytes={len}-"))],
        b"",
    );
    assert_eq!(r.status, 416);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes */{len}").as_str())
    );
}

#[test]
fn other_methods_get_405() {
    let s = ServerBuilder::new().start();
    for m in ["POST", "DELETE", "PATCH", "OPTIONS"] {
        let r = send(s.addr, m, "/nix-cache-info", &[], b"");
        assert_eq!(r.status, 405, "{m}");
        assert_eq!(r.header("allow"), Some("GET, HEAD, PUT"));
    }
}

#[test]
fn bad_keys_and_traversal_touch_nothing() {
    let outside = temp_dir("outside");
    let s = ServerBuilder::new().start();
    let before = files_below(&s.dir);
    let fh = nix32_sha256(b"x");
    let bad = [
        "/../etc/passwd".to_owned(),
        format!("/nar/../../{}", outside.display()),
        "/%2e%2e/%2e%2e/etc/passwd".into(),
        format!("/nar%2F{fh}.nar"),
        format!("/nar/{fh}.nar.gz"),
        format!("/{}.narinfo", &H1[..31]),
        format!("/{}e.narinfo", &H1[..31]),
        format!("/{}.narinfo", H1.to_uppercase()),
        format!("/log/../{H1}.narinfo"),
        format!("/log/{H1}-x"),
        "/.tmp/x".into(),
        "/etc/passwd".into(),
        format!("/{H1}.narinfo%00"),
    ];
    for path in &bad {
        let g = get(&s, path);
        assert!(matches!(g.status, 400 | 404), "GET {path}: {}", g.status);
        let p = put(&s, path, b"junk");
        assert_eq!(p.status, 400, "PUT {path}: {}", p.text());
    }
    assert_eq!(files_below(&s.dir), before);
    assert!(files_below(&outside).is_empty());
    std::fs::remove_dir_all(&outside).unwrap();
    assert!(get(&s, "/../etc/passwd").text().lines().count() <= 1);
}

/// Sends the headers of a PUT with `Expect: 100-continue`, and no body yet.
fn open_put_expecting_continue(
    s: &Server,
    path: &str,
    len: usize,
) -> (TcpStream, BufReader<TcpStream>) {
    let mut stream = TcpStream::connect(s.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\nExpect: 100-continue\r\n\r\n"
    )
    .unwrap();
    let reader = BufReader::new(stream.try_clone().unwrap());
    (stream, reader)
}

#[test]
fn expect_continue_is_answered_and_rejections_come_before_the_body() {
    let s = ServerBuilder::new()
        .env("NIX_STORED_MAX_UPLOAD_SIZE", "1M")
        .start();
    let nar = nar_of(b"expect");
    let path = format!("/nar/{}.nar", nix32_sha256(&nar));
    let (mut stream, mut reader) = open_put_expecting_continue(&s, &path, nar.len());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 100"), "{line}");
    let mut blank = String::new();
    std::io::BufRead::read_line(&mut reader, &mut blank).unwrap();
    assert_eq!(blank, "\r\n");
    stream.write_all(&nar).unwrap();
    assert_eq!(read_response(&mut reader, false).status, 201);

    // Too large: refused with the final status, no 100 Continue, body never sent.
    let (_stream, mut reader) = open_put_expecting_continue(&s, &path, 2 << 20);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 413"), "{line}");
}

#[test]
fn nar_must_hash_to_its_name() {
    let s = ServerBuilder::new().start();
    let nar = nar_of(b"real");
    let r = put(&s, &format!("/nar/{}.nar", nix32_sha256(b"other")), &nar);
    assert_eq!(r.status, 400);
    assert!(r.text().contains("hash"), "{}", r.text());
    assert_eq!(files_below(&s.dir), vec!["nix-cache-info"]);
}

#[test]
fn narinfo_rules() {
    let s = ServerBuilder::new().start();
    let nar = nar_of(b"payload");
    let fh = nix32_sha256(&nar);
    put(&s, &format!("/nar/{fh}.nar"), &nar);
    let good = narinfo_for(H1, "p", &nar, &[]);
    let cases: Vec<(&str, String)> = vec![
        ("no Compression", good.replace("Compression: none\n", "")),
        ("CRLF", good.replace('\n', "\r\n")),
        ("no trailing newline", good.trim_end().to_owned()),
        ("key mismatch", good.replace(H1, H2)),
        (
            "other store dir",
            good.replace("/nix/store/", "/gnu/store/"),
        ),
        ("absent NAR", good.replace(&fh, &nix32_sha256(b"absent"))),
        (
            "FileHash mismatch",
            good.replace(
                &format!("FileHash: sha256:{fh}"),
                &format!("FileHash: sha256:{}", nix32_sha256(b"z")),
            ),
        ),
        (
            "FileSize mismatch",
            good.replace(&format!("FileSize: {}", nar.len()), "FileSize: 1"),
        ),
        (
            "no FileHash",
            good.replace(&format!("FileHash: sha256:{fh}\n"), ""),
        ),
        (
            "extension vs Compression",
            good.replace("Compression: none", "Compression: xz"),
        ),
        (
            "missing reference",
            good.replace("References: ", &format!("References: {H2}-dep")),
        ),
        ("garbage", "this is not a narinfo\n".to_owned()),
        ("empty", String::new()),
    ];
    for (what, body) in cases {
        let r = put(&s, &format!("/{H1}.narinfo"), body.as_bytes());
        assert_eq!(r.status, 400, "{what}: {}", r.text());
        assert!(!r.text().trim().is_empty());
        assert_eq!(
            head(&s, &format!("/{H1}.narinfo")).status,
            404,
            "{what} stored"
        );
    }
    assert_eq!(
        put(&s, &format!("/{H1}.narinfo"), good.as_bytes()).status,
        201
    );
    // A reference that is present is fine.
    upload_path(&s, H2, b"dependent", &[&format!("{H1}-p")]);
}

#[test]
fn trusted_keys_require_a_signature() {
    use base64::Engine as _;
    use ed25519_dalek::{Signer, SigningKey};
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = SigningKey::from_bytes(&[7; 32]);
    let other = SigningKey::from_bytes(&[9; 32]);
    let public = format!("test-1:{}", b64.encode(key.verifying_key().as_bytes()));
    let s = ServerBuilder::new()
        .env("NIX_STORED_TRUSTED_PUBLIC_KEYS", &public)
        .start();
    let nar = nar_of(b"signed");
    let fh = nix32_sha256(&nar);
    put(&s, &format!("/nar/{fh}.nar"), &nar);
    let info = narinfo_for(H1, "p", &nar, &[]);
    let fingerprint = format!("1;/nix/store/{H1}-p;sha256:{fh};{};", nar.len());
    let sig = |k: &SigningKey| {
        format!(
            "Sig: test-1:{}\n",
            b64.encode(k.sign(fingerprint.as_bytes()).to_bytes())
        )
    };
    let path = format!("/{H1}.narinfo");
    assert_eq!(put(&s, &path, info.as_bytes()).status, 400, "unsigned");
    assert_eq!(
        put(&s, &path, format!("{info}{}", sig(&other)).as_bytes()).status,
        400,
        "wrong key"
    );
    let r = put(&s, &path, format!("{info}{}", sig(&key)).as_bytes());
    assert_eq!(r.status, 201, "{}", r.text());
}

#[test]
fn concurrent_uploads_of_one_key_give_one_whole_object() {
    let s = ServerBuilder::new().start();
    let path = format!("/log/{DRV}");
    let versions: Vec<Vec<u8>> = (0..50u8)
        .map(|i| vec![b'a' + i % 26; 10_000 + i as usize * 997])
        .collect();
    std::thread::scope(|scope| {
        for v in &versions {
            let s = &s;
            let path = &path;
            scope.spawn(move || {
                let r = put(s, path, v);
                assert!(matches!(r.status, 201 | 204), "{}", r.status);
            });
        }
    });
    let stored = get(&s, &path).body;
    assert!(
        versions.contains(&stored),
        "mixed object of {} bytes",
        stored.len()
    );
    assert!(std::fs::read_dir(s.dir.join(".tmp"))
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn idle_upload_bodies_time_out() {
    let s = ServerBuilder::new()
        .env("NIX_STORED_BODY_TIMEOUT", "1")
        .start();
    let mut stream = TcpStream::connect(s.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        stream,
        "PUT /log/{DRV} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\npartial"
    )
    .unwrap();
    let r = read_response(&mut BufReader::new(stream), false);
    assert_eq!(r.status, 408);
    assert_eq!(head(&s, &format!("/log/{DRV}")).status, 404);
}

#[test]
fn sigkill_during_a_large_upload_leaves_nothing() {
    let mut s = ServerBuilder::new().start();
    let nar = nar_of(&vec![42u8; 64 << 20]);
    let path = format!("/nar/{}.nar", nix32_sha256(&nar));
    let mut stream = TcpStream::connect(s.addr).unwrap();
    write!(
        stream,
        "PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        nar.len()
    )
    .unwrap();
    stream.write_all(&nar[..nar.len() / 2]).unwrap();
    let tmp = s.dir.join(".tmp");
    assert!(eventually(Duration::from_secs(10), || std::fs::read_dir(
        &tmp
    )
    .unwrap()
    .next()
    .is_some()));
    s.kill9();
    drop(stream);
    let s = ServerBuilder::new().dir(&s.dir.clone()).start();
    assert_eq!(head(&s, &path).status, 404);
    assert!(
        std::fs::read_dir(&tmp).unwrap().next().is_none(),
        "leftover not cleaned"
    );
    assert_eq!(put(&s, &path, &nar).status, 201);
    assert_eq!(get(&s, &path).body.len(), nar.len());
}

#[test]
fn sigterm_exits_cleanly() {
    let mut s = ServerBuilder::new().start();
    assert_eq!(get(&s, "/nix-cache-info").status, 200);
    assert!(s.terminate().success());
}

#[test]
fn auth_matrix() {
    let passfile = temp_dir("pass").join("w");
    std::fs::write(&passfile, "write-secret\n").unwrap();
    let s = ServerBuilder::new()
        .env("NIX_STORED_USER_READ", "reader")
        .env("NIX_STORED_USER_READ_PASS", "read-secret")
        .env("NIX_STORED_USER_WRITE", "writer")
        .env("NIX_STORED_USER_WRITE_PASSFILE", passfile.to_str().unwrap())
        .start();
    let read = basic("reader", "read-secret");
    let write = basic("writer", "write-secret");
    let wrong = basic("writer", "read-secret");
    let unknown = basic("mallory", "x");
    let nar = nar_of(b"auth");
    let nar_path = format!("/nar/{}.nar", nix32_sha256(&nar));
    let with = |method: &str, path: &str, auth: Option<&str>, body: &[u8]| {
        let h: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        send(s.addr, method, path, &h, body)
    };
    // Writes: only the write user; the read user is forbidden on every kind.
    let log_path = format!("/log/{DRV}");
    for (path, body) in [
        (nar_path.as_str(), nar.as_slice()),
        (log_path.as_str(), b"log".as_slice()),
        ("/nix-cache-info", b"x".as_slice()),
    ] {
        let r = with("PUT", path, None, body);
        assert_eq!(r.status, 401, "anonymous PUT {path}");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Basic realm=\"nix-stored\"")
        );
        assert_eq!(
            with("PUT", path, Some(&read), body).status,
            403,
            "reader PUT {path}"
        );
        assert_eq!(with("PUT", path, Some(&wrong), body).status, 401);
        assert_eq!(with("PUT", path, Some(&unknown), body).status, 401);
    }
    assert!(
        files_below(&s.dir) == vec!["nix-cache-info"],
        "a refused upload left a file"
    );
    assert_eq!(with("PUT", &nar_path, Some(&write), &nar).status, 201);
    // Reads: reader and writer; HEAD and ranges too.
    for method in ["GET", "HEAD"] {
        assert_eq!(with(method, &nar_path, None, b"").status, 401);
        assert_eq!(with(method, &nar_path, Some(&wrong), b"").status, 401);
        assert_eq!(with(method, &nar_path, Some(&read), b"").status, 200);
        assert_eq!(with(method, &nar_path, Some(&write), b"").status, 200);
    }
    let r = send(
        s.addr,
        "GET",
        &nar_path,
        &[("Authorization", &read), ("Range", "bytes=1-")],
        b"",
    );
    assert_eq!(r.status, 206);
    assert_eq!(
        r.header("cache-control"),
        Some("private, max-age=31536000, immutable")
    );
    let log = s.log();
    for secret in ["read-secret", "write-secret"] {
        assert!(!log.contains(secret), "secret in log");
    }
    assert!(log.contains("user=reader") && log.contains("user=writer"));
    std::fs::remove_dir_all(passfile.parent().unwrap()).unwrap();
}

#[test]
fn anonymous_writes_only_on_loopback() {
    let open = ServerBuilder::new().start();
    assert_eq!(put(&open, &format!("/log/{DRV}"), b"x").status, 201);
    let exposed = ServerBuilder::new()
        .env("NIX_STORED_LISTEN_INTERFACE", "0.0.0.0:0")
        .start();
    let port = exposed.addr.port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(
        send(addr, "PUT", &format!("/log/{DRV}"), &[], b"x").status,
        403
    );
    assert_eq!(send(addr, "GET", "/nix-cache-info", &[], b"").status, 200);
    assert!(
        exposed.log().contains("NIX_STORED_USER_WRITE"),
        "no startup warning"
    );
}

#[test]
fn bad_configuration_fails_at_start_with_one_line() {
    let file = temp_dir("cfg").join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let cases: Vec<(&str, Vec<(&str, String)>)> = vec![
        (
            "user without password",
            vec![("NIX_STORED_USER_READ", "r".into())],
        ),
        (
            "password and passfile",
            vec![
                ("NIX_STORED_USER_WRITE", "w".into()),
                ("NIX_STORED_USER_WRITE_PASS", "p".into()),
                ("NIX_STORED_USER_WRITE_PASSFILE", "/etc/hostname".into()),
            ],
        ),
        (
            "unreadable passfile",
            vec![
                ("NIX_STORED_USER_WRITE", "w".into()),
                ("NIX_STORED_USER_WRITE_PASSFILE", "/nonexistent/pass".into()),
            ],
        ),
        (
            "bad address",
            vec![("NIX_STORED_LISTEN_INTERFACE", "localhost:http".into())],
        ),
        ("bad priority", vec![("NIX_STORED_PRIORITY", "high".into())]),
        (
            "store path under a file",
            vec![("NIX_STORED_PATH", file.join("cache").display().to_string())],
        ),
    ];
    for (what, env) in cases {
        let mut b = ServerBuilder::new();
        for (k, v) in &env {
            b = b.env(k, v);
        }
        if let Some((_, p)) = env.iter().find(|(k, _)| *k == "NIX_STORED_PATH") {
            b = b.dir(std::path::Path::new(p));
        }
        let (status, stderr) = b.start_expect_failure();
        assert!(!status.success(), "{what} started");
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("nix-stored: error:"))
            .collect();
        assert_eq!(errors.len(), 1, "{what}: {stderr}");
    }
    std::fs::remove_dir_all(file.parent().unwrap()).unwrap();
}

#[test]
fn help_lists_every_setting() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nix-stored"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for var in [
        "PATH",
        "LISTEN_INTERFACE",
        "USER_READ",
        "USER_READ_PASS",
        "USER_READ_PASSFILE",
        "USER_WRITE",
        "USER_WRITE_PASS",
        "USER_WRITE_PASSFILE",
        "LOG_LEVEL",
        "PRIORITY",
        "MAX_UPLOAD_SIZE",
        "TRUSTED_PUBLIC_KEYS",
        "STORE_DIR",
        "BODY_TIMEOUT",
        "SHUTDOWN_TIMEOUT",
    ] {
        assert!(
            help.contains(&format!("NIX_STORED_{var}]"))
                || help.contains(&format!("NIX_STORED_{var}=")),
            "{var} missing from --help"
        );
    }
    // Every setting is documented in the README too.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for line in help.lines().filter_map(|l| l.split("env: ").nth(1)) {
        let var = line.trim_end_matches(']').split('=').next().unwrap();
        assert!(readme.contains(var), "{var} not in README");
    }
}
