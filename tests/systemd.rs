//! The systemd protocols: readiness notification and socket activation.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn notifies_readiness_and_stopping() {
    let dir = temp_dir("notify");
    let sock_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut s = ServerBuilder::new()
        .env("NOTIFY_SOCKET", sock_path.to_str().unwrap())
        .start();
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY=1 within 20 s");
    assert_eq!(&buf[..n], b"READY=1");
    // Ready means serving.
    assert_eq!(get(&s, "/nix-cache-info").status, 200);
    assert_eq!(s.terminate().code(), Some(0));
    let n = sock.recv(&mut buf).expect("STOPPING=1 after SIGTERM");
    assert_eq!(&buf[..n], b"STOPPING=1");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serves_on_the_socket_systemd_passes() {
    let dir = temp_dir("socket-activation");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut cmd = socket_activated(&listener);
    cmd.env("NIX_STORED_PATH", &dir);
    let child = cmd.spawn().unwrap();
    drop(listener);
    let served = eventually(Duration::from_secs(20), || {
        try_raw_request(
            addr,
            b"GET /nix-cache-info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .is_ok_and(|r| r.status == 200)
    });
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(served, "GET on the passed socket:\n{log}");
    assert!(log.contains("socket passed by systemd"), "{log}");
    assert_eq!(out.status.code(), Some(0), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Starts the server on a socket bound to every address, as a `ListenStream=8100`
/// unit passes it, with the configured address left at its loopback default; returns
/// its log after one anonymous upload, and that upload's status.
fn anonymous_upload_on_passed_wildcard_socket(anonymous_writes: Option<&str>) -> (u16, String) {
    let dir = temp_dir("socket-activation-anon");
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut cmd = socket_activated(&listener);
    cmd.env("NIX_STORED_PATH", &dir)
        .env("NIX_STORED_LISTEN_INTERFACE", "127.0.0.1:8100");
    if let Some(v) = anonymous_writes {
        cmd.env("NIX_STORED_ANONYMOUS_WRITES", v);
    }
    let child = cmd.spawn().unwrap();
    drop(listener);
    assert!(eventually(Duration::from_secs(20), || {
        try_raw_request(
            addr,
            b"GET /nix-cache-info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .is_ok_and(|r| r.status == 200)
    }));
    let nar = nar_of(b"anonymous over a passed socket");
    let r = send(
        addr,
        "PUT",
        &format!("/nar/{}.nar", nix32_sha256(&nar)),
        &[],
        &nar,
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (r.status, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_passed_wildcard_socket_takes_no_anonymous_uploads_by_default() {
    // The old rule read "loopback" from NIX_STORED_LISTEN_INTERFACE even when systemd
    // passed a socket listening on every address.
    let (status, log) = anonymous_upload_on_passed_wildcard_socket(None);
    assert_eq!(status, 403, "{log}");
    assert!(log.contains("uploads are refused"), "{log}");
}

#[test]
fn anonymous_writes_on_a_passed_wildcard_socket_warn_with_its_address() {
    let (status, log) = anonymous_upload_on_passed_wildcard_socket(Some("true"));
    assert_eq!(status, 201, "{log}");
    let warning = log
        .lines()
        .find(|l| l.contains("anonymous uploads are on"))
        .unwrap_or_else(|| panic!("no warning about anonymous uploads:\n{log}"));
    assert!(
        warning.contains("0.0.0.0:"),
        "the warning names the socket's address: {warning}"
    );
}
