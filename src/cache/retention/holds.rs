//! Holds: what uploads in flight reference cannot be removed, and what a pass removes
//! cannot be referenced.

use super::{now_secs, Retention, RetentionError};
use crate::cache::graph::{path_hash, FileHash, NarKey, PathHash};

/// In-flight work on a NAR file, so that a pass never removes one that an upload is
/// about to reference, and uploads never reference one a pass is removing.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct NarActivity {
    pub(super) holds: u32,
    pub(super) last: u32,
    pub(super) removing: bool,
}

/// An upload in flight that references paths and a NAR: until it is dropped, none of
/// them can be removed. [`Hold::stored`] records the narinfo once it is committed.
pub struct Hold<'a> {
    retention: &'a Retention,
    /// References held in the graph.
    refs: Vec<PathHash>,
    nar: Option<NarKey>,
    path: Option<PathHash>,
    /// Whether anything is held (retention runs passes).
    held: bool,
}

impl Retention {
    /// Holds what a narinfo upload of `path` references (its NAR `nar`, its
    /// `refs`) until the returned hold is dropped; refused when a pass is removing
    /// any of them, or the path itself.
    pub fn hold_narinfo(
        &self,
        path: &str,
        nar: &str,
        refs: &[String],
    ) -> Result<Hold<'_>, RetentionError> {
        let mut hold = Hold {
            retention: self,
            refs: Vec::new(),
            nar: None,
            path: path_hash(path),
            held: false,
        };
        if !self.enabled() {
            return Ok(hold);
        }
        let refused = |what: &str| {
            RetentionError::Removing(format!(
                "{what} is being removed by a retention pass; upload it again"
            ))
        };
        let mut graph = self.graph();
        if hold.path.is_some_and(|h| graph.is_removing(&h)) {
            return Err(refused(&format!("path {path}")));
        }
        hold.held = true;
        for r in refs {
            let Some(h) = path_hash(r) else { continue };
            if !graph.hold(&h) {
                drop(graph);
                return Err(refused(&format!("reference {r}")));
            }
            hold.refs.push(h);
        }
        drop(graph);
        if let Some(key) = NarKey::parse(nar) {
            self.hold_nar_key(&key)
                .map_err(|()| refused(&format!("NAR {nar}")))?;
            hold.nar = Some(key);
        }
        Ok(hold)
    }

    /// Holds a NAR while it is uploaded; refused while a pass removes it.
    pub fn hold_nar(&self, nar: &str) -> Result<Hold<'_>, RetentionError> {
        let mut hold = Hold {
            retention: self,
            refs: Vec::new(),
            nar: None,
            path: None,
            held: false,
        };
        if !self.enabled() {
            return Ok(hold);
        }
        hold.held = true;
        if let Some(key) = NarKey::parse(nar) {
            self.hold_nar_key(&key).map_err(|()| {
                RetentionError::Removing(format!(
                    "{nar} is being removed by a retention pass; upload it again"
                ))
            })?;
            hold.nar = Some(key);
        }
        Ok(hold)
    }

    fn hold_nar_key(&self, key: &NarKey) -> Result<(), ()> {
        let mut nars = self.nars();
        let a = nars.entry(key.hash).or_default();
        if a.removing {
            return Err(());
        }
        a.holds += 1;
        a.last = now_secs();
        Ok(())
    }

    /// Whether the NAR may be removed now (no upload holds it, none touched it since
    /// `since`); if so it is marked, and uploads of or referencing it are refused
    /// until [`Retention::nar_removed`].
    pub(super) fn claim_nar(&self, hash: &FileHash, since: u32) -> bool {
        let mut nars = self.nars();
        let a = nars.entry(*hash).or_default();
        if a.holds > 0 || a.last >= since || a.removing {
            return false;
        }
        a.removing = true;
        true
    }

    pub(super) fn nar_removed(&self, hash: &FileHash) {
        let mut nars = self.nars();
        if nars.get(hash).is_some_and(|a| a.holds == 0) {
            nars.remove(hash);
        } else if let Some(a) = nars.get_mut(hash) {
            a.removing = false;
        }
    }
}

impl Hold<'_> {
    /// The narinfo `text` was committed: the graph learns it (as used now), with
    /// `bytes` for the narinfo and its NAR.
    pub fn stored(&self, text: &[u8], bytes: u64) {
        let Some(path) = self.path else {
            return;
        };
        if !self.retention.indexing() {
            return;
        }
        if let Ok(record) = crate::cache::graph::record::parse(&path, text) {
            self.retention
                .graph()
                .insert_record(&path, &record, now_secs(), bytes);
        }
    }
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        if !self.refs.is_empty() {
            let mut graph = self.retention.graph();
            for r in &self.refs {
                graph.release_hold(r);
            }
        }
        if let Some(nar) = self.nar {
            let mut nars = self.retention.nars();
            if let Some(a) = nars.get_mut(&nar.hash) {
                a.holds = a.holds.saturating_sub(1);
                a.last = now_secs();
            }
        }
    }
}
