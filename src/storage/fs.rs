//! The local directory backend. Its layout is a valid Nix `file://` binary cache.
//!
//! Writes go to `<root>/.tmp/` first (same filesystem, so the final `rename` is atomic),
//! are fsynced, then renamed into place and the directory entry is fsynced too. A crash
//! at any point leaves either the old object or the new one, never a mix, and the
//! leftover temporary files are removed at the next start.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::UNIX_EPOCH;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncSeekExt;
use tokio_util::io::ReaderStream;

use super::{
    ObjectBody, ObjectMeta, ObjectReader, Result, Storage, StorageError, TopLevelEvent, Upload,
};

/// Name of the directory holding uploads in progress. Starts with a dot, which no
/// cache key can, so it is never served.
const TMP_DIR: &str = ".tmp";

/// Read buffer for streaming objects out: big enough to keep syscalls rare, small
/// enough that many parallel downloads stay cheap.
const READ_CHUNK: usize = 256 * 1024;

/// A binary cache in a local directory.
pub struct FsStorage {
    root: PathBuf,
    tmp: PathBuf,
    counter: AtomicU64,
}

impl FsStorage {
    /// Opens (creating it if needed) the cache directory at `root`, checks that it is
    /// writable, removes leftovers of interrupted uploads and writes a `nix-cache-info`
    /// so that the directory is also usable as a `file://` cache.
    pub fn open(root: &Path, store_dir: &str) -> std::io::Result<Self> {
        std::fs::create_dir_all(root)?;
        let root = root.canonicalize()?;
        let tmp = root.join(TMP_DIR);
        match std::fs::remove_dir_all(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::fs::create_dir_all(&tmp)?;
        let probe = tmp.join("write-probe");
        std::fs::write(&probe, b"probe")?;
        std::fs::remove_file(&probe)?;
        let info = root.join("nix-cache-info");
        if !info.exists() {
            let staged = tmp.join("nix-cache-info");
            std::fs::write(&staged, format!("StoreDir: {store_dir}\n"))?;
            std::fs::rename(&staged, &info)?;
        }
        Ok(FsStorage {
            root,
            tmp,
            counter: AtomicU64::new(0),
        })
    }

    fn path_of(&self, key: &str) -> std::io::Result<PathBuf> {
        // Keys are validated upstream; this is the last line of defence against a
        // path that would leave the root.
        let rel = Path::new(key);
        let plain = rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if key.is_empty() || !plain || key.starts_with('.') {
            return Err(std::io::Error::new(
                ErrorKind::InvalidInput,
                format!("refusing storage key {key:?}"),
            ));
        }
        Ok(self.root.join(rel))
    }

    fn temp_path(&self) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.tmp.join(format!("upload-{}-{n}", std::process::id()))
    }
}

fn meta_of(md: &std::fs::Metadata) -> ObjectMeta {
    use std::os::unix::fs::MetadataExt;
    let mtime = md
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    ObjectMeta {
        size: md.len(),
        version: format!("{:x}-{:x}-{:x}", md.ino(), mtime, md.len()),
    }
}

fn not_found_is_none<T>(r: std::io::Result<T>) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        // NotADirectory: a key below something that is a file, i.e. absent too.
        Err(e) if e.kind() == ErrorKind::NotFound || e.raw_os_error() == Some(20) => Ok(None),
        Err(e) => Err(StorageError::from_io(e)),
    }
}

/// Objects up to this size are read whole in the request's own task: one `open`,
/// one `fstat` and one `read` of a file in the page cache take microseconds, far
/// less than a hop to the blocking thread pool. This is the model nginx uses.
const INLINE_READ_MAX: u64 = 64 * 1024;

fn read_inline(mut file: std::fs::File, offset: u64, size: u64) -> std::io::Result<Bytes> {
    use std::io::{Read, Seek};
    if offset > 0 {
        file.seek(std::io::SeekFrom::Start(offset))?;
    }
    // Read exactly the size fstat reported: no extra read() to discover EOF. A file
    // that shrank meanwhile (it cannot: writes are renames) would give an error.
    let mut buf = vec![0; size.saturating_sub(offset) as usize];
    file.read_exact(&mut buf)?;
    Ok(Bytes::from(buf))
}

#[async_trait]
impl Storage for FsStorage {
    async fn stat(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let path = self.path_of(key)?;
        // A single metadata lookup, answered from the dentry cache: cheaper inline
        // than any thread hop (see INLINE_READ_MAX).
        let md = not_found_is_none(std::fs::metadata(path))?;
        Ok(md.filter(|m| m.is_file()).map(|m| meta_of(&m)))
    }

    async fn open(&self, key: &str, offset: u64) -> Result<Option<ObjectReader>> {
        let path = self.path_of(key)?;
        let Some(file) = not_found_is_none(std::fs::File::open(path))? else {
            return Ok(None);
        };
        let md = file.metadata().map_err(StorageError::from_io)?;
        if !md.is_file() {
            return Ok(None);
        }
        let meta = meta_of(&md);
        if md.len() <= INLINE_READ_MAX {
            let bytes = read_inline(file, offset, md.len()).map_err(StorageError::from_io)?;
            return Ok(Some(ObjectReader {
                meta,
                body: ObjectBody::Bytes(bytes),
            }));
        }
        let mut file = tokio::fs::File::from_std(file);
        if offset > 0 {
            file.seek(std::io::SeekFrom::Start(offset))
                .await
                .map_err(StorageError::from_io)?;
        }
        Ok(Some(ObjectReader {
            meta,
            body: ObjectBody::Stream(Box::pin(ReaderStream::with_capacity(file, READ_CHUNK))),
        }))
    }

    async fn begin_upload(&self, key: &str) -> Result<Box<dyn Upload>> {
        let target = self.path_of(key)?;
        let temp = self.temp_path();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(StorageError::from_io)?;
        Ok(Box::new(FsUpload {
            file: Some(file),
            buf: Vec::with_capacity(WRITE_BLOCK),
            temp,
            target,
            committed: false,
        }))
    }

    async fn list_top_level(&self, sink: tokio::sync::mpsc::Sender<Vec<String>>) -> Result<()> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut batch = Vec::with_capacity(LIST_BATCH);
            for entry in std::fs::read_dir(&root)? {
                let entry = entry?;
                // Names that are not UTF-8 are no cache key.
                if let Ok(name) = entry.file_name().into_string() {
                    batch.push(name);
                }
                if batch.len() == LIST_BATCH {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(LIST_BATCH));
                    if sink.blocking_send(full).is_err() {
                        return Ok(());
                    }
                }
            }
            if !batch.is_empty() {
                let _ = sink.blocking_send(batch);
            }
            Ok(())
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?
        .map_err(StorageError::from_io)
    }

    fn watch_top_level(&self, sink: tokio::sync::mpsc::Sender<TopLevelEvent>) -> Result<bool> {
        if let Some(kind) = watch::shared_filesystem(&self.root).map_err(StorageError::from_io)? {
            tracing::info!(
                "{} is on {kind}: other machines may write into it unseen",
                self.root.display()
            );
            return Ok(false);
        }
        watch::start(&self.root, sink).map_err(StorageError::from_io)?;
        Ok(true)
    }

    fn describe(&self) -> String {
        format!("directory {}", self.root.display())
    }
}

/// Names per batch when listing: a directory of a million narinfos is sent in steps
/// that keep memory flat.
const LIST_BATCH: usize = 4096;

/// Following the top level of the directory with inotify, so that objects written by
/// others (`nix copy --to file://…`, rsync, another tool) are known at once.
mod watch {
    use std::path::Path;

    use inotify::{EventMask, Inotify, WatchMask};
    use tokio::sync::mpsc::Sender;

    use super::TopLevelEvent;

    /// The kind of network or userspace filesystem `root` is on, if it is one: there,
    /// writes by other machines (or a FUSE daemon) never reach inotify.
    pub fn shared_filesystem(root: &Path) -> std::io::Result<Option<&'static str>> {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(root.as_os_str().as_bytes())?;
        // SAFETY: `path` is a valid NUL-terminated string and `st` a writable
        // statfs buffer that the call fills in.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statfs(path.as_ptr(), &mut st) } != 0 {
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
            _ => None,
        })
    }

    /// Installs the watch now (so nothing written after this returns is missed) and
    /// reads its events on a thread of its own for as long as `sink` is open.
    pub fn start(root: &Path, sink: Sender<TopLevelEvent>) -> std::io::Result<()> {
        let mut inotify = Inotify::init()?;
        // A file created in place, or renamed into place (how both nix-stored and
        // Nix's `file://` store make objects appear atomically).
        inotify
            .watches()
            .add(root, WatchMask::CREATE | WatchMask::MOVED_TO)?;
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
                    let mut lost = false;
                    let mut gone = false;
                    for event in events {
                        if event.mask.contains(EventMask::Q_OVERFLOW) {
                            lost = true;
                        } else if event.mask.contains(EventMask::IGNORED) {
                            // The directory was removed or unmounted: no more news.
                            gone = true;
                        } else if let Some(name) = event.name.and_then(|n| n.to_str()) {
                            added.push(name.to_owned());
                        }
                    }
                    if !added.is_empty() && sink.blocking_send(TopLevelEvent::Added(added)).is_err()
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
}

/// Request bodies arrive in chunks of a few KiB; writing each one through the
/// blocking pool would cost a thread hop per chunk. Batch them into blocks this big.
const WRITE_BLOCK: usize = 1024 * 1024;

/// An upload staged in `<root>/.tmp/`.
struct FsUpload {
    file: Option<std::fs::File>,
    buf: Vec<u8>,
    temp: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl FsUpload {
    /// Writes the buffered block in the blocking pool.
    async fn flush_block(&mut self) -> Result<()> {
        let mut file = self
            .file
            .take()
            .ok_or_else(|| std::io::Error::other("upload already finished"))?;
        let block = std::mem::replace(&mut self.buf, Vec::with_capacity(WRITE_BLOCK));
        let file = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            file.write_all(&block).map(|()| file)
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?
        .map_err(StorageError::from_io)?;
        self.file = Some(file);
        Ok(())
    }
}

#[async_trait]
impl Upload for FsUpload {
    async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        self.buf.extend_from_slice(chunk);
        if self.buf.len() >= WRITE_BLOCK {
            self.flush_block().await?;
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<bool> {
        if !self.buf.is_empty() {
            self.flush_block().await?;
        }
        let file = self
            .file
            .take()
            .ok_or_else(|| std::io::Error::other("upload already finished"))?;
        let temp = self.temp.clone();
        let target = self.target.clone();
        let created = tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
            file.sync_all()?;
            drop(file);
            let parent = target.parent().unwrap_or(Path::new("/"));
            std::fs::create_dir_all(parent)?;
            let existed = std::fs::symlink_metadata(&target).is_ok();
            std::fs::rename(&temp, &target)?;
            // Make the rename itself durable, not just the file's bytes.
            std::fs::File::open(parent)?.sync_all()?;
            Ok(!existed)
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?
        .map_err(StorageError::from_io)?;
        self.committed = true;
        Ok(created)
    }
}

impl Drop for FsUpload {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: a leftover is also removed at the next start.
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory, removed when the guard drops.
    struct TempRoot(PathBuf);

    impl Drop for TempRoot {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    impl std::ops::Deref for TempRoot {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    fn temp_root(tag: &str) -> TempRoot {
        let dir = std::env::temp_dir().join(format!(
            "nix-stored-fs-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempRoot(dir)
    }

    #[tokio::test]
    async fn uncommitted_upload_leaves_nothing() {
        let root = temp_root("drop");
        let fs = FsStorage::open(&root, "/nix/store").unwrap();
        let mut up = fs.begin_upload("log/x").await.unwrap();
        up.write(b"partial").await.unwrap();
        drop(up);
        assert!(fs.stat("log/x").await.unwrap().is_none());
        assert_eq!(std::fs::read_dir(root.join(TMP_DIR)).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn commit_replaces_atomically_and_reports_creation() {
        let root = temp_root("commit");
        let fs = FsStorage::open(&root, "/nix/store").unwrap();
        let mut up = fs.begin_upload("nar/a.nar").await.unwrap();
        up.write(b"one").await.unwrap();
        assert!(up.commit().await.unwrap());
        let mut up = fs.begin_upload("nar/a.nar").await.unwrap();
        up.write(b"two!").await.unwrap();
        assert!(!up.commit().await.unwrap());
        let got = fs.open("nar/a.nar", 1).await.unwrap().unwrap();
        let mut body = got.body.into_stream();
        let bytes = futures_util::StreamExt::next(&mut body)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&bytes[..], b"wo!");
        assert_eq!(fs.stat("nar/a.nar").await.unwrap().unwrap().size, 4);
    }

    #[tokio::test]
    async fn start_removes_leftovers_and_writes_cache_info() {
        let root = temp_root("leftover");
        std::fs::create_dir_all(root.join(TMP_DIR)).unwrap();
        std::fs::write(root.join(TMP_DIR).join("upload-1-1"), b"junk").unwrap();
        let _fs = FsStorage::open(&root, "/nix/store").unwrap();
        assert_eq!(std::fs::read_dir(root.join(TMP_DIR)).unwrap().count(), 0);
        assert_eq!(
            std::fs::read_to_string(root.join("nix-cache-info")).unwrap(),
            "StoreDir: /nix/store\n"
        );
    }

    #[tokio::test]
    async fn refuses_escaping_keys() {
        let root = temp_root("escape");
        let fs = FsStorage::open(&root, "/nix/store").unwrap();
        for key in ["../x", "/etc/passwd", "", ".tmp/x", "a/../../b"] {
            assert!(fs.stat(key).await.is_err(), "{key}");
        }
    }
}
