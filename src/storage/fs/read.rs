//! Reading objects, small ones whole and in the request's own task, with as few
//! syscalls as the kernel allows.
//!
//! A narinfo hit is the request a cache serves most, and its cost is mostly the
//! syscalls around it. Objects are opened relative to a descriptor of the root held
//! open (no walk of the root's own path on every request), and read with one `read`
//! into a reused buffer: on a local filesystem a regular file's read returns less
//! than was asked only at its end, so no `fstat` is needed to learn the size. On
//! network and FUSE filesystems, where reads may come back short, the size comes
//! from `fstat` first.

use std::cell::RefCell;
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use bytes::Bytes;

use super::watch::shared_filesystem;

/// Objects up to this size are read whole in the request's own task: opening and
/// reading a file in the page cache takes microseconds, far less than a hop to the
/// blocking thread pool. This is the model nginx uses.
pub const INLINE_READ_MAX: usize = 64 * 1024;

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
    dir: OwnedFd,
    short_read_is_end: bool,
}

impl Reader {
    /// A reader for the directory `root`.
    pub fn new(root: &Path) -> std::io::Result<Self> {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(root.as_os_str().as_bytes())?;
        // SAFETY: a valid NUL-terminated path; the descriptor returned is owned here.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and nothing else owns it.
        let dir = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Reader {
            dir,
            short_read_is_end: shared_filesystem(root)?.is_none(),
        })
    }

    /// Opens `key` (a validated relative path) and reads it whole if it is small.
    pub fn open(&self, key: &str) -> std::io::Result<Opened> {
        let Some(mut file) = self.open_file(key)? else {
            return Ok(Opened::Absent);
        };
        if self.short_read_is_end {
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
        // The size fstat reported, read exactly: writes are renames, so the file
        // cannot change under us.
        let mut buf = vec![0; md.len() as usize];
        file.read_exact(&mut buf)?;
        Ok(Opened::Small(Bytes::from(buf)))
    }

    fn open_file(&self, key: &str) -> std::io::Result<Option<File>> {
        let name = std::ffi::CString::new(key)?;
        // SAFETY: `dir` is an open directory descriptor and `name` a valid
        // NUL-terminated relative path; the descriptor returned is owned here.
        let fd = unsafe {
            libc::openat(
                self.dir.as_raw_fd(),
                name.as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                // Absent, or below something that is not a directory.
                Some(libc::ENOENT) | Some(libc::ENOTDIR) => Ok(None),
                _ => Err(e),
            };
        }
        // SAFETY: `fd` was just opened and nothing else owns it.
        Ok(Some(unsafe { File::from_raw_fd(fd) }))
    }
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
