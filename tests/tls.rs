//! HTTPS: HTTP/2 and HTTP/1.1 by ALPN (checked with curl), every key encoding,
//! certificate reload on SIGHUP and on file changes (and a broken replacement that
//! keeps the old certificate), idle TLS connections, shutdown, socket activation, and
//! the start-up failures of a bad certificate or key.
//!
//! The real Nix client over HTTPS is in `nix_roundtrip.rs`, next to its helpers.

#![cfg(feature = "tls")]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::tls::*;
use common::*;

fn cert_dir() -> PathBuf {
    temp_dir("tls")
}

/// Runs a server that must refuse to start; returns its one error line.
fn refuses(what: &str, builder: ServerBuilder) -> String {
    let (status, stderr) = builder.start_expect_failure();
    assert!(!status.success(), "{what}: started anyway\n{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("nix-stored: error:"))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "{what}: one error line expected:\n{stderr}"
    );
    assert!(
        !stderr.contains("listening on"),
        "{what}: listened:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{what}: panicked:\n{stderr}");
    errors[0].to_owned()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn curl_gets_http2_and_http1_with_the_certificate_as_ca() {
    let dir = cert_dir();
    let cert = TestCert::generate(&dir, "nix-stored-test-a", KeyFormat::Pkcs8Ec);
    let s = ServerBuilder::new().tls(&cert).start();
    assert_eq!(s.scheme, "https", "{}", s.log());
    let url = format!("{}/nix-cache-info", s.url());
    let ca = cert.cert.to_str().unwrap();
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let out = curl(&[
            "--cacert",
            ca,
            flag,
            "-w",
            "\n%{http_version} %{response_code}",
            &url,
        ]);
        assert!(out.status.success(), "curl {flag}");
        let text = stdout(&out);
        assert!(text.contains("StoreDir: /nix/store"), "{text}");
        assert!(
            text.ends_with(&format!("\n{version} 200")),
            "curl {flag}: {text}"
        );
    }
    // By host name too (the certificate names localhost).
    let by_name = url.replace("127.0.0.1", "localhost");
    assert!(
        curl(&["--cacert", ca, "--fail", "-o", "/dev/null", &by_name])
            .status
            .success()
    );
    // The certificate is really checked: not trusted without it (curl exit 60).
    assert_eq!(curl(&["-o", "/dev/null", &url]).status.code(), Some(60));
    // Plain HTTP on the HTTPS port is not answered as HTTP.
    let plain = url.replace("https://", "http://");
    let out = curl(&["-o", "/dev/null", "-w", "%{response_code}", &plain]);
    assert!(
        !out.status.success() || stdout(&out) != "200",
        "plain HTTP answered"
    );
    // The access log names the version.
    assert!(
        eventually(Duration::from_secs(5), || {
            let log = s.log();
            log.contains("GET /nix-cache-info HTTP/2 200")
                && log.contains("GET /nix-cache-info HTTP/1.1 200")
        }),
        "{}",
        s.log()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn uploads_and_many_lookups_share_one_http2_connection() {
    let dir = cert_dir();
    let cert = TestCert::generate(&dir, "nix-stored-test-a", KeyFormat::Pkcs8Ec);
    let s = ServerBuilder::new().tls(&cert).start();
    let ca = cert.cert.to_str().unwrap();

    // Upload a NAR and its narinfo over HTTP/2, then read both back.
    let h = store_hash("tls-upload");
    let nar = nar_of(b"uploaded over HTTP/2\n");
    let info = NarInfo::uncompressed("/nix/store", &h, "over-h2", &nar, &[]);
    let nar_file = dir.join("upload.nar");
    let info_file = dir.join("upload.narinfo");
    std::fs::write(&nar_file, &nar).unwrap();
    std::fs::write(&info_file, info.render()).unwrap();
    for (file, path) in [
        (&nar_file, format!("/{}", info.url)),
        (&info_file, format!("/{h}.narinfo")),
    ] {
        let out = curl(&[
            "--cacert",
            ca,
            "--http2",
            "-T",
            file.to_str().unwrap(),
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{response_code}",
            &format!("{}{path}", s.url()),
        ]);
        assert_eq!(stdout(&out), "2 201", "PUT {path}\n{}", s.log());
    }
    let got = dir.join("got.nar");
    let out = curl(&[
        "--cacert",
        ca,
        "--http2",
        "--fail",
        "-o",
        got.to_str().unwrap(),
        &format!("{}/{}", s.url(), info.url),
    ]);
    assert!(out.status.success());
    assert_eq!(std::fs::read(&got).unwrap(), nar);
    let out = curl(&[
        "--cacert",
        ca,
        "--http2",
        "--fail",
        &format!("{}/{h}.narinfo", s.url()),
    ]);
    assert_eq!(stdout(&out), info.render());

    // HEAD, as Nix asks before uploading a NAR: no body over HTTP/2 (curl rejects
    // DATA frames in an answer to HEAD), hit and miss.
    for (path, code, length) in [
        (format!("/{}", info.url), "200", nar.len().to_string()),
        (
            format!("/{}.narinfo", store_hash("absent")),
            "404",
            String::new(),
        ),
    ] {
        let out = curl(&[
            "--cacert",
            ca,
            "--http2",
            "-I",
            "-w",
            "%{http_version} %{response_code}",
            &format!("{}{path}", s.url()),
        ]);
        assert!(out.status.success(), "HEAD {path} over HTTP/2\n{}", s.log());
        let text = stdout(&out);
        assert!(text.ends_with(&format!("2 {code}")), "{text}");
        assert!(
            text.contains(&format!("content-length: {length}")),
            "{text}"
        );
    }

    // 100 narinfo lookups in parallel, as Nix makes them: one connection, HTTP/2.
    let mut args: Vec<String> = [
        "--cacert",
        ca,
        "--http2",
        "--parallel",
        "--parallel-max",
        "100",
        "-w",
        "%{num_connects} %{http_version} %{response_code}\n",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    for i in 0..100 {
        let path = if i == 0 {
            format!("/{h}.narinfo")
        } else {
            format!("/{}.narinfo", store_hash(&format!("missing-{i}")))
        };
        args.extend([
            "-o".into(),
            "/dev/null".into(),
            format!("{}{path}", s.url()),
        ]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = curl(&args);
    assert!(out.status.success());
    let lines: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 100, "{lines:?}");
    let connects: u32 = lines
        .iter()
        .map(|l| l.split(' ').next().unwrap().parse::<u32>().unwrap())
        .sum();
    assert_eq!(connects, 1, "one connection for 100 lookups: {lines:?}");
    assert!(lines
        .iter()
        .all(|l| l.ends_with(" 2 404") || l.ends_with(" 2 200")));
    assert_eq!(lines.iter().filter(|l| l.ends_with(" 200")).count(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pkcs8_sec1_and_pkcs1_keys_are_accepted() {
    let dir = cert_dir();
    for (i, format) in [KeyFormat::Pkcs8Ec, KeyFormat::Sec1Ec, KeyFormat::Pkcs1Rsa]
        .into_iter()
        .enumerate()
    {
        let cert = TestCert::generate(&dir, &format!("key-format-{i}"), format);
        let s = ServerBuilder::new().tls(&cert).start();
        for (alpn, expect) in [
            (&[&b"h2"[..], b"http/1.1"][..], &b"h2"[..]),
            (&[&b"http/1.1"[..]][..], b"http/1.1"),
        ] {
            let conn = tls_connect(s.addr, alpn)
                .unwrap_or_else(|e| panic!("{format:?}: {e}\n{}", s.log()));
            assert_eq!(conn.peer_cert(), cert.der(), "{format:?}");
            assert_eq!(conn.alpn().as_deref(), Some(expect), "{format:?}");
        }
        // No ALPN at all: HTTP/1.1.
        let mut conn = tls_connect(s.addr, &[]).unwrap();
        assert_eq!(conn.alpn(), None);
        let r = conn
            .request(b"GET /nix-cache-info HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        assert_eq!(r.status, 200, "{format:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

const GET_INFO: &[u8] = b"GET /nix-cache-info HTTP/1.1\r\nHost: localhost\r\n\r\n";

/// The certificate a new connection is presented (and that it serves requests).
fn presented(s: &Server) -> Vec<u8> {
    let mut conn = tls_connect(s.addr, &[b"http/1.1"]).expect("TLS handshake");
    assert_eq!(conn.request(GET_INFO).unwrap().status, 200);
    conn.peer_cert()
}

fn sighup(s: &Server) {
    let ok = Command::new("kill")
        .args(["-HUP", &s.pid().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

#[test]
fn sighup_reloads_and_a_broken_replacement_keeps_the_old_certificate() {
    let dir = cert_dir();
    let live = TestCert::generate(&dir, "live", KeyFormat::Pkcs8Ec);
    let a = TestCert::generate(&dir, "cert-a", KeyFormat::Pkcs8Ec);
    let b = TestCert::generate(&dir, "cert-b", KeyFormat::Pkcs1Rsa);
    a.copy_over(&live);
    let s = ServerBuilder::new().tls(&live).start();
    let mut old = tls_connect(s.addr, &[b"http/1.1"]).unwrap();
    assert_eq!(old.peer_cert(), a.der());
    assert_eq!(old.request(GET_INFO).unwrap().status, 200);

    b.copy_over(&live);
    sighup(&s);
    assert!(
        eventually(Duration::from_secs(10), || presented(&s) == b.der()),
        "new connections get B after SIGHUP:\n{}",
        s.log()
    );
    assert!(
        eventually(Duration::from_secs(5), || s
            .log()
            .contains("TLS certificate reloaded (SIGHUP)")),
        "{}",
        s.log()
    );
    // The connection made before keeps working.
    assert_eq!(old.request(GET_INFO).unwrap().status, 200);
    assert_eq!(old.peer_cert(), a.der());

    // Broken replacements: garbage key, then A's certificate with B's key. Each is
    // refused with a warning and B stays.
    let warning = "TLS certificate not reloaded (SIGHUP), still serving the previous one";
    std::fs::write(
        &live.key,
        "-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    sighup(&s);
    assert!(
        eventually(Duration::from_secs(10), || count(&s.log(), warning) >= 1),
        "{}",
        s.log()
    );
    assert!(s.log().contains("NIX_STORED_TLS_KEY"), "{}", s.log());
    assert_eq!(presented(&s), b.der());

    std::fs::copy(&b.key, &live.key).unwrap();
    std::fs::copy(&a.cert, &live.cert).unwrap();
    sighup(&s);
    assert!(
        eventually(Duration::from_secs(10), || count(&s.log(), warning) >= 2),
        "{}",
        s.log()
    );
    assert!(s
        .log()
        .contains("is not the private key of the certificate"));
    assert_eq!(presented(&s), b.der());
    assert!(s.pid() != 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn changed_files_are_reloaded_without_a_signal() {
    let dir = cert_dir();
    let a = TestCert::generate(&dir, "cert-a", KeyFormat::Pkcs8Ec);
    let b = TestCert::generate(&dir, "cert-b", KeyFormat::Sec1Ec);
    // As certbot and Kubernetes do: the configured paths are symlinks, swapped by rename.
    let live = TestCert {
        cert: dir.join("live.crt"),
        key: dir.join("live.key"),
    };
    let link = |target: &TestCert| {
        for (from, to) in [(&target.cert, &live.cert), (&target.key, &live.key)] {
            let tmp = to.with_extension("tmp");
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(from, &tmp).unwrap();
            std::fs::rename(&tmp, to).unwrap();
        }
    };
    link(&a);
    let s = ServerBuilder::new().tls(&live).start();
    assert_eq!(presented(&s), a.der());
    link(&b);
    assert!(
        eventually(Duration::from_secs(20), || presented(&s) == b.der()),
        "B is served once the links point at it:\n{}",
        s.log()
    );
    // Info lines are written in batches, at most 50 ms apart.
    assert!(
        eventually(Duration::from_secs(5), || s
            .log()
            .contains("TLS certificate reloaded (files changed)")),
        "{}",
        s.log()
    );
    // And a target rewritten in place.
    a.copy_over(&b);
    assert!(
        eventually(Duration::from_secs(20), || presented(&s) == a.der()),
        "{}",
        s.log()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn idle_tls_clients_are_disconnected() {
    let dir = cert_dir();
    let cert = TestCert::generate(&dir, "idle", KeyFormat::Pkcs8Ec);
    let s = ServerBuilder::new().tls(&cert).start();
    let addr = s.addr;
    // No ClientHello at all: the handshake timeout (10 s).
    let silent = std::thread::spawn(move || {
        let started = Instant::now();
        let mut sock = connect(addr);
        sock.set_read_timeout(Some(Duration::from_secs(40)))
            .unwrap();
        let mut buf = [0u8; 16];
        let n = std::io::Read::read(&mut sock, &mut buf);
        assert!(
            matches!(n, Ok(0))
                || n.as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "{n:?}"
        );
        started.elapsed()
    });
    // A handshake, then nothing: no HTTP/1.1 request headers, no HTTP/2 preface
    // (closed after the 30 s header timeout).
    let idle = |alpn: &'static [u8]| {
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut conn = tls_connect(addr, &[alpn]).unwrap();
            assert_eq!(conn.alpn().as_deref(), Some(alpn));
            conn.wait_for_close(Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("{}: {e}", String::from_utf8_lossy(alpn)));
            started.elapsed()
        })
    };
    let h1 = idle(b"http/1.1");
    let h2 = idle(b"h2");
    let silent = silent.join().unwrap();
    assert!(silent < Duration::from_secs(30), "{silent:?}");
    for t in [h1, h2] {
        let t = t.join().unwrap();
        assert!(t < Duration::from_secs(55), "{t:?}");
    }
    // Still serving.
    assert_eq!(presented(&s), cert.der());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigterm_closes_idle_tls_connections_and_exits() {
    let dir = cert_dir();
    let cert = TestCert::generate(&dir, "term", KeyFormat::Pkcs8Ec);
    let mut s = ServerBuilder::new()
        .tls(&cert)
        .env("NIX_STORED_SHUTDOWN_TIMEOUT", "25")
        .start();
    let mut conn = tls_connect(s.addr, &[b"http/1.1"]).unwrap();
    assert_eq!(conn.request(GET_INFO).unwrap().status, 200);
    let started = Instant::now();
    s.sigterm();
    conn.wait_for_close(Duration::from_secs(20))
        .expect("the idle keep-alive connection is closed at shutdown");
    let status = s.wait();
    assert_eq!(status.code(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "did not wait for the grace period: {:?}",
        started.elapsed()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serves_https_on_the_socket_systemd_passes() {
    let dir = cert_dir();
    let cert = TestCert::generate(&dir, "activated", KeyFormat::Pkcs8Ec);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut cmd = socket_activated(&listener);
    cmd.env("NIX_STORED_PATH", dir.join("store"))
        .env("NIX_STORED_TLS_CERT", &cert.cert)
        .env("NIX_STORED_TLS_KEY", &cert.key);
    let child = cmd.spawn().unwrap();
    drop(listener);
    let served = eventually(Duration::from_secs(20), || {
        tls_connect(addr, &[b"h2", b"http/1.1"])
            .is_ok_and(|c| c.peer_cert() == cert.der() && c.alpn().as_deref() == Some(b"h2"))
    });
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(served, "TLS on the passed socket:\n{log}");
    assert!(
        log.contains(&format!(
            "listening on https://{addr} (socket passed by systemd"
        )),
        "{log}"
    );
    assert_eq!(out.status.code(), Some(0), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_certificates_and_keys_stop_the_server_at_start() {
    let dir = cert_dir();
    let a = TestCert::generate(&dir, "cert-a", KeyFormat::Pkcs8Ec);
    let b = TestCert::generate(&dir, "cert-b", KeyFormat::Pkcs8Ec);
    let cert = a.cert.to_str().unwrap();
    let key = a.key.to_str().unwrap();

    let line = refuses(
        "cert without key",
        ServerBuilder::new().env("NIX_STORED_TLS_CERT", cert),
    );
    assert!(line.contains("NIX_STORED_TLS_KEY"), "{line}");
    let line = refuses(
        "key without cert",
        ServerBuilder::new().env("NIX_STORED_TLS_KEY", key),
    );
    assert!(line.contains("NIX_STORED_TLS_CERT"), "{line}");

    let missing = dir.join("missing.pem");
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "hello, I am not PEM\n").unwrap();
    // (what, certificate file, key file, what the one error line must say)
    let pairs: [(&str, &PathBuf, &PathBuf, &[&str]); 6] = [
        (
            "missing certificate file",
            &missing,
            &a.key,
            &["cannot read", "missing.pem"],
        ),
        (
            "missing key file",
            &a.cert,
            &missing,
            &["NIX_STORED_TLS_KEY", "cannot read"],
        ),
        (
            "garbage certificate",
            &garbage,
            &a.key,
            &["NIX_STORED_TLS_CERT", "no CERTIFICATE"],
        ),
        (
            "garbage key",
            &a.cert,
            &garbage,
            &["NIX_STORED_TLS_KEY", "private key"],
        ),
        (
            "certificate given as the key",
            &a.cert,
            &a.cert,
            &["NIX_STORED_TLS_KEY"],
        ),
        (
            "key of another certificate",
            &a.cert,
            &b.key,
            &["is not the private key of the certificate"],
        ),
    ];
    for (what, cert, key, says) in pairs {
        let line = refuses(
            what,
            ServerBuilder::new().tls(&TestCert {
                cert: cert.clone(),
                key: key.clone(),
            }),
        );
        assert!(says.iter().all(|s| line.contains(s)), "{what}: {line}");
    }

    let encrypted = dir.join("encrypted.key");
    let out = Command::new("openssl")
        .args([
            "pkcs8",
            "-topk8",
            "-v2",
            "aes-256-cbc",
            "-passout",
            "pass:secret",
            "-in",
            key,
            "-out",
        ])
        .arg(&encrypted)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = refuses(
        "encrypted key",
        ServerBuilder::new().tls(&TestCert {
            cert: a.cert.clone(),
            key: encrypted,
        }),
    );
    assert!(line.contains("unencrypted"), "{line}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// An upload refused before its body is read (401, 413) reaches curl as that status
/// over HTTP/2, not as a reset stream ("Stream error in the HTTP/2 framing layer",
/// which makes Nix retry and hide the reason).
#[test]
fn uploads_refused_early_get_their_status_over_http2() {
    let dir = cert_dir();
    let cert = TestCert::generate(&dir, "refused", KeyFormat::Pkcs8Ec);
    let s = ServerBuilder::new()
        .tls(&cert)
        .env("NIX_STORED_USER_WRITE", "writer")
        .env("NIX_STORED_USER_WRITE_PASS", "w-secret")
        .env("NIX_STORED_MAX_UPLOAD_SIZE", "1M")
        .start();
    let ca = cert.cert.to_str().unwrap();
    let nar = nar_of(&vec![7u8; 4 << 20]);
    let file = dir.join("big.nar");
    std::fs::write(&file, &nar).unwrap();
    let url = format!("{}/nar/{}.nar", s.url(), nix32_sha256(&nar));
    for (what, user, code) in [
        ("no credentials", None, "401"),
        ("too large", Some("writer:w-secret"), "413"),
    ] {
        for _ in 0..3 {
            let mut args = vec![
                "--cacert",
                ca,
                "--http2",
                "-T",
                file.to_str().unwrap(),
                "-o",
                "/dev/null",
                "-w",
                "%{http_version} %{response_code}",
            ];
            if let Some(u) = user {
                args.extend(["-u", u]);
            }
            args.push(&url);
            let out = curl(&args);
            assert!(out.status.success(), "{what}: curl failed\n{}", s.log());
            assert_eq!(stdout(&out), format!("2 {code}"), "{what}");
        }
    }
    assert_eq!(files_below(&s.dir), vec!["nix-cache-info"]);
    // The connection and the server are fine afterwards.
    assert_eq!(presented(&s), cert.der());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A refused client does not keep its HTTP/2 connection either: HTTP/2 has no
/// `Connection: close`, the server sends GOAWAY after a 401 or 403, so the client's
/// next request needs a new connection. With the right credentials, one connection
/// serves them all.
#[test]
fn http2_connections_end_after_a_refusal() {
    let dir = cert_dir();
    let cert = TestCert::generate(&dir, "goaway", KeyFormat::Pkcs8Ec);
    let s = ServerBuilder::new()
        .tls(&cert)
        .env("NIX_STORED_USER_READ", "reader")
        .env("NIX_STORED_USER_READ_PASS", "r-secret")
        .start();
    let ca = cert.cert.to_str().unwrap();
    let url = format!("{}/nix-cache-info", s.url());
    let connects = |user: Option<&str>| {
        // Spaced out (4 per second), so that the GOAWAY arrives before the next
        // request would reuse the connection.
        let mut args = vec![
            "--cacert",
            ca,
            "--http2",
            "--rate",
            "4/s",
            "-w",
            "%{num_connects} %{http_version} %{response_code}\n",
        ];
        if let Some(u) = user {
            args.extend(["-u", u]);
        }
        for _ in 0..3 {
            args.extend(["-o", "/dev/null", url.as_str()]);
        }
        let out = curl(&args);
        assert!(out.status.success(), "curl failed\n{}", s.log());
        stdout(&out)
    };
    let refused = connects(None);
    let served = connects(Some("reader:r-secret"));
    assert_eq!(refused, "1 2 401\n1 2 401\n1 2 401\n", "{}", s.log());
    assert_eq!(served, "1 2 200\n0 2 200\n0 2 200\n");
    assert!(!s.log().contains("panicked"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Over HTTPS too, a connection over its address's limit gets an answer (503 with
/// Retry-After), over HTTP/2 and HTTP/1.1, instead of a reset.
#[test]
fn connections_over_the_address_limit_are_answered_over_tls() {
    let dir = cert_dir();
    let cert = TestCert::generate(&dir, "over-limit", KeyFormat::Pkcs8Ec);
    let s = ServerBuilder::new()
        .tls(&cert)
        .env("NIX_STORED_MAX_CONNECTIONS_PER_ADDRESS", "1")
        .start();
    let ca = cert.cert.to_str().unwrap();
    let url = format!("{}/nix-cache-info", s.url());
    // The address's one connection, held (accepted first: the backlog is in order).
    let held = connect(s.addr);
    for flag in ["--http2", "--http1.1"] {
        let out = curl(&[
            "--cacert",
            ca,
            flag,
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{response_code}",
            &url,
        ]);
        assert!(out.status.success(), "curl {flag}\n{}", s.log());
        let text = stdout(&out).to_ascii_lowercase();
        assert!(text.ends_with(" 503"), "{flag}: {text}");
        assert!(text.contains("retry-after: 2"), "{flag}: {text}");
    }
    drop(held);
    assert!(eventually(Duration::from_secs(10), || {
        let out = curl(&[
            "--cacert",
            ca,
            "-o",
            "/dev/null",
            "-w",
            "%{response_code}",
            &url,
        ]);
        stdout(&out) == "200"
    }));
    let _ = std::fs::remove_dir_all(&dir);
}
