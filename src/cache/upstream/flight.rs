//! One narinfo lookup per store path at a time: concurrent requests for a path wait
//! for the first one's lookup and then find the path pending (or stored, or its miss
//! remembered).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Store hash -> the lock its lookup holds; entries go when their last user leaves.
#[derive(Default)]
pub struct Flights {
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Held while a path is looked up; dropping it lets the next waiter in.
pub struct Flight<'a> {
    flights: &'a Flights,
    hash: String,
    lock: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Flights {
    /// Waits until no other lookup of `hash` runs, and holds it.
    pub async fn join(&self, hash: &str) -> Flight<'_> {
        let lock = {
            let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(hash.to_owned()).or_default().clone()
        };
        let guard = lock.lock_owned().await;
        Flight {
            flights: self,
            hash: hash.to_owned(),
            lock: Some(guard),
        }
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        let mut map = self.flights.map.lock().unwrap_or_else(|e| e.into_inner());
        drop(self.lock.take());
        // The guard's reference is gone: the map's is the last unless someone waits.
        if map
            .get(&self.hash)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            map.remove(&self.hash);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_flight_per_hash_and_entries_go() {
        let f = Flights::default();
        let a = f.join("a").await;
        let _b = f.join("b").await;
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(20), f.join("a"));
        assert!(waiting.await.is_err());
        drop(a);
        drop(f.join("a").await);
        assert!(!f.map.lock().unwrap().contains_key("a"));
        assert!(f.map.lock().unwrap().contains_key("b"));
    }
}
