//! Directory entries, read and removed without following a symbolic link: the
//! listings of the cache directory and the clean-up of `.tmp` see a planted link as
//! what it is (an entry of kind [`Kind::Other`]) and never walk or empty what it
//! points to.

use std::ffi::CStr;
use std::fs::File;
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, FromRawFd};

use super::beneath::{open_raw, stat_at, unlink_at};

/// What a directory entry is, as seen without following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symlink, a socket, a device, …
    Other,
}

/// Calls `f` with each entry of `dir` (without `.` and `..`) and its kind, not
/// following symlinks, until `f` returns `false`. Streams: a directory of a million
/// narinfos is never held in memory. Read from a fresh open of the directory, so
/// `dir`'s own position is untouched.
pub fn for_each_entry(
    dir: &File,
    mut f: impl FnMut(&CStr, Kind) -> std::io::Result<bool>,
) -> std::io::Result<()> {
    let fresh = open_raw(dir.as_raw_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    // SAFETY: fdopendir takes ownership of the descriptor (closed by closedir below).
    let dirp = unsafe { libc::fdopendir(std::os::fd::IntoRawFd::into_raw_fd(fresh)) };
    if dirp.is_null() {
        return Err(std::io::Error::last_os_error());
    }
    struct Stream(*mut libc::DIR);
    impl Drop for Stream {
        fn drop(&mut self) {
            // SAFETY: a stream from fdopendir, closed once.
            unsafe { libc::closedir(self.0) };
        }
    }
    let stream = Stream(dirp);
    // SAFETY: the stream's own descriptor, valid until closedir; borrowed (not
    // owned) by this File, which is forgotten below.
    let fd = std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(libc::dirfd(stream.0)) });
    loop {
        // errno tells the end of the directory from an error.
        // SAFETY: writing the calling thread's errno.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: a valid stream; the entry is used before the next readdir call.
        let ent = unsafe { libc::readdir(stream.0) };
        if ent.is_null() {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(0) => Ok(()),
                _ => Err(e),
            };
        }
        // SAFETY: `d_name` is NUL-terminated within the entry readdir returned.
        let (name, d_type) = unsafe { (CStr::from_ptr((*ent).d_name.as_ptr()), (*ent).d_type) };
        let bytes = name.to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        let kind = match d_type {
            libc::DT_DIR => Kind::Dir,
            libc::DT_REG => Kind::File,
            libc::DT_UNKNOWN => match stat_at(&fd, name) {
                Ok(st) => kind_of(st.st_mode),
                // Removed since it was listed.
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            },
            _ => Kind::Other,
        };
        if !f(name, kind)? {
            return Ok(());
        }
    }
}

fn kind_of(mode: libc::mode_t) -> Kind {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => Kind::Dir,
        libc::S_IFREG => Kind::File,
        _ => Kind::Other,
    }
}

/// The size and modification time (seconds since the epoch) of `name` in `dir` if
/// it is a regular file (not following a symlink).
pub fn file_meta_at(dir: &File, name: &CStr) -> std::io::Result<Option<(u64, u64)>> {
    let st = stat_at(dir, name)?;
    Ok((kind_of(st.st_mode) == Kind::File)
        .then_some((st.st_size as u64, u64::try_from(st.st_mtime).unwrap_or(0))))
}

/// Empties the directory `dir`: files and symlinks are unlinked, subdirectories
/// emptied (opened without following) and removed. Nothing outside it is touched.
pub fn empty_dir(dir: &File) -> std::io::Result<()> {
    // Listed first, removed after: a directory changed while it is read may list
    // entries twice or not at all.
    let mut found = Vec::new();
    for_each_entry(dir, |name, kind| {
        found.push((name.to_owned(), kind));
        Ok(true)
    })?;
    for (name, kind) in found {
        if kind == Kind::Dir {
            let sub = File::from(open_raw(
                dir.as_raw_fd(),
                &name,
                libc::O_RDONLY | libc::O_DIRECTORY,
                0,
            )?);
            empty_dir(&sub)?;
            unlink_at(dir, &name, libc::AT_REMOVEDIR)?;
        } else {
            unlink_at(dir, &name, 0)?;
        }
    }
    Ok(())
}
