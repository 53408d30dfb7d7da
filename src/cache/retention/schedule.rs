//! When passes run, and when uses are written out.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{now_secs, uses, Retention, FLUSH_INTERVAL, PASSES_MARKER};
use crate::storage::StorageError;

/// The shortest time between the end of a pass and a pass an upload asks for.
const MIN_PASS_SPACING: std::time::Duration = std::time::Duration::from_secs(60);

impl Retention {
    /// Runs passes for as long as the runtime runs: the first at once (it loads the
    /// graph), then every interval, and whenever an upload goes over the quota. Uses
    /// are written out between passes.
    pub async fn run(self: Arc<Self>) {
        if !self.enabled() {
            if self.storage.shared() {
                self.journal_for_others().await;
            }
            return;
        }
        if self.storage.shared() {
            if let Err(e) = self.write_marker().await {
                tracing::warn!("cannot mark the storage as one retention passes run on: {e}");
            }
        }
        // Uses are written out by a task of their own, so that a long pass never
        // lets them pile up in memory.
        tokio::spawn(self.clone().flush_regularly());
        use tokio::time::Instant;
        // A pass an upload over the quota asks for waits this long after the last
        // one: a cache held over its quota by pins or young uploads would otherwise
        // list the whole storage after every upload.
        let spacing = self.settings.interval.min(MIN_PASS_SPACING);
        let mut next_pass = Instant::now();
        let mut last_end: Option<Instant> = None;
        loop {
            let woken = tokio::select! {
                () = tokio::time::sleep_until(next_pass) => false,
                () = self.wake.notified() => true,
            };
            let now = Instant::now();
            let over = self
                .settings
                .max_size
                .is_some_and(|q| self.bytes.load(Ordering::Relaxed) > q);
            if woken && over {
                next_pass = next_pass.min(last_end.map_or(now, |end| end + spacing));
            }
            if now >= next_pass {
                match self.pass(false).await {
                    Ok(report) => report.log(),
                    Err(e) => {
                        self.stats.failed_passes.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("retention pass failed: {e}");
                    }
                }
                let end = Instant::now();
                last_end = Some(end);
                next_pass = end + self.settings.interval;
            }
        }
    }

    /// Writes out the uses every [`FLUSH_INTERVAL`], and whenever many are held.
    async fn flush_regularly(self: Arc<Self>) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(FLUSH_INTERVAL) => {}
                () = self.uses_full.notified() => {}
            }
            if let Err(e) = self.flush().await {
                tracing::warn!("cannot write the recency journal: {e}");
            }
        }
    }

    /// On shared storage without passes of its own: records and writes out uses
    /// while another server runs passes on the storage (it leaves a marker).
    async fn journal_for_others(&self) {
        loop {
            match self.storage.stat(PASSES_MARKER).await {
                Ok(found) => {
                    let on = found.is_some();
                    if on != self.journaling.swap(on, Ordering::Relaxed) && on {
                        tracing::info!(
                            "another server runs retention passes on this storage: uses are written to {}",
                            uses::JOURNAL_FOLDER
                        );
                    }
                }
                Err(e) => tracing::debug!("cannot look for {PASSES_MARKER}: {e}"),
            }
            if let Err(e) = self.flush().await {
                tracing::warn!("cannot write the recency journal: {e}");
            }
            tokio::select! {
                () = tokio::time::sleep(FLUSH_INTERVAL) => {}
                () = self.uses_full.notified() => {}
            }
        }
    }

    async fn write_marker(&self) -> Result<(), StorageError> {
        crate::storage::write_whole(
            self.storage.as_ref(),
            PASSES_MARKER,
            b"retention passes run on this storage: every server sharing it writes its uses\n",
        )
        .await
    }

    /// Writes out the uses recorded so far (also at shutdown). The graph learns the
    /// paths' uses at once: a pass that chose one of them since keeps it.
    pub async fn flush(&self) -> Result<(), StorageError> {
        if !self.journaling.load(Ordering::Relaxed) {
            return Ok(());
        }
        let uses = self.uses.take();
        if self.enabled() {
            let mut graph = self.graph();
            for (used, secs) in &uses {
                if let uses::Used::Path(h) = used {
                    graph.touch(h, *secs);
                }
            }
            drop(graph);
        }
        uses::write_journal(self.storage.as_ref(), &uses, now_secs()).await
    }
}
