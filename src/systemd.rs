//! The two systemd protocols a hardened service uses: readiness notification
//! (`Type=notify`, `sd_notify(3)`) and socket activation (`sd_listen_fds(3)`).
//! Both are a few lines of the documented wire format, so no crate is needed.

use std::os::fd::FromRawFd;

/// The first file descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: i32 = 3;

/// Tells the service manager something (`READY=1`, `STOPPING=1`) when it asked to be
/// told (`NOTIFY_SOCKET` is set); does nothing otherwise.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&path, state) {
        tracing::warn!("cannot notify the service manager ({state}): {e}");
    }
}

fn send(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let bytes = path.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        // A socket in the abstract namespace.
        Some(name) => {
            #[cfg(target_os = "linux")]
            {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name)?
            }
            #[cfg(not(target_os = "linux"))]
            {
                let _ = name;
                return Err(std::io::Error::other("abstract sockets need Linux"));
            }
        }
        None => SocketAddr::from_pathname(std::path::Path::new(path))?,
    };
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

/// The listening socket systemd passed to this process (`ListenStream=` in a
/// `.socket` unit), if any. Only the first one is used.
pub fn inherited_listener() -> Result<Option<std::net::TcpListener>, String> {
    let for_us = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<i32>().ok())
        .unwrap_or(0);
    if !for_us || count < 1 {
        return Ok(None);
    }
    if count > 1 {
        tracing::warn!("systemd passed {count} sockets; serving on the first only");
    }
    // SAFETY: systemd's protocol guarantees that, when LISTEN_PID is this process,
    // descriptors 3..3+LISTEN_FDS are open sockets handed to it and to no one else.
    let listener = unsafe { std::net::TcpListener::from_raw_fd(LISTEN_FDS_START) };
    // A descriptor that is not a TCP socket (e.g. a unix socket unit) fails here.
    listener
        .local_addr()
        .map_err(|e| format!("the socket passed by systemd is not a TCP socket: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot use the socket passed by systemd: {e}"))?;
    Ok(Some(listener))
}
