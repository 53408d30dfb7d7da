//! The reference graph of the stored paths, compact enough for a million of them
//! (about 120 bytes a path): what a retention pass may remove without breaking a
//! closure, and, with [`labels`] beside it, what the page shows (names, sizes,
//! signers, references and referrers), from the one index.
//!
//! A path's node counts its *referrers*: stored narinfos that list it among their
//! References, plus uploads in flight that will ([`Graph::hold`]). A path is removable
//! only while that count is zero, so a closure is always removed from the top down.
//! A reference to a path whose narinfo is not (or no longer) stored gets a node too,
//! without a narinfo: a placeholder that keeps the count until the path arrives.

mod keys;
mod labels;
mod plan;
pub mod query;
pub mod record;
pub mod shared;
mod signers;
#[cfg(test)]
mod tests;

use hashbrown::HashTable;

pub use keys::{path_hash, path_hash_str, FileHash, NarKey, NarPrint, PathHash};
use labels::Labels;
pub use plan::{Doomed, Plan};
pub use record::Record;

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
    /// Its NAR's print; the NAR's key is read from the narinfo when it goes.
    nar: NarPrint,
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

/// Marks an owner's id in the reference arena (ids stay below 2³¹): the page finds
/// who references a path from where its id appears, for 4 bytes a path.
const OWNER: u32 = 1 << 31;

/// The graph. Ids are slots, reused once free.
#[derive(Default)]
pub struct Graph {
    nodes: Vec<Node>,
    free: Vec<u32>,
    /// Node ids by path hash: the hash itself lives in the node, so an entry is four
    /// bytes (a map of hash to id took 50 MB at a million paths).
    ids: HashTable<u32>,
    /// References of every node, back to back, each list after its owner's id
    /// marked with [`OWNER`]; a node's slice is `refs_at..+refs_len`.
    refs: Vec<u32>,
    /// Entries of `refs` no node points at any more.
    dead_refs: usize,
    /// What the page shows of each node, when the page is on.
    labels: Option<Labels>,
}

impl Graph {
    /// Keeps what the page shows too, from now on (for paths recorded from now on,
    /// or recorded again).
    pub fn keep_labels(&mut self) {
        self.labels.get_or_insert_with(Labels::default);
    }

    /// Whether it keeps what the page shows.
    pub fn labelled(&self) -> bool {
        self.labels.is_some()
    }

    /// Records the stored narinfo `record` of `hash` (see [`Graph::insert`]), with
    /// its label when the graph keeps them.
    pub fn insert_record(&mut self, hash: &PathHash, record: &Record, modified: u32, bytes: u64) {
        self.insert(
            hash,
            record.nar.print(),
            &record.references,
            modified,
            bytes,
        );
        self.label(hash, record);
    }

    /// Labels the stored path `hash` with what `record` says, when the graph keeps
    /// labels.
    pub fn label(&mut self, hash: &PathHash, record: &Record) {
        let Some(id) = self.stored_id(hash) else {
            return;
        };
        if let Some(labels) = &mut self.labels {
            labels.set(id, record);
            let nodes = &self.nodes;
            labels.compact(false, |id| nodes[id as usize].modified);
        }
    }

    /// Node `id` is no longer a stored path: its label goes.
    fn unlabel(&mut self, id: u32) {
        if let Some(labels) = &mut self.labels {
            labels.unset(id);
            let nodes = &self.nodes;
            labels.compact(false, |id| nodes[id as usize].modified);
        }
    }

    /// Bytes held on the heap.
    pub fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        self.nodes.capacity() * size_of::<Node>()
            + self.free.capacity() * 4
            + self.ids.capacity() * (size_of::<u32>() + 1)
            + self.refs.capacity() * 4
            + self.labels.as_ref().map_or(0, Labels::heap_bytes)
    }

    /// Number of paths whose narinfo is stored.
    pub fn stored(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| matches!(n.state, State::Stored | State::Removing))
            .count()
    }

    /// The id of `hash`, if it has a node.
    pub fn id(&self, hash: &PathHash) -> Option<u32> {
        self.ids
            .find(spread(hash), |id| self.nodes[*id as usize].hash == *hash)
            .copied()
    }

    /// Gives back memory grown for a load: a first pass inserts a million paths.
    pub fn shrink(&mut self) {
        self.compact_refs();
        if let Some(labels) = &mut self.labels {
            let nodes = &self.nodes;
            labels.shrink(|id| nodes[id as usize].modified);
        }
        self.nodes.shrink_to_fit();
        self.refs.shrink_to_fit();
        let nodes = &self.nodes;
        self.ids
            .shrink_to_fit(|id| spread(&nodes[*id as usize].hash));
    }

    fn id_or_placeholder(&mut self, hash: &PathHash) -> u32 {
        if let Some(id) = self.id(hash) {
            return id;
        }
        let node = Node {
            hash: *hash,
            nar: 0,
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
        let nodes = &self.nodes;
        self.ids
            .insert_unique(spread(hash), id, |id| spread(&nodes[*id as usize].hash));
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
        nar: NarPrint,
        refs: &[PathHash],
        modified: u32,
        bytes: u64,
    ) {
        let id = self.id_or_placeholder(hash);
        // Being removed, its references already lost it as a referrer (and get it
        // back only if the removal is aborted): the old list stays until then.
        if self.nodes[id as usize].state == State::Removing {
            self.update_fields(id, nar, modified, bytes);
            return;
        }
        let ref_ids: Vec<u32> = refs.iter().map(|r| self.id_or_placeholder(r)).collect();
        let node = &self.nodes[id as usize];
        if node.state != State::Absent && self.refs_of(id) == ref_ids.as_slice() {
            self.update_fields(id, nar, modified, bytes);
            return;
        }
        // The new references count before the old ones go: a placeholder in both
        // lists must not be released (and its slot reused) in between.
        let was_stored = node.state != State::Absent;
        for r in &ref_ids {
            self.nodes[*r as usize].referrers += 1;
        }
        if was_stored {
            self.drop_refs(id);
        }
        let at = self.push_refs(id, &ref_ids);
        let node = &mut self.nodes[id as usize];
        node.state = State::Stored;
        node.refs_at = at;
        node.refs_len = ref_ids.len() as u32;
        self.update_fields(id, nar, modified, bytes);
    }

    /// What a narinfo stored again changes besides its references.
    fn update_fields(&mut self, id: u32, nar: NarPrint, modified: u32, bytes: u64) {
        let node = &mut self.nodes[id as usize];
        node.nar = nar;
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
        self.kill_refs(id);
        self.compact_refs();
    }

    /// Appends the references `refs` of `id` to the arena, after their owner (see
    /// [`OWNER`]); where they start.
    fn push_refs(&mut self, id: u32, refs: &[u32]) -> u32 {
        if !refs.is_empty() {
            self.refs.push(id | OWNER);
        }
        let at = self.refs.len() as u32;
        self.refs.extend_from_slice(refs);
        at
    }

    /// The slice of `id` in the arena is dead (with its owner's mark).
    fn kill_refs(&mut self, id: u32) {
        let node = &mut self.nodes[id as usize];
        if node.refs_len > 0 {
            self.dead_refs += node.refs_len as usize + 1;
        }
        node.refs_len = 0;
    }

    fn release(&mut self, id: u32) {
        let hash = self.nodes[id as usize].hash;
        if let Ok(entry) = self.ids.find_entry(spread(&hash), |i| *i == id) {
            entry.remove();
        }
        self.nodes[id as usize].state = State::Free;
        self.free.push(id);
        self.unlabel(id);
    }

    /// Rewrites the reference arena once most of it is dead.
    fn compact_refs(&mut self) {
        if self.dead_refs < 1 << 16 || self.dead_refs * 2 < self.refs.len() {
            return;
        }
        let mut packed = Vec::with_capacity(self.refs.len() - self.dead_refs);
        for (id, node) in self.nodes.iter_mut().enumerate() {
            let (at, len) = (node.refs_at as usize, node.refs_len as usize);
            if len > 0 {
                packed.push(id as u32 | OWNER);
            }
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
        self.unlabel(id);
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
    /// keep, since storage does not know it. At most `limit` of them from node `from`
    /// on, and where to go on from, if anywhere.
    pub fn uses_beyond_storage(
        &self,
        from: u32,
        limit: usize,
    ) -> (Vec<(PathHash, u32)>, Option<u32>) {
        let mut out = Vec::new();
        for (id, n) in self.nodes.iter().enumerate().skip(from as usize) {
            if out.len() == limit {
                return (out, Some(id as u32));
            }
            if n.state == State::Stored && n.used > n.modified {
                out.push((n.hash, n.used));
            }
        }
        (out, None)
    }

    /// Which stored paths use which NAR, for a pass: of every NAR, or only of those
    /// in `only` (sorted), which is what a removal needs to know and a fraction of the
    /// memory (16 bytes a path: a list of all of them is 16 MB at a million paths).
    pub fn nar_users(&self, only: Option<&[NarPrint]>) -> NarUsers {
        let wanted = |n: &Node| {
            matches!(n.state, State::Stored | State::Removing)
                && only.is_none_or(|o| o.binary_search(&n.nar).is_ok())
        };
        // Counted first: a vector grown by doubling briefly holds both copies.
        let mut users = Vec::with_capacity(self.nodes.iter().filter(|n| wanted(n)).count());
        users.extend(
            self.nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| wanted(n))
                .map(|(id, n)| (n.nar, id as u32)),
        );
        users.sort_unstable();
        NarUsers(users)
    }

    /// The stored paths that use the NAR of `print`.
    pub fn users_of<'a>(
        &'a self,
        users: &'a NarUsers,
        print: NarPrint,
    ) -> impl Iterator<Item = u32> + 'a {
        let from = users.0.partition_point(|(p, _)| *p < print);
        users.0[from..]
            .iter()
            .take_while(move |(p, _)| *p == print)
            .map(|(_, id)| *id)
            .filter(move |id| {
                let n = &self.nodes[*id as usize];
                matches!(n.state, State::Stored | State::Removing) && n.nar == print
            })
    }

    /// Whether a stored path other than those in `except` (sorted) uses the NAR of
    /// `print`.
    pub fn nar_in_use(&self, users: &NarUsers, print: NarPrint, except: &[u32]) -> bool {
        self.users_of(users, print)
            .any(|id| except.binary_search(&id).is_err())
    }
}

/// Stored paths by their NAR's print, sorted: built for a pass.
pub struct NarUsers(Vec<(NarPrint, u32)>);

/// Store path hashes are uniformly random: their first bytes are a good hash.
fn spread(hash: &PathHash) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&hash[..8]);
    u64::from_le_bytes(b)
}
