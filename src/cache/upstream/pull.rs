//! Pulling a path from the upstreams into storage (see the module above): the
//! narinfo lookup a request waits for, and the pull that runs after it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream;

use super::client::{Client, UpstreamError};
use super::pending::{Pending, PendingPath};
use super::spool::Spool;
use super::stats::UpstreamStats;
use super::{flight, misses, stats, UpstreamSettings};
use crate::cache::ingest::BodyError;
use crate::cache::key::{Kind, ObjectKey};
use crate::cache::narinfo::{self, CheckedNarInfo, NarInfoPolicy};
use crate::cache::{Cache, CacheError};
use crate::storage::{ObjectBody, ObjectMeta, ObjectReader, StorageError};

/// How long an upload waits for a reference that is being pulled before it is
/// refused with a retry hint: below Nix's default `stalled-download-timeout` (300 s),
/// after which the client would give up on its own.
const REFERENCE_WAIT: std::time::Duration = std::time::Duration::from_secs(240);

/// Where a server pulling a path tells the other servers sharing its storage which
/// path a NAR belongs to (`<folder>/<NAR file name>`, holding the store hash), so that
/// a client whose NAR request reaches another server than its narinfo request gets
/// the NAR there too. No cache key can name it, so the storage stays a plain binary
/// cache.
pub const PULL_MARKERS: &str = "nix-stored/pulling";

/// The marker of the NAR `nar` (`nar/<file>`).
fn pull_marker(nar: &ObjectKey) -> String {
    let file = nar.as_str().rsplit('/').next().unwrap_or_default();
    format!("{PULL_MARKERS}/{file}")
}

/// The upstream caches and what is known about them.
pub struct Upstreams {
    settings: UpstreamSettings,
    client: Client,
    stats: Vec<UpstreamStats>,
    misses: misses::Misses,
    /// One narinfo lookup per path at a time.
    lookups: flight::Flights,
    pending: Pending,
}

impl Upstreams {
    /// The upstreams of `settings`, or `None` when none is configured.
    pub fn new(settings: UpstreamSettings) -> Result<Option<Self>, String> {
        if !settings.enabled() {
            return Ok(None);
        }
        Ok(Some(Upstreams {
            client: Client::new(settings.timeout)?,
            stats: settings
                .upstreams
                .iter()
                .map(|_| UpstreamStats::default())
                .collect(),
            misses: misses::Misses::new(settings.negative_ttl),
            lookups: flight::Flights::default(),
            pending: Pending::default(),
            settings,
        }))
    }

    /// The upstreams' names (URLs without credentials), in priority order.
    pub fn names(&self) -> impl Iterator<Item = &str> + Clone {
        self.settings.upstreams.iter().map(|u| u.name.as_str())
    }

    /// Appends the per-upstream counters to `out`.
    pub fn render_metrics(&self, out: &mut String) {
        stats::render(out, self.names().zip(self.stats.iter()));
    }
}

/// Why one upstream could not deliver a path.
#[derive(Debug, thiserror::Error)]
enum PullError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("refused: {0}")]
    Cache(#[from] CacheError),
}

/// Ends a pending path whose pull stopped without ending it (a panic): a failed
/// pull, remembered as a miss.
struct Unfinished<'a> {
    up: &'a Upstreams,
    p: &'a Arc<PendingPath>,
    armed: bool,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.up.misses.insert(&self.p.hash);
            self.up.pending.remove(self.p, false);
        }
    }
}

/// What the upstreams say about a path storage lacked.
enum Found {
    /// It is stored now (another request pulled it meanwhile).
    Stored,
    /// Its narinfo is verified and its pull runs.
    Pending(Arc<PendingPath>),
    /// No upstream delivers it.
    Missing,
}

/// A lookup in the upstreams.
type Lookup<'a> = Pin<Box<dyn Future<Output = Found> + Send + 'a>>;

/// The metadata of an object answered from a pending path.
fn pending_meta(size: u64, p: &PendingPath) -> ObjectMeta {
    ObjectMeta {
        size,
        version: format!("upstream-{}", p.checked.nar.nar_file_hash().unwrap_or("")),
    }
}

impl Cache {
    /// The metadata of `key`, which storage lacks, from the upstreams: a narinfo is
    /// looked up (and its pull started), a NAR is one of a pending path.
    pub(in crate::cache) async fn upstream_stat(
        self: &Arc<Self>,
        key: &ObjectKey,
    ) -> Result<Option<ObjectMeta>, CacheError> {
        let Some(up) = &self.upstreams else {
            return Ok(None);
        };
        match (key.kind(), key.store_hash()) {
            (Kind::NarInfo, Some(hash)) => match self.find(up, hash).await {
                Found::Stored => Ok(self.storage.stat(key.as_str()).await?),
                Found::Pending(p) => Ok(Some(pending_meta(p.narinfo.len() as u64, &p))),
                Found::Missing => Ok(None),
            },
            (Kind::Nar, _) => match self.pending_nar(up, key).await? {
                Some(p) if !p.nar_failed() => Ok(Some(pending_meta(p.checked.file_size, &p))),
                Some(_) => Ok(None),
                // Stored meanwhile, perhaps.
                None => Ok(self.storage.stat(key.as_str()).await?),
            },
            _ => Ok(None),
        }
    }

    /// `key`, which storage lacks, from `offset` (to `end`, inclusive, if given)
    /// from the upstreams: a pending narinfo from memory, a pending NAR as its
    /// download arrives (the request starts the download if the pull has not yet).
    pub(in crate::cache) async fn upstream_open(
        self: &Arc<Self>,
        key: &ObjectKey,
        offset: u64,
        end: Option<u64>,
    ) -> Result<Option<ObjectReader>, CacheError> {
        let Some(up) = &self.upstreams else {
            return Ok(None);
        };
        match (key.kind(), key.store_hash()) {
            (Kind::NarInfo, Some(hash)) => match self.find(up, hash).await {
                Found::Stored => Ok(self.storage.open(key.as_str(), offset).await?),
                Found::Pending(p) => {
                    let from = (offset as usize).min(p.narinfo.len());
                    Ok(Some(ObjectReader {
                        meta: pending_meta(p.narinfo.len() as u64, &p),
                        body: ObjectBody::Bytes(p.narinfo.slice(from..)),
                    }))
                }
                Found::Missing => Ok(None),
            },
            (Kind::Nar, _) => {
                let Some(p) = self.pending_nar(up, key).await? else {
                    return Ok(self.storage.open(key.as_str(), offset).await?);
                };
                let spool = match self.nar_spool(&p) {
                    Ok(spool) => spool,
                    Err(e) => {
                        // A miss for the client, never a 5xx: its next substituter may
                        // have the path.
                        tracing::warn!("{}: cannot start its download: {e}", key.as_str());
                        return Ok(None);
                    }
                };
                if spool.failed() {
                    return Ok(None);
                }
                let end = end.map_or(u64::MAX, |e| e.saturating_add(1));
                Ok(Some(ObjectReader {
                    meta: pending_meta(spool.size(), &p),
                    body: ObjectBody::Stream(spool.reader(offset, end)),
                }))
            }
            _ => Ok(None),
        }
    }

    /// For an upload's closure check: whether the reference `hash`, which storage
    /// lacks, is stored once its pending pull ends (`false` when it is not pending).
    pub(in crate::cache) async fn upstream_reference(
        &self,
        hash: &str,
    ) -> Result<bool, CacheError> {
        let Some(p) = self.upstreams.as_ref().and_then(|up| up.pending.get(hash)) else {
            return Ok(false);
        };
        match tokio::time::timeout(REFERENCE_WAIT, p.wait()).await {
            Ok(stored) => Ok(stored),
            Err(_) => Err(CacheError::ReferencePending(hash.to_owned())),
        }
    }

    /// Whether storage holds the narinfo of `hash`; a failing storage counts as no.
    async fn has_narinfo(&self, hash: &str) -> bool {
        if !self.index.may_exist(hash) {
            return false;
        }
        matches!(
            self.storage.stat(&format!("{hash}.narinfo")).await,
            Ok(Some(_))
        )
    }

    /// Looks `hash` up in the upstreams, in priority order, each given the timeout for
    /// the whole of its narinfo; a verified hit becomes pending and its pull starts.
    /// (Boxed: it starts pulls, which call it.)
    fn find<'a>(self: &'a Arc<Self>, up: &'a Upstreams, hash: &'a str) -> Lookup<'a> {
        Box::pin(async move {
            if let Some(p) = up.pending.get(hash) {
                return Found::Pending(p);
            }
            if up.misses.contains(hash) {
                return Found::Missing;
            }
            let _lookup = up.lookups.join(hash).await;
            // Another request may have looked it up while this one waited.
            if let Some(p) = up.pending.get(hash) {
                return Found::Pending(p);
            }
            if self.has_narinfo(hash).await {
                return Found::Stored;
            }
            if up.misses.contains(hash) {
                return Found::Missing;
            }
            for (i, upstream) in up.settings.upstreams.iter().enumerate() {
                let stats = &up.stats[i];
                let fetch = self.fetch_narinfo(up, i, hash);
                let result = match tokio::time::timeout(up.settings.timeout, fetch).await {
                    Ok(r) => r,
                    Err(_) => Err(UpstreamError::Timeout(up.settings.timeout.as_secs()).into()),
                };
                match result {
                    Ok(Some((bytes, checked))) => {
                        let Some(memory) = self.budget.try_reserve(bytes.len() as u64) else {
                            // Not remembered as a miss: the memory comes back soon.
                            tracing::warn!("{hash}: no memory left to hold its upstream narinfo");
                            return Found::Missing;
                        };
                        let p = up.pending.insert(hash, bytes, checked, i, memory);
                        // The pull starts before anything else is awaited: a request
                        // dropped from here on (its client gone) must not leave the path
                        // pending with no pull to end it. The answer waits for the pull
                        // marker, which the pull writes first.
                        let (marked, is_marked) = tokio::sync::oneshot::channel();
                        tokio::spawn(self.clone().pull(p.clone(), marked));
                        let _ = is_marked.await;
                        return Found::Pending(p);
                    }
                    Ok(None) => UpstreamStats::add(&stats.misses, 1),
                    Err(e) => {
                        UpstreamStats::add(&stats.errors, 1);
                        tracing::warn!("{hash}: upstream {}: {e}", upstream.name);
                    }
                }
            }
            up.misses.insert(hash);
            Found::Missing
        })
    }

    fn upstream_policy<'a>(&'a self, up: &'a Upstreams) -> NarInfoPolicy<'a> {
        NarInfoPolicy {
            store_dir: &self.settings.store_dir,
            trusted_keys: &up.settings.keys,
            content_addressed_unsigned: false,
        }
    }

    /// The narinfo of `hash` from upstream `i`, verified: `Ok(None)` when it does not
    /// have it.
    async fn fetch_narinfo(
        &self,
        up: &Upstreams,
        i: usize,
        hash: &str,
    ) -> Result<Option<(Vec<u8>, CheckedNarInfo)>, PullError> {
        let name = format!("{hash}.narinfo");
        let Some(body) = up.client.get(up.settings.upstreams[i].join(&name)).await? else {
            return Ok(None);
        };
        let bytes = body.read_all(narinfo::MAX_NARINFO_SIZE).await?;
        UpstreamStats::add(&up.stats[i].bytes, bytes.len() as u64);
        let checked = narinfo::check(&bytes, hash, &self.upstream_policy(up))
            .map_err(UpstreamError::Refused)?;
        Ok(Some((bytes, checked)))
    }

    /// The pull of a pending path, in a task of its own (a client that gives up does
    /// not stop it): it ends with the path stored, or its miss remembered. `marked` is
    /// told once the pull marker is written (see [`Cache::mark_pull`]).
    async fn pull(self: Arc<Self>, p: Arc<PendingPath>, marked: tokio::sync::oneshot::Sender<()>) {
        let Some(up) = &self.upstreams else { return };
        // Whatever ends this task (a panic included) ends the pending path, so that
        // nothing waits for it forever.
        let mut unfinished = Unfinished {
            up,
            p: &p,
            armed: true,
        };
        self.mark_pull(&p).await;
        let _ = marked.send(());
        let result = self.commit(up, &p).await;
        let stats = &up.stats[p.upstream];
        let name = &up.settings.upstreams[p.upstream].name;
        match &result {
            Ok(()) => {
                UpstreamStats::add(&stats.hits, 1);
                tracing::info!("{}: fetched from upstream {name}", p.hash);
            }
            Err(e) => {
                UpstreamStats::add(&stats.errors, 1);
                tracing::warn!("{}: upstream {name}: {e}", p.hash);
                // Before it stops being pending, so that no request asks again.
                up.misses.insert(&p.hash);
            }
        }
        unfinished.armed = false;
        up.pending.remove(&p, result.is_ok());
        self.unmark_pull(&p).await;
    }

    /// On storage shared with other servers: writes the pull marker of `p`'s NAR
    /// before its narinfo is answered, so that the NAR request may reach any server.
    /// A marker that cannot be written costs only that: the NAR is then served by
    /// this server alone, as on storage of its own.
    async fn mark_pull(&self, p: &PendingPath) {
        if !self.storage.shared() {
            return;
        }
        let key = pull_marker(&p.checked.nar);
        let hash = format!("{}\n", p.hash);
        if let Err(e) =
            crate::storage::write_whole(self.storage.as_ref(), &key, hash.as_bytes()).await
        {
            tracing::warn!("{}: cannot write {key}: {e}", p.hash);
        }
    }

    /// Removes the pull marker of `p`'s NAR once its pull ended (left behind by a
    /// server that stopped meanwhile, a marker leads others to look the path up in
    /// the upstreams, which is all it ever does).
    async fn unmark_pull(&self, p: &PendingPath) {
        if !self.storage.shared() {
            return;
        }
        let key = pull_marker(&p.checked.nar);
        if let Err(e) = self.storage.delete(std::slice::from_ref(&key)).await {
            tracing::warn!("{}: cannot remove {key}: {e}", p.hash);
        }
    }

    /// The pending path whose NAR is `nar`: this server's, or, on storage shared with
    /// other servers, the path another server is pulling, by its pull marker. The
    /// marker is trusted for nothing but the store hash to look up: this server then
    /// asks the upstreams for that narinfo itself (verified by its keys) and pulls
    /// the path, sharing the work of nobody but its own clients.
    async fn pending_nar(
        self: &Arc<Self>,
        up: &Upstreams,
        nar: &ObjectKey,
    ) -> Result<Option<Arc<PendingPath>>, CacheError> {
        if let Some(p) = up.pending.by_nar(nar.as_str()) {
            return Ok(Some(p));
        }
        if !self.storage.shared() {
            return Ok(None);
        }
        let marker = pull_marker(nar);
        let Some(text) = crate::storage::read_whole(self.storage.as_ref(), &marker, 64).await?
        else {
            return Ok(None);
        };
        let Some(hash) = std::str::from_utf8(&text)
            .ok()
            .and_then(|t| ObjectKey::parse(&format!("{}.narinfo", t.trim())).ok())
            .and_then(|k| k.store_hash().map(str::to_owned))
        else {
            tracing::warn!("{marker}: not a store hash; ignored");
            return Ok(None);
        };
        Ok(match self.find(up, &hash).await {
            Found::Pending(p) if p.checked.nar.as_str() == nar.as_str() => Some(p),
            _ => None,
        })
    }

    /// Stores a pending path as a `nix copy --to` would: its references (each
    /// pulled by its own pending path), its NAR, then its narinfo, through the
    /// upload checks.
    async fn commit(
        self: &Arc<Self>,
        up: &Upstreams,
        p: &Arc<PendingPath>,
    ) -> Result<(), PullError> {
        for reference in &p.checked.references {
            if self.has_narinfo(reference).await {
                continue;
            }
            let stored = match self.find(up, reference).await {
                Found::Stored => true,
                Found::Missing => false,
                Found::Pending(r) => {
                    if !up.pending.start_wait(&p.hash, reference) {
                        return Err(UpstreamError::Refused(format!(
                            "its references lead back to it through {reference}"
                        ))
                        .into());
                    }
                    let stored = r.wait().await;
                    up.pending.end_wait(&p.hash);
                    stored
                }
            };
            if !stored {
                return Err(UpstreamError::Refused(format!(
                    "its reference {reference} could not be fetched from any upstream"
                ))
                .into());
            }
        }
        if !self.nar_stored(&p.checked).await? {
            let spool = self.nar_spool(p)?;
            if !spool.wait().await {
                return Err(
                    UpstreamError::Unreachable("its NAR could not be stored".into()).into(),
                );
            }
        }
        let key = ObjectKey::parse(&format!("{}.narinfo", p.hash)).map_err(CacheError::from)?;
        let _memory = self
            .budget
            .try_reserve(p.narinfo.len() as u64)
            .ok_or_else(|| self.out_of_memory())?;
        let policy = self.upstream_policy(up);
        self.store_narinfo(&key, p.narinfo.to_vec(), &policy)
            .await?;
        Ok(())
    }

    /// Whether storage holds the NAR file `checked` names, with its FileSize.
    async fn nar_stored(&self, checked: &CheckedNarInfo) -> Result<bool, CacheError> {
        let meta = self.storage.stat(checked.nar.as_str()).await?;
        Ok(meta.is_some_and(|m| m.size == checked.file_size))
    }

    /// The download of `p`'s NAR, started (in a task of its own) if it was not.
    fn nar_spool(self: &Arc<Self>, p: &Arc<PendingPath>) -> Result<Arc<Spool>, CacheError> {
        p.spool_or_start(|| {
            let file = self.storage.scratch_file().map_err(StorageError::from_io)?;
            let spool = Arc::new(Spool::new(file, p.checked.file_size));
            let (cache, p, s) = (self.clone(), p.clone(), spool.clone());
            tokio::spawn(async move { cache.download_nar(p, s).await });
            Ok(spool)
        })
    }

    /// Downloads `p`'s NAR into storage, through `spool` for the readers.
    async fn download_nar(self: Arc<Self>, p: Arc<PendingPath>, spool: Arc<Spool>) {
        let _unfinished = spool.fail_unless_finished();
        let Some(up) = &self.upstreams else { return };
        let result = self.fetch_nar(up, &p, &spool).await;
        if let Err(e) = &result {
            let name = &up.settings.upstreams[p.upstream].name;
            tracing::warn!("{}: upstream {name}: {e}", p.checked.nar.as_str());
        }
        spool.finish(result.is_ok());
    }

    /// The NAR file `p` names, from its upstream, through the NAR upload checks (its
    /// FileHash checked as it streams, the NAR inside decoded), each piece appended
    /// to `spool` before it goes on.
    async fn fetch_nar(
        &self,
        up: &Upstreams,
        p: &PendingPath,
        spool: &Spool,
    ) -> Result<(), PullError> {
        let (checked, i) = (&p.checked, p.upstream);
        let nar = &checked.nar;
        let stats = &up.stats[i];
        let mut permit = self.precheck_upload(nar, Some(checked.file_size))?;
        // The decoder's memory before the download opens (an upstream connection
        // must not idle while it waits), and waited for as long as an upload waits
        // for a pull: Nix substitutes many paths at once, and a pull whose client
        // already has its narinfo should queue for memory, not fail.
        permit.memory = Some(self.nar_decoder_memory(nar, REFERENCE_WAIT).await?);
        let Some(body) = up
            .client
            .get(up.settings.upstreams[i].join(nar.as_str()))
            .await?
        else {
            return Err(UpstreamError::Refused(format!(
                "its narinfo names {}, which it does not have",
                nar.as_str()
            ))
            .into());
        };
        let file_size = checked.file_size;
        // State: the body (gone after an error or the end) and the bytes received.
        let chunks = stream::unfold((Some(body), 0u64), move |(body, received)| async move {
            let mut body = body?;
            let broken = |e: String| Some((Err(BodyError::Broken(e)), (None, received)));
            match body.chunk().await {
                // Not a byte beyond the signed FileSize: the file would be refused
                // anyway, and an upstream must not make this server read without end.
                Ok(Some(chunk)) if received + chunk.len() as u64 > file_size => {
                    broken(format!("more than its FileSize of {file_size} bytes"))
                }
                Ok(Some(chunk)) => {
                    UpstreamStats::add(&stats.bytes, chunk.len() as u64);
                    if let Err(e) = spool.append(chunk.clone()).await {
                        return broken(format!("cannot spool it: {e}"));
                    }
                    let received = received + chunk.len() as u64;
                    Some((Ok::<Bytes, BodyError>(chunk), (Some(body), received)))
                }
                Ok(None) if received < file_size => broken(format!(
                    "it ended after {received} of its FileSize of {file_size} bytes"
                )),
                Ok(None) => None,
                Err(e) => broken(e.to_string()),
            }
        });
        match self.put(nar, permit, Box::pin(chunks)).await {
            // The file is what its name says and a valid NAR; that it is the NAR the
            // signed narinfo describes (NarHash and NarSize, which the signature
            // covers, unlike the URL) is checked before any reader gets its last
            // byte. (A digest forgotten meanwhile is checked with the narinfo.)
            Ok(_) => match self.verified.get(nar.as_str()) {
                Some(d) if d.nar_hash != checked.nar_hash || d.nar_size != checked.nar_size => {
                    Err(UpstreamError::Refused(format!(
                        "{} is not the NAR its signed narinfo describes (NarHash or NarSize differ)",
                        nar.as_str()
                    ))
                    .into())
                }
                _ => Ok(()),
            },
            // The download broke: the upstream's fault, not a verdict on the NAR.
            Err(CacheError::BodyBroken(e)) => {
                Err(UpstreamError::Unreachable(format!("the NAR download broke: {e}")).into())
            }
            Err(e) => Err(e.into()),
        }
    }
}
