//! An upstream NAR file on its way into storage, followed by clients while it
//! arrives: every piece is appended to a scratch file (see
//! [`crate::storage::scratch`]) before it goes on to the upload, and each reader
//! follows that file at its own pace, so a slow client never slows the download and
//! the server holds no more than a read buffer per reader, whatever the NAR's size.
//!
//! A reader never ends cleanly on bytes that were refused: the last byte it is to
//! send waits for the verdict on the whole file (its FileHash, the NAR inside, and
//! the upload's commit). When the download fails, every reader's body ends with an
//! error, which the HTTP layer turns into an aborted connection: a truncated
//! download for the client.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::stream;
use tokio::sync::watch;

use crate::storage::ByteStream;

/// The most a reader holds in memory at a time.
const READ_CHUNK: u64 = 128 << 10;

/// Where a download stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    /// Verified and committed to storage.
    Stored,
    Failed,
}

#[derive(Debug, Clone, Copy)]
struct Progress {
    written: u64,
    state: State,
}

/// One NAR file's download, shared by its readers; the scratch file goes with the
/// last of them.
pub struct Spool {
    file: Arc<File>,
    size: u64,
    progress: watch::Sender<Progress>,
}

impl Spool {
    /// A download of a file of `size` bytes (its signed FileSize) into `file`.
    pub fn new(file: File, size: u64) -> Self {
        let (progress, _) = watch::channel(Progress {
            written: 0,
            state: State::Running,
        });
        Spool {
            file: Arc::new(file),
            size,
            progress,
        }
    }

    /// The file's size, as its narinfo signs it.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends the next piece of the file and lets the readers see it.
    pub async fn append(&self, chunk: Bytes) -> std::io::Result<()> {
        let offset = self.progress.borrow().written;
        let file = self.file.clone();
        let len = chunk.len() as u64;
        tokio::task::spawn_blocking(move || file.write_all_at(&chunk, offset))
            .await
            .map_err(std::io::Error::other)??;
        self.progress.send_modify(|p| p.written += len);
        Ok(())
    }

    /// Records the verdict: `true` once the file is verified and stored.
    pub fn finish(&self, stored: bool) {
        self.progress.send_modify(|p| {
            if p.state == State::Running {
                p.state = if stored { State::Stored } else { State::Failed };
            }
        });
    }

    /// A guard that records a failure unless [`Spool::finish`] was called first: a
    /// download task that ends any other way (a panic, the runtime stopping) must
    /// not leave its readers waiting.
    pub fn fail_unless_finished(self: &Arc<Self>) -> impl Drop + Send {
        struct Guard(Arc<Spool>);
        impl Drop for Guard {
            fn drop(&mut self) {
                self.0.finish(false);
            }
        }
        Guard(self.clone())
    }

    /// Whether the download failed.
    pub fn failed(&self) -> bool {
        self.progress.borrow().state == State::Failed
    }

    /// Waits for the verdict: `true` when the file is stored.
    pub async fn wait(&self) -> bool {
        let mut rx = self.progress.subscribe();
        let stored = match rx.wait_for(|p| p.state != State::Running).await {
            Ok(p) => p.state == State::Stored,
            Err(_) => false,
        };
        stored
    }

    /// The bytes from `offset` up to `end` (exclusive, at most the size), as they
    /// arrive.
    pub fn reader(self: &Arc<Self>, offset: u64, end: u64) -> ByteStream {
        let end = end.min(self.size);
        let rx = self.progress.subscribe();
        let state = Some((self.clone(), rx, offset));
        Box::pin(stream::unfold(state, move |state| async move {
            let (spool, mut rx, pos) = state?;
            loop {
                let p = *rx.borrow_and_update();
                let limit = match p.state {
                    State::Failed => {
                        let e = std::io::Error::other("the upstream NAR download failed");
                        return Some((Err(e), None));
                    }
                    State::Stored => p.written.min(end),
                    // The last byte waits for the verdict.
                    State::Running => p.written.min(end.saturating_sub(1)),
                };
                if pos < limit {
                    let len = (limit - pos).min(READ_CHUNK);
                    return Some(match spool.read(pos, len).await {
                        Ok(bytes) => (Ok(bytes), Some((spool, rx, pos + len))),
                        Err(e) => (Err(e), None),
                    });
                }
                if p.state == State::Stored {
                    if pos >= end {
                        return None;
                    }
                    // Stored with fewer bytes than signed: never, as the upload
                    // checks the size; but no clean end on it either.
                    let e = std::io::Error::other("the upstream NAR is shorter than signed");
                    return Some((Err(e), None));
                }
                if rx.changed().await.is_err() {
                    let e = std::io::Error::other("the upstream NAR download stopped");
                    return Some((Err(e), None));
                }
            }
        }))
    }

    async fn read(&self, pos: u64, len: u64) -> std::io::Result<Bytes> {
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || {
            let mut buf = BytesMut::zeroed(len as usize);
            file.read_exact_at(&mut buf, pos)?;
            Ok(buf.freeze())
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn spool(size: u64) -> Arc<Spool> {
        Arc::new(Spool::new(
            crate::storage::scratch::anonymous().unwrap(),
            size,
        ))
    }

    #[tokio::test]
    async fn readers_follow_and_the_last_byte_waits_for_the_verdict() {
        let s = spool(6);
        let mut whole = s.reader(0, u64::MAX);
        let mut tail = s.reader(4, 6);
        s.append(Bytes::from_static(b"abcd")).await.unwrap();
        assert_eq!(whole.next().await.unwrap().unwrap(), &b"abcd"[..]);
        s.append(Bytes::from_static(b"ef")).await.unwrap();
        assert_eq!(tail.next().await.unwrap().unwrap(), &b"e"[..]);
        let pending = tokio::time::timeout(std::time::Duration::from_millis(20), tail.next());
        assert!(
            pending.await.is_err(),
            "the last byte came before the verdict"
        );
        s.finish(true);
        assert_eq!(tail.next().await.unwrap().unwrap(), &b"f"[..]);
        assert!(tail.next().await.is_none());
        assert_eq!(whole.next().await.unwrap().unwrap(), &b"ef"[..]);
        assert!(whole.next().await.is_none());
        assert!(s.wait().await);
    }

    #[tokio::test]
    async fn a_failure_ends_every_reader_with_an_error() {
        let s = spool(4);
        let mut r = s.reader(0, 4);
        s.append(Bytes::from_static(b"abcd")).await.unwrap();
        assert_eq!(r.next().await.unwrap().unwrap(), &b"abc"[..]);
        drop(s.fail_unless_finished());
        assert!(r.next().await.unwrap().is_err());
        assert!(r.next().await.is_none());
        assert!(s.failed());
        assert!(!s.wait().await);
    }
}
