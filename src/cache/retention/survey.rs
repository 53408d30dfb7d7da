//! The survey at the start of a pass: list the storage, load narinfos the graph does
//! not know, forget those gone, merge the recency journals, find orphans and the
//! objects without references.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use futures_util::StreamExt;

use super::removal::read_intents;
use super::uses::{self, Used};
use super::{now_secs, Retention, ORPHAN_GRACE_SECS};
use crate::cache::graph::shared::off_worker;
use crate::cache::graph::{path_hash, record, NarKey, PathHash};
use crate::storage::{for_each_listed, read_whole, Listed, StorageError};

/// What the listings found that is not in the graph.
#[derive(Default)]
pub(super) struct Survey {
    /// When the survey started.
    pub started: u32,
    /// Bytes listed.
    pub total: u64,
    /// Objects listed.
    pub objects: u64,
    /// Orphans: NARs no narinfo uses and listings without their narinfo, past the
    /// grace period, and what an interrupted pass left: (key, bytes).
    pub orphans: Vec<(String, u64)>,
    /// Removal intents of interrupted passes, to remove with the orphans.
    pub intents: Vec<String>,
    /// Logs, realisations, debuginfo: (key, recency, bytes), oldest first.
    pub loose: Vec<(String, u32, u64)>,
}

/// Narinfos read concurrently when loading them.
pub(super) const READS_IN_FLIGHT: usize = 16;

/// Lists the storage: loads narinfos the graph does not know, forgets those gone,
/// merges the recency journals, and finds orphans and loose objects.
pub(super) async fn survey(r: &Retention, dry_run: bool) -> Result<Survey, StorageError> {
    let started = now_secs();
    let mut survey = Survey {
        started,
        ..Survey::default()
    };
    // Journals first written, so that this server's own uses are merged with the rest.
    if !dry_run {
        r.flush().await?;
    }

    let top = top_level(r, started).await?;
    off_worker(|| r.graph().shrink());
    survey.total += top.bytes;
    survey.objects += top.objects;
    let listings = top.listings;
    r.loaded.store(true, Ordering::Release);
    let intents = read_intents(r).await?;
    let interrupted: HashSet<String> = intents
        .iter()
        .flat_map(|(_, keys)| keys.iter().cloned())
        .collect();
    survey.intents = intents.into_iter().map(|(key, _)| key).collect();
    let orphaned = |l: &Listed| {
        interrupted.contains(&l.key)
            || (l.modified as u32).saturating_add(ORPHAN_GRACE_SECS) < started
    };

    let users = off_worker(|| r.graph().nar_users(None));
    let journals = uses::read_journals(r.storage.as_ref(), |batch| {
        off_worker(|| {
            let mut graph = r.graph();
            let mut loose_uses = r.loose_uses.lock().unwrap_or_else(|e| e.into_inner());
            for (used, secs) in batch {
                match used {
                    Used::Path(h) => graph.touch(&h, secs),
                    Used::Nar(n) => {
                        let ids: Vec<u32> = graph.users_of(&users, n.print()).collect();
                        for id in ids {
                            graph.touch_id(id, secs);
                        }
                    }
                    Used::Other(k) => {
                        let at = loose_uses.entry(k).or_insert(secs);
                        *at = (*at).max(secs);
                    }
                }
            }
        })
    })
    .await?;
    {
        let mut graph = r.graph();
        for (hash, l) in &listings {
            if graph.is_stored(hash) {
                graph.set_listing(hash, l.size, l.modified as u32);
            } else if orphaned(l) {
                survey.orphans.push((l.key.clone(), l.size));
            }
        }
    }
    if !dry_run {
        compact_journals(r, journals, started).await?;
    }

    // NARs no narinfo uses, past the grace period.
    let foreign = r
        .foreign_urls
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let mut nar_orphans = Vec::new();
    for_each_listed(r.storage.as_ref(), "nar", |l| {
        survey.total += l.size;
        survey.objects += 1;
        let Some(nar) = NarKey::parse(&l.key) else {
            return;
        };
        let used = r.graph().nar_in_use(&users, nar.print(), &[]) || foreign.contains(&l.key);
        if !used && orphaned(&l) {
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
        for_each_listed(r.storage.as_ref(), folder, |l| {
            survey.total += l.size;
            survey.objects += 1;
            let used = loose_uses.get(l.key.as_str()).copied().unwrap_or(0);
            loose.push((l.key, used.max(l.modified as u32), l.size));
        })
        .await?;
    }
    for folder in [uses::JOURNAL_FOLDER, super::removal::INTENT_FOLDER] {
        for_each_listed(r.storage.as_ref(), folder, |l| {
            survey.total += l.size;
            survey.objects += 1;
        })
        .await?;
    }
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

/// What the top level holds besides narinfos.
pub(super) struct TopLevel {
    /// Bytes listed.
    pub bytes: u64,
    /// Objects listed.
    pub objects: u64,
    /// Listings (`.ls`), by their path.
    pub listings: Vec<(PathHash, Listed)>,
}

/// Lists the top level: loads the narinfos the graph does not know, and forgets
/// those no longer stored that were stored before `started`.
pub(super) async fn top_level(r: &Retention, started: u32) -> Result<TopLevel, StorageError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Listed>>(4);
    let listing = r.storage.list_objects("", tx);
    // Batch by batch, so that a first load of a million narinfos never holds their
    // names all at once.
    let consume = async {
        let mut top = TopLevel {
            bytes: 0,
            objects: 0,
            listings: Vec::new(),
        };
        let mut seen: Vec<bool> = Vec::new();
        while let Some(batch) = rx.recv().await {
            let mut unknown = Vec::new();
            for l in batch {
                top.bytes += l.size;
                top.objects += 1;
                if let Some(hash) = l.key.strip_suffix(".narinfo").and_then(path_hash) {
                    match r.graph().stored_id(&hash) {
                        Some(id) => mark(&mut seen, id),
                        None => unknown.push(l),
                    }
                } else if let Some(hash) = l.key.strip_suffix(".ls").and_then(path_hash) {
                    top.listings.push((hash, l));
                }
            }
            for id in load_narinfos(r, unknown).await? {
                mark(&mut seen, id);
            }
        }
        Ok::<_, StorageError>((top, seen))
    };
    let (listed, consumed) = tokio::join!(listing, consume);
    listed?;
    let (top, seen) = consumed?;
    off_worker(|| forget_vanished(r, &seen, started));
    Ok(top)
}

fn mark(seen: &mut Vec<bool>, id: u32) {
    let id = id as usize;
    if seen.len() <= id {
        seen.resize(id + 1, false);
    }
    seen[id] = true;
}

/// Reads and records narinfos the graph does not know (all of them at the first
/// pass; afterwards those another writer stored).
async fn load_narinfos(r: &Retention, unknown: Vec<Listed>) -> Result<Vec<u32>, StorageError> {
    let mut loaded = Vec::with_capacity(unknown.len());
    let storage = r.storage.clone();
    let mut reads = futures_util::stream::iter(unknown)
        .map(|l| {
            let storage = storage.clone();
            async move {
                let limit = crate::cache::narinfo::MAX_NARINFO_SIZE;
                let bytes = read_whole(storage.as_ref(), &l.key, limit).await?;
                Ok::<_, StorageError>(bytes.map(|b| (l, b)))
            }
        })
        .buffer_unordered(READS_IN_FLIGHT);
    while let Some(read) = reads.next().await {
        let Some((l, bytes)) = read? else { continue };
        let hash = l.key.strip_suffix(".narinfo").and_then(path_hash);
        // The page's labels come from the same read (see `Cache::start_catalog`).
        match record::parse(&hash.unwrap_or_default(), &bytes) {
            Ok(record) => {
                let Some(hash) = hash else { continue };
                let mut graph = r.graph();
                let bytes = l.size + record.file_size;
                graph.insert_record(&hash, &record, l.modified as u32, bytes);
                loaded.extend(graph.stored_id(&hash));
            }
            Err(url) => {
                // Never removed, and neither is the file its URL names, if any.
                tracing::warn!(
                    "retention: {} cannot be read as a narinfo; it and its NAR are never removed",
                    l.key
                );
                if let Some(url) = url {
                    r.foreign_urls
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(url);
                }
            }
        }
    }
    Ok(loaded)
}

/// Narinfos the graph knows that were not listed, and not stored since the listing
/// started, were removed by someone else.
fn forget_vanished(r: &Retention, seen: &[bool], started: u32) {
    let mut graph = r.graph();
    let gone: Vec<PathHash> = graph
        .stored_before(started)
        .filter(|(id, _)| !seen.get(*id as usize).copied().unwrap_or(false))
        .map(|(_, h)| h)
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

/// Paths per window when the graph's uses are written out.
const COMPACT_WINDOW: usize = 16 * 1024;

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
    let mut journal = uses::Journal::begin(r.storage.as_ref(), now).await?;
    // Window by window: the graph is not locked while the journal is written.
    let mut from = 0;
    loop {
        let (window, next) = r.graph().uses_beyond_storage(from, COMPACT_WINDOW);
        for (hash, secs) in window {
            journal.push(&Used::Path(hash), secs).await?;
        }
        match next {
            Some(next) => from = next,
            None => break,
        }
    }
    let loose: Vec<(Box<str>, u32)> = r
        .loose_uses
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(k, secs)| (k.clone(), *secs))
        .collect();
    for (key, secs) in loose {
        journal.push(&Used::Other(key), secs).await?;
    }
    journal.commit().await?;
    r.storage.delete(&journals).await
}
