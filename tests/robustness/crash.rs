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
    let size = if full() {
        rng.log_size(1, 64 << 20)
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
            // Re-sign one of its paths: an overwrite, as `nix store sign` does.
            let i = w.rng.below(own.len() as u64) as usize;
            own[i].info.sigs = vec![signature(&mut w.rng)];
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
    }
}

/// Digests of files, recomputed only when a file's identity or mtime changed
/// (the server never writes in place, so an unchanged inode is unchanged bytes).
#[derive(Default)]
struct Digests(HashMap<PathBuf, (u64, i64, i64, u64, String)>);

impl Digests {
    fn of(&mut self, path: &Path) -> std::io::Result<String> {
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::metadata(path)?;
        let id = (md.ino(), md.mtime(), md.mtime_nsec(), md.len());
        if let Some((ino, s, ns, len, d)) = self.0.get(path) {
            if (*ino, *s, *ns, *len) == id {
                return Ok(d.clone());
            }
        }
        let d = file_digest(path)?;
        self.0
            .insert(path.to_owned(), (id.0, id.1, id.2, id.3, d.clone()));
        Ok(d)
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

/// `Key: value` fields of a narinfo.
fn fields(text: &str) -> HashMap<&str, &str> {
    text.lines().filter_map(|l| l.split_once(": ")).collect()
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
        let d = match digests.of(&dir.join(f)) {
            Ok(d) => d,
            Err(e) => {
                p.corrupt.push(format!("{f}: unreadable: {e}"));
                continue;
            }
        };
        match ledger.keys.get(f.as_str()) {
            None => p.partial.push(format!("{f}: no client sent this key")),
            Some(k) if k.acked.as_ref() != Some(&d) && !k.unanswered.contains(&d) => {
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
    }
    for (key, k) in &ledger.keys {
        if k.acked.is_some() && !present.contains(key.as_str()) {
            p.lost.push(format!("{key}: acknowledged, then missing"));
        }
    }
    for f in files.iter().filter(|f| f.ends_with(".narinfo")) {
        let Ok(text) = std::fs::read_to_string(dir.join(f)) else {
            p.corrupt.push(format!("{f}: not UTF-8"));
            continue;
        };
        let fl = fields(&text);
        let url = fl.get("URL").copied().unwrap_or("");
        let want_hash = fl
            .get("FileHash")
            .and_then(|h| h.strip_prefix("sha256:"))
            .unwrap_or("");
        let want_size: u64 = fl
            .get("FileSize")
            .and_then(|s| s.parse().ok())
            .unwrap_or(u64::MAX);
        if !present.contains(url) {
            p.corrupt.push(format!("{f}: URL {url} is not present"));
            continue;
        }
        let size = std::fs::metadata(dir.join(url)).map_or(0, |m| m.len());
        let d = digests.of(&dir.join(url)).unwrap_or_default();
        if size != want_size || d != want_hash {
            p.corrupt.push(format!(
                "{f}: {url} is {size} bytes hashing to {d}, FileSize/FileHash say {want_size}/{want_hash}"
            ));
        }
        for r in fl
            .get("References")
            .map_or(Vec::new(), |r| r.split_whitespace().collect())
        {
            let info = format!("{}.narinfo", &r[..32.min(r.len())]);
            if !present.contains(info.as_str()) {
                p.corrupt.push(format!("{f}: reference {r} has no narinfo"));
            }
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
        if !key.ends_with(".narinfo") {
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
    for round in 0..=rounds {
        let server = ServerBuilder::new().dir(&dir).start();
        // After each restart: the disk, then the server, against the ledger.
        {
            let l = ledger.lock().unwrap();
            verify_disk(&dir, &l, &mut digests, &mut problems);
            let mut keys: Vec<String> = l.touched.iter().cloned().collect();
            let acked: Vec<&String> = l
                .keys
                .iter()
                .filter(|(_, k)| k.acked.is_some())
                .map(|(key, _)| key)
                .collect();
            if round == rounds {
                // The end: every acknowledged object through the server.
                keys.extend(acked.into_iter().cloned());
            } else if !acked.is_empty() {
                keys.extend((0..25).map(|_| (*rng.pick(&acked)).clone()));
            }
            keys.sort();
            keys.dedup();
            drop(l);
            http_checks += verify_http(&server, &keys, &mut digests, &mut problems);
        }
        if problems.total() > 0 || round == rounds {
            check_log(&server, &mut problems);
            break;
        }
        ledger.lock().unwrap().touched.clear();

        let large = full() || rng.chance(1, 20);
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
        let window = if large { 2000 } else { 300 };
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
            "{rounds} rounds ({large_rounds} with a large NAR), {kills} kills, {} uploads sent, {} acknowledged ({} MiB), {} unanswered at a kill, {leftovers} temporary files cleaned at restarts, {objects} objects at the end, {http_checks} reads checked; {} lost, {} corrupt, {} partial visible, {} refused (seed {seed})",
            l.sent,
            l.acked,
            l.acked_bytes >> 20,
            l.sent - l.acked - l.refused.len() as u64,
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
