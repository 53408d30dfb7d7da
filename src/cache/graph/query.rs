//! What the page reads of a labelled graph: the newest paths, a search by name, one
//! path with its references, referrers and closure. Only stored paths with a label
//! are shown; paths a pass is removing are not.

use memchr::memmem;

use super::labels::Labels;
use super::record::{valid_name, MAX_NAME};
use super::{path_hash_str, Graph, State, OWNER};

/// Totals over the stored paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Figures {
    /// Stored paths (narinfos).
    pub paths: u64,
    /// Their NarSize, summed.
    pub nar_bytes: u64,
    /// Their FileSize (the NAR files as stored), summed.
    pub file_bytes: u64,
    /// Whether the start-up listing is done (before, the figures are partial).
    pub complete: bool,
}

/// One stored path, as lists show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathSummary {
    /// Its store hash (nix32).
    pub hash: String,
    /// The name after the hash.
    pub name: String,
    /// `NarSize`.
    pub nar_size: u64,
    /// `FileSize`.
    pub file_size: u64,
    /// When its narinfo was stored, in seconds since the epoch.
    pub stored: u32,
    /// The key names of its signatures; `None` for one of the keys beyond the
    /// table of names.
    pub signers: Vec<Option<String>>,
}

/// A path another path points at, or is pointed at by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathLink {
    /// Its store hash (nix32).
    pub hash: String,
    /// Its name, when its narinfo is stored.
    pub name: Option<String>,
}

/// One stored path with its neighbours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathDetail {
    /// The path.
    pub summary: PathSummary,
    /// Its references (itself left out).
    pub references: Vec<PathLink>,
    /// Stored paths that reference it, newest first, at most the number asked for.
    pub referrers: Vec<PathLink>,
    /// How many stored paths reference it.
    pub referrers_total: usize,
    /// Its closure.
    pub closure: Closure,
}

/// The closure of a path, itself included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closure {
    /// Its stored paths.
    pub paths: u64,
    /// Their NarSize, summed.
    pub nar_size: u64,
    /// Its paths whose narinfo is not stored.
    pub missing: u64,
    /// Whether it was walked whole; if not (past the limit asked for), the figures
    /// are lower bounds.
    pub complete: bool,
}

/// A key name with the number of stored paths it signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignerCount {
    /// The key's name (before the colon of `Sig`); `None` for all keys beyond the
    /// table of names.
    pub name: Option<String>,
    /// Stored paths it signed.
    pub paths: u64,
}

/// Empty answers, for a graph without labels.
static NO_LABELS: std::sync::LazyLock<Labels> = std::sync::LazyLock::new(Labels::default);

impl Graph {
    fn labels(&self) -> &Labels {
        self.labels.as_ref().unwrap_or(&NO_LABELS)
    }

    /// Whether node `id` is shown: stored, not being removed, and labelled.
    fn shown(&self, id: u32) -> bool {
        self.nodes[id as usize].state == State::Stored && self.labels().get(id).name_len > 0
    }

    /// The node of `hash` (nix32) when it is shown.
    fn shown_id(&self, hash: &str) -> Option<u32> {
        let id = self.id(&super::path_hash(hash)?)?;
        self.shown(id).then_some(id)
    }

    fn summary(&self, id: u32) -> PathSummary {
        let labels = self.labels();
        let l = labels.get(id);
        let n = &self.nodes[id as usize];
        PathSummary {
            hash: path_hash_str(&n.hash),
            name: String::from_utf8_lossy(labels.name(&l)).into_owned(),
            nar_size: l.nar_size,
            file_size: l.file_size,
            stored: n.modified,
            signers: labels.signers.names_of(l.signers),
        }
    }

    fn link(&self, id: u32) -> PathLink {
        let labels = self.labels();
        PathLink {
            hash: path_hash_str(&self.nodes[id as usize].hash),
            name: self
                .shown(id)
                .then(|| String::from_utf8_lossy(labels.name(&labels.get(id))).into_owned()),
        }
    }

    /// Bytes of the name arena, dead names included.
    #[cfg(test)]
    pub fn name_arena_len(&self) -> usize {
        self.labels().names.len()
    }

    /// Paths and bytes of the labelled paths.
    pub fn figures(&self, complete: bool) -> Figures {
        let t = self.labels().totals;
        Figures {
            paths: t.paths,
            nar_bytes: t.nar_bytes,
            file_bytes: t.file_bytes,
            complete,
        }
    }

    /// The key names that signed labelled paths, with how many each signed, most first.
    pub fn signers(&self) -> Vec<SignerCount> {
        self.labels()
            .signers
            .counted()
            .into_iter()
            .map(|(name, paths)| SignerCount { name, paths })
            .collect()
    }

    /// The `n` paths labelled last, newest first.
    pub fn latest(&self, n: usize) -> Vec<PathSummary> {
        let labels = self.labels();
        labels
            .order
            .iter()
            .rev()
            .filter(|(at, id)| labels.live(*at, *id) && self.shown(*id))
            .take(n)
            .map(|(_, id)| self.summary(*id))
            .collect()
    }

    /// Up to `n` paths whose name contains `query` (case-sensitive), newest first:
    /// one pass of `memmem` backwards over the name arena, each match found its path
    /// by binary search. A query that no name could contain matches nothing.
    pub fn search(&self, query: &str, n: usize) -> Vec<PathSummary> {
        // A name can start with no dot, but can hold one: the query is checked as
        // a name's tail.
        if query.is_empty() || query.len() > MAX_NAME || !valid_name(&format!("x{query}")) {
            return Vec::new();
        }
        let labels = self.labels();
        let mut found = Vec::new();
        let mut last = None;
        for at in memmem::rfind_iter(&labels.names, query.as_bytes()) {
            let i = labels
                .order
                .partition_point(|(start, _)| *start as usize <= at);
            let Some(&(start, id)) = i.checked_sub(1).and_then(|i| labels.order.get(i)) else {
                continue;
            };
            if last == Some(id) || !labels.live(start, id) || !self.shown(id) {
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

    /// The shown path of store hash `hash` (nix32): its references, up to
    /// `max_referrers` referrers (with their number), and its closure's paths and
    /// NAR bytes (walked up to `closure_limit` paths).
    pub fn path(&self, hash: &str, max_referrers: usize, closure_limit: u64) -> Option<PathDetail> {
        let id = self.shown_id(hash)?;
        let references = self.refs_of(id).iter().map(|r| self.link(*r)).collect();
        let mut referrers = self.referrers(id);
        let referrers_total = referrers.len();
        referrers.sort_by_key(|r| std::cmp::Reverse(self.nodes[*r as usize].modified));
        referrers.truncate(max_referrers);
        Some(PathDetail {
            summary: self.summary(id),
            references,
            referrers: referrers.iter().map(|r| self.link(*r)).collect(),
            referrers_total,
            closure: self.closure_of(id, closure_limit),
        })
    }

    /// Shown paths that reference `id`: one scan of the reference arena, each place
    /// `id` appears found its owner by the mark before its list.
    fn referrers(&self, id: u32) -> Vec<u32> {
        if self.nodes[id as usize].referrers == 0 {
            return Vec::new();
        }
        let mut found = Vec::new();
        for (at, _) in self.refs.iter().enumerate().filter(|(_, r)| **r == id) {
            let Some(owner) = self.refs[..at].iter().rev().find(|r| *r & OWNER != 0) else {
                continue;
            };
            let owner = owner & !OWNER;
            let n = &self.nodes[owner as usize];
            // Dead lists keep their marks until the arena is compacted.
            let live = n.refs_at as usize <= at && at < (n.refs_at + n.refs_len) as usize;
            if live && self.shown(owner) {
                found.push(owner);
            }
        }
        found
    }

    /// The closure of `id` (itself included): its stored paths, their NAR bytes and
    /// how many of its paths are not stored, walking at most `limit` paths (then
    /// `complete` is false and the figures are lower bounds).
    fn closure_of(&self, id: u32, limit: u64) -> Closure {
        let labels = self.labels();
        let mut seen = vec![0u64; self.nodes.len().div_ceil(64)];
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
            if !matches!(
                self.nodes[next as usize].state,
                State::Stored | State::Removing
            ) {
                c.missing += 1;
                continue;
            }
            c.paths += 1;
            c.nar_size += labels.get(next).nar_size;
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
