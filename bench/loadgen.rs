//! A small HTTP/1.1 load generator for what wrk cannot measure: HEAD requests, request
//! targets that differ per request (presigned S3 URLs), redirects followed to another
//! server, and uploads made of several requests (S3 multipart uploads).
//!
//! wrk's response parser does not know which method it sent, so after a HEAD answer
//! that carries the Content-Length of the would-be body it waits for bytes that never
//! come. This one knows: a HEAD answer ends with its header block.
//!
//! Built like wrk: one thread, non-blocking keep-alive connections driven by epoll, one
//! request in flight per connection (no pipelining), the next requests written after each
//! batch of answers (as wrk's event loop does: the server then gets them in bursts), a new
//! random key per request. Bodies are counted as they arrive, not kept, so that answers
//! of hundreds of MiB cost no memory. Standard library only (epoll through libc, which
//! std links anyway); bench.py builds it with `rustc -O`.
//!
//! Usage: loadgen ADDR METHOD CONNECTIONS SECONDS (miss | keys=FILE | zipf=S:FILE | plan=FILE) [SUFFIX]
//!                [follow] [body=FILE]
//!
//! - `keys=FILE`: one key a line, drawn at random per request; the target is
//!   `/KEY SUFFIX`, or the line itself when it starts with `/` (a full path with its
//!   query string, such as a presigned URL's). The Host header is ADDR, the host a
//!   presigned URL was signed for.
//! - `zipf=S:FILE`: the line of rank k with probability ∝ 1/k^S, as skewed traffic
//!   asks for popular paths (the first line is the most popular), from a table of the
//!   cumulative weights built once and a binary search per request, with a fixed seed:
//!   every server gets the same sequence.
//! - `body=FILE`: each request (PUT) sends the file as its body.
//! - `follow`: a 3xx answer's `Location` (an `http://HOST:PORT/…` URL) is fetched with
//!   a GET on a second keep-alive connection of the same slot; the request counts once,
//!   with the final answer's status and its latency from the first request's start to
//!   the last byte of the final answer; `redirects` counts the redirects followed.
//! - `plan=FILE`: uploads, one a line, each used once in order: `PUT TARGET` sends the
//!   body in one request; `MPU PART_SIZE COMPLETE_TARGET PART_TARGET…` sends the body in
//!   parts of PART_SIZE bytes, one at a time, to the part targets (presigned UploadPart
//!   URLs), then POSTs the CompleteMultipartUpload document naming each part's ETag to
//!   COMPLETE_TARGET. An upload counts once, with its latency from its first byte sent
//!   to the completion's answer and its first non-2xx status (or the last one).
//!
//! Prints one JSON object: requests, seconds, rps, mbps (bytes read, headers included,
//! per second, as wrk's Transfer/sec), p50_ms, p99_ms, statuses, errors, redirects.

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
/// Answers up to this size are kept (a multipart completion's document may carry an error).
const KEEP_BODY: usize = 16 * 1024;

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
    Plan(Vec<String>),
    /// Keys by rank, and the cumulative weights of the ranks (the last one is the total).
    Zipf(Vec<String>, Vec<f64>),
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

/// The header block of one answer.
struct Head {
    status: u16,
    /// Bytes of body that follow the header block.
    body: usize,
    keep_alive: bool,
    etag: Option<String>,
    location: Option<String>,
}

/// Parses a complete header block (without its final blank line).
fn parse_head(block: &[u8], head_request: bool) -> Result<Head, String> {
    let text = std::str::from_utf8(block).map_err(|_| "header block is not UTF-8".to_string())?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut length: Option<usize> = None;
    let mut keep_alive = status_line.starts_with("HTTP/1.1");
    let (mut etag, mut location) = (None, None);
    for line in lines {
        let (name, value) = line.split_once(':').ok_or_else(|| format!("bad header {line:?}"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse().map_err(|_| format!("bad length {value:?}"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(format!("transfer-encoding {value} is not supported"));
        } else if name.eq_ignore_ascii_case("connection") {
            keep_alive = !value.eq_ignore_ascii_case("close");
        } else if name.eq_ignore_ascii_case("etag") {
            etag = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("location") {
            location = Some(value.to_owned());
        }
    }
    let body = if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
        0
    } else {
        length.ok_or("answer without Content-Length")?
    };
    Ok(Head {
        status,
        body,
        keep_alive,
        etag,
        location,
    })
}

fn ctl(ep: i32, op: i32, fd: i32, events: u32, index: usize) {
    let mut ev = EpollEvent {
        events,
        data: index as u64,
    };
    // SAFETY: `ev` is a valid epoll_event for the duration of the call.
    if unsafe { epoll_ctl(ep, op, fd, &mut ev) } < 0 {
        die(&format!("epoll_ctl: {}", std::io::Error::last_os_error()));
    }
}

fn connect(addr: &str, ep: i32, index: usize) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap_or_else(|e| die(&format!("connect {addr}: {e}")));
    stream.set_nodelay(true).ok();
    stream
        .set_nonblocking(true)
        .unwrap_or_else(|e| die(&format!("nonblocking: {e}")));
    ctl(ep, EPOLL_CTL_ADD, stream.as_raw_fd(), EPOLLIN, index);
    stream
}

/// Where a request's body comes from.
enum Body {
    None,
    /// A range of the shared body file.
    Shared(usize, usize),
    Owned(Vec<u8>),
}

/// What the slot's current request is part of.
enum Job {
    /// One request (a redirect may add one fetch).
    Single,
    /// A multipart upload: the parts' targets, the next part, the ETags so far.
    Multipart {
        part_size: usize,
        complete: String,
        parts: Vec<String>,
        next: usize,
        etags: Vec<String>,
    },
}

/// One connection slot: its connection to ADDR and, when redirects are followed, one to
/// where they point.
struct Slot {
    streams: [Option<TcpStream>; 2],
    /// The address of `streams[1]`.
    other: String,
    /// Which stream the request in flight uses.
    on: usize,
    head: Vec<u8>,
    body: Body,
    written: usize,
    /// Header bytes read so far, until the header block is complete.
    buf: Vec<u8>,
    /// The answer being read: its header and the body bytes still to come.
    answer: Option<(Head, usize)>,
    kept: Vec<u8>,
    head_request: bool,
    job: Job,
    /// The job's first status that was not 2xx (a redirect followed is not one).
    failed: Option<u16>,
    start: Instant,
}

impl Slot {
    fn stream(&mut self) -> &mut TcpStream {
        self.streams[self.on].as_mut().unwrap_or_else(|| die("no connection"))
    }

    fn request_len(&self, body: &[u8]) -> usize {
        self.head.len()
            + match &self.body {
                Body::None => 0,
                Body::Shared(a, b) => b.min(&body.len()) - a,
                Body::Owned(v) => v.len(),
            }
    }
}

/// Writes as much of the pending request as the socket takes; Err when the connection broke.
fn flush(s: &mut Slot, shared: &[u8], ep: i32, index: usize) -> Result<(), ()> {
    let total = s.request_len(shared);
    while s.written < total {
        let w = s.written;
        let hl = s.head.len();
        let res = {
            let stream = s.streams[s.on].as_mut().ok_or(())?;
            if w < hl {
                stream.write(&s.head[w..])
            } else {
                match &s.body {
                    Body::None => Ok(0),
                    Body::Shared(a, b) => stream.write(&shared[a + w - hl..*b]),
                    Body::Owned(v) => stream.write(&v[w - hl..]),
                }
            }
        };
        match res {
            Ok(0) => return Err(()),
            Ok(k) => s.written += k,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let fd = s.stream().as_raw_fd();
                ctl(ep, EPOLL_CTL_MOD, fd, EPOLLIN | EPOLLOUT, index * 2 + s.on);
                return Ok(());
            }
            Err(_) => return Err(()),
        }
    }
    Ok(())
}

/// `http://HOST:PORT/PATH` -> (`HOST:PORT`, `/PATH`).
fn split_url(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("cannot follow {url:?} (not http://)"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:80")
    };
    Ok((addr, path.to_owned()))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 6 {
        die("usage: loadgen ADDR METHOD CONNECTIONS SECONDS (miss | keys=FILE | zipf=S:FILE | plan=FILE) [SUFFIX] [follow] [body=FILE]");
    }
    let addr = args[1].clone();
    let method = args[2].clone();
    let conns: usize = args[3].parse().unwrap_or_else(|_| die("bad connection count"));
    let seconds: f64 = args[4].parse().unwrap_or_else(|_| die("bad duration"));
    let lines = |file: &str| -> Vec<String> {
        std::fs::read_to_string(file)
            .unwrap_or_else(|e| die(&format!("{file}: {e}")))
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let keys = if let Some(file) = args[5].strip_prefix("keys=") {
        Keys::List(lines(file))
    } else if let Some(spec) = args[5].strip_prefix("zipf=") {
        let (s, file) = spec.split_once(':').unwrap_or_else(|| die("zipf=S:FILE"));
        let s: f64 = s.parse().unwrap_or_else(|_| die("bad Zipf exponent"));
        let list = lines(file);
        let cdf = zipf_cdf(list.len(), s);
        Keys::Zipf(list, cdf)
    } else if let Some(file) = args[5].strip_prefix("plan=") {
        Keys::Plan(lines(file))
    } else if args[5] == "miss" {
        Keys::Miss
    } else {
        die("keys must be `miss`, `keys=FILE`, `zipf=S:FILE` or `plan=FILE`")
    };
    if matches!(&keys, Keys::List(l) | Keys::Plan(l) | Keys::Zipf(l, _) if l.is_empty()) {
        die("the key file is empty");
    }
    let mut suffix = ".narinfo".to_owned();
    let mut follow = false;
    let mut shared: Vec<u8> = Vec::new();
    for (i, a) in args[6..].iter().enumerate() {
        if a == "follow" {
            follow = true;
        } else if let Some(file) = a.strip_prefix("body=") {
            shared = std::fs::read(file).unwrap_or_else(|e| die(&format!("{file}: {e}")));
        } else if i == 0 {
            suffix = a.clone();
        } else {
            die(&format!("unknown option {a:?}"));
        }
    }
    // A fixed seed for the Zipf sequence (the same requests for every server); the
    // others differ from run to run.
    let seed = match keys {
        Keys::Zipf(..) => 0x2545_f491_4f6c_dd1d,
        _ => 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()),
    };
    let mut rng = Rng(seed);
    let mut plan_next = 0usize;

    // SAFETY: plain syscall.
    let ep = unsafe { epoll_create1(0) };
    if ep < 0 {
        die(&format!("epoll_create1: {}", std::io::Error::last_os_error()));
    }
    let mut slots: Vec<Slot> = (0..conns)
        .map(|i| Slot {
            streams: [Some(connect(&addr, ep, i * 2)), None],
            other: String::new(),
            on: 0,
            head: Vec::new(),
            body: Body::None,
            written: 0,
            buf: Vec::with_capacity(8192),
            answer: None,
            kept: Vec::new(),
            head_request: false,
            job: Job::Single,
            failed: None,
            start: Instant::now(),
        })
        .collect();

    let request_head = |m: &str, target: &str, host: &str, length: Option<usize>| -> Vec<u8> {
        let mut h = format!("{m} {target} HTTP/1.1\r\nHost: {host}\r\n");
        if let Some(n) = length {
            h.push_str(&format!("Content-Length: {n}\r\n"));
        }
        h.push_str("\r\n");
        h.into_bytes()
    };
    // Starts the slot's next job: a request to ADDR.
    let mut new_job = |s: &mut Slot, rng: &mut Rng| {
        s.on = 0;
        s.failed = None;
        s.written = 0;
        s.start = Instant::now();
        s.head_request = method == "HEAD";
        let body_len = (!shared.is_empty()).then_some(shared.len());
        let (target, job) = match &keys {
            Keys::Miss => {
                let k: String = (0..32).map(|_| ALPHABET[(rng.next() >> 59) as usize] as char).collect();
                (format!("/{k}{suffix}"), Job::Single)
            }
            Keys::List(_) | Keys::Zipf(..) => {
                let k = match &keys {
                    Keys::Zipf(list, cdf) => {
                        // A uniform draw in [0, total), then the first rank whose
                        // cumulative weight exceeds it.
                        let u = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
                        let x = u * cdf[cdf.len() - 1];
                        &list[cdf.partition_point(|&c| c <= x).min(list.len() - 1)]
                    }
                    Keys::List(list) => &list[(rng.next() % list.len() as u64) as usize],
                    _ => unreachable!(),
                };
                let t = if k.starts_with('/') {
                    k.clone()
                } else {
                    format!("/{k}{suffix}")
                };
                (t, Job::Single)
            }
            Keys::Plan(plan) => {
                let line = plan.get(plan_next).unwrap_or_else(|| {
                    die(&format!(
                        "the plan's {} uploads were all used: give it more",
                        plan.len()
                    ))
                });
                plan_next += 1;
                let f: Vec<&str> = line.split(' ').collect();
                match f.as_slice() {
                    ["PUT", t] => (t.to_string(), Job::Single),
                    ["MPU", size, complete, parts @ ..] if !parts.is_empty() => {
                        let part_size: usize = size.parse().unwrap_or_else(|_| die("bad part size"));
                        if part_size * parts.len() < shared.len() || part_size * (parts.len() - 1) >= shared.len() {
                            die("the plan's parts do not cover the body");
                        }
                        let job = Job::Multipart {
                            part_size,
                            complete: complete.to_string(),
                            parts: parts.iter().map(|p| p.to_string()).collect(),
                            next: 1,
                            etags: Vec::new(),
                        };
                        s.head = request_head("PUT", parts[0], &addr, Some(part_size.min(shared.len())));
                        s.body = Body::Shared(0, part_size.min(shared.len()));
                        s.job = job;
                        return;
                    }
                    _ => die(&format!("bad plan line {line:?}")),
                }
            }
        };
        s.head = request_head(&method, &target, &addr, body_len);
        s.body = if body_len.is_some() {
            Body::Shared(0, shared.len())
        } else {
            Body::None
        };
        s.job = job;
    };

    let mut latencies: Vec<u32> = Vec::with_capacity(1 << 20);
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    let mut errors = 0u64;
    let mut redirects = 0u64;
    let mut bytes_in = 0u64;
    let mut chunk = vec![0u8; 256 * 1024];
    let mut events = vec![EpollEvent { events: 0, data: 0 }; 256];
    let mut ready: Vec<usize> = Vec::with_capacity(conns);
    let began = Instant::now();
    let end = began + Duration::from_secs_f64(seconds);
    for i in 0..conns {
        new_job(&mut slots[i], &mut rng);
        if flush(&mut slots[i], &shared, ep, i).is_err() {
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
            let (flags, data) = (ev.events, ev.data as usize);
            let (i, which) = (data / 2, data % 2);
            let s = &mut slots[i];
            if which != s.on {
                // The idle connection of the slot: its server closed it (keep-alive timeout).
                if flags & (EPOLLIN | EPOLLERR | EPOLLHUP) != 0 {
                    s.streams[which] = None;
                }
                continue;
            }
            let mut broken = false;
            let mut eof = false;
            let mut complete = false;
            if flags & EPOLLOUT != 0 {
                match flush(s, &shared, ep, i) {
                    Ok(()) if s.written == s.request_len(&shared) => {
                        let fd = s.stream().as_raw_fd();
                        ctl(ep, EPOLL_CTL_MOD, fd, EPOLLIN, data);
                    }
                    Ok(()) => {}
                    Err(()) => broken = true,
                }
            }
            if flags & (EPOLLIN | EPOLLERR | EPOLLHUP) != 0 && !broken {
                loop {
                    let r = s.stream().read(&mut chunk);
                    match r {
                        Ok(0) => {
                            eof = true;
                            break;
                        }
                        Ok(k) => {
                            if Instant::now() <= end {
                                bytes_in += k as u64;
                            }
                            let mut data = &chunk[..k];
                            if s.answer.is_none() {
                                let from = s.buf.len().saturating_sub(3);
                                s.buf.extend_from_slice(data);
                                let Some(at) = find(&s.buf[from..], b"\r\n\r\n").map(|p| p + from) else {
                                    continue;
                                };
                                let head = parse_head(&s.buf[..at], s.head_request).unwrap_or_else(|e| die(&e));
                                let rest = s.buf.len() - at - 4;
                                let body = head.body;
                                s.kept.clear();
                                s.answer = Some((head, body));
                                // The body bytes that came with the header block.
                                let tail = s.buf.split_off(at + 4);
                                s.buf.clear();
                                if rest > body {
                                    die("the server sent bytes after a complete answer");
                                }
                                if body <= KEEP_BODY {
                                    s.kept.extend_from_slice(&tail);
                                }
                                if let Some((_, left)) = s.answer.as_mut() {
                                    *left -= rest;
                                }
                                data = &[];
                            }
                            if let Some((head, left)) = s.answer.as_mut() {
                                if data.len() > *left {
                                    die("the server sent bytes after a complete answer");
                                }
                                *left -= data.len();
                                if head.body <= KEEP_BODY {
                                    s.kept.extend_from_slice(data);
                                }
                                if *left == 0 {
                                    complete = true;
                                    break;
                                }
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(_) => {
                            broken = true;
                            break;
                        }
                    }
                }
            }
            if complete {
                let (head, _) = s.answer.take().unwrap_or_else(|| die("no answer"));
                if !head.keep_alive || eof {
                    let a = if s.on == 0 { addr.clone() } else { s.other.clone() };
                    s.streams[s.on] = Some(connect(&a, ep, data));
                }
                let ok = (200..300).contains(&head.status);
                let mut next_step = false;
                if follow && (300..400).contains(&head.status) && s.on == 0 {
                    let loc = head
                        .location
                        .as_deref()
                        .unwrap_or_else(|| die("a redirect without Location"));
                    let (other, path) = split_url(loc).unwrap_or_else(|e| die(&e));
                    if s.streams[1].is_none() || s.other != other {
                        s.streams[1] = Some(connect(&other, ep, i * 2 + 1));
                        s.other = other.clone();
                    }
                    s.on = 1;
                    s.head = request_head("GET", &path, &other, None);
                    s.body = Body::None;
                    s.head_request = false;
                    redirects += 1;
                    next_step = true;
                } else if let Job::Multipart {
                    part_size,
                    complete,
                    parts,
                    next,
                    etags,
                } = &mut s.job
                {
                    if !ok && s.failed.is_none() {
                        s.failed = Some(head.status);
                    }
                    if *next <= parts.len() && s.failed.is_none() {
                        etags.push(head.etag.clone().unwrap_or_else(|| die("a part's answer has no ETag")));
                        if *next < parts.len() {
                            let a = *next * *part_size;
                            let b = (a + *part_size).min(shared.len());
                            s.head = request_head("PUT", &parts[*next], &addr, Some(b - a));
                            s.body = Body::Shared(a, b);
                        } else {
                            let mut doc = String::from("<CompleteMultipartUpload>");
                            for (n, e) in etags.iter().enumerate() {
                                doc.push_str(&format!(
                                    "<Part><PartNumber>{}</PartNumber><ETag>{e}</ETag></Part>",
                                    n + 1
                                ));
                            }
                            doc.push_str("</CompleteMultipartUpload>");
                            s.head = request_head("POST", complete, &addr, Some(doc.len()));
                            s.body = Body::Owned(doc.into_bytes());
                        }
                        *next += 1;
                        next_step = true;
                    } else if s.failed.is_none() && find(&s.kept, b"<Error>").is_some() {
                        // S3 may answer a completion 200 with an error document.
                        s.failed = Some(599);
                    }
                } else if !ok && s.failed.is_none() {
                    s.failed = Some(head.status);
                }
                if !next_step {
                    let done = Instant::now();
                    if done <= end {
                        latencies.push(done.duration_since(s.start).as_micros().min(u32::MAX as u128) as u32);
                        *statuses.entry(s.failed.unwrap_or(head.status)).or_default() += 1;
                    }
                    s.job = Job::Single;
                } else {
                    s.written = 0;
                }
                // The next request goes out after this batch of events, as wrk's does.
                ready.push(i | if next_step { 1 << 63 } else { 0 });
            } else if eof {
                broken = true;
            }
            if broken {
                // The server closed or reset the connection mid-request: count it, start over
                // with a new job.
                errors += 1;
                let a = if s.on == 0 { addr.clone() } else { s.other.clone() };
                s.streams[s.on] = Some(connect(&a, ep, data));
                s.buf.clear();
                s.answer = None;
                new_job(s, &mut rng);
                if flush(s, &shared, ep, i).is_err() {
                    die("cannot send a request on a new connection");
                }
            }
        }
        for &r in &ready {
            let (i, step) = (r & !(1 << 63), r & (1 << 63) != 0);
            let s = &mut slots[i];
            if !step {
                new_job(s, &mut rng);
            }
            if s.streams[s.on].is_none() {
                let a = if s.on == 0 { addr.clone() } else { s.other.clone() };
                s.streams[s.on] = Some(connect(&a, ep, i * 2 + s.on));
            }
            if flush(s, &shared, ep, i).is_err() {
                // Broken on write: start over on a new connection.
                errors += 1;
                let a = if s.on == 0 { addr.clone() } else { s.other.clone() };
                s.streams[s.on] = Some(connect(&a, ep, i * 2 + s.on));
                s.buf.clear();
                s.written = 0;
                if flush(s, &shared, ep, i).is_err() {
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
        "{{\"requests\": {}, \"seconds\": {:.3}, \"rps\": {:.1}, \"mbps\": {:.3}, \"p50_ms\": {:.3}, \"p99_ms\": {:.3}, \"statuses\": {{{}}}, \"errors\": {}, \"redirects\": {}}}",
        latencies.len(),
        secs,
        latencies.len() as f64 / secs,
        bytes_in as f64 / secs / f64::from(1u32 << 20),
        pct(0.50),
        pct(0.99),
        statuses.join(", "),
        errors,
        redirects
    );
}
