//! The local directory backend. Its layout is a valid Nix `file://` binary cache.
//!
//! Writes go to `<root>/.tmp/` first (same filesystem, so the final `rename` is atomic),
//! are fsynced, then renamed into place and the directory entry is fsynced too. A crash
//! at any point leaves either the old object or the new one, never a mix, and the
//! leftover temporary files are removed at the next start.
//!
//! Others may write into the directory too, so no name below the root is resolved
//! through a symbolic link (see [`beneath`]): a planted link reads as absent, an upload
//! through a linked directory is refused, and the clean-up of `.tmp` never leaves it.
//!
//! Temporary files are named, not `O_TMPFILE`: `linkat` cannot replace an existing
//! object, so an anonymous file would still need a named step before the `rename`
//! that atomically replaces and reports creation; a leftover name is removed at start.

use std::ffi::CString;
use std::fs::File;
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use async_trait::async_trait;

mod beneath;
mod read;
mod stream;
mod walk;
mod watch;

use beneath::{cstring, is_symlink_refusal, warn_symlink, Kind, Root};
use read::Opened;

use super::{
    Listed, ObjectBody, ObjectMeta, ObjectReader, Result, Storage, StorageError, TopLevelEvent,
    Upload, Usage,
};
use crate::budget::{Budget, Reservation};

/// Name of the directory holding uploads in progress. Starts with a dot, which no
/// cache key can, so it is never served.
const TMP_DIR: &str = ".tmp";

/// A binary cache in a local directory.
pub struct FsStorage {
    root: Arc<Root>,
    /// `<root>/.tmp`, checked to be a real directory at start.
    tmp: Arc<File>,
    reader: read::Reader,
    budget: Option<Arc<Budget>>,
}

impl FsStorage {
    /// Opens (creating it if needed) the cache directory at `root`, checks that it is
    /// writable, removes leftovers of interrupted uploads and writes a `nix-cache-info`
    /// so that the directory is also usable as a `file://` cache.
    pub fn open(root: &Path, store_dir: &str) -> std::io::Result<Self> {
        std::fs::create_dir_all(root)?;
        let root = Arc::new(Root::new(&root.canonicalize()?)?);
        let tmp = open_tmp(&root)?;
        beneath::empty_dir(&tmp)?;
        // An empty file: writability is about permissions, and a full disk still
        // allows reads.
        let probe = c"write-probe";
        drop(beneath::open_raw(
            tmp.as_raw_fd(),
            probe,
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
            0o666,
        )?);
        beneath::unlink_at(&tmp, probe, 0)?;
        let info = c"nix-cache-info";
        if !beneath::exists_at(root.fd(), info)? {
            let written = write_new(&tmp, info, format!("StoreDir: {store_dir}\n").as_bytes())
                .and_then(|()| {
                    beneath::rename_reporting_creation(&tmp, info, root.fd(), info).map(|_| ())
                });
            match written {
                Ok(()) => {}
                // Only `file://` readers of the directory miss it; the server
                // serves its own.
                Err(e) if StorageError::is_no_space(&e) => {
                    let _ = beneath::unlink_at(&tmp, info, 0);
                    tracing::warn!(
                        "{} is full: nix-cache-info not written",
                        root.path().display()
                    );
                }
                Err(e) => return Err(e),
            }
        }
        Ok(FsStorage {
            reader: read::Reader::new(root.clone())?,
            root,
            tmp: Arc::new(tmp),
            budget: None,
        })
    }

    /// Takes the write blocks of uploads from `budget`; without one, every upload
    /// gets a full block.
    pub fn with_memory_budget(mut self, budget: Arc<Budget>) -> Self {
        self.budget = Some(budget);
        self
    }

    fn check_key(key: &str) -> std::io::Result<()> {
        // Keys are validated upstream; this is the last line of defence against a
        // path that would leave the root.
        let rel = Path::new(key);
        let plain = rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if key.is_empty() || !plain || key.starts_with('.') || key.ends_with('/') {
            return Err(std::io::Error::new(
                ErrorKind::InvalidInput,
                format!("refusing storage key {key:?}"),
            ));
        }
        Ok(())
    }
}

/// The directory an object of `key` goes into, created if missing, and the object's
/// name there. A symlink (or a file) where a directory should be is refused.
fn open_parent(root: &Root, key: &str) -> Result<(File, CString)> {
    let (dir, name) = key.rsplit_once('/').unwrap_or(("", key));
    let opened = if dir.is_empty() {
        root.fd().try_clone()
    } else {
        root.create_dir(dir)
    };
    let parent = match opened {
        Ok(parent) => parent,
        Err(e) if is_symlink_refusal(&e) || e.raw_os_error() == Some(libc::ENOTDIR) => {
            warn_symlink(root.path(), dir);
            return Err(StorageError::Refused(format!(
                "the cache directory has a symbolic link or a file where the directory {dir}/ should be; not writing through it"
            )));
        }
        Err(e) => return Err(StorageError::from_io(e)),
    };
    Ok((parent, cstring(name.as_bytes())?))
}

/// Opens `<root>/.tmp`, creating it if missing. A symlink or anything else that is not
/// a directory under that name is removed (never followed: emptying the directory
/// it points to would delete files outside the cache) and replaced by a directory.
/// An existing directory is kept: on a full disk, recreating it could fail and the
/// server must still start and serve what it has.
fn open_tmp(root: &Root) -> std::io::Result<File> {
    let name = cstring(TMP_DIR.as_bytes())?;
    match root.open(TMP_DIR, libc::O_RDONLY | libc::O_DIRECTORY) {
        Ok(dir) => return Ok(dir),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) if is_symlink_refusal(&e) || e.raw_os_error() == Some(libc::ENOTDIR) => {
            tracing::warn!(
                "{}/{TMP_DIR} is not a directory (a symbolic link?): replacing it, not following it",
                root.path().display()
            );
            beneath::unlink_at(root.fd(), &name, 0)?;
        }
        Err(e) => return Err(e),
    }
    root.create_dir(TMP_DIR)
}

/// Writes `bytes` to a new file `name` in `dir` and syncs it.
fn write_new(dir: &File, name: &std::ffi::CStr, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = File::from(beneath::open_raw(
        dir.as_raw_fd(),
        name,
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
        0o666,
    )?);
    file.write_all(bytes)?;
    file.sync_data()
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

#[async_trait]
impl Storage for FsStorage {
    async fn stat(&self, key: &str) -> Result<Option<ObjectMeta>> {
        Self::check_key(key)?;
        // Opened the way GET opens it (one openat2 refusing symlinks), then fstat:
        // cheaper inline than any thread hop (see read::INLINE_READ_MAX).
        let Some(mut file) = self.reader.open_file(key)? else {
            return Ok(None);
        };
        let md = file.metadata().map_err(StorageError::from_io)?;
        if !md.is_file() {
            return Ok(None);
        }
        if md.len() > read::INLINE_READ_MAX as u64 {
            return Ok(Some(meta_of(&md)));
        }
        // Small objects' validator is their content's, as on GET.
        let bytes = read::read_exactly(&mut file, md.len()).map_err(StorageError::from_io)?;
        Ok(Some(ObjectMeta {
            size: bytes.len() as u64,
            version: read::content_version(&bytes),
        }))
    }

    async fn open(&self, key: &str, offset: u64) -> Result<Option<ObjectReader>> {
        Self::check_key(key)?;
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
        Self::check_key(key)?;
        // Checked (and created) before the body is read, so that a refused directory
        // costs no upload; opened again at commit, so that an upload holds one
        // descriptor, not two (see server::FDS_PER_CONNECTION).
        drop(open_parent(&self.root, key)?);
        let temp = beneath::random_name("upload-")?;
        let file = beneath::open_raw(
            self.tmp.as_raw_fd(),
            &temp,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
            0o666,
        )
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
            file: Some(File::from(file)),
            buf: Vec::new(),
            block,
            _memory: memory,
            written: 0,
            tmp: self.tmp.clone(),
            temp,
            root: self.root.clone(),
            key: key.to_owned(),
            committed: false,
        }))
    }

    async fn list_top_level(&self, sink: tokio::sync::mpsc::Sender<Vec<String>>) -> Result<()> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut batch = Vec::with_capacity(walk::LIST_BATCH);
            let mut open = true;
            beneath::for_each_entry(root.fd(), |name, kind| {
                // A symlink is no object (reading it answers 404); names that are
                // not UTF-8 are no cache key.
                if kind == Kind::Other {
                    return Ok(true);
                }
                if let Ok(name) = name.to_str() {
                    batch.push(name.to_owned());
                }
                if batch.len() == walk::LIST_BATCH {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(walk::LIST_BATCH));
                    open = sink.blocking_send(full).is_ok();
                }
                Ok(open)
            })?;
            if !open {
                return Ok(());
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
        if let Some(kind) =
            watch::shared_filesystem(self.root.fd()).map_err(StorageError::from_io)?
        {
            tracing::info!(
                "{} is on {kind}: other machines may write into it unseen",
                self.root.path().display()
            );
            return Ok(false);
        }
        watch::start(self.root.clone(), sink).map_err(StorageError::from_io)?;
        Ok(true)
    }

    async fn usage(&self) -> Result<Option<Usage>> {
        walk::usage(self.root.clone()).await.map(Some)
    }

    async fn list_objects(
        &self,
        folder: &str,
        sink: tokio::sync::mpsc::Sender<Vec<Listed>>,
    ) -> Result<()> {
        if !folder.is_empty() {
            Self::check_key(folder)?;
        }
        walk::list(self.root.clone(), folder.to_owned(), sink).await
    }

    async fn delete(&self, keys: &[String]) -> Result<()> {
        for key in keys {
            Self::check_key(key)?;
        }
        let (root, keys) = (self.root.clone(), keys.to_vec());
        tokio::task::spawn_blocking(move || walk::remove(&root, &keys))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?
            .map_err(StorageError::from_io)
    }

    fn ensure_room(&self, size: u64) -> Result<()> {
        match available_bytes(self.root.fd()) {
            Ok(Some(free)) if size > free => Err(StorageError::Full),
            Ok(Some(_)) => Ok(()),
            // A filesystem that reports no size at all (some FUSE and network
            // filesystems answer statfs with zeros) is not a full one: the write
            // itself will tell (ENOSPC is a 507 too).
            Ok(None) => {
                static TOLD: AtomicBool = AtomicBool::new(false);
                if !TOLD.swap(true, Ordering::Relaxed) {
                    tracing::info!(
                        "{}: the filesystem reports no size; uploads are not checked for room in advance",
                        self.root.path().display()
                    );
                }
                Ok(())
            }
            // Not knowing is no reason to refuse: the write itself will tell.
            Err(e) => {
                tracing::debug!("statvfs {}: {e}", self.root.path().display());
                Ok(())
            }
        }
    }

    fn describe(&self) -> String {
        format!("directory {}", self.root.path().display())
    }
}

/// Bytes an unprivileged writer can still use on the filesystem holding `dir`
/// (root may have a few percent more on ext4; those are kept for emergencies), or
/// `None` when the filesystem does not say.
fn available_bytes(dir: &File) -> std::io::Result<Option<u64>> {
    // SAFETY: an open descriptor and a writable statvfs buffer the call fills in.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatvfs(dir.as_raw_fd(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(room_of(
        st.f_blocks as u64,
        st.f_bavail as u64,
        st.f_frsize as u64,
    ))
}

/// The room a statvfs answer tells of: `None` when it reports a filesystem of no
/// blocks at all (LazyFS and some network mounts answer zeros), which means "unknown",
/// not "full".
fn room_of(blocks: u64, available: u64, fragment_size: u64) -> Option<u64> {
    (blocks != 0).then(|| available.saturating_mul(fragment_size))
}

/// Request bodies arrive in chunks of a few KiB; writing each one through the
/// blocking pool would cost a thread hop per chunk. Batch them into blocks this big.
const WRITE_BLOCK: usize = 1024 * 1024;
/// The block of an upload that found no room for a [`WRITE_BLOCK`] in the memory
/// budget: more thread hops, but never a refusal for want of memory.
const SMALL_WRITE_BLOCK: usize = 64 * 1024;

/// An upload staged in `<root>/.tmp/`.
struct FsUpload {
    file: Option<File>,
    /// Bytes not yet written; holds at most `block` bytes.
    buf: Vec<u8>,
    block: usize,
    /// The block's share of the memory budget, when it is a full one.
    _memory: Option<Reservation>,
    /// Bytes written to the file so far.
    written: u64,
    tmp: Arc<File>,
    /// The temporary file's name in `tmp`.
    temp: CString,
    root: Arc<Root>,
    key: String,
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
        let root = self.root.clone();
        let key = self.key.clone();
        let tmp = self.tmp.clone();
        let temp = self.temp.clone();
        let created = tokio::task::spawn_blocking(move || -> Result<bool> {
            // fdatasync: the size and block map a new file needs to be read back are data
            // for it; timestamps are not worth a second journal write.
            file.sync_data().map_err(StorageError::from_io)?;
            drop(file);
            let (parent, name) = open_parent(&root, &key)?;
            let created = beneath::rename_reporting_creation(&tmp, &temp, &parent, &name)
                .map_err(StorageError::from_io)?;
            // Make the rename itself durable, not just the file's bytes.
            parent.sync_all().map_err(StorageError::from_io)?;
            Ok(created)
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))??;
        self.committed = true;
        Ok(created)
    }
}

impl Drop for FsUpload {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: a leftover is also removed at the next start.
            let _ = beneath::unlink_at(&self.tmp, &self.temp, 0);
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

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
    async fn links_are_absent_and_a_non_directory_tmp_is_replaced() {
        let root = temp_root("links");
        let outside = temp_root("links-outside");
        std::fs::write(outside.join("secret"), b"secret").unwrap();
        std::fs::write(root.join(TMP_DIR), b"a file, not a directory").unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), root.join("a.narinfo")).unwrap();
        std::os::unix::fs::symlink(&*outside, root.join("log")).unwrap();
        let fs = FsStorage::open(&root, "/nix/store").unwrap();
        assert!(std::fs::symlink_metadata(root.join(TMP_DIR))
            .unwrap()
            .is_dir());
        assert!(fs.stat("a.narinfo").await.unwrap().is_none());
        assert!(read_all(&fs, "a.narinfo", 0).await.is_none());
        assert!(fs.stat("log/secret").await.unwrap().is_none());
        assert!(matches!(
            fs.begin_upload("log/x").await.err(),
            Some(StorageError::Refused(_))
        ));
        let usage = fs.usage().await.unwrap().unwrap();
        assert_eq!(usage.objects, 1, "only nix-cache-info");
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        fs.list_top_level(tx).await.unwrap();
        let mut names = rx.recv().await.unwrap();
        names.sort();
        assert_eq!(names, [TMP_DIR, "nix-cache-info"]);
        assert_eq!(std::fs::read(outside.join("secret")).unwrap(), b"secret");
    }

    #[test]
    fn a_filesystem_of_no_blocks_has_unknown_room() {
        assert_eq!(room_of(0, 0, 0), None);
        assert_eq!(room_of(0, 0, 4096), None);
        assert_eq!(room_of(100, 0, 4096), Some(0));
        assert_eq!(room_of(100, 10, 4096), Some(40960));
        assert_eq!(room_of(1, u64::MAX, 4096), Some(u64::MAX));
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
