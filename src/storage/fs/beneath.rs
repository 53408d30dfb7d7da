//! Paths below the cache root, resolved without ever following a symbolic link.
//!
//! Other tools write into the cache directory too (rsync, `nix copy --to file://`).
//! Whoever can write there could plant `nar/x.nar -> /etc/shadow`, a symlinked `nar/`
//! or a symlinked `.tmp/`; resolving names the ordinary way would then read, write or
//! delete outside the cache. So every name is resolved relative to a descriptor of the
//! root held open, with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`: a symlink
//! anywhere in the name fails with `ELOOP` and is treated as absent. Kernels without
//! `openat2` (before 5.6, or a seccomp filter that hides it) get the same guarantee
//! from a walk that opens one component at a time with `O_NOFOLLOW`.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// The cache root, opened once.
pub struct Root {
    dir: File,
    path: PathBuf,
    openat2: bool,
}

impl Root {
    /// Opens the directory `path` (the configured root itself may be reached through a
    /// symlink: that is the administrator's choice, not a writer's) and finds out
    /// whether the kernel has `openat2`.
    pub fn new(path: &Path) -> std::io::Result<Self> {
        let dir = File::from(open_raw(
            libc::AT_FDCWD,
            &cstring(path.as_os_str().as_encoded_bytes())?,
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )?);
        let mut root = Root {
            dir,
            path: path.to_path_buf(),
            openat2: true,
        };
        match root.open_openat2(c".", libc::O_RDONLY | libc::O_DIRECTORY) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EPERM)) => {
                tracing::info!(
                    "openat2 is not available ({e}); opening cache paths one component at a time"
                );
                root.openat2 = false;
            }
            Err(e) => return Err(e),
        }
        Ok(root)
    }

    /// The directory's path, for messages and `statfs`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The root's own descriptor.
    pub fn fd(&self) -> &File {
        &self.dir
    }

    /// Opens `rel` (a relative path of plain components) below the root with `flags`
    /// (`O_CLOEXEC` and `O_NOFOLLOW` are added). A symlink anywhere in it fails with
    /// `ELOOP` (see [`is_symlink_refusal`]).
    pub fn open(&self, rel: &str, flags: libc::c_int) -> std::io::Result<File> {
        let name = cstring(rel.as_bytes())?;
        if self.openat2 {
            self.open_openat2(&name, flags)
        } else {
            self.open_walk(rel, flags)
        }
    }

    fn open_openat2(&self, name: &CStr, flags: libc::c_int) -> std::io::Result<File> {
        // SAFETY: open_how is plain integers, for which zero is valid (and required
        // for fields this code does not know).
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = (flags | libc::O_CLOEXEC | libc::O_NOFOLLOW) as u64;
        how.resolve =
            libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
        loop {
            // SAFETY: a directory descriptor, a NUL-terminated path and an `open_how`
            // of the size passed, all alive for the call; the descriptor returned is
            // owned here.
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_openat2,
                    self.dir.as_raw_fd(),
                    name.as_ptr(),
                    &how as *const libc::open_how,
                    std::mem::size_of::<libc::open_how>(),
                )
            };
            if fd >= 0 {
                // SAFETY: just opened, owned by nobody else.
                return Ok(unsafe { File::from_raw_fd(fd as RawFd) });
            }
            let e = std::io::Error::last_os_error();
            // EAGAIN: a concurrent rename made the kernel unsure of the result.
            if !matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EAGAIN)) {
                return Err(e);
            }
        }
    }

    fn open_walk(&self, rel: &str, flags: libc::c_int) -> std::io::Result<File> {
        let mut parts = rel.split('/').filter(|p| !p.is_empty()).peekable();
        let mut dir: Option<File> = None;
        while let Some(part) = parts.next() {
            if part == ".." {
                return Err(std::io::Error::from_raw_os_error(libc::EXDEV));
            }
            let at = dir.as_ref().unwrap_or(&self.dir).as_raw_fd();
            let last = parts.peek().is_none();
            let part_flags = if last {
                flags
            } else {
                libc::O_RDONLY | libc::O_DIRECTORY
            };
            let name = cstring(part.as_bytes())?;
            let opened = match open_raw(at, &name, part_flags, 0) {
                Ok(fd) => fd,
                // With O_DIRECTORY, a symlink fails as "not a directory": tell it
                // apart, as openat2 does.
                Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                    let parent = dir.as_ref().unwrap_or(&self.dir);
                    if is_symlink_at(parent, &name) {
                        return Err(std::io::Error::from_raw_os_error(libc::ELOOP));
                    }
                    return Err(e);
                }
                Err(e) => return Err(e),
            };
            dir = Some(File::from(opened));
        }
        match dir {
            Some(file) => Ok(file),
            None => self.dir.try_clone(),
        }
    }

    /// Opens the directory `rel` below the root for writing entries into it, creating
    /// it and its missing parents (each parent fsynced, so that a new `nar/` survives a
    /// power loss as surely as the object renamed into it). A symlink or a file on the
    /// way is refused (`ELOOP`, `ENOTDIR`), never replaced.
    pub fn create_dir(&self, rel: &str) -> std::io::Result<File> {
        match self.open(rel, libc::O_RDONLY | libc::O_DIRECTORY) {
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            other => return other,
        }
        let mut dir = self.dir.try_clone()?;
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            let name = cstring(part.as_bytes())?;
            // SAFETY: an open directory descriptor and a NUL-terminated name.
            let made = unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o777) } == 0;
            let err = std::io::Error::last_os_error();
            // EEXIST: another upload is creating it and may not have synced the
            // parent yet; syncing again is cheap and this is rare.
            if !made && err.raw_os_error() != Some(libc::EEXIST) {
                return Err(err);
            }
            dir.sync_all()?;
            dir = File::from(open_raw(
                dir.as_raw_fd(),
                &name,
                libc::O_RDONLY | libc::O_DIRECTORY,
                0,
            )?);
        }
        Ok(dir)
    }
}

/// Whether an error of [`Root::open`] means a symlink (or `..`) was in the way.
pub fn is_symlink_refusal(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::EXDEV))
}

/// Logs a refused symlink: at warn the first time (someone writing into the cache
/// directory planted it, or a tool there uses symlinks), then at debug.
pub fn warn_symlink(path: &Path, rel: &str) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "{}/{rel}: a symbolic link in the cache directory; not followed (further ones are logged at debug)",
            path.display()
        );
    } else {
        tracing::debug!("{}/{rel}: a symbolic link, not followed", path.display());
    }
}

/// `openat` with `O_CLOEXEC | O_NOFOLLOW`, retried on `EINTR`.
pub fn open_raw(
    at: RawFd,
    name: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> std::io::Result<OwnedFd> {
    loop {
        // SAFETY: a directory descriptor (or AT_FDCWD) and a NUL-terminated name; the
        // descriptor returned is owned here.
        let fd = unsafe {
            libc::openat(
                at,
                name.as_ptr(),
                flags | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                mode as libc::c_uint,
            )
        };
        if fd >= 0 {
            // SAFETY: just opened, owned by nobody else.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// `unlinkat` of `name` in `dir` (`AT_REMOVEDIR` for an empty directory); a symlink
/// is removed itself.
pub fn unlink_at(dir: &File, name: &CStr, flags: libc::c_int) -> std::io::Result<()> {
    // SAFETY: an open directory descriptor and a NUL-terminated name.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `name` in `dir` exists, as whatever it is (a symlink is not followed).
pub fn exists_at(dir: &File, name: &CStr) -> std::io::Result<bool> {
    match stat_at(dir, name) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// `fstatat` of `name` in `dir`, not following a symlink.
pub(super) fn stat_at(dir: &File, name: &CStr) -> std::io::Result<libc::stat> {
    // SAFETY: `st` is a writable stat buffer the call fills in; the descriptor and
    // the NUL-terminated name are valid for the call.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    } != 0
    {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st)
}

/// Whether `name` in `dir` is a symlink (`false` when it is gone).
pub fn is_symlink_at(dir: &File, name: &CStr) -> bool {
    stat_at(dir, name).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFLNK)
}

/// Renames `from` in `from_dir` over `to` in `to_dir`; `true` when `to` did not exist.
///
/// Checking for the target and then renaming is a race: of many concurrent uploads
/// of one key, several could see it absent and all answer 201. A rename that refuses
/// to replace (`RENAME_NOREPLACE`) decides atomically which upload created the
/// object; the others then replace it. A symlink under `to` is replaced, not followed.
pub fn rename_reporting_creation(
    from_dir: &File,
    from: &CStr,
    to_dir: &File,
    to: &CStr,
) -> std::io::Result<bool> {
    let rename = |flags: libc::c_uint| {
        // SAFETY: two open directory descriptors and two NUL-terminated names.
        let r = unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                from_dir.as_raw_fd(),
                from.as_ptr(),
                to_dir.as_raw_fd(),
                to.as_ptr(),
                flags,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    match rename(libc::RENAME_NOREPLACE) {
        Ok(()) => Ok(true),
        Err(e) => match e.raw_os_error() {
            Some(libc::EEXIST) => rename(0).map(|()| false),
            // Filesystems without RENAME_NOREPLACE: the racy check.
            Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) => {
                let existed = exists_at(to_dir, to)?;
                rename(0).map(|()| !existed)
            }
            _ => Err(e),
        },
    }
}

/// A name for a temporary file that another writer of the directory cannot predict
/// (so cannot occupy in advance): 128 bits from `getrandom(2)`, one syscall per
/// upload, nothing next to an upload's fsync. libc already binds it; no crate needed.
pub fn random_name(prefix: &str) -> std::io::Result<CString> {
    let mut buf = [0u8; 16];
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: writes at most the remaining bytes of `buf`.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    let hex: String = buf.iter().map(|b| format!("{b:02x}")).collect();
    cstring(format!("{prefix}{hex}").as_bytes())
}

/// A C string of `bytes`; a NUL inside is an invalid name.
pub fn cstring(bytes: &[u8]) -> std::io::Result<CString> {
    CString::new(bytes).map_err(|_| std::io::Error::new(ErrorKind::InvalidInput, "NUL in a name"))
}

#[cfg(test)]
mod tests {
    use super::super::dir::empty_dir;
    use super::*;

    fn temp(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "nix-stored-beneath-{tag}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Both ways of resolving refuse symlinks wherever they are, and open plain paths.
    #[test]
    fn symlinks_are_refused_with_and_without_openat2() {
        let dir = temp("refuse");
        let outside = temp("outside");
        std::fs::write(outside.join("secret"), b"secret").unwrap();
        std::fs::create_dir(dir.join("nar")).unwrap();
        std::fs::write(dir.join("nar/ok.nar"), b"ok").unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), dir.join("nar/link.nar")).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("log")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), dir.join("x.narinfo")).unwrap();
        for openat2 in [true, false] {
            let mut root = Root::new(&dir).unwrap();
            root.openat2 = openat2;
            let mut s = String::new();
            std::io::Read::read_to_string(
                &mut root.open("nar/ok.nar", libc::O_RDONLY).unwrap(),
                &mut s,
            )
            .unwrap();
            assert_eq!(s, "ok");
            for rel in ["nar/link.nar", "log/secret", "x.narinfo", "../x"] {
                let e = root.open(rel, libc::O_RDONLY).unwrap_err();
                assert!(is_symlink_refusal(&e), "{rel} (openat2 {openat2}): {e}");
            }
            let e = root.create_dir("log/sub").unwrap_err();
            assert!(is_symlink_refusal(&e), "{e}");
            assert!(!outside.join("sub").exists());
        }
        empty_dir(&Root::new(&dir).unwrap().dir).unwrap();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        assert_eq!(std::fs::read(outside.join("secret")).unwrap(), b"secret");
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&outside);
    }

    #[test]
    fn random_names_differ() {
        assert_ne!(random_name("u-").unwrap(), random_name("u-").unwrap());
    }
}
