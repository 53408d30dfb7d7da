//! Hostile requests against a live server: odd methods, huge headers, encoded
//! traversal, NUL bytes, overlong keys, bodies longer and shorter than declared,
//! chunked uploads with no length, invalid UTF-8. No panic, no 5xx, nothing
//! written outside the cache directory, nothing but cache keys inside it, and
//! the log stays one printable line per event.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Shutdown, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix_stored::cache::key::ObjectKey;

use crate::common::{self, ServerBuilder};
use crate::support::*;

const TEST: &str = "hostile input";

/// Valid keys, the starting points of mutations.
fn valid_paths(p: &PathFixture) -> Vec<String> {
    let h = &p.hash;
    vec![
        "/nix-cache-info".into(),
        p.narinfo_key(),
        p.nar_key(),
        format!("/{h}.ls"),
        format!("/log/{h}-x.drv"),
        format!("/debuginfo/{}.debug", "0a".repeat(20)),
        format!("/realisations/sha256:{}!out.doi", "ab".repeat(32)),
        format!("/build-trace-v2/{h}-x.drv/out.doi"),
    ]
}

/// Pieces that make paths hostile.
const NASTY: &[&[u8]] = &[
    b"..",
    b"/..",
    b"/../",
    b"%2e%2e",
    b"%2e%2e%2f",
    b"%2E%2E/",
    b"..%2f",
    b"%252e%252e",
    b"%00",
    b"\0",
    b"//",
    b"/./",
    b"\\..\\",
    b".tmp/",
    b"/.tmp/upload-1-0",
    b"?x=../../etc/passwd",
    b"#frag",
    b";param",
    b"\xff\xfe",
    b"\xc0\xae\xc0\xae",
    "é".as_bytes(),
    "\u{202e}".as_bytes(),
    "\u{9b}31m".as_bytes(),
    b" ",
    b"\t",
    b"\r",
    b"\x1b[31m",
    b"~",
    b"*",
];

const METHODS: &[&str] = &[
    "GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "TRACE", "CONNECT", "PATCH", "get",
    "PROPFIND", "MKCOL", "G\0T", "PUT\x01", "",
];

fn mutate_path(rng: &mut Rng, base: &str) -> Vec<u8> {
    let mut path = base.as_bytes().to_vec();
    for _ in 0..rng.range(1, 4) {
        match rng.below(7) {
            0 => {
                let at = rng.below(path.len() as u64 + 1) as usize;
                let piece = rng.pick(NASTY);
                path.splice(at..at, piece.iter().copied());
            }
            1 if !path.is_empty() => {
                let at = rng.below(path.len() as u64) as usize;
                path[at] = rng.below(256) as u8;
            }
            2 if !path.is_empty() => {
                let at = rng.below(path.len() as u64) as usize;
                path.remove(at);
            }
            3 => path.extend(std::iter::repeat_n(b'a', rng.log_size(1, 20_000) as usize)),
            4 => path = [b"/../../..".as_slice(), &path].concat(),
            5 => {
                path = format!("http://evil.example{}", String::from_utf8_lossy(&path)).into_bytes()
            }
            _ => path = path.to_ascii_uppercase(),
        }
    }
    path
}

/// One hostile request, as bytes; and whether to half-close after sending it.
fn hostile_request(rng: &mut Rng, addr: SocketAddr, paths: &[String]) -> (Vec<u8>, bool) {
    // Mostly the methods that reach the key parser and storage.
    let method = if rng.chance(7, 10) {
        *rng.pick(&["GET", "HEAD", "PUT"])
    } else {
        *rng.pick(METHODS)
    };
    let base = rng.pick(paths).clone();
    let path = if rng.chance(1, 6) {
        base.into_bytes()
    } else {
        mutate_path(rng, &base)
    };
    let version: &[u8] = match rng.below(40) {
        0..=3 => b"HTTP/1.0",
        4 => b"HTTP/2.0",
        5 => b"HTTP/9.9",
        6 => b"HTTX/1.1",
        7 => b"",
        _ => b"HTTP/1.1",
    };
    let mut req = Vec::new();
    req.extend_from_slice(method.as_bytes());
    req.push(b' ');
    req.extend_from_slice(&path);
    if !version.is_empty() {
        req.push(b' ');
        req.extend_from_slice(version);
    }
    req.extend_from_slice(b"\r\n");
    if rng.chance(9, 10) {
        req.extend_from_slice(format!("Host: {addr}\r\n").as_bytes());
    }
    let mut body = rng.bytes_log(1, 256 << 10);
    let mut declared = Some(body.len() as u64);
    let mut chunked = false;
    for _ in 0..rng.below(3) {
        match rng.below(14) {
            0 => {
                let v = rng.text_log(1, 200_000);
                req.extend_from_slice(format!("X-Huge: {v}\r\n").as_bytes());
            }
            1 => {
                for i in 0..rng.range(50, 300) {
                    req.extend_from_slice(format!("X-Many-{i}: v\r\n").as_bytes());
                }
            }
            2 => req.extend_from_slice(b"X-Bin: \xff\xfe\x80\x00\r\n"),
            3 => req.extend_from_slice(b"Bad Header Name: x\r\n"),
            4 => req.extend_from_slice(b"Content-Length: 5\r\nContent-Length: 7\r\n"),
            5 => req.extend_from_slice(b"Content-Length: -1\r\n"),
            6 => req.extend_from_slice(b"Content-Length: 99999999999999999999999\r\n"),
            7 => req.extend_from_slice(b"Transfer-Encoding: gzip, chunked\r\n"),
            8 => req.extend_from_slice(b"Expect: 100-continue\r\n"),
            9 => {
                let r = *rng.pick(&[
                    "bytes=-0",
                    "bytes=0-0,1-1",
                    "bytes=99999999999999999999-",
                    "bytes=5-2",
                    "bytes=-99999999999",
                    "bytes=18446744073709551615-",
                    "bytes=0-18446744073709551615",
                    "lines=1-2",
                ]);
                req.extend_from_slice(format!("Range: {r}\r\n").as_bytes());
            }
            10 => req.extend_from_slice(b"Authorization: Basic !!!notbase64\r\n"),
            11 => req.extend_from_slice(b"Content-Encoding: zstd\r\n"),
            12 => {
                chunked = true;
                declared = None;
            }
            _ => req.extend_from_slice(b"Connection: keep-alive\r\n"),
        }
    }
    let mut half_close = false;
    match rng.below(6) {
        // Longer than declared: the rest is a second, garbage request.
        0 => body.extend_from_slice(&rng.bytes_in(1, 4096)),
        // Shorter than declared, then EOF.
        1 => {
            declared = declared.map(|d| d + rng.range(1, 1 << 20));
            half_close = true;
        }
        // Empty, with or without a Content-Length of 0.
        2 => {
            body.clear();
            if !chunked {
                declared = rng.chance(1, 2).then_some(0);
            }
        }
        _ => {}
    }
    if chunked {
        req.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    } else if let Some(d) = declared {
        req.extend_from_slice(format!("Content-Length: {d}\r\n").as_bytes());
    }
    req.extend_from_slice(b"Connection: close\r\n\r\n");
    if chunked {
        let mut framed = Vec::new();
        for c in body.chunks(rng.range(1, 70_000) as usize) {
            match rng.below(20) {
                0 => framed.extend_from_slice(b"zz\r\n"),
                1 => framed.extend_from_slice(b"ffffffffffffffff\r\n"),
                _ => framed.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes()),
            }
            framed.extend_from_slice(c);
            framed.extend_from_slice(b"\r\n");
        }
        if rng.chance(4, 5) {
            framed.extend_from_slice(b"0\r\n\r\n");
        } else {
            half_close = true;
        }
        body = framed;
    }
    req.extend_from_slice(&body);
    (req, half_close)
}

/// Status codes of every answer in `bytes` (a connection may carry several).
fn statuses(bytes: &[u8]) -> Vec<u16> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(pos) = bytes[i..]
        .windows(9)
        .position(|w| w == b"HTTP/1.1 " || w == b"HTTP/1.0 ")
    {
        let at = i + pos;
        if at == 0 || bytes[at - 1] == b'\n' {
            if let Some(code) = bytes
                .get(at + 9..at + 12)
                .and_then(|c| std::str::from_utf8(c).ok())
                .and_then(|c| c.parse().ok())
            {
                out.push(code);
            }
        }
        i = at + 9;
    }
    out
}

fn snapshot_outside(parent: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    common::entries_below(parent)
        .into_iter()
        .filter(|e| !e.starts_with("store/"))
        .map(|e| {
            let bytes = std::fs::read(parent.join(&e)).unwrap_or_default();
            (e, bytes)
        })
        .collect()
}

#[test]
fn hostile_requests() {
    let total: usize = env_or("NIX_STORED_ROBUST_REQUESTS", by_mode(3000, 30_000));
    let seed = seed();
    let mut rng = Rng::new(seed);
    // The cache is `parent/store`; everything else in `parent` must stay as it is.
    let parent = common::temp_dir("hostile");
    std::fs::write(parent.join("canary"), b"do not touch").unwrap();
    std::fs::create_dir_all(parent.join("etc")).unwrap();
    std::fs::write(parent.join("etc/passwd"), b"root:x:0:0").unwrap();
    std::fs::write(parent.join("x.narinfo"), b"outside").unwrap();
    let store = parent.join("store");
    let s = ServerBuilder::new()
        .dir(&store)
        .env("NIX_STORED_HEADER_TIMEOUT", "2")
        .env("NIX_STORED_BODY_TIMEOUT", "2")
        .start();
    let p = PathFixture::new("hostile-present", b"present", &[]);
    upload(&mut Conn::new(s.addr), &p).unwrap();
    let outside_before = snapshot_outside(&parent);
    let paths = Arc::new(valid_paths(&p));

    let by_status = Arc::new(Mutex::new(BTreeMap::<u16, usize>::new()));
    let bad = Arc::new(Mutex::new(Vec::<String>::new()));
    let silent = Arc::new(Mutex::new(0usize));
    let workers = 8;
    let threads: Vec<_> = (0..workers)
        .map(|w| {
            let (paths, by_status, bad, silent) = (
                paths.clone(),
                by_status.clone(),
                bad.clone(),
                silent.clone(),
            );
            let mut rng = Rng::new(rng.next_u64());
            let addr = s.addr;
            std::thread::spawn(move || {
                for _ in 0..total.div_ceil(workers) {
                    let (req, half_close) = hostile_request(&mut rng, addr, &paths);
                    let Ok(mut c) = common::try_connect(addr) else {
                        bad.lock().unwrap().push("connection refused".into());
                        continue;
                    };
                    let _ = c.write_all(&req);
                    if half_close {
                        let _ = c.shutdown(Shutdown::Write);
                    }
                    let answer = read_all_until_quiet(&mut c, Duration::from_secs(10));
                    let codes = statuses(&answer);
                    if codes.is_empty() {
                        *silent.lock().unwrap() += 1;
                    }
                    for code in codes {
                        *by_status.lock().unwrap().entry(code).or_default() += 1;
                        if code >= 500 {
                            bad.lock().unwrap().push(format!(
                                "{code} for {:?}",
                                String::from_utf8_lossy(&req[..req.len().min(300)])
                            ));
                        }
                    }
                }
                let _ = w;
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }

    let alive = alive(s.pid()) && common::get(&s, "/nix-cache-info").status == 200;
    let intact = common::get(&s, &p.nar_key()).body == p.nar;
    let outside_after = snapshot_outside(&parent);
    let unexpected: Vec<String> = common::files_below(&store)
        .into_iter()
        .filter(|f| !f.starts_with(".tmp/") && ObjectKey::parse(f).is_err())
        .collect();
    let temp_gone = common::eventually(Duration::from_secs(10), || temp_files(&store) == 0);
    let log = s.log();
    let panicked = log.contains("panicked");
    // The log is one printable line per event whatever the requests held.
    let unprintable: Vec<&str> = log
        .lines()
        .filter(|l| {
            !l.chars()
                .all(|c| c == ' ' || c == '\t' || c.is_ascii_graphic())
        })
        .take(5)
        .collect();
    let by_status = by_status.lock().unwrap();
    let bad = bad.lock().unwrap();
    figures(
        TEST,
        format_args!(
            "{total} generated requests, answers {:?}, {} connections closed without an answer; {} 5xx, panicked: {panicked}, alive: {alive}, stored object intact: {intact}, {} changes outside the store, {} files in it that are no key, {} unprintable log lines (seed {seed})",
            *by_status,
            *silent.lock().unwrap(),
            bad.len(),
            usize::from(outside_after != outside_before),
            unexpected.len(),
            unprintable.len(),
        ),
    );
    assert!(
        bad.is_empty(),
        "5xx answers: {:#?}",
        &bad[..bad.len().min(10)]
    );
    assert!(!panicked, "the server panicked:\n{log}");
    assert!(alive && intact, "the server stopped serving");
    assert_eq!(
        outside_after, outside_before,
        "files outside the store changed"
    );
    assert!(
        unexpected.is_empty(),
        "files that are no cache key: {unexpected:?}"
    );
    assert!(temp_gone, "temporary files left");
    assert!(
        unprintable.is_empty(),
        "unprintable log lines: {unprintable:#?}"
    );
    drop(s);
    let _ = std::fs::remove_dir_all(&parent);
}
