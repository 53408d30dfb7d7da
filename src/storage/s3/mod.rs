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
//! Nothing is kept in memory between requests except, when configured, small
//! narinfo answers for a few seconds (see [`S3Settings::narinfo_ttl`]): several
//! servers can share one bucket, and what one of them stores is visible through the
//! others at their next request (or after that TTL, for a narinfo already cached).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, MultipartUpload, ObjectStore,
    ObjectStoreExt, PutPayload, RetryConfig,
};
use tokio::task::JoinSet;

mod credentials;
mod memo;
pub mod settings;

use super::{Listed, ObjectBody, ObjectMeta, ObjectReader, Result, Storage, StorageError, Upload};
use crate::budget::Budget;

/// Concurrent `DELETE`s of a retention pass: enough to remove thousands of objects
/// a second, few enough to leave the bucket to the requests being served.
const DELETES_IN_FLIGHT: usize = 8;

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
    memo: Arc<memo::Memo>,
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

/// Makes ring, the server's own crypto, the process's rustls provider: reqwest's rustls
/// has none of its own (object_store's default would be aws-lc-rs, a second stack).
/// Called before every client is built; the second call changes nothing.
fn install_ring() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl S3Storage {
    /// Builds the client, then checks once that the bucket answers with these
    /// credentials: reads `nix-cache-info`, and writes it when absent so the bucket is
    /// also a valid cache for Nix's own S3 store. A refusal is an error naming the
    /// setting to look at. The narinfo memo draws from `budget`.
    pub async fn open(
        settings: S3Settings,
        store_dir: &str,
        budget: Arc<Budget>,
    ) -> std::result::Result<Self, String> {
        let storage = Self::build(settings, budget)?;
        storage.check(store_dir).await?;
        Ok(storage)
    }

    /// The client alone, without contacting the bucket.
    fn build(settings: S3Settings, budget: Arc<Budget>) -> std::result::Result<Self, String> {
        install_ring();
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&settings.bucket);
        if let Some(region) = &settings.region {
            builder = builder.with_region(region);
        }
        if let Some(creds) = credentials::resolve(settings.credentials_file.as_deref())? {
            builder = builder
                .with_access_key_id(creds.key_id)
                .with_secret_access_key(creds.secret);
            if let Some(token) = creds.token {
                builder = builder.with_token(token);
            }
        }
        let endpoint = settings
            .endpoint
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL_S3").ok())
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
            .or_else(|| std::env::var("AWS_ENDPOINT").ok());
        if let Some(endpoint) = &endpoint {
            let endpoint = endpoint.trim_end_matches('/');
            builder = if settings.path_style {
                builder.with_endpoint(endpoint)
            } else {
                // object_store expects the bucket in a virtual-hosted endpoint.
                builder.with_endpoint(virtual_hosted(endpoint, &settings.bucket)?)
            };
        }
        builder = builder.with_virtual_hosted_style_request(!settings.path_style);
        let plain_http = endpoint
            .as_deref()
            .is_some_and(|e| e.to_ascii_lowercase().starts_with("http://"));
        builder = builder
            .with_client_options(
                ClientOptions::new()
                    // An endpoint written with http:// is a deliberate choice (a
                    // store on the same host or network).
                    .with_allow_http(plain_http)
                    .with_connect_timeout(Duration::from_secs(5))
                    // A multi-GiB NAR streams for as long as it takes; a stalled
                    // store is noticed by the client, whose download stops.
                    .with_timeout_disabled()
                    .with_pool_idle_timeout(Duration::from_secs(30)),
            )
            // Transient errors are retried briefly; a store that stays unreachable
            // fails the request (and the start) within seconds, not minutes.
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(50),
                    max_backoff: Duration::from_secs(2),
                    base: 2.0,
                },
                max_retries: 3,
                retry_timeout: Duration::from_secs(15),
            });
        let store = builder
            .build()
            .map_err(|e| format!("S3 configuration: {e}"))?;
        let key_prefix = if settings.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", settings.prefix)
        };
        Ok(S3Storage {
            store,
            memo: Arc::new(memo::Memo::new(settings.narinfo_ttl, budget)),
            settings,
            key_prefix,
        })
    }

    async fn check(&self, store_dir: &str) -> std::result::Result<(), String> {
        let bucket = &self.settings.bucket;
        let info = self.path("nix-cache-info")?;
        let explain = |e: &object_store::Error| {
            match e {
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => format!(
                "S3 bucket {bucket}: the credentials were refused (check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, NIX_STORED_S3_CREDENTIALS_FILE and NIX_STORED_S3_REGION): {e}"
            ),
            object_store::Error::NotFound { .. } => format!(
                "S3 bucket {bucket} does not exist (check NIX_STORED_S3_BUCKET and NIX_STORED_S3_ENDPOINT): {e}"
            ),
            _ => format!(
                "S3 bucket {bucket} is unreachable or refused the request (check NIX_STORED_S3_ENDPOINT and NIX_STORED_S3_REGION): {e}"
            ),
        }
        };
        match self.store.get(&info).await {
            Ok(r) => {
                let text = r.bytes().await.map_err(|e| explain(&e))?;
                let text = String::from_utf8_lossy(&text);
                if let Some(dir) = text
                    .lines()
                    .find_map(|l| l.strip_prefix("StoreDir:"))
                    .map(str::trim)
                {
                    if dir != store_dir {
                        tracing::warn!(
                            "S3 bucket {bucket}: nix-cache-info says StoreDir {dir}, this server uses {store_dir}"
                        );
                    }
                }
                Ok(())
            }
            Err(e) if is_not_found(&e) => {
                // The bucket answers and the key may read; NoSuchBucket also lands
                // here, and the write below tells the two apart.
                let body = PutPayload::from(format!("StoreDir: {store_dir}\n"));
                match self.store.put(&info, body).await {
                    Ok(_) => Ok(()),
                    Err(e @ object_store::Error::PermissionDenied { .. }) => {
                        // Read-only credentials can serve a bucket filled by others.
                        tracing::warn!(
                            "S3 bucket {bucket}: cannot write nix-cache-info ({e}); uploads will be refused by the bucket"
                        );
                        Ok(())
                    }
                    Err(e) => Err(explain(&e)),
                }
            }
            Err(e) => Err(explain(&e)),
        }
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

/// `https://s3.example.com` → `https://bucket.s3.example.com`.
fn virtual_hosted(endpoint: &str, bucket: &str) -> std::result::Result<String, String> {
    let (scheme, host) = endpoint.split_once("://").ok_or_else(|| {
        format!("NIX_STORED_S3_ENDPOINT {endpoint:?} is not a URL like https://s3.example.com")
    })?;
    Ok(format!("{scheme}://{bucket}.{host}"))
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
        if let Some((meta, _)) = self.memo.get(key) {
            return Ok(Some(meta));
        }
        let path = self.object_path(key)?;
        match self.store.head(&path).await {
            Ok(m) => Ok(Some(meta_of(&m))),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(backend(e)),
        }
    }

    async fn open(&self, key: &str, offset: u64) -> Result<Option<ObjectReader>> {
        if let Some((meta, bytes)) = self.memo.get(key) {
            let from = (offset as usize).min(bytes.len());
            return Ok(Some(ObjectReader {
                meta,
                body: ObjectBody::Bytes(bytes.slice(from..)),
            }));
        }
        let path = self.object_path(key)?;
        let started = Instant::now();
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
            if offset == 0 {
                self.memo.put(key, &meta, &bytes, started);
            }
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
        // Whatever this server remembered of the key is about to be replaced.
        self.memo.forget(key);
        Ok(Box::new(S3Upload {
            store: self.store.clone(),
            path,
            key: key.to_owned(),
            memo: self.memo.clone(),
            buf: Vec::new(),
            multipart: None,
            parts: JoinSet::new(),
            parts_sent: 0,
            superseded: false,
            finished: false,
        }))
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
            self.memo.forget(key);
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
        if !s.narinfo_ttl.is_zero() {
            d.push_str(&format!(
                "; narinfos kept in memory up to {} ms, in at most {} bytes",
                s.narinfo_ttl.as_millis(),
                self.memo.max_bytes()
            ));
        }
        d
    }
}

/// An upload in progress: a single `PUT` when the body stays small, a multipart
/// upload otherwise.
struct S3Upload {
    store: AmazonS3,
    path: Path,
    key: String,
    memo: Arc<memo::Memo>,
    buf: Vec<u8>,
    multipart: Option<Box<dyn MultipartUpload>>,
    parts: JoinSet<object_store::Result<()>>,
    parts_sent: usize,
    /// The store dropped the multipart upload (see [`S3Upload::join_one`]).
    superseded: bool,
    finished: bool,
}

impl S3Upload {
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
        let part = std::mem::take(&mut self.buf);
        if self.superseded {
            // Nothing more to send to an upload the store dropped.
            return Ok(());
        }
        self.parts
            .spawn(multipart.put_part(PutPayload::from(Bytes::from(part))));
        self.parts_sent += 1;
        Ok(())
    }

    async fn join_one(&mut self) -> Result<()> {
        match self.parts.join_next().await {
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
                self.memo.forget(&self.key);
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
        // A read that raced with this upload may have remembered the old version.
        self.memo.forget(&self.key);
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

    #[test]
    fn virtual_hosted_endpoints_name_the_bucket() {
        assert_eq!(
            virtual_hosted("https://s3.example.com", "cache").unwrap(),
            "https://cache.s3.example.com"
        );
        assert!(virtual_hosted("s3.example.com", "cache").is_err());
    }

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
            key: "x".into(),
            memo: Arc::new(memo::Memo::new(Duration::ZERO, Budget::new(0))),
            buf: Vec::new(),
            multipart: None,
            parts: JoinSet::new(),
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
