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
//! Uploads are staged in unnamed files (`O_TMPFILE`, see [`unnamed`]) where the
//! filesystem has them: a new object is given its name by `linkat`, which refuses to
//! replace, so it also tells which of concurrent uploads created it; an object that
//! exists is replaced by linking under a fresh name in `.tmp` and renaming. Elsewhere
//! they are named files in `.tmp`, renamed into place; a leftover is removed at start.

use std::fs::File;
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use async_trait::async_trait;

mod beneath;
mod dir;
mod read;
mod stream;
mod unnamed;
mod upload;
mod walk;
mod watch;

use beneath::{cstring, is_symlink_refusal, Root};
use dir::Kind;
use read::Opened;

use super::{
    Listed, ObjectBody, ObjectMeta, ObjectReader, Result, Storage, StorageError, TopLevelEvent,
    Upload, Usage,
};
use crate::budget::Budget;

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
    /// Whether uploads are staged in unnamed files (see [`unnamed`]), tried at start.
    unnamed: bool,
}

impl FsStorage {
    /// Opens (creating it if needed) the cache directory at `root`, checks that it is
    /// writable, removes leftovers of interrupted uploads and writes a `nix-cache-info`
    /// so that the directory is also usable as a `file://` cache.
    pub fn open(root: &Path, store_dir: &str) -> std::io::Result<Self> {
        std::fs::create_dir_all(root)?;
        let root = Arc::new(Root::new(&root.canonicalize()?)?);
        let tmp = open_tmp(&root)?;
        dir::empty_dir(&tmp)?;
        // An empty file: writability is about permissions, and a full disk still
        // allows reads.
        let probe = c"write-probe";
        let named = File::from(beneath::open_raw(
            tmp.as_raw_fd(),
            probe,
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
            0o666,
        )?);
        beneath::unlink_at(&tmp, probe, 0)?;
        let unnamed = unnamed::usable(&tmp, probe, &named.metadata()?);
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
            unnamed,
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
        let likely_large = key.starts_with("nar/");
        let opened = self.reader.open(key, likely_large);
        let (file, md) = match opened.map_err(StorageError::from_io)? {
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
        let upload = upload::FsUpload::start(
            &self.root,
            &self.tmp,
            self.budget.as_ref(),
            self.unnamed,
            key,
        )?;
        Ok(Box::new(upload))
    }

    async fn list_top_level(&self, sink: tokio::sync::mpsc::Sender<Vec<String>>) -> Result<()> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut batch = Vec::with_capacity(walk::LIST_BATCH);
            let mut open = true;
            dir::for_each_entry(root.fd(), |name, kind| {
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

    /// In `.tmp`, on the cache's own filesystem (which the server's room checks
    /// watch), falling back to the system's when that filesystem has no `O_TMPFILE`.
    fn scratch_file(&self) -> std::io::Result<File> {
        crate::storage::scratch::anonymous_at(&self.tmp)
            .or_else(|_| crate::storage::scratch::anonymous())
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
#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A fresh directory, removed when the guard drops.
    pub(super) struct TempRoot(PathBuf);

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

    pub(super) fn temp_root(tag: &str) -> TempRoot {
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
