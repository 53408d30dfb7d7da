//! Retention settings, declared beside the code that uses them and flattened into the
//! command line.

use std::path::PathBuf;
use std::time::Duration;

/// The retention part of the command line and environment.
#[derive(Debug, Clone, clap::Args)]
pub struct RetentionArgs {
    /// Quota on the bytes the cache holds (every stored object), in bytes or with a K,
    /// M, G or T suffix (powers of 1024). Passes remove the least recently used paths,
    /// never breaking a closure, until the cache is 10 % under it; an upload that
    /// cannot fit even then is refused with 507. Unset: no quota.
    #[arg(long, env = "NIX_STORED_MAX_SIZE", value_parser = parse_quota)]
    pub max_size: Option<u64>,

    /// Remove paths not used for longer than this (`30d`, `12h`, `90m`, `3600s`): a
    /// path is used when its narinfo or NAR is uploaded or downloaded, or when a path
    /// whose closure holds it is. Unset: no age limit.
    #[arg(long, env = "NIX_STORED_RETENTION", value_parser = parse_age)]
    pub retention: Option<Duration>,

    /// File of store paths (`/nix/store/<hash>-<name>`) or hash parts, one per line,
    /// `#` comments: their closures are never removed. Re-read when it changes and on
    /// SIGHUP.
    #[arg(long, env = "NIX_STORED_PINS")]
    pub pins: Option<PathBuf>,

    /// Seconds between retention passes. A pass also starts at once when an upload
    /// would take the cache over NIX_STORED_MAX_SIZE.
    #[arg(long, env = "NIX_STORED_GC_INTERVAL", default_value = "3600", value_parser = clap::value_parser!(u64).range(1..))]
    pub gc_interval: u64,
}

/// What retention does, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionSettings {
    /// The quota, in bytes.
    pub max_size: Option<u64>,
    /// The age past which unused paths go.
    pub max_age: Option<Duration>,
    /// The pins file.
    pub pins: Option<PathBuf>,
    /// Time between passes.
    pub interval: Duration,
}

impl From<RetentionArgs> for RetentionSettings {
    fn from(a: RetentionArgs) -> Self {
        RetentionSettings {
            max_size: a.max_size,
            max_age: a.retention,
            pins: a.pins,
            interval: Duration::from_secs(a.gc_interval),
        }
    }
}

impl RetentionSettings {
    /// Whether this server runs passes: only with a quota or an age limit.
    pub fn enabled(&self) -> bool {
        self.max_size.is_some() || self.max_age.is_some()
    }

    /// The target a quota pass removes down to: 10 % below the quota, so that not
    /// every upload starts a pass.
    pub fn low_water(&self) -> Option<u64> {
        self.max_size.map(|q| q - q / 10)
    }

    /// For the start-up summary.
    pub fn summary(&self) -> String {
        if !self.enabled() {
            return "off".into();
        }
        format!(
            "max_size={} retention={} pins={} gc_interval={}s",
            self.max_size.map_or("none".into(), |s| s.to_string()),
            self.max_age
                .map_or("none".into(), |a| format!("{}s", a.as_secs())),
            self.pins
                .as_ref()
                .map_or("none".into(), |p| p.display().to_string()),
            self.interval.as_secs()
        )
    }
}

fn parse_quota(s: &str) -> Result<u64, String> {
    match crate::config::values::parse_size(s) {
        Some(0) => Err("a quota of 0 would remove everything; unset it for no quota".into()),
        Some(n) => Ok(n),
        None => Err(format!("{s:?} is not a size like 1073741824, 500G or 2T")),
    }
}

/// Parses `30d`, `12h`, `90m`, `45s` (a bare number is seconds).
pub fn parse_age(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (digits, unit) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&t[..i], c),
        _ => (t, 's'),
    };
    let mult = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        'w' => 7 * 86_400,
        _ => {
            return Err(format!(
                "{s:?} is not a duration like 30d, 12h, 90m or 3600s"
            ))
        }
    };
    let n: u64 = digits.trim().parse().map_err(|_| not_a_duration(s))?;
    match n.checked_mul(mult) {
        Some(0) => Err("a retention of 0 would remove everything; unset it for no limit".into()),
        Some(secs) => Ok(Duration::from_secs(secs)),
        None => Err(format!("{s:?} is too long")),
    }
}

fn not_a_duration(s: &str) -> String {
    format!("{s:?} is not a duration like 30d, 12h, 90m or 3600s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages() {
        assert_eq!(parse_age("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_age("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_age("90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_age("45"), Ok(Duration::from_secs(45)));
        assert!(parse_age("0d").is_err());
        assert!(parse_age("3x").is_err());
        assert!(parse_age("d").is_err());
    }

    #[test]
    fn low_water_is_a_tenth_under() {
        let s = RetentionSettings {
            max_size: Some(1000),
            ..Default::default()
        };
        assert_eq!(s.low_water(), Some(900));
        assert!(s.enabled());
        assert!(!RetentionSettings::default().enabled());
    }
}
