//! Store paths no upstream could deliver, remembered for a while so that the many
//! narinfo requests of a substitution that miss everywhere do not each wait for the
//! upstreams.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries kept at most (about 100 bytes each); past it, expired ones are dropped,
/// and if that is not enough, all are (a forgotten miss only costs one more ask).
const MAX_MISSES: usize = 100_000;

/// Store hash -> when its miss expires.
#[derive(Default)]
pub struct Misses {
    ttl: Duration,
    map: Mutex<HashMap<String, Instant>>,
}

impl Misses {
    /// Remembers misses for `ttl` (zero: never).
    pub fn new(ttl: Duration) -> Self {
        Misses {
            ttl,
            map: Mutex::default(),
        }
    }

    /// Remembers that no upstream delivered `hash`.
    pub fn insert(&self, hash: &str) {
        if self.ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_MISSES {
            map.retain(|_, until| *until > now);
            if map.len() >= MAX_MISSES {
                map.clear();
            }
        }
        map.insert(hash.to_owned(), now + self.ttl);
    }

    /// Whether a miss of `hash` is remembered.
    pub fn contains(&self, hash: &str) -> bool {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(hash) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                map.remove(hash);
                false
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misses_expire_and_zero_keeps_none() {
        let m = Misses::new(Duration::from_secs(60));
        m.insert("a");
        assert!(m.contains("a"));
        assert!(!m.contains("b"));
        let none = Misses::new(Duration::ZERO);
        none.insert("a");
        assert!(!none.contains("a"));
        let short = Misses::new(Duration::from_nanos(1));
        short.insert("a");
        std::thread::sleep(Duration::from_millis(1));
        assert!(!short.contains("a"));
    }
}
