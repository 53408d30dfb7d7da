//! Uploads to the bucket: a single `PUT` for a small body, a multipart upload of
//! growing parts for a large one, aborted in the background when dropped.

use async_trait::async_trait;
use bytes::Bytes;
use object_store::aws::AmazonS3;
use object_store::path::Path;
use object_store::{MultipartUpload, ObjectStoreExt, PutPayload};
use tokio::task::JoinSet;

use super::{backend, is_not_found};
use crate::storage::{Result, StorageError, Upload};

/// Size of a multipart upload's parts (S3 wants at least 5 MiB, the last one
/// excepted). Bodies up to this size are sent in a single `PUT`. Parts grow after
/// every [`PARTS_PER_SIZE`] parts, so that S3's limit of 10,000 parts is never hit:
/// 1,000 × 8 MiB + 1,000 × 16 MiB + … reaches 56 GiB at part 3,000 and ends at
/// 128 MiB parts (at most [`PARTS_IN_FLIGHT`] + 1 of them in memory per upload).
pub const PART_SIZE: usize = 8 * 1024 * 1024;
/// How many parts are sent with the same size before it doubles.
const PARTS_PER_SIZE: usize = 1000;
/// Parts being sent at once for one upload: one part goes to the store while the
/// next is received from the client; memory per upload stays below (this + 1) × part
/// size (16 MiB), so four concurrent NAR uploads fit well under 100 MiB.
pub const PARTS_IN_FLIGHT: usize = 1;

/// An upload in progress: a single `PUT` when the body stays small, a multipart
/// upload otherwise.
pub(super) struct S3Upload {
    store: AmazonS3,
    path: Path,
    buf: Vec<u8>,
    multipart: Option<Box<dyn MultipartUpload>>,
    /// Parts in flight, each giving back its buffer when done.
    parts: JoinSet<(object_store::Result<()>, Bytes)>,
    /// The buffer of the last part sent, once the store has it: the next part is
    /// filled into it instead of a fresh allocation, whose pages would be faulted in
    /// one by one (a fifth of the server's CPU time in a multipart upload).
    spare: Option<Vec<u8>>,
    parts_sent: usize,
    /// The store dropped the multipart upload (see [`S3Upload::join_one`]).
    superseded: bool,
    finished: bool,
}

impl S3Upload {
    /// An upload stored at `path`.
    pub(super) fn new(store: AmazonS3, path: Path) -> Self {
        S3Upload {
            store,
            path,
            buf: Vec::new(),
            multipart: None,
            parts: JoinSet::new(),
            spare: None,
            parts_sent: 0,
            superseded: false,
            finished: false,
        }
    }

    fn part_size(&self) -> usize {
        PART_SIZE << (self.parts_sent / PARTS_PER_SIZE).min(4)
    }

    /// Sends the buffer as the next part, starting the multipart upload if needed and
    /// waiting while too many parts are in flight.
    async fn send_part(&mut self) -> Result<()> {
        while self.parts.len() >= PARTS_IN_FLIGHT {
            self.join_one().await?;
        }
        let multipart = match self.multipart.as_mut() {
            Some(m) => m,
            None => {
                let m = self
                    .store
                    .put_multipart(&self.path)
                    .await
                    .map_err(backend)?;
                self.multipart.insert(m)
            }
        };
        let part = Bytes::from(std::mem::take(&mut self.buf));
        if self.superseded {
            // Nothing more to send to an upload the store dropped.
            return Ok(());
        }
        let sent = multipart.put_part(PutPayload::from(part.clone()));
        self.parts.spawn(async move { (sent.await, part) });
        self.parts_sent += 1;
        Ok(())
    }

    async fn join_one(&mut self) -> Result<()> {
        let joined = self.parts.join_next().await.map(|joined| {
            joined.map(|(result, buffer)| {
                // Unique once the store's request has dropped its copies.
                if let Ok(buffer) = buffer.try_into_mut() {
                    let mut buffer = Vec::from(buffer);
                    buffer.clear();
                    self.spare = Some(buffer);
                }
                result
            })
        });
        match joined {
            Some(Ok(Err(e))) if is_not_found(&e) => {
                // The store dropped this upload: another upload of the same key was
                // completed meanwhile (Garage does this). The rest of the body is
                // still read and verified; commit decides.
                self.superseded = true;
                Ok(())
            }
            Some(Ok(r)) => r.map_err(backend),
            Some(Err(e)) => Err(StorageError::Io(std::io::Error::other(e.to_string()))),
            None => Ok(()),
        }
    }

    /// After the store dropped this upload for a concurrent one of the same key:
    /// success when that one is there. Both bodies passed the same verification (a
    /// NAR's content is its name), so the key holds what this upload would have
    /// stored; for other kinds the other writer simply came last.
    async fn superseded_outcome(&mut self, err: StorageError) -> Result<bool> {
        match self.store.head(&self.path).await {
            Ok(_) => {
                self.finished = true;
                self.multipart = None;
                Ok(false)
            }
            Err(_) => Err(err),
        }
    }
}

#[async_trait]
impl Upload for S3Upload {
    async fn write(&mut self, mut chunk: &[u8]) -> Result<()> {
        while !chunk.is_empty() {
            let size = self.part_size();
            if self.buf.capacity() == 0 {
                if let Some(spare) = self.spare.take().filter(|b| b.capacity() >= size) {
                    self.buf = spare;
                }
            }
            let take = (size - self.buf.len()).min(chunk.len());
            let needed = self.buf.len() + take;
            if needed > self.buf.capacity() {
                // Grow by doubling, but never past the part size: a part keeps its
                // whole allocation while in flight, and Vec's own doubling would make
                // that twice the part.
                let cap = (self.buf.capacity() * 2)
                    .max(needed)
                    .max(64 * 1024)
                    .min(size);
                self.buf.reserve_exact(cap - self.buf.len());
            }
            self.buf.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            if self.buf.len() >= size {
                self.send_part().await?;
            }
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<bool> {
        // Whether the key existed decides 201 or 204 only. Two uploads of the same
        // key racing through different servers may both report a creation; the
        // object itself is whole either way (S3 replaces objects atomically).
        let existed = match self.store.head(&self.path).await {
            Ok(_) => true,
            Err(e) if is_not_found(&e) => false,
            Err(e) => return Err(backend(e)),
        };
        if self.multipart.is_none() {
            let body = PutPayload::from(Bytes::from(std::mem::take(&mut self.buf)));
            self.store.put(&self.path, body).await.map_err(backend)?;
        } else {
            if !self.buf.is_empty() {
                self.send_part().await?;
            }
            while !self.parts.is_empty() {
                self.join_one().await?;
            }
            let completed = match self.multipart.as_mut() {
                Some(_) if self.superseded => Err(StorageError::Io(std::io::Error::other(
                    "the store dropped this multipart upload",
                ))),
                Some(m) => match m.complete().await {
                    Ok(_) => Ok(()),
                    Err(e) if is_not_found(&e) => Err(backend(e)),
                    Err(e) => return Err(backend(e)),
                },
                None => Ok(()),
            };
            if let Err(e) = completed {
                return self.superseded_outcome(e).await;
            }
        }
        self.finished = true;
        Ok(!existed)
    }
}

impl Drop for S3Upload {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Parts still in flight are cancelled with the JoinSet; the upload itself is
        // aborted in the background so that the bucket keeps no orphaned parts.
        if let Some(mut multipart) = self.multipart.take() {
            let path = self.path.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    if let Err(e) = multipart.abort().await {
                        tracing::warn!("S3: could not abort the upload of {path}: {e}");
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use object_store::aws::AmazonS3Builder;

    use super::super::client::install_ring;
    use super::*;

    #[test]
    fn parts_grow_to_stay_under_the_part_limit() {
        install_ring();
        let mut total: u64 = 0;
        let mut up = S3Upload {
            store: AmazonS3Builder::new()
                .with_bucket_name("b")
                .with_access_key_id("k")
                .with_secret_access_key("s")
                .build()
                .unwrap(),
            path: Path::from("x"),
            buf: Vec::new(),
            multipart: None,
            parts: JoinSet::new(),
            spare: None,
            parts_sent: 0,
            superseded: false,
            finished: true,
        };
        while up.parts_sent < 10_000 {
            total += up.part_size() as u64;
            up.parts_sent += 1;
        }
        assert!(total > 800 << 30, "10,000 parts hold more than 800 GiB");
        assert_eq!(up.part_size(), 128 << 20);
    }
}
