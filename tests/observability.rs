//! What an operator watches: Prometheus metrics, health and readiness probes, JSON
//! logs, and the OpenAPI document.

mod common;

use std::time::Duration;

use common::*;

const STORE: &str = "/nix/store";

/// The value of the sample `series` (name with labels, exactly as rendered).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn metrics(s: &Server) -> String {
    let r = get(s, "/metrics");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    r.text()
}

#[test]
fn metrics_count_requests_bytes_rejections_and_stored_objects() {
    let dir = temp_dir("metrics");
    // Something stored before the start is counted by the initial walk.
    std::fs::create_dir_all(dir.join("log")).unwrap();
    std::fs::write(
        dir.join(format!("log/{}-a.drv", store_hash("pre"))),
        vec![b'x'; 1000],
    )
    .unwrap();
    let s = ServerBuilder::new().dir(&dir).start();
    assert!(eventually(Duration::from_secs(20), || {
        sample(&metrics(&s), "nix_stored_stored_objects").is_some()
    }));
    let before = metrics(&s);
    // nix-cache-info (written at start) and the log.
    assert_eq!(sample(&before, "nix_stored_stored_objects"), Some(2.0));
    let bytes0 = sample(&before, "nix_stored_stored_bytes").unwrap();
    assert!(bytes0 >= 1000.0, "{before}");

    let miss = store_hash("missing");
    for _ in 0..3 {
        assert_eq!(get(&s, &format!("/{miss}.narinfo")).status, 404);
    }
    assert_eq!(head(&s, &format!("/{miss}.narinfo")).status, 404);
    let nar = nar_of(b"metrics");
    let fh = nix32_sha256(&nar);
    assert_eq!(put(&s, &format!("/nar/{fh}.nar"), &nar).status, 201);
    assert_eq!(get(&s, &format!("/nar/{fh}.nar")).body, nar);
    // A NAR whose bytes do not hash to its name, and a narinfo that does not parse.
    let other = nix32_sha256(b"other");
    assert_eq!(put(&s, &format!("/nar/{other}.nar"), &nar).status, 400);
    assert_eq!(put(&s, &format!("/{miss}.narinfo"), b"garbage").status, 400);

    let text = metrics(&s);
    let n = |series: &str| sample(&text, series).unwrap_or(0.0);
    assert_eq!(
        n(r#"nix_stored_requests_total{route="narinfo",method="GET",status="404"}"#),
        3.0,
        "{text}"
    );
    assert_eq!(
        n(r#"nix_stored_requests_total{route="narinfo",method="HEAD",status="404"}"#),
        1.0
    );
    assert_eq!(
        n(r#"nix_stored_requests_total{route="nar",method="PUT",status="201"}"#),
        1.0
    );
    assert_eq!(
        n(r#"nix_stored_requests_total{route="nar",method="PUT",status="400"}"#),
        1.0
    );
    assert_eq!(
        n(r#"nix_stored_uploads_rejected_total{reason="verification"}"#),
        2.0
    );
    assert_eq!(
        n(r#"nix_stored_request_duration_seconds_count{route="narinfo"}"#),
        5.0
    );
    assert_eq!(
        n(r#"nix_stored_request_duration_seconds_bucket{route="narinfo",le="+Inf"}"#),
        5.0
    );
    assert!(n(r#"nix_stored_received_bytes_total{route="nar"}"#) >= 2.0 * nar.len() as f64);
    assert!(n(r#"nix_stored_sent_bytes_total{route="nar"}"#) >= nar.len() as f64);
    assert_eq!(n("nix_stored_stored_objects"), 3.0);
    assert_eq!(n("nix_stored_stored_bytes"), bytes0 + nar.len() as f64);
    // The scrape itself is in flight while it renders.
    assert_eq!(n("nix_stored_requests_in_flight"), 1.0);
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn metrics_are_protected_like_reads_and_can_be_turned_off() {
    let s = ServerBuilder::new()
        .env("NIX_STORED_USER_READ", "reader")
        .env("NIX_STORED_USER_READ_PASS", "read-secret")
        .start();
    let anon = get(&s, "/metrics");
    assert_eq!(anon.status, 401);
    let auth = basic("reader", "read-secret");
    let ok = send(s.addr, "GET", "/metrics", &[("Authorization", &auth)], b"");
    assert_eq!(ok.status, 200);
    assert!(ok
        .text()
        .contains("# TYPE nix_stored_requests_total counter"));
    let wrong = send(
        s.addr,
        "GET",
        "/metrics",
        &[("Authorization", &basic("reader", "nope"))],
        b"",
    );
    assert_eq!(wrong.status, 401);
    // Probes need no credentials; they reveal nothing about the cache.
    assert_eq!(get(&s, "/healthz").status, 200);
    assert_eq!(get(&s, "/readyz").status, 200);
    // Read-only resources.
    let r = send(s.addr, "PUT", "/metrics", &[("Authorization", &auth)], b"x");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    drop(s);

    let off = ServerBuilder::new()
        .env("NIX_STORED_METRICS", "false")
        .start();
    assert_eq!(get(&off, "/metrics").status, 404);
    assert_eq!(get(&off, "/healthz").status, 200);
    let bad = ServerBuilder::new()
        .env("NIX_STORED_METRICS", "maybe")
        .start_expect_failure();
    assert!(bad.1.contains("NIX_STORED_METRICS"), "{}", bad.1);
}

#[test]
fn readiness_follows_the_storage() {
    let s = ServerBuilder::new().start();
    let r = get(&s, "/readyz");
    assert_eq!((r.status, r.text().as_str()), (200, "ready\n"));
    assert_eq!(head(&s, "/healthz").status, 200);
    // The cache directory disappears underneath the server (an unmounted disk).
    std::fs::remove_dir_all(&s.dir).unwrap();
    // A result is reused for about a second, so a probe flood is no storage flood.
    assert!(
        eventually(Duration::from_secs(10), || get(&s, "/readyz").status == 503),
        "readiness never failed"
    );
    let r = get(&s, "/readyz");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.text().lines().count(), 1);
    // The reason is for the operator: the body names the request, not the backend.
    let id = r.header("x-request-id").expect("a request id").to_owned();
    assert!(r.text().starts_with("not ready"), "{}", r.text());
    assert!(r.text().contains(&id), "{}", r.text());
    assert!(!r.text().contains("nix-cache-info"), "{}", r.text());
    // Log lines are written out in batches.
    assert!(
        eventually(Duration::from_secs(10), || s.log().lines().any(|l| {
            l.contains(&format!("request {id} ")) && l.contains("nix-cache-info")
        })),
        "the log has the reason under {id}:\n{}",
        s.log()
    );
    // Liveness does not depend on the storage.
    assert_eq!(get(&s, "/healthz").status, 200);
}

#[test]
fn server_errors_hide_their_cause_from_the_client() {
    let s = ServerBuilder::new().start();
    // Uploads now fail inside the storage (an unmounted disk).
    std::fs::remove_dir_all(&s.dir).unwrap();
    let nar = nar_of(b"into a vanished directory");
    let r = put(&s, &format!("/nar/{}.nar", nix32_sha256(&nar)), &nar);
    assert_eq!(r.status, 500, "{}", r.text());
    let id = r.header("x-request-id").expect("a request id").to_owned();
    let text = r.text();
    assert_eq!(
        text,
        format!("internal server error (request id {id}; the server's log has the details)\n")
    );
    assert!(
        eventually(Duration::from_secs(10), || s.log().lines().any(|l| {
            l.contains(&format!("request {id} ")) && l.contains("ERROR") && l.contains("storage")
        })),
        "the log has the storage error under {id}:\n{}",
        s.log()
    );
}

#[test]
fn json_logs_are_one_object_per_line() {
    let mut s = ServerBuilder::new()
        .env("NIX_STORED_LOG_FORMAT", "json")
        .start();
    let miss = store_hash("json");
    assert_eq!(get(&s, &format!("/{miss}.narinfo")).status, 404);
    let odd = "/we\"ird\\path";
    assert_eq!(
        raw_request(
            s.addr,
            format!("GET {odd} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()
        )
        .status,
        404
    );
    assert_eq!(s.terminate().code(), Some(0));
    let log = s.log();
    let mut requests = Vec::new();
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        if v["message"] == "request" {
            requests.push(v);
        }
    }
    let hit = requests
        .iter()
        .find(|v| v["path"] == format!("/{miss}.narinfo"))
        .unwrap_or_else(|| panic!("no request line in\n{log}"));
    assert_eq!(hit["method"], "GET");
    assert_eq!(hit["status"], 404);
    assert_eq!(hit["user"], "-");
    assert!(hit["duration_us"].is_u64() && hit["request_id"].is_string());
    assert!(
        requests.iter().any(|v| v["path"] == odd),
        "escaped path logged:\n{log}"
    );
    // The lifecycle lines are JSON too.
    assert!(log.contains("\"message\":\"listening on http://"), "{log}");
    let bad = ServerBuilder::new()
        .env("NIX_STORED_LOG_FORMAT", "xml")
        .start_expect_failure();
    assert!(bad.1.contains("NIX_STORED_LOG_FORMAT"), "{}", bad.1);
}

#[test]
fn openapi_document_is_served_and_describes_every_object() {
    let s = ServerBuilder::new().start();
    let r = get(&s, "/openapi.json");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let doc: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(doc["openapi"], "3.0.3");
    for path in [
        "/nix-cache-info",
        "/{hash}.narinfo",
        "/{hash}.ls",
        "/nar/{file}",
        "/log/{drv}",
        "/debuginfo/{id}",
        "/realisations/{id}",
        "/metrics",
        "/healthz",
        "/readyz",
        "/openapi.json",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is documented");
    }
    // The narinfo example in the document really is a narinfo key on this server.
    let h = doc["paths"]["/{hash}.narinfo"]["parameters"][0]["example"]
        .as_str()
        .unwrap();
    let info = NarInfo::uncompressed(STORE, h, "x", &nar_of(b"doc"), &[]);
    let nar = nar_of(b"doc");
    assert_eq!(
        put(&s, &format!("/nar/{}.nar", nix32_sha256(&nar)), &nar).status,
        201
    );
    assert_eq!(
        put(&s, &format!("/{h}.narinfo"), info.render().as_bytes()).status,
        201
    );
}

#[test]
fn a_storage_that_denies_access_is_502_without_details() {
    if fs_only("chattr on the cache directory") {
        return;
    }
    let s = ServerBuilder::new().start();
    let tmp = s.dir.join(".tmp");
    // Immutable: even root cannot create the upload's temporary file there (EPERM).
    let chattr = |flag: &str| {
        std::process::Command::new("chattr")
            .arg(flag)
            .arg(&tmp)
            .status()
            .is_ok_and(|st| st.success())
    };
    if !chattr("+i") {
        eprintln!("skipped: chattr +i is not supported where the test's cache lives");
        return;
    }
    let nar = nar_of(b"into an immutable directory");
    let r = put(&s, &format!("/nar/{}.nar", nix32_sha256(&nar)), &nar);
    assert!(chattr("-i"), "chattr -i");
    assert_eq!(r.status, 502, "{}", r.text());
    let id = r.header("x-request-id").unwrap().to_owned();
    assert_eq!(
        r.text(),
        format!("the cache storage denied the server access (request id {id}; the server's log has the details)\n")
    );
    assert!(
        eventually(Duration::from_secs(10), || s.log().lines().any(|l| {
            l.contains(&format!("request {id} ")) && l.contains("denied access")
        })),
        "the log has the cause under {id}:\n{}",
        s.log()
    );
    // Access restored: the same upload goes through.
    let r = put(&s, &format!("/nar/{}.nar", nix32_sha256(&nar)), &nar);
    assert_eq!(r.status, 201, "{}", r.text());
}
