//! Removal: orphans first, then chosen paths chunk by chunk, each narinfo before its
//! NAR. Before a chunk's narinfos go, an *intent* object lists the NARs and listings
//! that follow them: a pass killed in between leaves objects no narinfo uses, and the
//! next pass removes them at once instead of waiting out the orphans' grace period.

use std::sync::atomic::Ordering;

use futures_util::StreamExt;

use super::graph::{path_hash, path_hash_str, Doomed, NarKey};
use super::pass::{PassReport, Removal, Why};
use super::survey::{for_each_listed, Survey};
use super::uses::Used;
use super::{Retention, ORPHAN_GRACE_SECS};
use crate::storage::StorageError;

/// Where removal intents live: no cache key can name it.
pub const INTENT_FOLDER: &str = "nix-stored/removing";

pub(super) async fn remove_orphans(
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
    result?;
    // What interrupted passes meant to remove is gone now (or used again).
    r.storage.delete(&survey.intents).await
}

/// Removes a chunk of chosen paths: their narinfos first, durably; then, once no
/// other server can still serve those narinfos from memory, their listings and the
/// NARs no remaining narinfo uses.
pub(super) async fn remove_paths(
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
    // What follows the narinfos, decided before they go: an intent lists it, so
    // that a pass killed in between leaves nothing behind for long.
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
    let narinfos: Vec<String> = going
        .iter()
        .map(|d| format!("{}.narinfo", path_hash_str(&d.hash)))
        .collect();
    let removed = async {
        let intent = write_intent(r, &rest, started).await?;
        r.storage.delete(&narinfos).await?;
        Ok::<_, StorageError>(intent)
    }
    .await;
    let intent = match removed {
        Ok(intent) => intent,
        Err(e) => {
            let mut graph = r.graph();
            for d in &going {
                graph.abort_removal(d);
            }
            drop(graph);
            for hash in &claimed {
                r.nar_removed(hash);
            }
            return Err(e);
        }
    };
    if !r.narinfo_linger.is_zero() {
        tokio::time::sleep(r.narinfo_linger).await;
    }
    let mut result = r.storage.delete(&rest).await;
    for hash in &claimed {
        r.nar_removed(hash);
    }
    if result.is_ok() {
        result = r.storage.delete(&[intent]).await;
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
pub(super) fn prune_activity(r: &Retention, now: u32) {
    r.nars().retain(|_, a| {
        a.holds > 0 || a.removing || a.last.saturating_add(ORPHAN_GRACE_SECS) >= now
    });
}

/// Writes the keys a chunk removes after its narinfos; returns the intent's key.
async fn write_intent(r: &Retention, keys: &[String], now: u32) -> Result<String, StorageError> {
    let unique = std::hash::BuildHasher::hash_one(
        &std::collections::hash_map::RandomState::new(),
        (now, std::process::id(), keys.len()),
    );
    let key = format!("{INTENT_FOLDER}/{now:010}-{unique:016x}");
    let mut upload = r.storage.begin_upload(&key).await?;
    upload.write(keys.join("\n").as_bytes()).await?;
    upload.commit().await?;
    Ok(key)
}

/// The intents interrupted passes left: each one's key and the keys it lists.
pub(super) async fn read_intents(
    r: &Retention,
) -> Result<Vec<(String, Vec<String>)>, StorageError> {
    let mut names = Vec::new();
    for_each_listed(r, INTENT_FOLDER, |l| names.push(l.key)).await?;
    let mut intents = Vec::new();
    for name in names {
        let Some(reader) = r.storage.open(&name, 0).await? else {
            continue;
        };
        let mut body = reader.body.into_stream();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.next().await {
            bytes.extend_from_slice(&chunk.map_err(StorageError::from_io)?);
        }
        let keys = String::from_utf8_lossy(&bytes)
            .lines()
            .filter(|k| k.ends_with(".ls") || k.starts_with("nar/"))
            .map(str::to_owned)
            .collect();
        intents.push((name, keys));
    }
    Ok(intents)
}
