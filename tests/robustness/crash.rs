//! Crash consistency: several clients upload NARs, narinfos, logs and listings at
//! once, the server is SIGKILLed at a random moment, restarted on the same
//! directory, and checked before the next round:
//!
//! - every object the server acknowledged (2xx) is present and byte-identical to
//!   the last acknowledged body (or to a later one whose answer the kill swallowed);
//! - every visible object is exactly one body a client sent (no partial, no mix),
//!   every NAR hashes to its name, every narinfo points to a present NAR matching
//!   its FileHash/FileSize and to present references;
//! - `.tmp` is empty after the restart, and the new server answers the same bytes
//!   as the disk holds (the objects touched in the round, a sample of older ones;
//!   everything at the end).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{self, Server, ServerBuilder};
use crate::support::*;

const TEST: &str = "crash loop";
const WRITERS: usize = 4;

/// What clients sent to one key, by body digest.
#[derive(Default)]
struct KeyState {
    /// The body of the last 2xx answer.
    acked: Option<String>,
    /// Bodies sent after it that got no answer (in flight at the kill).
    unanswered: Vec<String>,
}

#[derive(Default)]
struct Ledger {
    /// By key, without the leading `/`.
    keys: HashMap<String, KeyState>,
    /// Base names of acknowledged narinfos: references of later uploads.
    acked_paths: Vec<String>,
    /// Keys sent to in the current round.
    touched: HashSet<String>,
    sent: u64,
    acked: u64,
    acked_bytes: u64,
    refused: Vec<String>,
}

type Shared = Arc<Mutex<Ledger>>;

/// Sends one upload, recording it before and its outcome after. `false` when the
/// server is gone (or refused, which the test reports).
fn send(ledger: &Shared, conn: &mut Conn, key: &str, body: &[u8]) -> bool {
    let d = digest(body);
    {
        let mut l = ledger.lock().unwrap();
        l.keys
            .entry(key.to_owned())
            .or_default()
            .unanswered
            .push(d.clone());
        l.touched.insert(key.to_owned());
        l.sent += 1;
    }
    match conn.put(&format!("/{key}"), body) {
        Ok(r) if r.status == 201 || r.status == 204 => {
            let mut l = ledger.lock().unwrap();
            let k = l.keys.entry(key.to_owned()).or_default();
            k.acked = Some(d);
            k.unanswered.clear();
            l.acked += 1;
            l.acked_bytes += body.len() as u64;
            true
        }
        Ok(r) => {
            let mut l = ledger.lock().unwrap();
            l.refused
                .push(format!("PUT /{key}: {} {}", r.status, r.text().trim()));
            false
        }
        Err(_) => false,
    }
}

/// A random but well-formed `Sig` line value (the server checks the shape only).
fn signature(rng: &mut Rng) -> String {
    use base64::Engine as _;
    format!(
        "robust-1:{}",
        base64::engine::general_purpose::STANDARD.encode(rng.bytes(64))
    )
}

struct Writer {
    id: usize,
    round: usize,
    seed: u64,
    rng: Rng,
    addr: std::net::SocketAddr,
    ledger: Shared,
    stop: Arc<AtomicBool>,
    large_first: bool,
}

fn nar_size(rng: &mut Rng) -> usize {
    let size = if full() && rng.chance(1, 10) {
        rng.log_size(256 << 10, 16 << 20)
    } else if rng.chance(1, 40) {
        rng.log_size(256 << 10, 4 << 20)
    } else {
        rng.log_size(1, 256 << 10)
    };
    size as usize
}

fn run_writer(mut w: Writer) {
    let mut conn = Conn::new(w.addr);
    let mut own: Vec<PathFixture> = Vec::new();
    let mut n = 0;
    while !w.stop.load(Ordering::Relaxed) {
        if !own.is_empty() && w.rng.chance(1, 5) {
            // Re-sign one of its paths: an overwrite that adds a signature to those
            // it has, as `nix store sign --store` does (a stored narinfo only gains
            // signatures, so what is stored is then exactly this body).
            let i = w.rng.below(own.len() as u64) as usize;
            let sig = signature(&mut w.rng);
            own[i].info.sigs.push(sig);
            let key = own[i].narinfo_key();
            if !send(
                &w.ledger,
                &mut conn,
                &key[1..],
                own[i].info.render().as_bytes(),
            ) {
                return;
            }
            continue;
        }
        let size = if w.large_first && n == 0 {
            w.rng.range(8 << 20, 64 << 20) as usize
        } else {
            nar_size(&mut w.rng)
        };
        let contents = w.rng.bytes(size);
        let refs: Vec<String> = {
            let l = w.ledger.lock().unwrap();
            let count = w.rng.below(4).min(l.acked_paths.len() as u64);
            (0..count)
                .map(|_| w.rng.pick(&l.acked_paths).clone())
                .collect::<HashSet<_>>()
                .into_iter()
                .collect()
        };
        let refs: Vec<&str> = refs.iter().map(String::as_str).collect();
        let seed = format!("crash-{}-{}-{}-{n}", w.seed, w.round, w.id);
        n += 1;
        let mut p = PathFixture::new(&seed, &contents, &refs);
        if w.rng.chance(1, 3) {
            p.info.sigs.push(signature(&mut w.rng));
        }
        drop(contents);
        if !send(&w.ledger, &mut conn, &p.nar_key()[1..], &p.nar) {
            return;
        }
        if !send(
            &w.ledger,
            &mut conn,
            &p.narinfo_key()[1..],
            p.info.render().as_bytes(),
        ) {
            return;
        }
        w.ledger.lock().unwrap().acked_paths.push(p.basename());
        if w.rng.chance(1, 2) {
            let log = w.rng.text_log(1, 64 << 10);
            let key = format!("log/{}.drv", p.basename());
            if !send(&w.ledger, &mut conn, &key, log.as_bytes()) {
                return;
            }
        }
        if w.rng.chance(1, 3) {
            let pad = w.rng.text_log(1, 2048).replace(['"', '\\'], "_");
            let listing = format!(
                "{{\"version\":1,\"root\":{{\"type\":\"regular\",\"size\":{size},\"narOffset\":96}},\"pad\":\"{pad}\"}}"
            );
            let key = format!("{}.ls", p.hash);
            if !send(&w.ledger, &mut conn, &key, listing.as_bytes()) {
                return;
            }
        }
        // Keep the big NAR's memory only as long as needed.
        p.nar = Vec::new();
        own.push(p);
        // Think time, as between builds: enough rounds of kills matter more than
        // the number of objects, whose checks every round grow with them.
        std::thread::sleep(Duration::from_millis(w.rng.below(60)));
    }
}

/// The fields of a narinfo the checks need.
struct NarinfoFields {
    url: String,
    file_hash: String,
    file_size: u64,
    /// `<hash>.narinfo` of each reference.
    refs: Vec<String>,
}

/// `Key: value` fields of a narinfo.
fn fields(text: &str) -> HashMap<&str, &str> {
    text.lines().filter_map(|l| l.split_once(": ")).collect()
}

fn parse_narinfo(text: &str) -> NarinfoFields {
    let fl = fields(text);
    NarinfoFields {
        url: fl.get("URL").copied().unwrap_or("").to_owned(),
        file_hash: fl
            .get("FileHash")
            .and_then(|h| h.strip_prefix("sha256:"))
            .unwrap_or("")
            .to_owned(),
        file_size: fl
            .get("FileSize")
            .and_then(|s| s.parse().ok())
            .unwrap_or(u64::MAX),
        refs: fl.get("References").map_or(Vec::new(), |r| {
            r.split_whitespace()
                .map(|r| format!("{}.narinfo", &r[..32.min(r.len())]))
                .collect()
        }),
    }
}

/// What is known of a file: its identity, size, digest and, for a narinfo, its
/// fields. Recomputed only when the identity or mtime changed (the server never
/// writes in place, so an unchanged inode is unchanged bytes): a round costs a
/// stat per file, not a read.
struct Known {
    id: (u64, i64, i64),
    size: u64,
    digest: String,
    narinfo: Option<NarinfoFields>,
}

#[derive(Default)]
struct Digests(HashMap<PathBuf, Known>);

impl Digests {
    fn entry(&mut self, path: &Path) -> std::io::Result<&Known> {
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::metadata(path)?;
        let id = (md.ino(), md.mtime(), md.mtime_nsec());
        let fresh = self
            .0
            .get(path)
            .is_some_and(|k| k.id == id && k.size == md.len());
        if !fresh {
            let (digest, narinfo) = if path.extension().is_some_and(|e| e == "narinfo") {
                let bytes = std::fs::read(path)?;
                let fields = std::str::from_utf8(&bytes).ok().map(parse_narinfo);
                (digest(&bytes), fields)
            } else {
                (file_digest(path)?, None)
            };
            let known = Known {
                id,
                size: md.len(),
                digest,
                narinfo,
            };
            self.0.insert(path.to_owned(), known);
        }
        self.0
            .get(path)
            .ok_or_else(|| std::io::Error::other("just inserted"))
    }

    fn of(&mut self, path: &Path) -> std::io::Result<String> {
        self.entry(path).map(|k| k.digest.clone())
    }
}

#[derive(Default)]
struct Problems {
    lost: Vec<String>,
    corrupt: Vec<String>,
    partial: Vec<String>,
}

impl Problems {
    fn total(&self) -> usize {
        self.lost.len() + self.corrupt.len() + self.partial.len()
    }
}

/// The disk after a restart, against everything clients sent.
fn verify_disk(dir: &Path, ledger: &Ledger, digests: &mut Digests, p: &mut Problems) {
    let files = common::files_below(dir);
    let present: HashSet<&str> = files.iter().map(String::as_str).collect();
    for f in &files {
        if f.starts_with(".tmp/") {
            p.partial
                .push(format!("{f} left in .tmp after the restart"));
            continue;
        }
        if f == "nix-cache-info" {
            continue;
        }
        let known = match digests.entry(&dir.join(f)) {
            Ok(k) => k,
            Err(e) => {
                p.corrupt.push(format!("{f}: unreadable: {e}"));
                continue;
            }
        };
        let d = &known.digest;
        match ledger.keys.get(f.as_str()) {
            None => p.partial.push(format!("{f}: no client sent this key")),
            Some(k) if k.acked.as_ref() != Some(d) && !k.unanswered.contains(d) => {
                let what = if k.acked.is_some() {
                    "differs from the acknowledged body"
                } else {
                    "is none of the bodies sent"
                };
                p.corrupt.push(format!("{f}: content {what}"))
            }
            Some(_) => {}
        }
        if let Some(h) = f.strip_prefix("nar/").and_then(|n| n.strip_suffix(".nar")) {
            if h != d {
                p.corrupt
                    .push(format!("{f}: hashes to {d}, not to its name"));
            }
        }
        if !f.ends_with(".narinfo") {
            continue;
        }
        let Some((url, want, refs)) = known.narinfo.as_ref().map(|i| {
            (
                i.url.clone(),
                (i.file_size, i.file_hash.clone()),
                i.refs.clone(),
            )
        }) else {
            p.corrupt.push(format!("{f}: not UTF-8"));
            continue;
        };
        // The NAR it points to: present, with its FileSize and FileHash (its own
        // entry is checked against its name in this loop too).
        if !present.contains(url.as_str()) {
            p.corrupt.push(format!("{f}: URL {url} is not present"));
        } else {
            let got = digests
                .entry(&dir.join(&url))
                .ok()
                .map(|k| (k.size, k.digest.clone()));
            if got.as_ref() != Some(&want) {
                p.corrupt.push(format!(
                    "{f}: {url} is {got:?}, FileSize/FileHash say {want:?}"
                ));
            }
        }
        for r in refs {
            if !present.contains(r.as_str()) {
                p.corrupt.push(format!("{f}: reference {r} is absent"));
            }
        }
    }
    for (key, k) in &ledger.keys {
        if k.acked.is_some() && !present.contains(key.as_str()) {
            p.lost.push(format!("{key}: acknowledged, then missing"));
        }
    }
}

/// The restarted server against the disk (already checked against the ledger):
/// same bytes for present keys, 404 for absent ones, and each narinfo's NAR.
fn verify_http(server: &Server, keys: &[String], digests: &mut Digests, p: &mut Problems) -> u64 {
    let mut conn = Conn::new(server.addr);
    let mut requests = 0;
    for key in keys {
        let path = server.dir.join(key);
        let on_disk = digests.of(&path).ok();
        requests += 1;
        let r = match conn.get(&format!("/{key}")) {
            Ok(r) => r,
            Err(e) => {
                p.corrupt.push(format!("GET /{key}: {e}"));
                continue;
            }
        };
        match (&on_disk, r.status) {
            (Some(d), 200) if *d == digest(&r.body) => {}
            (None, 404) => {}
            (d, status) => {
                let what = if d.is_some() { "present" } else { "absent" };
                let kind = if d.is_some() && status == 404 {
                    &mut p.lost
                } else {
                    &mut p.corrupt
                };
                kind.push(format!(
                    "GET /{key}: {status} ({} bytes) for an object {what} on disk",
                    r.body.len()
                ));
                continue;
            }
        }
        if r.status != 200 || !key.ends_with(".narinfo") {
            continue;
        }
        let text = r.text();
        let fl = fields(&text);
        let url = fl.get("URL").copied().unwrap_or("");
        requests += 1;
        match conn.get(&format!("/{url}")) {
            Ok(nar)
                if nar.status == 200
                    && fl.get("FileHash") == Some(&format!("sha256:{}", digest(&nar.body)).as_str())
                    && fl.get("FileSize") == Some(&nar.body.len().to_string().as_str()) => {}
            Ok(nar) => p.corrupt.push(format!(
                "GET /{key} points to {url}, served as {} with {} bytes not matching FileHash/FileSize",
                nar.status,
                nar.body.len()
            )),
            Err(e) => p.corrupt.push(format!("GET /{url}: {e}")),
        }
    }
    requests
}

fn check_log(server: &Server, p: &mut Problems) {
    if server.log().contains("panicked") {
        p.corrupt
            .push(format!("server panicked:\n{}", server.log()));
    }
}

#[test]
fn crash_loop() {
    let seed = seed();
    let rounds: usize = env_or("NIX_STORED_ROBUST_ROUNDS", 200);
    let mut rng = Rng::new(seed);
    let dir = common::temp_dir("crash");
    let ledger: Shared = Arc::default();
    let mut digests = Digests::default();
    let mut problems = Problems::default();
    let (mut kills, mut leftovers, mut http_checks, mut large_rounds) = (0u64, 0usize, 0u64, 0);
    let (mut disk_time, mut http_time) = (Duration::ZERO, Duration::ZERO);
    for round in 0..=rounds {
        let server = ServerBuilder::new().dir(&dir).start();
        // After each restart: the disk, then the server, against the ledger.
        let checking = std::time::Instant::now();
        {
            let l = ledger.lock().unwrap();
            verify_disk(&dir, &l, &mut digests, &mut problems);
            // Through the server: every key that was in flight at the kill, a
            // sample of the round's others and of older ones (the disk check
            // above covered them all), and everything at the end.
            let touched: Vec<&String> = l.touched.iter().collect();
            let mut keys: Vec<String> = touched
                .iter()
                .filter(|k| {
                    l.keys
                        .get(k.as_str())
                        .is_some_and(|s| !s.unanswered.is_empty())
                })
                .map(|k| (*k).clone())
                .collect();
            if !touched.is_empty() {
                keys.extend((0..20).map(|_| (*rng.pick(&touched)).clone()));
            }
            let acked: Vec<&String> = l
                .keys
                .iter()
                .filter(|(_, k)| k.acked.is_some())
                .map(|(key, _)| key)
                .collect();
            if round == rounds {
                keys.extend(acked.into_iter().cloned());
            } else if !acked.is_empty() {
                keys.extend((0..10).map(|_| (*rng.pick(&acked)).clone()));
            }
            keys.sort();
            keys.dedup();
            drop(l);
            let disk_done = checking.elapsed();
            http_checks += verify_http(&server, &keys, &mut digests, &mut problems);
            disk_time += disk_done;
            http_time += checking.elapsed() - disk_done;
        }
        if problems.total() > 0 || round == rounds {
            check_log(&server, &mut problems);
            break;
        }
        ledger.lock().unwrap().touched.clear();

        // One writer starts with an 8-64 MiB NAR in some rounds, so that kills
        // also land in the middle of large bodies and their commits.
        let large = rng.chance(by_mode(1, 3), 20);
        large_rounds += usize::from(large);
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..WRITERS)
            .map(|id| {
                let w = Writer {
                    id,
                    round,
                    seed,
                    rng: Rng::new(rng.next_u64()),
                    addr: server.addr,
                    ledger: ledger.clone(),
                    stop: stop.clone(),
                    large_first: large && id == 0,
                };
                std::thread::spawn(move || run_writer(w))
            })
            .collect();
        let window = if large || full() { 2000 } else { 300 };
        std::thread::sleep(Duration::from_millis(rng.below(window)));
        let mut server = server;
        server.kill9();
        kills += 1;
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().expect("writer thread");
        }
        leftovers += temp_files(&dir);
        check_log(&server, &mut problems);
        if !ledger.lock().unwrap().refused.is_empty() {
            break;
        }
    }

    let l = ledger.lock().unwrap();
    let objects = common::files_below(&dir)
        .iter()
        .filter(|f| !f.starts_with(".tmp/") && *f != "nix-cache-info")
        .count();
    figures(
        TEST,
        format_args!(
            "{rounds} rounds ({large_rounds} with a large NAR), {kills} kills, {} uploads sent, {} acknowledged ({} MiB), {} unanswered at a kill, {leftovers} temporary files cleaned at restarts, {objects} objects at the end, {http_checks} reads checked (checks took {:.1} s on disk, {:.1} s over HTTP); {} lost, {} corrupt, {} partial visible, {} refused (seed {seed})",
            l.sent,
            l.acked,
            l.acked_bytes >> 20,
            l.sent - l.acked - l.refused.len() as u64,
            disk_time.as_secs_f64(),
            http_time.as_secs_f64(),
            problems.lost.len(),
            problems.corrupt.len(),
            problems.partial.len(),
            l.refused.len(),
        ),
    );
    let all: Vec<&String> = problems
        .lost
        .iter()
        .chain(&problems.corrupt)
        .chain(&problems.partial)
        .chain(&l.refused)
        .take(20)
        .collect();
    assert!(all.is_empty(), "crash loop found (seed {seed}):\n{all:#?}");
    assert_eq!(kills as usize, rounds, "every round ended with a kill");
    let _ = std::fs::remove_dir_all(&dir);
}
