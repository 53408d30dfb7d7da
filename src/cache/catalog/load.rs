//! The catalog's start-up load: a listing of the storage's top level, and a read of
//! every narinfo in it, batch by batch.

use std::sync::Arc;

use futures_util::StreamExt;

use super::Catalog;
use crate::cache::graph::{path_hash, record, PathHash, Record};
use crate::storage::{read_whole, Listed, Storage, StorageError};

/// Narinfos read at once.
const READS_IN_FLIGHT: usize = 32;

/// Fills `catalog` from `storage`: every narinfo listed at the top level is read.
/// Uploads recorded meanwhile are kept (the newer time wins).
pub async fn load(catalog: Arc<Catalog>, storage: Arc<dyn Storage>) -> Result<(), StorageError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Listed>>(4);
    let listing = storage.list_objects("", tx);
    let consume = async {
        while let Some(batch) = rx.recv().await {
            let narinfos = batch.into_iter().filter(|l| l.key.ends_with(".narinfo"));
            let mut reads = futures_util::stream::iter(narinfos)
                .map(|l| read(storage.as_ref(), l))
                .buffer_unordered(READS_IN_FLIGHT);
            while let Some(read) = reads.next().await {
                if let Some(read) = read? {
                    read.insert_into(&catalog);
                }
            }
        }
        Ok::<_, StorageError>(())
    };
    let (listed, consumed) = tokio::join!(listing, consume);
    listed?;
    consumed?;
    catalog.shrink();
    catalog.finish_load();
    Ok(())
}

/// One stored narinfo, read.
struct Read {
    hash: PathHash,
    record: Record,
    modified: u32,
    bytes: u64,
}

impl Read {
    fn insert_into(&self, catalog: &Catalog) {
        catalog.insert(&self.hash, &self.record, self.modified, self.bytes);
    }
}

async fn read(storage: &dyn Storage, l: Listed) -> Result<Option<Read>, StorageError> {
    let Some(hash) = l.key.strip_suffix(".narinfo").and_then(path_hash) else {
        return Ok(None);
    };
    let limit = crate::cache::narinfo::MAX_NARINFO_SIZE;
    let Some(text) = read_whole(storage, &l.key, limit).await? else {
        return Ok(None);
    };
    let Ok(record) = record::parse(&hash, &text) else {
        return Ok(None);
    };
    Ok(Some(Read {
        hash,
        modified: u32::try_from(l.modified).unwrap_or(u32::MAX),
        bytes: text.len() as u64 + record.file_size,
        record,
    }))
}

/// Reads the narinfos among `names` (objects that appeared in storage) that the
/// catalog does not hold yet, in the background: what another writer stored. This
/// server's own uploads are in the catalog already.
pub fn added(catalog: &Arc<Catalog>, storage: &Arc<dyn Storage>, names: &[String]) {
    if !catalog.kept() {
        return;
    }
    let now = crate::cache::retention::now_secs();
    let unknown: Vec<Listed> = names
        .iter()
        .filter(|n| {
            n.strip_suffix(".narinfo")
                .and_then(path_hash)
                .is_some_and(|h| !catalog.holds(&h))
        })
        .map(|n| Listed {
            key: n.clone(),
            size: 0,
            modified: u64::from(now),
        })
        .collect();
    if unknown.is_empty() {
        return;
    }
    let (catalog, storage) = (catalog.clone(), storage.clone());
    tokio::spawn(async move {
        for l in unknown {
            match read(storage.as_ref(), l).await {
                Ok(Some(read)) => read.insert_into(&catalog),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!("catalog: cannot read a narinfo another writer stored: {e}")
                }
            }
        }
    });
}

/// Loads the catalog in the background, with the outcome logged.
pub fn spawn(catalog: Arc<Catalog>, storage: Arc<dyn Storage>) {
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        match load(catalog.clone(), storage).await {
            Ok(()) => tracing::info!(
                "catalog: {} paths, {} MiB in memory, loaded in {} ms",
                catalog.figures().paths,
                catalog.heap_bytes() >> 20,
                started.elapsed().as_millis()
            ),
            Err(e) => tracing::warn!("catalog: the listing failed, the page shows only what was loaded and uploaded since: {e}"),
        }
    });
}
