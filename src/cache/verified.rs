//! What recently uploaded NAR files decoded to, so that their narinfos can be checked
//! without reading the NAR again. Bounded: the oldest entries are forgotten, and a
//! forgotten NAR is decoded again from storage when its narinfo arrives.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use super::nar_verify::NarDigest;

/// Entries kept: about 150 bytes each, so at most a few MiB. `nix copy` uploads a
/// path's narinfo right after its NAR, so only the last few are ever looked up.
pub const VERIFIED_NARS_KEPT: usize = 16384;

/// NAR key (`nar/<filehash>.nar.xz`) -> what it decodes to, oldest first out.
#[derive(Default)]
pub struct VerifiedNars {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    map: HashMap<String, NarDigest>,
    order: VecDeque<String>,
}

impl VerifiedNars {
    /// Remembers that the NAR file `key` decodes to `digest`.
    pub fn insert(&self, key: &str, digest: NarDigest) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.map.insert(key.to_owned(), digest).is_some() {
            return;
        }
        inner.order.push_back(key.to_owned());
        while inner.order.len() > VERIFIED_NARS_KEPT {
            if let Some(old) = inner.order.pop_front() {
                inner.map.remove(&old);
            }
        }
    }

    /// What the NAR file `key` decodes to, if it was verified recently.
    pub fn get(&self, key: &str) -> Option<NarDigest> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.map.get(key).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgets_the_oldest_beyond_the_bound() {
        let v = VerifiedNars::default();
        let d = |n| NarDigest {
            nar_hash: [0; 32],
            nar_size: n,
        };
        for n in 0..VERIFIED_NARS_KEPT as u64 + 10 {
            v.insert(&format!("nar/{n}.nar"), d(n));
        }
        // A repeated key neither grows the queue nor evicts anything.
        v.insert("nar/20.nar", d(20));
        assert_eq!(v.get("nar/9.nar"), None);
        assert_eq!(v.get("nar/10.nar"), Some(d(10)));
        let last = VERIFIED_NARS_KEPT as u64 + 9;
        assert_eq!(v.get(&format!("nar/{last}.nar")), Some(d(last)));
        assert_eq!(v.inner.lock().unwrap().map.len(), VERIFIED_NARS_KEPT);
    }
}
