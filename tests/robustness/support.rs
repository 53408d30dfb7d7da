//! Helpers of the robustness suite: sizes by mode, a seeded generator, a keep-alive
//! client, process figures from /proc, and the figures line itself.
#![allow(dead_code)]

use std::io::{self, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::common::{self, NarInfo, Response};

/// The store directory of every fixture.
pub const STORE: &str = "/nix/store";

/// Whether the long version runs (`NIX_STORED_ROBUST_FULL=1`).
pub fn full() -> bool {
    std::env::var("NIX_STORED_ROBUST_FULL").as_deref() == Ok("1")
}

/// `quick` in the default run, `long` with `NIX_STORED_ROBUST_FULL=1`.
pub fn by_mode<T>(quick: T, long: T) -> T {
    if full() {
        long
    } else {
        quick
    }
}

/// A setting read from the environment, for replaying or stretching one test.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Prints one figures line. libtest captures `print!`/`eprint!` of passing tests;
/// these lines are what the suite is for, so they go to the process's stderr
/// directly and show in every run.
pub fn figures(test: &str, line: std::fmt::Arguments<'_>) {
    let _ = writeln!(io::stderr().lock(), "robustness: {test}: {line}");
}

/// The seed of a test's generator: `NIX_STORED_ROBUST_SEED`, or the clock. Printed
/// so that a failing run can be replayed.
pub fn seed() -> u64 {
    env_or(
        "NIX_STORED_ROBUST_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    )
}

/// SplitMix64: fast, seedable, good enough to pick sizes, moments and mutations.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo)
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = vec![0u8; n];
        let mut chunks = out.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
        out
    }

    /// `n` random printable ASCII characters.
    pub fn text(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| (b' ' + self.below(95) as u8) as char)
            .collect()
    }

    /// Random bytes, as many as [`Rng::log_size`] picks.
    pub fn bytes_log(&mut self, lo: u64, hi: u64) -> Vec<u8> {
        let n = self.log_size(lo, hi) as usize;
        self.bytes(n)
    }

    /// Random text, as long as [`Rng::log_size`] picks.
    pub fn text_log(&mut self, lo: u64, hi: u64) -> String {
        let n = self.log_size(lo, hi) as usize;
        self.text(n)
    }

    /// Random bytes, a uniform count in `lo..hi`.
    pub fn bytes_in(&mut self, lo: u64, hi: u64) -> Vec<u8> {
        let n = self.range(lo, hi) as usize;
        self.bytes(n)
    }

    /// A size between `lo` and `hi`, uniform in its logarithm: mostly small ones.
    pub fn log_size(&mut self, lo: u64, hi: u64) -> u64 {
        let (l, h) = ((lo.max(1) as f64).ln(), (hi.max(2) as f64).ln());
        let x = l + (h - l) * (self.below(1 << 30) as f64 / (1u64 << 30) as f64);
        (x.exp() as u64).clamp(lo, hi)
    }
}

/// nix32 SHA-256 of `bytes`, the digest the suite compares bodies by.
pub fn digest(bytes: &[u8]) -> String {
    common::nix32_sha256(bytes)
}

/// nix32 SHA-256 of a file, streamed.
pub fn file_digest(path: &Path) -> io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    io::copy(&mut f, &mut h)?;
    Ok(nix_derivation::nixbase32::encode(&h.finalize()))
}

/// A path to upload: its NAR and a narinfo pointing at it.
pub struct PathFixture {
    pub hash: String,
    pub name: String,
    pub nar: Vec<u8>,
    pub info: NarInfo,
}

impl PathFixture {
    /// A path whose NAR wraps `contents`, referencing the base names `refs`.
    pub fn new(seed: &str, contents: &[u8], refs: &[&str]) -> Self {
        let hash = common::store_hash(seed);
        let name = format!("r-{}", &common::store_hash(&format!("{seed}/name"))[..8]);
        let nar = common::nar_of(contents);
        let info = NarInfo::uncompressed(STORE, &hash, &name, &nar, refs);
        PathFixture {
            hash,
            name,
            nar,
            info,
        }
    }

    pub fn basename(&self) -> String {
        format!("{}-{}", self.hash, self.name)
    }

    pub fn nar_key(&self) -> String {
        format!("/nar/{}.nar", digest(&self.nar))
    }

    pub fn narinfo_key(&self) -> String {
        format!("/{}.narinfo", self.hash)
    }
}

/// A connection to the IPv4 `addr` from the local address `local` (on Linux any of
/// 127.0.0.0/8 is a loopback address: a second client address on one machine), with
/// read and write timeouts set.
pub fn connect_from(local: Ipv4Addr, addr: SocketAddr) -> io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(dest) = addr else {
        return Err(io::Error::other("connect_from: IPv4 only"));
    };
    let sockaddr = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor owned by `stream` from its creation
    // on, with sockaddr_in values that live across each call.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let from = sockaddr(local, 0);
        if libc::bind(fd, (&from as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(io::Error::last_os_error());
        }
        let to = sockaddr(*dest.ip(), dest.port());
        if libc::connect(fd, (&to as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(io::Error::last_os_error());
        }
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        stream.set_write_timeout(Some(Duration::from_secs(60)))?;
        Ok(stream)
    }
}

/// A keep-alive HTTP/1.1 connection that reconnects when the server closed it.
pub struct Conn {
    addr: SocketAddr,
    auth: Option<String>,
    /// The local address to connect from; the kernel's choice when `None`.
    local: Option<Ipv4Addr>,
    reader: Option<BufReader<TcpStream>>,
}

impl Conn {
    pub fn new(addr: SocketAddr) -> Self {
        Conn {
            addr,
            auth: None,
            local: None,
            reader: None,
        }
    }

    /// Connects from `local` (see [`connect_from`]).
    pub fn with_local(mut self, local: Ipv4Addr) -> Self {
        self.local = Some(local);
        self
    }

    /// Sends `Authorization: value` with every request.
    pub fn with_auth(mut self, value: &str) -> Self {
        self.auth = Some(value.to_owned());
        self
    }

    /// One request; a connection the server closed (after an error answer, or an
    /// idle timeout) is replaced once.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Response> {
        let fresh = self.reader.is_none();
        match self.try_request(method, path, headers, body) {
            Ok(r) => Ok(r),
            Err(_) if !fresh => {
                self.reader = None;
                self.try_request(method, path, headers, body)
            }
            Err(e) => Err(e),
        }
    }

    fn try_request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Response> {
        if self.reader.is_none() {
            let stream = match self.local {
                Some(local) => connect_from(local, self.addr)?,
                None => common::try_connect(self.addr)?,
            };
            self.reader = Some(BufReader::new(stream));
        }
        let Some(reader) = self.reader.as_mut() else {
            return Err(io::Error::other("no connection"));
        };
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        if let Some(a) = &self.auth {
            head.push_str(&format!("Authorization: {a}\r\n"));
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if method == "PUT" || !body.is_empty() {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body);
        let result = reader
            .get_mut()
            .write_all(&bytes)
            .and_then(|()| common::read_response(reader, method == "HEAD"));
        match &result {
            Ok(r)
                if r.header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close")) =>
            {
                self.reader = None
            }
            Ok(_) => {}
            Err(_) => self.reader = None,
        }
        result
    }

    pub fn get(&mut self, path: &str) -> io::Result<Response> {
        self.request("GET", path, &[], b"")
    }

    pub fn head(&mut self, path: &str) -> io::Result<Response> {
        self.request("HEAD", path, &[], b"")
    }

    pub fn put(&mut self, path: &str, body: &[u8]) -> io::Result<Response> {
        self.request("PUT", path, &[], body)
    }
}

/// Uploads a path's NAR and narinfo; `Err` with the answer that was not a 2xx.
pub fn upload(conn: &mut Conn, p: &PathFixture) -> Result<(), String> {
    for (key, body) in [
        (p.nar_key(), p.nar.clone()),
        (p.narinfo_key(), p.info.render().into_bytes()),
    ] {
        match conn.put(&key, &body) {
            Ok(r) if r.status == 201 || r.status == 204 => {}
            Ok(r) => return Err(format!("PUT {key}: {} {}", r.status, r.text())),
            Err(e) => return Err(format!("PUT {key}: {e}")),
        }
    }
    Ok(())
}

/// Open descriptors of a process.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Resident memory of a process in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Whether the process is still running (not exited, not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Reads whatever a connection sends until EOF, an error or `limit` of silence.
pub fn read_all_until_quiet(stream: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let _ = stream.set_read_timeout(Some(limit));
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Files in `dir/.tmp` (uploads in progress or leftovers).
pub fn temp_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join(".tmp")).map_or(0, |d| d.count())
}

/// A tmpfs of `size` mounted for one test, unmounted on drop.
pub struct Tmpfs {
    pub path: std::path::PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`64m`). When that is impossible (not root, no
    /// mount namespace rights), says why and returns `None`, unless
    /// `NIX_STORED_REQUIRE_MOUNT=1` (set by scripts/test.sh), which makes it a
    /// failure: the full-disk test must not be skipped silently.
    pub fn mount(test: &str, size: &str) -> Option<Self> {
        let path = common::temp_dir("tmpfs");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output();
        let why = match out {
            Ok(o) if o.status.success() => return Some(Tmpfs { path }),
            Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_owned(),
            Err(e) => format!("cannot run mount: {e}"),
        };
        let _ = std::fs::remove_dir(&path);
        assert!(
            std::env::var("NIX_STORED_REQUIRE_MOUNT").as_deref() != Ok("1"),
            "{test}: cannot mount a tmpfs ({why}) but NIX_STORED_REQUIRE_MOUNT=1"
        );
        figures(
            test,
            format_args!("SKIPPED: cannot mount a tmpfs ({why}); run as root"),
        );
        None
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
        let _ = std::fs::remove_dir(&self.path);
    }
}
