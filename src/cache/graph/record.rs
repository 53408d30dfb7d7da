//! What the graph keeps of a stored narinfo, read from its text in one scan: the
//! fields retention needs and, when the page is on, the ones it shows.

use super::keys::{path_hash, NarKey, PathHash};

/// The longest store path name Nix accepts.
pub const MAX_NAME: usize = 211;

/// The fields of one stored narinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its NAR file.
    pub nar: NarKey,
    /// `FileSize` (0 when absent).
    pub file_size: u64,
    /// The hashes of its `References`, itself left out.
    pub references: Vec<PathHash>,
    /// The name after the hash, when its StorePath names the narinfo's own hash
    /// with a name Nix accepts (only then is it shown).
    pub name: Option<String>,
    /// `NarSize` (0 when absent or unreadable: only shown).
    pub nar_size: u64,
    /// The key names of its `Sig` lines.
    pub signers: Vec<String>,
}

/// Whether `name` is a store path name as Nix accepts it (and so holds no
/// [`super::labels::SEPARATOR`]).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-._?=".contains(&b))
}

/// Reads the stored narinfo of `hash`. Stored narinfos were checked on upload, or
/// come from another writer: one without a NAR key this server understands, or
/// with an unreadable FileSize or References, is `Err`, with its URL when it has
/// one (retention never removes it, nor the file it names).
pub fn parse(hash: &PathHash, bytes: &[u8]) -> Result<Record, Option<String>> {
    let text = std::str::from_utf8(bytes).map_err(|_| None)?;
    let url = text
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .map(|u| u.trim().to_owned());
    let fail = || url.clone();
    let nar = url.as_deref().and_then(NarKey::parse).ok_or_else(fail)?;
    let mut record = Record {
        nar,
        file_size: 0,
        references: Vec::new(),
        name: None,
        nar_size: 0,
        signers: Vec::new(),
    };
    for line in text.lines() {
        let Some((field, value)) = line.split_once(": ") else {
            continue;
        };
        let value = value.trim();
        match field {
            "FileSize" => record.file_size = value.parse().map_err(|_| fail())?,
            "References" => {
                for r in value.split_whitespace() {
                    let r = r.get(..32).and_then(path_hash).ok_or_else(fail)?;
                    if r != *hash {
                        record.references.push(r);
                    }
                }
            }
            "StorePath" => record.name = name_of(hash, value),
            "NarSize" => record.nar_size = value.parse().unwrap_or(0),
            "Sig" => {
                if let Some((key, _)) = value.split_once(':') {
                    record.signers.push(key.to_owned());
                }
            }
            _ => {}
        }
    }
    // A set, as Nix reads it: a reference listed twice counts once (the checks of
    // uploads merge duplicates too, but the stored text keeps them), and a rewrite
    // that only reorders the list is no change.
    record.references.sort_unstable();
    record.references.dedup();
    Ok(record)
}

/// The name in `store_path` when it names `hash` with a valid name.
fn name_of(hash: &PathHash, store_path: &str) -> Option<String> {
    let base = store_path.rsplit('/').next()?;
    let (h, name) = base.split_once('-')?;
    (path_hash(h)? == *hash && valid_name(name)).then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narinfo_fields() {
        let h = crate::cache::graph::path_hash_str(&[1; 20]);
        let text = format!(
            "StorePath: /nix/store/{h}-p\nURL: nar/{n}.nar.xz\nCompression: xz\nFileSize: 12\nNarSize: 40\nReferences: {h}-p {q}-q\nSig: k-1:abc\n",
            n = nix_derivation::nixbase32::encode(&[2; 32]),
            q = crate::cache::graph::path_hash_str(&[3; 20]),
        );
        let r = parse(&[1; 20], text.as_bytes()).unwrap();
        assert_eq!((r.nar.hash, r.file_size, r.nar_size), ([2; 32], 12, 40));
        // Itself left out of its references.
        assert_eq!(r.references, [[3; 20]]);
        // A set: listed twice, or in another order, the same references.
        let q = crate::cache::graph::path_hash_str(&[3; 20]);
        let z = crate::cache::graph::path_hash_str(&[0; 20]);
        let twice = text.replace(
            &format!("References: {h}-p {q}-q"),
            &format!("References: {q}-q {z}-z {q}-q"),
        );
        let r2 = parse(&[1; 20], twice.as_bytes()).unwrap();
        assert_eq!(r2.references, [[0; 20], [3; 20]]);
        assert_eq!(
            (r.name.as_deref(), r.signers.as_slice()),
            (Some("p"), &["k-1".to_owned()][..])
        );
        // Another hash's StorePath: read for retention, not shown.
        assert_eq!(parse(&[4; 20], text.as_bytes()).unwrap().name, None);
        // A name Nix would refuse: not shown.
        let bad = text.replace("-p\nURL", "-<b>\nURL");
        assert_eq!(parse(&[1; 20], bad.as_bytes()).unwrap().name, None);
        // A URL that is no NAR key: refused, with the URL.
        let odd = text.replace("URL: nar/", "URL: elsewhere/");
        assert!(parse(&[1; 20], odd.as_bytes())
            .unwrap_err()
            .is_some_and(|u| u.starts_with("elsewhere/")));
    }
}
