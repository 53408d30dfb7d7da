//! The NAR format, checked as it streams past: a body is accepted only if it is the
//! archive `nix-store --dump` would write, byte for byte in its grammar, so a client
//! that downloads it can always unpack it.
//!
//! ```text
//! nar     = "nix-archive-1" node
//! node    = "(" "type" ( regular | symlink | directory ) ")"
//! regular = "regular" [ "executable" "" ] "contents" <bytes>
//! symlink = "symlink" "target" <bytes>
//! dir     = "directory" { "entry" "(" "name" <name> "node" node ")" }
//! ```
//!
//! Every string is a little-endian u64 length, the bytes, and zero padding to a
//! multiple of 8. Directory entries are strictly sorted by name (so names are unique),
//! and nothing may follow the root node. File contents are skipped without being
//! copied; memory is bounded by the name and depth limits below, whatever the size.

use std::io::{self, BufRead};

/// Longest entry name accepted: `NAME_MAX` of every filesystem a store path can
/// come from.
pub const MAX_NAME_LEN: u64 = 255;
/// Longest symlink target accepted: `PATH_MAX` less its NUL.
pub const MAX_TARGET_LEN: u64 = 4095;
/// Deepest directory nesting accepted. A deeper path cannot be dumped through
/// `PATH_MAX`-long paths; the bound keeps the per-level state (one name each) small.
pub const MAX_DEPTH: usize = 4096;

/// Longest tag (`nix-archive-1` is the longest).
const MAX_TAG_LEN: u64 = 16;

/// Why a body is not a NAR.
#[derive(Debug, thiserror::Error)]
pub enum NarError {
    /// The bytes break the grammar.
    #[error("not a valid NAR: {0}")]
    Invalid(String),
    /// The bytes end before the archive does.
    #[error("the NAR is truncated")]
    Truncated,
    /// Reading failed (for a compressed NAR: it did not decompress).
    #[error(transparent)]
    Io(#[from] io::Error),
}

fn invalid(msg: impl Into<String>) -> NarError {
    NarError::Invalid(msg.into())
}

/// Reads `r` to its end and checks that it is exactly one NAR.
pub fn validate<R: BufRead>(r: &mut R) -> Result<(), NarError> {
    let mut p = Parser { r, tag: Vec::new() };
    match p.expect(b"nix-archive-1") {
        Err(NarError::Invalid(_)) => {
            return Err(invalid("it does not start with \"nix-archive-1\""));
        }
        res => res?,
    }
    // One entry per open directory: the last name seen in it, to check the order.
    let mut dirs: Vec<Vec<u8>> = Vec::new();
    let mut opened_dir = p.node()?;
    loop {
        if opened_dir {
            if dirs.len() >= MAX_DEPTH {
                return Err(invalid(format!(
                    "directories nested deeper than {MAX_DEPTH} levels"
                )));
            }
            dirs.push(Vec::new());
        }
        let Some(prev) = dirs.last_mut() else { break };
        // Inside a directory: another entry, or its end.
        p.tag()?;
        match p.tag.as_slice() {
            b"entry" => {
                p.expect(b"(")?;
                p.expect(b"name")?;
                let name = p.string(MAX_NAME_LEN, "entry name")?;
                check_name(&name)?;
                if !prev.is_empty() && name.as_slice() <= prev.as_slice() {
                    return Err(invalid(format!(
                        "directory entries are not sorted and unique ({:?} after {:?})",
                        String::from_utf8_lossy(&name),
                        String::from_utf8_lossy(prev)
                    )));
                }
                *prev = name;
                p.expect(b"node")?;
                opened_dir = p.node()?;
                if !opened_dir {
                    p.expect(b")")?;
                }
            }
            b")" => {
                dirs.pop();
                opened_dir = false;
                // The directory was itself an entry of its parent: close that too.
                if !dirs.is_empty() {
                    p.expect(b")")?;
                }
            }
            other => return Err(unexpected(other, "\"entry\" or \")\"")),
        }
    }
    if !p.r.fill_buf()?.is_empty() {
        return Err(invalid("data after the end of the archive"));
    }
    Ok(())
}

/// Nix's rule for entry names: they must name a file in one directory.
fn check_name(name: &[u8]) -> Result<(), NarError> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(invalid(format!(
            "invalid entry name {:?}",
            String::from_utf8_lossy(name)
        )));
    }
    Ok(())
}

fn unexpected(got: &[u8], wanted: &str) -> NarError {
    invalid(format!(
        "expected {wanted}, found {:?}",
        String::from_utf8_lossy(got)
    ))
}

struct Parser<'a, R> {
    r: &'a mut R,
    /// The last tag read, reused to avoid an allocation per token.
    tag: Vec<u8>,
}

impl<R: BufRead> Parser<'_, R> {
    /// Parses `( type …` up to the end of a file or symlink node (its `)` included),
    /// or up to the start of a directory's entries; returns whether it was a directory.
    fn node(&mut self) -> Result<bool, NarError> {
        self.expect(b"(")?;
        self.expect(b"type")?;
        self.tag()?;
        match self.tag.as_slice() {
            b"regular" => {
                self.tag()?;
                if self.tag == b"executable" {
                    self.expect(b"")?;
                    self.tag()?;
                }
                if self.tag != b"contents" {
                    return Err(unexpected(&self.tag, "\"contents\""));
                }
                let len = self.u64()?;
                self.skip(len)?;
                self.padding(len)?;
                self.expect(b")")?;
                Ok(false)
            }
            b"symlink" => {
                self.expect(b"target")?;
                self.string(MAX_TARGET_LEN, "symlink target")?;
                self.expect(b")")?;
                Ok(false)
            }
            b"directory" => Ok(true),
            other => Err(invalid(format!(
                "unknown file type {:?}",
                String::from_utf8_lossy(other)
            ))),
        }
    }

    fn expect(&mut self, want: &[u8]) -> Result<(), NarError> {
        self.tag()?;
        if self.tag != want {
            return Err(unexpected(
                &self.tag,
                &format!("{:?}", String::from_utf8_lossy(want)),
            ));
        }
        Ok(())
    }

    /// Reads a short string into `self.tag`.
    fn tag(&mut self) -> Result<(), NarError> {
        let mut tag = std::mem::take(&mut self.tag);
        let res = self.string_into(&mut tag, MAX_TAG_LEN, "tag");
        self.tag = tag;
        res
    }

    fn string(&mut self, max: u64, what: &str) -> Result<Vec<u8>, NarError> {
        let mut out = Vec::new();
        self.string_into(&mut out, max, what)?;
        Ok(out)
    }

    fn string_into(&mut self, out: &mut Vec<u8>, max: u64, what: &str) -> Result<(), NarError> {
        let len = self.u64()?;
        if len > max {
            return Err(invalid(format!(
                "a {what} of {len} bytes (at most {max} allowed)"
            )));
        }
        out.clear();
        out.resize(len as usize, 0);
        self.exact(out)?;
        self.padding(len)
    }

    fn u64(&mut self) -> Result<u64, NarError> {
        let mut b = [0u8; 8];
        self.exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn padding(&mut self, len: u64) -> Result<(), NarError> {
        let mut pad = [0u8; 8];
        let n = ((8 - len % 8) % 8) as usize;
        self.exact(&mut pad[..n])?;
        if pad.iter().any(|&b| b != 0) {
            return Err(invalid("non-zero padding"));
        }
        Ok(())
    }

    fn exact(&mut self, buf: &mut [u8]) -> Result<(), NarError> {
        self.r.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => NarError::Truncated,
            _ => NarError::Io(e),
        })
    }

    /// Passes over `len` bytes of file contents without copying them.
    fn skip(&mut self, mut len: u64) -> Result<(), NarError> {
        while len > 0 {
            let avail = self.r.fill_buf()?.len();
            if avail == 0 {
                return Err(NarError::Truncated);
            }
            let n = avail.min(usize::try_from(len).unwrap_or(usize::MAX));
            self.r.consume(n);
            len -= n as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Appends a NAR string.
    pub(crate) fn s(out: &mut Vec<u8>, b: &[u8]) {
        out.extend_from_slice(&(b.len() as u64).to_le_bytes());
        out.extend_from_slice(b);
        out.resize(out.len() + (8 - b.len() % 8) % 8, 0);
    }

    fn toks(tokens: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for t in tokens {
            s(&mut out, t);
        }
        out
    }

    /// A NAR holding one regular file.
    pub(crate) fn file_nar(contents: &[u8]) -> Vec<u8> {
        toks(&[
            b"nix-archive-1",
            b"(",
            b"type",
            b"regular",
            b"contents",
            contents,
            b")",
        ])
    }

    /// A directory with a file `a`, an executable `b`, a symlink `c` and a
    /// subdirectory `d` holding an empty directory `e`.
    fn tree_nar() -> Vec<u8> {
        toks(&[
            b"nix-archive-1",
            b"(",
            b"type",
            b"directory",
            b"entry",
            b"(",
            b"name",
            b"a",
            b"node",
            b"(",
            b"type",
            b"regular",
            b"contents",
            b"hello",
            b")",
            b")",
            b"entry",
            b"(",
            b"name",
            b"b",
            b"node",
            b"(",
            b"type",
            b"regular",
            b"executable",
            b"",
            b"contents",
            b"#!/bin/sh\n",
            b")",
            b")",
            b"entry",
            b"(",
            b"name",
            b"c",
            b"node",
            b"(",
            b"type",
            b"symlink",
            b"target",
            b"a",
            b")",
            b")",
            b"entry",
            b"(",
            b"name",
            b"d",
            b"node",
            b"(",
            b"type",
            b"directory",
            b"entry",
            b"(",
            b"name",
            b"e",
            b"node",
            b"(",
            b"type",
            b"directory",
            b")",
            b")",
            b")",
            b")",
            b")",
        ])
    }

    fn check(bytes: &[u8]) -> Result<(), NarError> {
        // A tiny buffer, so that every read crosses buffer boundaries.
        let mut r = io::BufReader::with_capacity(3, bytes);
        validate(&mut r)
    }

    fn rejects(bytes: &[u8], why: &str) {
        let err = check(bytes).unwrap_err().to_string();
        assert!(err.contains(why), "{err:?} does not say {why:?}");
    }

    #[test]
    fn accepts_what_nix_writes() {
        check(&file_nar(b"")).unwrap();
        check(&file_nar(b"12345678")).unwrap();
        check(&file_nar(&vec![7u8; 100_003])).unwrap();
        check(&tree_nar()).unwrap();
        check(&toks(&[
            b"nix-archive-1",
            b"(",
            b"type",
            b"symlink",
            b"target",
            b"/nix/store/x",
            b")",
        ]))
        .unwrap();
        check(&toks(&[
            b"nix-archive-1",
            b"(",
            b"type",
            b"directory",
            b")",
        ]))
        .unwrap();
    }

    #[test]
    fn rejects_everything_else() {
        let tree = tree_nar();
        rejects(b"", "truncated");
        rejects(b"hello world, not a NAR at all", "nix-archive-1");
        rejects(&toks(&[b"nix-archive-2"]), "nix-archive-1");
        rejects(&tree[..tree.len() - 8], "truncated");
        for cut in [1, 9, 17, 100, tree.len() - 1] {
            assert!(check(&tree[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = tree.clone();
        trailing.push(0);
        rejects(&trailing, "after the end");
        let mut bad_pad = file_nar(b"abc");
        // The padding after "abc" is at 8 + 16 + 8 + 8 + 16 + 16 + 8 + 3.
        let at = bad_pad.len() - 16 - 1;
        bad_pad[at] = 1;
        rejects(&bad_pad, "padding");
        rejects(
            &toks(&[b"nix-archive-1", b"(", b"type", b"fifo", b")"]),
            "unknown file type",
        );
        rejects(
            &toks(&[
                b"nix-archive-1",
                b"(",
                b"type",
                b"regular",
                b"executable",
                b"x",
            ]),
            "expected",
        );
    }

    fn dir_of(names: &[&[u8]]) -> Vec<u8> {
        let mut out = toks(&[b"nix-archive-1", b"(", b"type", b"directory"]);
        for n in names {
            for t in [
                &b"entry"[..],
                b"(",
                b"name",
                n,
                b"node",
                b"(",
                b"type",
                b"symlink",
                b"target",
                b"x",
                b")",
                b")",
            ] {
                s(&mut out, t);
            }
        }
        s(&mut out, b")");
        out
    }

    #[test]
    fn directory_entries_are_sorted_unique_and_plain_names() {
        check(&dir_of(&[b"A", b"a", b"b", b"ba"])).unwrap();
        rejects(&dir_of(&[b"b", b"a"]), "not sorted");
        rejects(&dir_of(&[b"a", b"a"]), "not sorted");
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0"] {
            rejects(&dir_of(&[bad]), "invalid entry name");
        }
        rejects(&dir_of(&[&[b'n'; 256]]), "at most 255");
    }

    #[test]
    fn huge_lengths_are_refused_or_read_as_truncated() {
        // A name claiming 2^63 bytes is refused before anything is allocated.
        let mut nar = toks(&[b"nix-archive-1", b"(", b"type", b"directory", b"entry"]);
        s(&mut nar, b"(");
        s(&mut nar, b"name");
        nar.extend_from_slice(&(1u64 << 63).to_le_bytes());
        rejects(&nar, "at most");
        // Contents claiming 2^62 bytes are skipped until the body ends.
        let mut nar = toks(&[b"nix-archive-1", b"(", b"type", b"regular", b"contents"]);
        nar.extend_from_slice(&(1u64 << 62).to_le_bytes());
        nar.extend_from_slice(&[0; 64]);
        rejects(&nar, "truncated");
    }

    #[test]
    fn nesting_is_bounded_without_recursion() {
        let mut deep = toks(&[b"nix-archive-1"]);
        let levels = MAX_DEPTH + 1;
        for _ in 0..levels {
            for t in [
                &b"("[..],
                b"type",
                b"directory",
                b"entry",
                b"(",
                b"name",
                b"d",
                b"node",
            ] {
                s(&mut deep, t);
            }
        }
        rejects(&deep, "nested deeper");
    }
}
