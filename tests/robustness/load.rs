//! Load: many clients on one key and on many keys at once, slow and idle clients,
//! the connection limit, clients that vanish mid-transfer, and a soak at a steady
//! rate with memory sampled from /proc.

use std::collections::HashMap;
use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use crate::common::{self, ServerBuilder};
use crate::support::*;

/// Runs `n` clients released at the same instant; their results in order.
fn at_once<T: Send + 'static>(n: usize, f: impl Fn(usize) -> T + Send + Sync + 'static) -> Vec<T> {
    let barrier = Arc::new(Barrier::new(n));
    let f = Arc::new(f);
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let (barrier, f) = (barrier.clone(), f.clone());
            std::thread::spawn(move || {
                barrier.wait();
                f(i)
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .collect()
}

fn put_status(addr: SocketAddr, key: &str, body: &[u8]) -> u16 {
    common::try_raw_request(
        addr,
        &[
            common::request_head(addr, "PUT", key, &[], Some(body.len() as u64)),
            body.to_vec(),
        ]
        .concat(),
    )
    .map_or(0, |r| r.status)
}

fn count(statuses: &[u16]) -> String {
    let mut by: HashMap<u16, usize> = HashMap::new();
    for s in statuses {
        *by.entry(*s).or_default() += 1;
    }
    let mut v: Vec<_> = by.into_iter().collect();
    v.sort();
    v.iter()
        .map(|(s, n)| format!("{n}x{s}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn concurrency_on_one_key() {
    const TEST: &str = "concurrency, one key";
    const CLIENTS: usize = 100;
    let mut rng = Rng::new(seed());
    let s = ServerBuilder::new().start();
    let addr = s.addr;
    let p = Arc::new(PathFixture::new("one-key", &rng.bytes(512 << 10), &[]));

    let q = p.clone();
    let nar = at_once(CLIENTS, move |_| put_status(addr, &q.nar_key(), &q.nar));
    let q = p.clone();
    let info = at_once(CLIENTS, move |_| {
        put_status(addr, &q.narinfo_key(), q.info.render().as_bytes())
    });
    // Rival re-signings of one key (each a valid, different body with a signature of
    // its own): a stored path only gains signatures, so every one of them is kept.
    let rival_sigs: Vec<String> = (0..CLIENTS)
        .map(|i| {
            use base64::Engine as _;
            format!(
                "rival-{i}:{}",
                base64::engine::general_purpose::STANDARD.encode(rng.bytes(64))
            )
        })
        .collect();
    let rivals: Arc<Vec<String>> = Arc::new(
        rival_sigs
            .iter()
            .map(|sig| {
                let mut info = p.info.clone();
                info.sigs = vec![sig.clone()];
                info.render()
            })
            .collect(),
    );
    let (q, r) = (p.clone(), rivals.clone());
    let rival = at_once(CLIENTS, move |i| {
        put_status(addr, &q.narinfo_key(), r[i].as_bytes())
    });

    let mut conn = Conn::new(addr);
    let got_nar = conn.get(&p.nar_key()).unwrap();
    let got_info = conn.get(&p.narinfo_key()).unwrap();
    let on_disk = std::fs::read(s.dir.join(&p.narinfo_key()[1..])).unwrap();
    let served = String::from_utf8_lossy(&got_info.body).into_owned();
    let kept = rival_sigs
        .iter()
        .filter(|sig| served.contains(&format!("Sig: {sig}\n")))
        .count();
    let files = common::files_below(&s.dir);
    figures(
        TEST,
        format_args!(
            "{CLIENTS} identical NAR PUTs ({}), {CLIENTS} identical narinfo PUTs ({}), {CLIENTS} rival re-signings ({}) -> {kept} signatures kept; {} files in the cache",
            count(&nar),
            count(&info),
            count(&rival),
            files.len()
        ),
    );
    let created = |v: &[u16]| v.iter().filter(|s| **s == 201).count();
    assert!(
        nar.iter()
            .chain(&info)
            .chain(&rival)
            .all(|s| *s == 201 || *s == 204),
        "every concurrent PUT succeeds"
    );
    assert_eq!(
        created(&nar),
        1,
        "exactly one NAR PUT created it: {}",
        count(&nar)
    );
    assert_eq!(
        created(&info),
        1,
        "exactly one narinfo PUT created it: {}",
        count(&info)
    );
    assert_eq!(
        created(&rival),
        0,
        "the rivals all replaced: {}",
        count(&rival)
    );
    assert_eq!(got_nar.body, p.nar);
    assert_eq!(
        kept, CLIENTS,
        "every re-signing kept its signature:\n{served}"
    );
    assert!(
        served.starts_with(&p.info.render()),
        "the path itself is unchanged:\n{served}"
    );
    assert_eq!(on_disk, got_info.body);
    let mut expected = vec![
        p.narinfo_key()[1..].to_owned(),
        "nix-cache-info".to_owned(),
        p.nar_key()[1..].to_owned(),
    ];
    expected.sort();
    assert_eq!(
        files, expected,
        "one object per key, no temporary file left"
    );
}

#[test]
fn concurrency_on_many_keys_with_readers() {
    const TEST: &str = "concurrency, many keys";
    const UPLOADERS: usize = 100;
    const READERS: usize = 20;
    let seed = seed();
    let mut rng = Rng::new(seed);
    let s = ServerBuilder::new().start();
    let addr = s.addr;
    // Present from the start: readers check these byte for byte.
    let mut conn = Conn::new(addr);
    let old: Arc<Vec<PathFixture>> = Arc::new(
        (0..30)
            .map(|i| {
                let p = PathFixture::new(
                    &format!("many-old-{seed}-{i}"),
                    &rng.bytes_log(1, 1 << 20),
                    &[],
                );
                upload(&mut conn, &p).expect("populate");
                p
            })
            .collect(),
    );
    let new: Arc<Vec<PathFixture>> = Arc::new(
        (0..UPLOADERS)
            .map(|i| {
                let r = old[i % old.len()].basename();
                PathFixture::new(
                    &format!("many-new-{seed}-{i}"),
                    &rng.bytes_log(1, 1 << 20),
                    &[r.as_str()],
                )
            })
            .collect(),
    );
    let done = Arc::new(AtomicBool::new(false));
    let wrong = Arc::new(Mutex::new(Vec::<String>::new()));
    let reads = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..READERS)
        .map(|i| {
            let (old, new, done, wrong, reads) = (
                old.clone(),
                new.clone(),
                done.clone(),
                wrong.clone(),
                reads.clone(),
            );
            let mut rng = Rng::new(seed ^ (i as u64 + 1));
            std::thread::spawn(move || {
                let mut c = Conn::new(addr);
                while !done.load(Ordering::Relaxed) {
                    // An old object must be exact; a new one exact or absent.
                    let (p, must) = if rng.chance(1, 2) {
                        (rng.pick(&old), true)
                    } else {
                        (rng.pick(&new), false)
                    };
                    let (key, body) = if rng.chance(1, 2) {
                        (p.narinfo_key(), p.info.render().into_bytes())
                    } else {
                        (p.nar_key(), p.nar.clone())
                    };
                    reads.fetch_add(1, Ordering::Relaxed);
                    let ok = match c.get(&key) {
                        Ok(r) if r.status == 200 => r.body == body,
                        Ok(r) if r.status == 404 => !must,
                        _ => false,
                    };
                    if !ok {
                        wrong.lock().unwrap().push(format!("GET {key}"));
                    }
                }
            })
        })
        .collect();
    let q = new.clone();
    let results = at_once(UPLOADERS, move |i| upload(&mut Conn::new(addr), &q[i]));
    done.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    let mut final_wrong = 0;
    for p in old.iter().chain(new.iter()) {
        if conn.get(&p.nar_key()).map(|r| r.body).ok().as_ref() != Some(&p.nar)
            || conn.get(&p.narinfo_key()).map(|r| r.body).ok() != Some(p.info.render().into_bytes())
        {
            final_wrong += 1;
        }
    }
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    let wrong = wrong.lock().unwrap();
    figures(
        TEST,
        format_args!(
            "{UPLOADERS} clients uploading a NAR and a narinfo each at once while {READERS} read: {} uploads failed, {} reads, {} wrong; {} of {} keys wrong at the end, {} temporary files",
            failed.len(),
            reads.load(Ordering::Relaxed),
            wrong.len(),
            final_wrong,
            2 * (old.len() + new.len()),
            temp_files(&s.dir)
        ),
    );
    assert!(failed.is_empty(), "uploads failed: {failed:#?}");
    assert!(
        wrong.is_empty(),
        "wrong reads: {:#?}",
        &wrong[..wrong.len().min(20)]
    );
    assert_eq!(final_wrong, 0);
    assert_eq!(temp_files(&s.dir), 0);
    assert!(!s.log().contains("panicked"));
}

/// Connections that hold a server's attention without finishing anything.
struct Attackers {
    idle: Vec<TcpStream>,
    header_dribblers: Vec<TcpStream>,
    body_dribblers: Vec<TcpStream>,
    stalled_readers: Vec<TcpStream>,
}

fn open_attackers(addr: SocketAddr, n: usize, nar_key: &str) -> Attackers {
    let open = || {
        let c = common::connect(addr);
        c.set_nonblocking(true).unwrap();
        c
    };
    let mut a = Attackers {
        idle: (0..n).map(|_| open()).collect(),
        header_dribblers: (0..n / 2).map(|_| open()).collect(),
        body_dribblers: Vec::new(),
        stalled_readers: Vec::new(),
    };
    for i in 0..n / 2 {
        let mut c = common::connect(addr);
        let key = format!("/log/{}-slow.drv", common::store_hash(&format!("slow-{i}")));
        c.write_all(&common::request_head(addr, "PUT", &key, &[], Some(1 << 20)))
            .unwrap();
        c.set_nonblocking(true).unwrap();
        a.body_dribblers.push(c);
    }
    for _ in 0..n / 10 {
        let mut c = common::connect(addr);
        // Keep-alive, and several requests queued: the answer never gets read.
        for _ in 0..4 {
            c.write_all(format!("GET {nar_key} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .unwrap();
        }
        a.stalled_readers.push(c);
    }
    a
}

/// One byte on every dribbling connection; `false` for those the server closed.
fn dribble(conns: &mut [TcpStream], byte: u8) -> usize {
    conns
        .iter_mut()
        .map(|c| matches!(c.write(&[byte]), Ok(1)))
        .filter(|ok| *ok)
        .count()
}

/// Whether the server closed a (non-blocking) connection: EOF, or an answer then EOF.
fn closed_by_server(c: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

#[test]
fn slow_and_idle_clients() {
    const TEST: &str = "slow clients";
    let n: usize = by_mode(200, 1000);
    let mut rng = Rng::new(seed());
    let s = ServerBuilder::new()
        .env("NIX_STORED_HEADER_TIMEOUT", "2")
        .env("NIX_STORED_BODY_TIMEOUT", "3")
        // Every attacker and client here has one address; the timeouts are the subject.
        .env("NIX_STORED_MAX_CONNECTIONS_PER_ADDRESS", "100000")
        .start();
    let pid = s.pid();
    let mut conn = Conn::new(s.addr);
    let big = PathFixture::new("slow-big", &rng.bytes(8 << 20), &[]);
    upload(&mut conn, &big).unwrap();
    drop(conn);
    // Warm up every kind of request, then take the baseline.
    let _ = common::get(&s, &big.nar_key());
    let _ = common::get(&s, "/nix-cache-info");
    std::thread::sleep(Duration::from_millis(300));
    let baseline = open_fds(pid);

    let mut a = open_attackers(s.addr, n, &big.nar_key());
    let header = b"GET /nix-cache-info HTTP/1.1\r\nHost: x\r\nX-Slow: ".to_vec();
    let peak_fds = Arc::new(AtomicU64::new(0));
    // Legitimate clients, while the attackers hold their connections.
    let legit: Vec<_> = (0..4)
        .map(|t| {
            let (addr, big_key, big_nar) = (s.addr, big.nar_key(), big.nar.clone());
            let mut rng = Rng::new(t + 7);
            std::thread::spawn(move || {
                let mut wrong = Vec::new();
                let mut c = Conn::new(addr);
                for i in 0..50 {
                    let ok = match i % 4 {
                        0 => c
                            .get(&big_key)
                            .is_ok_and(|r| r.status == 200 && r.body == big_nar),
                        1 => c.get("/nix-cache-info").is_ok_and(|r| r.status == 200),
                        2 => c
                            .head(&format!(
                                "/{}.narinfo",
                                common::store_hash(&format!("miss-{t}-{i}"))
                            ))
                            .is_ok_and(|r| r.status == 404),
                        _ => {
                            let key = format!(
                                "/log/{}-legit.drv",
                                common::store_hash(&format!("legit-{t}-{i}"))
                            );
                            let body = rng.text(1000);
                            c.put(&key, body.as_bytes()).is_ok_and(|r| r.status == 201)
                                && c.get(&key).is_ok_and(|r| r.body == body.as_bytes())
                        }
                    };
                    if !ok {
                        wrong.push(i);
                    }
                }
                wrong.len()
            })
        })
        .collect();
    // Dribble until the legitimate clients are done, and at least past both timeouts.
    let started = Instant::now();
    let mut tick = 0;
    let mut bodies_alive = 0;
    while !legit.iter().all(|t| t.is_finished()) || started.elapsed() < Duration::from_secs(5) {
        let byte = header[tick.min(header.len() - 1)];
        let byte = if tick >= header.len() { b'a' } else { byte };
        dribble(&mut a.header_dribblers, byte);
        bodies_alive = dribble(&mut a.body_dribblers, b'x');
        peak_fds.fetch_max(open_fds(pid) as u64, Ordering::Relaxed);
        tick += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    let legit_wrong: usize = legit.into_iter().map(|t| t.join().unwrap()).sum();
    // The server, not the clients, ended every attacking connection while the
    // clients still hold them: the idle ones and the dribbling headers (header
    // timeout), the bodies once they stop dribbling (body timeout), the stalled
    // downloads (write stall), and with them the NAR descriptors and temp files.
    let idle_closed = common::eventually(Duration::from_secs(10), || {
        a.idle.iter_mut().all(closed_by_server)
    });
    let idle_closed_count = a
        .idle
        .iter_mut()
        .map(closed_by_server)
        .filter(|c| *c)
        .count();
    let headers_closed = common::eventually(Duration::from_secs(10), || {
        dribble(&mut a.header_dribblers, b'a') == 0
    });
    let bodies_closed = common::eventually(Duration::from_secs(10), || {
        a.body_dribblers.iter_mut().all(closed_by_server)
    });
    let released = common::eventually(Duration::from_secs(20), || open_fds(pid) <= baseline);
    let held = open_fds(pid);
    let bodies = a.body_dribblers.len();
    drop(a);
    let fds_back = common::eventually(Duration::from_secs(20), || open_fds(pid) <= baseline);
    let after = open_fds(pid);
    figures(
        TEST,
        format_args!(
            "{n} idle, {} dribbling headers, {} dribbling bodies (alive: {bodies_alive}), {} stalled readers; 200 legitimate requests, {legit_wrong} wrong; closed by the server while the clients held them: idle {idle_closed_count}/{n}, header dribblers {headers_closed}, body dribblers {bodies_closed}; descriptors {baseline} before, {} peak, {held} with every attacker still connected, {after} after they left",
            n / 2,
            bodies,
            n / 10,
            peak_fds.load(Ordering::Relaxed),
        ),
    );
    assert_eq!(
        legit_wrong, 0,
        "legitimate clients were not served correctly"
    );
    assert!(
        idle_closed,
        "idle connections were not closed by the server"
    );
    assert!(headers_closed, "slow headers were not cut off");
    assert!(bodies_closed, "stalled upload bodies were not ended");
    assert!(
        released,
        "the server kept descriptors of abandoned connections: {held} (baseline {baseline})"
    );
    assert!(
        fds_back,
        "descriptors leaked: {baseline} before, {after} after"
    );
    assert!(!s.log().contains("panicked"));
}

#[test]
fn connection_limit() {
    const TEST: &str = "connection limit";
    const LIMIT: usize = 20;
    let s = ServerBuilder::new()
        .env("NIX_STORED_MAX_CONNECTIONS", &LIMIT.to_string())
        .env("NIX_STORED_HEADER_TIMEOUT", "30")
        .start();
    let pid = s.pid();
    let _ = common::get(&s, "/nix-cache-info");
    std::thread::sleep(Duration::from_millis(200));
    let baseline = open_fds(pid);
    let mut idle: Vec<TcpStream> = (0..LIMIT).map(|_| common::connect(s.addr)).collect();
    assert!(
        common::eventually(Duration::from_secs(10), || open_fds(pid)
            >= baseline + LIMIT),
        "the server accepts up to the limit"
    );
    // One more: the kernel completes the handshake, the server does not take it.
    let mut extra = common::connect(s.addr);
    extra
        .write_all(b"GET /nix-cache-info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    extra.set_nonblocking(true).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mut buf = [0u8; 64];
    let served_over_limit =
        !matches!(extra.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    let fds_at_limit = open_fds(pid);
    // One connection ends: the waiting one is served.
    idle.pop();
    extra.set_nonblocking(false).unwrap();
    let answer = common::read_response(&mut BufReader::new(extra), false).map(|r| r.status);
    let warned = s.log().contains("NIX_STORED_MAX_CONNECTIONS");
    figures(
        TEST,
        format_args!(
            "limit {LIMIT}: {LIMIT} idle connections held, descriptors {baseline} -> {fds_at_limit}, connection {} served while at the limit: {served_over_limit}, served once one closed: {answer:?}, limit logged: {warned}",
            LIMIT + 1
        ),
    );
    assert!(!served_over_limit, "a connection over the limit was served");
    assert!(
        fds_at_limit < baseline + LIMIT + 1,
        "more than {LIMIT} connections taken"
    );
    assert_eq!(answer.ok(), Some(200));
    assert!(warned, "reaching the limit is logged");
    drop(idle);
}

#[test]
fn disconnects_leak_nothing() {
    const TEST: &str = "disconnects";
    let rounds: usize = by_mode(50, 300);
    let mut rng = Rng::new(seed());
    let s = ServerBuilder::new().start();
    let pid = s.pid();
    let big = PathFixture::new("disconnect-big", &rng.bytes(16 << 20), &[]);
    let mut conn = Conn::new(s.addr);
    upload(&mut conn, &big).unwrap();
    drop(conn);
    let _ = common::get(&s, &big.nar_key());
    std::thread::sleep(Duration::from_millis(200));
    let baseline = open_fds(pid);
    let before = common::files_below(&s.dir);
    for i in 0..rounds {
        // Mid-download: read a little, go away.
        let mut c = common::connect(s.addr);
        let range = if i % 2 == 0 {
            ""
        } else {
            "Range: bytes=1000-\r\n"
        };
        c.write_all(format!("GET {} HTTP/1.1\r\nHost: x\r\n{range}\r\n", big.nar_key()).as_bytes())
            .unwrap();
        let mut buf = vec![0u8; rng.range(1, 256 << 10) as usize];
        let _ = c.read(&mut buf);
        drop(c);
        // Mid-upload: declare 16 MiB, send some, go away (reset or clean close).
        let p = PathFixture::new(&format!("disconnect-{i}"), &rng.bytes(16 << 20), &[]);
        let mut c = common::connect(s.addr);
        c.write_all(&common::request_head(
            s.addr,
            "PUT",
            &p.nar_key(),
            &[],
            Some(p.nar.len() as u64),
        ))
        .unwrap();
        let part = rng.range(1, 4 << 20) as usize;
        let _ = c.write_all(&p.nar[..part]);
        if i % 2 == 0 {
            let _ = c.shutdown(Shutdown::Both);
        }
        drop(c);
    }
    let fds_back = common::eventually(Duration::from_secs(20), || open_fds(pid) <= baseline);
    let temp_gone = common::eventually(Duration::from_secs(20), || temp_files(&s.dir) == 0);
    let after = open_fds(pid);
    let files = common::files_below(&s.dir);
    figures(
        TEST,
        format_args!(
            "{rounds} downloads and {rounds} uploads abandoned midway: descriptors {baseline} before, {after} after; {} temporary files, {} new objects",
            temp_files(&s.dir),
            files.len() - before.len()
        ),
    );
    assert!(
        fds_back,
        "descriptors leaked: {baseline} before, {after} after"
    );
    assert!(temp_gone, "temporary files left");
    assert_eq!(files, before, "an abandoned upload became visible");
    assert!(!s.log().contains("panicked"));
}

#[test]
fn soak() {
    const TEST: &str = "soak";
    let secs: u64 = env_or("NIX_STORED_ROBUST_SOAK_SECS", by_mode(30, 600));
    let rate: u64 = 200;
    const CLIENTS: u64 = 4;
    let seed = seed();
    let mut rng = Rng::new(seed);
    let s = ServerBuilder::new().start();
    let (pid, addr) = (s.pid(), s.addr);
    let mut conn = Conn::new(addr);
    let present: Arc<Vec<PathFixture>> = Arc::new(
        (0..50)
            .map(|i| {
                let p = PathFixture::new(
                    &format!("soak-{seed}-{i}"),
                    &rng.bytes_log(100, 1 << 20),
                    &[],
                );
                upload(&mut conn, &p).unwrap();
                p
            })
            .collect(),
    );
    drop(conn);
    let end = Instant::now() + Duration::from_secs(secs);
    let samples = Arc::new(Mutex::new(Vec::<u64>::new()));
    let sampler = {
        let samples = samples.clone();
        std::thread::spawn(move || {
            while Instant::now() < end {
                samples.lock().unwrap().push(rss_kib(pid));
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };
    let clients: Vec<_> = (0..CLIENTS)
        .map(|t| {
            let present = present.clone();
            let mut rng = Rng::new(seed ^ (t + 100));
            std::thread::spawn(move || {
                let mut c = Conn::new(addr);
                let interval = Duration::from_micros(1_000_000 * CLIENTS / rate);
                let mut next = Instant::now();
                let (mut hits, mut misses, mut uploads, mut errors) =
                    (0u64, 0u64, 0u64, Vec::new());
                let mut n = 0;
                while Instant::now() < end {
                    let roll = rng.below(100);
                    let ok = if roll < 60 {
                        hits += 1;
                        let p = rng.pick(&present);
                        if rng.chance(1, 2) {
                            c.get(&p.narinfo_key()).is_ok_and(|r| {
                                r.status == 200 && r.body == p.info.render().as_bytes()
                            })
                        } else {
                            c.get(&p.nar_key())
                                .is_ok_and(|r| r.status == 200 && r.body == p.nar)
                        }
                    } else if roll < 90 {
                        misses += 1;
                        let h = common::store_hash(&format!("soak-miss-{t}-{n}"));
                        if rng.chance(1, 2) {
                            c.get(&format!("/{h}.narinfo"))
                                .is_ok_and(|r| r.status == 404)
                        } else {
                            c.head(&format!("/{h}.narinfo"))
                                .is_ok_and(|r| r.status == 404)
                        }
                    } else {
                        uploads += 1;
                        let p = PathFixture::new(
                            &format!("soak-new-{seed}-{t}-{n}"),
                            &rng.bytes_log(100, 256 << 10),
                            &[],
                        );
                        upload(&mut c, &p).is_ok()
                            && c.get(&p.narinfo_key())
                                .is_ok_and(|r| r.body == p.info.render().as_bytes())
                    };
                    if !ok {
                        errors.push(n);
                    }
                    n += 1;
                    next += interval;
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
                (hits, misses, uploads, errors.len())
            })
        })
        .collect();
    let (mut hits, mut misses, mut uploads, mut errors) = (0, 0, 0, 0);
    for c in clients {
        let (h, m, u, e) = c.join().unwrap();
        hits += h;
        misses += m;
        uploads += u;
        errors += e;
    }
    sampler.join().unwrap();
    let samples = samples.lock().unwrap().clone();
    // Flat: after the first third (allocator arenas, buffers, the index settle),
    // the last third's peak stays within 5 % (or 2 MiB) of the middle third's. A
    // leak of a few hundred bytes per request would exceed it.
    let third = samples.len() / 3;
    let middle = samples[third..2 * third].iter().copied().max().unwrap_or(0);
    let last = samples[2 * third..].iter().copied().max().unwrap_or(0);
    let allowed = middle + (middle / 20).max(2048);
    let total = hits + misses + uploads;
    figures(
        TEST,
        format_args!(
            "{secs} s at {rate} req/s: {total} operations ({hits} hits, {misses} misses, {uploads} uploads of NAR+narinfo), {errors} errors; VmRSS {} KiB at start, {middle} KiB peak in the middle third, {last} KiB peak in the last third (allowed {allowed}), {} samples",
            samples.first().copied().unwrap_or(0),
            samples.len()
        ),
    );
    assert_eq!(errors, 0, "errors under steady load");
    assert!(
        total >= secs * rate / 2,
        "the load ran ({total} operations)"
    );
    assert!(last <= allowed, "memory grew: {samples:?}");
    assert!(!s.log().contains("panicked"));
}
