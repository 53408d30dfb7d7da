//! Pull-through upstream caches (NIX_STORED_UPSTREAMS), black-box: the upstream is a
//! small file server on loopback (in this file) serving a cache directory, mostly one
//! written and signed by the real Nix client (`nix copy --to file://…?secret-key=`).
//! The file server counts requests, and can truncate or slow down its answers.
//!
//! The Nix tests are skipped (with a message) when `nix` is missing, unless
//! NIX_STORED_REQUIRE_NIX=1.

// Pull-through needs the upstream feature (the lean build refuses its settings:
// tests/config.rs).
#![cfg(feature = "upstream")]

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::nix::{Client, Nix};
use common::*;

// ---------------------------------------------------------------------------------
// The upstream: a file server.

/// A minimal HTTP/1.1 server of a directory: GET and HEAD, one request per connection.
struct FileServer {
    addr: SocketAddr,
    /// `METHOD /path` of every request, in order of arrival.
    requests: Arc<Mutex<Vec<String>>>,
    /// Paths answered with their full Content-Length but only half the bytes.
    truncate: Arc<Mutex<HashSet<String>>>,
    /// Whether bodies are sent slowly (64 KiB every 5 ms).
    slow: Arc<AtomicBool>,
    /// The `Authorization` header of every request that had one.
    auth: Arc<Mutex<Vec<String>>>,
    /// Paths whose bodies stop halfway until the test releases them.
    gate: Arc<Gate>,
}

/// Holds the second half of some answers until released.
#[derive(Default)]
struct Gate {
    paths: Mutex<HashSet<String>>,
    open: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    /// Sends only the first half of `path` until [`Gate::release`].
    fn hold(&self, path: &str) {
        self.paths.lock().unwrap().insert(path.to_owned());
    }

    fn release(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }

    fn holds(&self, path: &str) -> bool {
        self.paths.lock().unwrap().contains(path)
    }

    fn wait(&self) {
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.opened.wait(open).unwrap();
        }
    }
}

impl FileServer {
    fn serve(dir: &Path) -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = FileServer {
            addr,
            requests: Arc::default(),
            truncate: Arc::default(),
            slow: Arc::default(),
            auth: Arc::default(),
            gate: Arc::default(),
        };
        let (dir, requests, truncate, slow, auth, gate) = (
            dir.to_path_buf(),
            server.requests.clone(),
            server.truncate.clone(),
            server.slow.clone(),
            server.auth.clone(),
            server.gate.clone(),
        );
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (dir, requests, truncate, slow, auth, gate) = (
                    dir.clone(),
                    requests.clone(),
                    truncate.clone(),
                    slow.clone(),
                    auth.clone(),
                    gate.clone(),
                );
                std::thread::spawn(move || {
                    let _ = answer(conn, &dir, &requests, &truncate, &slow, &auth, &gate);
                });
            }
        });
        server
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many requests `METHOD /path` arrived.
    fn count(&self, request: &str) -> usize {
        let requests = self.requests.lock().unwrap();
        requests.iter().filter(|r| *r == request).count()
    }

    fn total(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

fn answer(
    conn: TcpStream,
    dir: &Path,
    requests: &Mutex<Vec<String>>,
    truncate: &Mutex<HashSet<String>>,
    slow: &AtomicBool,
    auth: &Mutex<Vec<String>>,
    gate: &Gate,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let path = parts.next().unwrap_or("").to_owned();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("authorization") {
                auth.lock().unwrap().push(value.trim().to_owned());
            }
        }
    }
    requests.lock().unwrap().push(format!("{method} {path}"));
    let mut conn = conn;
    let file = (!path.contains(".."))
        .then(|| std::fs::read(dir.join(path.trim_start_matches('/'))).ok())
        .flatten();
    let Some(body) = file else {
        return conn.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    };
    write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    if method == "HEAD" {
        return Ok(());
    }
    let sent = if truncate.lock().unwrap().contains(&path) {
        &body[..body.len() / 2]
    } else {
        &body[..]
    };
    if gate.holds(&path) {
        let half = body.len() / 2;
        conn.write_all(&sent[..half.min(sent.len())])?;
        conn.flush()?;
        gate.wait();
        conn.write_all(&sent[half.min(sent.len())..])?;
    } else if slow.load(Ordering::Relaxed) {
        for piece in sent.chunks(64 << 10) {
            conn.write_all(piece)?;
            std::thread::sleep(Duration::from_millis(5));
        }
    } else {
        conn.write_all(sent)?;
    }
    // Closed here: a truncated body ends short of its Content-Length.
    Ok(())
}

/// A nix-stored server pulling through `upstreams` (space-separated URLs), with the
/// upstream key `pk` and a short timeout.
fn pulling(upstreams: &str, pk: &str) -> Server {
    pulling_settings(upstreams, pk).start()
}

/// The settings of [`pulling`].
fn pulling_settings(upstreams: &str, pk: &str) -> ServerBuilder {
    ServerBuilder::new()
        .env("NIX_STORED_UPSTREAMS", upstreams)
        .env("NIX_STORED_UPSTREAM_KEYS", pk)
        .env("NIX_STORED_UPSTREAM_TIMEOUT", "3")
}

/// The hash part of a store path.
fn hash_of(path: &str) -> &str {
    let base = path.rsplit('/').next().unwrap();
    &base[..32]
}

/// The `URL:` of a narinfo.
fn url_of(narinfo: &str) -> String {
    narinfo
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .expect("URL line")
        .to_owned()
}

fn narinfos(store: &Store) -> Vec<String> {
    let mut files = store.files();
    files.retain(|f| f.ends_with(".narinfo"));
    files
}

// ---------------------------------------------------------------------------------
// The real Nix client (the host's).

/// A fresh upstream cache directory holding `path`'s closure, signed with `sk`; its
/// path on the host.
fn upstream_with(nix: &Nix, path: &str, sk: &str) -> PathBuf {
    let dir = nix.temp_dir("upstream");
    let url = format!("file://{}?secret-key={sk}&compression=zstd", dir.display());
    nix.ok("nix", &["copy", "--to", &url, path]);
    nix.host(&dir)
}

with_both_clients!(
    real_nix_substitutes_a_closure_pulled_from_the_upstream,
    a_builder_uploads_only_what_the_upstream_lacks,
    tampered_upstream_narinfos_and_nars_are_refused_and_not_stored,
    real_nix_substitutes_through_two_servers_sharing_a_bucket,
);

// ---------------------------------------------------------------------------------
// Tests.

/// Real Nix, with nix-stored as its only substituter and the upstream's key as the only
/// trusted one, substitutes a closure that only the upstream had; NARs of pulled paths
/// answer HEAD and Range; a second substitution does not ask the upstream again.
fn real_nix_substitutes_a_closure_pulled_from_the_upstream(client: Client) {
    let Some(nix) = Nix::new(client) else { return };
    let c = nix.build_attr("app");
    let (sk, pk) = nix.keys_named("upstream-1");
    let up_dir = upstream_with(&nix, &c.app, &sk);
    let up = FileServer::serve(&up_dir);
    let s = pulling(&up.url(), &pk);

    nix.delete_paths(&c.paths);
    let args = [
        "-r",
        c.app.as_str(),
        "--option",
        "substituters",
        &s.url(),
        "--option",
        "trusted-public-keys",
        &pk,
    ];
    nix.ok("nix-store", &args);
    let app = std::fs::read_to_string(nix.host(Path::new(&c.app).join("bin/app"))).unwrap();
    assert!(app.starts_with("uses /nix/store/"), "{app:?}");

    assert_eq!(c.paths.len(), 3);
    // Narinfos are answered while their paths are pulled, and committed once their
    // NAR and references are stored: Nix may be done a moment before the last.
    let committed = || {
        c.paths
            .iter()
            .all(|p| s.store.exists(&format!("{}.narinfo", hash_of(p))))
    };
    assert!(
        eventually(Duration::from_secs(30), committed),
        "{}",
        s.log()
    );
    for p in &c.paths {
        let key = format!("{}.narinfo", hash_of(p));
        let stored = s.store.read(&key).expect("pulled narinfo is stored");
        assert_eq!(Some(stored.clone()), std::fs::read(up_dir.join(&key)).ok());
        assert!(s.store.exists(&url_of(&String::from_utf8(stored).unwrap())));
    }
    let hits = format!(
        "nix_stored_upstream_hits_total{{upstream=\"{}\"}}",
        up.url()
    );
    // Counted once the pull's commit returned, a moment after the narinfo appeared.
    assert!(
        eventually(Duration::from_secs(10), || metric(&s, &hits) == 3),
        "{}",
        get(&s, "/metrics").text()
    );

    // The NAR of a pulled path: HEAD and Range.
    let info = String::from_utf8(
        s.store
            .read(&format!("{}.narinfo", hash_of(&c.app)))
            .unwrap(),
    )
    .unwrap();
    let nar = format!("/{}", url_of(&info));
    let file = std::fs::read(up_dir.join(&nar[1..])).unwrap();
    let h = head(&s, &nar);
    assert_eq!(h.status, 200);
    assert_eq!(
        h.header("content-length"),
        Some(file.len().to_string().as_str())
    );
    let r = send(s.addr, "GET", &nar, &[("Range", "bytes=4-")], b"");
    assert_eq!(r.status, 206);
    assert_eq!(r.body, file[4..]);

    // Served locally from now on.
    let asked = up.total();
    nix.delete_paths(&c.paths);
    nix.ok("nix-store", &args);
    assert_eq!(up.total(), asked, "{:?}", up.requests.lock().unwrap());
}

/// nginx balancing requests between two servers on one bucket, round robin (each
/// request to the next server, as a load balancer without affinity does): real Nix
/// substitutes a closure only the upstream had through it while the upstream holds
/// the NARs back, so that every NAR is asked for while its path is still pending.
/// (Nix asks each narinfo several times, so here both servers look every path up;
/// a NAR request reaching a server that saw no narinfo request is
/// `a_nar_pulled_by_one_server_is_served_by_another_sharing_its_bucket`.)
fn real_nix_substitutes_through_two_servers_sharing_a_bucket(client: Client) {
    if s3_only("servers share a bucket; a directory is one server's") {
        return;
    }
    let Some(nix) = Nix::new(client) else { return };
    let c = nix.build_attr("app");
    let (sk, pk) = nix.keys_named("upstream-1");
    let up_dir = upstream_with(&nix, &c.app, &sk);
    let up = FileServer::serve(&up_dir);
    let a = pulling(&up.url(), &pk);
    let b = pulling_settings(&up.url(), &pk).store(&a.store).start();
    let Some(balancer) = RoundRobin::start(&[a.addr, b.addr]) else {
        return;
    };
    // The upstream holds back every NAR for a while, so that Nix asks for NARs
    // while their paths are still being pulled (not yet in the bucket).
    for p in &c.paths {
        let info = std::fs::read_to_string(up_dir.join(format!("{}.narinfo", hash_of(p)))).unwrap();
        up.gate.hold(&format!("/{}", url_of(&info)));
    }
    let gate = up.gate.clone();
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(3));
        gate.release();
    });

    nix.delete_paths(&c.paths);
    nix.ok(
        "nix-store",
        &[
            "-r",
            c.app.as_str(),
            "--option",
            "substituters",
            &balancer.url,
            "--option",
            "trusted-public-keys",
            &pk,
        ],
    );
    release.join().unwrap();
    let app = std::fs::read_to_string(nix.host(Path::new(&c.app).join("bin/app"))).unwrap();
    assert!(app.starts_with("uses /nix/store/"), "{app:?}");
    // Both servers answered some of it.
    let nars = |s: &Server| {
        metric(
            s,
            "nix_stored_requests_total{route=\"nar\",method=\"GET\",status=\"200\"}",
        )
    };
    assert!(nars(&a) + nars(&b) >= 3, "{}", get(&a, "/metrics").text());
    assert!(
        eventually(Duration::from_secs(30), || c
            .paths
            .iter()
            .all(|p| a.store.exists(&format!("{}.narinfo", hash_of(p))))),
        "{}\n{}",
        a.log(),
        b.log()
    );
    assert!(
        eventually(Duration::from_secs(10), || a
            .store
            .files()
            .iter()
            .all(|f| !f.starts_with("nix-stored/pulling/"))),
        "{:?}",
        a.store.files()
    );
}

/// nginx in front of some servers, sending each request to the next one in turn.
struct RoundRobin {
    url: String,
    dir: PathBuf,
    child: std::process::Child,
}

impl RoundRobin {
    /// `None` (the test skipped) when nginx is missing, unless
    /// NIX_STORED_REQUIRE_PROXIES=1.
    fn start(servers: &[SocketAddr]) -> Option<RoundRobin> {
        if !tool_installed("nginx", "-v", "apt-get install nginx-light") {
            return None;
        }
        let dir = temp_dir("round-robin");
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let d = dir.display();
        let backends: String = servers.iter().map(|s| format!("server {s}; ")).collect();
        // One connection per request (nginx's default towards upstreams) and no
        // retry on another server: every request goes to the next server, once.
        let conf = format!(
            "daemon off;\nuser root;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log info;\nevents {{}}\nhttp {{\n\
             access_log {d}/access.log;\n\
             client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
             upstream pair {{ {backends}}}\n\
             server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://pair; \
             proxy_buffering off; proxy_next_upstream off; }} }}\n}}\n"
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let child = Command::new("nginx")
            .args(["-e", &format!("{d}/error.log"), "-c"])
            .arg(&path)
            .spawn()
            .expect("start nginx");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        assert!(
            eventually(Duration::from_secs(10), || TcpStream::connect(addr).is_ok()),
            "nginx did not start: {}",
            std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        );
        Some(RoundRobin {
            url: format!("http://{addr}"),
            dir,
            child,
        })
    }
}

impl Drop for RoundRobin {
    fn drop(&mut self) {
        // SIGTERM: nginx's master then stops its worker, which a SIGKILL would orphan.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A builder's `nix copy --to` nix-stored uploads only the path the upstream lacks:
/// the closure check of its upload counts the pulled references.
fn a_builder_uploads_only_what_the_upstream_lacks(client: Client) {
    let Some(nix) = Nix::new(client) else { return };
    let c = nix.build_attr("app");
    let lib = c
        .paths
        .iter()
        .find(|p| p.contains("-lib-"))
        .expect("lib in the closure")
        .clone();
    let (sk, pk) = nix.keys_named("upstream-1");
    let up_dir = upstream_with(&nix, &lib, &sk);
    let up = FileServer::serve(&up_dir);
    let s = pulling(&up.url(), &pk);

    nix.ok(
        "nix",
        &[
            "copy",
            "--to",
            &format!("{}?compression=zstd", s.url()),
            &c.app,
        ],
    );
    let puts = |route: &str| {
        metric(
            &s,
            &format!(
                "nix_stored_requests_total{{route=\"{route}\",method=\"PUT\",status=\"201\"}}"
            ),
        )
    };
    assert_eq!(puts("narinfo"), 1, "{}", get(&s, "/metrics").text());
    assert_eq!(puts("nar"), 1);
    assert_eq!(narinfos(&s.store).len(), 3, "{:?}", s.store.files());
    // The upstream was asked for the builder's own path, and had it not.
    let misses = format!(
        "nix_stored_upstream_misses_total{{upstream=\"{}\"}}",
        up.url()
    );
    assert!(metric(&s, &misses) >= 1, "{}", get(&s, "/metrics").text());
    assert_eq!(up.count(&format!("GET /{}.narinfo", hash_of(&c.app))), 1);
    for p in &c.paths {
        assert_eq!(get(&s, &format!("/{}.narinfo", hash_of(p))).status, 200);
    }
}

/// An upstream narinfo with a broken signature, a NAR file with other contents than its
/// FileHash, one cut short in transfer and one cut short on the upstream's disk: each
/// path is a 404 (at once for the signature, once its NAR is refused for the others),
/// nothing of it is stored, and neither is a path referring to them.
/// An untouched path of the same upstream is pulled (the setup itself works).
fn tampered_upstream_narinfos_and_nars_are_refused_and_not_stored(client: Client) {
    let Some(nix) = Nix::new(client) else { return };
    let c = nix.build_attr("wide");
    let (sk, pk) = nix.keys_named("upstream-1");
    let up_dir = upstream_with(&nix, &c.app, &sk);
    let up = FileServer::serve(&up_dir);
    let leaf = |i: u32| {
        let p = c
            .paths
            .iter()
            .find(|p| p.contains(&format!("-leaf{i}-")))
            .unwrap();
        let key = format!("{}.narinfo", hash_of(p));
        let text = std::fs::read_to_string(up_dir.join(&key)).unwrap();
        (key, text)
    };

    // 1: one character of the signature changed.
    let (key1, text1) = leaf(1);
    let sig = text1.lines().find(|l| l.starts_with("Sig: ")).unwrap();
    let (name, b64) = sig
        .split_once(':')
        .map(|(_, r)| r.trim())
        .unwrap()
        .split_once(':')
        .unwrap();
    let flipped = if b64.starts_with('A') { "B" } else { "A" };
    let bad_sig = format!("Sig: {name}:{flipped}{}", &b64[1..]);
    std::fs::write(up_dir.join(&key1), text1.replace(sig, &bad_sig)).unwrap();
    // 2: the NAR file of leaf 2 holds leaf 6's.
    let (key2, text2) = leaf(2);
    let (_, text6) = leaf(6);
    std::fs::copy(up_dir.join(url_of(&text6)), up_dir.join(url_of(&text2))).unwrap();
    // 3: cut short in transfer (the full Content-Length announced).
    let (key3, text3) = leaf(3);
    up.truncate
        .lock()
        .unwrap()
        .insert(format!("/{}", url_of(&text3)));
    // 4: cut short on disk.
    let (key4, text4) = leaf(4);
    let nar4 = up_dir.join(url_of(&text4));
    let bytes = std::fs::read(&nar4).unwrap();
    std::fs::write(&nar4, &bytes[..bytes.len() - 16]).unwrap();

    let s = pulling(&up.url(), &pk);
    // A bad signature is refused at once; a bad NAR once its download is checked (the
    // narinfo is answered meanwhile), and then so is a path that refers to it.
    assert_eq!(get(&s, &format!("/{key1}")).status, 404);
    let wide = format!("/{}.narinfo", hash_of(&c.app));
    for path in [
        format!("/{key2}"),
        format!("/{key3}"),
        format!("/{key4}"),
        wide,
    ] {
        let gone = eventually(Duration::from_secs(60), || get(&s, &path).status == 404);
        assert!(gone, "{path}: {}", s.log());
        assert_eq!(head(&s, &path).status, 404, "{path}");
    }
    // Nothing but the untouched leaves 5 and 6, which the pull of `wide` may have
    // fetched before it met a tampered one.
    let (key5, text5) = leaf(5);
    let untouched = [key5.clone(), leaf(6).0];
    let untouched_nars = [url_of(&text5), url_of(&text6)];
    for key in narinfos(&s.store) {
        assert!(
            untouched.contains(&key),
            "{key} stored: {:?}",
            s.store.files()
        );
    }
    for nar in s.store.nars() {
        assert!(
            untouched_nars.contains(&nar),
            "{nar} stored: {:?}",
            s.store.files()
        );
    }
    assert_eq!(s.pending(), Vec::<String>::new());
    // Each of the four was asked for (the NARs of 2-4 downloaded), and refused.
    assert_eq!(up.count(&format!("GET /{}", url_of(&text3))), 1);
    let errors = format!(
        "nix_stored_upstream_errors_total{{upstream=\"{}\"}}",
        up.url()
    );
    assert!(metric(&s, &errors) >= 4, "{}", get(&s, "/metrics").text());
    assert!(s.log().contains("signature"), "{}", s.log());

    assert_eq!(get(&s, &format!("/{key5}")).status, 200);
    assert!(eventually(Duration::from_secs(30), || s
        .store
        .exists(&key5)));
    assert!(s.store.exists(&url_of(&text5)));
}

/// An upstream that refuses connections and one that accepts and never answers: a
/// miss is a 404 (not a 5xx, not a hang), remembered for the negative TTL, and a
/// local hit never asks them.
#[test]
fn an_upstream_down_or_hanging_gives_404_and_local_hits_do_not_wait() {
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let hanging = TcpListener::bind("127.0.0.1:0").unwrap();
    let hanging_addr = hanging.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let held = Arc::new(Mutex::new(Vec::new()));
    {
        let (accepted, held) = (accepted.clone(), held.clone());
        std::thread::spawn(move || {
            for conn in hanging.incoming().flatten() {
                accepted.fetch_add(1, Ordering::Relaxed);
                held.lock().unwrap().push(conn);
            }
        });
    }
    let key = signing_key(3);
    let s = ServerBuilder::new()
        .env(
            "NIX_STORED_UPSTREAMS",
            &format!("http://{closed} http://{hanging_addr}"),
        )
        .env("NIX_STORED_UPSTREAM_KEYS", &public_key_line("up-1", &key))
        .env("NIX_STORED_UPSTREAM_TIMEOUT", "2")
        .start();

    let missing = format!("/{}.narinfo", store_hash("missing"));
    let started = Instant::now();
    let r = get(&s, &missing);
    assert_eq!(r.status, 404, "{}", r.text());
    // Bounded by the timeout (2 s), far below the client's own 60 s.
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(accepted.load(Ordering::Relaxed), 1);
    for upstream in [closed, hanging_addr] {
        let errors = format!("nix_stored_upstream_errors_total{{upstream=\"http://{upstream}\"}}");
        assert_eq!(metric(&s, &errors), 1, "{}", get(&s, "/metrics").text());
    }
    // The miss is remembered: no second wait.
    assert_eq!(head(&s, &missing).status, 404);
    assert_eq!(accepted.load(Ordering::Relaxed), 1);

    // A path uploaded here is served without asking the upstreams.
    let hash = store_hash("local");
    let nar = nar_of(b"local");
    let info = NarInfo::uncompressed("/nix/store", &hash, "local", &nar, &[]);
    assert_eq!(put(&s, &format!("/{}", info.url), &nar).status, 201);
    assert_eq!(
        put(&s, &format!("/{hash}.narinfo"), info.render().as_bytes()).status,
        201
    );
    assert_eq!(get(&s, &format!("/{hash}.narinfo")).status, 200);
    assert_eq!(accepted.load(Ordering::Relaxed), 1);
}

/// Thirty clients asking at once for the narinfo and then the NAR of one large path
/// only the upstream has: one upstream download of each, and every client gets the
/// whole NAR.
#[test]
fn concurrent_requests_for_one_large_nar_share_one_upstream_download() {
    let up_dir = temp_dir("upstream");
    let key = signing_key(5);
    let hash = store_hash("big");
    let contents: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
    let nar = nar_of(&contents);
    let (mut info, file) = NarInfo::packed("/nix/store", &hash, "big", &nar, "zstd");
    info.sign("/nix/store", "up-1", &key);
    std::fs::write(up_dir.join(format!("{hash}.narinfo")), info.render()).unwrap();
    std::fs::create_dir_all(up_dir.join("nar")).unwrap();
    std::fs::write(up_dir.join(&info.url), &file).unwrap();
    let up = FileServer::serve(&up_dir);
    up.slow.store(true, Ordering::Relaxed);
    let s = pulling(&up.url(), &public_key_line("up-1", &key));

    let addr = s.addr;
    let clients: Vec<_> = (0..50)
        .map(|_| {
            let (hash, url) = (hash.clone(), info.url.clone());
            std::thread::spawn(move || {
                let narinfo = send(addr, "GET", &format!("/{hash}.narinfo"), &[], b"");
                let nar = send(addr, "GET", &format!("/{url}"), &[], b"");
                (narinfo.status, nar.status, nar.body)
            })
        })
        .collect();
    for c in clients {
        let (narinfo, status, body) = c.join().unwrap();
        assert_eq!((narinfo, status), (200, 200));
        assert!(
            body == file,
            "a client got {} bytes of {}",
            body.len(),
            file.len()
        );
    }
    let requests: HashMap<String, usize> =
        up.requests
            .lock()
            .unwrap()
            .iter()
            .fold(HashMap::new(), |mut m, r| {
                *m.entry(r.clone()).or_default() += 1;
                m
            });
    assert_eq!(
        requests.get(&format!("GET /{hash}.narinfo")),
        Some(&1),
        "{requests:?}"
    );
    assert_eq!(
        requests.get(&format!("GET /{}", info.url)),
        Some(&1),
        "{requests:?}"
    );
    assert_eq!(requests.len(), 2, "{requests:?}");
}

/// Upstreams without the keys their narinfos must be signed with: refused at start.
#[test]
fn upstreams_without_keys_are_refused_at_start() {
    let (status, err) = ServerBuilder::new()
        .env(
            "NIX_STORED_UPSTREAMS",
            "https://user:secret@cache.example.org",
        )
        .start_expect_failure();
    assert!(!status.success());
    assert!(err.contains("NIX_STORED_UPSTREAM_KEYS"), "{err}");
    assert!(!err.contains("secret"), "{err}");
    let (status, err) = ServerBuilder::new()
        .env(
            "NIX_STORED_UPSTREAMS",
            "ftp://user:secret@cache.example.org",
        )
        .env(
            "NIX_STORED_UPSTREAM_KEYS",
            &public_key_line("up-1", &signing_key(1)),
        )
        .start_expect_failure();
    assert!(!status.success());
    assert!(err.contains("NIX_STORED_UPSTREAMS"), "{err}");
    assert!(!err.contains("secret"), "{err}");
}

/// A client that gives up while it downloads the NAR of a path being pulled (a slow
/// upstream NAR) does not stop the pull: the path ends up stored, and the next request
/// finds it. Over HTTPS with HTTP/2 (curl, killed mid-download), where the closed
/// connection drops the request's handler and its body.
#[cfg(feature = "tls")]
#[test]
fn a_pull_finishes_when_its_client_gives_up() {
    use common::tls::{KeyFormat, TestCert};
    let up_dir = temp_dir("upstream");
    let key = signing_key(6);
    let hash = store_hash("abandoned");
    let contents: Vec<u8> = (0..8u32 << 20).map(|i| (i % 241) as u8).collect();
    let nar = nar_of(&contents);
    let mut info = NarInfo::uncompressed("/nix/store", &hash, "abandoned", &nar, &[]);
    info.sign("/nix/store", "up-1", &key);
    std::fs::write(up_dir.join(format!("{hash}.narinfo")), info.render()).unwrap();
    std::fs::create_dir_all(up_dir.join("nar")).unwrap();
    std::fs::write(up_dir.join(&info.url), &nar).unwrap();
    let up = FileServer::serve(&up_dir);
    up.slow.store(true, Ordering::Relaxed);
    let cert_dir = temp_dir("cert");
    let cert = TestCert::generate(&cert_dir, "nix-stored-upstream", KeyFormat::Pkcs8Ec);
    let s = ServerBuilder::new()
        .tls(&cert)
        .env("NIX_STORED_UPSTREAMS", &up.url())
        .env("NIX_STORED_UPSTREAM_KEYS", &public_key_line("up-1", &key))
        .start();

    let url = format!("https://127.0.0.1:{}/{hash}.narinfo", s.addr.port());
    // Answered while the path is pulled.
    assert_eq!(curl_get(&cert, &url), info.render().into_bytes());
    let nar_url = format!("https://127.0.0.1:{}/{}", s.addr.port(), info.url);
    let mut curl = Command::new("curl")
        .args([
            "-sS",
            "--http2",
            "--cacert",
            cert.cert.to_str().unwrap(),
            &nar_url,
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("curl is needed (apt-get install curl)");
    let nar_request = format!("GET /{}", info.url);
    let started = eventually(Duration::from_secs(30), || up.count(&nar_request) == 1);
    let _ = curl.kill();
    let _ = curl.wait();
    assert!(
        started,
        "no NAR download: {:?}",
        up.requests.lock().unwrap()
    );
    assert!(
        eventually(Duration::from_secs(60), || s
            .store
            .exists(&format!("{hash}.narinfo"))),
        "the pull stopped with its client; log:\n{}",
        s.log()
    );
    let got = curl_get(&cert, &url);
    assert_eq!(got, info.render().into_bytes());
    assert_eq!(up.count(&nar_request), 1);
}

/// The body of an HTTPS GET by curl, which must succeed.
#[cfg(feature = "tls")]
fn curl_get(cert: &common::tls::TestCert, url: &str) -> Vec<u8> {
    let out = common::tls::curl(&[
        "--http2",
        "--fail",
        "--cacert",
        cert.cert.to_str().unwrap(),
        url,
    ]);
    assert!(out.status.success());
    out.stdout
}

/// Credentials in an upstream URL are sent (HTTP Basic, on every request) and appear
/// in no log line and no metric label.
#[test]
fn upstream_credentials_are_sent_and_never_shown() {
    let up_dir = temp_dir("upstream");
    let key = signing_key(8);
    let hash = store_hash("private");
    let nar = nar_of(b"private");
    let mut info = NarInfo::uncompressed("/nix/store", &hash, "private", &nar, &[]);
    info.sign("/nix/store", "up-1", &key);
    std::fs::write(up_dir.join(format!("{hash}.narinfo")), info.render()).unwrap();
    std::fs::create_dir_all(up_dir.join("nar")).unwrap();
    std::fs::write(up_dir.join(&info.url), &nar).unwrap();
    let up = FileServer::serve(&up_dir);
    let with_credentials = format!("http://cache-user:s3cret-pw@{}", up.addr);
    let s = pulling(&with_credentials, &public_key_line("up-1", &key));

    assert_eq!(get(&s, &format!("/{hash}.narinfo")).status, 200);
    assert_eq!(
        get(&s, &format!("/{}.narinfo", store_hash("absent"))).status,
        404
    );
    let hits = format!(
        "nix_stored_upstream_hits_total{{upstream=\"{}\"}}",
        up.url()
    );
    // Counted once the pull (the NAR's request too) is done, which the narinfo's
    // answer does not wait for.
    assert!(
        eventually(Duration::from_secs(30), || metric(&s, &hits) == 1),
        "{}",
        get(&s, "/metrics").text()
    );
    let expected = basic("cache-user", "s3cret-pw");
    let auth = up.auth.lock().unwrap().clone();
    assert_eq!(auth.len(), up.total(), "{auth:?}");
    assert!(auth.iter().all(|a| *a == expected), "{auth:?}");
    let metrics = get(&s, "/metrics").text();
    assert!(!metrics.contains("s3cret"), "{metrics}");
    assert!(!s.log().contains("s3cret"), "{}", s.log());
    // Nor in --help, which shows the values of the variables it documents.
    let help = Command::new(env!("CARGO_BIN_EXE_nix-stored"))
        .arg("--help")
        .env("NIX_STORED_UPSTREAMS", &with_credentials)
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("NIX_STORED_UPSTREAMS"), "{help}");
    assert!(!help.contains("s3cret"), "{help}");
}

// ---------------------------------------------------------------------------------
// Paths answered while they are pulled: NARs streamed as they arrive.

/// A GET read by hand: the head at once, the body piece by piece.
struct Download {
    reader: BufReader<TcpStream>,
    status: u16,
    length: usize,
    body: Vec<u8>,
}

impl Download {
    fn start(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Download {
        let mut stream = connect(addr);
        stream
            .write_all(&request_head(addr, "GET", path, headers, None))
            .unwrap();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let status = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        let mut length = 0;
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).unwrap();
            if header.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap();
                }
            }
        }
        Download {
            reader,
            status,
            length,
            body: Vec::new(),
        }
    }

    /// Reads what arrives next (at least a byte, or the end).
    fn read_some(&mut self) -> usize {
        let mut buf = vec![0u8; 64 << 10];
        let n = self.reader.read(&mut buf).unwrap();
        self.body.extend_from_slice(&buf[..n]);
        n
    }

    /// Reads to the end of the connection; whether the whole Content-Length came.
    fn finish(&mut self) -> bool {
        let mut rest = Vec::new();
        let _ = self.reader.read_to_end(&mut rest);
        self.body.extend_from_slice(&rest);
        self.body.len() == self.length
    }
}

/// An upstream cache directory holding one signed path with an uncompressed NAR of
/// `size` bytes of contents: its hash, narinfo and NAR file.
fn upstream_path(
    dir: &Path,
    key: &ed25519_dalek::SigningKey,
    name: &str,
    size: u32,
) -> (String, NarInfo, Vec<u8>) {
    let hash = store_hash(name);
    let salt = name
        .bytes()
        .fold(0u8, |a, b| a.wrapping_mul(31).wrapping_add(b));
    let contents: Vec<u8> = (0..size).map(|i| (i % 239) as u8 ^ salt).collect();
    let nar = nar_of(&contents);
    let mut info = NarInfo::uncompressed("/nix/store", &hash, name, &nar, &[]);
    info.sign("/nix/store", "up-1", key);
    std::fs::write(dir.join(format!("{hash}.narinfo")), info.render()).unwrap();
    std::fs::create_dir_all(dir.join("nar")).unwrap();
    std::fs::write(dir.join(&info.url), &nar).unwrap();
    (hash, info, nar)
}

/// A server pulling from `up` with a timeout longer than any hold of these tests.
fn pulling_patiently(up: &FileServer, key: &ed25519_dalek::SigningKey) -> Server {
    patient(up, key).start()
}

/// The settings of [`pulling_patiently`].
fn patient(up: &FileServer, key: &ed25519_dalek::SigningKey) -> ServerBuilder {
    ServerBuilder::new()
        .env("NIX_STORED_UPSTREAMS", &up.url())
        .env("NIX_STORED_UPSTREAM_KEYS", &public_key_line("up-1", key))
        .env("NIX_STORED_UPSTREAM_TIMEOUT", "50")
}

/// While the upstream holds back the second half of a NAR: the narinfo is answered
/// (from memory, not yet stored), HEAD of the NAR gives its FileSize, a Range within
/// the first half is served, and a client receives the NAR's first bytes. Once the
/// upstream sends the rest, the client gets the whole file, a suffix Range asked
/// meanwhile completes, and the NAR and narinfo are stored, from one upstream download.
#[test]
fn a_pending_narinfo_is_answered_and_its_nar_streams_while_the_upstream_sends_it() {
    let up_dir = temp_dir("upstream");
    let key = signing_key(9);
    let (hash, info, nar) = upstream_path(&up_dir, &key, "streamed", 4 << 20);
    let up = FileServer::serve(&up_dir);
    let nar_path = format!("/{}", info.url);
    up.gate.hold(&nar_path);
    let s = pulling_patiently(&up, &key);

    let narinfo = format!("/{hash}.narinfo");
    let r = get(&s, &narinfo);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), info.render());
    assert_eq!(head(&s, &narinfo).status, 200);

    let mut download = Download::start(s.addr, &nar_path, &[]);
    assert_eq!(download.status, 200);
    assert_eq!(download.length, nar.len());
    download.read_some();
    assert!(!download.body.is_empty());
    assert_eq!(download.body[..], nar[..download.body.len()]);
    let h = head(&s, &nar_path);
    assert_eq!(h.status, 200);
    assert_eq!(
        h.header("content-length"),
        Some(nar.len().to_string().as_str())
    );
    // Ranges are served from the download too, their last byte (like a whole
    // file's) sent once the file is verified.
    let addr = s.addr;
    let range = |range: &'static str| {
        let nar_path = nar_path.clone();
        std::thread::spawn(move || send(addr, "GET", &nar_path, &[("Range", range)], b""))
    };
    let (prefix, suffix) = (range("bytes=0-99"), range("bytes=-100"));
    // The upstream still holds the rest: nothing is committed yet.
    assert_eq!(up.count(&format!("GET {nar_path}")), 1);
    assert!(!s.store.exists(&format!("{hash}.narinfo")));
    assert!(!s.store.exists(&info.url));

    up.gate.release();
    assert!(
        download.finish(),
        "{} of {} bytes",
        download.body.len(),
        nar.len()
    );
    assert!(download.body == nar);
    let r = prefix.join().unwrap();
    assert_eq!(r.status, 206);
    assert_eq!(r.body, nar[..100]);
    let r = suffix.join().unwrap();
    assert_eq!(r.status, 206);
    assert_eq!(r.body, nar[nar.len() - 100..]);
    assert!(
        eventually(Duration::from_secs(30), || s
            .store
            .exists(&format!("{hash}.narinfo"))),
        "{}",
        s.log()
    );
    assert_eq!(s.store.read(&info.url).unwrap(), nar);
    assert_eq!(get(&s, &nar_path).body, nar);
    assert_eq!(up.count(&format!("GET {nar_path}")), 1);
    assert_eq!(up.count(&format!("GET {narinfo}")), 1);
    assert_eq!(s.pending(), Vec::<String>::new());
}

/// Two servers sharing a bucket, a client's narinfo request answered by one and its
/// NAR request reaching the other while the first still pulls (the upstream holds
/// back the NAR's second half): the other server finds the first one's pull marker,
/// looks the narinfo up itself and streams the whole NAR (HEAD too). Once the pulls
/// end, the path is stored and no marker is left. A marker naming a path whose NAR
/// is another file gets the request nowhere: the marker is a hint, never trusted.
#[test]
fn a_nar_pulled_by_one_server_is_served_by_another_sharing_its_bucket() {
    if s3_only("servers share a bucket; a directory is one server's") {
        return;
    }
    let up_dir = temp_dir("upstream");
    let key = signing_key(12);
    let (hash, info, nar) = upstream_path(&up_dir, &key, "across", 2 << 20);
    let (other, _, _) = upstream_path(&up_dir, &key, "elsewhere", 1000);
    let up = FileServer::serve(&up_dir);
    let nar_path = format!("/{}", info.url);
    up.gate.hold(&nar_path);
    let a = pulling_patiently(&up, &key);
    let b = patient(&up, &key).store(&a.store).start();

    let narinfo = format!("/{hash}.narinfo");
    assert_eq!(get(&a, &narinfo).status, 200);
    let file = info.url.trim_start_matches("nar/");
    let marker = format!("nix-stored/pulling/{file}");
    assert_eq!(
        a.store.read(&marker).as_deref(),
        Some(format!("{hash}\n").as_bytes())
    );
    let mut download = Download::start(b.addr, &nar_path, &[]);
    assert_eq!(
        (download.status, download.length),
        (200, nar.len()),
        "{}",
        b.log()
    );
    download.read_some();
    let h = head(&b, &nar_path);
    assert_eq!(h.status, 200);
    assert_eq!(
        h.header("content-length"),
        Some(nar.len().to_string().as_str())
    );
    assert!(!a.store.exists(&info.url));
    up.gate.release();
    assert!(download.finish(), "{} bytes", download.body.len());
    assert!(download.body == nar);
    assert!(
        eventually(Duration::from_secs(30), || a.store.exists(&narinfo)
            && !a.store.exists(&marker)),
        "{}\n{}",
        a.log(),
        b.log()
    );
    assert_eq!(a.store.read(&info.url).unwrap(), nar);
    assert_eq!(get(&b, &nar_path).body, nar);
    // Each server looked the narinfo up for itself.
    assert_eq!(up.count(&format!("GET {narinfo}")), 2);

    // A marker that names a path whose NAR is another file.
    let forged = format!("nar/{}.nar", "0".repeat(52));
    a.store.write(
        &format!("nix-stored/pulling/{}", &forged[4..]),
        format!("{other}\n").as_bytes(),
    );
    assert_eq!(get(&b, &format!("/{forged}")).status, 404);
    assert_eq!(head(&b, &format!("/{forged}")).status, 404);
    assert!(!a.store.exists(&forged));
    assert_eq!(up.count(&format!("GET /{}", forged)), 0);
}

/// Fifty clients receiving one pending NAR at the same time, each with its first
/// bytes before the upstream sent the rest: one upstream download, and every client
/// gets the whole file.
#[test]
fn clients_of_one_pending_nar_share_one_upstream_download() {
    let up_dir = temp_dir("upstream");
    let key = signing_key(10);
    let (hash, info, nar) = upstream_path(&up_dir, &key, "shared", 8 << 20);
    let up = FileServer::serve(&up_dir);
    let nar_path = format!("/{}", info.url);
    up.gate.hold(&nar_path);
    let s = pulling_patiently(&up, &key);

    assert_eq!(get(&s, &format!("/{hash}.narinfo")).status, 200);
    let mut downloads: Vec<Download> = (0..50)
        .map(|_| Download::start(s.addr, &nar_path, &[]))
        .collect();
    for d in &mut downloads {
        assert_eq!((d.status, d.length), (200, nar.len()));
        d.read_some();
    }
    assert!(!s.store.exists(&info.url));
    up.gate.release();
    let readers: Vec<_> = downloads
        .into_iter()
        .map(|mut d| std::thread::spawn(move || (d.finish(), d.body)))
        .collect();
    for r in readers {
        let (complete, body) = r.join().unwrap();
        assert!(complete && body == nar, "a client got {} bytes", body.len());
    }
    assert_eq!(up.count(&format!("GET {nar_path}")), 1);
    assert!(eventually(Duration::from_secs(30), || s
        .store
        .exists(&format!("{hash}.narinfo"))));
}

/// A NAR streamed to a client whose file turns out wrong (other bytes than its
/// FileHash, same length) or cut short: the client's download fails instead of
/// ending complete, nothing is stored, the narinfo is not committed, and later
/// requests get 404 for both.
#[test]
fn a_tampered_nar_streamed_to_a_client_fails_its_download_and_is_not_stored() {
    let up_dir = temp_dir("upstream");
    let key = signing_key(11);
    let (wrong_hash, wrong, mut wrong_nar) = upstream_path(&up_dir, &key, "wrong", 2 << 20);
    let (short_hash, short, short_nar) = upstream_path(&up_dir, &key, "short", 2 << 20);
    // One byte of the file's contents changed, in the second half.
    let at = wrong_nar.len() * 3 / 4;
    wrong_nar[at] ^= 0xff;
    std::fs::write(up_dir.join(&wrong.url), &wrong_nar).unwrap();
    let up = FileServer::serve(&up_dir);
    up.truncate
        .lock()
        .unwrap()
        .insert(format!("/{}", short.url));
    for info in [&wrong, &short] {
        up.gate.hold(&format!("/{}", info.url));
    }
    let s = pulling_patiently(&up, &key);

    let mut downloads = Vec::new();
    for (hash, info, nar) in [
        (&wrong_hash, &wrong, &wrong_nar),
        (&short_hash, &short, &short_nar),
    ] {
        assert_eq!(get(&s, &format!("/{hash}.narinfo")).status, 200);
        let mut d = Download::start(s.addr, &format!("/{}", info.url), &[]);
        assert_eq!((d.status, d.length), (200, nar.len()));
        d.read_some();
        downloads.push(d);
    }
    up.gate.release();
    for mut d in downloads {
        assert!(!d.finish(), "a tampered NAR was served complete");
    }
    for (hash, info) in [(&wrong_hash, &wrong), (&short_hash, &short)] {
        let narinfo = format!("/{hash}.narinfo");
        assert!(
            eventually(Duration::from_secs(30), || get(&s, &narinfo).status == 404),
            "{}",
            s.log()
        );
        assert_eq!(get(&s, &format!("/{}", info.url)).status, 404);
        assert_eq!(head(&s, &format!("/{}", info.url)).status, 404);
    }
    assert!(narinfos(&s.store).is_empty(), "{:?}", s.store.files());
    assert!(s.store.nars().is_empty(), "{:?}", s.store.files());
    assert_eq!(s.pending(), Vec::<String>::new());
    assert_eq!(up.count(&format!("GET /{}", wrong.url)), 1);
    assert_eq!(up.count(&format!("GET /{}", short.url)), 1);
}

/// Pulls queue for memory instead of failing: with a budget that verifies one NAR at
/// a time (16 MiB: 12 for decoders, 8 per uncompressed NAR), a second pull waits for
/// the first, which the upstream holds back for longer than an upload would wait
/// (20 s), and then completes, its client's download with it.
#[test]
fn a_pull_waits_for_memory_instead_of_failing() {
    let up_dir = temp_dir("upstream");
    let key = signing_key(14);
    let (first_hash, first, _) = upstream_path(&up_dir, &key, "first", 1 << 20);
    let (second_hash, second, second_nar) = upstream_path(&up_dir, &key, "second", 1 << 20);
    let up = FileServer::serve(&up_dir);
    up.gate.hold(&format!("/{}", first.url));
    let s = patient(&up, &key)
        .env("NIX_STORED_MEMORY_BUDGET", "16M")
        .start();

    assert_eq!(get(&s, &format!("/{first_hash}.narinfo")).status, 200);
    // The first pull now holds its decoder's memory, its NAR half received.
    assert!(eventually(Duration::from_secs(10), || up
        .count(&format!("GET /{}", first.url))
        == 1));
    assert_eq!(get(&s, &format!("/{second_hash}.narinfo")).status, 200);
    let (addr, path) = (s.addr, format!("/{}", second.url));
    let client = std::thread::spawn(move || {
        let mut d = Download::start(addr, &path, &[]);
        let complete = d.finish();
        (d.status, complete, d.body)
    });
    std::thread::sleep(Duration::from_secs(25));
    assert_eq!(
        up.count(&format!("GET /{}", second.url)),
        0,
        "the second download waits for memory before it opens"
    );
    up.gate.release();
    let (status, complete, body) = client.join().unwrap();
    assert_eq!(status, 200);
    assert!(complete && body == second_nar, "{} bytes", body.len());
    assert!(
        eventually(Duration::from_secs(30), || s
            .store
            .exists(&format!("{first_hash}.narinfo"))
            && s.store.exists(&format!("{second_hash}.narinfo"))),
        "{}",
        s.log()
    );
}

/// A signed narinfo whose URL names another path's NAR (URL, FileHash and FileSize
/// are outside the signature): the file is a valid NAR under its own name, but not
/// the one the narinfo describes. A client streaming it never gets the last byte,
/// and the narinfo is not stored.
#[test]
fn a_nar_other_than_its_signed_narinfo_describes_never_reaches_a_client_complete() {
    let up_dir = temp_dir("upstream");
    std::fs::create_dir_all(up_dir.join("nar")).unwrap();
    let key = signing_key(13);
    // Compressed: an uncompressed NAR's FileHash is its NarHash, which is signed.
    let nar_of_name = |name: &str| nar_of(format!("{name} ").repeat(100_000).as_bytes());
    let (other, file) = NarInfo::packed(
        "/nix/store",
        &store_hash("other"),
        "other",
        &nar_of_name("other"),
        "zstd",
    );
    std::fs::write(up_dir.join(&other.url), file).unwrap();
    let hash = store_hash("swapped");
    let (mut info, _) = NarInfo::packed(
        "/nix/store",
        &hash,
        "swapped",
        &nar_of_name("swapped"),
        "zstd",
    );
    info.url = other.url.clone();
    info.file_hash = other.file_hash.clone();
    info.file_size = other.file_size.clone();
    info.sign("/nix/store", "up-1", &key);
    std::fs::write(up_dir.join(format!("{hash}.narinfo")), info.render()).unwrap();
    let up = FileServer::serve(&up_dir);
    let nar_path = format!("/{}", other.url);
    up.gate.hold(&nar_path);
    let s = pulling_patiently(&up, &key);

    let narinfo = format!("/{hash}.narinfo");
    assert_eq!(get(&s, &narinfo).status, 200);
    let mut d = Download::start(s.addr, &nar_path, &[]);
    assert_eq!(d.status, 200);
    d.read_some();
    up.gate.release();
    assert!(
        !d.finish(),
        "a NAR other than the narinfo's was served complete"
    );
    assert!(
        eventually(Duration::from_secs(30), || get(&s, &narinfo).status == 404),
        "{}",
        s.log()
    );
    assert!(narinfos(&s.store).is_empty(), "{:?}", s.store.files());
    assert!(
        s.log()
            .contains("is not the NAR its signed narinfo describes"),
        "{}",
        s.log()
    );
}

/// An upload whose narinfo refers to a path this server answered as present and is
/// still pulling (its NAR held by the upstream) waits for that pull instead of being
/// refused for a missing reference, and is stored once the reference is.
#[test]
fn an_upload_referring_to_a_pending_path_waits_for_its_pull() {
    let up_dir = temp_dir("upstream");
    let key = signing_key(12);
    let (lib_hash, lib, _) = upstream_path(&up_dir, &key, "lib", 1 << 20);
    let up = FileServer::serve(&up_dir);
    up.gate.hold(&format!("/{}", lib.url));
    let s = pulling_patiently(&up, &key);

    // What `nix copy --to` asks before it uploads: the reference is reported present.
    assert_eq!(get(&s, &format!("/{lib_hash}.narinfo")).status, 200);
    let hash = store_hash("app");
    let nar = nar_of(b"app");
    let info = NarInfo::uncompressed(
        "/nix/store",
        &hash,
        "app",
        &nar,
        &[&format!("{lib_hash}-lib")],
    );
    assert_eq!(put(&s, &format!("/{}", info.url), &nar).status, 201);
    let addr = s.addr;
    let upload = {
        let body = info.render();
        std::thread::spawn(move || {
            send(
                addr,
                "PUT",
                &format!("/{hash}.narinfo"),
                &[],
                body.as_bytes(),
            )
        })
    };
    assert!(eventually(Duration::from_secs(30), || up
        .count(&format!("GET /{}", lib.url))
        == 1));
    // The upload is in progress (with this request for the figure).
    assert!(eventually(Duration::from_secs(30), || metric(
        &s,
        "nix_stored_requests_in_flight"
    ) == 2));
    assert!(!s.store.exists(&format!("{lib_hash}.narinfo")));
    up.gate.release();
    let r = upload.join().unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(s.store.exists(&format!("{lib_hash}.narinfo")));
}
