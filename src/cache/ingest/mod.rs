//! Uploads: stream the body into storage while verifying it, and make the object
//! visible only once every rule for its kind holds.

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};

use super::compression::Compression;
use super::json_check::JsonObjectCheck;
use super::key::{Kind, ObjectKey};
use super::nar_verify::{NarDigest, NarVerifier};
use super::narinfo::{self, CheckedNarInfo, Merge, NarInfoPolicy};
use super::{Cache, CacheError, UploadPermit};
use crate::budget::Reservation;
use crate::storage::StorageError;

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
    /// A listing: one JSON object.
    JsonObject(JsonObjectCheck),
}

impl Verifier {
    fn update(&mut self, chunk: &[u8]) {
        match self {
            Verifier::None => {}
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
            Kind::Nar => self.put_nar(key, body).await,
            Kind::NarInfo => {
                let (bytes, _memory) = self.collect(key, memory, body).await?;
                let checked = self.parse_narinfo(key, &bytes)?;
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
                hold.stored(bytes.len() as u64 + checked.file_size);
                Ok(outcome)
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
            received = within_limit(received, chunk.len(), limit)?;
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

    /// Streams a NAR file into a pending upload while checking that its bytes hash to
    /// the file hash in its name and that they decompress to a valid NAR; commits only
    /// when both hold, and remembers what the NAR decodes to for its narinfo.
    async fn put_nar<S>(&self, key: &ObjectKey, mut body: S) -> Result<PutOutcome, CacheError>
    where
        S: Stream<Item = Result<Bytes, BodyError>> + Send + Unpin,
    {
        let expected = key.nar_file_hash().unwrap_or_default();
        let compression = nar_compression(key)?;
        let _hold = self.retention.hold_nar(key.as_str())?;
        let limit = self.upload_limit(key.kind());
        let _decoder_memory = self.decoder_memory(compression).await?;
        let mut upload = Some(self.storage.begin_upload(key.as_str()).await?);
        // An uncompressed NAR's NarHash is its file hash, computed here anyway.
        let mut verifier = NarVerifier::start(compression, compression != Compression::None)
            .map_err(StorageError::Io)?;
        let mut hasher = Sha256::new();
        let mut received: u64 = 0;
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            received = within_limit(received, chunk.len(), limit)?;
            // Once verification failed, the rest of the body is only read (so the
            // client gets the answer instead of a reset), and the upload is dropped.
            let Some(pending) = upload.as_mut() else {
                continue;
            };
            hasher.update(&chunk);
            if !verifier.feed(chunk.clone()).await {
                upload = None;
                continue;
            }
            pending.write(&chunk).await?;
        }
        let digest = verifier.finish().await.map_err(CacheError::Rejected)?;
        let Some(upload) = upload else {
            return Err(CacheError::Rejected(
                "NAR verification stopped without a reason".into(),
            ));
        };
        let file_hash: [u8; 32] = hasher.finalize().into();
        let actual = nix_derivation::nixbase32::encode(&file_hash);
        if actual != expected {
            return Err(CacheError::Rejected(format!(
                "NAR body hashes to sha256:{actual}, not to the {expected} in its name"
            )));
        }
        let digest = digest.unwrap_or(NarDigest {
            nar_hash: file_hash,
            nar_size: received,
        });
        let outcome = self.outcome(upload.commit().await?, received);
        self.verified.insert(key.as_str(), digest);
        Ok(outcome)
    }

    /// The memory budget's share for one NAR verification: its decoder's cap plus
    /// the pipeline. Waited for (the client's body waits in its socket meanwhile),
    /// since a refused PUT is what old Nix clients cannot retry; and taken only up to
    /// three quarters of the budget, so that the bodies that must be held whole
    /// (narinfos) always find room.
    async fn decoder_memory(&self, compression: Compression) -> Result<Reservation, CacheError> {
        let budget = self.budget();
        budget
            .reserve_waiting(
                crate::cache::nar_verify::verify_memory(compression),
                budget.limit() / 4 * 3,
                DECODER_MEMORY_WAIT,
            )
            .await
            .ok_or_else(|| self.out_of_memory())
    }

    /// Decodes a stored NAR file to learn its NarHash and NarSize (for a NAR this
    /// server has not verified since it started, or that another writer stored).
    async fn decode_stored_nar(&self, key: &ObjectKey) -> Result<NarDigest, CacheError> {
        let compression = nar_compression(key)?;
        let Some(reader) = self.storage.open(key.as_str(), 0).await? else {
            return Err(CacheError::Rejected(format!(
                "URL {} names a NAR that is not in this cache; upload it first",
                key.as_str()
            )));
        };
        let _decoder_memory = self.decoder_memory(compression).await?;
        let mut stream = reader.body.into_stream();
        let mut verifier = NarVerifier::start(compression, true).map_err(StorageError::Io)?;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(StorageError::from_io)?;
            if !verifier.feed(chunk).await {
                break;
            }
        }
        let verdict = verifier.finish().await;
        let digest = verdict
            .map_err(|e| {
                CacheError::Rejected(format!("the stored {} is not valid: {e}", key.as_str()))
            })?
            .ok_or_else(|| CacheError::Rejected("the stored NAR was not hashed".into()))?;
        self.verified.insert(key.as_str(), digest);
        Ok(digest)
    }

    /// The narinfo's NarHash and NarSize against what its NAR file decodes to, so
    /// that a client never downloads a NAR its narinfo misdescribes.
    async fn check_nar_contents(&self, checked: &CheckedNarInfo) -> Result<(), CacheError> {
        let digest = match self.verified.get(checked.nar.as_str()) {
            Some(d) => d,
            None => self.decode_stored_nar(&checked.nar).await?,
        };
        if checked.nar_hash != digest.nar_hash {
            return Err(CacheError::Rejected(format!(
                "NarHash sha256:{} does not match the NAR, which hashes to sha256:{}",
                nix_derivation::nixbase32::encode(&checked.nar_hash),
                nix_derivation::nixbase32::encode(&digest.nar_hash)
            )));
        }
        if checked.nar_size != digest.nar_size {
            return Err(CacheError::Rejected(format!(
                "NarSize {} does not match the NAR, which is {} bytes",
                checked.nar_size, digest.nar_size
            )));
        }
        Ok(())
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

    /// The narinfo rules that need no storage.
    fn parse_narinfo(&self, key: &ObjectKey, body: &[u8]) -> Result<CheckedNarInfo, CacheError> {
        let policy = NarInfoPolicy {
            store_dir: &self.settings.store_dir,
            trusted_keys: &self.settings.trusted_keys,
        };
        let key_hash = key.store_hash().unwrap_or_default();
        narinfo::check(body, key_hash, &policy).map_err(CacheError::Rejected)
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
            {
                return Err(CacheError::Rejected(format!(
                    "reference {reference} is not in this cache; upload it first"
                )));
            }
        }
        Ok(())
    }
}

/// The bytes received once `chunk` more arrived, refused past `limit`.
fn within_limit(received: u64, chunk: usize, limit: u64) -> Result<u64, CacheError> {
    let size = received + chunk as u64;
    if size > limit {
        return Err(CacheError::TooLarge { size, limit });
    }
    Ok(size)
}

/// How long a NAR upload waits for its decoder's memory before it is refused (503):
/// well within the body timeout, by which the client's body would idle out anyway.
const DECODER_MEMORY_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// The compression of a NAR key, refused when this server cannot decode it.
fn nar_compression(key: &ObjectKey) -> Result<Compression, CacheError> {
    let ext = key.nar_extension().unwrap_or_default();
    Compression::from_extension(ext).ok_or_else(|| {
        CacheError::Rejected(format!(
            "NAR files compressed as {ext:?} are not supported (none, xz, zstd, bzip2, br, lzip, lz4 are)"
        ))
    })
}

impl Cache {
    fn outcome(&self, created: bool, size: u64) -> PutOutcome {
        if created {
            self.stored.created(size);
            self.retention.created(size);
            PutOutcome::Created
        } else {
            PutOutcome::Replaced
        }
    }
}
