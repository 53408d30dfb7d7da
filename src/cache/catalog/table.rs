//! The compact table behind the catalog: fixed-size entries, every name in one byte
//! arena and every reference in one `u32` arena, ids by store hash in a table of
//! ids (the hash lives in the entry). No allocation per path.

use hashbrown::HashTable;

use super::record::Record;
use super::signers::Signers;
use crate::cache::retention::graph::PathHash;

/// Separates names in the arena: no store path name and no accepted query holds it,
/// so a match never spans two names.
pub(super) const SEPARATOR: u8 = b'\n';

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// The slot is free.
    Free,
    /// Referenced by a stored path, but not stored itself.
    Absent,
    /// Its narinfo is stored.
    Stored,
}

/// One path: 64 bytes.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) hash: PathHash,
    pub(super) name_at: u32,
    pub(super) name_len: u8,
    pub(super) state: State,
    /// When its narinfo was first stored (seconds since the epoch).
    pub(super) stored: u32,
    refs_at: u32,
    refs_len: u32,
    /// Stored paths that reference it: a placeholder goes when none is left.
    referrers: u32,
    /// Bit `i`: signed by key name `i` of [`Signers`].
    pub(super) signers: u32,
    pub(super) nar_size: u64,
    pub(super) file_size: u64,
}

/// Totals over the stored paths, kept as they change.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Totals {
    pub(super) paths: u64,
    pub(super) nar_bytes: u64,
    pub(super) file_bytes: u64,
}

#[derive(Default)]
pub(super) struct Table {
    pub(super) entries: Vec<Entry>,
    free: Vec<u32>,
    ids: HashTable<u32>,
    /// Names back to back, each followed by [`SEPARATOR`], in the order they were
    /// stored (rewritten oldest first by [`Table::compact_names`]).
    pub(super) names: Vec<u8>,
    /// `(name_at, id)` of every name in `names`, in arena order: a match's offset
    /// finds its path by binary search. Pairs whose entry moved on are stale.
    pub(super) order: Vec<(u32, u32)>,
    dead_names: usize,
    refs: Vec<u32>,
    /// `(refs_at, id)` of every reference list in `refs`, in arena order: a match
    /// of a scan of `refs` finds its path by binary search (stale pairs as in
    /// `order`).
    ref_owners: Vec<(u32, u32)>,
    dead_refs: usize,
    pub(super) signers: Signers,
    pub(super) totals: Totals,
}

/// Store path hashes are uniformly random: their first bytes are a good hash.
fn spread(hash: &PathHash) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&hash[..8]);
    u64::from_le_bytes(b)
}

impl Table {
    /// The id of `hash`, stored or placeholder.
    pub(super) fn id(&self, hash: &PathHash) -> Option<u32> {
        self.ids
            .find(spread(hash), |id| self.entries[*id as usize].hash == *hash)
            .copied()
    }

    /// The id of `hash` when its narinfo is stored.
    pub(super) fn stored_id(&self, hash: &PathHash) -> Option<u32> {
        self.id(hash)
            .filter(|id| self.entries[*id as usize].state == State::Stored)
    }

    pub(super) fn entry(&self, id: u32) -> &Entry {
        &self.entries[id as usize]
    }

    pub(super) fn name(&self, e: &Entry) -> &[u8] {
        let at = e.name_at as usize;
        &self.names[at..at + usize::from(e.name_len)]
    }

    pub(super) fn refs_of(&self, id: u32) -> &[u32] {
        let e = &self.entries[id as usize];
        &self.refs[e.refs_at as usize..(e.refs_at + e.refs_len) as usize]
    }

    /// Whether `(at, id)` of [`Table::order`] still names a stored path's name.
    pub(super) fn live(&self, at: u32, id: u32) -> bool {
        let e = &self.entries[id as usize];
        e.state == State::Stored && e.name_at == at
    }

    fn id_or_placeholder(&mut self, hash: &PathHash) -> u32 {
        if let Some(id) = self.id(hash) {
            return id;
        }
        let entry = Entry {
            hash: *hash,
            name_at: 0,
            name_len: 0,
            state: State::Absent,
            stored: 0,
            refs_at: 0,
            refs_len: 0,
            referrers: 0,
            signers: 0,
            nar_size: 0,
            file_size: 0,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.entries[id as usize] = entry;
                id
            }
            None => {
                self.entries.push(entry);
                (self.entries.len() - 1) as u32
            }
        };
        let entries = &self.entries;
        self.ids
            .insert_unique(spread(hash), id, |id| spread(&entries[*id as usize].hash));
        id
    }

    fn push_name(&mut self, id: u32, name: &[u8]) {
        let at = self.names.len() as u32;
        self.names.extend_from_slice(name);
        self.names.push(SEPARATOR);
        self.order.push((at, id));
        let e = &mut self.entries[id as usize];
        e.name_at = at;
        e.name_len = name.len() as u8;
    }

    /// Records a stored narinfo (again: re-signed, or rewritten by another writer).
    pub(super) fn insert(&mut self, record: &Record, stored: u32) {
        let id = self.id_or_placeholder(&record.hash);
        let refs: Vec<u32> = record
            .references
            .iter()
            .filter(|r| **r != record.hash)
            .map(|r| self.id_or_placeholder(r))
            .collect();
        let signers = self.signers.mask(&record.signers);
        let e = &self.entries[id as usize];
        let was_stored = e.state == State::Stored;
        if was_stored {
            self.count(id, false);
            if self.refs_of(id) != refs.as_slice() {
                // The new references are counted before the old ones go, so that a
                // placeholder in both is never released in between.
                let old = self.refs_of(id).to_vec();
                self.dead_refs += old.len();
                self.add_refs(id, &refs);
                self.unref(&old);
                self.compact_refs();
            }
            if self.name(&self.entries[id as usize]) != record.name.as_bytes() {
                self.dead_names += usize::from(self.entries[id as usize].name_len) + 1;
                self.push_name(id, record.name.as_bytes());
            }
        } else {
            self.add_refs(id, &refs);
            self.push_name(id, record.name.as_bytes());
        }
        let e = &mut self.entries[id as usize];
        e.state = State::Stored;
        // A path stored again (re-signed) keeps its first time, as it keeps its
        // place among the latest uploads.
        if !was_stored {
            e.stored = stored;
        }
        e.signers = signers;
        e.nar_size = record.nar_size;
        e.file_size = record.file_size;
        self.count(id, true);
    }

    fn add_refs(&mut self, id: u32, refs: &[u32]) {
        for r in refs {
            self.entries[*r as usize].referrers += 1;
        }
        let at = self.refs.len() as u32;
        self.refs.extend_from_slice(refs);
        if !refs.is_empty() {
            self.ref_owners.push((at, id));
        }
        let e = &mut self.entries[id as usize];
        e.refs_at = at;
        e.refs_len = refs.len() as u32;
    }

    /// Adds (or takes away) a stored path's share of the totals and signer counts.
    fn count(&mut self, id: u32, add: bool) {
        let e = &self.entries[id as usize];
        let (nar, file, mask) = (e.nar_size, e.file_size, e.signers);
        let t = &mut self.totals;
        if add {
            t.paths += 1;
            t.nar_bytes += nar;
            t.file_bytes += file;
        } else {
            t.paths -= 1;
            t.nar_bytes -= nar;
            t.file_bytes -= file;
        }
        self.signers.count(mask, add);
    }

    fn drop_refs(&mut self, id: u32) {
        let refs: Vec<u32> = self.refs_of(id).to_vec();
        self.unref(&refs);
        let e = &mut self.entries[id as usize];
        self.dead_refs += e.refs_len as usize;
        e.refs_len = 0;
        self.compact_refs();
    }

    /// Takes away one referrer from each of `refs`, releasing placeholders left
    /// without any.
    fn unref(&mut self, refs: &[u32]) {
        for r in refs {
            let target = &mut self.entries[*r as usize];
            target.referrers -= 1;
            if target.referrers == 0 && target.state == State::Absent {
                self.release(*r);
            }
        }
    }

    /// Stored paths that reference `id`: one scan of the reference arena, each
    /// match found its owner by binary search.
    pub(super) fn referrers(&self, id: u32) -> Vec<u32> {
        let mut found: Vec<u32> = Vec::new();
        for (pos, _) in self.refs.iter().enumerate().filter(|(_, r)| **r == id) {
            let i = self
                .ref_owners
                .partition_point(|(at, _)| *at as usize <= pos);
            let Some(&(at, owner)) = i.checked_sub(1).and_then(|i| self.ref_owners.get(i)) else {
                continue;
            };
            let e = &self.entries[owner as usize];
            let live = e.state == State::Stored && e.refs_at == at;
            if live && pos < (at + e.refs_len) as usize && found.last() != Some(&owner) {
                found.push(owner);
            }
        }
        found
    }

    fn release(&mut self, id: u32) {
        let hash = self.entries[id as usize].hash;
        if let Ok(entry) = self.ids.find_entry(spread(&hash), |i| *i == id) {
            entry.remove();
        }
        self.entries[id as usize].state = State::Free;
        self.free.push(id);
    }

    /// The narinfo of `hash` is gone: a path still referenced stays as a placeholder.
    pub(super) fn remove(&mut self, hash: &PathHash) {
        let Some(id) = self.stored_id(hash) else {
            return;
        };
        self.count(id, false);
        self.drop_refs(id);
        let e = &mut self.entries[id as usize];
        self.dead_names += usize::from(e.name_len) + 1;
        e.state = State::Absent;
        e.name_len = 0;
        if e.referrers == 0 {
            self.release(id);
        }
        self.compact_names(false);
    }

    fn compact_refs(&mut self) {
        if self.dead_refs < 1 << 16 || self.dead_refs * 2 < self.refs.len() {
            return;
        }
        let mut packed = Vec::with_capacity(self.refs.len() - self.dead_refs);
        self.ref_owners.clear();
        for (id, e) in self.entries.iter_mut().enumerate() {
            let (at, len) = (e.refs_at as usize, e.refs_len as usize);
            e.refs_at = packed.len() as u32;
            if len > 0 {
                self.ref_owners.push((e.refs_at, id as u32));
            }
            packed.extend_from_slice(&self.refs[at..at + len]);
        }
        self.refs = packed;
        self.dead_refs = 0;
    }

    /// Rewrites the name arena with the stored paths oldest first (so that a search
    /// from the end finds the newest first), once most of it is dead, or always
    /// with `force` (after the load, whose listing order is no time order).
    pub(super) fn compact_names(&mut self, force: bool) {
        if !force && (self.dead_names < 1 << 16 || self.dead_names * 2 < self.names.len()) {
            return;
        }
        let mut live: Vec<u32> = self
            .order
            .iter()
            .filter(|(at, id)| self.live(*at, *id))
            .map(|(_, id)| *id)
            .collect();
        live.sort_by_key(|id| self.entries[*id as usize].stored);
        let old = std::mem::take(&mut self.names);
        self.names = Vec::with_capacity(old.len() - self.dead_names);
        self.order = Vec::with_capacity(live.len());
        for id in live {
            let e = &self.entries[id as usize];
            let at = e.name_at as usize;
            let len = usize::from(e.name_len);
            self.push_name(id, &old[at..at + len]);
        }
        self.dead_names = 0;
    }

    /// Gives back memory grown for a load.
    pub(super) fn shrink(&mut self) {
        self.compact_names(true);
        self.entries.shrink_to_fit();
        self.refs.shrink_to_fit();
        self.ref_owners.shrink_to_fit();
        self.names.shrink_to_fit();
        self.order.shrink_to_fit();
        let entries = &self.entries;
        self.ids
            .shrink_to_fit(|id| spread(&entries[*id as usize].hash));
    }

    /// Bytes held on the heap.
    pub(super) fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        self.entries.capacity() * size_of::<Entry>()
            + self.free.capacity() * 4
            + self.ids.capacity() * (size_of::<u32>() + 1)
            + self.names.capacity()
            + self.order.capacity() * 8
            + self.refs.capacity() * 4
            + self.ref_owners.capacity() * 8
            + self.signers.heap_bytes()
    }
}
