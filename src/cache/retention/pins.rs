//! The pins file: store paths whose closures are never removed.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::cache::graph::{path_hash, PathHash};

/// The pinned paths, re-read when the file changes.
pub struct Pins {
    file: Option<PathBuf>,
    /// Modification time and length of the file when it was last read.
    seen: Option<(SystemTime, u64)>,
    hashes: Vec<PathHash>,
}

impl Pins {
    /// Pins from `file` (none without one); read at the first [`Pins::refresh`].
    pub fn new(file: Option<PathBuf>) -> Self {
        Pins {
            file,
            seen: None,
            hashes: Vec::new(),
        }
    }

    /// The pinned hashes.
    pub fn hashes(&self) -> &[PathHash] {
        &self.hashes
    }

    /// Re-reads the file if it changed since the last read, or always with `force`
    /// (SIGHUP). A file that cannot be read keeps the pins read before: dropping
    /// them would let a pass remove what an operator meant to keep.
    pub fn refresh(&mut self, force: bool) {
        let Some(file) = &self.file else {
            return;
        };
        let stamp = std::fs::metadata(file)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
        if !force && stamp.is_some() && stamp == self.seen {
            return;
        }
        match std::fs::read_to_string(file) {
            Ok(text) => {
                self.hashes = parse(&text, file);
                self.seen = stamp;
                tracing::info!(
                    "pins: {} paths from {} (their closures are never removed)",
                    self.hashes.len(),
                    file.display()
                );
            }
            Err(e) => {
                if self.seen.is_some() || force {
                    tracing::warn!(
                        "pins: cannot read {}: {e}; keeping the {} pins read before",
                        file.display(),
                        self.hashes.len()
                    );
                }
                self.seen = None;
            }
        }
    }
}

/// Parses a pins file: one store path (`/nix/store/<hash>-<name>`) or hash part per
/// line, `#` comments, blank lines ignored; a line that is neither is reported and
/// skipped.
pub fn parse(text: &str, file: &Path) -> Vec<PathHash> {
    let mut hashes = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let base = line.rsplit('/').next().unwrap_or(line);
        let hash = base
            .get(..32)
            .filter(|_| base.len() == 32 || base.as_bytes()[32] == b'-');
        match hash.and_then(path_hash) {
            Some(h) => hashes.push(h),
            None => tracing::warn!(
                "pins: {} line {}: {line:?} is not a store path or hash part; ignored",
                file.display(),
                n + 1
            ),
        }
    }
    hashes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_paths_and_hash_parts_with_comments() {
        let text = "# pinned\n/nix/store/0b4h5q6nbxjkgq7kmzrjxwpqv1yhzfa1-hello-2.12\n\n  1b4h5q6nbxjkgq7kmzrjxwpqv1yhzfa1  # bare\nnot a path\n/nix/store/short-x\n";
        let pins = parse(text, Path::new("pins"));
        assert_eq!(pins.len(), 2);
        assert_eq!(
            crate::cache::graph::path_hash_str(&pins[0]),
            "0b4h5q6nbxjkgq7kmzrjxwpqv1yhzfa1"
        );
    }
}
