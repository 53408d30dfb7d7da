//! A small HTTP/1.1 load generator for what wrk cannot measure: HEAD requests.
//!
//! wrk's response parser does not know which method it sent, so after a HEAD answer
//! that carries the Content-Length of the would-be body it waits for bytes that never
//! come. This one knows: a HEAD answer ends with its header block.
//!
//! Built like wrk: one thread, non-blocking keep-alive connections driven by epoll, one
//! request in flight per connection (no pipelining), the next requests written after each
//! batch of answers (as wrk's event loop does: the server then gets them in bursts), a new
//! random key per request. Standard library only (epoll
//! through libc, which std links anyway); bench.py builds it with `rustc -O`.
//!
//! Keys: `miss` (random 32-character nix32 hashes), `keys=FILE` (uniformly among the
//! lines of FILE), or `zipf=S:FILE` (the line of rank k with probability ∝ 1/k^S, as
//! skewed traffic asks for popular paths; the first line is the most popular). The
//! Zipf sequence comes from a table of the cumulative weights, built once, and a
//! binary search per request (about 20 comparisons for a million keys), with a fixed
//! seed: every server gets the same sequence.
//!
//! Usage: loadgen ADDR METHOD CONNECTIONS SECONDS (miss | keys=FILE | zipf=S:FILE) [SUFFIX]
//! Prints one JSON object: requests, seconds, rps, p50_ms, p99_ms, statuses, errors.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

#[cfg_attr(target_arch = "x86_64", repr(C, packed))]
#[cfg_attr(not(target_arch = "x86_64"), repr(C))]
#[derive(Clone, Copy)]
struct EpollEvent {
    events: u32,
    data: u64,
}

extern "C" {
    fn epoll_create1(flags: i32) -> i32;
    fn epoll_ctl(epfd: i32, op: i32, fd: i32, event: *mut EpollEvent) -> i32;
    fn epoll_wait(epfd: i32, events: *mut EpollEvent, maxevents: i32, timeout: i32) -> i32;
}

const EPOLLIN: u32 = 0x1;
const EPOLLOUT: u32 = 0x4;
const EPOLLERR: u32 = 0x8;
const EPOLLHUP: u32 = 0x10;
const EPOLL_CTL_ADD: i32 = 1;
const EPOLL_CTL_MOD: i32 = 3;
const ALPHABET: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";

struct Conn {
    stream: TcpStream,
    out: Vec<u8>,
    written: usize,
    buf: Vec<u8>,
    start: Instant,
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

enum Keys {
    Miss,
    List(Vec<String>),
    /// Keys by rank, and the cumulative weights of the ranks (the last one is the total).
    Zipf(Vec<String>, Vec<f64>),
}

fn read_keys(file: &str) -> Vec<String> {
    let keys: Vec<String> = std::fs::read_to_string(file)
        .unwrap_or_else(|e| die(&format!("{file}: {e}")))
        .lines()
        .map(str::to_owned)
        .collect();
    if keys.is_empty() {
        die(&format!("{file}: no keys"));
    }
    keys
}

/// Cumulative weights 1/k^s of the ranks 1..=n.
fn zipf_cdf(n: usize, s: f64) -> Vec<f64> {
    let mut total = 0.0;
    (1..=n)
        .map(|k| {
            total += (k as f64).powf(-s);
            total
        })
        .collect()
}

fn die(msg: &str) -> ! {
    eprintln!("loadgen: {msg}");
    std::process::exit(2);
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses one complete answer at the start of `buf`: (status, bytes used, keep-alive).
fn parse(buf: &[u8], head: bool) -> Result<Option<(u16, usize, bool)>, String> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| "header block is not UTF-8".to_string())?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut length: Option<usize> = None;
    let mut keep_alive = status_line.starts_with("HTTP/1.1");
    for line in lines {
        let (name, value) = line.split_once(':').ok_or_else(|| format!("bad header {line:?}"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse().map_err(|_| format!("bad length {value:?}"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(format!("transfer-encoding {value} is not supported"));
        } else if name.eq_ignore_ascii_case("connection") {
            keep_alive = !value.eq_ignore_ascii_case("close");
        }
    }
    let body = if head || status == 204 || status == 304 {
        0
    } else {
        length.ok_or("answer without Content-Length")?
    };
    let total = end + 4 + body;
    Ok((buf.len() >= total).then_some((status, total, keep_alive)))
}

fn ctl(ep: i32, op: i32, fd: i32, events: u32, index: usize) {
    let mut ev = EpollEvent { events, data: index as u64 };
    // SAFETY: `ev` is a valid epoll_event for the duration of the call.
    if unsafe { epoll_ctl(ep, op, fd, &mut ev) } < 0 {
        die(&format!("epoll_ctl: {}", std::io::Error::last_os_error()));
    }
}

fn connect(addr: &str, ep: i32, index: usize) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap_or_else(|e| die(&format!("connect {addr}: {e}")));
    stream.set_nodelay(true).ok();
    stream.set_nonblocking(true).unwrap_or_else(|e| die(&format!("nonblocking: {e}")));
    ctl(ep, EPOLL_CTL_ADD, stream.as_raw_fd(), EPOLLIN, index);
    stream
}

/// Writes as much of the pending request as the socket takes; Err when the connection broke.
fn flush(c: &mut Conn, ep: i32, index: usize) -> Result<(), ()> {
    while c.written < c.out.len() {
        match c.stream.write(&c.out[c.written..]) {
            Ok(0) => return Err(()),
            Ok(k) => c.written += k,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                ctl(ep, EPOLL_CTL_MOD, c.stream.as_raw_fd(), EPOLLIN | EPOLLOUT, index);
                return Ok(());
            }
            Err(_) => return Err(()),
        }
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 6 {
        die("usage: loadgen ADDR METHOD CONNECTIONS SECONDS (miss | keys=FILE | zipf=S:FILE) [SUFFIX]");
    }
    let addr = args[1].clone();
    let method = args[2].clone();
    let head = method == "HEAD";
    let conns: usize = args[3].parse().unwrap_or_else(|_| die("bad connection count"));
    let seconds: f64 = args[4].parse().unwrap_or_else(|_| die("bad duration"));
    let keys = if let Some(file) = args[5].strip_prefix("keys=") {
        Keys::List(read_keys(file))
    } else if let Some(spec) = args[5].strip_prefix("zipf=") {
        let (s, file) = spec.split_once(':').unwrap_or_else(|| die("zipf=S:FILE"));
        let s: f64 = s.parse().unwrap_or_else(|_| die("bad Zipf exponent"));
        let list = read_keys(file);
        let cdf = zipf_cdf(list.len(), s);
        Keys::Zipf(list, cdf)
    } else if args[5] == "miss" {
        Keys::Miss
    } else {
        die("keys must be `miss`, `keys=FILE` or `zipf=S:FILE`")
    };
    let suffix = args.get(6).cloned().unwrap_or_else(|| ".narinfo".into());
    // A fixed seed for the Zipf sequence (the same requests for every server); the
    // others differ from run to run.
    let seed = match keys {
        Keys::Zipf(..) => 0x2545_f491_4f6c_dd1d,
        _ => 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()),
    };
    let mut rng = Rng(seed);
    let request = |rng: &mut Rng| -> Vec<u8> {
        let key = match &keys {
            Keys::Miss => (0..32).map(|_| ALPHABET[(rng.next() >> 59) as usize] as char).collect::<String>(),
            Keys::List(list) => list[(rng.next() % list.len() as u64) as usize].clone(),
            Keys::Zipf(list, cdf) => {
                // A uniform draw in [0, total), then the first rank whose cumulative
                // weight exceeds it.
                let u = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
                let x = u * cdf[cdf.len() - 1];
                let rank = cdf.partition_point(|&c| c <= x).min(list.len() - 1);
                list[rank].clone()
            }
        };
        format!("{method} /{key}{suffix} HTTP/1.1\r\nHost: {addr}\r\n\r\n").into_bytes()
    };

    // SAFETY: plain syscall.
    let ep = unsafe { epoll_create1(0) };
    if ep < 0 {
        die(&format!("epoll_create1: {}", std::io::Error::last_os_error()));
    }
    let mut cs: Vec<Conn> = (0..conns)
        .map(|i| Conn {
            stream: connect(&addr, ep, i),
            out: Vec::new(),
            written: 0,
            buf: Vec::with_capacity(8192),
            start: Instant::now(),
        })
        .collect();
    let mut latencies: Vec<u32> = Vec::with_capacity(1 << 20);
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    let mut errors = 0u64;
    let mut chunk = vec![0u8; 65536];
    let mut events = vec![EpollEvent { events: 0, data: 0 }; 256];
    let mut ready: Vec<usize> = Vec::with_capacity(conns);
    let began = Instant::now();
    let end = began + Duration::from_secs_f64(seconds);
    for (i, c) in cs.iter_mut().enumerate() {
        c.out = request(&mut rng);
        c.written = 0;
        c.start = Instant::now();
        if flush(c, ep, i).is_err() {
            die("cannot send the first request");
        }
    }

    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let wait = (end - now).as_millis().clamp(1, 100) as i32;
        // SAFETY: `events` is a live array of `events.len()` epoll_event structs.
        let n = unsafe { epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, wait) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            die(&format!("epoll_wait: {e}"));
        }
        ready.clear();
        for ev in &events[..n as usize] {
            let (flags, i) = (ev.events, ev.data as usize);
            let c = &mut cs[i];
            let mut broken = false;
            let mut eof = false;
            if flags & EPOLLOUT != 0 {
                match flush(c, ep, i) {
                    Ok(()) if c.written == c.out.len() => ctl(ep, EPOLL_CTL_MOD, c.stream.as_raw_fd(), EPOLLIN, i),
                    Ok(()) => {}
                    Err(()) => broken = true,
                }
            }
            if flags & (EPOLLIN | EPOLLERR | EPOLLHUP) != 0 && !broken {
                // One read is nearly always the whole answer; read on only while it is incomplete.
                let mut parsed = None;
                loop {
                    match c.stream.read(&mut chunk) {
                        Ok(0) => {
                            eof = true;
                            break;
                        }
                        Ok(k) => {
                            c.buf.extend_from_slice(&chunk[..k]);
                            let p = parse(&c.buf, head);
                            let complete = !matches!(p, Ok(None));
                            parsed = Some(p);
                            if complete {
                                break;
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(_) => {
                            broken = true;
                            break;
                        }
                    }
                }
                match parsed.unwrap_or_else(|| parse(&c.buf, head)) {
                    Ok(Some((status, used, keep_alive))) => {
                        let done = Instant::now();
                        if done <= end {
                            latencies.push(done.duration_since(c.start).as_micros().min(u32::MAX as u128) as u32);
                            *statuses.entry(status).or_default() += 1;
                        }
                        c.buf.drain(..used);
                        if !c.buf.is_empty() {
                            die("the server sent bytes after a complete answer");
                        }
                        if !keep_alive || eof {
                            c.stream = connect(&addr, ep, i);
                            eof = false;
                        }
                        // The next request goes out after this batch of events, as wrk's does.
                        ready.push(i);
                    }
                    Ok(None) if eof => broken = true,
                    Ok(None) => {}
                    Err(e) => die(&e),
                }
            }
            if broken || eof {
                // The server closed or reset the connection mid-request: count it, start over.
                errors += 1;
                c.stream = connect(&addr, ep, i);
                c.buf.clear();
                c.out = request(&mut rng);
                c.written = 0;
                c.start = Instant::now();
                if flush(c, ep, i).is_err() {
                    die("cannot send a request on a new connection");
                }
            }
        }
        for &i in &ready {
            let c = &mut cs[i];
            c.out = request(&mut rng);
            c.written = 0;
            c.start = Instant::now();
            if flush(c, ep, i).is_err() {
                // Broken on write: start over on a new connection.
                errors += 1;
                c.stream = connect(&addr, ep, i);
                c.buf.clear();
                c.written = 0;
                if flush(c, ep, i).is_err() {
                    die("cannot send a request on a new connection");
                }
            }
        }
    }
    let secs = began.elapsed().as_secs_f64().min(seconds.max(1e-9));
    latencies.sort_unstable();
    let pct = |q: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        f64::from(latencies[i]) / 1000.0
    };
    let statuses: Vec<String> = statuses.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect();
    println!(
        "{{\"requests\": {}, \"seconds\": {:.3}, \"rps\": {:.1}, \"p50_ms\": {:.3}, \"p99_ms\": {:.3}, \"statuses\": {{{}}}, \"errors\": {}}}",
        latencies.len(),
        secs,
        latencies.len() as f64 / secs,
        pct(0.50),
        pct(0.99),
        statuses.join(", "),
        errors
    );
}
