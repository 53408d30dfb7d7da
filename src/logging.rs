//! Log output: `tracing` events formatted as text lines on stderr, written in batches.
//!
//! At tens of thousands of requests per second, one `write(2)` per access-log line
//! is a syscall per request, as costly as the request's own socket write. Lines are
//! therefore appended to a buffer that a background task writes out every
//! [`FLUSH_INTERVAL`], or as soon as it holds [`FLUSH_SIZE`] bytes. Warnings and
//! errors are written at once, with everything buffered before them, so that what
//! matters is never held back. A crash (SIGKILL) loses at most one interval of
//! info lines.

use std::io::Write;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long an info line may wait in the buffer.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(50);
/// A buffer this full is written out by the request that filled it.
const FLUSH_SIZE: usize = 64 * 1024;

static BUFFER: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// Sets up the global `tracing` subscriber at `level`.
pub fn init(level: tracing::Level) {
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(BatchedStderr)
        .init();
}

/// Writes out everything buffered so far.
pub fn flush() {
    let mut buf = lock();
    write_out(&mut buf);
}

/// Runs forever, flushing the buffer every [`FLUSH_INTERVAL`]; spawn it on the runtime.
pub async fn flush_periodically() {
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        flush();
    }
}

fn lock() -> MutexGuard<'static, Vec<u8>> {
    // A panic while holding the lock leaves bytes, not a broken invariant.
    BUFFER.lock().unwrap_or_else(|e| e.into_inner())
}

fn write_out(buf: &mut Vec<u8>) {
    if !buf.is_empty() {
        // Nowhere to report a failing stderr; dropping the lines is all that is left.
        let _ = std::io::stderr().lock().write_all(buf);
        buf.clear();
    }
}

/// The `MakeWriter` handed to `tracing_subscriber`.
struct BatchedStderr;

/// One event's line: appended to the shared buffer when the event is formatted.
struct LineWriter {
    urgent: bool,
}

impl Write for LineWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut buf = lock();
        buf.extend_from_slice(data);
        if self.urgent || buf.len() >= FLUSH_SIZE {
            write_out(&mut buf);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchedStderr {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter { urgent: true }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> LineWriter {
        LineWriter {
            urgent: *meta.level() <= tracing::Level::WARN,
        }
    }
}
