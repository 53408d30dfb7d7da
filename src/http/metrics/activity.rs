//! Uploads, downloads and narinfo hits of the last day, in minute buckets, for the
//! page's figures (the Prometheus counters have no window).

use std::sync::atomic::{AtomicU64, Ordering};

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
    Upload = 0,
    /// A NAR served.
    Download = 1,
    /// A narinfo found.
    Hit = 2,
    /// A narinfo not found.
    Miss = 3,
}

/// One minute's counts, stamped with its minute so that a bucket of a day ago is
/// recognised as stale.
#[derive(Default)]
struct Bucket {
    minute: AtomicU64,
    /// By [`Event`]: uploads, downloads, hits, misses.
    counts: [AtomicU64; 4],
}

/// The buckets: a ring indexed by minute. Lock-free, so that counting costs a
/// narinfo request no more than a Prometheus counter does: an event that races the
/// reset of its bucket at a minute's start may be lost, which a figure of the last
/// hour does not show.
pub struct Activity {
    ring: Vec<Bucket>,
}

impl Default for Activity {
    fn default() -> Self {
        let ring: Vec<Bucket> = (0..MINUTES).map(|_| Bucket::default()).collect();
        for b in &ring {
            b.minute.store(u64::MAX, Ordering::Relaxed);
        }
        Activity { ring }
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
        let b = &self.ring[(minute % MINUTES as u64) as usize];
        let seen = b.minute.load(Ordering::Acquire);
        if seen != minute
            && b.minute
                .compare_exchange(seen, minute, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            for c in &b.counts {
                c.store(0, Ordering::Relaxed);
            }
        }
        b.counts[event as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// What happened in the last `minutes` minutes (this one included).
    pub fn last(&self, minutes: u64) -> Counts {
        self.last_at(minutes, minute_now())
    }

    fn last_at(&self, minutes: u64, now: u64) -> Counts {
        let mut total = Counts::default();
        for b in &self.ring {
            let minute = b.minute.load(Ordering::Acquire);
            if minute <= now && now - minute < minutes {
                let [uploads, downloads, hits, misses] =
                    b.counts.each_ref().map(|c| c.load(Ordering::Relaxed));
                total.add(&Counts {
                    uploads,
                    downloads,
                    hits,
                    misses,
                });
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
