//! Uploads, downloads and narinfo hits of the last day, in minute buckets, for the
//! page's figures (the Prometheus counters have no window).

use std::sync::Mutex;

/// Minutes kept: one day.
const MINUTES: usize = 24 * 60;

/// What happened within one window.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Narinfos stored for the first time.
    pub uploads: u64,
    /// NARs served (whole or in part).
    pub downloads: u64,
    /// Narinfo GETs answered 200.
    pub hits: u64,
    /// Narinfo GETs answered 404.
    pub misses: u64,
}

impl Counts {
    /// Hits per narinfo GET, `None` without any.
    pub fn hit_rate(&self) -> Option<f64> {
        let asked = self.hits + self.misses;
        (asked > 0).then(|| self.hits as f64 / asked as f64)
    }

    fn add(&mut self, o: &Counts) {
        self.uploads += o.uploads;
        self.downloads += o.downloads;
        self.hits += o.hits;
        self.misses += o.misses;
    }
}

/// One thing counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A narinfo stored for the first time.
    Upload,
    /// A NAR served.
    Download,
    /// A narinfo found.
    Hit,
    /// A narinfo not found.
    Miss,
}

/// The buckets: a ring indexed by minute, each stamped with its minute so that a
/// bucket of a day ago is recognised as stale.
pub struct Activity {
    ring: Mutex<Vec<(u64, Counts)>>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            ring: Mutex::new(vec![(u64::MAX, Counts::default()); MINUTES]),
        }
    }
}

fn minute_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 60)
}

impl Activity {
    /// Counts `event` now.
    pub fn record(&self, event: Event) {
        self.record_at(event, minute_now());
    }

    fn record_at(&self, event: Event, minute: u64) {
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let slot = &mut ring[(minute % MINUTES as u64) as usize];
        if slot.0 != minute {
            *slot = (minute, Counts::default());
        }
        let c = &mut slot.1;
        match event {
            Event::Upload => c.uploads += 1,
            Event::Download => c.downloads += 1,
            Event::Hit => c.hits += 1,
            Event::Miss => c.misses += 1,
        }
    }

    /// What happened in the last `minutes` minutes (this one included).
    pub fn last(&self, minutes: u64) -> Counts {
        self.last_at(minutes, minute_now())
    }

    fn last_at(&self, minutes: u64, now: u64) -> Counts {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let mut total = Counts::default();
        for (minute, c) in ring.iter() {
            if *minute <= now && now - *minute < minutes {
                total.add(c);
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_and_stale_buckets() {
        let a = Activity::default();
        a.record_at(Event::Hit, 1000);
        a.record_at(Event::Miss, 1000);
        a.record_at(Event::Upload, 1000 - 90);
        a.record_at(Event::Download, 1000 - 59);
        assert_eq!(a.last_at(60, 1000).hits, 1);
        assert_eq!(a.last_at(60, 1000).downloads, 1);
        assert_eq!(a.last_at(60, 1000).uploads, 0);
        assert_eq!(a.last_at(1440, 1000).uploads, 1);
        assert_eq!(a.last_at(60, 1000).hit_rate(), Some(0.5));
        // A day later the same slot is reused, not added to.
        a.record_at(Event::Hit, 1000 + MINUTES as u64);
        assert_eq!(a.last_at(1440, 1000 + MINUTES as u64).hits, 1);
        assert_eq!(Counts::default().hit_rate(), None);
    }
}
