//! The reference graph of the stored paths, compact enough for a million of them
//! (about 120 bytes a path): what a pass may remove without breaking a closure.
//!
//! A path's node counts its *referrers*: stored narinfos that list it among their
//! References, plus uploads in flight that will ([`Graph::hold`]). A path is removable
//! only while that count is zero, so a closure is always removed from the top down.
//! A reference to a path whose narinfo is not (or no longer) stored gets a node too,
//! without a narinfo: a placeholder that keeps the count until the path arrives.

mod keys;
mod plan;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

pub use keys::{path_hash, path_hash_str, FileHash, NarKey, PathHash};
pub use plan::{Doomed, Plan};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// The slot is free.
    Free,
    /// Referenced, but no narinfo is stored for it.
    Absent,
    /// Its narinfo is stored.
    Stored,
    /// A pass is removing it: new references to it are refused.
    Removing,
}

#[derive(Debug, Clone)]
pub(super) struct Node {
    hash: PathHash,
    nar: NarKey,
    state: State,
    refs_at: u32,
    refs_len: u32,
    referrers: u32,
    /// When its narinfo was stored (seconds since the epoch).
    modified: u32,
    /// Its latest use: upload or download of its narinfo, NAR or listing.
    used: u32,
    /// Bytes of its narinfo and NAR file.
    bytes: u64,
    /// Bytes of its listing (`.ls`), if one is stored.
    listing: u32,
}

impl Node {
    fn total(&self) -> u64 {
        self.bytes + u64::from(self.listing)
    }
}

/// The graph. Ids are slots, reused once free.
#[derive(Default)]
pub struct Graph {
    nodes: Vec<Node>,
    free: Vec<u32>,
    ids: HashMap<PathHash, u32, Spread>,
    /// References of every node, back to back; a node's slice is `refs_at..+refs_len`.
    refs: Vec<u32>,
    /// Entries of `refs` no node points at any more.
    dead_refs: usize,
}

impl Graph {
    /// Number of paths whose narinfo is stored.
    pub fn stored(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| matches!(n.state, State::Stored | State::Removing))
            .count()
    }

    /// The id of `hash`, if it has a node.
    pub fn id(&self, hash: &PathHash) -> Option<u32> {
        self.ids.get(hash).copied()
    }

    fn id_or_placeholder(&mut self, hash: &PathHash) -> u32 {
        if let Some(id) = self.ids.get(hash) {
            return *id;
        }
        let node = Node {
            hash: *hash,
            nar: NarKey {
                hash: [0; 32],
                ext: 0,
            },
            state: State::Absent,
            refs_at: 0,
            refs_len: 0,
            referrers: 0,
            modified: 0,
            used: 0,
            bytes: 0,
            listing: 0,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.nodes[id as usize] = node;
                id
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        };
        self.ids.insert(*hash, id);
        id
    }

    fn refs_of(&self, id: u32) -> &[u32] {
        let n = &self.nodes[id as usize];
        &self.refs[n.refs_at as usize..(n.refs_at + n.refs_len) as usize]
    }

    /// Records a stored narinfo: `refs` are its references other than itself. A
    /// narinfo stored again (re-signed, or rewritten by another writer) keeps its
    /// node; its references are replaced if they changed.
    pub fn insert(
        &mut self,
        hash: &PathHash,
        nar: NarKey,
        refs: &[PathHash],
        modified: u32,
        bytes: u64,
    ) {
        let id = self.id_or_placeholder(hash);
        let ref_ids: Vec<u32> = refs.iter().map(|r| self.id_or_placeholder(r)).collect();
        let node = &self.nodes[id as usize];
        if node.state != State::Absent && self.refs_of(id) == ref_ids.as_slice() {
            let node = &mut self.nodes[id as usize];
            node.nar = nar;
            node.modified = node.modified.max(modified);
            node.used = node.used.max(modified);
            node.bytes = bytes;
            return;
        }
        if node.state != State::Absent {
            self.drop_refs(id);
        }
        for r in &ref_ids {
            self.nodes[*r as usize].referrers += 1;
        }
        let at = self.refs.len() as u32;
        self.refs.extend_from_slice(&ref_ids);
        let node = &mut self.nodes[id as usize];
        node.nar = nar;
        node.state = State::Stored;
        node.refs_at = at;
        node.refs_len = ref_ids.len() as u32;
        node.modified = node.modified.max(modified);
        node.used = node.used.max(modified);
        node.bytes = bytes;
    }

    /// Forgets the references of `id` (their referrer counts drop).
    fn drop_refs(&mut self, id: u32) {
        let refs: Vec<u32> = self.refs_of(id).to_vec();
        for r in refs {
            let target = &mut self.nodes[r as usize];
            target.referrers -= 1;
            if target.referrers == 0 && target.state == State::Absent {
                self.release(r);
            }
        }
        let node = &mut self.nodes[id as usize];
        self.dead_refs += node.refs_len as usize;
        node.refs_len = 0;
        self.compact_refs();
    }

    fn release(&mut self, id: u32) {
        let hash = self.nodes[id as usize].hash;
        self.ids.remove(&hash);
        self.nodes[id as usize].state = State::Free;
        self.free.push(id);
    }

    /// Rewrites the reference arena once most of it is dead.
    fn compact_refs(&mut self) {
        if self.dead_refs < 1 << 16 || self.dead_refs * 2 < self.refs.len() {
            return;
        }
        let mut packed = Vec::with_capacity(self.refs.len() - self.dead_refs);
        for node in &mut self.nodes {
            let (at, len) = (node.refs_at as usize, node.refs_len as usize);
            node.refs_at = packed.len() as u32;
            packed.extend_from_slice(&self.refs[at..at + len]);
        }
        self.refs = packed;
        self.dead_refs = 0;
    }

    /// The narinfo of `hash` is gone from storage (removed by a pass, or by someone
    /// else): a node still referenced stays as a placeholder.
    pub fn remove(&mut self, hash: &PathHash) {
        let Some(id) = self.id(hash) else {
            return;
        };
        if matches!(self.nodes[id as usize].state, State::Stored) {
            self.drop_refs(id);
        }
        let node = &mut self.nodes[id as usize];
        if node.referrers == 0 {
            self.release(id);
        } else {
            node.state = State::Absent;
            node.bytes = 0;
            node.listing = 0;
        }
    }

    /// Records a use of `hash` at `secs`.
    pub fn touch(&mut self, hash: &PathHash, secs: u32) {
        if let Some(id) = self.id(hash) {
            let node = &mut self.nodes[id as usize];
            node.used = node.used.max(secs);
        }
    }

    /// Records a use of node `id` at `secs`.
    pub fn touch_id(&mut self, id: u32, secs: u32) {
        if let Some(node) = self.nodes.get_mut(id as usize) {
            node.used = node.used.max(secs);
        }
    }

    /// Records the listing (`.ls`) of `hash`: it goes with the path, and its upload
    /// is a use.
    pub fn set_listing(&mut self, hash: &PathHash, bytes: u64, modified: u32) {
        if let Some(id) = self.id(hash) {
            let node = &mut self.nodes[id as usize];
            if node.state == State::Stored {
                node.listing = u32::try_from(bytes).unwrap_or(u32::MAX);
                node.used = node.used.max(modified);
            }
        }
    }

    /// Whether `hash` has a stored narinfo.
    pub fn is_stored(&self, hash: &PathHash) -> bool {
        self.id(hash)
            .is_some_and(|id| self.nodes[id as usize].state == State::Stored)
    }

    /// Whether a pass is removing `hash`.
    pub fn is_removing(&self, hash: &PathHash) -> bool {
        self.id(hash)
            .is_some_and(|id| self.nodes[id as usize].state == State::Removing)
    }

    /// Counts an upload in flight that references `hash`: until [`Graph::release_hold`],
    /// it cannot be chosen for removal. `false` (and nothing counted) when a pass is
    /// removing it already.
    pub fn hold(&mut self, hash: &PathHash) -> bool {
        if self.is_removing(hash) {
            return false;
        }
        let id = self.id_or_placeholder(hash);
        self.nodes[id as usize].referrers += 1;
        true
    }

    /// Ends a [`Graph::hold`].
    pub fn release_hold(&mut self, hash: &PathHash) {
        let Some(id) = self.id(hash) else {
            return;
        };
        let node = &mut self.nodes[id as usize];
        node.referrers = node.referrers.saturating_sub(1);
        if node.referrers == 0 && node.state == State::Absent {
            self.release(id);
        }
    }

    /// The ids and hashes of paths stored before `secs`, for a pass to tell which
    /// narinfos vanished from storage since (one stored later may miss the listing).
    pub fn stored_before(&self, secs: u32) -> impl Iterator<Item = (u32, PathHash)> + '_ {
        self.nodes
            .iter()
            .enumerate()
            .filter(move |(_, n)| n.state == State::Stored && n.modified < secs)
            .map(|(id, n)| (id as u32, n.hash))
    }

    /// The id of `hash` when its narinfo is stored.
    pub fn stored_id(&self, hash: &PathHash) -> Option<u32> {
        self.id(hash)
            .filter(|id| self.nodes[*id as usize].state == State::Stored)
    }

    /// Paths whose use is newer than their narinfo: what the recency journal must
    /// keep, since storage does not know it.
    pub fn uses_beyond_storage(&self) -> impl Iterator<Item = (&PathHash, u32)> {
        self.nodes
            .iter()
            .filter(|n| n.state == State::Stored && n.used > n.modified)
            .map(|n| (&n.hash, n.used))
    }

    /// `(NAR file hash, node)` of every stored path, sorted: which paths share a NAR.
    pub fn nar_users(&self) -> Vec<(FileHash, u32)> {
        let mut users: Vec<(FileHash, u32)> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| matches!(n.state, State::Stored | State::Removing))
            .map(|(id, n)| (n.nar.hash, id as u32))
            .collect();
        users.sort_unstable();
        users
    }

    /// Whether a stored path other than those in `except` uses the NAR `hash`.
    pub fn nar_in_use(&self, users: &[(FileHash, u32)], hash: &FileHash, except: &[u32]) -> bool {
        let from = users.partition_point(|(h, _)| h < hash);
        users[from..]
            .iter()
            .take_while(|(h, _)| h == hash)
            .any(|(_, id)| {
                !except.contains(id)
                    && matches!(
                        self.nodes[*id as usize].state,
                        State::Stored | State::Removing
                    )
                    && self.nodes[*id as usize].nar.hash == *hash
            })
    }
}

/// Hashes of store paths are uniformly random: their first bytes are a good hash.
#[derive(Default, Clone, Copy)]
pub struct Spread;

impl BuildHasher for Spread {
    type Hasher = SpreadHasher;
    fn build_hasher(&self) -> SpreadHasher {
        SpreadHasher(0)
    }
}

/// See [`Spread`].
#[derive(Default)]
pub struct SpreadHasher(u64);

impl Hasher for SpreadHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8).take(1) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(b);
        }
    }
}
