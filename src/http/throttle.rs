//! Throttling of wrong credentials, per client network.
//!
//! Each network (an IPv4 address, an IPv6 /64) may send a burst of wrong credentials;
//! after that it regains one attempt per second. While it has none left, a request
//! with credentials is answered 429 before they are checked, so that an answer never
//! tells whether a guess was right. A correct login forgets the network's failures.
//! This bounds a password guesser to about one guess per second per network (it was
//! some 19 000 per second on one connection), while a user who mistyped a password a
//! few times is not slowed at all.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Attempts a network regains per second once its burst is spent.
const REFILL_PER_SECOND: f64 = 1.0;
/// Networks tracked at most: some 1.5 MiB. When full, networks whose allowance has
/// grown back are forgotten first, then the one with the most attempts left.
const CAPACITY: usize = 16_384;

/// The failures of networks that sent wrong credentials recently.
pub struct AuthThrottle {
    /// Wrong credentials a network may send in a row; 0 turns throttling off.
    burst: u32,
    networks: Mutex<HashMap<IpAddr, Allowance>>,
    /// `networks.len()`, readable without the lock: with no network tracked (the
    /// usual case), a request with the right credentials takes no lock at all.
    tracked: AtomicUsize,
}

/// What a network may still try.
struct Allowance {
    attempts: f64,
    at: Instant,
}

impl Allowance {
    fn refill(&mut self, now: Instant, burst: u32) {
        let regained = now.saturating_duration_since(self.at).as_secs_f64() * REFILL_PER_SECOND;
        self.attempts = (self.attempts + regained).min(f64::from(burst));
        self.at = now;
    }
}

/// A credential check let through; report its outcome with [`AuthThrottle::failed`]
/// or [`AuthThrottle::succeeded`].
#[derive(Debug)]
pub struct Attempt {
    network: Option<IpAddr>,
    /// Whether the attempt was already taken from the network's allowance.
    taken: bool,
}

impl AuthThrottle {
    /// A throttle allowing `burst` wrong credentials in a row (0: no throttling).
    pub fn new(burst: u32) -> Self {
        AuthThrottle {
            burst,
            networks: Mutex::new(HashMap::new()),
            tracked: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, Allowance>> {
        // The map stays consistent whatever panicked while holding it.
        self.networks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks to check credentials sent from `network` (`None`: unknown, not throttled).
    /// `Err` holds how long the network must wait.
    pub fn admit(&self, network: Option<IpAddr>, now: Instant) -> Result<Attempt, Duration> {
        let free = Attempt {
            network: None,
            taken: false,
        };
        let Some(net) = network.filter(|_| self.burst > 0) else {
            return Ok(free);
        };
        if self.tracked.load(Ordering::Relaxed) == 0 {
            return Ok(Attempt {
                network: Some(net),
                taken: false,
            });
        }
        let mut networks = self.lock();
        let Some(allowance) = networks.get_mut(&net) else {
            return Ok(Attempt {
                network: Some(net),
                taken: false,
            });
        };
        allowance.refill(now, self.burst);
        if allowance.attempts >= 1.0 {
            // Taken now, not when it fails: parallel guesses cannot all pass on the
            // last attempt left.
            allowance.attempts -= 1.0;
            return Ok(Attempt {
                network: Some(net),
                taken: true,
            });
        }
        Err(Duration::from_secs_f64(
            (1.0 - allowance.attempts) / REFILL_PER_SECOND,
        ))
    }

    /// The credentials were wrong.
    pub fn failed(&self, attempt: Attempt, now: Instant) {
        let Some(net) = attempt.network else {
            return;
        };
        let mut networks = self.lock();
        if attempt.taken && networks.contains_key(&net) {
            return;
        }
        if !networks.contains_key(&net) && networks.len() >= CAPACITY {
            self.make_room(&mut networks, now);
        }
        let burst = self.burst;
        let allowance = networks.entry(net).or_insert(Allowance {
            attempts: f64::from(burst),
            at: now,
        });
        allowance.refill(now, burst);
        allowance.attempts = (allowance.attempts - 1.0).max(0.0);
        self.tracked.store(networks.len(), Ordering::Relaxed);
    }

    /// The credentials were right: the network's failures are forgotten.
    pub fn succeeded(&self, attempt: Attempt) {
        let Some(net) = attempt.network else {
            return;
        };
        if self.tracked.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut networks = self.lock();
        networks.remove(&net);
        self.tracked.store(networks.len(), Ordering::Relaxed);
    }

    /// Forgets networks whose allowance has grown back whole, or else the one closest
    /// to it: it has the fewest recent failures.
    fn make_room(&self, networks: &mut HashMap<IpAddr, Allowance>, now: Instant) {
        let burst = self.burst;
        networks.retain(|_, a| {
            a.refill(now, burst);
            a.attempts < f64::from(burst)
        });
        if networks.len() >= CAPACITY {
            let most = networks
                .iter()
                .max_by(|a, b| a.1.attempts.total_cmp(&b.1.attempts))
                .map(|(k, _)| *k);
            if let Some(k) = most {
                networks.remove(&k);
            }
        }
    }

    /// Networks tracked now.
    pub fn tracked(&self) -> usize {
        self.tracked.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(i: u32) -> Option<IpAddr> {
        Some(IpAddr::V4(std::net::Ipv4Addr::from(i)))
    }

    /// Sends wrong credentials from `n` until refused; returns how many were checked.
    fn guess_until_refused(t: &AuthThrottle, n: Option<IpAddr>, now: Instant) -> u32 {
        let mut checked = 0;
        while let Ok(a) = t.admit(n, now) {
            t.failed(a, now);
            checked += 1;
            assert!(checked < 1000, "never refused");
        }
        checked
    }

    #[test]
    fn a_burst_then_one_attempt_per_second() {
        let t = AuthThrottle::new(10);
        let start = Instant::now();
        assert_eq!(guess_until_refused(&t, net(1), start), 10);
        let wait = t.admit(net(1), start).unwrap_err();
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1));
        // Other networks are not affected.
        assert!(t.admit(net(2), start).is_ok());
        let later = start + Duration::from_secs(3);
        assert_eq!(guess_until_refused(&t, net(1), later), 3);
    }

    #[test]
    fn parallel_attempts_cannot_share_the_last_one() {
        let t = AuthThrottle::new(3);
        let now = Instant::now();
        guess_until_refused(&t, net(1), now);
        let later = now + Duration::from_secs(1);
        let first = t.admit(net(1), later).unwrap();
        assert!(t.admit(net(1), later).is_err());
        t.failed(first, later);
        assert!(t.admit(net(1), later).is_err());
    }

    #[test]
    fn success_forgets_the_failures() {
        let t = AuthThrottle::new(5);
        let now = Instant::now();
        guess_until_refused(&t, net(1), now);
        let later = now + Duration::from_secs(1);
        let a = t.admit(net(1), later).unwrap();
        t.succeeded(a);
        assert_eq!(t.tracked(), 0);
        assert_eq!(guess_until_refused(&t, net(1), later), 5);
    }

    #[test]
    fn off_and_unknown_are_never_refused() {
        let off = AuthThrottle::new(0);
        let now = Instant::now();
        for _ in 0..100 {
            let a = off.admit(net(1), now).unwrap();
            off.failed(a, now);
        }
        let on = AuthThrottle::new(2);
        for _ in 0..100 {
            let a = on.admit(None, now).unwrap();
            on.failed(a, now);
        }
        assert_eq!(off.tracked() + on.tracked(), 0);
    }

    #[test]
    fn the_map_stays_bounded_and_keeps_the_worst() {
        let t = AuthThrottle::new(2);
        let now = Instant::now();
        guess_until_refused(&t, net(0), now);
        for i in 1..(CAPACITY as u32 + 100) {
            let a = t.admit(net(i), now).unwrap();
            t.failed(a, now);
        }
        assert!(t.tracked() <= CAPACITY);
        // The network that used up its allowance is still held to it.
        assert!(t.admit(net(0), now).is_err());
    }
}
