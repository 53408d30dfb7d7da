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
