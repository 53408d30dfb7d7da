//! NAR uploads: the file hash in the name and the NAR inside checked while the body
//! streams to storage, and what a stored NAR decodes to, for its narinfo.

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};

use super::{within_limit, BodyError, PutOutcome};
use crate::budget::Reservation;
use crate::cache::compression::Compression;
use crate::cache::key::ObjectKey;
use crate::cache::nar_verify::{NarDigest, NarVerifier, VerifyError};
use crate::cache::narinfo::CheckedNarInfo;
use crate::cache::{Cache, CacheError};
use crate::storage::StorageError;

impl Cache {
    /// Streams a NAR file into a pending upload while checking that its bytes hash to
    /// the file hash in its name and that they decompress to a valid NAR; commits only
    /// when both hold, and remembers what the NAR decodes to for its narinfo. The
    /// decoder's memory is `memory` when the caller reserved it already (see
    /// [`Cache::nar_decoder_memory`]), else waited for here.
    pub(super) async fn put_nar<S>(
        &self,
        key: &ObjectKey,
        memory: Option<Reservation>,
        mut body: S,
    ) -> Result<PutOutcome, CacheError>
    where
        S: Stream<Item = Result<Bytes, BodyError>> + Send + Unpin,
    {
        let expected = key.nar_file_hash().unwrap_or_default();
        let compression = nar_compression(key)?;
        let _hold = self.retention.hold_nar(key.as_str())?;
        let limit = self.upload_limit(key.kind());
        let _decoder_memory = match memory {
            Some(reserved) => reserved,
            None => {
                self.decoder_memory(compression, DECODER_MEMORY_WAIT)
                    .await?
            }
        };
        let mut upload = Some(self.storage.begin_upload(key.as_str()).await?);
        // An uncompressed NAR's NarHash is its file hash, computed here anyway.
        let mut verifier = NarVerifier::start(compression, compression != Compression::None);
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
        let digest = verifier.finish().await.map_err(|e| match e {
            VerifyError::Invalid(why) => CacheError::Rejected(why),
            e @ VerifyError::Internal(_) => StorageError::Io(std::io::Error::other(e)).into(),
        })?;
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
    async fn decoder_memory(
        &self,
        compression: Compression,
        wait: std::time::Duration,
    ) -> Result<Reservation, CacheError> {
        let budget = self.budget();
        budget
            .reserve_waiting(
                crate::cache::nar_verify::verify_memory(compression),
                budget.limit() / 4 * 3,
                wait,
            )
            .await
            .ok_or_else(|| self.out_of_memory())
    }

    /// The memory the verification of the NAR file `key` takes, waited for up to
    /// `wait`: for an uploader that can wait longer than a client's body would (a
    /// pull, which reserves it before it opens its download) to pass to
    /// [`Cache::put`] through its permit.
    #[cfg(feature = "upstream")]
    pub(in crate::cache) async fn nar_decoder_memory(
        &self,
        key: &ObjectKey,
        wait: std::time::Duration,
    ) -> Result<Reservation, CacheError> {
        self.decoder_memory(nar_compression(key)?, wait).await
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
        let _decoder_memory = self
            .decoder_memory(compression, DECODER_MEMORY_WAIT)
            .await?;
        let mut stream = reader.body.into_stream();
        let mut verifier = NarVerifier::start(compression, true);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(StorageError::from_io)?;
            if !verifier.feed(chunk).await {
                break;
            }
        }
        let verdict = verifier.finish().await;
        let digest = verdict
            .map_err(|e| match e {
                VerifyError::Invalid(why) => {
                    CacheError::Rejected(format!("the stored {} is not valid: {why}", key.as_str()))
                }
                e @ VerifyError::Internal(_) => StorageError::Io(std::io::Error::other(e)).into(),
            })?
            .ok_or_else(|| CacheError::Rejected("the stored NAR was not hashed".into()))?;
        self.verified.insert(key.as_str(), digest);
        Ok(digest)
    }

    /// The narinfo's NarHash and NarSize against what its NAR file decodes to, so
    /// that a client never downloads a NAR its narinfo misdescribes.
    pub(super) async fn check_nar_contents(
        &self,
        checked: &CheckedNarInfo,
    ) -> Result<(), CacheError> {
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
