//! Reads of the table: the newest paths, a search by name, one path with its
//! references, referrers and closure.

use memchr::memmem;

use super::record::valid_name;
use super::table::{State, Table};
use super::{Closure, PathDetail, PathLink, PathSummary};
use crate::cache::retention::graph::path_hash_str;

impl Table {
    fn summary(&self, id: u32) -> PathSummary {
        let e = self.entry(id);
        PathSummary {
            hash: path_hash_str(&e.hash),
            name: String::from_utf8_lossy(self.name(e)).into_owned(),
            nar_size: e.nar_size,
            file_size: e.file_size,
            stored: e.stored,
            signers: self.signers.names_of(e.signers),
        }
    }

    fn link(&self, id: u32) -> PathLink {
        let e = self.entry(id);
        PathLink {
            hash: path_hash_str(&e.hash),
            name: (e.state == State::Stored)
                .then(|| String::from_utf8_lossy(self.name(e)).into_owned()),
        }
    }

    /// The `n` paths stored last, newest first.
    pub(super) fn latest(&self, n: usize) -> Vec<PathSummary> {
        self.order
            .iter()
            .rev()
            .filter(|(at, id)| self.live(*at, *id))
            .take(n)
            .map(|(_, id)| self.summary(*id))
            .collect()
    }

    /// Up to `n` paths whose name contains `query`, newest first: one pass of
    /// `memmem` backwards over the name arena, each match found its path by binary
    /// search. A query that no name could contain matches nothing.
    pub(super) fn search(&self, query: &str, n: usize) -> Vec<PathSummary> {
        if query.is_empty() || query.len() > super::record::MAX_NAME {
            return Vec::new();
        }
        // A name can start with no dot, but can hold one: the query is checked as
        // a name's tail.
        if !valid_name(&format!("x{query}")) {
            return Vec::new();
        }
        let mut found = Vec::new();
        let mut last = None;
        for at in memmem::rfind_iter(&self.names, query.as_bytes()) {
            let i = self
                .order
                .partition_point(|(start, _)| *start as usize <= at);
            let Some(&(start, id)) = i.checked_sub(1).and_then(|i| self.order.get(i)) else {
                continue;
            };
            if last == Some(id) || !self.live(start, id) {
                continue;
            }
            last = Some(id);
            found.push(self.summary(id));
            if found.len() == n {
                break;
            }
        }
        found
    }

    /// One stored path: its references, up to `max_referrers` referrers (with their
    /// number), and its closure's paths and NAR bytes (walked up to `closure_limit`).
    pub(super) fn detail(&self, id: u32, max_referrers: usize, closure_limit: u64) -> PathDetail {
        let references = self.refs_of(id).iter().map(|r| self.link(*r)).collect();
        let mut referrers = self.referrers(id);
        let referrers_total = referrers.len();
        referrers.sort_by_key(|r| std::cmp::Reverse(self.entry(*r).stored));
        referrers.truncate(max_referrers);
        let closure = self.closure(id, closure_limit);
        PathDetail {
            summary: self.summary(id),
            references,
            referrers: referrers.iter().map(|r| self.link(*r)).collect(),
            referrers_total,
            closure,
        }
    }

    /// The closure of `id` (itself included): its stored paths, their NAR bytes and
    /// how many of its paths are not stored, walking at most `limit` paths (then
    /// `complete` is false and the figures are lower bounds).
    fn closure(&self, id: u32, limit: u64) -> Closure {
        let mut seen = vec![0u64; self.entries.len().div_ceil(64)];
        let mut stack = vec![id];
        seen[id as usize / 64] |= 1 << (id % 64);
        let mut c = Closure {
            paths: 0,
            nar_size: 0,
            missing: 0,
            complete: true,
        };
        while let Some(next) = stack.pop() {
            if c.paths + c.missing == limit {
                c.complete = false;
                break;
            }
            let e = self.entry(next);
            if e.state != State::Stored {
                c.missing += 1;
                continue;
            }
            c.paths += 1;
            c.nar_size += e.nar_size;
            for r in self.refs_of(next) {
                let (word, bit) = (*r as usize / 64, 1u64 << (r % 64));
                if seen[word] & bit == 0 {
                    seen[word] |= bit;
                    stack.push(*r);
                }
            }
        }
        c
    }
}
