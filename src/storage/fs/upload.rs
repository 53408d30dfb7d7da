//! Uploads: staged in `<root>/.tmp/` (an unnamed file where the filesystem allows,
//! see [`super::unnamed`]) in blocks written through the blocking pool, fdatasynced at
//! commit, then named or renamed into place with the directory entry made durable too.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use async_trait::async_trait;

use super::beneath::{self, cstring, is_symlink_refusal, warn_symlink, Root};
use super::unnamed;
use crate::budget::{Budget, Reservation};
use crate::storage::{Result, StorageError, Upload};

/// Request bodies arrive in chunks of a few KiB; writing each one through the
/// blocking pool would cost a thread hop per chunk. Batch them into blocks this big.
const WRITE_BLOCK: usize = 1024 * 1024;
/// The block of an upload that found no room for a [`WRITE_BLOCK`] in the memory
/// budget: more thread hops, but never a refusal for want of memory.
const SMALL_WRITE_BLOCK: usize = 64 * 1024;
/// The buffer's first size: most objects (narinfos, small NARs) are a few KiB, and a
/// block's megabyte allocated for each would be a fresh mapping and unmapping per
/// upload. It doubles up to the block.
const FIRST_BUFFER: usize = 16 * 1024;

/// Where an upload's bytes wait for its commit, in `.tmp`.
enum Staging {
    /// An unnamed file, named at commit.
    Unnamed,
    /// A file under this name, renamed at commit (and removed if the upload is not).
    Named(CString),
}

/// An upload staged in `<root>/.tmp/`.
pub(super) struct FsUpload {
    file: Option<File>,
    /// Bytes not yet written; holds at most `block` bytes.
    buf: Vec<u8>,
    block: usize,
    /// The block's share of the memory budget, when it is a full one.
    _memory: Option<Reservation>,
    /// Bytes written to the file so far.
    written: u64,
    tmp: Arc<File>,
    staging: Staging,
    root: Arc<Root>,
    key: String,
    committed: bool,
}

impl FsUpload {
    /// Starts an upload of `key`, staged in `tmp`, its write block taken from
    /// `budget` if there is one.
    pub(super) fn start(
        root: &Arc<Root>,
        tmp: &Arc<File>,
        budget: Option<&Arc<Budget>>,
        unnamed: bool,
        key: &str,
    ) -> Result<Self> {
        // Checked (and created) before the body is read, so that a refused directory
        // costs no upload; opened again at commit, so that an upload holds one
        // descriptor, not two (see server::FDS_PER_CONNECTION).
        drop(open_parent(root, key)?);
        let (file, staging) = if unnamed {
            (
                unnamed::create(tmp).map_err(StorageError::from_io)?,
                Staging::Unnamed,
            )
        } else {
            let temp = beneath::random_name("upload-")?;
            let file = beneath::open_raw(
                tmp.as_raw_fd(),
                &temp,
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
                0o666,
            )
            .map_err(StorageError::from_io)?;
            (File::from(file), Staging::Named(temp))
        };
        // A full block per upload only while at most half the budget is in use: a
        // hundred concurrent uploads would otherwise hold a hundred blocks, and bodies
        // that must be held whole (narinfos) would find the budget taken.
        let (block, memory) = match budget {
            None => (WRITE_BLOCK, None),
            Some(b) => match b.try_reserve_below(WRITE_BLOCK as u64, b.limit() / 2) {
                Some(r) => (WRITE_BLOCK, Some(r)),
                None => (SMALL_WRITE_BLOCK, None),
            },
        };
        Ok(FsUpload {
            file: Some(file),
            buf: Vec::new(),
            block,
            _memory: memory,
            written: 0,
            tmp: tmp.clone(),
            staging,
            root: root.clone(),
            key: key.to_owned(),
            committed: false,
        })
    }

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
        // Filled to the block exactly, the buffer grown by hand: a chunk crossing the
        // block's end would make `extend` double it past the block.
        while !chunk.is_empty() {
            let take = chunk.len().min(self.block - self.buf.len());
            let needed = self.buf.len() + take;
            if self.buf.capacity() < needed {
                let grown = needed
                    .max(2 * self.buf.capacity())
                    .max(FIRST_BUFFER)
                    .min(self.block);
                self.buf.reserve_exact(grown - self.buf.len());
            }
            self.buf.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            if self.buf.len() >= self.block {
                self.flush_block().await?;
            }
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<bool> {
        // The last block is written in the same trip to the blocking pool as the sync
        // (one thread hop less per object, most objects being one block), with no
        // write-back hint: the fdatasync follows at once.
        let last = std::mem::take(&mut self.buf);
        let mut file = self
            .file
            .take()
            .ok_or_else(|| std::io::Error::other("upload already finished"))?;
        let root = self.root.clone();
        let key = self.key.clone();
        let tmp = self.tmp.clone();
        let temp = match &self.staging {
            Staging::Unnamed => None,
            Staging::Named(temp) => Some(temp.clone()),
        };
        let created = tokio::task::spawn_blocking(move || -> Result<bool> {
            std::io::Write::write_all(&mut file, &last).map_err(StorageError::from_io)?;
            // fdatasync: the size and block map a new file needs to be read back are data
            // for it; timestamps are not worth a second journal write.
            file.sync_data().map_err(StorageError::from_io)?;
            let (parent, name) = open_parent(&root, &key)?;
            let created = match temp {
                Some(temp) => beneath::rename_reporting_creation(&tmp, &temp, &parent, &name),
                None => name_unnamed(&file, &tmp, &parent, &name),
            }
            .map_err(StorageError::from_io)?;
            drop(file);
            // Make the new name itself durable, not just the file's bytes.
            parent.sync_all().map_err(StorageError::from_io)?;
            Ok(created)
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))??;
        self.committed = true;
        Ok(created)
    }
}

/// Names the unnamed `file` `name` in `parent`, reporting whether that created the
/// object. `linkat` decides atomically among concurrent uploads which one created it,
/// as `RENAME_NOREPLACE` does for named files; it cannot replace, so an object that
/// exists is replaced by a rename from a fresh name in `tmp`.
fn name_unnamed(
    file: &File,
    tmp: &File,
    parent: &File,
    name: &std::ffi::CStr,
) -> std::io::Result<bool> {
    match unnamed::link(file, parent, name) {
        Ok(()) => return Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(e),
    }
    let temp = beneath::random_name("upload-")?;
    unnamed::link(file, tmp, &temp)?;
    let renamed = beneath::rename_reporting_creation(tmp, &temp, parent, name);
    if renamed.is_err() {
        let _ = beneath::unlink_at(tmp, &temp, 0);
    }
    renamed
}

impl Drop for FsUpload {
    fn drop(&mut self) {
        if let (false, Staging::Named(temp)) = (self.committed, &self.staging) {
            // Best effort: a leftover is also removed at the next start.
            let _ = beneath::unlink_at(&self.tmp, temp, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::temp_root;
    use super::super::{FsStorage, TMP_DIR};
    use super::*;
    use crate::storage::Storage;

    /// The storage at `root` staging its uploads in unnamed files or not; `None` for
    /// unnamed files where the filesystem has none.
    fn storage(root: &std::path::Path, unnamed: bool) -> Option<FsStorage> {
        let mut fs = FsStorage::open(root, "/nix/store").unwrap();
        if unnamed && !fs.unnamed {
            eprintln!("no unnamed files in {}: not tested", root.display());
            return None;
        }
        fs.unnamed = unnamed;
        Some(fs)
    }

    /// Files in `root`'s `.tmp` this process holds open, named or not.
    fn open_in_tmp(root: &std::path::Path) -> usize {
        let tmp = std::fs::canonicalize(root.join(TMP_DIR)).unwrap();
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .filter(|target| target.starts_with(&tmp) && *target != tmp)
            .count()
    }

    #[tokio::test]
    async fn uncommitted_upload_leaves_nothing() {
        for unnamed in [true, false] {
            let root = temp_root("drop");
            let Some(fs) = storage(&root, unnamed) else {
                continue;
            };
            let mut up = fs.begin_upload("log/x").await.unwrap();
            up.write(b"partial").await.unwrap();
            assert_eq!(
                open_in_tmp(&root),
                1,
                "the upload's file, unnamed: {unnamed}"
            );
            drop(up);
            assert!(fs.stat("log/x").await.unwrap().is_none());
            assert_eq!(std::fs::read_dir(root.join(TMP_DIR)).unwrap().count(), 0);
            assert_eq!(open_in_tmp(&root), 0, "closed, unnamed: {unnamed}");
        }
    }

    #[tokio::test]
    async fn commit_replaces_atomically_and_reports_creation() {
        for unnamed in [true, false] {
            let root = temp_root("commit");
            let Some(fs) = storage(&root, unnamed) else {
                continue;
            };
            let mut up = fs.begin_upload("nar/a.nar").await.unwrap();
            up.write(b"one").await.unwrap();
            assert!(up.commit().await.unwrap());
            let mut up = fs.begin_upload("nar/a.nar").await.unwrap();
            up.write(b"two!").await.unwrap();
            assert!(!up.commit().await.unwrap(), "replaced, not created");
            let got = fs.open("nar/a.nar", 1).await.unwrap().unwrap();
            let mut body = got.body.into_stream();
            let bytes = futures_util::StreamExt::next(&mut body)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&bytes[..], b"wo!");
            assert_eq!(fs.stat("nar/a.nar").await.unwrap().unwrap().size, 4);
            assert_eq!(std::fs::read_dir(root.join(TMP_DIR)).unwrap().count(), 0);
        }
    }

    #[tokio::test]
    async fn of_concurrent_uploads_of_one_key_exactly_one_created_it() {
        for unnamed in [true, false] {
            let root = temp_root("race");
            let Some(fs) = storage(&root, unnamed) else {
                continue;
            };
            let fs = Arc::new(fs);
            let mut uploads = Vec::new();
            for i in 0..8u8 {
                let mut up = fs.begin_upload("nar/same.nar").await.unwrap();
                up.write(&[i; 100]).await.unwrap();
                uploads.push(tokio::spawn(up.commit()));
            }
            let mut created = 0;
            for up in uploads {
                created += usize::from(up.await.unwrap().unwrap());
            }
            assert_eq!(created, 1, "unnamed: {unnamed}");
            let body = std::fs::read(root.join("nar/same.nar")).unwrap();
            assert!(body.len() == 100 && body.iter().all(|b| *b == body[0]));
        }
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
}
