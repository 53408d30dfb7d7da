//! Streaming large objects out of files.
//!
//! A NAR in the page cache is copied out in microseconds; sending each chunk's read
//! through the blocking thread pool (as `tokio::fs` does) costs more than the copy
//! and halved the throughput of many parallel 1 MiB downloads. So each chunk is
//! first read in the request's own task with `RWF_NOWAIT`, which succeeds only when
//! the data is already in memory, and only reads that would wait for the disk go
//! to the blocking pool. This is what nginx gets from `sendfile` on a warm cache,
//! without holding the runtime thread on a cold one.

use std::fs::File;
use std::future::Future;
use std::io::ErrorKind;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use tokio::task::JoinHandle;

/// Bytes per chunk: large enough to keep syscalls few, small enough that many
/// parallel downloads stay cheap.
const CHUNK: usize = 256 * 1024;

/// The bytes of a file from an offset to the size it had when opened.
pub struct FileStream {
    file: Arc<File>,
    offset: u64,
    remaining: u64,
    pending: Option<JoinHandle<std::io::Result<Bytes>>>,
    try_nowait: bool,
}

impl FileStream {
    /// Streams `file` from `offset` to `size`.
    pub fn new(file: File, offset: u64, size: u64) -> Self {
        FileStream {
            file: Arc::new(file),
            offset,
            remaining: size.saturating_sub(offset),
            pending: None,
            try_nowait: cfg!(all(target_os = "linux", target_env = "gnu")),
        }
    }

    fn advance(&mut self, chunk: std::io::Result<Bytes>) -> Option<std::io::Result<Bytes>> {
        match chunk {
            // The file is never truncated in place (writes are renames): a short
            // file is damage, reported rather than served as a short body.
            Ok(bytes) if bytes.is_empty() => {
                self.remaining = 0;
                Some(Err(std::io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "file shorter than when opened",
                )))
            }
            Ok(bytes) => {
                self.offset += bytes.len() as u64;
                self.remaining -= (bytes.len() as u64).min(self.remaining);
                Some(Ok(bytes))
            }
            Err(e) => {
                self.remaining = 0;
                Some(Err(e))
            }
        }
    }
}

impl Stream for FileStream {
    type Item = std::io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(pending) = this.pending.as_mut() {
            let joined = std::task::ready!(Pin::new(pending).poll(cx));
            this.pending = None;
            let chunk = joined.unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
            return Poll::Ready(this.advance(chunk));
        }
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let want = CHUNK.min(this.remaining as usize);
        if this.try_nowait {
            match read_at(&this.file, this.offset, want, true) {
                Ok(bytes) => return Poll::Ready(this.advance(Ok(bytes))),
                // Not in memory: this chunk goes to the blocking pool.
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                // The filesystem cannot do RWF_NOWAIT: stop trying.
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => this.try_nowait = false,
                Err(e) => return Poll::Ready(this.advance(Err(e))),
            }
        }
        let file = this.file.clone();
        let offset = this.offset;
        this.pending = Some(tokio::task::spawn_blocking(move || {
            read_at(&file, offset, want, false)
        }));
        // Poll the new task once so that its waker is registered.
        Pin::new(this).poll_next(cx)
    }
}

/// Reads up to `len` bytes at `offset` (fewer only at the end of the file).
fn read_at(file: &File, offset: u64, len: usize, nowait: bool) -> std::io::Result<Bytes> {
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    let mut filled = 0;
    while filled < len {
        let spare = &mut buf.spare_capacity_mut()[..len - filled];
        let n = pread(file, spare, offset + filled as u64, nowait && filled == 0)?;
        if n == 0 {
            break;
        }
        filled += n;
        // SAFETY: pread initialised the first `n` bytes of the spare capacity.
        unsafe { buf.set_len(filled) };
        if nowait {
            // What is in memory now; the rest in the next chunk.
            break;
        }
    }
    Ok(Bytes::from(buf))
}

fn pread(
    file: &File,
    into: &mut [std::mem::MaybeUninit<u8>],
    offset: u64,
    nowait: bool,
) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let iov = libc::iovec {
        iov_base: into.as_mut_ptr().cast(),
        iov_len: into.len(),
    };
    loop {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: `iov` describes `into`, writable memory of `iov_len` bytes that
        // outlives the call; the descriptor is open for as long as `file` lives.
        let n = unsafe {
            libc::preadv2(
                file.as_raw_fd(),
                &iov,
                1,
                offset as libc::off_t,
                if nowait { libc::RWF_NOWAIT } else { 0 },
            )
        };
        #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
        // SAFETY: as above.
        let n = {
            let _ = nowait;
            unsafe { libc::preadv(file.as_raw_fd(), &iov, 1, offset as libc::off_t) }
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn streams_from_an_offset_to_the_size_at_open() {
        let path = std::env::temp_dir().join(format!("nix-stored-stream-{}", std::process::id()));
        let data: Vec<u8> = (0..CHUNK as u32 * 2 + 12345)
            .map(|i| (i % 253) as u8)
            .collect();
        std::fs::write(&path, &data).unwrap();
        for offset in [
            0u64,
            1,
            CHUNK as u64,
            data.len() as u64 - 1,
            data.len() as u64,
        ] {
            let file = File::open(&path).unwrap();
            let mut s = FileStream::new(file, offset, data.len() as u64);
            let mut got = Vec::new();
            while let Some(chunk) = s.next().await {
                got.extend_from_slice(&chunk.unwrap());
            }
            assert_eq!(got, data[offset as usize..], "offset {offset}");
        }
        // A file that shrank is an error, not a short body.
        let file = File::open(&path).unwrap();
        let mut s = FileStream::new(file, 0, data.len() as u64 + 10);
        let mut last = None;
        while let Some(chunk) = s.next().await {
            last = Some(chunk);
        }
        assert!(last.unwrap().is_err());
        let _ = std::fs::remove_file(&path);
    }
}
