//! Reading objects, small ones whole and in the request's own task, with as few
//! syscalls as the kernel allows.
//!
//! A narinfo hit is the request a cache serves most, and its cost is mostly the
//! syscalls around it. Objects are opened relative to a descriptor of the root held
//! open (no walk of the root's own path on every request, no symlink followed), and read with one `read`
//! into a reused buffer: on a local filesystem a regular file's read returns less
//! than was asked only at its end, so no `fstat` is needed to learn the size. On
//! network and FUSE filesystems, where reads may come back short, the size comes
//! from `fstat` first.

use std::cell::RefCell;
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::sync::Arc;

use bytes::Bytes;

use super::beneath::{is_symlink_refusal, warn_symlink, Root};
use super::watch::shared_filesystem;

pub use crate::storage::INLINE_READ_MAX;

thread_local! {
    /// One read buffer per runtime thread, so that a small read allocates only the
    /// bytes it returns.
    static BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0; INLINE_READ_MAX + 1]);
}

/// What opening a key found.
pub enum Opened {
    /// No regular file under that key.
    Absent,
    /// A file of at most [`INLINE_READ_MAX`] bytes, read whole.
    Small(Bytes),
    /// A larger file, to be streamed; its position is unspecified.
    Large(File, std::fs::Metadata),
}

/// Opens and reads objects below the cache root.
pub struct Reader {
    root: Arc<Root>,
    short_read_is_end: bool,
}

impl Reader {
    /// A reader of the objects below `root`.
    pub fn new(root: Arc<Root>) -> std::io::Result<Self> {
        let short_read_is_end = shared_filesystem(root.fd())?.is_none();
        Ok(Reader {
            root,
            short_read_is_end,
        })
    }

    /// Opens `key` (a validated relative path) and reads it whole if it is small.
    /// `likely_large` (NARs): ask the size first instead of reading the first 64 KiB
    /// of a file that will be streamed from its start anyway.
    pub fn open(&self, key: &str, likely_large: bool) -> std::io::Result<Opened> {
        let Some(mut file) = self.open_file(key)? else {
            return Ok(Opened::Absent);
        };
        if self.short_read_is_end && !likely_large {
            return match read_once(&mut file) {
                Ok(Some(bytes)) => Ok(Opened::Small(bytes)),
                Ok(None) => {
                    let md = file.metadata()?;
                    Ok(Opened::Large(file, md))
                }
                // A directory under an object's name: no object.
                Err(e) if e.raw_os_error() == Some(libc::EISDIR) => Ok(Opened::Absent),
                Err(e) => Err(e),
            };
        }
        let md = file.metadata()?;
        if !md.is_file() {
            return Ok(Opened::Absent);
        }
        if md.len() > INLINE_READ_MAX as u64 {
            return Ok(Opened::Large(file, md));
        }
        Ok(Opened::Small(read_exactly(&mut file, md.len())?))
    }

    /// Opens `key` for reading: one `openat2` below the root that refuses symlinks,
    /// so a planted `nar/x.nar -> /etc/shadow` (or a symlinked `nar/`) is absent.
    /// `O_NONBLOCK` so that a FIFO planted under an object's name cannot hold a
    /// runtime thread in `open`; it changes nothing for regular files.
    pub fn open_file(&self, key: &str) -> std::io::Result<Option<File>> {
        match self.root.open(key, libc::O_RDONLY | libc::O_NONBLOCK) {
            Ok(file) => Ok(Some(file)),
            // Absent, or below something that is not a directory.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => {
                Ok(None)
            }
            Err(e) if is_symlink_refusal(&e) => {
                warn_symlink(self.root.path(), key);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

/// Reads the `len` bytes `fstat` reported: writes are renames, so the file cannot
/// change under us.
pub fn read_exactly(file: &mut File, len: u64) -> std::io::Result<Bytes> {
    let mut buf = vec![0; len as usize];
    file.read_exact(&mut buf)?;
    Ok(Bytes::from(buf))
}

/// One read of up to [`INLINE_READ_MAX`] + 1 bytes: the whole file when it is small
/// (`Some`), or `None` when there is more.
fn read_once(file: &mut File) -> std::io::Result<Option<Bytes>> {
    BUFFER.with_borrow_mut(|buf| {
        let n = loop {
            match file.read(buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        Ok((n <= INLINE_READ_MAX).then(|| Bytes::copy_from_slice(&buf[..n])))
    })
}

/// A validator for a small object, from its bytes: the same for the same content
/// whichever way it was read.
pub fn content_version(bytes: &[u8]) -> String {
    use std::hash::{DefaultHasher, Hasher};
    let mut h = DefaultHasher::new();
    h.write(bytes);
    format!("c{:016x}", h.finish())
}
