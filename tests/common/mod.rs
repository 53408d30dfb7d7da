//! Shared helpers of the black-box tests: start the real `nix-stored` binary on an
//! ephemeral port and talk to it over a raw HTTP/1.1 socket.
//!
//! The client is deliberately a plain `TcpStream`: request targets such as
//! `/../etc/passwd`, `/nar/%2e%2e/x` or a NUL byte must reach the server exactly as
//! written, which ordinary HTTP clients would normalise or refuse.
//!
//! Nothing here re-implements server logic: fixtures (NAR bytes, narinfo text,
//! signatures) are built directly from the formats Nix documents.
#![allow(dead_code)]

#[cfg(feature = "s3")]
mod garage;
pub mod nix;
#[cfg(feature = "tls")]
pub mod tls;

#[cfg(feature = "s3")]
pub use garage::garage;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// How long a server gets to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Read timeout of the raw client (a hung server fails the test instead of hanging it).
const IO_TIMEOUT: Duration = Duration::from_secs(60);

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A unique, empty directory under `std::env::temp_dir()`.
pub fn temp_dir(tag: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "nix-stored-it-{tag}-{}-{n}-{nanos}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

// ---------------------------------------------------------------------------------
// Storage backends: the same tests run against a directory and against S3 (a real
// Garage server).

/// Whether the servers of this run use the S3 backend: `NIX_STORED_TEST_BACKEND=s3`
/// (scripts/test.sh runs the protocol, integrity, auth and Nix tests a second time so).
pub fn s3_backend() -> bool {
    let s3 = std::env::var("NIX_STORED_TEST_BACKEND").is_ok_and(|b| b == "s3");
    assert!(
        !s3 || cfg!(feature = "s3"),
        "NIX_STORED_TEST_BACKEND=s3, but the tests were built without the s3 feature"
    );
    s3
}

/// Prints why a test does not apply to S3 and returns `true` when running against it.
pub fn fs_only(reason: &str) -> bool {
    if s3_backend() {
        eprintln!("skipped for the S3 backend: {reason}");
    }
    s3_backend()
}

/// Prints why a test applies to S3 only and returns `true` when running against a
/// directory.
pub fn s3_only(reason: &str) -> bool {
    if !s3_backend() {
        eprintln!("skipped for the filesystem backend: {reason}");
    }
    !s3_backend()
}

/// Where a server keeps its objects: a directory, or a prefix of the test bucket.
#[derive(Clone, Debug)]
pub enum Store {
    /// A cache directory (the filesystem backend).
    Dir(PathBuf),
    /// A key prefix in the shared Garage bucket (the S3 backend).
    #[cfg(feature = "s3")]
    S3(String),
}

impl Store {
    /// A fresh, empty store of the backend this run tests.
    pub fn fresh(tag: &str) -> Store {
        #[cfg(feature = "s3")]
        if s3_backend() {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            return Store::S3(format!("{tag}-{}-{n}-{nanos}", std::process::id()));
        }
        Store::Dir(temp_dir(tag))
    }

    /// Every stored object, relative, sorted (in a directory: also uploads in progress
    /// under `.tmp/`).
    pub fn files(&self) -> Vec<String> {
        match self {
            Store::Dir(d) => files_below(d),
            #[cfg(feature = "s3")]
            Store::S3(p) => garage().list(p),
        }
    }

    /// The stored NARs (`nar/…`), sorted.
    pub fn nars(&self) -> Vec<String> {
        let mut files = self.files();
        files.retain(|f| f.starts_with("nar/"));
        files
    }

    /// Uploads begun and not finished: temporary files, or multipart uploads.
    pub fn pending(&self) -> Vec<String> {
        match self {
            Store::Dir(d) => files_below(&d.join(".tmp")),
            #[cfg(feature = "s3")]
            Store::S3(p) => garage().pending_uploads(p),
        }
    }

    /// The object under `key` (relative, no leading `/`), if any.
    pub fn read(&self, key: &str) -> Option<Vec<u8>> {
        let key = key.trim_start_matches('/');
        match self {
            Store::Dir(d) => std::fs::read(d.join(key)).ok(),
            #[cfg(feature = "s3")]
            Store::S3(p) => garage().read(p, key),
        }
    }

    /// Whether an object exists under `key`.
    pub fn exists(&self, key: &str) -> bool {
        self.read(key).is_some()
    }

    /// Stores an object directly, as another tool would (`nix copy --to file://` or
    /// `s3://`).
    pub fn write(&self, key: &str, bytes: &[u8]) {
        let key = key.trim_start_matches('/');
        match self {
            Store::Dir(d) => {
                let path = d.join(key);
                std::fs::create_dir_all(path.parent().expect("key has a parent"))
                    .expect("create parent");
                std::fs::write(path, bytes).expect("write object");
            }
            #[cfg(feature = "s3")]
            Store::S3(p) => garage().write(p, key, bytes),
        }
    }

    /// The Nix store URL of this store, for Nix's own binary cache stores.
    pub fn nix_url(&self) -> String {
        match self {
            Store::Dir(d) => format!("file://{}", d.display()),
            #[cfg(feature = "s3")]
            Store::S3(p) => {
                let g = garage();
                let host = g.endpoint.trim_start_matches("http://");
                format!(
                    "s3://{}/{p}?endpoint={host}&scheme=http&region={}",
                    g.bucket, g.region
                )
            }
        }
    }

    /// The directory of a filesystem store.
    pub fn dir(&self) -> Option<&Path> {
        match self {
            Store::Dir(d) => Some(d),
            #[cfg(feature = "s3")]
            Store::S3(_) => None,
        }
    }

    /// Removes a directory store (S3 prefixes go with the Garage of the run).
    pub fn remove(&self) {
        if let Some(d) = self.dir() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Configuration of one server process.
pub struct ServerBuilder {
    env: Vec<(String, String)>,
    args: Vec<String>,
    store: Option<Store>,
}

impl Default for ServerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerBuilder {
    /// Fresh temporary store dir, log level info, listening on 127.0.0.1:0, anonymous
    /// uploads on.
    pub fn new() -> Self {
        ServerBuilder {
            env: vec![
                ("NIX_STORED_LOG_LEVEL".into(), "info".into()),
                ("NIX_STORED_LISTEN_INTERFACE".into(), "127.0.0.1:0".into()),
                // Most tests upload without credentials; tests/auth.rs covers the default.
                ("NIX_STORED_ANONYMOUS_WRITES".into(), "true".into()),
            ],
            args: Vec::new(),
            store: None,
        }
    }

    /// Sets (or replaces) one environment variable of the server.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Removes an environment variable (including the defaults set by `new`).
    pub fn env_remove(mut self, key: &str) -> Self {
        self.env.retain(|(k, _)| k != key);
        self
    }

    /// Adds a command-line argument.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_owned());
        self
    }

    /// Uses `dir` as the store directory instead of a fresh one (it is not removed);
    /// the filesystem backend, whatever backend the run tests.
    pub fn dir(mut self, dir: &Path) -> Self {
        self.store = Some(Store::Dir(dir.to_path_buf()));
        self
    }

    /// Uses `store` instead of a fresh store (it is not removed).
    pub fn store(mut self, store: &Store) -> Self {
        self.store = Some(store.clone());
        self
    }

    fn command(&self, store: &Store) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nix-stored"));
        // Settings of the environment the tests run in must not leak into the server.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("NIX_STORED_") {
                cmd.env_remove(k);
            }
        }
        match store {
            Store::Dir(dir) => {
                cmd.env("NIX_STORED_PATH", dir);
            }
            #[cfg(feature = "s3")]
            Store::S3(prefix) => {
                cmd.envs(garage().server_env(prefix));
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    }

    /// Spawns the server and waits (at most 20 s) for its `listening on http://` (or
    /// `https://`) line; panics with the log otherwise.
    pub fn start(self) -> Server {
        let owns_dir = self.store.is_none();
        let store = self.store.clone().unwrap_or_else(|| Store::fresh("store"));
        let dir = match &store {
            Store::Dir(d) => d.clone(),
            // Not used by an S3 server; kept so that `Server::dir` always exists.
            #[cfg(feature = "s3")]
            Store::S3(_) => temp_dir("unused"),
        };
        let mut child = self.command(&store).spawn().expect("spawn nix-stored");
        let log = Arc::new(Mutex::new(Vec::<String>::new()));
        let (tx, rx) = mpsc::channel::<(&'static str, String)>();
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf)
                            .trim_end_matches(['\n', '\r'])
                            .to_owned();
                        for scheme in ["http", "https"] {
                            let marker = format!("listening on {scheme}://");
                            if let Some(rest) = line.split(&marker).nth(1) {
                                let addr: String = rest
                                    .chars()
                                    .take_while(|c| !c.is_whitespace() && *c != '/' && *c != '"')
                                    .collect();
                                let _ = tx.send((scheme, addr));
                            }
                        }
                        sink.lock().unwrap().push(line);
                    }
                }
            }
        });
        let (scheme, mut addr) = match rx.recv_timeout(START_TIMEOUT) {
            Ok((scheme, a)) => match a.parse::<SocketAddr>() {
                Ok(addr) => (scheme, addr),
                Err(e) => {
                    // A leaked server would keep the build lock's descriptor open.
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("bad listening address {a:?}: {e}")
                }
            },
            Err(_) => {
                let _ = child.kill();
                let status = child.wait();
                // Give the reader thread a moment to collect the last lines.
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "server did not report `listening on http://` (exit: {status:?}); log:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        // Listening on every address (`0.0.0.0`, `[::]`): connect through loopback.
        if addr.ip().is_unspecified() {
            let ip: std::net::IpAddr = if addr.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            };
            addr.set_ip(ip);
        }
        Server {
            addr,
            scheme,
            dir,
            store,
            owns_dir,
            child: Some(child),
            log,
        }
    }

    /// Runs a server that is expected to refuse its configuration: waits for it to
    /// exit (killing it after 20 s) and returns its exit status and stderr.
    pub fn start_expect_failure(self) -> (ExitStatus, String) {
        let owns_dir = self.store.is_none();
        let store = self
            .store
            .clone()
            .unwrap_or_else(|| Store::Dir(temp_dir("store")));
        let mut child = self.command(&store).spawn().expect("spawn nix-stored");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let reader = std::thread::spawn(move || {
            let mut out = Vec::new();
            let _ = stderr.read_to_end(&mut out);
            String::from_utf8_lossy(&out).into_owned()
        });
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let err = reader.join().unwrap_or_default();
                panic!("server was expected to exit but kept running; log:\n{err}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let err = reader.join().unwrap_or_default();
        if owns_dir {
            store.remove();
        }
        (status, err)
    }
}

/// A running server; killed (and its own temp dir removed) on drop.
pub struct Server {
    pub addr: SocketAddr,
    /// `http` or `https`, as the server announced.
    pub scheme: &'static str,
    /// The cache directory (for an S3 server, an unused empty directory).
    pub dir: PathBuf,
    /// Where the server keeps its objects.
    pub store: Store,
    owns_dir: bool,
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// `http://127.0.0.1:PORT` (loopback even when listening on every address), or
    /// `https://…` for a server with a certificate.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// Process id (0 once stopped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Uploads in progress: what [`Store::pending`] lists, and for a directory also
    /// the unnamed files (`O_TMPFILE`) in its `.tmp` that the server holds open, which
    /// no listing shows (so a descriptor an upload leaks is seen too).
    pub fn pending(&self) -> Vec<String> {
        let mut pending = self.store.pending();
        if let (Store::Dir(dir), pid @ 1..) = (&self.store, self.pid()) {
            let tmp = dir.join(".tmp");
            let tmp = std::fs::canonicalize(&tmp).unwrap_or(tmp);
            let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
                .into_iter()
                .flatten();
            for fd in fds.flatten() {
                if let Ok(target) = std::fs::read_link(fd.path()) {
                    if target.starts_with(&tmp) && target != tmp {
                        pending.push(format!("open: {}", target.display()));
                    }
                }
            }
        }
        pending
    }

    /// Every stderr line so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// SIGKILL and wait.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.sigterm();
        self.wait()
    }

    /// Sends SIGTERM without waiting.
    pub fn sigterm(&self) {
        let pid = self.pid();
        assert_ne!(pid, 0, "server already stopped");
        let ok = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(ok.success(), "kill -TERM failed");
    }

    /// Waits for the server to exit (after a signal) and returns its status.
    pub fn wait(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("server already stopped");
        c.wait().expect("wait for server")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        if self.owns_dir || !matches!(self.store, Store::Dir(_)) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// One HTTP answer.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// First header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn read_line(reader: &mut impl BufRead) -> io::Result<String> {
    let mut buf = Vec::new();
    let n = reader.read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a complete line",
        ));
    }
    Ok(String::from_utf8_lossy(&buf)
        .trim_end_matches(['\n', '\r'])
        .to_owned())
}

/// Reads a status line and headers (no body). Interim `1xx` answers are returned too.
pub fn read_head(reader: &mut impl BufRead) -> io::Result<Response> {
    let status_line = read_line(reader)?;
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(bad(format!("bad status line {status_line:?}")));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader)?;
        if line.is_empty() {
            break;
        }
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| bad(format!("bad header line {line:?}")))?;
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    Ok(Response {
        status,
        headers,
        body: Vec::new(),
    })
}

/// Reads the body of `resp` (whose head was just read) according to its framing.
pub fn read_body(
    reader: &mut impl BufRead,
    resp: &mut Response,
    head_request: bool,
) -> io::Result<()> {
    if head_request || resp.status < 200 || resp.status == 204 || resp.status == 304 {
        return Ok(());
    }
    let chunked = resp
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        loop {
            let size_line = read_line(reader)?;
            let size = size_line.split(';').next().unwrap_or("").trim();
            let n = usize::from_str_radix(size, 16)
                .map_err(|_| bad(format!("bad chunk size {size_line:?}")))?;
            if n == 0 {
                // Trailers, then the empty line.
                loop {
                    if read_line(reader)?.is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = resp.body.len();
            resp.body.resize(start + n, 0);
            reader.read_exact(&mut resp.body[start..])?;
            let mut crlf = [0u8; 2];
            reader.read_exact(&mut crlf)?;
        }
    } else if let Some(len) = resp.header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| bad(format!("bad Content-Length {len:?}")))?;
        resp.body.resize(len, 0);
        reader.read_exact(&mut resp.body)?;
    } else {
        reader.read_to_end(&mut resp.body)?;
    }
    Ok(())
}

/// Reads one final answer, skipping interim `1xx` answers.
pub fn read_response(reader: &mut impl BufRead, head_request: bool) -> io::Result<Response> {
    loop {
        let mut resp = read_head(reader)?;
        if (100..200).contains(&resp.status) {
            continue;
        }
        read_body(reader, &mut resp, head_request)?;
        return Ok(resp);
    }
}

/// Opens a connection with read and write timeouts set.
pub fn connect(addr: SocketAddr) -> TcpStream {
    try_connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"))
}

/// Opens a connection with read and write timeouts set, or says why not.
pub fn try_connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

/// Sends `request` byte for byte and reads the answer.
pub fn try_raw_request(addr: SocketAddr, request: &[u8]) -> io::Result<Response> {
    let mut stream = try_connect(addr)?;
    let written = stream.write_all(request);
    let head = request.starts_with(b"HEAD ");
    // A server may answer (413, 401, …) and close before reading the whole body: the
    // answer is what counts, so read it even when the rest of the body could not be sent.
    match read_response(&mut BufReader::new(stream), head) {
        Ok(r) => Ok(r),
        Err(e) => Err(written.err().unwrap_or(e)),
    }
}

/// Sends `request` byte for byte and reads the answer (panics on I/O errors).
pub fn raw_request(addr: SocketAddr, request: &[u8]) -> Response {
    try_raw_request(addr, request).unwrap_or_else(|e| {
        panic!(
            "request {:?} failed: {e}",
            String::from_utf8_lossy(&request[..request.len().min(200)])
        )
    })
}

/// The head of a request: request line, `Host`, `Connection: close`, `headers`, and
/// `Content-Length` for a PUT or a non-empty body (unless `headers` has one).
pub fn request_head(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body_len: Option<u64>,
) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    let has_length = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"));
    if let (Some(len), false) = (body_len, has_length) {
        req.push_str(&format!("Content-Length: {len}\r\n"));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// Sends one request with the usual framing (`Host`, `Content-Length` for PUT,
/// `Connection: close`) and reads the answer.
pub fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let len = (method == "PUT" || !body.is_empty()).then_some(body.len() as u64);
    let mut bytes = request_head(addr, method, path, headers, len);
    bytes.extend_from_slice(body);
    raw_request(addr, &bytes)
}

pub fn get(s: &Server, path: &str) -> Response {
    send(s.addr, "GET", path, &[], b"")
}

pub fn head(s: &Server, path: &str) -> Response {
    send(s.addr, "HEAD", path, &[], b"")
}

pub fn put(s: &Server, path: &str, body: &[u8]) -> Response {
    send(s.addr, "PUT", path, &[], body)
}

/// `Authorization` value for HTTP Basic: `Basic base64(user:pass)`.
pub fn basic(user: &str, pass: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

/// 52-character nix32 rendering of the SHA-256 of `bytes`.
pub fn nix32_sha256(bytes: &[u8]) -> String {
    nix_derivation::nixbase32::encode(&Sha256::digest(bytes))
}

// ---------------------------------------------------------------------------------
// Fixtures.

/// Appends a NAR string: 64-bit LE length, bytes, zero padding to 8.
fn nar_str(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u64).to_le_bytes());
    out.extend_from_slice(b);
    out.resize(out.len() + (8 - b.len() % 8) % 8, 0);
}

/// A NAR whose root is one regular file holding `contents`.
pub fn nar_of(contents: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for tok in [
        &b"nix-archive-1"[..],
        b"(",
        b"type",
        b"regular",
        b"contents",
    ] {
        nar_str(&mut out, tok);
    }
    nar_str(&mut out, contents);
    nar_str(&mut out, b")");
    out
}

/// Every compression Nix writes NARs with: its `Compression:` name and file extension.
pub const COMPRESSIONS: &[(&str, &str)] = &[
    ("xz", ".xz"),
    ("zstd", ".zst"),
    ("bzip2", ".bz2"),
    ("br", ".br"),
    ("lz4", ".lz4"),
    ("lzip", ".lzip"),
];

/// `data` compressed as Nix's `Compression: <compression>` would be (`none` leaves it).
pub fn compress(data: &[u8], compression: &str) -> Vec<u8> {
    let mut out = Vec::new();
    match compression {
        "none" => out.extend_from_slice(data),
        "xz" => {
            let mut e = liblzma::write::XzEncoder::new(out, 6);
            e.write_all(data).unwrap();
            out = e.finish().unwrap();
        }
        "zstd" => out = zstd::encode_all(data, 3).unwrap(),
        "bzip2" => {
            let mut e = bzip2::write::BzEncoder::new(out, bzip2::Compression::default());
            e.write_all(data).unwrap();
            out = e.finish().unwrap();
        }
        "br" => {
            let mut w = brotli::CompressorWriter::new(&mut out, 4096, 6, 22);
            w.write_all(data).unwrap();
            drop(w);
        }
        "lz4" => {
            let mut e = lz4_flex::frame::FrameEncoder::new(out);
            e.write_all(data).unwrap();
            out = e.finish().unwrap();
        }
        "lzip" => out = lzip(data),
        other => panic!("no encoder for {other}"),
    }
    out
}

/// One lzip member (header, raw LZMA stream with its end marker, trailer), as
/// `lzip` writes it; liblzma only decodes lzip, so the member is put together here.
fn lzip(data: &[u8]) -> Vec<u8> {
    use liblzma::stream::{Action, Filters, LzmaOptions, Stream};
    let dict_log = 20;
    let mut opts = LzmaOptions::new_preset(6).unwrap();
    opts.dict_size(1 << dict_log)
        .literal_context_bits(3)
        .literal_position_bits(0)
        .position_bits(2);
    let mut filters = Filters::new();
    filters.lzma1(&opts);
    let mut stream = Stream::new_raw_encoder(&filters).unwrap();
    let mut lzma = Vec::with_capacity(data.len() / 2 + 4096);
    let mut input = data;
    loop {
        if lzma.capacity() - lzma.len() < 4096 {
            lzma.reserve(1 << 20);
        }
        let before = stream.total_in();
        let status = stream
            .process_vec(input, &mut lzma, Action::Finish)
            .unwrap();
        input = &input[(stream.total_in() - before) as usize..];
        if status == liblzma::stream::Status::StreamEnd {
            break;
        }
    }
    let mut out = b"LZIP\x01".to_vec();
    out.push(dict_log);
    out.extend_from_slice(&lzma);
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    let member = out.len() as u64 + 8;
    out.extend_from_slice(&member.to_le_bytes());
    out
}

/// CRC-32 (IEEE), bit by bit: only the lzip fixtures need it.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xedb8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// The store-path hash alphabet (nix32: no e, o, u, t).
pub const NIX32: &str = "0123456789abcdfghijklmnpqrsvwxyz";

/// A valid 32-character store-path hash part derived from `seed`.
pub fn store_hash(seed: &str) -> String {
    let digest = Sha256::digest(seed.as_bytes());
    nix_derivation::nixbase32::encode(&digest[..20])
}

/// Fields of a narinfo, rendered in Nix's order. Tests tweak fields to break one rule.
#[derive(Clone, Debug)]
pub struct NarInfo {
    pub store_path: String,
    pub url: String,
    pub compression: Option<String>,
    pub file_hash: Option<String>,
    pub file_size: Option<String>,
    pub nar_hash: String,
    pub nar_size: String,
    pub references: Vec<String>,
    pub deriver: Option<String>,
    pub sigs: Vec<String>,
    pub ca: Option<String>,
}

impl NarInfo {
    /// A `Compression: none` narinfo for `<store_dir>/<hash>-<name>` whose NAR is `nar`
    /// (stored at `nar/<fh>.nar`), with the given reference base names.
    pub fn uncompressed(
        store_dir: &str,
        hash: &str,
        name: &str,
        nar: &[u8],
        refs: &[&str],
    ) -> Self {
        let fh = nix32_sha256(nar);
        NarInfo {
            store_path: format!("{store_dir}/{hash}-{name}"),
            url: format!("nar/{fh}.nar"),
            compression: Some("none".into()),
            file_hash: Some(format!("sha256:{fh}")),
            file_size: Some(nar.len().to_string()),
            nar_hash: format!("sha256:{fh}"),
            nar_size: nar.len().to_string(),
            references: refs.iter().map(|r| r.to_string()).collect(),
            deriver: None,
            sigs: Vec::new(),
            ca: None,
        }
    }

    /// A narinfo for `nar` compressed with `compression` (one of [`COMPRESSIONS`]),
    /// and the file to upload at its URL.
    pub fn packed(
        store_dir: &str,
        hash: &str,
        name: &str,
        nar: &[u8],
        compression: &str,
    ) -> (Self, Vec<u8>) {
        let ext = COMPRESSIONS
            .iter()
            .find(|(c, _)| *c == compression)
            .map_or("", |(_, e)| e);
        let file = compress(nar, compression);
        let info = Self::compressed(store_dir, hash, name, nar, &file, compression, ext);
        (info, file)
    }

    /// A narinfo whose file at `nar/<fh>.nar<ext>` is `file` (compressed with
    /// `compression`) and whose uncompressed NAR is `nar`.
    pub fn compressed(
        store_dir: &str,
        hash: &str,
        name: &str,
        nar: &[u8],
        file: &[u8],
        compression: &str,
        ext: &str,
    ) -> Self {
        let fh = nix32_sha256(file);
        let mut info = Self::uncompressed(store_dir, hash, name, nar, &[]);
        info.url = format!("nar/{fh}.nar{ext}");
        info.compression = Some(compression.into());
        info.file_hash = Some(format!("sha256:{fh}"));
        info.file_size = Some(file.len().to_string());
        info
    }

    /// Nix's signature fingerprint:
    /// `1;<StorePath>;<NarHash>;<NarSize>;<sorted full reference paths, comma-separated>`.
    /// (`nar_hash` is already written as `sha256:<nix32>` by the constructors.)
    pub fn fingerprint(&self, store_dir: &str) -> String {
        let mut refs: Vec<String> = self
            .references
            .iter()
            .map(|r| format!("{store_dir}/{r}"))
            .collect();
        refs.sort();
        format!(
            "1;{};{};{};{}",
            self.store_path,
            self.nar_hash,
            self.nar_size,
            refs.join(",")
        )
    }

    /// Adds `Sig: <name>:<base64 ed25519 signature of the fingerprint>`.
    pub fn sign(&mut self, store_dir: &str, name: &str, key: &ed25519_dalek::SigningKey) {
        use base64::Engine as _;
        use ed25519_dalek::Signer as _;
        let sig = key.sign(self.fingerprint(store_dir).as_bytes());
        self.sigs.push(format!(
            "{name}:{}",
            base64::engine::general_purpose::STANDARD.encode(sig.to_bytes())
        ));
    }

    /// The narinfo text, `Key: value\n` lines in Nix's order.
    pub fn render(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!("StorePath: {}\n", self.store_path));
        s.push_str(&format!("URL: {}\n", self.url));
        if let Some(c) = &self.compression {
            s.push_str(&format!("Compression: {c}\n"));
        }
        if let Some(h) = &self.file_hash {
            s.push_str(&format!("FileHash: {h}\n"));
        }
        if let Some(n) = &self.file_size {
            s.push_str(&format!("FileSize: {n}\n"));
        }
        s.push_str(&format!("NarHash: {}\n", self.nar_hash));
        s.push_str(&format!("NarSize: {}\n", self.nar_size));
        s.push_str(&format!("References: {}\n", self.references.join(" ")));
        if let Some(d) = &self.deriver {
            s.push_str(&format!("Deriver: {d}\n"));
        }
        for sig in &self.sigs {
            s.push_str(&format!("Sig: {sig}\n"));
        }
        if let Some(ca) = &self.ca {
            s.push_str(&format!("CA: {ca}\n"));
        }
        s
    }
}

/// `name:base64(public key)` as written in `trusted-public-keys`.
pub fn public_key_line(name: &str, key: &ed25519_dalek::SigningKey) -> String {
    use base64::Engine as _;
    format!(
        "{name}:{}",
        base64::engine::general_purpose::STANDARD.encode(key.verifying_key().to_bytes())
    )
}

/// A deterministic signing key from a seed byte.
pub fn signing_key(seed: u8) -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
}

// ---------------------------------------------------------------------------------
// Directory inspection.

/// Every regular file (and symlink) below `dir`, as relative paths, sorted.
pub fn files_below(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let entry = entry.unwrap();
            let path = entry.path();
            let ft = entry.file_type().unwrap();
            if ft.is_dir() {
                walk(base, &path, out);
            } else {
                out.push(path.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Every entry (files and directories) below `dir`, relative, sorted; directories end in `/`.
pub fn entries_below(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let entry = entry.unwrap();
            let path = entry.path();
            let rel = path.strip_prefix(base).unwrap().display().to_string();
            if entry.file_type().unwrap().is_dir() {
                out.push(format!("{rel}/"));
                walk(base, &path, out);
            } else {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Waits until `s` is visibly writing an upload (a temporary file or a multipart
/// upload); an S3 server sends bodies below one part in a single PUT at the end, so
/// for those a short pause stands in.
pub fn wait_for_upload_start(s: &Server, large: bool) -> bool {
    if !matches!(s.store, Store::Dir(_)) && !large {
        std::thread::sleep(Duration::from_millis(500));
        return true;
    }
    eventually(Duration::from_secs(30), || !s.pending().is_empty())
}

/// Polls `f` every 50 ms for at most `limit` (waits for a state, never asserts timing).
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// The server as systemd starts a socket-activated service: `listener` becomes
/// descriptor 3, `LISTEN_PID` is the server's pid (exec keeps the shell's) and
/// `LISTEN_FDS=1`. The configured address is one this machine cannot bind, so
/// serving at all proves the passed socket was used. Add the store, then spawn.
pub fn socket_activated(listener: &std::net::TcpListener) -> Command {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\"",
        env!("CARGO_BIN_EXE_nix-stored"),
    ])
    .env("NIX_STORED_LISTEN_INTERFACE", "192.0.2.1:8100")
    .env("NIX_STORED_LOG_LEVEL", "info")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    // SAFETY: fcntl and dup2 are async-signal-safe; this runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // When the listener already is descriptor 3, dup2 does nothing and the
            // descriptor keeps its close-on-exec flag: clear it explicitly.
            if fd == 3 {
                if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

// ---------------------------------------------------------------------------------
// Retention.

/// Every narinfo in `store` has its NAR and the narinfos of its references.
///
/// A listing is no snapshot (S3 lists `nar/` before narinfos whose names sort after
/// `n`, so a pair uploaded meanwhile can show as a narinfo without its NAR): what the
/// listing misses is looked up directly, and only a narinfo still there whose object
/// is absent is a broken closure.
pub fn assert_closed(store: &Store) {
    let files = store.files();
    let listed: std::collections::HashSet<&str> = files.iter().map(String::as_str).collect();
    let present = |key: &str| listed.contains(key) || store.exists(key);
    for f in files.iter().filter(|f| f.ends_with(".narinfo")) {
        let Some(bytes) = store.read(f) else { continue };
        let text = String::from_utf8_lossy(&bytes);
        let mut wanted = Vec::new();
        for line in text.lines() {
            if let Some(url) = line.strip_prefix("URL: ") {
                wanted.push(url.to_owned());
            }
            if let Some(refs) = line.strip_prefix("References: ") {
                wanted.extend(
                    refs.split_whitespace()
                        .map(|r| format!("{}.narinfo", &r[..32])),
                );
            }
        }
        for key in wanted {
            if !present(&key) {
                assert!(!store.exists(f), "{f}: {key} is gone");
            }
        }
    }
}

pub fn metric(s: &Server, name: &str) -> u64 {
    let text = get(s, "/metrics").text();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Waits (at most 60 s) until `n` more passes than `after` finished.
pub fn wait_passes(s: &Server, after: u64, n: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let passes = metric(s, "nix_stored_retention_passes_total");
        if passes >= after + n {
            return passes;
        }
        assert!(
            Instant::now() < deadline,
            "no retention pass; log:\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------
// The real Nix client.

/// A `nix.conf` for test clients: no substituters but the ones a test passes, every
/// signature checked, no narinfo caching between requests, and a download stalled for
/// `stalled_secs` seconds given up.
pub fn nix_conf(stalled_secs: u32) -> String {
    format!(
        "build-users-group =
experimental-features = nix-command
substituters =
require-sigs = true
sandbox = false
connect-timeout = 5
stalled-download-timeout = {stalled_secs}
narinfo-cache-negative-ttl = 0
narinfo-cache-positive-ttl = 0
"
    )
}

/// Whether `prog` (nginx, caddy, … for the proxy tests) runs; prints why the test is
/// skipped when it does not, and fails instead under NIX_STORED_REQUIRE_PROXIES=1
/// (which the project's test command sets, so that CI can never skip them silently).
pub fn tool_installed(prog: &str, version_arg: &str, install: &str) -> bool {
    let ok = Command::new(prog)
        .arg(version_arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        assert!(
            std::env::var("NIX_STORED_REQUIRE_PROXIES").as_deref() != Ok("1"),
            "{prog} is not installed but NIX_STORED_REQUIRE_PROXIES=1"
        );
        eprintln!("SKIPPED: {prog} not installed ({install})");
    }
    ok
}
