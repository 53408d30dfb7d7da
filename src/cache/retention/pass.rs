//! One retention pass: survey the storage, choose, remove.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::removal::{prune_activity, remove_narinfos, remove_orphans, remove_rest, write_intent};
use super::survey::{survey, top_level};
use super::{now_secs, Retention};
use crate::cache::graph::shared::off_worker;
use crate::cache::graph::{path_hash_str, Doomed, NarKey, NarPrint, PathHash};
use crate::storage::StorageError;

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
    /// Whether it is a store path (its narinfo, listing and NAR), not one object.
    pub path: bool,
}

impl Removal {
    /// A store path (its narinfo, listing and NAR).
    pub fn path(d: &Doomed, why: Why) -> Removal {
        Removal {
            what: path_hash_str(&d.hash),
            bytes: d.bytes,
            why,
            recency: d.recency,
            path: true,
        }
    }

    /// An object on its own: an orphan (recency 0), a log, a realisation, …
    pub fn object(key: &str, bytes: u64, why: Why, recency: u32) -> Removal {
        Removal {
            what: key.to_owned(),
            bytes,
            why,
            recency,
            path: false,
        }
    }
}

/// Counts of what a pass removed.
#[derive(Debug, Default, Clone, Copy)]
pub struct Removed {
    /// Store paths (narinfo, listing and NAR each).
    pub paths: u64,
    /// Objects on their own: orphans, logs, realisations, debuginfo.
    pub objects: u64,
    /// Bytes freed.
    pub bytes: u64,
    /// Paths and objects removed as orphans.
    pub orphans: u64,
    /// Paths and objects removed as unused for longer than NIX_STORED_RETENTION.
    pub expired: u64,
    /// Paths and objects removed to get under the quota.
    pub over_quota: u64,
}

/// What a pass did (or would do).
#[derive(Debug, Default)]
pub struct PassReport {
    /// Whether nothing was removed on purpose.
    pub dry_run: bool,
    /// What a dry run would remove, in order. A real pass only counts: its list,
    /// a hundred thousand entries at a million paths, would cost more memory than
    /// anything else the pass holds besides the graph.
    pub listed: Vec<Removal>,
    /// What was (or would be) removed.
    pub removed: Removed,
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
    /// Counts a removal, and lists it in a dry run. `removal` is called only then.
    pub fn note(&mut self, path: bool, bytes: u64, why: Why, removal: impl FnOnce() -> Removal) {
        let r = &mut self.removed;
        if path {
            r.paths += 1;
        } else {
            r.objects += 1;
        }
        r.bytes += bytes;
        *match why {
            Why::Orphan => &mut r.orphans,
            Why::Expired => &mut r.expired,
            Why::OverQuota => &mut r.over_quota,
        } += 1;
        if self.dry_run {
            self.listed.push(removal());
        }
    }

    /// Counts the removal of a store path.
    pub fn note_path(&mut self, d: &Doomed, why: Why) {
        self.note(true, d.bytes, why, || Removal::path(d, why));
    }

    /// Counts the removal of an object on its own.
    pub fn note_object(&mut self, key: &str, bytes: u64, why: Why, recency: u32) {
        self.note(false, bytes, why, || {
            Removal::object(key, bytes, why, recency)
        });
    }

    /// The one log line of a pass.
    pub fn log(&self) {
        tracing::info!(
            "retention pass: removed {} paths and {} other objects, {} bytes; {} kept as used meanwhile; cache {} -> {} bytes ({} paths before, {} bytes pinned); {} ms",
            self.removed.paths,
            self.removed.objects,
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
        for r in &self.listed {
            let what = if r.path {
                format!("{}.narinfo (and its NAR)", r.what)
            } else {
                r.what.clone()
            };
            let used = match r.recency {
                0 => "-".to_owned(),
                t => crate::logging::utc_seconds(u64::from(t)),
            };
            out.push_str(&format!(
                "{:<10} {:>14} bytes  last used {used:<20}  {what}\n",
                r.why.as_str(),
                r.bytes,
            ));
        }
        out.push_str(&format!(
            "{} objects, {} bytes would be removed; the cache holds {} bytes in {} paths ({} pinned), {} after.\n",
            self.listed.len(),
            self.bytes_before - self.bytes_after,
            self.bytes_before,
            self.paths,
            self.pinned_bytes,
            self.bytes_after
        ));
        out
    }
}

/// The prints of `nars`, sorted and without repeats.
fn sorted_prints(nars: impl Iterator<Item = NarKey>) -> Vec<NarPrint> {
    let mut prints: Vec<NarPrint> = nars.map(|n| n.print()).collect();
    prints.sort_unstable();
    prints.dedup();
    prints
}

/// Narinfos removed per step, in one durable batch.
pub(super) const CHUNK: usize = 256;

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
    let (plan, pinned_bytes, paths) = off_worker(|| {
        let graph = r.graph();
        let pinned = graph.closure(&pins);
        let pinned_bytes = graph.bytes_of(&pinned);
        let plan = graph.plan(&pinned, expired_before, &loose, |chosen| {
            over_quota && after_orphans.saturating_sub(chosen) > low_water
        });
        (plan, pinned_bytes, graph.stored())
    });
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
    let note_loose = |report: &mut PassReport| {
        for (key, recency, bytes) in loose_chosen {
            report.note_object(key, *bytes, why(*recency), *recency);
        }
    };
    if dry_run {
        for (key, bytes) in &survey.orphans {
            report.note_object(key, *bytes, Why::Orphan, 0);
        }
        note_loose(&mut report);
        for d in &plan.paths {
            report.note_path(d, why(d.recency));
        }
    } else {
        // What the pass removes, for servers sharing the storage (their uploads
        // must not reference it) and for the next pass should this one be killed.
        let keys = plan.paths.iter().flat_map(|d| {
            let hash = path_hash_str(&d.hash);
            [format!("{hash}.narinfo"), format!("{hash}.ls")]
        });
        let keys = survey.orphans.iter().map(|o| o.0.clone()).chain(keys);
        let intent = write_intent(r, keys, now).await?;
        if !r.settle.is_zero() {
            // Other servers sharing the storage see the intent within their upload
            // window; what they stored before that is listed now and keeps what it
            // references.
            tokio::time::sleep(r.settle).await;
            top_level(r, now_secs()).await?;
        }
        let prints = sorted_prints(survey.orphans.iter().filter_map(|o| NarKey::parse(&o.0)));
        let users = off_worker(|| r.graph().nar_users(Some(&prints)));
        remove_orphans(r, &survey, &users, &mut report).await?;
        drop(users);
        let keys: Vec<String> = loose_chosen.iter().map(|l| l.0.clone()).collect();
        r.storage.delete(&keys).await?;
        note_loose(&mut report);
        let mut going = Vec::new();
        let mut intents = vec![intent];
        let mut failed = None;
        for chunk in plan.paths.chunks(CHUNK) {
            match remove_narinfos(r, chunk, now, &mut report).await {
                Ok((g, chunk_intent)) => {
                    going.extend(g);
                    intents.push(chunk_intent);
                }
                Err(e) => {
                    // What went already is finished below all the same.
                    failed = Some(e);
                    break;
                }
            }
        }
        if !going.is_empty() && !r.narinfo_linger.is_zero() {
            // Other servers may answer a removed narinfo from memory this long: its
            // NAR stays until they cannot.
            tokio::time::sleep(r.narinfo_linger).await;
        }
        let prints = sorted_prints(going.iter().filter_map(|g| g.1));
        let users = off_worker(|| r.graph().nar_users(Some(&prints)));
        let removed = remove_rest(r, &going, &users, now, &why, &mut report).await;
        prune_activity(r, now);
        if let Some(e) = failed {
            return Err(e);
        }
        removed?;
        r.storage.delete(&intents).await?;
    }
    let freed = report.removed.bytes;
    report.bytes_after = survey.total.saturating_sub(freed);
    report.millis = clock.elapsed().as_millis() as u64;
    if !dry_run {
        r.bytes.fetch_sub(
            freed.min(r.bytes.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        let count = report.removed.paths + report.removed.objects;
        let gone = count.min(r.objects.load(Ordering::Relaxed));
        r.objects.fetch_sub(gone, Ordering::Relaxed);
        let s = &r.stats;
        s.passes.fetch_add(1, Ordering::Relaxed);
        s.bytes_removed.fetch_add(freed, Ordering::Relaxed);
        s.objects_removed.fetch_add(count, Ordering::Relaxed);
        s.last_pass_ms.store(report.millis, Ordering::Relaxed);
    }
    Ok(report)
}
