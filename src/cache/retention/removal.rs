//! Removal: orphans first, then the chosen paths' narinfos chunk by chunk, then their
//! listings and NARs. Before anything goes, an *intent* object lists all of it:
//! - a pass killed in between leaves objects no narinfo uses, which the next pass
//!   removes at once instead of waiting out the orphans' grace period;
//! - other servers sharing the storage refuse uploads that reference what it lists
//!   (see `doom`).

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use super::pass::{PassReport, Why, CHUNK};
use super::survey::Survey;
use super::uses::Used;
use super::{Retention, ORPHAN_GRACE_SECS};
use crate::cache::graph::{path_hash, path_hash_str, Doomed, NarKey, NarPrint, NarUsers};
use crate::storage::{for_each_listed, read_whole, StorageError};

/// Where removal intents live: no cache key can name it.
pub const INTENT_FOLDER: &str = "nix-stored/removing";

/// Removes the orphans the survey found, but NARs a narinfo uses now (`users`) or
/// an upload holds.
pub(super) async fn remove_orphans(
    r: &Retention,
    survey: &Survey,
    users: &NarUsers,
    report: &mut PassReport,
) -> Result<(), StorageError> {
    let mut keys = Vec::new();
    let mut claimed = Vec::new();
    for (key, bytes) in &survey.orphans {
        if let Some(nar) = NarKey::parse(key) {
            if r.graph().nar_in_use(users, nar.print(), &[]) {
                continue;
            }
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
        report.note_object(key, *bytes, Why::Orphan, 0);
    }
    let result = r.storage.delete(&keys).await;
    for hash in &claimed {
        r.nar_removed(hash);
    }
    result?;
    // What interrupted passes meant to remove is gone now (or used again).
    r.storage.delete(&survey.intents).await
}

/// A path whose narinfo a pass removed, with its NAR's key as the narinfo named it.
pub(super) type Gone<'a> = (&'a Doomed, Option<NarKey>);

/// Starts removing a chunk of chosen paths: those still removable are marked, their
/// narinfos read for their NAR's key (the graph keeps only a print of it), an intent
/// lists those NARs and the listings, and the narinfos go, durably. Returns them with
/// the intent's key; their NARs and listings go in [`remove_rest`].
pub(super) async fn remove_narinfos<'a>(
    r: &Retention,
    chunk: &'a [Doomed],
    now: u32,
    report: &mut PassReport,
) -> Result<(Vec<Gone<'a>>, String), StorageError> {
    let marked: Vec<&Doomed> = {
        let mut graph = r.graph();
        chunk
            .iter()
            .filter(|d| !r.uses.contains(&Used::Path(d.hash)) && graph.start_removal(d))
            .collect()
    };
    let mut read = Vec::with_capacity(marked.len());
    for group in marked.chunks(super::survey::READS_IN_FLIGHT) {
        let nars = futures_util::future::join_all(group.iter().map(|d| nar_of(r, &d.hash))).await;
        read.extend(group.iter().copied().zip(nars));
    }
    let mut going = Vec::with_capacity(read.len());
    for (d, nar) in read {
        match nar {
            Ok(nar) if !nar.is_some_and(|n| r.uses.contains(&Used::Nar(n))) => {
                going.push((d, nar));
            }
            // Downloaded since it was chosen, or its narinfo could not be read: kept.
            _ => r.graph().abort_removal(d),
        }
    }
    // A path kept just now references again what the chunk meant to remove below
    // it: that stays too, or the kept path's closure would break.
    r.graph().keep_referenced(&mut going, |(d, _)| *d);
    let mut rest = Vec::with_capacity(going.len() * 2);
    for (d, nar) in &going {
        rest.push(format!("{}.ls", path_hash_str(&d.hash)));
        rest.extend(nar.as_ref().map(|n| n.key()));
    }
    report.kept += chunk.len() - going.len();
    let narinfos: Vec<String> = going
        .iter()
        .map(|(d, _)| format!("{}.narinfo", path_hash_str(&d.hash)))
        .collect();
    let removed = async {
        let intent = write_intent(r, rest.iter(), now).await?;
        r.storage.delete(&narinfos).await?;
        Ok::<_, StorageError>(intent)
    }
    .await;
    match removed {
        Ok(intent) => Ok((going, intent)),
        Err(e) => {
            let mut graph = r.graph();
            for (d, _) in &going {
                graph.abort_removal(d);
            }
            Err(e)
        }
    }
}

/// The NAR key the stored narinfo of `hash` names (`None` when it has none this
/// server can parse: the file is then left for the orphans' check).
async fn nar_of(
    r: &Retention,
    hash: &crate::cache::graph::PathHash,
) -> Result<Option<NarKey>, StorageError> {
    let key = format!("{}.narinfo", path_hash_str(hash));
    let limit = crate::cache::narinfo::MAX_NARINFO_SIZE;
    let Some(bytes) = read_whole(r.storage.as_ref(), &key, limit).await? else {
        return Ok(None);
    };
    Ok(String::from_utf8_lossy(&bytes)
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .and_then(|u| NarKey::parse(u.trim())))
}

/// Ends the removal of paths whose narinfos are gone: their listings, and the NARs
/// no remaining narinfo uses (after `users`, built since the narinfos went; one
/// stored later held its NAR meanwhile, which `claim_nar` sees).
pub(super) async fn remove_rest(
    r: &Retention,
    going: &[Gone<'_>],
    users: &NarUsers,
    started: u32,
    why: &impl Fn(u32) -> Why,
    report: &mut PassReport,
) -> Result<(), StorageError> {
    let mut ids: Vec<u32> = going.iter().map(|(d, _)| d.id).collect();
    ids.sort_unstable();
    // A NAR several of them share goes once.
    let mut claimed: HashSet<NarPrint> = HashSet::new();
    let mut failed = None;
    // In steps: the keys of a hundred thousand paths at once took 30 MB.
    for step in going.chunks(CHUNK * 16) {
        let mut rest: Vec<String> = Vec::with_capacity(step.len() * 2);
        let mut nars = Vec::new();
        for (d, nar) in step {
            rest.push(format!("{}.ls", path_hash_str(&d.hash)));
            let Some(nar) = nar else { continue };
            let shared = r.graph().nar_in_use(users, nar.print(), &ids);
            if !shared && !claimed.contains(&nar.print()) && r.claim_nar(&nar.hash, started) {
                claimed.insert(nar.print());
                nars.push(nar.hash);
                rest.push(nar.key());
            }
        }
        let result = r.storage.delete(&rest).await;
        for hash in &nars {
            r.nar_removed(hash);
        }
        {
            let mut graph = r.graph();
            for (d, _) in step {
                graph.finish_removal(d);
            }
        }
        for (d, _) in step {
            r.stats.paths_removed.fetch_add(1, Ordering::Relaxed);
            report.note_path(d, why(d.recency));
        }
        // Their narinfos are gone whatever happens to the rest: every step finishes.
        if let Err(e) = result {
            failed.get_or_insert(e);
        }
    }
    failed.map_or(Ok(()), Err)
}

/// Forgets the activity of NARs nobody holds that is older than the grace period.
pub(super) fn prune_activity(r: &Retention, now: u32) {
    r.nars().retain(|_, a| {
        a.holds > 0 || a.removing || a.last.saturating_add(ORPHAN_GRACE_SECS) >= now
    });
}

/// Writes what a pass is about to remove (narinfos, listings, NARs), in pieces (a
/// pass over a million paths lists a hundred thousand); returns the intent's key.
pub(super) async fn write_intent(
    r: &Retention,
    keys: impl Iterator<Item = impl AsRef<str>>,
    now: u32,
) -> Result<String, StorageError> {
    static SEQUENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let unique = std::hash::BuildHasher::hash_one(
        &std::collections::hash_map::RandomState::new(),
        (
            now,
            std::process::id(),
            SEQUENCE.fetch_add(1, Ordering::Relaxed),
        ),
    );
    let key = format!("{INTENT_FOLDER}/{now:010}-{unique:016x}");
    let mut upload = r.storage.begin_upload(&key).await?;
    let mut text = String::with_capacity(PIECE + 256);
    for k in keys {
        text.push_str(k.as_ref());
        text.push('\n');
        if text.len() >= PIECE {
            upload.write(text.as_bytes()).await?;
            text.clear();
        }
    }
    upload.write(text.as_bytes()).await?;
    upload.commit().await?;
    Ok(key)
}

/// Bytes of intent text built before they are written.
const PIECE: usize = 256 * 1024;

/// The intents interrupted passes left: each one's key and the keys it lists.
pub(super) async fn read_intents(
    r: &Retention,
) -> Result<Vec<(String, Vec<String>)>, StorageError> {
    let mut names = Vec::new();
    for_each_listed(r.storage.as_ref(), INTENT_FOLDER, |l| names.push(l.key)).await?;
    let mut intents = Vec::new();
    for name in names {
        if let Some(keys) = read_intent(r, &name).await? {
            intents.push((name, keys));
        }
    }
    Ok(intents)
}

/// The keys an intent lists; `None` once it is gone.
pub(super) async fn read_intent(
    r: &Retention,
    name: &str,
) -> Result<Option<Vec<String>>, StorageError> {
    let Some(bytes) = read_whole(r.storage.as_ref(), name, usize::MAX).await? else {
        return Ok(None);
    };
    Ok(Some(
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_owned)
            .collect(),
    ))
}
