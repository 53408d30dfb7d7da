//! When objects were last used, beyond what storage records (an upload's time is its
//! object's modification time; a download leaves no trace there).
//!
//! Uses are gathered in memory and written out in batches: one *journal* object per
//! flush and server, under [`JOURNAL_FOLDER`], which no cache key can name (so the
//! directory stays a valid `file://` cache and the bucket a valid `s3://` one). Every
//! server sharing a bucket writes its own journals; a server that runs passes merges
//! them all, writes what must be kept as one new journal and removes the ones merged.
//! A journal is written atomically, so a crash loses at most the uses of one flush
//! interval, which only makes those paths look older than they are.

use std::collections::HashMap;
use std::sync::Mutex;

use futures_util::StreamExt;

use crate::cache::graph::{path_hash, NarKey, PathHash};
use crate::storage::{for_each_listed, Storage, StorageError};

/// Where journals live, relative to the cache root.
pub const JOURNAL_FOLDER: &str = "nix-stored/used";

/// Uses held in memory before a flush is due whatever the interval: about 100 bytes
/// each, so a few MiB at most.
pub const FLUSH_AT: usize = 50_000;

/// What was used.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Used {
    /// A store path: its narinfo or listing.
    Path(PathHash),
    /// A NAR file.
    Nar(NarKey),
    /// Anything else (logs, realisations, debuginfo), by key.
    Other(Box<str>),
}

impl Used {
    /// Classifies a storage key; `None` for keys whose use does not matter.
    pub fn of_key(key: &str) -> Option<Used> {
        if let Some(hash) = key
            .strip_suffix(".narinfo")
            .or_else(|| key.strip_suffix(".ls"))
        {
            return path_hash(hash).map(Used::Path);
        }
        if key.starts_with("nar/") {
            return NarKey::parse(key).map(Used::Nar);
        }
        if ["log/", "realisations/", "debuginfo/"]
            .iter()
            .any(|p| key.starts_with(p))
        {
            return Some(Used::Other(key.into()));
        }
        None
    }

    /// The key written in a journal.
    fn key(&self) -> String {
        match self {
            Used::Path(h) => format!("{}.narinfo", crate::cache::graph::path_hash_str(h)),
            Used::Nar(n) => n.key(),
            Used::Other(k) => k.to_string(),
        }
    }
}

/// Uses since the last flush.
#[derive(Default)]
pub struct Uses {
    recent: Mutex<HashMap<Used, u32>>,
}

impl Uses {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Used, u32>> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a use at `secs`; `true` when enough are held that a flush is due.
    pub fn record(&self, used: Used, secs: u32) -> bool {
        let mut recent = self.lock();
        let at = recent.entry(used).or_insert(secs);
        *at = (*at).max(secs);
        recent.len() >= FLUSH_AT
    }

    /// Whether `used` was recorded since the last [`Uses::take`].
    pub fn contains(&self, used: &Used) -> bool {
        self.lock().contains_key(used)
    }

    /// Takes every use recorded so far.
    pub fn take(&self) -> Vec<(Used, u32)> {
        std::mem::take(&mut *self.lock()).into_iter().collect()
    }
}

/// Uses handed on at once when reading a journal.
const APPLY_BATCH: usize = 16 * 1024;

/// Parses `<key> <secs>` lines.
fn parse_lines(text: &[u8], out: &mut Vec<(Used, u32)>) {
    for line in text.split(|b| *b == b'\n') {
        let Ok(line) = std::str::from_utf8(line) else {
            continue;
        };
        let Some((key, secs)) = line.split_once(' ') else {
            continue;
        };
        if let (Some(used), Ok(secs)) = (Used::of_key(key), secs.parse::<u32>()) {
            out.push((used, secs));
        }
    }
}

/// Bytes of journal text built before they are written: a compacted journal of a
/// million uses is written in pieces, never held whole.
const WRITE_PIECE: usize = 256 * 1024;

/// Writes `uses` as a new journal (nothing when empty).
pub async fn write_journal(
    storage: &dyn Storage,
    uses: &[(Used, u32)],
    now: u32,
) -> Result<(), StorageError> {
    if uses.is_empty() {
        return Ok(());
    }
    let mut journal = Journal::begin(storage, now).await?;
    for (used, secs) in uses {
        journal.push(used, *secs).await?;
    }
    journal.commit().await
}

/// A journal being written, in pieces.
pub struct Journal {
    upload: Box<dyn crate::storage::Upload>,
    text: String,
}

impl Journal {
    /// Starts a new journal.
    pub async fn begin(storage: &dyn Storage, now: u32) -> Result<Journal, StorageError> {
        // RandomState's keys are random per process and per call: two servers (or
        // two flushes) never pick the same name.
        let unique = std::hash::BuildHasher::hash_one(
            &std::collections::hash_map::RandomState::new(),
            (now, std::process::id()),
        );
        let name = format!("{JOURNAL_FOLDER}/{now:010}-{unique:016x}");
        Ok(Journal {
            upload: storage.begin_upload(&name).await?,
            text: String::with_capacity(WRITE_PIECE + 128),
        })
    }

    /// Adds a use.
    pub async fn push(&mut self, used: &Used, secs: u32) -> Result<(), StorageError> {
        self.text.push_str(&used.key());
        self.text.push(' ');
        self.text.push_str(&secs.to_string());
        self.text.push('\n');
        if self.text.len() >= WRITE_PIECE {
            self.upload.write(self.text.as_bytes()).await?;
            self.text.clear();
        }
        Ok(())
    }

    /// Makes the journal visible.
    pub async fn commit(mut self) -> Result<(), StorageError> {
        self.upload.write(self.text.as_bytes()).await?;
        self.upload.commit().await?;
        Ok(())
    }
}

/// Reads every journal in storage, handing each one's uses to `apply`; returns the
/// keys of those read. A journal that cannot be read is skipped (and kept): a use
/// lost only makes a path look older.
pub async fn read_journals(
    storage: &dyn Storage,
    mut apply: impl FnMut(Vec<(Used, u32)>),
) -> Result<Vec<String>, StorageError> {
    let mut names = Vec::new();
    for_each_listed(storage, JOURNAL_FOLDER, |l| names.push(l.key)).await?;
    let mut read = Vec::with_capacity(names.len());
    for name in names {
        let Some(reader) = storage.open(&name, 0).await? else {
            continue;
        };
        // Parsed as it arrives and handed on in batches: a compacted journal holds
        // a line for every path used since its upload.
        let mut body = reader.body.into_stream();
        let mut partial: Vec<u8> = Vec::new();
        let mut batch = Vec::with_capacity(APPLY_BATCH);
        let mut broken = false;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("recency journal {name} cannot be read: {e}");
                    broken = true;
                    break;
                }
            };
            partial.extend_from_slice(&chunk);
            let complete = partial
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |i| i + 1);
            parse_lines(&partial[..complete], &mut batch);
            partial.drain(..complete);
            if batch.len() >= APPLY_BATCH {
                apply(std::mem::replace(
                    &mut batch,
                    Vec::with_capacity(APPLY_BATCH),
                ));
            }
        }
        if broken {
            continue;
        }
        parse_lines(&partial, &mut batch);
        apply(batch);
        read.push(name);
    }
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryStorage;

    const PATH: &str = "0b4h5q6nbxjkgq7kmzrjxwpqv1yhzfa1";

    #[tokio::test]
    async fn journals_round_trip_and_keep_the_latest_use() {
        let storage = MemoryStorage::default();
        let first = [
            (Used::of_key(&format!("{PATH}.narinfo")).unwrap(), 100),
            (Used::of_key("log/abc-foo.drv").unwrap(), 7),
        ];
        write_journal(&storage, &first, 1).await.unwrap();
        let second = [(Used::of_key(&format!("{PATH}.ls")).unwrap(), 50)];
        write_journal(&storage, &second, 2).await.unwrap();
        let mut uses: HashMap<Used, u32> = HashMap::new();
        let names = read_journals(&storage, |batch| {
            for (u, secs) in batch {
                let at = uses.entry(u).or_insert(secs);
                *at = (*at).max(secs);
            }
        })
        .await
        .unwrap();
        assert_eq!(names.len(), 2);
        assert_eq!(uses.len(), 2);
        assert_eq!(uses[&Used::Path(path_hash(PATH).unwrap())], 100);
        assert_eq!(uses[&Used::Other("log/abc-foo.drv".into())], 7);
    }

    #[test]
    fn only_cache_objects_count_as_uses() {
        assert!(Used::of_key("nix-cache-info").is_none());
        assert!(Used::of_key("nix-stored/used/1-2").is_none());
        assert!(Used::of_key("nar/zzz.nar").is_none());
        let nar = format!(
            "nar/{}.nar.xz",
            nix_derivation::nixbase32::encode(&[7u8; 32])
        );
        assert!(matches!(Used::of_key(&nar), Some(Used::Nar(_))));
        assert_eq!(Used::of_key(&nar).unwrap().key(), nar);
    }
}
