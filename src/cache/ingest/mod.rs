//! Uploads: stream the body into storage while verifying it, and make the object
//! visible only once every rule for its kind holds.

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use super::json_check::JsonObjectCheck;
use super::key::{Kind, ObjectKey};
use super::{Cache, CacheError, UploadPermit};
use crate::budget::Reservation;

mod nar;
mod narinfo;

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
            Kind::Nar => self.put_nar(key, memory, body).await,
            Kind::NarInfo => self.put_narinfo(key, memory, body).await,
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

    async fn store_bytes(&self, key: &ObjectKey, bytes: &[u8]) -> Result<PutOutcome, CacheError> {
        let mut upload = self.storage.begin_upload(key.as_str()).await?;
        upload.write(bytes).await?;
        Ok(self.outcome(upload.commit().await?, bytes.len() as u64))
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
}

/// The bytes received once `chunk` more arrived, refused past `limit`.
fn within_limit(received: u64, chunk: usize, limit: u64) -> Result<u64, CacheError> {
    let size = received + chunk as u64;
    if size > limit {
        return Err(CacheError::TooLarge { size, limit });
    }
    Ok(size)
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
