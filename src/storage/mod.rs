//! Storage backends: where cache objects live.
//!
//! The rest of the server only sees [`Storage`]. Keys are relative, validated paths
//! (`nar/<hash>.nar.zst`, `<hash>.narinfo`, …) produced by `cache::key`; a backend
//! never has to defend against traversal itself, but the filesystem one still refuses
//! anything that is not a plain relative path.

pub mod fs;
#[cfg(test)]
pub mod memory;
#[cfg(feature = "s3")]
pub mod s3;
pub mod scratch;
/// Without the `s3` feature, only the S3 settings: their flags are still parsed, so
/// that a configuration naming S3 is refused by name instead of ignored.
#[cfg(not(feature = "s3"))]
pub mod s3 {
    pub mod settings;
}

use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;

/// A stream of object bytes, as handed to the HTTP layer.
pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// What a backend knows about a stored object without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Size in bytes.
    pub size: u64,
    /// A validator that changes whenever the object's bytes may have changed.
    pub version: String,
}

/// The bytes of an opened object, from the requested offset to its end.
pub enum ObjectBody {
    /// Small objects, read whole: sent with the response headers in one write.
    Bytes(Bytes),
    /// Anything larger, streamed.
    Stream(ByteStream),
}

impl ObjectBody {
    /// The body as a stream, whatever its form.
    pub fn into_stream(self) -> ByteStream {
        match self {
            ObjectBody::Bytes(b) => Box::pin(futures_util::stream::iter([Ok(b)])),
            ObjectBody::Stream(s) => s,
        }
    }
}

/// An object opened for reading.
pub struct ObjectReader {
    /// Metadata of the object at the moment it was opened.
    pub meta: ObjectMeta,
    /// Its bytes from the requested offset on.
    pub body: ObjectBody,
}

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The backend ran out of space.
    #[error("the cache storage is full")]
    Full,
    /// The storage refuses to write where it was asked, for a reason that lies in
    /// the storage itself (e.g. a symbolic link planted in the cache directory), not
    /// in the request: retrying will not help until an administrator looks.
    #[error("{0}")]
    Refused(String),
    /// The storage denied the server access (S3 credentials without the right
    /// grant, a read-only or immutable directory): an administrator must act.
    #[error("the storage denied access: {0}")]
    Permission(String),
    /// The storage did not answer, or asked to slow down, after the client's own
    /// retries: worth retrying later.
    #[error("the storage is unavailable: {0}")]
    Unavailable(String),
    /// Any other I/O failure.
    #[error("storage I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl StorageError {
    /// Classifies an I/O error: a full disk and a denied access are reported as such.
    pub fn from_io(err: std::io::Error) -> Self {
        if Self::is_no_space(&err) {
            StorageError::Full
        } else if matches!(
            err.raw_os_error(),
            Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS)
        ) {
            StorageError::Permission(err.to_string())
        } else {
            StorageError::Io(err)
        }
    }

    /// Whether an I/O error means "no room for this write" (ENOSPC, EDQUOT).
    pub fn is_no_space(err: &std::io::Error) -> bool {
        matches!(err.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
    }
}

/// Objects up to this size are read whole and sent with the answer's headers in one
/// write; larger ones are streamed. The directory backend reads them in the
/// request's own task: opening and reading a file in the page cache takes
/// microseconds, far less than a hop to the blocking thread pool (nginx's model).
pub const INLINE_READ_MAX: usize = 64 * 1024;

/// Result type of the storage layer.
pub type Result<T> = std::result::Result<T, StorageError>;

/// An upload in progress. Nothing is visible under the key until [`Upload::commit`]
/// succeeds; dropping the upload without committing discards everything written.
#[async_trait]
pub trait Upload: Send {
    /// Appends bytes to the pending object.
    async fn write(&mut self, chunk: &[u8]) -> Result<()>;
    /// Makes the object visible under its key, atomically replacing any previous version.
    /// Returns `true` when the key did not exist before.
    async fn commit(self: Box<Self>) -> Result<bool>;
}

/// News about the top level of the cache, from a backend that can watch it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopLevelEvent {
    /// Objects appeared (or were replaced) under these names.
    Added(Vec<String>),
    /// Objects under these names were removed, or rewritten in place.
    Changed(Vec<String>),
    /// Events were lost (e.g. a queue overflowed): whatever was learnt from
    /// listing and watching so far may be incomplete, and must be rebuilt.
    Lost,
}

/// How much a backend holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Number of stored objects.
    pub objects: u64,
    /// Their total size in bytes.
    pub bytes: u64,
}

/// One stored object, as a listing of the whole storage reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Its key, e.g. `nar/<filehash>.nar.xz`.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification (the upload's commit), in seconds since the Unix epoch.
    pub modified: u64,
}

/// Streams the listing of `folder` (see [`Storage::list_objects`]) through `f`.
pub async fn for_each_listed(
    storage: &dyn Storage,
    folder: &str,
    mut f: impl FnMut(Listed),
) -> Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Listed>>(4);
    let listing = storage.list_objects(folder, tx);
    let consume = async {
        while let Some(batch) = rx.recv().await {
            batch.into_iter().for_each(&mut f);
        }
    };
    let (listed, ()) = tokio::join!(listing, consume);
    listed
}

/// Stores `bytes` under `key` (a small object: a marker, an intent) through the
/// backend's atomic, durable upload.
pub async fn write_whole(storage: &dyn Storage, key: &str, bytes: &[u8]) -> Result<()> {
    let mut upload = storage.begin_upload(key).await?;
    upload.write(bytes).await?;
    upload.commit().await?;
    Ok(())
}

/// The whole of a small object (a narinfo, an intent): `None` when it does not
/// exist or holds more than `limit` bytes (then no more than that is read).
pub async fn read_whole(storage: &dyn Storage, key: &str, limit: usize) -> Result<Option<Vec<u8>>> {
    use futures_util::StreamExt;
    let Some(reader) = storage.open(key, 0).await? else {
        return Ok(None);
    };
    let mut body = reader.body.into_stream();
    let mut bytes = Vec::with_capacity((reader.meta.size as usize).min(limit));
    while let Some(chunk) = body.next().await {
        bytes.extend_from_slice(&chunk.map_err(StorageError::from_io)?);
        if bytes.len() > limit {
            return Ok(None);
        }
    }
    Ok(Some(bytes))
}

/// A place to keep cache objects.
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Metadata of an object, or `None` when it does not exist.
    async fn stat(&self, key: &str) -> Result<Option<ObjectMeta>>;
    /// Opens an object for reading from `offset`, or `None` when it does not exist.
    async fn open(&self, key: &str, offset: u64) -> Result<Option<ObjectReader>>;
    /// Starts an upload to `key`; see [`Upload`].
    async fn begin_upload(&self, key: &str) -> Result<Box<dyn Upload>>;
    /// Sends the names of the objects at the top level of the cache (`<hash>.narinfo`,
    /// `nix-cache-info`, …; nothing inside folders such as `nar/`) to `sink`, in
    /// batches, until all were sent.
    ///
    /// Only asked of a backend whose [`Storage::watch_top_level`] works (a listing
    /// without a watch cannot keep an index exact), so the others keep this default.
    async fn list_top_level(&self, sink: tokio::sync::mpsc::Sender<Vec<String>>) -> Result<()> {
        let _ = sink;
        Ok(())
    }
    /// Starts reporting objects that appear at the top level from now on, whoever
    /// writes them, to `sink`; `Ok(false)` when this backend cannot watch.
    fn watch_top_level(&self, sink: tokio::sync::mpsc::Sender<TopLevelEvent>) -> Result<bool> {
        let _ = sink;
        Ok(false)
    }
    /// Sends every object stored directly in `folder` (`""` for the top level,
    /// `"nar"`, `"log"`, …; not what lies in its subfolders) to `sink` in batches,
    /// until all were sent or `sink` is closed. A full listing: run by retention
    /// passes, never per request.
    async fn list_objects(
        &self,
        folder: &str,
        sink: tokio::sync::mpsc::Sender<Vec<Listed>>,
    ) -> Result<()>;
    /// Removes the objects under `keys`, durably: once this returns, a power cut does
    /// not bring them back. Keys already absent are skipped.
    async fn delete(&self, keys: &[String]) -> Result<()>;
    /// Counts every stored object and its bytes: a full walk, slow on a large cache, so
    /// run once in the background. `Ok(None)` when this backend cannot count.
    async fn usage(&self) -> Result<Option<Usage>> {
        Ok(None)
    }
    /// Fails with [`StorageError::Full`] when an object of `size` bytes certainly
    /// does not fit, so an upload can be refused before its body is read. Passing
    /// does not reserve anything: a write can still run out of space.
    fn ensure_room(&self, size: u64) -> Result<()> {
        let _ = size;
        Ok(())
    }
    /// A short-lived URL from which a client can fetch the object itself, when this
    /// backend is configured to hand such URLs out (the HTTP layer then redirects NAR
    /// downloads there); `None` otherwise. Says nothing about whether the object
    /// exists.
    async fn presign_get(&self, key: &str) -> Result<Option<String>> {
        let _ = key;
        Ok(None)
    }
    /// Whether other servers may write to this storage at the same time (a bucket
    /// shared by several instances), so that what one server holds in memory is no
    /// lock on the others.
    fn shared(&self) -> bool {
        false
    }
    /// An unnamed scratch file (see [`scratch`]) for data held while the server works
    /// on it: by default in the system's temporary directory; a backend with a local
    /// area of its own puts it there.
    fn scratch_file(&self) -> std::io::Result<std::fs::File> {
        scratch::anonymous()
    }
    /// A short human description for the startup log.
    fn describe(&self) -> String;
}
