//! What the page shows of each stored path, kept beside the graph's nodes when the
//! page is on: its name (every name in one byte arena), NarSize, FileSize and
//! signers, with totals over all of them. About 24 bytes a path plus its name; the
//! hash, the references and the referrer counts are the graph's own.

use super::record::Record;
use super::signers::Signers;

/// Separates names in the arena: no store path name and no accepted query holds it,
/// so a match never spans two names.
pub(super) const SEPARATOR: u8 = b'\n';

/// The page's fields of one node; `name_len == 0` for a node without a label
/// (a placeholder, or a narinfo whose StorePath could not be read).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Label {
    pub(super) nar_size: u64,
    pub(super) file_size: u64,
    pub(super) name_at: u32,
    pub(super) signers: u16,
    pub(super) name_len: u8,
}

/// Totals over the labelled paths, kept as they change.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Totals {
    pub(super) paths: u64,
    pub(super) nar_bytes: u64,
    pub(super) file_bytes: u64,
}

/// The labels of every node, by node id.
#[derive(Default)]
pub(super) struct Labels {
    pub(super) cols: Vec<Label>,
    /// Names back to back, each followed by [`SEPARATOR`], in the order they were
    /// labelled (rewritten oldest first by [`Labels::compact`]).
    pub(super) names: Vec<u8>,
    /// `(name_at, id)` of every name in `names`, in arena order: a match's offset
    /// finds its path by binary search. Pairs whose label moved on are stale.
    pub(super) order: Vec<(u32, u32)>,
    dead_names: usize,
    pub(super) signers: Signers,
    pub(super) totals: Totals,
}

impl Labels {
    /// The label of `id` (an empty one for ids never labelled).
    pub(super) fn get(&self, id: u32) -> Label {
        self.cols.get(id as usize).copied().unwrap_or_default()
    }

    pub(super) fn name(&self, l: &Label) -> &[u8] {
        let at = l.name_at as usize;
        &self.names[at..at + usize::from(l.name_len)]
    }

    /// Whether `(at, id)` of [`Labels::order`] still names `id`'s label.
    pub(super) fn live(&self, at: u32, id: u32) -> bool {
        let l = self.get(id);
        l.name_len > 0 && l.name_at == at
    }

    fn slot(&mut self, id: u32) -> &mut Label {
        let i = id as usize;
        if self.cols.len() <= i {
            self.cols.resize(i + 1, Label::default());
        }
        &mut self.cols[i]
    }

    fn push_name(&mut self, id: u32, name: &[u8]) {
        let at = self.names.len() as u32;
        self.names.extend_from_slice(name);
        self.names.push(SEPARATOR);
        self.order.push((at, id));
        let l = self.slot(id);
        l.name_at = at;
        l.name_len = name.len() as u8;
    }

    /// Labels node `id` with what `record` says (again: re-signed, or rewritten by
    /// another writer). A record without a valid name leaves the node unlabelled.
    pub(super) fn set(&mut self, id: u32, record: &Record) {
        self.unset(id);
        let Some(name) = record.name.as_deref() else {
            return;
        };
        let signers = self.signers.mask(&record.signers);
        self.push_name(id, name.as_bytes());
        let l = self.slot(id);
        l.nar_size = record.nar_size;
        l.file_size = record.file_size;
        l.signers = signers;
        let l = *l;
        self.count(&l, true);
    }

    /// Node `id` is no longer a stored path.
    pub(super) fn unset(&mut self, id: u32) {
        let l = self.get(id);
        if l.name_len == 0 {
            return;
        }
        self.count(&l, false);
        self.dead_names += usize::from(l.name_len) + 1;
        self.cols[id as usize] = Label::default();
    }

    fn count(&mut self, l: &Label, add: bool) {
        let t = &mut self.totals;
        if add {
            t.paths += 1;
            t.nar_bytes += l.nar_size;
            t.file_bytes += l.file_size;
        } else {
            t.paths -= 1;
            t.nar_bytes -= l.nar_size;
            t.file_bytes -= l.file_size;
        }
        self.signers.count(l.signers, add);
    }

    /// Rewrites the name arena with the labelled paths ordered by `time` (so that a
    /// search from the end finds the newest first), once most of it is dead, or
    /// always with `force` (after a load, whose listing order is no time order).
    pub(super) fn compact(&mut self, force: bool, time: impl Fn(u32) -> u32) {
        if !force && (self.dead_names < 1 << 16 || self.dead_names * 2 < self.names.len()) {
            return;
        }
        let mut live: Vec<u32> = self
            .order
            .iter()
            .filter(|(at, id)| self.live(*at, *id))
            .map(|(_, id)| *id)
            .collect();
        live.sort_by_key(|id| time(*id));
        let old = std::mem::take(&mut self.names);
        self.names = Vec::with_capacity(old.len() - self.dead_names);
        self.order = Vec::with_capacity(live.len());
        for id in live {
            let l = self.get(id);
            let at = l.name_at as usize;
            self.push_name(id, &old[at..at + usize::from(l.name_len)]);
        }
        self.dead_names = 0;
    }

    /// Gives back memory grown for a load.
    pub(super) fn shrink(&mut self, time: impl Fn(u32) -> u32) {
        self.compact(true, time);
        self.cols.shrink_to_fit();
        self.names.shrink_to_fit();
        self.order.shrink_to_fit();
    }

    /// Bytes held on the heap.
    pub(super) fn heap_bytes(&self) -> usize {
        self.cols.capacity() * std::mem::size_of::<Label>()
            + self.names.capacity()
            + self.order.capacity() * 8
            + self.signers.heap_bytes()
    }
}
