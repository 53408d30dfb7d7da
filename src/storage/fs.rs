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

use super::{ObjectBody, ObjectMeta, ObjectReader, Result, Storage, StorageError, Upload};

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

    fn describe(&self) -> String {
        format!("directory {}", self.root.display())
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
