//! Whole-directory work: counting, listing and removing objects. Runs off the request
//! path (at start, and in retention passes).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::ErrorKind;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::beneath::{self, cstring, is_symlink_refusal, Root};
use super::dir::{file_meta_at, for_each_entry, Kind};
use super::TMP_DIR;
use crate::storage::{Listed, Result, StorageError, Usage};

/// Names per batch when listing: a directory of a million narinfos is sent in steps
/// that keep memory flat.
pub const LIST_BATCH: usize = 4096;

/// The walk stats every file of the cache: at a million paths that is seconds of CPU,
/// and at the default priority it halved the narinfo hit rate of the first seconds
/// after start. `SCHED_IDLE` runs the calling thread only when the core has nothing
/// else to do. Failing to set it only costs speed.
fn idle_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: applies to the calling thread (pid 0) with a valid parameter.
    let _ = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
}

/// Runs `job` on its own idle-priority thread (not the blocking pool, whose threads
/// would keep the lowered priority).
async fn on_idle_thread<T: Send + 'static>(
    name: &str,
    job: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            idle_priority();
            let _ = tx.send(job());
        })
        .map_err(StorageError::from_io)?;
    rx.await
        .map_err(|e| std::io::Error::other(e.to_string()))?
        .map_err(StorageError::from_io)
}

/// Counts the regular files below the root and their sizes.
pub async fn usage(root: Arc<Root>) -> Result<Usage> {
    on_idle_thread("usage-walk", move || {
        let mut usage = Usage::default();
        for_each_file(&root, "", true, |_, size, _| {
            usage.objects += 1;
            usage.bytes += size;
            true
        })?;
        Ok(usage)
    })
    .await
}

/// Sends every object directly in `folder` (relative to the root) to `sink`, in
/// batches.
pub async fn list(root: Arc<Root>, folder: String, sink: mpsc::Sender<Vec<Listed>>) -> Result<()> {
    on_idle_thread("list-walk", move || {
        let mut batch = Vec::with_capacity(LIST_BATCH);
        let mut open = true;
        for_each_file(&root, &folder, false, |key, size, modified| {
            batch.push(Listed {
                key,
                size,
                modified,
            });
            if batch.len() == LIST_BATCH {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(LIST_BATCH));
                open = sink.blocking_send(full).is_ok();
            }
            open
        })?;
        if open && !batch.is_empty() {
            let _ = sink.blocking_send(batch);
        }
        Ok(())
    })
    .await
}

/// Calls `f` with the key, size and modification time of every regular file in
/// `start` (and, when `recursive`, its subfolders), leaving out pending uploads, until
/// it returns `false`. A missing `start` holds nothing. Symlinks are neither
/// listed nor followed; each directory is opened beneath the root by its relative
/// name, so no descriptors pile up. Names that are not UTF-8 hold no cache objects.
fn for_each_file(
    root: &Root,
    start: &str,
    recursive: bool,
    mut f: impl FnMut(String, u64, u64) -> bool,
) -> std::io::Result<()> {
    let mut dirs = vec![start.to_owned()];
    let mut going = true;
    while let Some(rel) = dirs.pop() {
        if !going {
            break;
        }
        let dir = if rel.is_empty() {
            root.fd().try_clone()?
        } else {
            match root.open(&rel, libc::O_RDONLY | libc::O_DIRECTORY) {
                Ok(dir) => dir,
                // Removed or replaced by a symlink since it was listed.
                Err(e) if e.kind() == ErrorKind::NotFound || is_symlink_refusal(&e) => continue,
                Err(e) => return Err(e),
            }
        };
        for_each_entry(&dir, |name, kind| {
            let Ok(name) = name.to_str() else {
                return Ok(true);
            };
            let key = if rel.is_empty() {
                name.to_owned()
            } else {
                format!("{rel}/{name}")
            };
            match kind {
                Kind::Dir if recursive && key != TMP_DIR => dirs.push(key),
                Kind::File => {
                    // A file removed since it was listed is simply not listed.
                    if let Ok(Some((size, modified))) =
                        file_meta_at(&dir, &cstring(name.as_bytes())?)
                    {
                        going = f(key, size, modified);
                    }
                }
                _ => {}
            }
            Ok(going)
        })?;
    }
    Ok(())
}

/// Unlinks `keys` (absent ones are skipped), then syncs every directory touched, so
/// that the removals are on disk when this returns.
pub fn remove(root: &Root, keys: &[String]) -> std::io::Result<()> {
    let mut by_dir: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for key in keys {
        let (dir, name) = key.rsplit_once('/').unwrap_or(("", key));
        by_dir.entry(dir).or_default().push(name);
    }
    for (rel, names) in by_dir {
        let dir: File = if rel.is_empty() {
            root.fd().try_clone()?
        } else {
            match root.open(rel, libc::O_RDONLY | libc::O_DIRECTORY) {
                Ok(dir) => dir,
                Err(e) if e.kind() == ErrorKind::NotFound || is_symlink_refusal(&e) => continue,
                Err(e) => return Err(e),
            }
        };
        for name in names {
            match beneath::unlink_at(&dir, &cstring(name.as_bytes())?, 0) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        dir.sync_all()?;
    }
    Ok(())
}
