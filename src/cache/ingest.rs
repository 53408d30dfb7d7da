//! Uploads: stream the body into storage while verifying it, and make the object
//! visible only once every rule for its kind holds.

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};

use super::json_check::JsonObjectCheck;
use super::key::{Kind, ObjectKey};
use super::narinfo::{self, Merge, NarInfoPolicy};
use super::{Cache, CacheError, UploadPermit};
use crate::budget::Reservation;

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

/// What is verified while a body streams to storage.
enum Verifier {
    /// Nothing (build logs).
    None,
    /// A NAR: its SHA-256 must be the hash in its name (nix32).
    NarHash { hasher: Sha256, expected: String },
    /// A listing: one JSON object.
    JsonObject(JsonObjectCheck),
}

impl Verifier {
    fn update(&mut self, chunk: &[u8]) {
        match self {
            Verifier::None => {}
            Verifier::NarHash { hasher, .. } => hasher.update(chunk),
            // A failure is remembered and reported by `finish`, once the body has
            // been read: the client then gets its 400 as it would for a bad hash,
            // instead of a reset in the middle of its upload.
            Verifier::JsonObject(check) => {
                let _ = check.feed(chunk);
            }
        }
    }

    /// Whether anything written so far can still be committed.
    fn failed(&self) -> bool {
        matches!(self, Verifier::JsonObject(check) if check.failed())
    }

    fn finish(self) -> Result<(), CacheError> {
        match self {
            Verifier::None => Ok(()),
            Verifier::NarHash { hasher, expected } => {
                let actual = nix_derivation::nixbase32::encode(&hasher.finalize());
                if actual != expected {
                    return Err(CacheError::Rejected(format!(
                        "NAR body hashes to sha256:{actual}, not to the {expected} in its name"
                    )));
                }
                Ok(())
            }
            Verifier::JsonObject(check) => check.finish().map_err(|e| {
                CacheError::Rejected(format!(
                    "a listing (.ls) is a JSON object, as `nix store ls` reads it: {e}"
                ))
            }),
        }
    }
}

impl Cache {
    /// Stores `body` under `key` if it passes verification. Nothing becomes visible
    /// unless this returns `Ok`. `permit` comes from [`Cache::precheck_upload`].
    pub async fn put<S>(
        &self,
        key: &ObjectKey,
        permit: UploadPermit,
        body: S,
    ) -> Result<PutOutcome, CacheError>
    where
        S: Stream<Item = Result<Bytes, BodyError>> + Send + Unpin,
    {
        let memory = permit.memory;
        match key.kind() {
            // Served from configuration; Nix PUTs it only when it thinks it is missing.
            Kind::CacheInfo => Ok(PutOutcome::Ignored),
            Kind::Nar => {
                let expected = key.nar_file_hash().unwrap_or_default().to_owned();
                let verifier = Verifier::NarHash {
                    hasher: Sha256::new(),
                    expected,
                };
                self.stream_to_storage(key, body, verifier).await
            }
            Kind::NarInfo => {
                let (bytes, _memory) = self.collect(key, memory, body).await?;
                self.check_narinfo(key, &bytes).await?;
                let _merging = self.narinfo_lock(key).lock().await;
                let bytes = match self.read_stored_narinfo(key).await? {
                    None => bytes,
                    Some((stored, _stored_memory)) => {
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
                let (bytes, _memory) = self.collect(key, memory, body).await?;
                match serde_json::from_slice::<serde_json::Value>(&bytes) {
                    Ok(serde_json::Value::Object(_)) => self.store_bytes(key, &bytes).await,
                    _ => Err(CacheError::Rejected("body is not a JSON object".into())),
                }
            }
            Kind::Listing => {
                let verifier = Verifier::JsonObject(JsonObjectCheck::new());
                self.stream_to_storage(key, body, verifier).await
            }
            Kind::Log => self.stream_to_storage(key, body, Verifier::None).await,
        }
    }

    /// Streams a body into a pending upload, verifying it on the way, and commits
    /// only when the size limit and the verification hold.
    async fn stream_to_storage<S>(
        &self,
        key: &ObjectKey,
        mut body: S,
        mut verifier: Verifier,
    ) -> Result<PutOutcome, CacheError>
    where
        S: Stream<Item = Result<Bytes, BodyError>> + Send + Unpin,
    {
        let limit = self.upload_limit(key.kind());
        let mut upload = Some(self.storage.begin_upload(key.as_str()).await?);
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
            verifier.update(&chunk);
            if verifier.failed() {
                // Nothing of it will be kept: stop writing, read the rest.
                upload = None;
            }
            if let Some(upload) = upload.as_mut() {
                upload.write(&chunk).await?;
            }
        }
        verifier.finish()?;
        let upload = upload.ok_or_else(|| CacheError::Rejected("verification failed".into()))?;
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

    /// Reads a small body whole, within the kind's limit and the memory budget:
    /// `memory` holds the declared size, or grows with the buffer when none was
    /// declared. Returns the reservation with the bytes; it must live as long.
    async fn collect<S>(
        &self,
        key: &ObjectKey,
        memory: Option<Reservation>,
        mut body: S,
    ) -> Result<(Vec<u8>, Reservation), CacheError>
    where
        S: Stream<Item = Result<Bytes, BodyError>> + Send + Unpin,
    {
        let limit = self.upload_limit(key.kind());
        let mut memory = match memory {
            Some(m) => m,
            None => self
                .budget
                .try_reserve(0)
                .ok_or_else(|| self.out_of_memory())?,
        };
        let mut buf = Vec::with_capacity(usize::try_from(memory.bytes()).unwrap_or(0));
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            let needed = buf.len() + chunk.len();
            if needed as u64 > limit {
                return Err(CacheError::TooLarge {
                    size: needed as u64,
                    limit,
                });
            }
            if needed > buf.capacity() {
                // Grown here rather than by `extend`, so that what the buffer holds
                // is what the budget counts.
                let cap = needed.max(buf.capacity() * 2).min(limit as usize);
                if !memory.resize((cap as u64).max(memory.bytes())) {
                    return Err(self.out_of_memory());
                }
                buf.reserve_exact(cap - buf.len());
            }
            buf.extend_from_slice(&chunk);
        }
        Ok((buf, memory))
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
