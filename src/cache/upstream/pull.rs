//! Pulling a path from the upstreams into storage (see the module above).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream;

use super::client::{Client, UpstreamError};
use super::stats::UpstreamStats;
use super::{flight, misses, stats, UpstreamSettings};
use crate::cache::ingest::BodyError;
use crate::cache::key::{Kind, ObjectKey};
use crate::cache::narinfo::{self, CheckedNarInfo, NarInfoPolicy};
use crate::cache::{Cache, CacheError};

/// References followed from one requested path at most: a real closure is far
/// shallower; the bound stops a signed but circular chain.
const MAX_DEPTH: usize = 1000;

/// The upstream caches and what is known about them.
pub struct Upstreams {
    settings: UpstreamSettings,
    client: Client,
    stats: Vec<UpstreamStats>,
    misses: misses::Misses,
    flights: flight::Flights,
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
            flights: flight::Flights::default(),
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

type Pull<'a> = Pin<Box<dyn Future<Output = bool> + Send + 'a>>;

impl Cache {
    /// Fetches the narinfo `key` (and its NAR and references) from the upstreams
    /// into storage; `true` when it is stored now. Only for narinfos, and only when
    /// storage lacks it. The pull runs in a task of its own: a client that gives up
    /// (its handler dropped with its connection) does not stop it, so a large NAR
    /// still arrives for the next request instead of starting over each time.
    pub(in crate::cache) async fn pull_detached(self: &Arc<Self>, key: &ObjectKey) -> bool {
        if self.upstreams.is_none() || key.kind() != Kind::NarInfo {
            return false;
        }
        let (cache, key) = (self.clone(), key.clone());
        tokio::spawn(async move { cache.pull_upstream(&key).await })
            .await
            .unwrap_or(false)
    }

    /// [`Cache::pull_detached`], in the caller's task.
    async fn pull_upstream(&self, key: &ObjectKey) -> bool {
        match (&self.upstreams, key.kind(), key.store_hash()) {
            (Some(up), Kind::NarInfo, Some(hash)) => self.pull(up, hash, Vec::new()).await,
            _ => false,
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

    /// Pulls `hash` from the first upstream that delivers it; `chain` holds the
    /// paths whose references led here.
    fn pull<'a>(&'a self, up: &'a Upstreams, hash: &'a str, chain: Vec<&'a str>) -> Pull<'a> {
        Box::pin(async move {
            if chain.len() > MAX_DEPTH || chain.contains(&hash) || up.misses.contains(hash) {
                return false;
            }
            let _flight = up.flights.join(hash).await;
            // Another request may have fetched it (or failed to) while this one waited.
            if self.has_narinfo(hash).await {
                return true;
            }
            if up.misses.contains(hash) {
                return false;
            }
            for (i, upstream) in up.settings.upstreams.iter().enumerate() {
                let stats = &up.stats[i];
                match self.pull_from(up, i, hash, &chain).await {
                    Ok(true) => {
                        UpstreamStats::add(&stats.hits, 1);
                        tracing::info!("{hash}: fetched from upstream {}", upstream.name);
                        return true;
                    }
                    Ok(false) => UpstreamStats::add(&stats.misses, 1),
                    Err(e) => {
                        UpstreamStats::add(&stats.errors, 1);
                        tracing::warn!("{hash}: upstream {}: {e}", upstream.name);
                    }
                }
            }
            up.misses.insert(hash);
            false
        })
    }

    /// Pulls `hash` from upstream `i`: `Ok(false)` when it does not have it.
    async fn pull_from(
        &self,
        up: &Upstreams,
        i: usize,
        hash: &str,
        chain: &[&str],
    ) -> Result<bool, PullError> {
        let upstream = &up.settings.upstreams[i];
        let stats = &up.stats[i];
        let name = format!("{hash}.narinfo");
        let Some(body) = up.client.get(upstream.join(&name)).await? else {
            return Ok(false);
        };
        let bytes = body.read_all(narinfo::MAX_NARINFO_SIZE).await?;
        UpstreamStats::add(&stats.bytes, bytes.len() as u64);
        let key = ObjectKey::parse(&name).map_err(CacheError::from)?;
        let policy = NarInfoPolicy {
            store_dir: &self.settings.store_dir,
            trusted_keys: &up.settings.keys,
            content_addressed_unsigned: false,
        };
        let checked = narinfo::check(&bytes, hash, &policy).map_err(UpstreamError::Refused)?;
        let mut below = chain.to_vec();
        below.push(hash);
        for reference in &checked.references {
            if !self.has_narinfo(reference).await && !self.pull(up, reference, below.clone()).await
            {
                return Err(UpstreamError::Refused(format!(
                    "its reference {reference} could not be fetched from any upstream"
                ))
                .into());
            }
        }
        self.pull_nar(up, i, &checked).await?;
        let _memory = self
            .budget
            .try_reserve(bytes.len() as u64)
            .ok_or_else(|| self.out_of_memory())?;
        self.store_narinfo(&key, bytes, &policy).await?;
        Ok(true)
    }

    /// Downloads the NAR file `checked` names into storage, through the NAR upload
    /// checks, unless storage has it already.
    async fn pull_nar(
        &self,
        up: &Upstreams,
        i: usize,
        checked: &CheckedNarInfo,
    ) -> Result<(), PullError> {
        let nar = &checked.nar;
        if let Some(meta) = self
            .storage
            .stat(nar.as_str())
            .await
            .map_err(CacheError::from)?
        {
            if meta.size == checked.file_size {
                return Ok(());
            }
        }
        let upstream = &up.settings.upstreams[i];
        let stats = &up.stats[i];
        let Some(body) = up.client.get(upstream.join(nar.as_str())).await? else {
            return Err(UpstreamError::Refused(format!(
                "its narinfo names {}, which it does not have",
                nar.as_str()
            ))
            .into());
        };
        let permit = self.precheck_upload(nar, Some(checked.file_size))?;
        let file_size = checked.file_size;
        // State: the body (gone after an error) and the bytes received so far.
        let chunks = stream::unfold((Some(body), 0u64), move |(body, received)| async move {
            let mut body = body?;
            match body.chunk().await {
                // Not a byte beyond the signed FileSize: the file would be refused
                // anyway, and an upstream must not make this server read without end.
                Ok(Some(chunk)) if received + chunk.len() as u64 > file_size => {
                    let e = format!("more than its FileSize of {file_size} bytes");
                    Some((Err(BodyError::Broken(e)), (None, received)))
                }
                Ok(Some(chunk)) => {
                    UpstreamStats::add(&stats.bytes, chunk.len() as u64);
                    let received = received + chunk.len() as u64;
                    Some((Ok::<Bytes, BodyError>(chunk), (Some(body), received)))
                }
                Ok(None) => None,
                Err(e) => Some((Err(BodyError::Broken(e.to_string())), (None, received))),
            }
        });
        match self.put(nar, permit, Box::pin(chunks)).await {
            Ok(_) => Ok(()),
            // The download broke: the upstream's fault, not a verdict on the NAR.
            Err(CacheError::BodyBroken(e)) => {
                Err(UpstreamError::Unreachable(format!("the NAR download broke: {e}")).into())
            }
            Err(e) => Err(e.into()),
        }
    }
}
