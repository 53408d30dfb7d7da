//! Log output: `tracing` events formatted as text or JSON lines on stderr, written in
//! batches.
//!
//! At tens of thousands of requests per second, one `write(2)` per access-log line
//! is a syscall per request, as costly as the request's own socket write. Lines are
//! therefore appended to a buffer that a background task writes out every
//! [`FLUSH_INTERVAL`], or as soon as it holds [`FLUSH_SIZE`] bytes. Warnings and
//! errors are written at once, with everything buffered before them, so that what
//! matters is never held back. A crash (SIGKILL) loses at most one interval of
//! info lines.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing_subscriber::fmt::MakeWriter;

/// How long an info line may wait in the buffer.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(50);
/// A buffer this full is written out by the request that filled it.
const FLUSH_SIZE: usize = 64 * 1024;

static BUFFER: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// Whether request lines are written (the level is `info` or `debug`).
static ACCESS_LINES: AtomicBool = AtomicBool::new(false);
/// Whether lines are JSON objects rather than text.
static JSON: AtomicBool = AtomicBool::new(false);

/// How log lines are written (NIX_STORED_LOG_FORMAT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable text, one event per line.
    Text,
    /// One JSON object per line (`timestamp`, `level`, `message`, and for requests
    /// their fields), for log collectors.
    Json,
}

/// Sets up the global `tracing` subscriber at `level`, in `format`.
pub fn init(level: tracing::Level, format: LogFormat) {
    ACCESS_LINES.store(level >= tracing::Level::INFO, Ordering::Relaxed);
    JSON.store(format == LogFormat::Json, Ordering::Relaxed);
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false)
        .with_writer(BatchedStderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder.json().flatten_event(true).with_ansi(false).init(),
    }
}

/// One answered request, as logged.
pub struct AccessLine<'a> {
    /// Request method.
    pub method: &'a str,
    /// Request path, without the query string.
    pub path: &'a str,
    /// HTTP version, as a request line writes it (`HTTP/1.1`, `HTTP/2`).
    pub version: &'a str,
    /// Answer status.
    pub status: u16,
    /// Declared request body size.
    pub bytes_in: u64,
    /// Answer body size.
    pub bytes_out: u64,
    /// Time to the answer's headers.
    pub micros: u128,
    /// Who asked (`-` for anonymous).
    pub user: &'a str,
    /// The request id sent in `X-Request-Id`.
    pub id: &'a str,
    /// The client: the TCP peer, or whom a trusted reverse proxy names.
    pub client: Option<std::net::IpAddr>,
}

/// A client address as the text line writes it (`-` when unknown).
struct Client(Option<std::net::IpAddr>);

impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(ip) => ip.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// Whether [`access`] writes anything: callers skip gathering the line's fields otherwise.
pub fn access_enabled() -> bool {
    ACCESS_LINES.load(Ordering::Relaxed)
}

/// Appends one request line, in the same layout as the `tracing` lines.
///
/// Request lines bypass `tracing`'s formatter, which escapes messages one character
/// at a time: on the hot path that cost as much as answering a miss. In text, the
/// fields need no escaping (the access log percent-encodes everything in the path
/// that is not printable ASCII, and user names come from the configuration).
pub fn access(l: &AccessLine<'_>) {
    if !access_enabled() {
        return;
    }
    let mut buf = lock();
    if JSON.load(Ordering::Relaxed) {
        buf.extend_from_slice(b"{\"timestamp\":\"");
        write_timestamp(&mut buf, SystemTime::now());
        let _ = write!(
            buf,
            "\",\"level\":\"INFO\",\"message\":\"request\",\"method\":\"{}\",\"path\":",
            l.method
        );
        json_string(&mut buf, l.path);
        let _ = write!(
            buf,
            ",\"http_version\":\"{}\",\"status\":{},\"bytes_in\":{},\"bytes_out\":{},\"duration_us\":{},\"user\":",
            l.version, l.status, l.bytes_in, l.bytes_out, l.micros
        );
        json_string(&mut buf, l.user);
        let _ = write!(buf, ",\"request_id\":\"{}\"", l.id);
        match l.client {
            Some(ip) => {
                let _ = writeln!(buf, ",\"client\":\"{ip}\"}}");
            }
            None => buf.extend_from_slice(b"}\n"),
        }
    } else {
        write_timestamp(&mut buf, SystemTime::now());
        let _ = writeln!(
            buf,
            "  INFO {} {} {} {} in={} out={} {}us user={} id={} client={}",
            l.method,
            l.path,
            l.version,
            l.status,
            l.bytes_in,
            l.bytes_out,
            l.micros,
            l.user,
            l.id,
            Client(l.client)
        );
    }
    if buf.len() >= FLUSH_SIZE {
        write_out(&mut buf);
    }
}

/// `s` as a JSON string literal.
fn json_string(buf: &mut Vec<u8>, s: &str) {
    buf.push(b'"');
    for c in s.chars() {
        match c {
            '"' => buf.extend_from_slice(b"\\\""),
            '\\' => buf.extend_from_slice(b"\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(buf, "\\u{:04x}", c as u32);
            }
            c => {
                let mut utf8 = [0; 4];
                buf.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            }
        }
    }
    buf.push(b'"');
}

/// RFC 3339 UTC with microseconds, as `tracing_subscriber` prints it.
fn write_timestamp(buf: &mut Vec<u8>, now: SystemTime) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let _ = write!(
        buf,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_micros()
    );
}

/// `secs` since the epoch as `YYYY-MM-DDTHH:MM:SSZ`, for reports people read.
pub fn utc_seconds(secs: u64) -> String {
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        let mut buf = Vec::new();
        json_string(&mut buf, "a\"b\\c\n\u{1}é");
        assert_eq!(String::from_utf8(buf).unwrap(), r#""a\"b\\c\u000a\u0001é""#);
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let mut buf = Vec::new();
        write_timestamp(
            &mut buf,
            UNIX_EPOCH + Duration::from_micros(1_764_038_681_123_456),
        );
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "2025-11-25T02:44:41.123456Z"
        );
        let mut buf = Vec::new();
        write_timestamp(&mut buf, UNIX_EPOCH + Duration::from_secs(951_782_400));
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "2000-02-29T00:00:00.000000Z"
        );
    }
}
