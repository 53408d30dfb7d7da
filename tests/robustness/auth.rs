//! Credentials: on every route, with every method, with and without ranges, no
//! credential but the configured ones gets anything but a refusal, and no
//! credential (right or wrong, password or encoded header) reaches the log. And the
//! server's defences against clients it refuses: a per-address connection limit,
//! refusals that close their connection, and throttled password guessing.

use std::io::{self, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::common::{self, ServerBuilder};
use crate::support::*;

const TEST: &str = "auth";
const READ_USER: &str = "reader";
const READ_PASS: &str = "R3ad-s3cret-quux";
const WRITE_USER: &str = "writer";
const WRITE_PASS: &str = "Wr1te-s3cret-garply";

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// `Authorization` values that must all be refused, and the secrets each holds.
fn wrong_credentials() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = Vec::new();
    let mut basic = |user: &str, pass: &str| {
        v.push(format!("Basic {}", b64(format!("{user}:{pass}").as_bytes())).into_bytes())
    };
    basic(READ_USER, WRITE_PASS);
    basic(WRITE_USER, READ_PASS);
    basic(READ_USER, "");
    basic(WRITE_USER, "");
    basic("", READ_PASS);
    basic("", WRITE_PASS);
    basic("Reader", READ_PASS);
    basic("WRITER", WRITE_PASS);
    basic(READ_USER, &READ_PASS.to_uppercase());
    basic(WRITE_USER, &WRITE_PASS[..WRITE_PASS.len() - 1]);
    basic(WRITE_USER, &format!("{WRITE_PASS}x"));
    basic(WRITE_USER, &format!("{WRITE_PASS}\n"));
    basic(WRITE_USER, &format!(" {WRITE_PASS}"));
    basic(&format!("{WRITE_USER} "), WRITE_PASS);
    basic(&format!("{WRITE_USER}:{WRITE_PASS}"), "");
    basic(WRITE_PASS, WRITE_USER);
    basic("mallory", "mallory");
    basic(READ_PASS, READ_PASS);
    v.push(
        format!(
            "Basic {}",
            b64(format!("{WRITE_USER}{WRITE_PASS}").as_bytes())
        )
        .into_bytes(),
    );
    v.push(
        format!(
            "Basic {}",
            b64(format!("{WRITE_USER}:{WRITE_PASS}\0").as_bytes())
        )
        .into_bytes(),
    );
    v.push(format!("Bearer {WRITE_PASS}").into_bytes());
    v.push(format!("Digest username=\"{WRITE_USER}\", response=\"{WRITE_PASS}\"").into_bytes());
    v.push(format!("{WRITE_USER}:{WRITE_PASS}").into_bytes());
    v.push(format!("Basic {WRITE_USER}:{WRITE_PASS}").into_bytes());
    v.push(b"Basic".to_vec());
    v.push(b"Basic ".to_vec());
    v.push(b"Basic !!!".to_vec());
    v.push(b"Basic \xff\xfe".to_vec());
    // Latin-1 bytes in the header: not UTF-8, must not crash or match.
    let mut latin = b"Basic ".to_vec();
    latin.extend_from_slice(
        b64(&[b"writer:".as_slice(), b"Wr1te-s3cret-garply\xe9"].concat()).as_bytes(),
    );
    v.push(latin);
    v
}

#[test]
fn only_configured_credentials_are_accepted() {
    let s = ServerBuilder::new()
        .env("NIX_STORED_USER_READ", READ_USER)
        .env("NIX_STORED_USER_READ_PASS", READ_PASS)
        .env("NIX_STORED_USER_WRITE", WRITE_USER)
        .env("NIX_STORED_USER_WRITE_PASS", WRITE_PASS)
        .env("NIX_STORED_LOG_LEVEL", "debug")
        // Some ten thousand wrong credentials from one address, on purpose: this test
        // is about what they may do, not how fast they may come.
        .env("NIX_STORED_MAX_AUTH_FAILURES", "0")
        .start();
    let write_auth = common::basic(WRITE_USER, WRITE_PASS);
    let read_auth = common::basic(READ_USER, READ_PASS);
    let mut w = Conn::new(s.addr).with_auth(&write_auth);
    let p = PathFixture::new("auth-path", b"auth contents", &[]);
    upload(&mut w, &p).unwrap();
    let h = &p.hash;
    let objects = [
        (format!("/{h}.ls"), b"{}".to_vec()),
        (format!("/log/{h}-x.drv"), b"log".to_vec()),
        (
            format!("/debuginfo/{}.debug", "0a".repeat(20)),
            b"{}".to_vec(),
        ),
        (
            format!("/realisations/sha256:{}!out.doi", "ab".repeat(32)),
            b"{}".to_vec(),
        ),
        (format!("/build-trace-v2/{h}-x.drv/out.doi"), b"{}".to_vec()),
    ];
    for (key, body) in &objects {
        assert_eq!(w.put(key, body).unwrap().status, 201, "{key}");
    }
    let mut routes: Vec<String> = objects.iter().map(|(k, _)| k.clone()).collect();
    routes.extend([
        "/nix-cache-info".into(),
        p.narinfo_key(),
        p.nar_key(),
        format!("/{}.narinfo", common::store_hash("absent")),
        format!("/log/{}-new.drv", common::store_hash("new-log")),
        "/../etc/passwd".into(),
        "/".into(),
    ]);
    let methods = ["GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "PATCH"];
    let ranges = [None, Some("bytes=0-3"), Some("bytes=-1"), Some("bytes=5-")];
    let wrong = wrong_credentials();
    let before = common::files_below(&s.dir);

    let (mut requests, mut right) = (0u64, 0u64);
    let mut accepted = Vec::new();
    let mut refused_right = Vec::new();
    for route in &routes {
        for method in methods {
            for range in ranges {
                // Wrong credentials, and none at all (reads are private here).
                for cred in wrong.iter().map(Some).chain([None]) {
                    let mut req =
                        format!("{method} {route} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n")
                            .into_bytes();
                    if let Some(c) = cred {
                        req.extend_from_slice(b"Authorization: ");
                        req.extend_from_slice(c);
                        req.extend_from_slice(b"\r\n");
                    }
                    if let Some(r) = range {
                        req.extend_from_slice(format!("Range: {r}\r\n").as_bytes());
                    }
                    req.extend_from_slice(b"Content-Length: 3\r\n\r\nabc");
                    requests += 1;
                    let status = common::try_raw_request(s.addr, &req).map_or(0, |r| r.status);
                    // 401 for the methods that exist; 405 refuses the others
                    // outright; 400 for a request that is not HTTP.
                    let ok = match method {
                        "GET" | "HEAD" | "PUT" => status == 401,
                        _ => status == 405,
                    };
                    if !ok {
                        accepted.push(format!(
                            "{method} {route} range {range:?} with {:?}: {status}",
                            cred.map(|c| String::from_utf8_lossy(c).into_owned())
                        ));
                    }
                }
                // The right ones still work (reader reads, writer writes).
                if matches!(method, "GET" | "HEAD") && !route.contains("..") && route != "/" {
                    for auth in [&read_auth, &write_auth] {
                        requests += 1;
                        right += 1;
                        let mut headers = vec![("Authorization", auth.as_str())];
                        if let Some(r) = range {
                            headers.push(("Range", r));
                        }
                        let r = common::send(s.addr, method, route, &headers, b"");
                        if ![200, 206, 404, 416].contains(&r.status) {
                            refused_right.push(format!("{method} {route} {range:?}: {}", r.status));
                        }
                    }
                }
            }
        }
    }
    let reader_put = common::send(
        s.addr,
        "PUT",
        &format!("/log/{}-r.drv", common::store_hash("reader-put")),
        &[("Authorization", &read_auth)],
        b"x",
    )
    .status;
    let after = common::files_below(&s.dir);

    // Secrets: the passwords, every header value sent, and its base64 part.
    let mut secrets: Vec<String> = vec![
        READ_PASS.into(),
        WRITE_PASS.into(),
        read_auth.clone(),
        write_auth.clone(),
        read_auth[6..].to_owned(),
        write_auth[6..].to_owned(),
    ];
    for c in &wrong {
        let text = String::from_utf8_lossy(c).into_owned();
        if let Some(enc) = text.strip_prefix("Basic ") {
            if enc.len() >= 8 {
                secrets.push(enc.to_owned());
            }
        }
    }
    let log = s.log();
    let leaked: Vec<&String> = secrets
        .iter()
        .filter(|x| log.contains(x.as_str()))
        .collect();
    figures(
        TEST,
        format_args!(
            "{} routes x {} methods x {} range variants x {} wrong credentials (and none): {requests} requests; {} accepted with wrong credentials, {right} with the right ones ({} refused), read user PUT -> {reader_put}; store unchanged: {}; {} secrets looked for in {} log lines: {} found",
            routes.len(),
            methods.len(),
            ranges.len(),
            wrong.len(),
            accepted.len(),
            refused_right.len(),
            before == after,
            secrets.len(),
            log.lines().count(),
            leaked.len()
        ),
    );
    assert!(
        accepted.is_empty(),
        "not refused: {:#?}",
        &accepted[..accepted.len().min(20)]
    );
    assert!(
        refused_right.is_empty(),
        "right credentials refused: {refused_right:#?}"
    );
    assert_eq!(reader_put, 403);
    assert_eq!(before, after, "a refused request changed the store");
    assert!(leaked.is_empty(), "secrets in the log: {leaked:?}");
}

/// The client address of most connections, and a second one on the same machine.
const HOME: Ipv4Addr = Ipv4Addr::LOCALHOST;
const OTHER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// One keep-alive GET (no `Connection: close`) on an open connection.
fn keep_alive_get(
    conn: &mut BufReader<TcpStream>,
    path: &str,
    auth: Option<&str>,
) -> io::Result<common::Response> {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n");
    if let Some(a) = auth {
        req.push_str(&format!("Authorization: {a}\r\n"));
    }
    req.push_str("\r\n");
    conn.get_mut().write_all(req.as_bytes())?;
    common::read_response(conn, false)
}

/// Whether the server closed the connection (EOF within 10 s, nothing more sent).
fn closed_by_server(conn: &mut BufReader<TcpStream>) -> bool {
    let _ = conn
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = [0u8; 64];
    matches!(conn.read(&mut buf), Ok(0))
}

fn connect_keep_alive(local: Ipv4Addr, addr: SocketAddr) -> BufReader<TcpStream> {
    BufReader::new(
        connect_from(local, addr).unwrap_or_else(|e| panic!("connect from {local}: {e}")),
    )
}

#[test]
fn one_address_cannot_take_every_connection() {
    const TEST: &str = "per-address limit";
    const LIMIT: usize = 4;
    let s = ServerBuilder::new()
        .env("NIX_STORED_MAX_CONNECTIONS_PER_ADDRESS", &LIMIT.to_string())
        .env("NIX_STORED_HEADER_TIMEOUT", "30")
        .start();
    // LIMIT connections from one address, each answered once, then kept idle.
    let mut held: Vec<BufReader<TcpStream>> = (0..LIMIT)
        .map(|i| {
            let mut c = connect_keep_alive(HOME, s.addr);
            let r = keep_alive_get(&mut c, "/nix-cache-info", None).unwrap();
            assert_eq!(r.status, 200, "held connection {i}");
            c
        })
        .collect();
    // One more from that address: answered and closed at once, not left waiting.
    let mut extra = connect_keep_alive(HOME, s.addr);
    let refused = keep_alive_get(&mut extra, "/nix-cache-info", None);
    let extra_closed = closed_by_server(&mut extra);
    // Another address is served meanwhile, and so are the held connections.
    let mut other = connect_keep_alive(OTHER, s.addr);
    let other_status = keep_alive_get(&mut other, "/nix-cache-info", None).map(|r| r.status);
    let held_status = keep_alive_get(&mut held[0], "/nix-cache-info", None).map(|r| r.status);
    let metrics = keep_alive_get(&mut other, "/metrics", None).map(|r| r.text());
    // A held connection ends: its place is given back.
    held.pop();
    let freed = common::eventually(Duration::from_secs(10), || {
        let mut c = connect_keep_alive(HOME, s.addr);
        keep_alive_get(&mut c, "/nix-cache-info", None).is_ok_and(|r| r.status == 200)
    });
    let refused_status = refused.as_ref().map(|r| r.status).ok();
    figures(
        TEST,
        format_args!(
            "limit {LIMIT}: {LIMIT} idle keep-alive connections from {HOME} held; connection {} from {HOME}: {refused_status:?} (Retry-After {:?}), closed by the server: {extra_closed}; from {OTHER}: {other_status:?}; held one still served: {held_status:?}; served again once one closed: {freed}",
            LIMIT + 1,
            refused.as_ref().ok().and_then(|r| r.header("retry-after")),
        ),
    );
    let refused = refused.expect("the connection over the limit gets an answer");
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(refused
        .header("retry-after")
        .is_some_and(|v| v.parse::<u64>().is_ok_and(|n| n >= 1)));
    assert_eq!(refused.header("connection"), Some("close"));
    assert!(extra_closed, "the refused connection was left open");
    assert_eq!(
        other_status.ok(),
        Some(200),
        "another address was not served"
    );
    assert_eq!(held_status.ok(), Some(200));
    let metrics = metrics.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "nix_stored_connections_refused_total 1"),
        "{metrics}"
    );
    assert!(freed, "a closed connection's place was not given back");
}

#[test]
fn refused_requests_do_not_keep_their_connection() {
    const TEST: &str = "refusals close";
    let s = ServerBuilder::new()
        .env("NIX_STORED_USER_READ", READ_USER)
        .env("NIX_STORED_USER_READ_PASS", READ_PASS)
        .env("NIX_STORED_USER_WRITE", WRITE_USER)
        .env("NIX_STORED_USER_WRITE_PASS", WRITE_PASS)
        .env("NIX_STORED_HEADER_TIMEOUT", "30")
        .start();
    let read_auth = common::basic(READ_USER, READ_PASS);
    let wrong_auth = common::basic(READ_USER, WRITE_PASS);
    let log_key = format!("/log/{}-x.drv", common::store_hash("refusals-close"));
    let cases: [(&str, &str, &str, Option<&str>, u16); 3] = [
        ("no credentials", "GET", "/nix-cache-info", None, 401),
        (
            "wrong password",
            "GET",
            "/nix-cache-info",
            Some(&wrong_auth),
            401,
        ),
        (
            "read user uploading",
            "PUT",
            &log_key,
            Some(&read_auth),
            403,
        ),
    ];
    let mut results = Vec::new();
    for (what, method, path, auth, want) in cases {
        let mut c = connect_keep_alive(HOME, s.addr);
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n");
        if let Some(a) = auth {
            req.push_str(&format!("Authorization: {a}\r\n"));
        }
        if method == "PUT" {
            req.push_str("Content-Length: 3\r\n\r\nabc");
        } else {
            req.push_str("\r\n");
        }
        c.get_mut().write_all(req.as_bytes()).unwrap();
        let r = common::read_response(&mut c, false).unwrap();
        let header = r.header("connection").map(str::to_owned);
        let closed = closed_by_server(&mut c);
        results.push((what, r.status, want, header, closed));
    }
    // The right credentials keep their connection: the check above can tell.
    let mut c = connect_keep_alive(HOME, s.addr);
    let first = keep_alive_get(&mut c, "/nix-cache-info", Some(&read_auth)).unwrap();
    let second = keep_alive_get(&mut c, "/nix-cache-info", Some(&read_auth)).unwrap();
    figures(
        TEST,
        format_args!(
            "(case, status, expected, Connection header, closed by the server): {results:?}; right credentials: {} then {} on one connection",
            first.status, second.status
        ),
    );
    for (what, status, want, header, closed) in &results {
        assert_eq!(status, want, "{what}");
        assert_eq!(header.as_deref(), Some("close"), "{what}");
        assert!(closed, "{what}: the connection stayed open");
    }
    assert_eq!((first.status, second.status), (200, 200));
    assert_eq!(first.header("connection"), None);
}

#[test]
fn wrong_passwords_are_throttled() {
    const TEST: &str = "password guessing";
    const WINDOW: Duration = Duration::from_secs(2);
    let s = ServerBuilder::new()
        .env("NIX_STORED_USER_READ", READ_USER)
        .env("NIX_STORED_USER_READ_PASS", READ_PASS)
        .start();
    let right = common::basic(READ_USER, READ_PASS);
    // As fast as one client goes: keep-alive where the server allows it.
    let mut guesser = Conn::new(s.addr).with_local(HOME);
    let (mut checked, mut throttled, mut other) = (0u64, 0u64, Vec::new());
    let mut first_statuses = Vec::new();
    let mut last_throttled: Option<(Instant, common::Response)> = None;
    let started = Instant::now();
    let mut i = 0u64;
    while started.elapsed() < WINDOW {
        let guess = common::basic(READ_USER, &format!("guess-{i}"));
        i += 1;
        let r = guesser.request("GET", "/nix-cache-info", &[("Authorization", &guess)], b"");
        let status = r.as_ref().map_or(0, |r| r.status);
        if first_statuses.len() < 10 {
            first_statuses.push(status);
        }
        match r {
            Ok(r) if r.status == 401 => checked += 1,
            Ok(r) if r.status == 429 => {
                throttled += 1;
                last_throttled = Some((Instant::now(), r));
            }
            _ => other.push(status),
        }
    }
    if last_throttled.is_none() {
        figures(
            TEST,
            format_args!("{checked} wrong passwords checked (401) in {WINDOW:?}, none throttled"),
        );
    }
    // Right credentials from another address: not affected.
    let other_address = Conn::new(s.addr)
        .with_local(OTHER)
        .with_auth(&right)
        .get("/nix-cache-info")
        .map(|r| r.status);
    // From the guessing address they are refused unchecked while its penalty lasts:
    // guess until one is checked (it takes the attempt just regained), then at once
    // the right password. (Asserted only if "at once" was well within the second the
    // next attempt takes to come back.)
    let (_, last) =
        last_throttled.unwrap_or_else(|| panic!("no guess was throttled, {checked} checked"));
    let mut last_checked = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    while last_checked.is_none() && Instant::now() < deadline {
        let guess = common::basic(READ_USER, &format!("guess-{i}"));
        i += 1;
        let r = guesser.request("GET", "/nix-cache-info", &[("Authorization", &guess)], b"");
        if r.is_ok_and(|r| r.status == 401) {
            last_checked = Some(Instant::now());
        }
    }
    let last_checked = last_checked.expect("no attempt regained within 5 s");
    let same_address_now = Conn::new(s.addr)
        .with_local(HOME)
        .with_auth(&right)
        .get("/nix-cache-info")
        .map(|r| r.status);
    let since_refusal = last_checked.elapsed();
    let prompt = since_refusal < Duration::from_millis(500);
    // Once the penalty is waited out, they work from there too, and count as a
    // success: the next wrong one is checked again.
    let retry_after: u64 = last
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    std::thread::sleep(Duration::from_secs(retry_after));
    let same_address_later = Conn::new(s.addr)
        .with_local(HOME)
        .with_auth(&right)
        .get("/nix-cache-info")
        .map(|r| r.status);
    let after_success = Conn::new(s.addr)
        .with_local(HOME)
        .with_auth(&common::basic(READ_USER, "typo"))
        .get("/nix-cache-info")
        .map(|r| r.status);
    let metrics = Conn::new(s.addr)
        .with_local(OTHER)
        .with_auth(&right)
        .get("/metrics")
        .map(|r| r.text())
        .unwrap_or_default();
    let counted = metrics
        .lines()
        .find_map(|l| l.strip_prefix("nix_stored_auth_throttled_total "))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    figures(
        TEST,
        format_args!(
            "{} wrong passwords in {:?}: {checked} checked (401), {throttled} refused unchecked (429, Retry-After {retry_after}), other {other:?}; first answers {first_statuses:?}; right password from {OTHER}: {other_address:?}, from {HOME} at once: {same_address_now:?} ({} ms after the last guess checked), after {retry_after} s: {same_address_later:?}, then a wrong one: {after_success:?}; metrics count {counted} throttled",
            checked + throttled + other.len() as u64,
            WINDOW,
            since_refusal.as_millis(),
        ),
    );
    // Far below the thousands per second one connection got before.
    assert!(checked < 200, "{checked} guesses checked in {WINDOW:?}");
    // A few typos are not punished.
    assert_eq!(first_statuses, vec![401; 10]);
    assert!(other.is_empty(), "unexpected answers: {other:?}");
    assert!((1..=5).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(last.header("connection"), Some("close"));
    assert_eq!(other_address.ok(), Some(200));
    if prompt {
        assert_eq!(same_address_now.ok(), Some(429));
    }
    assert_eq!(same_address_later.ok(), Some(200));
    assert_eq!(after_success.ok(), Some(401));
    assert!(counted >= throttled, "{counted} counted, {throttled} seen");
}
