//! The typed values of settings: every switch, size, priority and log setting is
//! parsed by clap through these, so a bad value is refused before anything starts.

use std::net::SocketAddr;

use clap::ValueEnum;
use nix_derivation::StoreDir;
use nix_narinfo::TrustedPublicKey;

/// The words every switch accepts (in any case, surrounding blanks ignored): what
/// environment files and NixOS modules write, and clap's own boolish set.
const TRUE_WORDS: [&str; 6] = ["true", "1", "yes", "on", "y", "t"];
const FALSE_WORDS: [&str; 6] = ["false", "0", "no", "off", "n", "f"];

/// An on/off setting: `true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off` (or `y`/`n`,
/// `t`/`f`).
pub fn switch(s: &str) -> Result<bool, String> {
    let word = s.trim().to_ascii_lowercase();
    if TRUE_WORDS.contains(&word.as_str()) {
        Ok(true)
    } else if FALSE_WORDS.contains(&word.as_str()) {
        Ok(false)
    } else {
        Err("not true or false (nor 1/0, yes/no, on/off)".to_owned())
    }
}

/// [`switch`] as clap's value parser of every on/off setting; `--help` lists `true`
/// and `false`, the spellings the documentation uses.
#[derive(Debug, Clone, Copy, Default)]
pub struct Switch;

impl clap::builder::TypedValueParser for Switch {
    type Value = bool;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<bool, clap::Error> {
        clap::builder::StringValueParser::new()
            .try_map(|s| switch(&s))
            .parse_ref(cmd, arg, value)
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(
            ["true", "false"]
                .into_iter()
                .map(clap::builder::PossibleValue::new),
        ))
    }
}

/// A size in bytes: `1234`, `512K`, `64M`, `32G`, `1T` (powers of 1024; a trailing
/// `B`/`iB` is accepted).
pub fn size(s: &str) -> Result<u64, String> {
    parse_size(s).ok_or_else(|| "not a size like 1073741824, 512M or 32G".to_owned())
}

/// A size of at least one byte.
pub fn nonzero_size(s: &str) -> Result<u64, String> {
    match size(s)? {
        0 => Err("must be at least 1 byte".to_owned()),
        n => Ok(n),
    }
}

/// The nix-cache-info priority: an integer (Nix clients abort on anything else).
pub fn priority(s: &str) -> Result<i64, String> {
    s.trim()
        .parse()
        .map_err(|_| "not an integer (Nix clients abort on a non-numeric priority)".to_owned())
}

/// The listening address: an IP address and a port.
pub fn listen_address(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| "not an address like 127.0.0.1:8100 or [::1]:8100".to_owned())
}

/// The Nix store directory: absolute, canonical.
pub fn store_dir(s: &str) -> Result<StoreDir, String> {
    StoreDir::new(s.to_owned()).map_err(|e| format!("not a store directory ({e})"))
}

/// A count that must be at least 1.
pub fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// Space-separated public keys (`name:base64`, as in nix.conf).
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys(pub Vec<TrustedPublicKey>);

/// Parses [`TrustedKeys`].
pub fn trusted_keys(s: &str) -> Result<TrustedKeys, String> {
    s.split_whitespace()
        .map(|k| TrustedPublicKey::parse(k).map_err(|e| format!("{k:?} is not a public key ({e})")))
        .collect::<Result<_, _>>()
        .map(TrustedKeys)
}

/// Parses `1234`, `512K`, `64M`, `32G`, `1T` (powers of 1024; a trailing `B`/`iB` is accepted).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let s = s
        .strip_suffix("iB")
        .or_else(|| s.strip_suffix('B'))
        .unwrap_or(s);
    let (digits, shift) = match s.chars().last()? {
        'K' | 'k' => (&s[..s.len() - 1], 10),
        'M' | 'm' => (&s[..s.len() - 1], 20),
        'G' | 'g' => (&s[..s.len() - 1], 30),
        'T' | 't' => (&s[..s.len() - 1], 40),
        _ => (s, 0),
    };
    let n: u64 = digits.trim().parse().ok()?;
    n.checked_mul(1u64 << shift)
}

/// Log verbosity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    /// Everything, including per-request details.
    #[value(alias = "trace")]
    Debug,
    /// One line per request and the lifecycle.
    Info,
    /// Problems only.
    #[value(alias = "warn")]
    Warning,
    /// Failures only.
    Error,
}

impl LogLevel {
    /// The `tracing` level that shows this much.
    pub fn tracing(self) -> tracing::Level {
        match self {
            LogLevel::Debug => tracing::Level::DEBUG,
            LogLevel::Info => tracing::Level::INFO,
            LogLevel::Warning => tracing::Level::WARN,
            LogLevel::Error => tracing::Level::ERROR,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("32G"), Some(32 << 30));
        assert_eq!(parse_size("512MiB"), Some(512 << 20));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("99999999999T"), None);
        assert!(nonzero_size("0").is_err());
        assert_eq!(nonzero_size("64K"), Ok(64 << 10));
    }

    #[test]
    fn every_switch_spelling() {
        for on in ["true", "TRUE", " yes\n", "1", "on", "On", "y", "t"] {
            assert_eq!(switch(on), Ok(true), "{on:?}");
        }
        for off in ["false", "False", "0", "no", "off", " OFF ", "n", "f"] {
            assert_eq!(switch(off), Ok(false), "{off:?}");
        }
        for bad in ["", "2", "enabled", "truee"] {
            assert!(switch(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn priorities() {
        assert_eq!(priority(" 40 "), Ok(40));
        assert_eq!(priority("-1"), Ok(-1));
        for bad in ["high", "", "1.5", "30x", "99999999999999999999999"] {
            assert!(priority(bad).is_err(), "{bad:?}");
        }
    }
}
