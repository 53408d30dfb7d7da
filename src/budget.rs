//! One byte budget for everything the server holds in memory on behalf of clients:
//! upload bodies read whole to be validated (narinfos, realisations, debuginfo), NAR
//! decoders, and whatever else must buffer in proportion to its input.
//!
//! Without it, memory grows with the number of concurrent uploads times their
//! size; with it, a request that would go beyond the budget is refused (HTTP 503 with
//! `Retry-After`) instead of taking the server's memory. It sits outside the layers
//! so that the cache and the storage backends can both draw from the one budget.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Default budget, in bytes (`NIX_STORED_MEMORY_BUDGET`).
/// 512 MiB: three xz (or two zstd) NAR verifications at their decoders' caps (about
/// 104 and 136 MiB) within the three quarters decoders may take, and the rest for
/// narinfos.
pub const DEFAULT_BUDGET: u64 = 512 << 20;

/// A byte-counting semaphore: [`Budget::try_reserve`] takes bytes from it, and a
/// [`Reservation`] gives them back when dropped. Callers that cannot have their
/// bytes now refuse their work, or wait a bounded time ([`Budget::reserve_waiting`]).
#[derive(Debug)]
pub struct Budget {
    limit: u64,
    used: AtomicU64,
    /// Woken whenever bytes are given back.
    released: tokio::sync::Notify,
}

impl Budget {
    /// A budget of `limit` bytes, shared by everything that holds an `Arc` of it.
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(Budget {
            limit,
            used: AtomicU64::new(0),
            released: tokio::sync::Notify::new(),
        })
    }

    /// The budget's size in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes currently reserved.
    pub fn in_use(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `bytes` from the budget, or `None` when fewer are left.
    pub fn try_reserve(self: &Arc<Self>, bytes: u64) -> Option<Reservation> {
        self.try_reserve_below(bytes, self.limit)
    }

    /// Takes `bytes` only if no more than `ceiling` of the budget is then in use: for
    /// memory that is merely useful (caches, larger write blocks), so that what an
    /// upload cannot do without always finds the rest of the budget free.
    pub fn try_reserve_below(self: &Arc<Self>, bytes: u64, ceiling: u64) -> Option<Reservation> {
        self.take(bytes, ceiling.min(self.limit))
            .then(|| Reservation {
                budget: self.clone(),
                bytes,
            })
    }

    /// Takes `bytes` while no more than `ceiling` is then in use, waiting up to
    /// `max_wait` for other reservations to end: for work that needs much memory
    /// for a while (a NAR's decoder), which is better delayed than refused.
    /// `None` when the wait ran out, or at once when `bytes` can never fit.
    pub async fn reserve_waiting(
        self: &Arc<Self>,
        bytes: u64,
        ceiling: u64,
        max_wait: std::time::Duration,
    ) -> Option<Reservation> {
        if bytes > ceiling.min(self.limit) {
            return None;
        }
        let deadline = tokio::time::Instant::now() + max_wait;
        loop {
            // Registered before the attempt, so that a release between a failed
            // attempt and the wait is not missed.
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if let Some(r) = self.try_reserve_below(bytes, ceiling) {
                return Some(r);
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return None;
            }
        }
    }

    fn take(&self, bytes: u64, ceiling: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= ceiling)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
        self.released.notify_waiters();
    }
}

/// Bytes taken from a [`Budget`], returned to it on drop.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<Budget>,
    bytes: u64,
}

impl Reservation {
    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Holds `total` bytes from now on, taking the difference from the budget: for
    /// bodies whose size is learnt as they arrive. `false` (and nothing changed)
    /// when the budget cannot give that much; shrinking always succeeds.
    pub fn resize(&mut self, total: u64) -> bool {
        if total <= self.bytes {
            self.budget.give_back(self.bytes - total);
        } else if !self.budget.take(total - self.bytes, self.budget.limit) {
            return false;
        }
        self.bytes = total;
        true
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_count_against_the_limit_until_dropped() {
        let b = Budget::new(100);
        let r1 = b.try_reserve(60).expect("fits");
        assert!(b.try_reserve(41).is_none(), "60 + 41 > 100");
        let r2 = b.try_reserve(40).expect("fits exactly");
        assert_eq!(b.in_use(), 100);
        assert!(b.try_reserve(1).is_none());
        drop(r1);
        assert_eq!(b.in_use(), 40);
        assert!(b.try_reserve(60).is_some(), "and released at once");
        assert_eq!(b.in_use(), 40);
        drop(r2);
        assert_eq!(b.in_use(), 0);
    }

    #[test]
    fn reservations_grow_and_shrink() {
        let b = Budget::new(100);
        let mut r = b.try_reserve(0).expect("nothing always fits");
        assert!(r.resize(70));
        let other = b.try_reserve(20).expect("fits");
        assert!(!r.resize(81), "70 + 20 + 11 > 100");
        assert_eq!(r.bytes(), 70, "unchanged after a refusal");
        assert!(r.resize(80));
        assert!(r.resize(10));
        assert_eq!(b.in_use(), 30);
        drop((r, other));
        assert_eq!(b.in_use(), 0);
    }

    #[test]
    fn optional_reservations_stop_at_their_ceiling() {
        let b = Budget::new(100);
        let held = b.try_reserve(30).expect("fits");
        assert!(b.try_reserve_below(21, 50).is_none(), "30 + 21 > 50");
        let optional = b.try_reserve_below(20, 50).expect("30 + 20 <= 50");
        assert!(b.try_reserve(50).is_some(), "the rest stays for the others");
        assert!(
            b.try_reserve_below(1, 1000).is_some(),
            "never beyond the limit"
        );
        drop((held, optional));
        assert_eq!(b.in_use(), 0);
    }

    #[test]
    fn concurrent_reservations_never_exceed_the_limit() {
        let b = Budget::new(1000);
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        if let Some(r) = b.try_reserve(300) {
                            assert!(b.in_use() <= 1000);
                            drop(r);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("no panic");
        }
        assert_eq!(b.in_use(), 0);
    }

    #[tokio::test]
    async fn a_waiting_reservation_gets_the_bytes_given_back() {
        let budget = Budget::new(100);
        let first = budget.try_reserve(80).unwrap();
        let wait = std::time::Duration::from_secs(10);
        let waiter = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.reserve_waiting(50, 100, wait).await })
        };
        tokio::task::yield_now().await;
        drop(first);
        let second = waiter.await.unwrap().expect("the bytes given back");
        assert_eq!(budget.in_use(), 50);
        drop(second);
        // More than the ceiling can never fit: no wait.
        assert!(budget.reserve_waiting(60, 50, wait).await.is_none());
        // A wait that runs out.
        let _held = budget.try_reserve(100).unwrap();
        let short = std::time::Duration::from_millis(20);
        assert!(budget.reserve_waiting(1, 100, short).await.is_none());
    }
}
