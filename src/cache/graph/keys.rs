//! Store path hashes and NAR keys, decoded to bytes: a million of them fit in memory.

use nix_derivation::nixbase32;

/// A store path's hash part, decoded (32 nix32 characters are 160 bits).
pub type PathHash = [u8; 20];
/// A NAR file's SHA-256, decoded from its key.
pub type FileHash = [u8; 32];

/// NAR file extensions, by their index in [`NarKey::ext`].
const EXTENSIONS: [&str; 7] = ["", ".xz", ".zst", ".bz2", ".br", ".lz4", ".lzip"];

/// The key of a NAR file, compactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NarKey {
    /// Its file hash.
    pub hash: FileHash,
    /// Index into the known extensions.
    pub ext: u8,
}

impl NarKey {
    /// Parses `nar/<filehash>.nar<ext>`.
    pub fn parse(key: &str) -> Option<NarKey> {
        let rest = key.strip_prefix("nar/")?;
        let (hash, ext) = rest.split_at_checked(52)?;
        let ext = ext.strip_prefix(".nar")?;
        let ext = EXTENSIONS.iter().position(|e| *e == ext)?;
        let decoded = nixbase32::decode(hash.as_bytes()).ok()?;
        Some(NarKey {
            hash: decoded.try_into().ok()?,
            ext: ext as u8,
        })
    }

    /// The storage key.
    pub fn key(&self) -> String {
        format!(
            "nar/{}.nar{}",
            nixbase32::encode(&self.hash),
            EXTENSIONS[usize::from(self.ext)]
        )
    }
}

/// A NAR by the first 64 bits of its file hash: what the graph keeps of it (8 bytes a
/// path, not 33). Two NARs sharing a print only ever keep each other.
pub type NarPrint = u64;

impl NarKey {
    /// Its print.
    pub fn print(&self) -> NarPrint {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.hash[..8]);
        u64::from_le_bytes(b)
    }
}

/// Decodes a store path's hash part (`None` unless 32 nix32 characters).
pub fn path_hash(nix32: &str) -> Option<PathHash> {
    if nix32.len() != 32 {
        return None;
    }
    nixbase32::decode(nix32.as_bytes()).ok()?.try_into().ok()
}

/// The nix32 hash part of a decoded path hash.
pub fn path_hash_str(hash: &PathHash) -> String {
    nixbase32::encode(hash)
}
