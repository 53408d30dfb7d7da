//! Uploads: stream the body into storage while verifying it, and make the object
//! visible only once every rule for its kind holds.

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};

use super::key::{Kind, ObjectKey};
use super::narinfo::{self, Merge, NarInfoPolicy};
use super::{Cache, CacheError};

/// Why a request body stopped before its end.
#[derive(Debug)]
pub enum BodyError {
    /// Nothing arrived for longer than the idle timeout.
    Idle,
    /// The connection broke or the framing was invalid.
    Broken(String),
}

impl From<BodyError> for CacheError {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::Idle => CacheError::BodyTimeout,
            BodyError::Broken(msg) => CacheError::BodyBroken(msg),
        }
    }
}

/// What an accepted upload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// A new object was stored.
    Created,
    /// An existing object was replaced.
    Replaced,
    /// The upload was accepted and deliberately not stored (`nix-cache-info`).
    Ignored,
}

impl Cache {
    /// Stores `body` under `key` if it passes verification. Nothing becomes visible
    /// unless this returns `Ok`.
    pub async fn put<S>(&self, key: &ObjectKey, body: S) -> Result<PutOutcome, CacheError>
    where
        S: Stream<Item = Result<Bytes, BodyError>> + Send + Unpin,
    {
        match key.kind() {
            // Served from configuration; Nix PUTs it only when it thinks it is missing.
            Kind::CacheInfo => Ok(PutOutcome::Ignored),
            Kind::Nar => self.put_nar(key, body).await,
            Kind::NarInfo => {
                let bytes = self.collect(key, body).await?;
                self.check_narinfo(key, &bytes).await?;
                let _merging = self.narinfo_lock(key).lock().await;
                let bytes = match self.read_stored_narinfo(key).await? {
                    None => bytes,
                    Some(stored) => {
                        match narinfo::merge(&stored, &bytes, &self.settings.store_dir)
                            .map_err(CacheError::Conflict)?
                        {
                            Merge::Unchanged => return Ok(PutOutcome::Replaced),
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
                self.store_bytes(key, &bytes).await
            }
            Kind::Realisation | Kind::DebugInfo => {
                let bytes = self.collect(key, body).await?;
                match serde_json::from_slice::<serde_json::Value>(&bytes) {
                    Ok(serde_json::Value::Object(_)) => self.store_bytes(key, &bytes).await,
                    _ => Err(CacheError::Rejected("body is not a JSON object".into())),
                }
            }
            Kind::Listing => {
                let bytes = self.collect(key, body).await?;
                if !is_json_object(&bytes) {
                    return Err(CacheError::Rejected(
                        "a listing (.ls) is a JSON object, as `nix store ls` reads it".into(),
                    ));
                }
                self.store_bytes(key, &bytes).await
            }
            Kind::Log => self.stream_to_storage(key, body, None).await,
        }
    }

    async fn put_nar<S>(&self, key: &ObjectKey, body: S) -> Result<PutOutcome, CacheError>
    where
        S: Stream<Item = Result<Bytes, BodyError>> + Send + Unpin,
    {
        let expected = key.nar_file_hash().unwrap_or_default();
        self.stream_to_storage(key, body, Some(expected)).await
    }

    /// Streams a body into a pending upload, hashing it when `expected_nix32` is
    /// given, and commits only when the size limit and the hash hold.
    async fn stream_to_storage<S>(
        &self,
        key: &ObjectKey,
        mut body: S,
        expected_nix32: Option<&str>,
    ) -> Result<PutOutcome, CacheError>
    where
        S: Stream<Item = Result<Bytes, BodyError>> + Send + Unpin,
    {
        let limit = self.upload_limit(key.kind());
        let mut upload = self.storage.begin_upload(key.as_str()).await?;
        let mut hasher = expected_nix32.map(|_| Sha256::new());
        let mut received: u64 = 0;
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            received += chunk.len() as u64;
            if received > limit {
                return Err(CacheError::TooLarge {
                    size: received,
                    limit,
                });
            }
            if let Some(h) = hasher.as_mut() {
                h.update(&chunk);
            }
            upload.write(&chunk).await?;
        }
        if let (Some(h), Some(expected)) = (hasher, expected_nix32) {
            let actual = nix_derivation::nixbase32::encode(&h.finalize());
            if actual != expected {
                return Err(CacheError::Rejected(format!(
                    "NAR body hashes to sha256:{actual}, not to the {expected} in its name"
                )));
            }
        }
        Ok(self.outcome(upload.commit().await?, received))
    }

    async fn store_bytes(&self, key: &ObjectKey, bytes: &[u8]) -> Result<PutOutcome, CacheError> {
        let mut upload = self.storage.begin_upload(key.as_str()).await?;
        upload.write(bytes).await?;
        Ok(self.outcome(upload.commit().await?, bytes.len() as u64))
    }

    fn narinfo_lock(&self, key: &ObjectKey) -> &tokio::sync::Mutex<()> {
        let stripe = key
            .as_str()
            .bytes()
            .take(2)
            .filter_map(super::key::nix32_digit)
            .fold(0usize, |acc, d| acc * 32 + usize::from(d));
        &self.narinfo_locks[stripe % self.narinfo_locks.len()]
    }

    /// The narinfo stored under `key`, if any (bounded: a narinfo larger than the
    /// parser's limit is as good as absent for a merge).
    async fn read_stored_narinfo(&self, key: &ObjectKey) -> Result<Option<Vec<u8>>, CacheError> {
        let Some(reader) = self.storage.open(key.as_str(), 0).await? else {
            return Ok(None);
        };
        let mut stream = reader.body.into_stream();
        let mut buf = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(crate::storage::StorageError::from_io)?;
            if buf.len() + chunk.len() > narinfo::MAX_NARINFO_SIZE {
                return Ok(Some(Vec::new()));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(Some(buf))
    }

    /// Reads a small body whole, within the kind's limit.
    async fn collect<S>(&self, key: &ObjectKey, mut body: S) -> Result<Vec<u8>, CacheError>
    where
        S: Stream<Item = Result<Bytes, BodyError>> + Send + Unpin,
    {
        let limit = self.upload_limit(key.kind());
        let mut buf = Vec::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            if (buf.len() + chunk.len()) as u64 > limit {
                return Err(CacheError::TooLarge {
                    size: (buf.len() + chunk.len()) as u64,
                    limit,
                });
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf)
    }

    /// The narinfo rules that need the storage: its NAR is present with the declared
    /// size, and so are the narinfos of its references.
    async fn check_narinfo(&self, key: &ObjectKey, body: &[u8]) -> Result<(), CacheError> {
        let policy = NarInfoPolicy {
            store_dir: &self.settings.store_dir,
            trusted_keys: &self.settings.trusted_keys,
        };
        let key_hash = key.store_hash().unwrap_or_default();
        let checked = narinfo::check(body, key_hash, &policy).map_err(CacheError::Rejected)?;
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
        for reference in &checked.references {
            if self
                .storage
                .stat(&format!("{reference}.narinfo"))
                .await?
                .is_none()
            {
                return Err(CacheError::Rejected(format!(
                    "reference {reference} is not in this cache; upload it first"
                )));
            }
        }
        Ok(())
    }
}

/// Whether `bytes` are one JSON object, checked without building it (listings of large
/// store paths run to megabytes).
fn is_json_object(bytes: &[u8]) -> bool {
    let starts_as_object = bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'{');
    starts_as_object && serde_json::from_slice::<&serde_json::value::RawValue>(bytes).is_ok()
}

impl Cache {
    fn outcome(&self, created: bool, size: u64) -> PutOutcome {
        if created {
            self.stored.created(size);
            PutOutcome::Created
        } else {
            PutOutcome::Replaced
        }
    }
}
