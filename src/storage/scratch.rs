//! Scratch files: unnamed files for data the server holds only while it works on it
//! (an upstream NAR followed by its readers while it downloads). Created with
//! `O_TMPFILE`, they have no name: they vanish with their last descriptor, even when
//! the server is killed, so none is ever left behind.

use std::ffi::CString;
use std::fs::File;
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};

/// An unnamed file in the directory `dir`, open for reading and writing.
pub fn anonymous_at(dir: &File) -> std::io::Result<File> {
    open_tmpfile(dir.as_raw_fd())
}

/// An unnamed file in the system's temporary directory (`TMPDIR`, else `/tmp`).
pub fn anonymous() -> std::io::Result<File> {
    let dir = File::open(std::env::temp_dir())?;
    anonymous_at(&dir)
}

/// `openat(dir, ".", O_TMPFILE | flags, mode)`, retried on `EINTR`: an unnamed file
/// in `dir` (linkable unless `flags` has `O_EXCL`). No fallback: where the filesystem
/// has no `O_TMPFILE` this fails (`EOPNOTSUPP`, or `EISDIR` on kernels before it).
pub fn tmpfile_at(dir: RawFd, flags: libc::c_int, mode: libc::mode_t) -> std::io::Result<File> {
    loop {
        // SAFETY: a directory descriptor and a NUL-terminated name; the descriptor
        // returned is owned here.
        let fd = unsafe {
            libc::openat(
                dir,
                c".".as_ptr(),
                libc::O_TMPFILE | libc::O_CLOEXEC | flags,
                mode as libc::c_uint,
            )
        };
        if fd >= 0 {
            // SAFETY: just opened, owned by nobody else.
            return Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn open_tmpfile(dir: RawFd) -> std::io::Result<File> {
    match tmpfile_at(dir, libc::O_RDWR, 0o600) {
        // A filesystem without O_TMPFILE (NFS, older overlayfs), or a kernel that
        // predates it (which reports EISDIR).
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
            ) =>
        {
            named_then_unlinked(dir)
        }
        opened => opened,
    }
}

/// The fallback of [`open_tmpfile`]: a file created under a fresh name (never
/// through a name someone else made: `O_EXCL`, no symlink followed) and unlinked at
/// once, so that it too vanishes with its descriptor; only a crash between the two
/// calls leaves it behind.
fn named_then_unlinked(dir: RawFd) -> std::io::Result<File> {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    for _ in 0..16 {
        let name = format!(
            ".scratch-{}-{}-{nanos}",
            std::process::id(),
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        );
        let name = CString::new(name).map_err(|_| ErrorKind::InvalidInput)?;
        // SAFETY: a directory descriptor and a NUL-terminated name.
        let fd = unsafe {
            libc::openat(
                dir,
                name.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_RDWR | libc::O_CLOEXEC,
                0o600 as libc::c_uint,
            )
        };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            if matches!(e.raw_os_error(), Some(libc::EEXIST | libc::EINTR)) {
                continue;
            }
            return Err(e);
        }
        // SAFETY: just opened, owned by nobody else.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        // SAFETY: the same directory descriptor and name.
        if unsafe { libc::unlinkat(dir, name.as_ptr(), 0) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        return Ok(file);
    }
    Err(std::io::Error::new(
        ErrorKind::AlreadyExists,
        "no free name for a scratch file",
    ))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    #[test]
    fn an_anonymous_file_reads_back_and_has_no_name() {
        let dir = std::env::temp_dir().join(format!("scratch-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = super::anonymous_at(&std::fs::File::open(&dir).unwrap()).unwrap();
        file.write_all_at(b"hello", 0).unwrap();
        let mut buf = [0u8; 5];
        file.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"hello");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn the_fallback_for_filesystems_without_o_tmpfile_leaves_no_name_either() {
        use std::os::fd::AsRawFd;
        let dir = std::env::temp_dir().join(format!("scratch-fallback-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let d = std::fs::File::open(&dir).unwrap();
        let files: Vec<_> = (0..3)
            .map(|_| super::named_then_unlinked(d.as_raw_fd()).unwrap())
            .collect();
        files[1].write_all_at(b"scratch", 0).unwrap();
        let mut buf = [0u8; 7];
        files[1].read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"scratch");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir(&dir).unwrap();
    }
}
