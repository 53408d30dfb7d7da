//! What the catalog keeps of a narinfo, read from its text.

use crate::cache::retention::graph::{path_hash, PathHash};

/// The longest store path name Nix accepts.
pub const MAX_NAME: usize = 211;

/// The catalog's fields of one narinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its store hash.
    pub hash: PathHash,
    /// The name after the hash.
    pub name: String,
    /// `NarSize`.
    pub nar_size: u64,
    /// `FileSize` (0 when absent).
    pub file_size: u64,
    /// The key names of its `Sig` lines.
    pub signers: Vec<String>,
    /// The hashes of its `References`.
    pub references: Vec<PathHash>,
}

/// Whether `name` is a store path name as Nix accepts it (and so holds no
/// [`super::table::SEPARATOR`]).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-._?=".contains(&b))
}

/// Reads the fields of a stored narinfo whose key names `hash`. Stored narinfos
/// were checked on upload, or come from another writer: `None` for one whose
/// StorePath does not name `hash` with a valid name.
pub fn parse(hash: &PathHash, text: &[u8]) -> Option<Record> {
    let text = std::str::from_utf8(text).ok()?;
    let mut record = Record {
        hash: *hash,
        name: String::new(),
        nar_size: 0,
        file_size: 0,
        signers: Vec::new(),
        references: Vec::new(),
    };
    for line in text.lines() {
        let Some((field, value)) = line.split_once(": ") else {
            continue;
        };
        let value = value.trim();
        match field {
            "StorePath" => {
                let base = value.rsplit('/').next()?;
                let (h, name) = base.split_once('-')?;
                if path_hash(h)? != *hash || !valid_name(name) {
                    return None;
                }
                record.name = name.to_owned();
            }
            "NarSize" => record.nar_size = value.parse().ok()?,
            "FileSize" => record.file_size = value.parse().ok()?,
            "References" => {
                for r in value.split_whitespace() {
                    record.references.push(r.get(..32).and_then(path_hash)?);
                }
            }
            "Sig" => {
                if let Some((key, _)) = value.split_once(':') {
                    record.signers.push(key.to_owned());
                }
            }
            _ => {}
        }
    }
    (!record.name.is_empty()).then_some(record)
}
