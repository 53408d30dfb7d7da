//! Request paths → validated cache keys.
//!
//! Every object a Nix client reads or writes has a fixed shape (`<hash>.narinfo`,
//! `nar/<filehash>.nar.zst`, …). A path is accepted only if it matches one of them
//! exactly, so a valid key can never name anything outside the cache directory: no
//! component can be `..`, escapes are decoded only for the few characters keys may hold, and every character is
//! drawn from a small allow-list.

use nix_derivation::StorePath;

/// The alphabet of Nix's base-32 ("nix32"): digits and letters without e, o, u, t.
const NIX32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
/// Length of a store-path hash part (20 bytes in nix32).
const STORE_HASH_LEN: usize = 32;
/// Length of a SHA-256 in nix32.
const FILE_HASH_LEN: usize = 52;

/// What kind of object a key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `nix-cache-info`, generated from configuration.
    CacheInfo,
    /// `<hash>.narinfo`.
    NarInfo,
    /// `nar/<filehash>.nar[.ext]`.
    Nar,
    /// `<hash>.ls`, a NAR listing.
    Listing,
    /// `log/<drv>`, a build log.
    Log,
    /// `debuginfo/<build-id>.debug`.
    DebugInfo,
    /// `realisations/…doi` or `build-trace-v2/…/….doi`.
    Realisation,
}

impl Kind {
    /// The `Content-Type` this kind of object is served with.
    pub fn content_type(self) -> &'static str {
        match self {
            Kind::CacheInfo => "text/x-nix-cache-info",
            Kind::NarInfo => "text/x-nix-narinfo",
            Kind::Nar => "application/x-nix-nar",
            Kind::Listing | Kind::DebugInfo | Kind::Realisation => "application/json",
            Kind::Log => "text/plain; charset=utf-8",
        }
    }

    /// Whether an object of this kind never changes once written. NARs are named by
    /// their own hash; everything else may legitimately be overwritten.
    pub fn immutable(self) -> bool {
        self == Kind::Nar
    }
}

/// A validated cache key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectKey {
    kind: Kind,
    path: String,
}

/// Why a path is not a cache key. The message is one line, meant for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(String);

fn bad(msg: impl Into<String>) -> KeyError {
    KeyError(msg.into())
}

/// The NAR file extensions Nix writes, by store-URL `compression=` value.
pub const NAR_EXTENSIONS: &[&str] = &["", ".xz", ".zst", ".bz2", ".br", ".lz4", ".lzip"];

impl ObjectKey {
    /// Parses a request path (as sent, still percent-encoded, with or without the
    /// leading `/`, without the query string).
    pub fn parse(path: &str) -> Result<Self, KeyError> {
        let path = path.strip_prefix('/').unwrap_or(path);
        if path.len() > 3 * 512 {
            return Err(bad("key is too long"));
        }
        let decoded;
        let path = if path.contains('%') {
            decoded = percent_decode(path)?;
            decoded.as_str()
        } else {
            path
        };
        if path.len() > 512 {
            return Err(bad("key is too long"));
        }
        let kind = match path.split_once('/') {
            None => parse_top_level(path)?,
            Some(("nar", rest)) => parse_nar(rest)?,
            Some(("log", rest)) => parse_log(rest)?,
            Some(("debuginfo", rest)) => parse_debuginfo(rest)?,
            Some(("realisations", rest)) => parse_realisation(rest)?,
            Some(("build-trace-v2", rest)) => parse_build_trace(rest)?,
            Some((dir, _)) => return Err(bad(format!("unknown folder {dir:?}"))),
        };
        Ok(ObjectKey {
            kind,
            path: path.to_owned(),
        })
    }

    /// The kind of object.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The relative storage path, e.g. `nar/<filehash>.nar.xz`.
    pub fn as_str(&self) -> &str {
        &self.path
    }

    /// For a NAR key, the nix32 SHA-256 of the file named in it.
    pub fn nar_file_hash(&self) -> Option<&str> {
        (self.kind == Kind::Nar).then(|| &self.path[4..4 + FILE_HASH_LEN])
    }

    /// For a NAR key, its extension after `.nar` (`""`, `".xz"`, …).
    pub fn nar_extension(&self) -> Option<&str> {
        (self.kind == Kind::Nar).then(|| &self.path[4 + FILE_HASH_LEN + 4..])
    }

    /// For a narinfo or listing key, the store-path hash part.
    pub fn store_hash(&self) -> Option<&str> {
        matches!(self.kind, Kind::NarInfo | Kind::Listing).then(|| &self.path[..STORE_HASH_LEN])
    }
}

/// Decodes `%XX` escapes of the few characters a key may hold that a client may have
/// to escape (`?` in an output name starts a query otherwise; `:`, `!`, `+`, `=`, `@`
/// are escaped by some HTTP libraries). Escapes of anything else are refused: `/`,
/// `.`, `%` and control bytes so that decoding can never create a new path
/// component, a `..`, or a second round of decoding; letters, digits, `-` and `_`
/// (which no client needs to escape) so that `/%6E%61%72/…` cannot slip a NAR past
/// a proxy rule written for `/nar/`.
fn percent_decode(path: &str) -> Result<String, KeyError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(char::from(bytes[i]));
            i += 1;
            continue;
        }
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or_else(|| bad("a % in a key must start a %XX escape"))?;
        if !b"+:!=?@".contains(&hex) {
            return Err(bad(format!(
                "%{:02X} never needs escaping in a cache key and is refused",
                hex
            )));
        }
        out.push(char::from(hex));
        i += 3;
    }
    Ok(out)
}

fn is_nix32(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| nix32_digit(b).is_some())
}

/// The value of `b` as a nix32 digit, `None` outside the alphabet. A table lookup:
/// every request's key is checked character by character.
pub fn nix32_digit(b: u8) -> Option<u8> {
    match NIX32_DIGIT[usize::from(b)] {
        INVALID_DIGIT => None,
        d => Some(d),
    }
}

const INVALID_DIGIT: u8 = 0xff;

static NIX32_DIGIT: [u8; 256] = {
    let mut table = [INVALID_DIGIT; 256];
    let mut i = 0;
    while i < NIX32.len() {
        table[NIX32[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// A nix32 SHA-256: 52 characters whose top 4 bits (beyond 256) are zero, as Nix
/// requires when decoding, so the first character is `0` or `1`.
fn is_nix32_sha256(s: &str) -> bool {
    is_nix32(s, FILE_HASH_LEN) && matches!(s.as_bytes()[0], b'0' | b'1')
}

fn parse_top_level(name: &str) -> Result<Kind, KeyError> {
    if name == "nix-cache-info" {
        return Ok(Kind::CacheInfo);
    }
    let (hash, kind) = if let Some(hash) = name.strip_suffix(".narinfo") {
        (hash, Kind::NarInfo)
    } else if let Some(hash) = name.strip_suffix(".ls") {
        (hash, Kind::Listing)
    } else {
        return Err(bad(format!("{name:?} is not a cache object")));
    };
    if !is_nix32(hash, STORE_HASH_LEN) {
        return Err(bad(format!(
            "{hash:?} is not a store path hash (32 nix32 characters)"
        )));
    }
    Ok(kind)
}

fn parse_nar(name: &str) -> Result<Kind, KeyError> {
    let (hash, ext) = name
        .split_once('.')
        .ok_or_else(|| bad("a NAR key is nar/<filehash>.nar[.ext]"))?;
    if !is_nix32_sha256(hash) {
        return Err(bad(format!(
            "{hash:?} is not a file hash (52 nix32 characters of a SHA-256)"
        )));
    }
    let ext = ext
        .strip_prefix("nar")
        .ok_or_else(|| bad("a NAR key is nar/<filehash>.nar[.ext]"))?;
    if !NAR_EXTENSIONS.contains(&ext) {
        return Err(bad(format!("unknown NAR extension {ext:?}")));
    }
    Ok(Kind::Nar)
}

/// A derivation's base name, `<hash>-<name>.drv`, as Nix itself validates it.
fn is_drv_basename(name: &str) -> bool {
    name.ends_with(".drv")
        && StorePath::from_basename(name.as_bytes()).is_ok()
        && is_nix32(&name[..STORE_HASH_LEN], STORE_HASH_LEN)
}

fn parse_log(name: &str) -> Result<Kind, KeyError> {
    if !is_drv_basename(name) {
        return Err(bad("a log key is log/<hash>-<name>.drv"));
    }
    Ok(Kind::Log)
}

fn parse_debuginfo(name: &str) -> Result<Kind, KeyError> {
    let id = name
        .strip_suffix(".debug")
        .ok_or_else(|| bad("a debuginfo key is debuginfo/<40 hex>.debug"))?;
    if id.len() != 40
        || !id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(bad("a debuginfo key is debuginfo/<40 hex>.debug"));
    }
    Ok(Kind::DebugInfo)
}

/// A derivation output name: what Nix accepts in a store path name, and never
/// starting with a dot.
fn is_output_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 211
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-._?=".contains(&b))
}

fn parse_realisation(name: &str) -> Result<Kind, KeyError> {
    const SHAPE: &str = "a realisation key is realisations/sha256:<64 hex>!<output>.doi";
    let id = name.strip_suffix(".doi").ok_or_else(|| bad(SHAPE))?;
    let (hash, output) = id.split_once('!').ok_or_else(|| bad(SHAPE))?;
    let hex = hash.strip_prefix("sha256:").ok_or_else(|| bad(SHAPE))?;
    let hex_ok = hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !hex_ok || !is_output_name(output) {
        return Err(bad(SHAPE));
    }
    Ok(Kind::Realisation)
}

fn parse_build_trace(rest: &str) -> Result<Kind, KeyError> {
    const SHAPE: &str = "a build trace key is build-trace-v2/<hash>-<name>.drv/<output>.doi";
    let (drv, file) = rest.split_once('/').ok_or_else(|| bad(SHAPE))?;
    let output = file.strip_suffix(".doi").ok_or_else(|| bad(SHAPE))?;
    if !is_drv_basename(drv) || !is_output_name(output) {
        return Err(bad(SHAPE));
    }
    Ok(Kind::Realisation)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "nx73vzmbhpb3836sq4af0c7y7rlw5z6y";
    const FH: &str = "1s5nqwqlnw6zdnqzjfcc78w50vlwxm1rb005xl3y7z5fd9165z2p";

    #[test]
    fn accepts_every_object_a_client_uses() {
        let cases = [
            ("/nix-cache-info".to_owned(), Kind::CacheInfo),
            (format!("/{H}.narinfo"), Kind::NarInfo),
            (format!("/{H}.ls"), Kind::Listing),
            (format!("/log/{H}-hello-1.0.drv"), Kind::Log),
            (
                "/debuginfo/02623eda209c26a59b1a8638ff7752f6b945c26b.debug".to_owned(),
                Kind::DebugInfo,
            ),
            (
                format!("/realisations/sha256:{}!out.doi", "a".repeat(64)),
                Kind::Realisation,
            ),
            (
                format!("/build-trace-v2/{H}-x.drv/dev.doi"),
                Kind::Realisation,
            ),
        ];
        for (path, kind) in cases {
            assert_eq!(ObjectKey::parse(&path).unwrap().kind(), kind, "{path}");
        }
        for ext in NAR_EXTENSIONS {
            let key = ObjectKey::parse(&format!("/nar/{FH}.nar{ext}")).unwrap();
            assert_eq!(key.kind(), Kind::Nar);
            assert_eq!(key.nar_file_hash(), Some(FH));
            assert_eq!(key.nar_extension(), Some(*ext));
        }
    }

    #[test]
    fn escaped_key_characters_are_decoded() {
        let id = format!("sha256:{}!out.doi", "a".repeat(64));
        let escaped = format!("/realisations/sha256%3A{}%21out.doi", "a".repeat(64));
        let key = ObjectKey::parse(&escaped).unwrap();
        assert_eq!(key.as_str(), format!("realisations/{id}"));
        let key = ObjectKey::parse(&format!("/log/{H}-gcc%2Bwrapper.drv")).unwrap();
        assert_eq!(key.as_str(), format!("log/{H}-gcc+wrapper.drv"));
        let key = ObjectKey::parse(&format!("/build-trace-v2/{H}-x.drv/a%3Fb.doi")).unwrap();
        assert_eq!(key.as_str(), format!("build-trace-v2/{H}-x.drv/a?b.doi"));
        // Hex digits of either case.
        let key = ObjectKey::parse(&format!("/log/{H}-gcc%2bwrapper.drv")).unwrap();
        assert_eq!(key.as_str(), format!("log/{H}-gcc+wrapper.drv"));
    }

    #[test]
    fn rejects_everything_else() {
        let bad_paths = [
            "/".to_owned(),
            "".to_owned(),
            "/../etc/passwd".to_owned(),
            format!("/nar/../{H}.narinfo"),
            format!("/nar/%2e%2e/{FH}.nar"),
            format!("/nar%2F{FH}.nar"),
            format!("/nar%2f{FH}.nar"),
            format!("/{H}%2Enarinfo"),
            format!("/%25{H}.narinfo"),
            // Escapes that no client needs: they only serve to dodge proxy rules.
            format!("/%6E%61%72/{FH}.nar"),
            format!("/nar/{}%{:x}.nar", &FH[..51], FH.as_bytes()[51]),
            format!("/{}%{:x}.narinfo", &H[..31], H.as_bytes()[31]),
            format!("/log/{H}-gcc%2Dwrapper.drv"),
            format!("/log/{H}-gcc%5Fwrapper.drv"),
            format!("/log/{H}-x%00.drv"),
            format!("/log/{H}-x%.drv"),
            format!("/log/{H}-x%4.drv"),
            format!("/log/{H}-x%zz.drv"),
            format!("/{}.narinfo", &H[..31]),
            format!("/{}e.narinfo", &H[..31]),
            format!("/{}.narinfo", H.to_uppercase()),
            format!("/nar/{FH}.nar.gz"),
            format!("/nar/{FH}.nar/"),
            format!("/nar/{FH}"),
            format!("/nar/2{}.nar", &FH[1..]),
            format!("/log/{H}-x"),
            format!("/log/../{H}-x.drv"),
            format!("/log/{H}-x.drv\0"),
            format!("/log//{H}-x.drv"),
            "/debuginfo/xyz.debug".to_owned(),
            format!("/realisations/sha256:{}!.doi", "a".repeat(64)),
            format!("/realisations/sha256:{}!..doi", "a".repeat(64)),
            format!("/build-trace-v2/{H}-x.drv/../out.doi"),
            format!("/build-trace-v2/{H}-x.drv/sub/out.doi"),
            format!("/other/{H}.narinfo"),
            format!("/.tmp/{H}.narinfo"),
        ];
        for path in bad_paths {
            assert!(ObjectKey::parse(&path).is_err(), "{path:?} was accepted");
        }
    }
}

/// Generated inputs: whatever the path, the parser never panics, and every key it
/// accepts is a plain relative path of allowed characters that cannot leave the
/// cache directory.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    /// What every accepted key satisfies, whatever the input.
    fn assert_safe(input: &str, key: &ObjectKey) {
        let path = key.as_str();
        let raw = input.strip_prefix('/').unwrap_or(input);
        if raw.contains('%') {
            // Escapes of the characters a key may hold are decoded, once.
            assert!(
                !path.contains('%') && path.len() < raw.len(),
                "{input:?} -> {path:?}"
            );
        } else {
            assert_eq!(path, raw);
        }
        assert!(!path.is_empty() && path.len() <= 512, "{path:?}");
        assert!(
            path.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-._?=!:/".contains(&b)),
            "{path:?} has a character outside the allow-list"
        );
        for component in path.split('/') {
            assert!(
                !component.is_empty() && !component.starts_with('.'),
                "{path:?} has an empty, dot or dot-dot component"
            );
        }
        assert!(std::path::Path::new(path)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_))));
        // The accessors slice the path: they must hold for their kinds.
        match key.kind() {
            Kind::Nar => {
                assert!(is_nix32_sha256(key.nar_file_hash().unwrap_or_default()));
                assert!(NAR_EXTENSIONS.contains(&key.nar_extension().unwrap_or("?")));
            }
            Kind::NarInfo | Kind::Listing => {
                assert!(is_nix32(
                    key.store_hash().unwrap_or_default(),
                    STORE_HASH_LEN
                ));
            }
            _ => assert!(key.store_hash().is_none() && key.nar_file_hash().is_none()),
        }
        assert_eq!(
            ObjectKey::parse(path).as_ref(),
            Ok(key),
            "parsing is stable"
        );
    }

    fn check(input: &str) {
        if let Ok(key) = ObjectKey::parse(input) {
            assert_safe(input, &key);
        }
    }

    const HASH: &str = "[0-9a-df-np-sv-z]{32}";
    const FILE_HASH: &str = "[01][0-9a-df-np-sv-z]{51}";
    const NAME: &str = "[a-zA-Z0-9][a-zA-Z0-9+._?=-]{0,30}";

    /// Keys of every shape a client uses, with their kind.
    fn valid_key() -> impl Strategy<Value = (String, Kind)> {
        prop_oneof![
            Just(("/nix-cache-info".to_owned(), Kind::CacheInfo)),
            HASH.prop_map(|h| (format!("/{h}.narinfo"), Kind::NarInfo)),
            HASH.prop_map(|h| (format!("{h}.ls"), Kind::Listing)),
            (FILE_HASH, prop::sample::select(NAR_EXTENSIONS))
                .prop_map(|(h, e)| (format!("/nar/{h}.nar{e}"), Kind::Nar)),
            (HASH, NAME).prop_map(|(h, n)| (format!("/log/{h}-{n}.drv"), Kind::Log)),
            "[0-9a-f]{40}".prop_map(|id| (format!("/debuginfo/{id}.debug"), Kind::DebugInfo)),
            ("[0-9a-f]{64}", NAME).prop_map(|(h, o)| (
                format!("/realisations/sha256:{h}!{o}.doi"),
                Kind::Realisation
            )),
            (HASH, NAME, NAME).prop_map(|(h, n, o)| (
                format!("/build-trace-v2/{h}-{n}.drv/{o}.doi"),
                Kind::Realisation
            )),
        ]
    }

    /// Characters that make paths hostile.
    const NASTY: &[&str] = &[
        ".", "..", "/", "/../", "%", "%2e", "%2f", "\0", "\\", " ", "e", "E", "é", "\u{202e}",
        "\u{9b}", ":", "!", "?", "#", "~", "*", "\n", "//", ".tmp",
    ];

    #[derive(Debug, Clone)]
    enum Edit {
        Insert(usize, &'static str),
        Replace(usize, &'static str),
        Delete(usize),
        Truncate(usize),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        let nasty = prop::sample::select(NASTY);
        prop_oneof![
            (any::<usize>(), nasty.clone()).prop_map(|(i, s)| Edit::Insert(i, s)),
            (any::<usize>(), nasty).prop_map(|(i, s)| Edit::Replace(i, s)),
            any::<usize>().prop_map(Edit::Delete),
            any::<usize>().prop_map(Edit::Truncate),
        ]
    }

    fn apply(path: &str, edits: &[Edit]) -> String {
        let mut chars: Vec<String> = path.chars().map(String::from).collect();
        for e in edits {
            let len = chars.len();
            match e {
                Edit::Insert(i, s) => chars.insert(i % (len + 1), (*s).to_owned()),
                Edit::Replace(i, s) if len > 0 => chars[i % len] = (*s).to_owned(),
                Edit::Delete(i) if len > 0 => {
                    chars.remove(i % len);
                }
                Edit::Truncate(i) => chars.truncate(i % (len + 1)),
                _ => {}
            }
        }
        chars.concat()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::cache::fuzz_cases(2000)))]

        #[test]
        fn any_string(input in any::<String>()) {
            check(&input);
        }

        #[test]
        fn path_like_strings(input in "/?([a-z0-9.%:!_-]{0,60}/){0,4}[a-z0-9.%:!_-]{0,60}") {
            check(&input);
        }

        #[test]
        fn valid_keys_are_accepted((path, kind) in valid_key()) {
            let key = ObjectKey::parse(&path);
            prop_assert!(key.is_ok(), "{path:?} refused: {key:?}");
            let key = key.unwrap_or_else(|_| unreachable!());
            prop_assert_eq!(key.kind(), kind);
            assert_safe(&path, &key);
        }

        #[test]
        fn edited_keys((path, _) in valid_key(), edits in prop::collection::vec(edit(), 1..4)) {
            let edited = apply(&path, &edits);
            check(&edited);
            // No NUL ever passes, and no escape of anything but the few characters
            // a key may hold (`..` inside a name is a name; as a component,
            // `assert_safe` refuses it).
            if edited.contains('\0') {
                prop_assert!(ObjectKey::parse(&edited).is_err(), "{edited:?} accepted");
            }
            if let Ok(key) = ObjectKey::parse(&edited) {
                prop_assert!(!key.as_str().contains('%'), "{edited:?} kept a %");
            }
        }
    }
}
