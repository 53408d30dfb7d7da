//! Narinfo uploads: held whole, checked against the stored NAR and references, and
//! merged with the narinfo already stored under their key.

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use super::{BodyError, PutOutcome};
use crate::budget::Reservation;
use crate::cache::key::ObjectKey;
use crate::cache::narinfo::{self, CheckedNarInfo, Merge, NarInfoPolicy};
use crate::cache::{Cache, CacheError};

impl Cache {
    /// Stores a narinfo once every rule holds: its NAR is stored and matches it, its
    /// references are stored, and it agrees with a narinfo already stored under its
    /// key (merged with it). `memory` is the upload's reservation, if any.
    pub(super) async fn put_narinfo<S>(
        &self,
        key: &ObjectKey,
        memory: Option<Reservation>,
        body: S,
    ) -> Result<PutOutcome, CacheError>
    where
        S: Stream<Item = Result<Bytes, BodyError>> + Send + Unpin,
    {
        let (bytes, _memory) = self.collect(key, memory, body).await?;
        let policy = NarInfoPolicy {
            store_dir: &self.settings.store_dir,
            trusted_keys: &self.settings.trusted_keys,
            content_addressed_unsigned: true,
        };
        self.store_narinfo(key, bytes, &policy).await
    }

    /// Stores the narinfo `bytes` under `key` once every rule holds, its signature
    /// checked against `policy` (uploads: the trusted keys; upstream narinfos: the
    /// upstream keys). See [`Cache::put_narinfo`].
    pub(in crate::cache) async fn store_narinfo(
        &self,
        key: &ObjectKey,
        bytes: Vec<u8>,
        policy: &NarInfoPolicy<'_>,
    ) -> Result<PutOutcome, CacheError> {
        let checked = Self::parse_narinfo(key, &bytes, policy)?;
        // Before the NAR and references are checked: from here until the
        // narinfo is stored, no retention pass can remove them.
        let hold = self.retention.hold_narinfo(
            key.store_hash().unwrap_or_default(),
            checked.nar.as_str(),
            &checked.references,
        )?;
        // The same for passes on other servers sharing the storage.
        let mut doom_keys = vec![key.as_str().to_owned(), checked.nar.as_str().to_owned()];
        doom_keys.extend(checked.references.iter().map(|r| format!("{r}.narinfo")));
        let since = self.retention.check_undoomed(&doom_keys).await?;
        self.check_narinfo(&checked).await?;
        let _merging = self.narinfo_lock(key).lock().await;
        let bytes = match self.read_stored_narinfo(key).await? {
            None => bytes,
            Some((stored, _stored_memory)) => {
                match narinfo::merge(&stored, &bytes, &self.settings.store_dir)
                    .map_err(CacheError::Conflict)?
                {
                    Merge::Unchanged => {
                        self.retention.record_use(key.as_str());
                        return Ok(PutOutcome::Replaced);
                    }
                    Merge::Replace(merged) => merged,
                    Merge::ReplaceInvalid => {
                        tracing::warn!(
                            "{} held a narinfo that does not parse; replaced by the upload",
                            key.as_str()
                        );
                        bytes
                    }
                }
            }
        };
        // Known before it is visible: the index may only err towards "may exist".
        if let Some(hash) = key.store_hash() {
            self.index.insert(hash);
        }
        let outcome = self.store_bytes(key, &bytes).await?;
        self.retention
            .confirm_undoomed(since, &doom_keys, key.as_str())
            .await?;
        // Once it stays: a narinfo stored too late for another server's pass was
        // withdrawn just above.
        hold.stored(&bytes, bytes.len() as u64 + checked.file_size);
        Ok(outcome)
    }

    fn narinfo_lock(&self, key: &ObjectKey) -> &tokio::sync::Mutex<()> {
        let stripe = key
            .as_str()
            .bytes()
            .take(2)
            .filter_map(crate::cache::key::nix32_digit)
            .fold(0usize, |acc, d| acc * 32 + usize::from(d));
        &self.narinfo_locks[stripe % self.narinfo_locks.len()]
    }

    /// The narinfo stored under `key`, if any, held within the memory budget
    /// (bounded: a narinfo larger than the parser's limit is as good as absent for a
    /// merge).
    async fn read_stored_narinfo(
        &self,
        key: &ObjectKey,
    ) -> Result<Option<(Vec<u8>, Reservation)>, CacheError> {
        let Some(reader) = self.storage.open(key.as_str(), 0).await? else {
            return Ok(None);
        };
        let size = reader.meta.size.min(narinfo::MAX_NARINFO_SIZE as u64);
        let memory = self
            .budget
            .try_reserve(size)
            .ok_or_else(|| self.out_of_memory())?;
        let mut stream = reader.body.into_stream();
        let mut buf = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(crate::storage::StorageError::from_io)?;
            if buf.len() + chunk.len() > size as usize {
                // Larger than its size at open: replaced meanwhile; the lock keeps
                // this server's uploads out, so another writer did it.
                return Ok(Some((Vec::new(), memory)));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(Some((buf, memory)))
    }

    /// The narinfo rules that need no storage.
    fn parse_narinfo(
        key: &ObjectKey,
        body: &[u8],
        policy: &NarInfoPolicy<'_>,
    ) -> Result<CheckedNarInfo, CacheError> {
        let key_hash = key.store_hash().unwrap_or_default();
        narinfo::check(body, key_hash, policy).map_err(CacheError::Rejected)
    }

    /// The narinfo rules that need the storage: its NAR is present with the declared
    /// size, and so are the narinfos of its references.
    async fn check_narinfo(&self, checked: &CheckedNarInfo) -> Result<(), CacheError> {
        match self.storage.stat(checked.nar.as_str()).await? {
            None => {
                return Err(CacheError::Rejected(format!(
                    "URL {} names a NAR that is not in this cache; upload it first",
                    checked.nar.as_str()
                )))
            }
            Some(meta) if meta.size != checked.file_size => {
                return Err(CacheError::Rejected(format!(
                    "FileSize {} does not match the stored NAR's {} bytes",
                    checked.file_size, meta.size
                )))
            }
            Some(_) => {}
        }
        self.check_nar_contents(checked).await?;
        for reference in &checked.references {
            if self
                .storage
                .stat(&format!("{reference}.narinfo"))
                .await?
                .is_none()
                // Reported present by this server, and being pulled from upstream.
                && !self.upstream_reference(reference).await?
            {
                return Err(CacheError::Rejected(format!(
                    "reference {reference} is not in this cache; upload it first"
                )));
            }
        }
        Ok(())
    }
}
