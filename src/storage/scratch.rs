//! Scratch files: unnamed files for data the server holds only while it works on it
//! (an upstream NAR followed by its readers while it downloads). Created with
//! `O_TMPFILE`, they have no name: they vanish with their last descriptor, even when
//! the server is killed, so none is ever left behind.

use std::fs::File;
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// An unnamed file in the directory `dir`, open for reading and writing.
pub fn anonymous_at(dir: &File) -> std::io::Result<File> {
    open_tmpfile(dir.as_raw_fd())
}

/// An unnamed file in the system's temporary directory (`TMPDIR`, else `/tmp`).
pub fn anonymous() -> std::io::Result<File> {
    let dir = File::open(std::env::temp_dir())?;
    anonymous_at(&dir)
}

fn open_tmpfile(dir: RawFd) -> std::io::Result<File> {
    loop {
        // SAFETY: a directory descriptor and a NUL-terminated name; the descriptor
        // returned is owned here.
        let fd = unsafe {
            libc::openat(
                dir,
                c".".as_ptr(),
                libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC,
                0o600 as libc::c_uint,
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
}
