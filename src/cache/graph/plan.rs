//! Choosing what a pass removes, and marking it while it goes.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::{Graph, NarPrint, PathHash, State};

/// A stored path as a pass removes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doomed {
    /// Node id.
    pub id: u32,
    /// The narinfo's hash part.
    pub hash: PathHash,
    /// Its NAR file.
    pub nar: NarPrint,
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

impl Graph {
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

    /// Of `started` (paths whose removal started in one chunk), keeps the ones
    /// referenced again because a path above them was kept after all (its
    /// removal aborted): their removals are aborted too, which may in turn keep
    /// paths below them, until none is left. What remains in `started` may go.
    pub fn keep_referenced<T>(&mut self, started: &mut Vec<T>, doomed: impl Fn(&T) -> &Doomed) {
        loop {
            let before = started.len();
            started.retain(|item| {
                let d = doomed(item);
                let referenced = self
                    .id(&d.hash)
                    .is_some_and(|id| self.nodes[id as usize].referrers != 0);
                if referenced {
                    self.abort_removal(d);
                }
                !referenced
            });
            if started.len() == before {
                return;
            }
        }
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
        self.unlabel(id);
        self.kill_refs(id);
        let node = &mut self.nodes[id as usize];
        node.state = State::Absent;
        node.bytes = 0;
        node.listing = 0;
        if node.referrers == 0 {
            self.release(id);
        }
        self.compact_refs();
    }
}
