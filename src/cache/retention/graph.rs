//! The reference graph of the stored paths, compact enough for a million of them
//! (about 120 bytes a path): what a pass may remove without breaking a closure.
//!
//! A path's node counts its *referrers*: stored narinfos that list it among their
//! References, plus uploads in flight that will ([`Graph::hold`]). A path is removable
//! only while that count is zero, so a closure is always removed from the top down.
//! A reference to a path whose narinfo is not (or no longer) stored gets a node too,
//! without a narinfo: a placeholder that keeps the count until the path arrives.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasher, Hasher};

use nix_derivation::nixbase32;

/// A store path's hash part, decoded (32 nix32 characters are 160 bits).
pub type PathHash = [u8; 20];
/// A NAR file's SHA-256, decoded from its key.
pub type FileHash = [u8; 32];

/// NAR file extensions, by their index in [`NarKey::ext`].
const EXTENSIONS: [&str; 7] = ["", ".xz", ".zst", ".bz2", ".br", ".lz4", ".lzip"];

/// The key of a NAR file, compactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NarKey {
    /// Its file hash.
    pub hash: FileHash,
    /// Index into the known extensions.
    pub ext: u8,
}

impl NarKey {
    /// Parses `nar/<filehash>.nar<ext>`.
    pub fn parse(key: &str) -> Option<NarKey> {
        let rest = key.strip_prefix("nar/")?;
        let (hash, ext) = rest.split_at_checked(52)?;
        let ext = ext.strip_prefix(".nar")?;
        let ext = EXTENSIONS.iter().position(|e| *e == ext)?;
        let decoded = nixbase32::decode(hash.as_bytes()).ok()?;
        Some(NarKey {
            hash: decoded.try_into().ok()?,
            ext: ext as u8,
        })
    }

    /// The storage key.
    pub fn key(&self) -> String {
        format!(
            "nar/{}.nar{}",
            nixbase32::encode(&self.hash),
            EXTENSIONS[usize::from(self.ext)]
        )
    }
}

/// Decodes a store path's hash part (`None` unless 32 nix32 characters).
pub fn path_hash(nix32: &str) -> Option<PathHash> {
    if nix32.len() != 32 {
        return None;
    }
    nixbase32::decode(nix32.as_bytes()).ok()?.try_into().ok()
}

/// The nix32 hash part of a decoded path hash.
pub fn path_hash_str(hash: &PathHash) -> String {
    nixbase32::encode(hash)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
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
struct Node {
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

/// A stored path as a pass removes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doomed {
    /// Node id.
    pub id: u32,
    /// The narinfo's hash part.
    pub hash: PathHash,
    /// Its NAR file.
    pub nar: NarKey,
    /// Bytes it holds.
    pub bytes: u64,
    /// Its effective recency when it was chosen.
    pub recency: u32,
}

/// What a pass removes, in order.
#[derive(Debug, Default)]
pub struct Plan {
    /// Paths, each after every path that references it.
    pub paths: Vec<Doomed>,
    /// How many of the loose objects (from the oldest).
    pub loose: usize,
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

    /// The hashes of paths stored before `secs`, for a pass to tell which narinfos
    /// vanished from storage since (a narinfo stored later may miss the listing).
    pub fn stored_hashes_before(&self, secs: u32) -> impl Iterator<Item = PathHash> + '_ {
        self.nodes
            .iter()
            .filter(move |n| n.state == State::Stored && n.modified < secs)
            .map(|n| n.hash)
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

    /// The closure of `roots`: a mark per node id.
    pub fn closure(&self, roots: &[PathHash]) -> Vec<bool> {
        let mut marked = vec![false; self.nodes.len()];
        let mut stack: Vec<u32> = roots.iter().filter_map(|h| self.id(h)).collect();
        while let Some(id) = stack.pop() {
            if std::mem::replace(&mut marked[id as usize], true) {
                continue;
            }
            stack.extend(self.refs_of(id).iter().filter(|r| !marked[**r as usize]));
        }
        marked
    }

    /// Bytes held by the marked paths.
    pub fn bytes_of(&self, marked: &[bool]) -> u64 {
        self.nodes
            .iter()
            .zip(marked)
            .filter(|(n, m)| **m && n.state == State::Stored)
            .map(|(n, _)| n.total())
            .sum()
    }

    /// Each node's effective recency: the latest use of itself or of any path whose
    /// closure contains it. Roots are walked newest first, so the first walk that
    /// reaches a node carries the newest use above it; every node is visited once.
    pub fn effective_recency(&self) -> Vec<u32> {
        let mut order: Vec<u32> = (0..self.nodes.len() as u32)
            .filter(|id| self.nodes[*id as usize].state != State::Free)
            .collect();
        order.sort_unstable_by_key(|id| Reverse(self.nodes[*id as usize].used));
        let mut eff = vec![0u32; self.nodes.len()];
        let mut seen = vec![false; self.nodes.len()];
        let mut stack = Vec::new();
        for root in order {
            if seen[root as usize] {
                continue;
            }
            let used = self.nodes[root as usize].used;
            seen[root as usize] = true;
            stack.push(root);
            while let Some(id) = stack.pop() {
                eff[id as usize] = used;
                for r in self.refs_of(id) {
                    if !std::mem::replace(&mut seen[*r as usize], true) {
                        stack.push(*r);
                    }
                }
            }
        }
        eff
    }

    /// Chooses what to remove, oldest effective recency first, a path only after
    /// every path referencing it: while `over` says the cache is above its target
    /// (given the bytes chosen so far), and everything with an effective recency
    /// before `expired_before`. Pinned (marked) paths are never chosen. `loose` are
    /// objects without references (logs, realisations, debuginfo) as `(recency,
    /// bytes)`, sorted oldest first; they take their turn by recency too.
    pub fn plan(
        &self,
        pinned: &[bool],
        expired_before: u32,
        loose: &[(u32, u64)],
        mut over: impl FnMut(u64) -> bool,
    ) -> Plan {
        let eff = self.effective_recency();
        let mut referrers: Vec<u32> = self.nodes.iter().map(|n| n.referrers).collect();
        let removable = |id: u32| {
            let n = &self.nodes[id as usize];
            n.state == State::Stored && !pinned.get(id as usize).copied().unwrap_or(false)
        };
        let mut heap: BinaryHeap<Reverse<(u32, u32)>> = (0..self.nodes.len() as u32)
            .filter(|id| referrers[*id as usize] == 0 && removable(*id))
            .map(|id| Reverse((eff[id as usize], id)))
            .collect();
        let mut plan = Plan::default();
        let mut chosen = 0u64;
        loop {
            let next_path = heap.peek().map(|Reverse((recency, _))| *recency);
            let next_loose = loose.get(plan.loose).map(|(recency, _)| *recency);
            let recency = match (next_path, next_loose) {
                (None, None) => break,
                (Some(p), Some(l)) => p.min(l),
                (Some(p), None) => p,
                (None, Some(l)) => l,
            };
            if recency >= expired_before && !over(chosen) {
                break;
            }
            if next_loose == Some(recency) {
                chosen += loose[plan.loose].1;
                plan.loose += 1;
                continue;
            }
            let Some(Reverse((recency, id))) = heap.pop() else {
                break;
            };
            let n = &self.nodes[id as usize];
            chosen += n.total();
            plan.paths.push(Doomed {
                id,
                hash: n.hash,
                nar: n.nar,
                bytes: n.total(),
                recency,
            });
            for r in self.refs_of(id) {
                let count = &mut referrers[*r as usize];
                *count -= 1;
                if *count == 0 && removable(*r) {
                    heap.push(Reverse((eff[*r as usize], *r)));
                }
            }
        }
        plan
    }

    /// Marks `d` as being removed, if it still may be: stored, unreferenced and not
    /// used since it was chosen. Its references lose a referrer now, so that the
    /// paths below it can follow in the same pass.
    pub fn start_removal(&mut self, d: &Doomed) -> bool {
        let Some(id) = self.id(&d.hash) else {
            return false;
        };
        let n = &self.nodes[id as usize];
        if n.state != State::Stored || n.referrers != 0 || n.used > d.recency {
            return false;
        }
        for r in self.refs_of(id).to_vec() {
            self.nodes[r as usize].referrers -= 1;
        }
        self.nodes[id as usize].state = State::Removing;
        true
    }

    /// Undoes [`Graph::start_removal`] after the removal failed.
    pub fn abort_removal(&mut self, d: &Doomed) {
        let Some(id) = self.id(&d.hash) else {
            return;
        };
        if self.nodes[id as usize].state != State::Removing {
            return;
        }
        for r in self.refs_of(id).to_vec() {
            self.nodes[r as usize].referrers += 1;
        }
        self.nodes[id as usize].state = State::Stored;
    }

    /// Ends [`Graph::start_removal`]: the narinfo is gone.
    pub fn finish_removal(&mut self, d: &Doomed) {
        let Some(id) = self.id(&d.hash) else {
            return;
        };
        if self.nodes[id as usize].state != State::Removing {
            return;
        }
        // The referrer counts were lowered when the removal started; placeholders
        // nothing references any more go now.
        for r in self.refs_of(id).to_vec() {
            let target = &self.nodes[r as usize];
            if target.referrers == 0 && target.state == State::Absent {
                self.release(r);
            }
        }
        let node = &mut self.nodes[id as usize];
        self.dead_refs += node.refs_len as usize;
        node.refs_len = 0;
        node.state = State::Absent;
        node.bytes = 0;
        node.listing = 0;
        if node.referrers == 0 {
            self.release(id);
        }
        self.compact_refs();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u8) -> PathHash {
        [n; 20]
    }

    fn nar(n: u8) -> NarKey {
        NarKey {
            hash: [n; 32],
            ext: 1,
        }
    }

    /// a -> b -> c, d alone; times: a 100, b 10, c 5, d 50.
    fn sample() -> Graph {
        let mut g = Graph::default();
        g.insert(&h(1), nar(1), &[h(2)], 100, 10);
        g.insert(&h(2), nar(2), &[h(3)], 10, 10);
        g.insert(&h(3), nar(3), &[], 5, 10);
        g.insert(&h(4), nar(4), &[], 50, 10);
        g
    }

    fn order(plan: &Plan) -> Vec<u8> {
        plan.paths.iter().map(|d| d.hash[0]).collect()
    }

    #[test]
    fn effective_recency_flows_down_the_closure() {
        let g = sample();
        let eff = g.effective_recency();
        let of = |n: u8| eff[g.id(&h(n)).unwrap() as usize];
        assert_eq!((of(1), of(2), of(3), of(4)), (100, 100, 100, 50));
    }

    #[test]
    fn plans_remove_referrers_first_and_oldest_first() {
        let g = sample();
        let all = g.plan(&[], 0, &[], |_| true);
        assert_eq!(order(&all), vec![4, 1, 2, 3]);
        // Expiry alone: only what is older than 60.
        let expired = g.plan(&[], 60, &[], |_| false);
        assert_eq!(order(&expired), vec![4]);
        // A quota that needs 20 bytes freed.
        let quota = g.plan(&[], 0, &[], |chosen| 40u64.saturating_sub(chosen) > 20);
        assert_eq!(order(&quota), vec![4, 1]);
    }

    #[test]
    fn pinned_closures_and_their_referrers_stay() {
        let g = sample();
        let pinned = g.closure(&[h(2)]);
        let plan = g.plan(&pinned, 0, &[], |_| true);
        // b and c are pinned; a references b but is not pinned itself.
        assert_eq!(order(&plan), vec![4, 1]);
        assert_eq!(g.bytes_of(&pinned), 20);
    }

    #[test]
    fn loose_objects_take_their_turn_by_recency() {
        let g = sample();
        let plan = g.plan(&[], 70, &[(1, 5), (60, 5), (200, 5)], |_| false);
        assert_eq!(order(&plan), vec![4]);
        assert_eq!(plan.loose, 2);
    }

    #[test]
    fn holds_and_new_referrers_keep_a_path() {
        let mut g = sample();
        let plan = g.plan(&[], 0, &[], |_| true);
        // An upload now references d: d is not removed, and neither would be a path
        // below it.
        assert!(g.hold(&h(4)));
        assert!(!g.start_removal(&plan.paths[0]));
        g.release_hold(&h(4));
        assert!(g.start_removal(&plan.paths[0]));
        // Being removed: new references to it are refused.
        assert!(!g.hold(&h(4)));
        g.finish_removal(&plan.paths[0]);
        assert!(!g.is_stored(&h(4)));
        // c cannot go before a and b.
        let c = plan.paths.iter().find(|d| d.hash == h(3)).unwrap();
        assert!(!g.start_removal(c));
        for d in &plan.paths[1..] {
            assert!(g.start_removal(d), "{:?}", d.hash[0]);
            g.finish_removal(d);
        }
        assert_eq!(g.stored(), 0);
        assert!(g.ids.is_empty(), "placeholders and nodes are all released");
    }

    #[test]
    fn an_aborted_removal_restores_the_counts() {
        let mut g = sample();
        let plan = g.plan(&[], 0, &[], |_| true);
        let a = plan.paths.iter().find(|d| d.hash == h(1)).unwrap();
        assert!(g.start_removal(a));
        g.abort_removal(a);
        let b = plan.paths.iter().find(|d| d.hash == h(2)).unwrap();
        assert!(!g.start_removal(b), "a references b again");
    }

    #[test]
    fn references_to_missing_paths_are_placeholders() {
        let mut g = Graph::default();
        g.insert(&h(1), nar(1), &[h(9)], 10, 1);
        assert!(!g.is_stored(&h(9)));
        g.insert(&h(9), nar(9), &[], 5, 1);
        let plan = g.plan(&[], 0, &[], |_| true);
        assert_eq!(order(&plan), vec![1, 9]);
        g.remove(&h(1));
        g.remove(&h(9));
        assert!(g.ids.is_empty());
    }

    #[test]
    fn cycles_from_foreign_writers_are_never_removed() {
        let mut g = Graph::default();
        g.insert(&h(1), nar(1), &[h(2)], 10, 1);
        g.insert(&h(2), nar(2), &[h(1)], 10, 1);
        assert!(g.plan(&[], u32::MAX, &[], |_| true).paths.is_empty());
    }

    #[test]
    fn nar_keys_round_trip() {
        let key = format!("nar/{}.nar.zst", nixbase32::encode(&[3u8; 32]));
        let parsed = NarKey::parse(&key).unwrap();
        assert_eq!(parsed.key(), key);
        assert!(NarKey::parse("nar/x.nar").is_none());
        assert!(NarKey::parse(&key.replace(".zst", ".gz")).is_none());
    }

    #[test]
    fn the_reference_arena_is_compacted() {
        let mut g = Graph::default();
        for round in 0..3u32 {
            for i in 0..40_000u32 {
                let mut hash = [0u8; 20];
                hash[..4].copy_from_slice(&i.to_le_bytes());
                hash[4] = 1;
                let mut r = hash;
                r[4] = 2;
                g.insert(&hash, nar(1), &[r], round, 1);
                g.remove(&hash);
            }
        }
        assert!(g.refs.len() < 200_000, "{}", g.refs.len());
    }
}
