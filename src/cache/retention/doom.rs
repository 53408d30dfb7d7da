//! Several servers sharing one storage (an S3 bucket): what keeps an upload on one of
//! them from referencing a path that a pass on another removes.
//!
//! A pass writes its intent (everything it is about to remove) before removing
//! anything, waits [`SETTLE`], lists the narinfos stored meanwhile (their references
//! are kept), and only then removes. Every server checks a narinfo upload against the
//! intents it knows, refreshed at most [`SNAPSHOT_TTL`] before the check, and refuses
//! one that references (or is) a path an intent lists. An upload that commits within
//! [`UPLOAD_WINDOW`] of its snapshot is safe either way: it saw the intent, or the
//! pass's second listing, [`SETTLE`] after the intent, sees the upload. One that took
//! longer looks again after committing, and withdraws its narinfo if it must.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::removal::INTENT_FOLDER;
use super::{Retention, RetentionError};
use crate::storage::{for_each_listed, StorageError};

/// How long a pass on shared storage waits between writing its intent and removing.
pub const SETTLE: Duration = Duration::from_secs(15);

/// How long after its intent snapshot an upload may commit without looking again.
pub const UPLOAD_WINDOW: Duration = Duration::from_secs(10);

/// How old a snapshot of the intents may be when an upload is checked against it.
pub const SNAPSHOT_TTL: Duration = Duration::from_secs(2);

/// The intents in storage, as last listed.
#[derive(Default)]
pub struct Board {
    snapshot: tokio::sync::Mutex<Option<Snapshot>>,
}

#[derive(Clone)]
struct Snapshot {
    /// When the listing began.
    taken: Instant,
    /// Each intent's keys (intents never change, so each is read once).
    intents: HashMap<String, Arc<HashSet<String>>>,
}

impl Snapshot {
    fn doomed<'k>(&self, keys: &'k [String]) -> Option<&'k str> {
        keys.iter()
            .find(|k| self.intents.values().any(|i| i.contains(k.as_str())))
            .map(String::as_str)
    }
}

impl Retention {
    /// On shared storage, refuses an upload when a pass on any server is removing one
    /// of `keys` (the narinfo's own key, its NAR's, its references' narinfos).
    /// Returns when the snapshot checked was taken, for [`Retention::confirm_undoomed`].
    pub async fn check_undoomed(&self, keys: &[String]) -> Result<Option<Instant>, DoomCheck> {
        if !self.storage.shared() {
            return Ok(None);
        }
        let snapshot = self.doom_snapshot(SNAPSHOT_TTL).await?;
        refuse_doomed(&snapshot, keys)?;
        Ok(Some(snapshot.taken))
    }

    /// After the narinfo `own` was committed: if that took longer than the upload
    /// window since `since`, looks at the intents again and, when one lists any of
    /// `keys`, removes the narinfo and refuses the upload.
    pub async fn confirm_undoomed(
        &self,
        since: Option<Instant>,
        keys: &[String],
        own: &str,
    ) -> Result<(), DoomCheck> {
        let Some(since) = since else { return Ok(()) };
        if since.elapsed() <= UPLOAD_WINDOW {
            return Ok(());
        }
        let snapshot = self.doom_snapshot(Duration::ZERO).await?;
        if let Err(e) = refuse_doomed(&snapshot, keys) {
            tracing::warn!(
                "{own}: stored too late to be seen by a pass on another server; withdrawn"
            );
            self.storage.delete(&[own.to_owned()]).await?;
            return Err(e);
        }
        Ok(())
    }

    async fn doom_snapshot(&self, max_age: Duration) -> Result<Snapshot, StorageError> {
        let mut current = self.doom.snapshot.lock().await;
        if let Some(s) = current.as_ref().filter(|s| s.taken.elapsed() <= max_age) {
            return Ok(s.clone());
        }
        let taken = Instant::now();
        let mut names = Vec::new();
        for_each_listed(self.storage.as_ref(), INTENT_FOLDER, |l| names.push(l.key)).await?;
        let mut intents = HashMap::with_capacity(names.len());
        for name in names {
            let known = current.as_ref().and_then(|s| s.intents.get(&name).cloned());
            let keys = match known {
                Some(keys) => keys,
                None => match super::removal::read_intent(self, &name).await? {
                    Some(keys) => Arc::new(keys.into_iter().collect()),
                    None => continue,
                },
            };
            intents.insert(name, keys);
        }
        let snapshot = Snapshot { taken, intents };
        *current = Some(snapshot.clone());
        Ok(snapshot)
    }
}

fn refuse_doomed(snapshot: &Snapshot, keys: &[String]) -> Result<(), DoomCheck> {
    match snapshot.doomed(keys) {
        Some(key) => Err(DoomCheck::Refused(RetentionError::Removing(format!(
            "{key} is being removed by a retention pass on a server sharing this storage; upload it again"
        )))),
        None => Ok(()),
    }
}

/// Why a doom check failed.
#[derive(Debug, thiserror::Error)]
pub enum DoomCheck {
    /// An intent lists one of the keys.
    #[error(transparent)]
    Refused(RetentionError),
    /// The intents could not be listed or read.
    #[error(transparent)]
    Storage(#[from] StorageError),
}
