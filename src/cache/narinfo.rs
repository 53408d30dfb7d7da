//! Validation of uploaded narinfos: the cache never stores one a Nix client would
//! reject or that points at something the cache does not have.
//!
//! Parsing is cachix's `nix-narinfo`; this module adds what that parser is lenient
//! about but real Nix clients are not (exact `Key: value\n` lines, an explicit
//! `Compression`), and the checks that relate the narinfo to the cache (its key, its
//! NAR, its store directory, trusted signatures).

use nix_derivation::{nixbase32, NixHash, StoreDir};
use nix_narinfo::{Compression, NarInfo, TrustedPublicKey};

use super::key::{Kind, ObjectKey};

/// Upper bound on a narinfo's size, the same as the parser's.
pub const MAX_NARINFO_SIZE: usize = nix_narinfo::MAX_NARINFO_SIZE;

/// A narinfo that passed every check that needs no storage access.
#[derive(Debug)]
pub struct CheckedNarInfo {
    /// The NAR it points to.
    pub nar: ObjectKey,
    /// Its declared `FileSize`, to compare with the stored NAR.
    pub file_size: u64,
    /// Hash parts of the references other than the path itself.
    pub references: Vec<String>,
    /// Its declared `NarHash` (a SHA-256), to compare with what the NAR decodes to.
    pub nar_hash: [u8; 32],
    /// Its declared `NarSize`.
    pub nar_size: u64,
}

/// What a narinfo upload is checked against.
pub struct NarInfoPolicy<'a> {
    /// The store directory clients use, e.g. `/nix/store`.
    pub store_dir: &'a StoreDir,
    /// When non-empty, a narinfo needs a valid signature by one of these keys (or a
    /// content address that reproduces its store path, if
    /// `content_addressed_unsigned`).
    pub trusted_keys: &'a [TrustedPublicKey],
    /// Whether a content address that reproduces the store path stands in for a
    /// signature (as it does for Nix); not for upstream narinfos, which must be signed.
    pub content_addressed_unsigned: bool,
}

/// Checks the exact line syntax Nix's own parser needs. The Rust parser accepts CRLF,
/// blank lines and extra spaces that make Nix declare the file corrupt.
fn check_syntax(text: &str) -> Result<Vec<&str>, String> {
    if text.is_empty() {
        return Err("narinfo is empty".into());
    }
    if !text.ends_with('\n') {
        return Err("narinfo must end with a newline".into());
    }
    let mut names = Vec::new();
    for (n, line) in text[..text.len() - 1].split('\n').enumerate() {
        let n = n + 1;
        if line.contains('\r') {
            return Err(format!("narinfo line {n} contains a carriage return"));
        }
        let Some((name, value)) = line.split_once(": ") else {
            return Err(format!("narinfo line {n} is not 'Key: value'"));
        };
        if name.is_empty() || name.contains(':') || value.starts_with([' ', '\t']) {
            return Err(format!("narinfo line {n} is not 'Key: value'"));
        }
        names.push(name);
    }
    Ok(names)
}

/// The NAR file extension Nix writes for a compression method.
fn extension_for(compression: &Compression) -> &'static str {
    match compression.as_str() {
        "xz" => ".xz",
        "zstd" => ".zst",
        "bzip2" => ".bz2",
        "br" => ".br",
        "lz4" => ".lz4",
        "lzip" => ".lzip",
        _ => "",
    }
}

fn sha256_nix32(hash: &NixHash) -> Option<String> {
    match hash {
        NixHash::Sha256(d) => Some(nixbase32::encode(d)),
        _ => None,
    }
}

/// Validates an uploaded narinfo for the store-path hash `key_hash`.
pub fn check(
    body: &[u8],
    key_hash: &str,
    policy: &NarInfoPolicy<'_>,
) -> Result<CheckedNarInfo, String> {
    let text = std::str::from_utf8(body).map_err(|_| "narinfo is not UTF-8".to_owned())?;
    let names = check_syntax(text)?;
    if !names.contains(&"Compression") {
        // Nix reads a missing Compression as bzip2, which is almost never what was meant.
        return Err("narinfo has no Compression field".into());
    }
    let info = NarInfo::parse_in(policy.store_dir, body).map_err(|e| e.to_string())?;

    let path = info.store_path();
    let basename = path.to_basename();
    if &basename[..32] != key_hash {
        return Err(format!(
            "StorePath {} does not match the key {key_hash}.narinfo",
            policy.store_dir.render_path(path)
        ));
    }

    // A leading slash means "host root" to new clients and `BASE//nar` to old ones.
    let nar = Some(info.url())
        .filter(|u| !u.starts_with('/'))
        .and_then(|u| ObjectKey::parse(u).ok())
        .filter(|k| k.kind() == Kind::Nar)
        .ok_or_else(|| format!("URL {:?} is not nar/<filehash>.nar[.ext]", info.url()))?;
    let file_hash = nar.nar_file_hash().unwrap_or_default().to_owned();
    let expected_ext = extension_for(info.compression());
    if nar.nar_extension() != Some(expected_ext) {
        return Err(format!(
            "URL {} does not match Compression: {} (expected a .nar{expected_ext} file)",
            info.url(),
            info.compression()
        ));
    }

    let declared = info.file_hash().ok_or("narinfo has no FileHash field")?;
    if sha256_nix32(declared).as_deref() != Some(file_hash.as_str()) {
        return Err(format!(
            "FileHash {} does not match the NAR file name {}",
            declared.to_nix_nixbase32_string(),
            info.url()
        ));
    }
    let file_size = info.file_size().ok_or("narinfo has no FileSize field")?;

    if *info.compression() == Compression::None
        && (info.nar_hash() != declared || info.nar_size() != file_size)
    {
        return Err("Compression is none but NarHash/NarSize differ from FileHash/FileSize".into());
    }
    let NixHash::Sha256(nar_hash) = *info.nar_hash() else {
        return Err("NarHash must be a SHA-256".into());
    };

    for sig in info.signatures() {
        let ok = sig
            .canonicalized()
            .ok()
            .and_then(|s| {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .decode(&s.encoded)
                    .ok()
            })
            .is_some_and(|raw| raw.len() == 64);
        if !ok {
            return Err(format!("malformed Sig line {:?}", sig.to_nix_string()));
        }
    }
    if !policy.trusted_keys.is_empty()
        && !info.has_valid_signature(policy.store_dir, policy.trusted_keys)
    {
        let proven =
            policy.content_addressed_unsigned && info.is_content_addressed(policy.store_dir);
        if !proven {
            return Err("narinfo carries no valid signature by a trusted public key".into());
        }
    }

    let references = info
        .references()
        .iter()
        .filter(|r| *r != path)
        .map(|r| r.to_basename()[..32].to_owned())
        .collect();
    Ok(CheckedNarInfo {
        nar,
        file_size,
        references,
        nar_hash,
        nar_size: info.nar_size(),
    })
}

/// What a narinfo upload does to the narinfo already stored under its key.
#[derive(Debug, PartialEq, Eq)]
pub enum Merge {
    /// The upload adds nothing: no write needed.
    Unchanged,
    /// Store these bytes: the upload, plus the stored signatures it lacks.
    Replace(Vec<u8>),
    /// The stored narinfo does not parse (written by another tool, or damaged): the
    /// upload, which passed every check, replaces it.
    ReplaceInvalid,
}

/// Merges an accepted narinfo upload (`new`, already [`check`]ed) into the stored
/// one. A store path's contents never change, so neither may what describes them:
/// `StorePath`, `NarHash`, `NarSize`, `References`, `Deriver` and `CA` must be equal
/// (`Err` with the first difference; a `CA` that reproduces the path may be added), or a writer could swap a signed path for an
/// unsigned one or point it at other contents. Signatures are merged, never
/// dropped, so `nix store sign --store` works; `URL`/`Compression`/`FileHash`/
/// `FileSize` follow the upload, whose NAR [`check`] and the cache have verified.
pub fn merge(stored: &[u8], new: &[u8], store_dir: &StoreDir) -> Result<Merge, String> {
    let Ok(old) = NarInfo::parse_in(store_dir, stored) else {
        return Ok(Merge::ReplaceInvalid);
    };
    let new_info = NarInfo::parse_in(store_dir, new).map_err(|e| e.to_string())?;
    let path = store_dir.render_path(old.store_path());
    let differs = |field: &str| {
        Err(format!(
            "{path} is already in this cache with another {field}; a stored path never changes (only signatures are added)"
        ))
    };
    if old.store_path() != new_info.store_path() {
        return differs("StorePath");
    }
    if old.nar_hash() != new_info.nar_hash() {
        return differs("NarHash");
    }
    if old.nar_size() != new_info.nar_size() {
        return differs("NarSize");
    }
    if old.references() != new_info.references() {
        return differs("References");
    }
    if old.deriver() != new_info.deriver() {
        return differs("Deriver");
    }
    // A content address may be added to a path stored without one when it
    // reproduces the store path: it adds a proof, not a claim.
    let ca_added = old.content_address().is_none() && new_info.is_content_addressed(store_dir);
    if old.content_address() != new_info.content_address() && !ca_added {
        return differs("CA");
    }
    let sig_text = |s: &nix_narinfo::NarInfoSignature| s.to_nix_string();
    let uploaded: Vec<String> = new_info.signatures().iter().map(sig_text).collect();
    let kept: Vec<String> = old
        .signatures()
        .iter()
        .map(sig_text)
        .filter(|s| !uploaded.contains(s))
        .collect();
    if kept.is_empty() && stored == new {
        return Ok(Merge::Unchanged);
    }
    let mut merged = new.to_vec();
    for sig in kept {
        merged.extend_from_slice(format!("Sig: {sig}\n").as_bytes());
    }
    if merged == stored {
        return Ok(Merge::Unchanged);
    }
    Ok(Merge::Replace(merged))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Produced by Nix 2.8 (compression none, signed by test-cache-1).
    pub(super) const GOOD: &str = "StorePath: /nix/store/nx73vzmbhpb3836sq4af0c7y7rlw5z6y-b-top
URL: nar/1s5nqwqlnw6zdnqzjfcc78w50vlwxm1rb005xl3y7z5fd9165z2p.nar
Compression: none
FileHash: sha256:1s5nqwqlnw6zdnqzjfcc78w50vlwxm1rb005xl3y7z5fd9165z2p
FileSize: 168
NarHash: sha256:1s5nqwqlnw6zdnqzjfcc78w50vlwxm1rb005xl3y7z5fd9165z2p
NarSize: 168
References: 5xf4hlminf1vnpb5awkarlb8wxix6mca-a-dep
Sig: test-cache-1:JYPd+r3BW12yJxfmNEGc7i2Tzg4qqMv359bEix3iF4iDAr/UH8gv3JWOk2mpg+NCqp4uZX+BGFuExX/mwvXDDQ==
CA: text:sha256:0aljj4maffkd8av2clqmf6m2l64pl90mg8r1vbqbj0gdh1ihp9d3
";
    pub(super) const KEY: &str = "nx73vzmbhpb3836sq4af0c7y7rlw5z6y";
    const PUBKEY: &str = "test-cache-1:DZFFwF/5PPclp0cIqjJCty5ElDaVKFCiNBqWUhBOK08=";

    fn run(body: &str, keys: &[TrustedPublicKey]) -> Result<CheckedNarInfo, String> {
        let dir = StoreDir::default();
        check(
            body.as_bytes(),
            KEY,
            &NarInfoPolicy {
                store_dir: &dir,
                trusted_keys: keys,
                content_addressed_unsigned: true,
            },
        )
    }

    #[test]
    fn accepts_a_narinfo_written_by_nix() {
        let checked = run(GOOD, &[]).unwrap();
        assert_eq!(checked.file_size, 168);
        assert_eq!(checked.references, vec!["5xf4hlminf1vnpb5awkarlb8wxix6mca"]);
        assert_eq!(
            checked.nar.as_str(),
            "nar/1s5nqwqlnw6zdnqzjfcc78w50vlwxm1rb005xl3y7z5fd9165z2p.nar"
        );
    }

    #[test]
    fn verifies_the_signature_against_trusted_keys() {
        let good = TrustedPublicKey::parse(PUBKEY).unwrap();
        assert!(run(GOOD, std::slice::from_ref(&good)).is_ok());
        // Same key name, another key: not trusted.
        let other =
            TrustedPublicKey::parse("test-cache-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=")
                .unwrap();
        // The path is a text CA path though, which would self-verify if it were
        // consistent; drop the CA line to test the signature alone.
        let no_ca: String = GOOD
            .lines()
            .filter(|l| !l.starts_with("CA:"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(run(&no_ca, std::slice::from_ref(&good)).is_ok());
        assert!(run(&no_ca, std::slice::from_ref(&other))
            .unwrap_err()
            .contains("signature"));
        // Upstream narinfos: a content address never stands in for the signature.
        let dir = StoreDir::default();
        let upstream = NarInfoPolicy {
            store_dir: &dir,
            trusted_keys: &[other],
            content_addressed_unsigned: false,
        };
        let refused = check(GOOD.as_bytes(), KEY, &upstream).unwrap_err();
        assert!(refused.contains("signature"), "{refused}");
    }

    #[test]
    fn rejects_what_nix_would_reject() {
        let cases: Vec<(String, &str)> = vec![
            (GOOD.replace('\n', "\r\n"), "carriage return"),
            (GOOD.trim_end().to_owned(), "newline"),
            (GOOD.replace("Compression: none\n", ""), "Compression"),
            (GOOD.replace("NarSize: 168", "NarSize:168"), "Key: value"),
            (GOOD.replace("\nURL", "\n\nURL"), "Key: value"),
            (
                GOOD.replace(
                    "nx73vzmbhpb3836sq4af0c7y7rlw5z6y-b-top",
                    "5xf4hlminf1vnpb5awkarlb8wxix6mca-b-top",
                ),
                "does not match the key",
            ),
            (
                GOOD.replace("/nix/store/nx73", "/gnu/store/nx73"),
                "StorePath",
            ),
            (GOOD.replace(".nar\n", ".nar.xz\n"), "Compression"),
            (
                GOOD.replace("FileHash: sha256:1s5", "FileHash: sha256:0s5"),
                "FileHash",
            ),
            (GOOD.replace("FileSize: 168\n", ""), "FileSize"),
            (GOOD.replace("NarSize: 168", "NarSize: 169"), "none"),
            (GOOD.replace("URL: nar/", "URL: /nar/"), "URL"),
            (GOOD.replace("URL: nar/", "URL: ../nar/"), "URL"),
            (
                GOOD.replace("Sig: test-cache-1:", "Sig: test-cache-1:!!"),
                "Sig",
            ),
        ];
        for (body, expect) in cases {
            let err = run(&body, &[]).map(|_| ()).expect_err(expect);
            assert!(err.contains(expect), "expected {expect:?} in {err:?}");
        }
    }
}

/// Generated narinfos: whatever the bytes, validation never panics, and whatever it
/// accepts points at a NAR key matching its `FileHash`, `FileSize` and compression.
#[cfg(test)]
mod fuzz {
    use super::tests::{GOOD, KEY};
    use super::*;
    use proptest::prelude::*;

    fn run(body: &[u8]) -> Result<CheckedNarInfo, String> {
        let dir = StoreDir::default();
        check(
            body,
            KEY,
            &NarInfoPolicy {
                store_dir: &dir,
                trusted_keys: &[],
                content_addressed_unsigned: true,
            },
        )
    }

    /// What every accepted narinfo satisfies.
    fn assert_consistent(body: &[u8], checked: &CheckedNarInfo) {
        let text = std::str::from_utf8(body).expect("accepted narinfos are UTF-8");
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(": ")))
        };
        assert_eq!(checked.nar.kind(), Kind::Nar);
        assert_eq!(Some(checked.nar.as_str()), field("URL"));
        let file_hash = checked.nar.nar_file_hash().unwrap_or_default();
        assert_eq!(
            field("FileHash").and_then(|h| h.strip_prefix("sha256:")),
            Some(file_hash),
            "the NAR key is the FileHash"
        );
        assert_eq!(
            field("FileSize").and_then(|s| s.parse().ok()),
            Some(checked.file_size)
        );
        assert!(field("Compression").is_some());
        // One value per field Nix reads (it and this parser could otherwise read
        // different ones): only signatures repeat; unknown fields are ignored by
        // both.
        const KNOWN: &[&str] = &[
            "StorePath",
            "URL",
            "Compression",
            "FileHash",
            "FileSize",
            "NarHash",
            "NarSize",
            "References",
            "Deriver",
            "System",
            "CA",
        ];
        let mut names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split_once(": ").map(|(n, _)| n))
            .filter(|n| KNOWN.contains(n))
            .collect();
        let all = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all, "a field appears twice in {text:?}");
        assert!(field("StorePath").is_some_and(|p| p.contains(KEY)));
        for r in &checked.references {
            assert!(r.len() == 32 && r != KEY, "{r:?}");
        }
    }

    #[derive(Debug, Clone)]
    enum Edit {
        DeleteLine(usize),
        DuplicateLine(usize),
        SwapLines(usize, usize),
        ReplaceByte(usize, u8),
        InsertText(usize, String),
        Truncate(usize),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        prop_oneof![
            any::<usize>().prop_map(Edit::DeleteLine),
            any::<usize>().prop_map(Edit::DuplicateLine),
            (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
            (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::ReplaceByte(i, b)),
            (
                any::<usize>(),
                prop_oneof![
                    Just("\n".to_owned()),
                    Just("\r\n".to_owned()),
                    Just(": ".to_owned()),
                    Just("sha256:".to_owned()),
                    Just("99999999999999999999999".to_owned()),
                    Just("-1".to_owned()),
                    Just("../".to_owned()),
                    Just("/nix/store/".to_owned()),
                    "[A-Za-z]{1,12}: [ -~]{0,80}\n",
                    "[ -~]{0,40}",
                ]
            )
                .prop_map(|(i, s)| Edit::InsertText(i, s)),
            any::<usize>().prop_map(Edit::Truncate),
        ]
    }

    fn apply(body: &[u8], edits: &[Edit]) -> Vec<u8> {
        let mut lines: Vec<Vec<u8>> = body
            .split_inclusive(|b| *b == b'\n')
            .map(<[u8]>::to_vec)
            .collect();
        for e in edits {
            let n = lines.len().max(1);
            match e {
                Edit::DeleteLine(i) if !lines.is_empty() => {
                    lines.remove(i % n);
                }
                Edit::DuplicateLine(i) if !lines.is_empty() => {
                    let l = lines[i % n].clone();
                    lines.insert(i % n, l);
                }
                Edit::SwapLines(a, b) if !lines.is_empty() => lines.swap(a % n, b % n),
                _ => {
                    let mut flat = lines.concat();
                    let len = flat.len();
                    match e {
                        Edit::ReplaceByte(i, b) if len > 0 => flat[i % len] = *b,
                        Edit::InsertText(i, s) => {
                            let at = i % (len + 1);
                            flat.splice(at..at, s.bytes());
                        }
                        Edit::Truncate(i) => flat.truncate(i % (len + 1)),
                        _ => {}
                    }
                    lines = flat
                        .split_inclusive(|b| *b == b'\n')
                        .map(<[u8]>::to_vec)
                        .collect();
                }
            }
        }
        lines.concat()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::cache::fuzz_cases(3000)))]

        #[test]
        fn any_bytes(body in prop::collection::vec(any::<u8>(), 0..2048)) {
            if let Ok(checked) = run(&body) {
                assert_consistent(&body, &checked);
            }
        }

        #[test]
        fn key_value_lines(body in "([A-Za-z]{1,12}: [ -~]{0,100}\n){0,12}") {
            if let Ok(checked) = run(body.as_bytes()) {
                assert_consistent(body.as_bytes(), &checked);
            }
        }

        #[test]
        fn edited_narinfos(edits in prop::collection::vec(edit(), 1..5)) {
            let body = apply(GOOD.as_bytes(), &edits);
            if let Ok(checked) = run(&body) {
                assert_consistent(&body, &checked);
            }
        }
    }

    /// A valid narinfo for [`KEY`], from generated parts: every field Nix writes,
    /// each within what Nix accepts.
    fn valid_narinfo() -> impl Strategy<Value = String> {
        let compression = prop_oneof![
            Just(("none", "")),
            Just(("xz", ".xz")),
            Just(("zstd", ".zst")),
            Just(("bzip2", ".bz2")),
            Just(("br", ".br")),
            Just(("lz4", ".lz4")),
            Just(("lzip", ".lzip")),
        ];
        let store_path_hash =
            prop::array::uniform20(any::<u8>()).prop_map(|b| nixbase32::encode(&b));
        let reference = (store_path_hash.clone(), "[a-z0-9][a-z0-9+._-]{0,20}")
            .prop_map(|(h, n)| format!("{h}-{n}"));
        (
            "[a-z0-9][a-z0-9+._-]{0,30}",
            compression,
            prop::array::uniform32(any::<u8>()),
            prop::array::uniform32(any::<u8>()),
            1u64..1 << 40,
            1u64..1 << 40,
            prop::collection::vec(reference, 0..6),
            prop::option::of(store_path_hash),
            prop::collection::vec(("[a-z][a-z0-9.-]{0,15}", prop::array::uniform32(any::<u8>())), 0..3),
        )
            .prop_map(
                |(name, (compression, ext), file, nar, file_size, nar_size, refs, deriver, sigs)| {
                    use base64::Engine as _;
                    let file_hash = nixbase32::encode(&file);
                    let (nar_hash, nar_size) = if compression == "none" {
                        (file_hash.clone(), file_size)
                    } else {
                        (nixbase32::encode(&nar), nar_size)
                    };
                    let mut text = format!(
                        "StorePath: /nix/store/{KEY}-{name}\nURL: nar/{file_hash}.nar{ext}\nCompression: {compression}\nFileHash: sha256:{file_hash}\nFileSize: {file_size}\nNarHash: sha256:{nar_hash}\nNarSize: {nar_size}\nReferences: {}\n",
                        refs.join(" ")
                    );
                    if let Some(d) = deriver {
                        text.push_str(&format!("Deriver: {d}-{name}.drv\n"));
                    }
                    for (key_name, half) in sigs {
                        let mut raw = half.to_vec();
                        raw.extend_from_slice(&half);
                        let sig = base64::engine::general_purpose::STANDARD.encode(raw);
                        text.push_str(&format!("Sig: {key_name}:{sig}\n"));
                    }
                    text
                },
            )
    }

    /// A change to a narinfo's text, and the part of the refusal that names it.
    type Change = (fn(&str) -> String, &'static str);

    /// A change to a valid narinfo that Nix (or this cache) must refuse.
    fn breaking_change() -> impl Strategy<Value = Change> {
        fn line_with(text: &str, name: &str, f: impl Fn(&str) -> String) -> String {
            text.lines()
                .map(|l| match l.strip_prefix(name) {
                    Some(rest) => format!("{}\n", f(&format!("{name}{rest}"))),
                    None => format!("{l}\n"),
                })
                .collect()
        }
        let cases: Vec<Change> = vec![
            (|t| t.replace('\n', "\r\n"), "carriage return"),
            (|t| t.trim_end().to_owned(), "newline"),
            (
                |t| line_with(t, "Compression:", |_| String::new()),
                "Key: value",
            ),
            (
                |t| {
                    t.lines()
                        .filter(|l| !l.starts_with("Compression:"))
                        .map(|l| format!("{l}\n"))
                        .collect()
                },
                "Compression",
            ),
            (
                |t| {
                    line_with(t, "FileHash:", |l| {
                        l.replacen("sha256:", "sha256:0", 1)[..l.len()].to_owned()
                    })
                },
                "FileHash",
            ),
            (|t| line_with(t, "URL:", |l| format!("{l}.gz")), "URL"),
            (
                |t| line_with(t, "StorePath:", |l| l.replace("/nix/store/", "/opt/store/")),
                "store",
            ),
            (|t| line_with(t, "Sig:", |l| format!("{l}x")), "Sig"),
            (
                |t| {
                    t.lines()
                        .filter(|l| !l.starts_with("FileSize:"))
                        .map(|l| format!("{l}\n"))
                        .collect()
                },
                "FileSize",
            ),
        ];
        prop::sample::select(cases)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::cache::fuzz_cases(1000)))]

        #[test]
        fn generated_valid_narinfos_are_accepted(text in valid_narinfo()) {
            let checked = run(text.as_bytes())
                .unwrap_or_else(|e| panic!("refused ({e}):\n{text}"));
            assert_consistent(text.as_bytes(), &checked);
        }

        #[test]
        fn a_breaking_change_to_a_valid_narinfo_is_refused(
            text in valid_narinfo(),
            (change, why) in breaking_change(),
        ) {
            let broken = change(&text);
            // Some changes need the field they change (a Sig line, for one).
            prop_assume!(broken != text);
            let err = run(broken.as_bytes())
                .err()
                .unwrap_or_else(|| panic!("accepted after a breaking change ({why}):\n{broken}"));
            prop_assert!(
                err.contains(why) || why == "Key: value" || why == "store",
                "{why}: {err}\n{broken}"
            );
        }
    }

    #[test]
    fn the_unedited_narinfo_is_consistent() {
        let checked = run(GOOD.as_bytes()).unwrap();
        assert_consistent(GOOD.as_bytes(), &checked);
    }
}

/// Re-uploads of a stored narinfo.
#[cfg(test)]
mod merge_tests {
    use super::tests::GOOD;
    use super::*;

    fn merged(stored: &str, new: &str) -> Result<Merge, String> {
        merge(stored.as_bytes(), new.as_bytes(), &StoreDir::default())
    }

    #[test]
    fn a_stored_path_never_changes() {
        assert_eq!(merged(GOOD, GOOD), Ok(Merge::Unchanged));
        let nar_hash = GOOD.replace(
            "NarHash: sha256:1s5nqwqlnw6zdnqzjfcc78w50vlwxm1rb005xl3y7z5fd9165z2p",
            "NarHash: sha256:0s5nqwqlnw6zdnqzjfcc78w50vlwxm1rb005xl3y7z5fd9165z2p",
        );
        let cases = [
            (nar_hash, "NarHash"),
            (GOOD.replace("NarSize: 168", "NarSize: 169"), "NarSize"),
            (
                GOOD.replace(
                    "References: 5xf4hlminf1vnpb5awkarlb8wxix6mca-a-dep",
                    "References: ",
                ),
                "References",
            ),
            (
                GOOD.replace(
                    "CA: text",
                    "Deriver: 5xf4hlminf1vnpb5awkarlb8wxix6mca-b.drv\nCA: text",
                ),
                "Deriver",
            ),
            (GOOD.replace("-b-top", "-b-other"), "StorePath"),
        ];
        for (changed, field) in cases {
            let e = merged(GOOD, &changed).unwrap_err();
            assert!(e.contains(field), "{field}: {e}");
        }
    }

    #[test]
    fn signatures_are_merged_never_dropped() {
        let unsigned: String = GOOD
            .lines()
            .filter(|l| !l.starts_with("Sig:"))
            .map(|l| format!("{l}\n"))
            .collect();
        // Replacing a signed narinfo with an unsigned one keeps the signature.
        assert_eq!(
            merged(GOOD, &unsigned),
            Ok(Merge::Replace(good_with_sig_last().into_bytes()))
        );
        // A second signature is added to the first.
        let other = "Sig: test-cache-2:JYPd+r3BW12yJxfmNEGc7i2Tzg4qqMv359bEix3iF4iDAr/UH8gv3JWOk2mpg+NCqp4uZX+BGFuExX/mwvXDDQ==\n";
        let resigned = format!("{unsigned}{other}");
        match merged(GOOD, &resigned).unwrap() {
            Merge::Replace(bytes) => {
                let text = String::from_utf8(bytes).unwrap();
                assert_eq!(text.matches("Sig: ").count(), 2, "{text}");
                assert!(text.contains("Sig: test-cache-1:"), "{text}");
                assert!(text.contains(other), "{text}");
            }
            other => panic!("{other:?}"),
        }
        // Nothing new: nothing to write.
        assert_eq!(
            merged(&good_with_sig_last(), &unsigned),
            Ok(Merge::Unchanged)
        );
        // A CA that reproduces the path may be added; none may be removed or changed.
        let no_ca: String = GOOD
            .lines()
            .filter(|l| !l.starts_with("CA:"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(matches!(merged(&no_ca, GOOD), Ok(Merge::Replace(_))));
        assert!(merged(GOOD, &no_ca).unwrap_err().contains("CA"));
        let wrong_ca = GOOD.replace("CA: text:sha256:0", "CA: text:sha256:1");
        assert!(merged(&no_ca, &wrong_ca).unwrap_err().contains("CA"));
        // A stored narinfo that does not parse is replaced.
        assert_eq!(merged("garbage", GOOD), Ok(Merge::ReplaceInvalid));
    }

    /// [`GOOD`] with its signature moved after the CA line, as a merge writes it.
    fn good_with_sig_last() -> String {
        let (sigs, rest): (Vec<&str>, Vec<&str>) =
            GOOD.lines().partition(|l| l.starts_with("Sig:"));
        rest.iter().chain(&sigs).map(|l| format!("{l}\n")).collect()
    }
}
