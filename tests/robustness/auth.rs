//! Credentials: on every route, with every method, with and without ranges, no
//! credential but the configured ones gets anything but a refusal, and no
//! credential (right or wrong, password or encoded header) reaches the log.

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
