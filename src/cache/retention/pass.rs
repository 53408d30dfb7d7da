//! One retention pass: survey the storage, choose, remove.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use futures_util::StreamExt;

use super::graph::{path_hash, path_hash_str, Doomed, NarKey, PathHash};
use super::uses::{self, Used};
use super::{now_secs, Retention, ORPHAN_GRACE_SECS};
use crate::storage::{Listed, StorageError};

/// Why an object goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// A NAR no narinfo uses, or a listing without its narinfo, past the grace period.
    Orphan,
    /// Unused for longer than NIX_STORED_RETENTION.
    Expired,
    /// The least recently used while the cache is over its quota.
    OverQuota,
}

impl Why {
    fn as_str(self) -> &'static str {
        match self {
            Why::Orphan => "orphan",
            Why::Expired => "expired",
            Why::OverQuota => "over-quota",
        }
    }
}

/// One object or path a pass removes.
#[derive(Debug, Clone)]
pub struct Removal {
    /// A store path's hash part, or an object's key.
    pub what: String,
    /// Bytes it frees.
    pub bytes: u64,
    /// Why.
    pub why: Why,
    /// Its effective recency (seconds since the epoch).
    pub recency: u32,
}

/// What a pass did (or would do).
#[derive(Debug, Default)]
pub struct PassReport {
    /// Whether nothing was removed on purpose.
    pub dry_run: bool,
    /// What was (or would be) removed, in order.
    pub removed: Vec<Removal>,
    /// Paths skipped at the last moment (used, or referenced, since they were chosen).
    pub kept: usize,
    /// Store paths in the cache when the pass started.
    pub paths: usize,
    /// Bytes in the cache when the pass started.
    pub bytes_before: u64,
    /// Bytes once the removals are done.
    pub bytes_after: u64,
    /// Bytes of the pinned closures.
    pub pinned_bytes: u64,
    /// Duration, in milliseconds.
    pub millis: u64,
}

impl PassReport {
    /// The one log line of a pass.
    pub fn log(&self) {
        let paths = self
            .removed
            .iter()
            .filter(|r| r.why != Why::Orphan && r.what.len() == 32)
            .count();
        tracing::info!(
            "retention pass: removed {} paths and {} other objects, {} bytes; {} kept as used meanwhile; cache {} -> {} bytes ({} paths before, {} bytes pinned); {} ms",
            paths,
            self.removed.len() - paths,
            self.bytes_before - self.bytes_after,
            self.kept,
            self.bytes_before,
            self.bytes_after,
            self.paths,
            self.pinned_bytes,
            self.millis
        );
    }

    /// The report of `nix-stored gc --dry-run`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for r in &self.removed {
            let what = if r.what.len() == 32 {
                format!("{}.narinfo (and its NAR)", r.what)
            } else {
                r.what.clone()
            };
            out.push_str(&format!(
                "{:<10} {:>14} bytes  last used {}  {what}\n",
                r.why.as_str(),
                r.bytes,
                r.recency
            ));
        }
        out.push_str(&format!(
            "{} objects, {} bytes would be removed; the cache holds {} bytes in {} paths ({} pinned), {} after.\n",
            self.removed.len(),
            self.bytes_before - self.bytes_after,
            self.bytes_before,
            self.paths,
            self.pinned_bytes,
            self.bytes_after
        ));
        out
    }
}

/// What the listings found that is not in the graph.
#[derive(Default)]
struct Survey {
    started: u32,
    total: u64,
    objects: u64,
    orphans: Vec<(String, u64)>,
    /// Logs, realisations, debuginfo: (key, recency, bytes), oldest first.
    loose: Vec<(String, u32, u64)>,
}

/// Narinfos read concurrently when loading them.
const READS_IN_FLIGHT: usize = 16;

/// Paths removed per step: their narinfos go in one durable batch, then their NARs.
const CHUNK: usize = 256;

pub(super) async fn run(r: &Retention, dry_run: bool) -> Result<PassReport, StorageError> {
    let clock = Instant::now();
    r.pins
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .refresh(false);
    let survey = survey(r, dry_run).await?;
    let now = survey.started;
    let pins: Vec<PathHash> = r
        .pins
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .hashes()
        .to_vec();
    let orphan_bytes: u64 = survey.orphans.iter().map(|o| o.1).sum();
    let expired_before = r.settings.max_age.map_or(0, |a| {
        now.saturating_sub(u32::try_from(a.as_secs()).unwrap_or(u32::MAX))
    });
    let after_orphans = survey.total - orphan_bytes;
    let over_quota = r.settings.max_size.is_some_and(|q| after_orphans > q);
    let low_water = r.settings.low_water().unwrap_or(u64::MAX);
    let loose: Vec<(u32, u64)> = survey.loose.iter().map(|l| (l.1, l.2)).collect();
    let (plan, pinned_bytes, paths) = {
        let graph = r.graph();
        let pinned = graph.closure(&pins);
        let pinned_bytes = graph.bytes_of(&pinned);
        let plan = graph.plan(&pinned, expired_before, &loose, |chosen| {
            over_quota && after_orphans.saturating_sub(chosen) > low_water
        });
        (plan, pinned_bytes, graph.stored())
    };
    r.stats.pinned_bytes.store(pinned_bytes, Ordering::Relaxed);
    let why = |recency: u32| {
        if recency < expired_before {
            Why::Expired
        } else {
            Why::OverQuota
        }
    };
    let mut report = PassReport {
        dry_run,
        paths,
        bytes_before: survey.total,
        pinned_bytes,
        ..PassReport::default()
    };
    let loose_chosen = &survey.loose[..plan.loose];
    if dry_run {
        for (key, bytes) in &survey.orphans {
            report.removed.push(Removal {
                what: key.clone(),
                bytes: *bytes,
                why: Why::Orphan,
                recency: 0,
            });
        }
        for (key, recency, bytes) in loose_chosen {
            report.removed.push(Removal {
                what: key.clone(),
                bytes: *bytes,
                why: why(*recency),
                recency: *recency,
            });
        }
        for d in &plan.paths {
            report.removed.push(Removal {
                what: path_hash_str(&d.hash),
                bytes: d.bytes,
                why: why(d.recency),
                recency: d.recency,
            });
        }
    } else {
        remove_orphans(r, &survey, &mut report).await?;
        let keys: Vec<String> = loose_chosen.iter().map(|l| l.0.clone()).collect();
        r.storage.delete(&keys).await?;
        for (key, recency, bytes) in loose_chosen {
            report.removed.push(Removal {
                what: key.clone(),
                bytes: *bytes,
                why: why(*recency),
                recency: *recency,
            });
        }
        let users = r.graph().nar_users();
        for chunk in plan.paths.chunks(CHUNK) {
            remove_paths(r, chunk, &users, now, &why, &mut report).await?;
        }
        prune_activity(r, now);
    }
    let freed: u64 = report.removed.iter().map(|x| x.bytes).sum();
    report.bytes_after = survey.total.saturating_sub(freed);
    report.millis = clock.elapsed().as_millis() as u64;
    if !dry_run {
        r.bytes.fetch_sub(
            freed.min(r.bytes.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        let gone = (report.removed.len() as u64).min(r.objects.load(Ordering::Relaxed));
        r.objects.fetch_sub(gone, Ordering::Relaxed);
        let s = &r.stats;
        s.passes.fetch_add(1, Ordering::Relaxed);
        s.bytes_removed.fetch_add(freed, Ordering::Relaxed);
        s.objects_removed
            .fetch_add(report.removed.len() as u64, Ordering::Relaxed);
        s.last_pass_ms.store(report.millis, Ordering::Relaxed);
    }
    Ok(report)
}

/// Lists the storage: loads narinfos the graph does not know, forgets those gone,
/// merges the recency journals, and finds orphans and loose objects.
async fn survey(r: &Retention, dry_run: bool) -> Result<Survey, StorageError> {
    let started = now_secs();
    let mut survey = Survey {
        started,
        ..Survey::default()
    };
    // Journals first written, so that this server's own uses are merged with the rest.
    let own = if dry_run {
        Default::default()
    } else {
        r.uses.take()
    };
    uses::write_journal(r.storage.as_ref(), &own, started).await?;

    // The top level: narinfos and listings.
    let mut seen: Vec<PathHash> = Vec::new();
    let mut unknown: Vec<Listed> = Vec::new();
    let mut listings: Vec<(PathHash, Listed)> = Vec::new();
    for_each_listed(r, "", |l| {
        survey.total += l.size;
        survey.objects += 1;
        if let Some(hash) = l.key.strip_suffix(".narinfo").and_then(path_hash) {
            seen.push(hash);
            if !r.graph().is_stored(&hash) {
                unknown.push(l);
            }
        } else if let Some(hash) = l.key.strip_suffix(".ls").and_then(path_hash) {
            listings.push((hash, l));
        }
    })
    .await?;
    load_narinfos(r, unknown).await?;
    forget_vanished(r, &mut seen, started);
    r.loaded.store(true, Ordering::Release);

    let (journals, merged) = uses::read_journals(r.storage.as_ref()).await?;
    let users = r.graph().nar_users();
    {
        let mut graph = r.graph();
        let mut loose_uses = r.loose_uses.lock().unwrap_or_else(|e| e.into_inner());
        for (used, secs) in &merged {
            match used {
                Used::Path(h) => graph.touch(h, *secs),
                Used::Nar(n) => {
                    let from = users.partition_point(|(h, _)| *h < n.hash);
                    for (_, id) in users[from..].iter().take_while(|(h, _)| *h == n.hash) {
                        graph.touch_id(*id, *secs);
                    }
                }
                Used::Other(k) => {
                    let at = loose_uses.entry(k.clone()).or_insert(*secs);
                    *at = (*at).max(*secs);
                }
            }
        }
        for (hash, l) in &listings {
            if graph.is_stored(hash) {
                graph.set_listing(hash, l.size, l.modified as u32);
            } else if (l.modified as u32).saturating_add(ORPHAN_GRACE_SECS) < started {
                survey.orphans.push((l.key.clone(), l.size));
            }
        }
    }
    if !dry_run {
        compact_journals(r, journals, started).await?;
    }

    // NARs no narinfo uses, past the grace period.
    let mut nar_orphans = Vec::new();
    for_each_listed(r, "nar", |l| {
        survey.total += l.size;
        survey.objects += 1;
        let Some(nar) = NarKey::parse(&l.key) else {
            return;
        };
        let from = users.partition_point(|(h, _)| *h < nar.hash);
        let used = users.get(from).is_some_and(|(h, _)| *h == nar.hash);
        if !used && (l.modified as u32).saturating_add(ORPHAN_GRACE_SECS) < started {
            nar_orphans.push((l.key, l.size));
        }
    })
    .await?;
    survey.orphans.extend(nar_orphans);

    // Objects without references age by their own use.
    let loose_uses = r
        .loose_uses
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let mut loose = Vec::new();
    for folder in ["log", "realisations", "debuginfo"] {
        for_each_listed(r, folder, |l| {
            survey.total += l.size;
            survey.objects += 1;
            let used = loose_uses.get(l.key.as_str()).copied().unwrap_or(0);
            loose.push((l.key, used.max(l.modified as u32), l.size));
        })
        .await?;
    }
    for_each_listed(r, uses::JOURNAL_FOLDER, |l| {
        survey.total += l.size;
        survey.objects += 1;
    })
    .await?;
    loose.sort_by_key(|l| l.1);
    // Uses of objects no longer stored need not be remembered.
    let kept: HashMap<Box<str>, u32> = loose
        .iter()
        .filter_map(|(k, _, _)| loose_uses.get(k.as_str()).map(|u| (k.as_str().into(), *u)))
        .collect();
    *r.loose_uses.lock().unwrap_or_else(|e| e.into_inner()) = kept;
    survey.loose = loose;
    if !dry_run {
        r.bytes.store(survey.total, Ordering::Relaxed);
        r.objects.store(survey.objects, Ordering::Relaxed);
    }
    Ok(survey)
}

/// Streams the listing of `folder` through `f`.
async fn for_each_listed(
    r: &Retention,
    folder: &str,
    mut f: impl FnMut(Listed),
) -> Result<(), StorageError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Listed>>(4);
    let listing = r.storage.list_objects(folder, tx);
    let consume = async {
        while let Some(batch) = rx.recv().await {
            batch.into_iter().for_each(&mut f);
        }
    };
    let (listed, ()) = tokio::join!(listing, consume);
    listed
}

/// Reads and records narinfos the graph does not know (all of them at the first
/// pass; afterwards those another writer stored).
async fn load_narinfos(r: &Retention, unknown: Vec<Listed>) -> Result<(), StorageError> {
    let storage = r.storage.clone();
    let mut reads = futures_util::stream::iter(unknown)
        .map(|l| {
            let storage = storage.clone();
            async move {
                let Some(reader) = storage.open(&l.key, 0).await? else {
                    return Ok::<_, StorageError>(None);
                };
                let mut body = reader.body.into_stream();
                let mut bytes = Vec::with_capacity(reader.meta.size as usize);
                while let Some(chunk) = body.next().await {
                    bytes.extend_from_slice(&chunk.map_err(StorageError::from_io)?);
                    if bytes.len() > crate::cache::narinfo::MAX_NARINFO_SIZE {
                        return Ok(None);
                    }
                }
                Ok(Some((l, bytes)))
            }
        })
        .buffer_unordered(READS_IN_FLIGHT);
    while let Some(read) = reads.next().await {
        let Some((l, bytes)) = read? else { continue };
        let hash = l.key.strip_suffix(".narinfo").and_then(path_hash);
        match (hash, parse_narinfo(&bytes)) {
            (Some(hash), Some((nar, file_size, refs))) => {
                let refs: Vec<PathHash> = refs.into_iter().filter(|h| *h != hash).collect();
                r.graph()
                    .insert(&hash, nar, &refs, l.modified as u32, l.size + file_size);
            }
            _ => tracing::warn!(
                "retention: {} cannot be read as a narinfo; it is never removed",
                l.key
            ),
        }
    }
    Ok(())
}

/// The fields retention needs from a stored narinfo: its NAR, the NAR's size and
/// its references. Stored narinfos were checked on upload (or come from another
/// writer of the cache): only these lines are read.
fn parse_narinfo(bytes: &[u8]) -> Option<(NarKey, u64, Vec<PathHash>)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let (mut nar, mut size, mut refs) = (None, 0, Vec::new());
    for line in text.lines() {
        let Some((name, value)) = line.split_once(": ") else {
            continue;
        };
        match name {
            "URL" => nar = NarKey::parse(value.trim()),
            "FileSize" => size = value.trim().parse().ok()?,
            "References" => {
                for r in value.split_whitespace() {
                    refs.push(r.get(..32).and_then(path_hash)?);
                }
            }
            _ => {}
        }
    }
    Some((nar?, size, refs))
}

/// Narinfos the graph knows that were not listed, and not stored since the listing
/// started, were removed by someone else.
fn forget_vanished(r: &Retention, seen: &mut [PathHash], started: u32) {
    seen.sort_unstable();
    let mut graph = r.graph();
    let gone: Vec<PathHash> = graph
        .stored_hashes_before(started)
        .filter(|h| seen.binary_search(h).is_err())
        .collect();
    for h in &gone {
        graph.remove(h);
    }
    if !gone.is_empty() {
        tracing::info!(
            "retention: {} narinfos were removed from storage by another writer",
            gone.len()
        );
    }
}

/// Keeps what the journals hold that storage does not know, as one journal, and
/// removes the journals merged into it.
async fn compact_journals(
    r: &Retention,
    journals: Vec<String>,
    now: u32,
) -> Result<(), StorageError> {
    if journals.len() <= 1 {
        return Ok(());
    }
    let mut keep: HashMap<Used, u32> = r
        .graph()
        .uses_beyond_storage()
        .map(|(h, secs)| (Used::Path(*h), secs))
        .collect();
    for (k, secs) in r
        .loose_uses
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
    {
        keep.insert(Used::Other(k.clone()), *secs);
    }
    uses::write_journal(r.storage.as_ref(), &keep, now).await?;
    r.storage.delete(&journals).await
}

async fn remove_orphans(
    r: &Retention,
    survey: &Survey,
    report: &mut PassReport,
) -> Result<(), StorageError> {
    let mut keys = Vec::new();
    let mut claimed = Vec::new();
    for (key, bytes) in &survey.orphans {
        if let Some(nar) = NarKey::parse(key) {
            // A narinfo upload holds its NAR (and marks it used) from before it
            // checks the NAR until it is stored: one since the listing shows here.
            if !r.claim_nar(&nar.hash, survey.started) {
                continue;
            }
            claimed.push(nar.hash);
        } else if let Some(hash) = key.strip_suffix(".ls").and_then(path_hash) {
            if r.graph().is_stored(&hash) {
                continue;
            }
        }
        keys.push(key.clone());
        report.removed.push(Removal {
            what: key.clone(),
            bytes: *bytes,
            why: Why::Orphan,
            recency: 0,
        });
    }
    let result = r.storage.delete(&keys).await;
    for hash in &claimed {
        r.nar_removed(hash);
    }
    result
}

/// Removes a chunk of chosen paths: their narinfos first, durably; then, once no
/// other server can still serve those narinfos from memory, their listings and the
/// NARs no remaining narinfo uses.
async fn remove_paths(
    r: &Retention,
    chunk: &[Doomed],
    users: &[([u8; 32], u32)],
    started: u32,
    why: &impl Fn(u32) -> Why,
    report: &mut PassReport,
) -> Result<(), StorageError> {
    let going: Vec<&Doomed> = {
        let mut graph = r.graph();
        chunk
            .iter()
            .filter(|d| {
                let used = r.uses.contains(&Used::Path(d.hash)) || r.uses.contains_nar(&d.nar.hash);
                !used && graph.start_removal(d)
            })
            .collect()
    };
    report.kept += chunk.len() - going.len();
    if going.is_empty() {
        return Ok(());
    }
    let narinfos: Vec<String> = going
        .iter()
        .map(|d| format!("{}.narinfo", path_hash_str(&d.hash)))
        .collect();
    if let Err(e) = r.storage.delete(&narinfos).await {
        let mut graph = r.graph();
        for d in &going {
            graph.abort_removal(d);
        }
        return Err(e);
    }
    if !r.narinfo_linger.is_zero() {
        tokio::time::sleep(r.narinfo_linger).await;
    }
    let ids: Vec<u32> = going.iter().map(|d| d.id).collect();
    let mut rest: Vec<String> = Vec::new();
    let mut claimed = Vec::new();
    for d in &going {
        rest.push(format!("{}.ls", path_hash_str(&d.hash)));
        // Narinfos stored after `users` was built held their NAR meanwhile, which
        // `claim_nar` sees.
        let shared = r.graph().nar_in_use(users, &d.nar.hash, &ids);
        if !shared && !claimed.contains(&d.nar.hash) && r.claim_nar(&d.nar.hash, started) {
            claimed.push(d.nar.hash);
            rest.push(d.nar.key());
        }
    }
    let result = r.storage.delete(&rest).await;
    for hash in &claimed {
        r.nar_removed(hash);
    }
    {
        let mut graph = r.graph();
        for d in &going {
            graph.finish_removal(d);
        }
    }
    for d in &going {
        r.stats.paths_removed.fetch_add(1, Ordering::Relaxed);
        report.removed.push(Removal {
            what: path_hash_str(&d.hash),
            bytes: d.bytes,
            why: why(d.recency),
            recency: d.recency,
        });
    }
    result
}

/// Forgets the activity of NARs nobody holds that is older than the grace period.
fn prune_activity(r: &Retention, now: u32) {
    r.nars().retain(|_, a| {
        a.holds > 0 || a.removing || a.last.saturating_add(ORPHAN_GRACE_SECS) >= now
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn narinfo_fields() {
        let text = format!(
            "StorePath: /nix/store/{h}-p\nURL: nar/{n}.nar.xz\nCompression: xz\nFileSize: 12\nReferences: {h}-p {h}-q\n",
            h = super::path_hash_str(&[1; 20]),
            n = nix_derivation::nixbase32::encode(&[2; 32])
        );
        let (nar, size, refs) = super::parse_narinfo(text.as_bytes()).unwrap();
        assert_eq!((nar.hash, size, refs.len()), ([2; 32], 12, 2));
    }
}
