//! Following the top level of the directory with inotify, so that objects written by
//! others (`nix copy --to file://…`, rsync, another tool) are known at once.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use inotify::{EventMask, Inotify, WatchMask};
use tokio::sync::mpsc::Sender;

use super::beneath::{cstring, is_symlink_at, Root};
use crate::storage::TopLevelEvent;

/// The kind of network, cluster or userspace filesystem `root` is on, if it is one:
/// there, writes by other machines (or a FUSE daemon) never reach inotify.
pub fn shared_filesystem(root: &File) -> std::io::Result<Option<&'static str>> {
    // SAFETY: an open descriptor and a writable statfs buffer that the call fills in.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(root.as_raw_fd(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Magic numbers from statfs(2); truncated like the kernel's 32-bit f_type.
    Ok(match st.f_type as u32 {
        0x6969 => Some("NFS"),
        0xFF53_4D42 | 0xFE53_4D42 | 0x517B => Some("SMB/CIFS"),
        0x6573_5546 => Some("FUSE"),
        0x0102_1997 => Some("9P"),
        0x00C3_6400 => Some("CephFS"),
        0x0BD0_0BD0 => Some("Lustre"),
        0x4750_4653 => Some("GPFS"),
        0x5346_414F | 0x6B41_4653 => Some("AFS"),
        // Cluster filesystems: other nodes write to the same volume.
        0x0116_1970 => Some("GFS2"),
        0x7461_636F => Some("OCFS2"),
        0x1983_0326 => Some("BeeGFS"),
        _ => None,
    })
}

/// Installs the watch now (so nothing written after this returns is missed) and
/// reads its events on a thread of its own for as long as `sink` is open.
pub fn start(root: Arc<Root>, sink: Sender<TopLevelEvent>) -> std::io::Result<()> {
    let mut inotify = Inotify::init()?;
    // A file created in place, or renamed into place (how both nix-stored and
    // Nix's `file://` store make objects appear atomically). The root's path is
    // canonical (resolved at start): DONT_FOLLOW only matters if it was replaced by
    // a symlink since, and then the link is not followed.
    // Removals, renames away and writes in place change what a name holds: the
    // narinfo cache drops what it holds for them.
    inotify.watches().add(
        root.path(),
        WatchMask::CREATE
            | WatchMask::MOVED_TO
            | WatchMask::DELETE
            | WatchMask::MOVED_FROM
            | WatchMask::CLOSE_WRITE
            | WatchMask::DONT_FOLLOW
            | WatchMask::ONLYDIR,
    )?;
    std::thread::Builder::new()
        .name("fs-watch".into())
        .spawn(move || {
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                let events = match inotify.read_events_blocking(&mut buffer) {
                    Ok(events) => events,
                    Err(e) => {
                        tracing::warn!("watching the cache directory failed: {e}");
                        let _ = sink.blocking_send(TopLevelEvent::Lost);
                        return;
                    }
                };
                let mut added = Vec::new();
                let mut changed = Vec::new();
                let mut lost = false;
                let mut gone = false;
                for event in events {
                    if event.mask.contains(EventMask::Q_OVERFLOW) {
                        lost = true;
                    } else if event.mask.contains(EventMask::IGNORED) {
                        // The directory was removed or unmounted: no more news.
                        gone = true;
                    } else if event.mask.intersects(
                        EventMask::DELETE | EventMask::MOVED_FROM | EventMask::CLOSE_WRITE,
                    ) {
                        if let Some(name) = event.name.and_then(|n| n.to_str()) {
                            changed.push(name.to_owned());
                        }
                    } else if let Some(name) = event.name.and_then(|n| n.to_str()) {
                        // A symlink is no object: reading it answers 404; whatever the
                        // name held before is gone all the same.
                        if cstring(name.as_bytes()).is_ok_and(|c| !is_symlink_at(root.fd(), &c)) {
                            added.push(name.to_owned());
                        } else {
                            changed.push(name.to_owned());
                        }
                    }
                }
                if !added.is_empty() && sink.blocking_send(TopLevelEvent::Added(added)).is_err() {
                    return;
                }
                if !changed.is_empty()
                    && sink.blocking_send(TopLevelEvent::Changed(changed)).is_err()
                {
                    return;
                }
                if (lost || gone) && sink.blocking_send(TopLevelEvent::Lost).is_err() {
                    return;
                }
                if gone {
                    tracing::warn!("the cache directory is no longer watched");
                    return;
                }
            }
        })?;
    Ok(())
}
