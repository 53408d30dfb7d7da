//! The local directory backend. Its layout is a valid Nix `file://` binary cache.
//!
//! Writes go to `<root>/.tmp/` first (same filesystem, so the final `rename` is atomic),
//! are fsynced, then renamed into place and the directory entry is fsynced too. A crash
//! at any point leaves either the old object or the new one, never a mix, and the
//! leftover temporary files are removed at the next start.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use async_trait::async_trait;

mod read;
mod stream;
mod watch;

use read::Opened;

use super::{
    ObjectBody, ObjectMeta, ObjectReader, Result, Storage, StorageError, TopLevelEvent, Upload,
    Usage,
};
use crate::budget::{Budget, Reservation};

/// Name of the directory holding uploads in progress. Starts with a dot, which no
/// cache key can, so it is never served.
const TMP_DIR: &str = ".tmp";

/// A binary cache in a local directory.
pub struct FsStorage {
    root: PathBuf,
    tmp: PathBuf,
    counter: AtomicU64,
    reader: read::Reader,
    budget: Option<Arc<Budget>>,
}

impl FsStorage {
    /// Opens (creating it if needed) the cache directory at `root`, checks that it is
    /// writable, removes leftovers of interrupted uploads and writes a `nix-cache-info`
    /// so that the directory is also usable as a `file://` cache.
    pub fn open(root: &Path, store_dir: &str) -> std::io::Result<Self> {
        std::fs::create_dir_all(root)?;
        let root = root.canonicalize()?;
        let tmp = root.join(TMP_DIR);
        // The directory itself is kept: on a full disk, recreating it could fail
        // and the server must still start and serve what it has.
        std::fs::create_dir_all(&tmp)?;
        for entry in std::fs::read_dir(&tmp)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                std::fs::remove_dir_all(entry.path())?;
            } else {
                std::fs::remove_file(entry.path())?;
            }
        }
        // An empty file: writability is about permissions, and a full disk still
        // allows reads.
        let probe = tmp.join("write-probe");
        std::fs::write(&probe, b"")?;
        std::fs::remove_file(&probe)?;
        let info = root.join("nix-cache-info");
        if !info.exists() {
            let staged = tmp.join("nix-cache-info");
            let written = std::fs::write(&staged, format!("StoreDir: {store_dir}\n"))
                .and_then(|()| std::fs::rename(&staged, &info));
            match written {
                Ok(()) => {}
                // Only `file://` readers of the directory miss it; the server
                // serves its own.
                Err(e) if StorageError::is_no_space(&e) => {
                    let _ = std::fs::remove_file(&staged);
                    tracing::warn!("{} is full: nix-cache-info not written", root.display());
                }
                Err(e) => return Err(e),
            }
        }
        Ok(FsStorage {
            reader: read::Reader::new(&root)?,
            root,
            tmp,
            counter: AtomicU64::new(0),
            budget: None,
        })
    }

    /// Takes the write blocks of uploads from `budget`; without one, every upload
    /// gets a full block.
    pub fn with_memory_budget(mut self, budget: Arc<Budget>) -> Self {
        self.budget = Some(budget);
        self
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

#[async_trait]
impl Storage for FsStorage {
    async fn stat(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let path = self.path_of(key)?;
        // A single metadata lookup, answered from the dentry cache: cheaper inline
        // than any thread hop (see read::INLINE_READ_MAX).
        let Some(md) = not_found_is_none(std::fs::metadata(path))? else {
            return Ok(None);
        };
        if !md.is_file() {
            return Ok(None);
        }
        if md.len() > read::INLINE_READ_MAX as u64 {
            return Ok(Some(meta_of(&md)));
        }
        // Small objects' validator is their content's, as on GET.
        Ok(self.open(key, 0).await?.map(|r| r.meta))
    }

    async fn open(&self, key: &str, offset: u64) -> Result<Option<ObjectReader>> {
        self.path_of(key)?;
        let (file, md) = match self.reader.open(key).map_err(StorageError::from_io)? {
            Opened::Absent => return Ok(None),
            Opened::Small(bytes) => {
                let meta = ObjectMeta {
                    size: bytes.len() as u64,
                    version: read::content_version(&bytes),
                };
                let from = (offset as usize).min(bytes.len());
                return Ok(Some(ObjectReader {
                    meta,
                    body: ObjectBody::Bytes(bytes.slice(from..)),
                }));
            }
            Opened::Large(file, md) => (file, md),
        };
        if !md.is_file() {
            return Ok(None);
        }
        Ok(Some(ObjectReader {
            meta: meta_of(&md),
            body: ObjectBody::Stream(Box::pin(stream::FileStream::new(file, offset, md.len()))),
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
        // A full block per upload only while at most half the budget is in use: a
        // hundred concurrent uploads would otherwise hold a hundred blocks, and bodies
        // that must be held whole (narinfos) would find the budget taken.
        let (block, memory) = match &self.budget {
            None => (WRITE_BLOCK, None),
            Some(b) => match b.try_reserve_below(WRITE_BLOCK as u64, b.limit() / 2) {
                Some(r) => (WRITE_BLOCK, Some(r)),
                None => (SMALL_WRITE_BLOCK, None),
            },
        };
        Ok(Box::new(FsUpload {
            file: Some(file),
            buf: Vec::new(),
            block,
            _memory: memory,
            written: 0,
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

    async fn usage(&self) -> Result<Option<Usage>> {
        let root = self.root.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        // Its own thread, not the blocking pool: the walk lowers its thread's priority.
        std::thread::Builder::new()
            .name("usage-walk".into())
            .spawn(move || {
                idle_priority();
                let _ = tx.send(count_files(&root));
            })
            .map_err(StorageError::from_io)?;
        let usage = rx
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?
            .map_err(StorageError::from_io)?;
        Ok(Some(usage))
    }

    fn ensure_room(&self, size: u64) -> Result<()> {
        match available_bytes(&self.root) {
            Ok(free) if size > free => Err(StorageError::Full),
            Ok(_) => Ok(()),
            // Not knowing is no reason to refuse: the write itself will tell.
            Err(e) => {
                tracing::debug!("statvfs {}: {e}", self.root.display());
                Ok(())
            }
        }
    }

    fn describe(&self) -> String {
        format!("directory {}", self.root.display())
    }
}

/// The usage walk stats every file of the cache: at a million paths that is seconds of
/// CPU, and at the default priority it halved the narinfo hit rate of the first seconds
/// after start. `SCHED_IDLE` runs the calling thread only when the core has nothing
/// else to do. Failing to set it only costs speed.
fn idle_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: applies to the calling thread (pid 0) with a valid parameter.
    let _ = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
}

/// Counts the regular files below `root` and their sizes, leaving out pending uploads.
fn count_files(root: &Path) -> std::io::Result<Usage> {
    let mut usage = Usage::default();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                if dir != root || entry.file_name() != TMP_DIR {
                    dirs.push(entry.path());
                }
            } else if kind.is_file() {
                // A file removed since it was listed is simply not counted.
                if let Ok(meta) = entry.metadata() {
                    usage.objects += 1;
                    usage.bytes += meta.len();
                }
            }
        }
    }
    Ok(usage)
}

/// Bytes an unprivileged writer can still use on the filesystem holding `dir`
/// (root may have a few percent more on ext4; those are kept for emergencies).
fn available_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: `path` is a valid NUL-terminated string and `st` a writable statvfs
    // buffer that the call fills in.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Creates `dir` and its missing parents, fsyncing the directory that holds each
/// one: a new `nar/` must survive a power loss as surely as the object renamed
/// into it, whose own directory is fsynced after the rename.
fn create_dir_durably(dir: &Path) -> std::io::Result<()> {
    if std::fs::metadata(dir).is_ok_and(|md| md.is_dir()) {
        return Ok(());
    }
    let parent = dir.parent().unwrap_or(Path::new("/"));
    create_dir_durably(parent)?;
    match std::fs::create_dir(dir) {
        // AlreadyExists: another upload is creating it and may not have synced
        // the parent yet; syncing again is cheap and this is rare.
        Ok(()) => std::fs::File::open(parent)?.sync_all(),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => std::fs::File::open(parent)?.sync_all(),
        Err(e) => Err(e),
    }
}

/// Renames `from` over `to`; `true` when `to` did not exist before.
///
/// Checking for the target and then renaming is a race: of many concurrent
/// uploads of one key, several could see it absent and all answer 201. A rename
/// that refuses to replace (`RENAME_NOREPLACE`) decides atomically which upload
/// created the object; the others then replace it.
fn rename_reporting_creation(from: &Path, to: &Path) -> std::io::Result<bool> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::ffi::OsStrExt;
        let old = std::ffi::CString::new(from.as_os_str().as_bytes())?;
        let new = std::ffi::CString::new(to.as_os_str().as_bytes())?;
        // SAFETY: two valid NUL-terminated paths, resolved relative to the
        // working directory only if relative (they are absolute here).
        let r = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                old.as_ptr(),
                libc::AT_FDCWD,
                new.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if r == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EEXIST) => {
                std::fs::rename(from, to)?;
                return Ok(false);
            }
            // Filesystems without RENAME_NOREPLACE: the racy check below.
            Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) => {}
            _ => return Err(e),
        }
    }
    let existed = std::fs::symlink_metadata(to).is_ok();
    std::fs::rename(from, to)?;
    Ok(!existed)
}

/// Names per batch when listing: a directory of a million narinfos is sent in steps
/// that keep memory flat.
const LIST_BATCH: usize = 4096;

/// Request bodies arrive in chunks of a few KiB; writing each one through the
/// blocking pool would cost a thread hop per chunk. Batch them into blocks this big.
const WRITE_BLOCK: usize = 1024 * 1024;
/// The block of an upload that found no room for a [`WRITE_BLOCK`] in the memory
/// budget: more thread hops, but never a refusal for want of memory.
const SMALL_WRITE_BLOCK: usize = 64 * 1024;

/// An upload staged in `<root>/.tmp/`.
struct FsUpload {
    file: Option<std::fs::File>,
    /// Bytes not yet written; holds at most `block` bytes.
    buf: Vec<u8>,
    block: usize,
    /// The block's share of the memory budget, when it is a full one.
    _memory: Option<Reservation>,
    /// Bytes written to the file so far.
    written: u64,
    temp: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl FsUpload {
    /// Writes the buffered block in the blocking pool and starts its write-back, so that
    /// the fdatasync at commit finds most of a large object already on its way to disk
    /// instead of writing all of it while the client waits. The block's buffer comes
    /// back for the next one: a fresh megabyte per block would be a fresh mapping,
    /// page-faulted in page by page.
    async fn flush_block(&mut self) -> Result<()> {
        let mut file = self
            .file
            .take()
            .ok_or_else(|| std::io::Error::other("upload already finished"))?;
        let block = std::mem::take(&mut self.buf);
        let offset = self.written;
        let (file, block, len) = tokio::task::spawn_blocking(move || {
            let mut block = block;
            use std::io::Write;
            file.write_all(&block)?;
            let len = block.len() as u64;
            start_writeback(&file, offset, len);
            block.clear();
            Ok::<_, std::io::Error>((file, block, len))
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?
        .map_err(StorageError::from_io)?;
        self.written += len;
        self.file = Some(file);
        self.buf = block;
        Ok(())
    }
}

/// Asks the kernel to start writing `len` bytes at `offset` to disk, without waiting.
/// Only a hint: durability still comes from the fdatasync at commit.
fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return;
        };
        // SAFETY: the descriptor is open for the duration of the call; the call only
        // schedules write-back of the file's own pages.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

#[async_trait]
impl Upload for FsUpload {
    async fn write(&mut self, mut chunk: &[u8]) -> Result<()> {
        // Filled to the block exactly: a chunk crossing the block's end would make
        // `extend` double the buffer.
        while !chunk.is_empty() {
            if self.buf.capacity() < self.block {
                self.buf.reserve_exact(self.block - self.buf.len());
            }
            let take = chunk.len().min(self.block - self.buf.len());
            self.buf.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            if self.buf.len() >= self.block {
                self.flush_block().await?;
            }
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
            // fdatasync: the size and block map a new file needs to be read back are data
            // for it; timestamps are not worth a second journal write.
            file.sync_data()?;
            drop(file);
            let parent = target.parent().unwrap_or(Path::new("/"));
            create_dir_durably(parent)?;
            let created = rename_reporting_creation(&temp, &target)?;
            // Make the rename itself durable, not just the file's bytes.
            std::fs::File::open(parent)?.sync_all()?;
            Ok(created)
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
    async fn write_blocks_come_from_the_budget_while_it_has_room() {
        let root = temp_root("budget");
        let budget = Budget::new(2 * WRITE_BLOCK as u64 + 1000);
        let fs = FsStorage::open(&root, "/nix/store")
            .unwrap()
            .with_memory_budget(budget.clone());
        let data: Vec<u8> = (0..3 * WRITE_BLOCK + 12345)
            .map(|i| (i % 253) as u8)
            .collect();
        let mut first = fs.begin_upload("nar/a.nar").await.unwrap();
        assert_eq!(budget.in_use(), WRITE_BLOCK as u64, "a full block");
        let mut second = fs.begin_upload("nar/b.nar").await.unwrap();
        assert_eq!(
            budget.in_use(),
            WRITE_BLOCK as u64,
            "no room: a small block"
        );
        // Chunks that straddle block ends, and one larger than a block.
        for part in [
            &data[..1000],
            &data[1000..WRITE_BLOCK + 7],
            &data[WRITE_BLOCK + 7..],
        ] {
            for chunk in part.chunks(300_001) {
                first.write(chunk).await.unwrap();
                second.write(chunk).await.unwrap();
            }
        }
        assert!(first.commit().await.unwrap());
        assert_eq!(budget.in_use(), 0, "given back at commit");
        assert!(second.commit().await.unwrap());
        for key in ["nar/a.nar", "nar/b.nar"] {
            assert_eq!(std::fs::read(root.join(key)).unwrap(), data, "{key}");
        }
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

    async fn read_all(fs: &FsStorage, key: &str, offset: u64) -> Option<(ObjectMeta, Vec<u8>)> {
        let r = fs.open(key, offset).await.unwrap()?;
        let mut body = r.body.into_stream();
        let mut out = Vec::new();
        while let Some(chunk) = futures_util::StreamExt::next(&mut body).await {
            out.extend_from_slice(&chunk.unwrap());
        }
        Some((r.meta, out))
    }

    #[tokio::test]
    async fn small_and_large_objects_read_whole_from_any_offset() {
        let root = temp_root("read");
        let fs = FsStorage::open(&root, "/nix/store").unwrap();
        let large: Vec<u8> = (0..read::INLINE_READ_MAX as u32 * 3)
            .map(|i| (i % 251) as u8)
            .collect();
        for (key, data) in [
            ("a.narinfo", b"StorePath: x\n".to_vec()),
            ("empty.ls", Vec::new()),
            ("nar/edge.nar", large[..read::INLINE_READ_MAX].to_vec()),
            ("nar/edge1.nar", large[..read::INLINE_READ_MAX + 1].to_vec()),
            ("nar/big.nar", large.clone()),
        ] {
            std::fs::create_dir_all(root.join(key).parent().unwrap()).unwrap();
            std::fs::write(root.join(key), &data).unwrap();
            for offset in [0, 1, data.len() as u64 / 2] {
                let (meta, got) = read_all(&fs, key, offset).await.unwrap();
                assert_eq!(meta.size, data.len() as u64, "{key}");
                assert_eq!(
                    got,
                    data[(offset as usize).min(data.len())..],
                    "{key}@{offset}"
                );
                // HEAD and GET agree on the validator.
                assert_eq!(fs.stat(key).await.unwrap().unwrap(), meta, "{key}");
            }
        }
        std::fs::create_dir_all(root.join("dir.narinfo")).unwrap();
        assert!(read_all(&fs, "dir.narinfo", 0).await.is_none());
        assert!(fs.stat("dir.narinfo").await.unwrap().is_none());
        assert!(read_all(&fs, "absent.narinfo", 0).await.is_none());
        assert!(read_all(&fs, "a.narinfo/below", 0).await.is_none());
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
