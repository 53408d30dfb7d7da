//! Uploads staged in unnamed files (`O_TMPFILE`) and given their name at commit with
//! `linkat`. Against a named file in `.tmp` renamed into place, the upload's
//! fdatasync has no directory entry of `.tmp` to journal (ext4 makes it part of the
//! new file's transaction), and a killed server leaves nothing behind. Not every
//! filesystem has `O_TMPFILE`, and linking one needs `/proc/self/fd`: [`usable`]
//! tries both once, at start, and the caller keeps named files where either fails.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::ErrorKind;
use std::os::fd::AsRawFd;

/// An unnamed file in the directory `dir`, open for writing, that [`link`] can name
/// (no `O_EXCL`).
pub fn create(dir: &File) -> std::io::Result<File> {
    crate::storage::scratch::tmpfile_at(dir.as_raw_fd(), libc::O_WRONLY, 0o666)
}

/// Gives the unnamed `file` the name `name` in `dir`. Fails with `EEXIST` when the
/// name is taken (by anything: a symlink there is not followed): `linkat` never
/// replaces, so a caller that replaces links under a fresh name and renames.
pub fn link(file: &File, dir: &File, name: &CStr) -> std::io::Result<()> {
    // linkat(fd, "", AT_EMPTY_PATH) needs CAP_DAC_READ_SEARCH on most kernels; the
    // descriptor's /proc link, followed, needs only /proc.
    let path = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|_| ErrorKind::InvalidInput)?;
    loop {
        // SAFETY: a NUL-terminated path, an open directory descriptor and a
        // NUL-terminated name.
        let r = unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                path.as_ptr(),
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Whether unnamed files can be made and named in `dir` (`.tmp`): tried once with a
/// file of no bytes, linked under `probe` and unlinked at once. Its permissions must
/// be those of `named`, a file created there by name: some kernels left the umask
/// out of `O_TMPFILE` on filesystems without POSIX ACLs, which would make every
/// object writable by anyone.
pub fn usable(dir: &File, probe: &CStr, named: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let tried = create(dir).and_then(|file| {
        let mode = file.metadata()?.permissions().mode() & 0o7777;
        let wanted = named.permissions().mode() & 0o7777;
        if mode != wanted {
            return Err(std::io::Error::other(format!(
                "created with mode {mode:o}, not {wanted:o} as a named file"
            )));
        }
        link(&file, dir, probe)
    });
    if tried.is_ok() {
        // SAFETY: an open directory descriptor and a NUL-terminated name.
        unsafe { libc::unlinkat(dir.as_raw_fd(), probe.as_ptr(), 0) };
    }
    match tried {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!("uploads staged in named files: unnamed files unusable here ({e})");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::fs::tests::temp_root;
    use std::io::Write;

    /// The metadata of a file created by name in `root`, changed by `mode_xor`.
    fn named(root: &std::path::Path, mode_xor: u32) -> std::fs::Metadata {
        use std::os::unix::fs::PermissionsExt;
        let named = root.join("named");
        std::fs::write(&named, b"").unwrap();
        let mode = std::fs::metadata(&named).unwrap().permissions().mode();
        std::fs::set_permissions(&named, std::fs::Permissions::from_mode(mode ^ mode_xor)).unwrap();
        let meta = std::fs::metadata(&named).unwrap();
        std::fs::remove_file(&named).unwrap();
        meta
    }

    #[test]
    fn an_unnamed_file_gets_its_name_once_and_never_replaces() {
        let root = temp_root("unnamed");
        let dir = File::open(&*root).unwrap();
        assert!(usable(&dir, c"probe", &named(&root, 0)));
        assert!(!root.join("probe").exists(), "the probe leaves nothing");
        let mut file = create(&dir).unwrap();
        file.write_all(b"bytes").unwrap();
        assert_eq!(std::fs::read_dir(&*root).unwrap().count(), 0, "no name yet");
        link(&file, &dir, c"object").unwrap();
        assert_eq!(std::fs::read(root.join("object")).unwrap(), b"bytes");
        std::fs::write(root.join("taken"), b"old").unwrap();
        let other = create(&dir).unwrap();
        let e = link(&other, &dir, c"taken").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
        assert_eq!(std::fs::read(root.join("taken")).unwrap(), b"old");
    }

    #[test]
    fn unnamed_files_of_other_permissions_than_named_ones_are_not_used() {
        let root = temp_root("unnamed-mode");
        let dir = File::open(&*root).unwrap();
        // As if the umask had been left out of one of the two.
        assert!(!usable(&dir, c"probe", &named(&root, 0o002)));
        assert!(!root.join("probe").exists());
    }
}
