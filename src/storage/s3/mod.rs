//! The S3 backend: objects in a bucket of any S3-compatible store (AWS, Garage, MinIO,
//! R2, …), under the same keys as the directory backend — which is also the layout
//! `nix copy --to s3://bucket` writes, so either can read what the other wrote.
//!
//! Uploads are streamed: bodies up to [`PART_SIZE`] go out as one `PUT`, larger ones
//! as a multipart upload of at most [`PARTS_IN_FLIGHT`] parts in flight, so an
//! upload holds a bounded amount of memory whatever its size. Nothing is visible
//! until [`Upload::commit`] completes the upload (after the cache layer verified the
//! hash); an upload dropped before that is aborted.
//!
//! Nothing is kept in memory between requests: several servers can share one bucket,
//! and what one of them stores is visible through the others at their next request.
//! (The cache layer holds narinfo answers for [`S3Settings::narinfo_ttl`] at most,
//! see `cache::narinfo_cache`.)

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use object_store::aws::AmazonS3;
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};

mod client;
mod credentials;
pub mod settings;
mod upload;

use super::{Listed, ObjectBody, ObjectMeta, ObjectReader, Result, Storage, StorageError, Upload};
use upload::S3Upload;
pub use upload::{PARTS_IN_FLIGHT, PART_SIZE};

/// Concurrent `DELETE`s of a retention pass: enough to remove thousands of objects
/// a second, few enough to leave the bucket to the requests being served.
const DELETES_IN_FLIGHT: usize = 8;

/// Where the bucket is and how to talk to it.
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix inside the bucket, without leading or trailing `/` (may be empty).
    pub prefix: String,
    /// Endpoint URL (`https://s3.example.com`); `None` for AWS (or `AWS_ENDPOINT_URL`).
    pub endpoint: Option<String>,
    /// Region; `None` for `AWS_REGION` / `AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`) instead of virtual-hosted
    /// (`bucket.endpoint/key`).
    pub path_style: bool,
    /// An AWS shared credentials file to take the key from, ahead of everything else.
    pub credentials_file: Option<PathBuf>,
    /// When set, GETs of NARs are answered with a redirect to a presigned URL valid
    /// this long, instead of streaming through the server.
    pub redirect: Option<Duration>,
    /// How long a narinfo read from the bucket may be answered from memory; zero
    /// turns that off.
    pub narinfo_ttl: Duration,
}

/// A binary cache in an S3 bucket.
pub struct S3Storage {
    store: AmazonS3,
    settings: S3Settings,
    /// `prefix/`, or empty: prepended to every key.
    key_prefix: String,
}

/// Turns an object_store error into a storage error, keeping its text.
/// What a failed S3 request means for the client. object_store has already retried
/// what is transient (5xx, throttling, broken connections) with backoff, so a
/// generic error that remains is the store being unavailable.
fn backend(err: object_store::Error) -> StorageError {
    use object_store::Error as E;
    match err {
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
            StorageError::Permission(err.to_string())
        }
        E::Generic { .. } => StorageError::Unavailable(err.to_string()),
        _ => StorageError::Io(std::io::Error::other(err)),
    }
}

fn is_not_found(err: &object_store::Error) -> bool {
    matches!(err, object_store::Error::NotFound { .. })
}

impl S3Storage {
    /// Builds the client, then checks once that the bucket answers with these
    /// credentials: reads `nix-cache-info`, and writes it when absent so the bucket is
    /// also a valid cache for Nix's own S3 store. A refusal is an error naming the
    /// setting to look at.
    pub async fn open(settings: S3Settings, store_dir: &str) -> std::result::Result<Self, String> {
        let storage = Self::build(settings)?;
        storage.check(store_dir).await?;
        Ok(storage)
    }

    fn path(&self, key: &str) -> std::result::Result<Path, String> {
        // Keys are validated upstream; this refuses anything that would not name
        // exactly one object (empty segments, `.`, `..`).
        Path::parse(format!("{}{key}", self.key_prefix))
            .map_err(|e| format!("refusing storage key {key:?}: {e}"))
    }

    fn path_str(&self, full: &str) -> Result<Path> {
        Path::parse(full).map_err(|e| {
            StorageError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                e.to_string(),
            ))
        })
    }

    fn object_path(&self, key: &str) -> Result<Path> {
        self.path(key)
            .map_err(|e| StorageError::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))
    }
}

fn meta_of(m: &object_store::ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        size: m.size,
        // Every S3 store sends ETags; without one, size and time still change with
        // the content in practice.
        version: m
            .e_tag
            .as_deref()
            .map(|t| t.trim_matches('"').to_owned())
            .unwrap_or_else(|| {
                format!(
                    "{:x}-{:x}",
                    m.size,
                    m.last_modified.timestamp_nanos_opt().unwrap_or(0)
                )
            }),
    }
}

#[async_trait]
impl Storage for S3Storage {
    async fn stat(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let path = self.object_path(key)?;
        match self.store.head(&path).await {
            Ok(m) => Ok(Some(meta_of(&m))),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(backend(e)),
        }
    }

    async fn open(&self, key: &str, offset: u64) -> Result<Option<ObjectReader>> {
        let path = self.object_path(key)?;
        let options = GetOptions {
            range: (offset > 0).then_some(GetRange::Offset(offset)),
            ..GetOptions::default()
        };
        let got = match self.store.get_opts(&path, options).await {
            Ok(got) => got,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) if offset > 0 => {
                // S3 refuses a range that starts at or past the end (416); the HTTP
                // layer wants the size to say so itself.
                return match self.store.head(&path).await {
                    Ok(m) if m.size <= offset => Ok(Some(ObjectReader {
                        meta: meta_of(&m),
                        body: ObjectBody::Bytes(Bytes::new()),
                    })),
                    Err(e2) if is_not_found(&e2) => Ok(None),
                    _ => Err(backend(e)),
                };
            }
            Err(e) => Err(backend(e))?,
        };
        let meta = meta_of(&got.meta);
        if got.meta.size.saturating_sub(offset) <= super::INLINE_READ_MAX as u64 {
            let bytes = got.bytes().await.map_err(backend)?;
            return Ok(Some(ObjectReader {
                meta,
                body: ObjectBody::Bytes(bytes),
            }));
        }
        let stream = got.into_stream().map(|r| r.map_err(std::io::Error::other));
        Ok(Some(ObjectReader {
            meta,
            body: ObjectBody::Stream(Box::pin(stream)),
        }))
    }

    async fn begin_upload(&self, key: &str) -> Result<Box<dyn Upload>> {
        let path = self.object_path(key)?;
        Ok(Box::new(S3Upload::new(self.store.clone(), path)))
    }

    async fn list_objects(
        &self,
        folder: &str,
        sink: tokio::sync::mpsc::Sender<Vec<Listed>>,
    ) -> Result<()> {
        // S3 lists recursively: the top level is the whole prefix, less what lies in
        // folders (a delimiter listing would collect every page in memory).
        let under = match folder {
            "" => self.key_prefix.trim_end_matches('/').to_owned(),
            f => format!("{}{f}", self.key_prefix),
        };
        let prefix = match under.as_str() {
            "" => None,
            p => Some(self.path_str(p)?),
        };
        let mut listing = self.store.list(prefix.as_ref());
        let mut batch = Vec::new();
        while let Some(item) = listing.next().await {
            let m = item.map_err(backend)?;
            let Some(key) = m.location.as_ref().strip_prefix(self.key_prefix.as_str()) else {
                continue;
            };
            if key.rsplit_once('/').map_or("", |(dir, _)| dir) != folder {
                continue;
            }
            batch.push(Listed {
                key: key.to_owned(),
                size: m.size,
                modified: u64::try_from(m.last_modified.timestamp()).unwrap_or(0),
            });
            // A listing page holds a thousand keys.
            if batch.len() == 1000 && sink.send(std::mem::take(&mut batch)).await.is_err() {
                return Ok(());
            }
        }
        if !batch.is_empty() {
            let _ = sink.send(batch).await;
        }
        Ok(())
    }

    async fn delete(&self, keys: &[String]) -> Result<()> {
        let mut paths = Vec::with_capacity(keys.len());
        for key in keys {
            paths.push(self.object_path(key)?);
        }
        // S3 acknowledges a DELETE once it is durable; a missing key is no error.
        let mut deletions = futures_util::stream::iter(paths)
            .map(|path| {
                let store = self.store.clone();
                async move {
                    match store.delete(&path).await {
                        Ok(()) => Ok(()),
                        Err(e) if is_not_found(&e) => Ok(()),
                        Err(e) => Err(backend(e)),
                    }
                }
            })
            .buffer_unordered(DELETES_IN_FLIGHT);
        while let Some(done) = deletions.next().await {
            done?;
        }
        Ok(())
    }

    // No `watch_top_level` (and so no listing): S3 has no change feed that covers
    // writes by other servers, so the in-memory narinfo index stays off (every
    // narinfo miss asks the bucket) and nothing another server uploads is ever hidden.

    async fn presign_get(&self, key: &str) -> Result<Option<String>> {
        let Some(expiry) = self.settings.redirect else {
            return Ok(None);
        };
        let path = self.object_path(key)?;
        let url = self
            .store
            .signed_url(object_store::signer::Method::GET, &path, expiry)
            .await
            .map_err(backend)?;
        Ok(Some(url.to_string()))
    }

    fn shared(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        let s = &self.settings;
        let mut d = format!("S3 bucket {}", s.bucket);
        if !s.prefix.is_empty() {
            d.push_str(&format!(" under {}/", s.prefix));
        }
        if let Some(e) = &s.endpoint {
            d.push_str(&format!(" at {e}"));
        }
        d.push_str(if s.path_style {
            " (path-style)"
        } else {
            " (virtual-hosted)"
        });
        if let Some(r) = s.redirect {
            d.push_str(&format!(
                "; NAR downloads redirect to URLs valid {} s",
                r.as_secs()
            ));
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_errors_say_what_failed() {
        let source = || -> Box<dyn std::error::Error + Send + Sync> { "x".into() };
        let denied = object_store::Error::PermissionDenied {
            path: "k".into(),
            source: source(),
        };
        assert!(matches!(backend(denied), StorageError::Permission(_)));
        let unauthenticated = object_store::Error::Unauthenticated {
            path: "k".into(),
            source: source(),
        };
        assert!(matches!(
            backend(unauthenticated),
            StorageError::Permission(_)
        ));
        let down = object_store::Error::Generic {
            store: "S3",
            source: source(),
        };
        assert!(matches!(backend(down), StorageError::Unavailable(_)));
        let other = object_store::Error::NotSupported { source: source() };
        assert!(matches!(backend(other), StorageError::Io(_)));
    }
}
