//! Behind a reverse proxy: the nginx and Caddy configurations of `deploy/`, as the
//! README shows them, run for real (Debian's `nginx` and `caddy`, TLS with a test
//! certificate, HTTP/2 to clients) in front of the server, with curl and the real Nix
//! client on the other side. Also the settings for proxies: trusted forwarding
//! headers and the public URL.
//!
//! Skipped (with a message) when nginx, caddy or nix is missing, unless
//! NIX_STORED_REQUIRE_PROXIES=1, which scripts/test.sh sets after installing them.

// The proxies' certificates come from the HTTPS test helpers.
#![cfg(feature = "tls")]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use common::tls::{KeyFormat, TestCert};
use common::*;

const NGINX_CONF: &str = include_str!("../deploy/nginx.conf");
const CADDYFILE: &str = include_str!("../deploy/Caddyfile");
const README: &str = include_str!("../README.md");
const MODULE: &str = include_str!("../nix/module.nix");

/// The deploy files name nix-stored at this address.
const UPSTREAM: &str = "127.0.0.1:8100";

/// Nix store mutations of parallel tests would contend for the store's locks.
static NIX_STORE: Mutex<()> = Mutex::new(());
static CALLS: AtomicU64 = AtomicU64::new(0);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Nginx,
    Caddy,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `text` with each `(from, to)` replaced; every `from` must be there, so that a
/// change of the deploy file cannot silently leave the test on other settings.
fn substitute(text: &str, pairs: &[(&str, &str)]) -> String {
    let mut out = text.to_owned();
    for (from, to) in pairs {
        assert!(out.contains(from), "the deploy file no longer has {from:?}");
        out = out.replace(from, to);
    }
    out
}

/// A reverse proxy started from a deploy file, in front of `upstream`; stopped on drop.
struct Proxy {
    kind: Kind,
    port: u16,
    dir: PathBuf,
    cert: TestCert,
    child: Child,
}

impl Proxy {
    fn start(kind: Kind, upstream: SocketAddr) -> Option<Proxy> {
        let dir = temp_dir(&format!("{kind:?}").to_lowercase());
        let cert = TestCert::generate(&dir, "localhost", KeyFormat::Pkcs8Ec);
        let port = free_port();
        let upstream = upstream.to_string();
        let d = dir.display().to_string();
        let child = match kind {
            Kind::Nginx => {
                if !tool_installed("nginx", "-v", "apt-get install nginx-light") {
                    return None;
                }
                let site = substitute(
                    NGINX_CONF,
                    &[
                        ("/var/cache/nginx/nix-stored", &format!("{d}/cache")),
                        (UPSTREAM, &upstream),
                        (
                            "    listen 80;\n",
                            &format!("    listen 127.0.0.1:{};\n", free_port()),
                        ),
                        ("    listen [::]:80;\n", ""),
                        (
                            "    listen 443 ssl http2;\n",
                            &format!("    listen 127.0.0.1:{port} ssl http2;\n"),
                        ),
                        ("    listen [::]:443 ssl http2;\n", ""),
                        (
                            "/etc/letsencrypt/live/cache.example.org/fullchain.pem",
                            cert.cert.to_str().unwrap(),
                        ),
                        (
                            "/etc/letsencrypt/live/cache.example.org/privkey.pem",
                            cert.key.to_str().unwrap(),
                        ),
                    ],
                );
                std::fs::write(dir.join("nix-stored.conf"), site).unwrap();
                // The main configuration a distribution ships, reduced to what a
                // process of its own needs.
                let main = format!(
                    "daemon off;\nuser root;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
                     events {{ worker_connections 512; }}\n\
                     http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
                     fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
                     include {d}/nix-stored.conf;\n}}\n"
                );
                std::fs::write(dir.join("nginx.conf"), main).unwrap();
                let conf = dir.join("nginx.conf");
                let test = Command::new("nginx")
                    .args(["-t", "-p", &d, "-c", conf.to_str().unwrap()])
                    .output()
                    .unwrap();
                assert!(
                    test.status.success(),
                    "nginx -t: {}",
                    String::from_utf8_lossy(&test.stderr)
                );
                Command::new("nginx")
                    .args(["-p", &d, "-c", conf.to_str().unwrap()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            }
            Kind::Caddy => {
                if !tool_installed("caddy", "version", "apt-get install caddy") {
                    return None;
                }
                let site = substitute(
                    CADDYFILE,
                    &[
                        (
                            "cache.example.org {\n",
                            &format!(
                                "https://127.0.0.1:{port} {{\n\ttls {} {}\n",
                                cert.cert.display(),
                                cert.key.display()
                            ),
                        ),
                        (UPSTREAM, &upstream),
                    ],
                );
                // Global options of a process of its own: no admin socket, no port
                // 80, its state in the test's directory.
                let global = format!(
                    "{{\n\tadmin off\n\tauto_https disable_redirects\n\thttp_port {}\n\thttps_port {port}\n\tdefault_sni localhost\n\tstorage file_system {d}/data\n}}\n\n",
                    free_port()
                );
                std::fs::write(dir.join("Caddyfile"), global + &site).unwrap();
                Command::new("caddy")
                    .args(["run", "--adapter", "caddyfile", "--config"])
                    .arg(dir.join("Caddyfile"))
                    .env("HOME", &dir)
                    .env("XDG_DATA_HOME", dir.join("xdg"))
                    .env("XDG_CONFIG_HOME", dir.join("xdg"))
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(dir.join("caddy.log")).unwrap())
                    .spawn()
                    .unwrap()
            }
        };
        let proxy = Proxy {
            kind,
            port,
            dir,
            cert,
            child,
        };
        let up = eventually(Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "{kind:?} did not start:\n{}", proxy.log());
        Some(proxy)
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        let file = match self.kind {
            Kind::Nginx => "error.log",
            Kind::Caddy => "caddy.log",
        };
        std::fs::read_to_string(self.dir.join(file)).unwrap_or_default()
    }

    /// `curl` through the proxy (trusting its certificate): status, headers, body.
    fn curl(&self, path: &str, args: &[&str]) -> Answer {
        let n = CALLS.fetch_add(1, Ordering::Relaxed);
        let head = self.dir.join(format!("head-{n}"));
        let body = self.dir.join(format!("body-{n}"));
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "600", "--cacert"])
            .arg(&self.cert.cert)
            .arg("-D")
            .arg(&head)
            .arg("-o")
            .arg(&body)
            .args(["-w", "%{http_code} %{http_version}"])
            .args(args)
            .arg(format!("{}{path}", self.url()))
            .output()
            .expect("curl is needed");
        let answer = Answer {
            status: String::from_utf8_lossy(&out.stdout).into_owned(),
            head: std::fs::read_to_string(&head).unwrap_or_default(),
            body: std::fs::read(&body).unwrap_or_default(),
        };
        eprintln!(
            "$ curl {args:?} {path} -> {} {}\n{}",
            answer.status,
            String::from_utf8_lossy(&out.stderr).trim_end(),
            answer.head.trim_end()
        );
        let _ = std::fs::remove_file(head);
        let _ = std::fs::remove_file(body);
        answer
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // SIGTERM: nginx's master then stops its workers, which a SIGKILL would orphan.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let stopped = eventually(Duration::from_secs(10), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        if !stopped {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What curl got: `"<status> <http version>"`, the last header block, the body.
struct Answer {
    status: String,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn code(&self) -> u16 {
        self.status
            .split(' ')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    fn header(&self, name: &str) -> Option<String> {
        // With a 100 Continue first there are several blocks: the answer is the last.
        let block = self
            .head
            .split("\r\n\r\n")
            .filter(|b| !b.trim().is_empty())
            .last()?;
        block.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Requests the server's access log shows for `path`, once it shows `at_least`
/// (access lines are written in batches).
fn upstream_hits(s: &Server, method: &str, path: &str, at_least: usize) -> usize {
    let needle = format!(" {method} {path} ");
    let count = || s.log().lines().filter(|l| l.contains(&needle)).count();
    eventually(Duration::from_secs(10), || count() >= at_least);
    // A batch after that one would have come with it.
    std::thread::sleep(Duration::from_millis(200));
    count()
}

/// Waits for the server's log to contain `text`.
fn log_shows(s: &Server, text: &str) -> bool {
    eventually(Duration::from_secs(10), || s.log().contains(text))
}

/// A server with a read and a write user, trusting the proxy on loopback.
fn server_with_users() -> Server {
    ServerBuilder::new()
        .env_remove("NIX_STORED_ANONYMOUS_WRITES")
        .env("NIX_STORED_USER_WRITE", "writer")
        .env("NIX_STORED_USER_WRITE_PASS", "w-secret")
        .env("NIX_STORED_TRUSTED_PROXIES", "127.0.0.1")
        .start()
}

// ---------------------------------------------------------------------------------
// Refusals of uploads whose body is sent anyway.

/// 300 MB of zeros (a sparse file), the size of upload that turned 401 into 502.
fn big_body(dir: &Path) -> PathBuf {
    let f = dir.join("big.nar");
    std::fs::File::create(&f)
        .unwrap()
        .set_len(300 << 20)
        .unwrap();
    f
}

fn refusals_reach_the_client(kind: Kind) {
    let s = ServerBuilder::new()
        .env_remove("NIX_STORED_ANONYMOUS_WRITES")
        .env("NIX_STORED_USER_READ", "reader")
        .env("NIX_STORED_USER_READ_PASS", "r-secret")
        .env("NIX_STORED_USER_WRITE", "writer")
        .env("NIX_STORED_USER_WRITE_PASS", "w-secret")
        .env("NIX_STORED_MAX_UPLOAD_SIZE", "100M")
        // Wrong passwords on purpose, many times.
        .env("NIX_STORED_MAX_AUTH_FAILURES", "0")
        .start();
    let Some(p) = Proxy::start(kind, s.addr) else {
        return;
    };
    let body = big_body(&p.dir);
    let body = body.to_str().unwrap();
    let path = format!("/nar/{}.nar", nix32_sha256(b"never stored"));
    let cases: [(&[&str], u16); 4] = [
        (&[], 401),
        (&["-u", "writer:wrong"], 401),
        (&["-u", "reader:r-secret"], 403),
        (&["-u", "writer:w-secret"], 413),
    ];
    // HTTP/2 (what Nix speaks to a TLS proxy) and HTTP/1.1 without `Expect:
    // 100-continue`: the body is on its way before the answer, as with a client that
    // does not wait for one.
    for version in [&["--http2"][..], &["--http1.1", "-H", "Expect:"][..]] {
        for (auth, want) in cases {
            for _ in 0..3 {
                let mut args = vec!["-T", body];
                args.extend_from_slice(version);
                args.extend_from_slice(auth);
                let a = p.curl(&path, &args);
                assert_eq!(
                    a.code(),
                    want,
                    "{version:?} {auth:?}: {}\n{}",
                    a.text(),
                    p.log()
                );
            }
        }
    }
    assert_eq!(s.store.files(), vec!["nix-cache-info"]);
}

// ---------------------------------------------------------------------------------
// Caching by the proxy.

/// A NAR and its narinfo, stored directly on the server (not through the proxy).
struct Object {
    narinfo_path: String,
    nar_path: String,
    info: NarInfo,
}

fn store_object(s: &Server, seed: &str) -> Object {
    let nar = nar_of(format!("contents of {seed}").as_bytes());
    let hash = store_hash(seed);
    let mut info = NarInfo::uncompressed("/nix/store", &hash, seed, &nar, &[]);
    info.sign("/nix/store", "first-1", &signing_key(1));
    let nar_path = format!("/{}", info.url);
    let narinfo_path = format!("/{hash}.narinfo");
    let auth = basic("writer", "w-secret");
    let h = [("Authorization", auth.as_str())];
    assert_eq!(send(s.addr, "PUT", &nar_path, &h, &nar).status, 201);
    assert_eq!(
        send(s.addr, "PUT", &narinfo_path, &h, info.render().as_bytes()).status,
        201
    );
    Object {
        narinfo_path,
        nar_path,
        info,
    }
}

/// NARs come from nginx's cache the second time; narinfos and misses never do: a
/// narinfo signed again, or removed, is seen so at once through the proxy.
fn nginx_caches_nars_and_nothing_else() {
    let s = server_with_users();
    let Some(p) = Proxy::start(Kind::Nginx, s.addr) else {
        return;
    };
    let o = store_object(&s, "cached");

    let first = p.curl(&o.nar_path, &[]);
    let second = p.curl(&o.nar_path, &[]);
    assert_eq!((first.code(), second.code()), (200, 200));
    assert_eq!(first.body, second.body);
    assert_eq!(second.header("x-cache-status").as_deref(), Some("HIT"));
    assert_eq!(upstream_hits(&s, "GET", &o.nar_path, 1), 1, "{}", s.log());

    // A narinfo re-signed on the server (what `nix store sign --store` does) is the
    // new one through the proxy at once; an unchanged one costs the server a 304 at
    // most, never a stale answer.
    let before = p.curl(&o.narinfo_path, &[]);
    assert_eq!(before.code(), 200);
    assert_eq!(before.text(), o.info.render());
    let mut signed = o.info.clone();
    signed.sign("/nix/store", "second-1", &signing_key(2));
    let auth = basic("writer", "w-secret");
    let r = send(
        s.addr,
        "PUT",
        &o.narinfo_path,
        &[("Authorization", auth.as_str())],
        signed.render().as_bytes(),
    );
    assert!(r.status == 204 || r.status == 201, "{r:?}");
    let after = p.curl(&o.narinfo_path, &[]);
    assert_eq!(after.code(), 200);
    assert!(
        after.text().contains("Sig: second-1:"),
        "stale narinfo:\n{}",
        after.text()
    );
    assert_ne!(after.header("x-cache-status").as_deref(), Some("HIT"));

    // Removed (as retention does): gone through the proxy at once.
    let file = s.dir.join(o.narinfo_path.trim_start_matches('/'));
    if let Store::Dir(_) = s.store {
        std::fs::remove_file(&file).unwrap();
        assert_eq!(p.curl(&o.narinfo_path, &[]).code(), 404);
    }

    // A miss is asked again every time: the path uploaded after it shows up at once.
    let later = format!("/{}.narinfo", store_hash("later"));
    assert_eq!(p.curl(&later, &[]).code(), 404);
    assert_eq!(p.curl(&later, &[]).code(), 404);
    assert_eq!(upstream_hits(&s, "GET", &later, 2), 2, "a 404 was cached");
    let l = store_object(&s, "later");
    assert_eq!(l.narinfo_path, later);
    assert_eq!(p.curl(&later, &[]).code(), 200);
}

/// Conditional requests: a cache revalidating a narinfo it has gets a 304.
#[test]
fn narinfos_revalidate_with_their_etag() {
    let s = server_with_users();
    let o = store_object(&s, "etag");
    let r = get(&s, &o.narinfo_path);
    assert_eq!(r.header("cache-control"), Some("public, no-cache"));
    let tag = r.header("etag").expect("an ETag").to_owned();
    let again = send(
        s.addr,
        "GET",
        &o.narinfo_path,
        &[("If-None-Match", &tag)],
        b"",
    );
    assert_eq!(again.status, 304, "{again:?}");
    assert!(again.body.is_empty());
    assert_eq!(again.header("etag"), Some(tag.as_str()));
    let nar = get(&s, &o.nar_path);
    let nar_tag = nar.header("etag").unwrap().to_owned();
    let weak = format!("W/{nar_tag}");
    let r = send(
        s.addr,
        "HEAD",
        &o.nar_path,
        &[("If-None-Match", &weak)],
        b"",
    );
    assert_eq!(r.status, 304);
    // A changed narinfo no longer matches the old tag.
    let mut signed = o.info.clone();
    signed.sign("/nix/store", "second-1", &signing_key(2));
    let auth = basic("writer", "w-secret");
    send(
        s.addr,
        "PUT",
        &o.narinfo_path,
        &[("Authorization", auth.as_str())],
        signed.render().as_bytes(),
    );
    let changed = send(
        s.addr,
        "GET",
        &o.narinfo_path,
        &[("If-None-Match", &tag)],
        b"",
    );
    assert_eq!(changed.status, 200);
    assert!(changed.text().contains("Sig: second-1:"));
}

// ---------------------------------------------------------------------------------
// The real Nix client through the proxies.

/// The host's Nix with its own configuration, trusting the proxy's certificate.
struct Nix {
    work: PathBuf,
    ca: PathBuf,
    /// Store paths added, deleted on drop (a failed test must not leave 2 GiB behind).
    added: std::cell::RefCell<Vec<String>>,
    _turn: std::sync::MutexGuard<'static, ()>,
}

impl Nix {
    fn new(p: &Proxy) -> Option<Nix> {
        if !tool_installed(
            "nix",
            "--version",
            "apt-get install --no-install-recommends nix-bin",
        ) {
            return None;
        }
        let turn = NIX_STORE.lock().unwrap_or_else(|e| e.into_inner());
        let work = temp_dir("nix");
        std::fs::create_dir_all(work.join("conf")).unwrap();
        std::fs::write(work.join("conf/nix.conf"), nix_conf(300)).unwrap();
        Some(Nix {
            work,
            ca: p.cert.cert.clone(),
            added: Default::default(),
            _turn: turn,
        })
    }

    fn run(&self, prog: &str, args: &[&str]) -> Output {
        let n = CALLS.fetch_add(1, Ordering::Relaxed);
        let out = Command::new(prog)
            .args(args)
            .current_dir(&self.work)
            .env("NIX_CONF_DIR", self.work.join("conf"))
            .env("XDG_CACHE_HOME", self.work.join(format!("xdg-{n}")))
            .env("NIX_SSL_CERT_FILE", &self.ca)
            .env_remove("SSL_CERT_FILE")
            .output()
            .unwrap();
        eprintln!(
            "$ {prog} {} -> {}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
        out
    }

    fn ok(&self, prog: &str, args: &[&str]) -> String {
        let out = self.run(prog, args);
        assert!(out.status.success(), "{prog} {args:?} failed");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn write(&self, name: &str, text: &str) -> String {
        let p = self.work.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }

    /// A signing key pair: (secret key file, public key).
    fn keys(&self, name: &str) -> (String, String) {
        let sk = self.ok("nix", &["key", "generate-secret", "--key-name", name]);
        let file = self.write(&format!("{name}.sk"), &sk);
        let out = Command::new("nix")
            .args(["key", "convert-secret-to-public"])
            .env("NIX_CONF_DIR", self.work.join("conf"))
            .stdin(std::fs::File::open(&file).unwrap())
            .output()
            .unwrap();
        assert!(out.status.success());
        (
            file,
            String::from_utf8(out.stdout).unwrap().trim().to_owned(),
        )
    }

    /// Adds a file of `size` bytes (`seed`, then zeros) to the store.
    fn add(&self, seed: &str, size: u64) -> String {
        let file = self.work.join(seed);
        std::fs::write(&file, format!("{seed} {}\n", unique())).unwrap();
        let f = std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap();
        if size > 0 {
            f.set_len(size).unwrap();
        }
        let path = self.ok("nix-store", &["--add", file.to_str().unwrap()]);
        let _ = std::fs::remove_file(&file);
        self.added.borrow_mut().push(path.clone());
        path
    }

    fn delete(&self, path: &str) {
        self.ok("nix-store", &["--delete", path]);
    }

    fn valid(&self, path: &str) -> bool {
        self.run("nix-store", &["--check-validity", path])
            .status
            .success()
    }
}

impl Drop for Nix {
    fn drop(&mut self) {
        for path in self.added.borrow().iter() {
            let _ = Command::new("nix-store")
                .args(["--delete", path])
                .env("NIX_CONF_DIR", self.work.join("conf"))
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

fn unique() -> String {
    format!(
        "{}-{}-{}",
        std::process::id(),
        CALLS.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// Upload with the write user's netrc, remote signing with a second key through the
/// proxy, then substitution trusting each key alone: both signatures reach the client.
fn nix_round_trip_with_remote_signing(kind: Kind) {
    let s = server_with_users();
    let Some(p) = Proxy::start(kind, s.addr) else {
        return;
    };
    let Some(nix) = Nix::new(&p) else { return };
    let netrc = nix.write(
        "netrc",
        "machine 127.0.0.1 login writer password w-secret\n",
    );
    let (sk1, pk1) = nix.keys("first-1");
    let (sk2, pk2) = nix.keys("second-1");
    let url = p.url();
    let path = nix.add("roundtrip", 0);

    // Without credentials: refused, and Nix says so (not a 502).
    let out = nix.run(
        "nix",
        &[
            "copy",
            "--to",
            &format!("{url}?compression=xz&secret-key={sk1}"),
            &path,
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("401"), "{err}");
    assert!(!err.contains("502"), "{err}");

    nix.ok(
        "nix",
        &[
            "copy",
            "--to",
            &format!("{url}?compression=xz&secret-key={sk1}"),
            &path,
            "--option",
            "netrc-file",
            &netrc,
        ],
    );
    nix.ok(
        "nix",
        &[
            "store",
            "sign",
            "--store",
            &url,
            "--key-file",
            &sk2,
            &path,
            "--option",
            "netrc-file",
            &netrc,
        ],
    );
    let hash = Path::new(&path).file_name().unwrap().to_str().unwrap()[..32].to_owned();
    let narinfo = p.curl(&format!("/{hash}.narinfo"), &[]).text();
    assert!(
        narinfo.contains("Sig: first-1:") && narinfo.contains("Sig: second-1:"),
        "{narinfo}"
    );

    for pk in [&pk2, &pk1] {
        nix.delete(&path);
        nix.ok(
            "nix-store",
            &[
                "-r",
                &path,
                "--option",
                "substituters",
                &url,
                "--option",
                "trusted-public-keys",
                pk,
            ],
        );
        assert!(nix.valid(&path));
    }
}

/// A large NAR up through the proxy and back down (twice: the second time from the
/// proxy's cache, where there is one).
fn large_nar_up_and_down(kind: Kind, size: u64) {
    let s = ServerBuilder::new()
        .env_remove("NIX_STORED_ANONYMOUS_WRITES")
        .env("NIX_STORED_USER_WRITE", "writer")
        .env("NIX_STORED_USER_WRITE_PASS", "w-secret")
        .env("NIX_STORED_MAX_UPLOAD_SIZE", "4G")
        .start();
    let Some(p) = Proxy::start(kind, s.addr) else {
        return;
    };
    let Some(nix) = Nix::new(&p) else { return };
    let netrc = nix.write(
        "netrc",
        "machine 127.0.0.1 login writer password w-secret\n",
    );
    let (sk, pk) = nix.keys("large-1");
    let url = p.url();
    let path = nix.add("large", size);
    // Without credentials first: the large upload refused, as a 401 (through a
    // streaming proxy it was a 502, which Nix retried).
    let out = nix.run(
        "nix",
        &[
            "copy",
            "--to",
            &format!("{url}?compression=none&secret-key={sk}"),
            &path,
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("401") && !err.contains("502"), "{err}");
    nix.ok(
        "nix",
        &[
            "copy",
            "--to",
            &format!("{url}?compression=none&secret-key={sk}"),
            &path,
            "--option",
            "netrc-file",
            &netrc,
        ],
    );
    assert_eq!(s.store.nars().len(), 1);
    for _ in 0..2 {
        nix.delete(&path);
        nix.ok(
            "nix-store",
            &[
                "-r",
                &path,
                "--option",
                "substituters",
                &url,
                "--option",
                "trusted-public-keys",
                &pk,
            ],
        );
        // Nix checked the NAR hash; the size says it is the large file.
        let len = std::fs::metadata(&path).unwrap().len();
        assert_eq!(len, size);
    }
    if kind == Kind::Nginx {
        // nginx asks with GET for a HEAD too (Nix's "is the NAR there?" before the upload).
        let nar_gets = || {
            s.log()
                .lines()
                .filter(|l| l.contains(" GET /nar/") && l.contains(" 200 "))
                .count()
        };
        eventually(Duration::from_secs(10), || nar_gets() >= 1);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            nar_gets(),
            1,
            "the second download did not come from nginx's cache:\n{}\n{}",
            s.log()
                .lines()
                .filter(|l| l.contains("/nar/"))
                .collect::<Vec<_>>()
                .join("\n"),
            p.log()
        );
    }
}

/// The issue's 2 GiB with NIX_STORED_LARGE_TESTS=1 (scripts/test.sh sets it; some 30 s
/// a proxy on two cores), else 256 MiB.
fn large_size() -> u64 {
    if std::env::var("NIX_STORED_LARGE_TESTS").as_deref() == Ok("1") {
        2 << 30
    } else {
        eprintln!("256 MiB: set NIX_STORED_LARGE_TESTS=1 for the 2 GiB NAR");
        256 << 20
    }
}

mod nginx {
    use super::*;

    #[test]
    fn refusals_reach_the_client() {
        super::refusals_reach_the_client(Kind::Nginx)
    }

    #[test]
    fn caches_nars_and_nothing_else() {
        super::nginx_caches_nars_and_nothing_else()
    }

    #[test]
    fn nix_round_trip_with_remote_signing() {
        super::nix_round_trip_with_remote_signing(Kind::Nginx)
    }

    #[test]
    fn large_nar_up_and_down() {
        super::large_nar_up_and_down(Kind::Nginx, large_size())
    }
}

mod caddy {
    use super::*;

    #[test]
    fn refusals_reach_the_client() {
        super::refusals_reach_the_client(Kind::Caddy)
    }

    #[test]
    fn nix_round_trip_with_remote_signing() {
        super::nix_round_trip_with_remote_signing(Kind::Caddy)
    }

    #[test]
    fn large_nar_up_and_down() {
        super::large_nar_up_and_down(Kind::Caddy, large_size())
    }
}

// ---------------------------------------------------------------------------------
// Settings for proxies.

/// Only a trusted proxy's `X-Forwarded-For` names the client, in the access log and
/// for the wrong-password throttle; connection limits and authorisation ignore it.
#[test]
fn forwarded_clients_of_trusted_proxies_only() {
    for trusted in [true, false] {
        let mut b = ServerBuilder::new()
            .env("NIX_STORED_USER_WRITE", "writer")
            .env("NIX_STORED_USER_WRITE_PASS", "w-secret")
            .env("NIX_STORED_MAX_AUTH_FAILURES", "2");
        if trusted {
            b = b.env("NIX_STORED_TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1");
        } else {
            b = b.env("NIX_STORED_TRUSTED_PROXIES", "192.0.2.1");
        }
        let s = b.start();
        let wrong = basic("writer", "wrong");
        let path = format!("/{}.narinfo", store_hash("fwd"));
        let from = |client: &str| {
            send(
                s.addr,
                "GET",
                &path,
                &[
                    ("Authorization", wrong.as_str()),
                    ("X-Forwarded-For", client),
                ],
                b"",
            )
            .status
        };
        assert_eq!(from("203.0.113.9"), 401);
        assert_eq!(from("203.0.113.9"), 401);
        assert_eq!(from("203.0.113.9"), 429);
        // Another client behind the same proxy has its own allowance; without trust,
        // everyone is the proxy.
        let other = from("1.2.3.4, 198.51.100.7");
        if trusted {
            assert_eq!(other, 401);
            assert!(log_shows(&s, "client=203.0.113.9"), "{}", s.log());
            assert!(log_shows(&s, "client=198.51.100.7"), "{}", s.log());
        } else {
            assert_eq!(other, 429);
            assert!(log_shows(&s, "client=127.0.0.1"), "{}", s.log());
            assert!(!s.log().contains("client=203.0.113.9"), "{}", s.log());
        }
    }
}

#[test]
fn bad_trusted_proxies_and_public_urls_are_refused() {
    for (var, value) in [
        ("NIX_STORED_TRUSTED_PROXIES", "127.0.0.1, proxy.example.org"),
        ("NIX_STORED_TRUSTED_PROXIES", "10.0.0.0/33"),
        ("NIX_STORED_PUBLIC_URL", "cache.example.org"),
        ("NIX_STORED_PUBLIC_URL", "ftp://cache.example.org"),
        ("NIX_STORED_PUBLIC_URL", "https://cache.example.org/?x"),
    ] {
        let (status, log) = ServerBuilder::new().env(var, value).start_expect_failure();
        assert!(!status.success(), "{var}={value} accepted");
        assert!(log.contains(var), "{var}={value}: {log}");
    }
}

#[test]
fn the_public_url_is_logged_at_start() {
    let s = ServerBuilder::new()
        .env("NIX_STORED_PUBLIC_URL", "https://cache.example.org/")
        .start();
    let log = s.log();
    assert!(
        log.contains("public URL (behind a reverse proxy): https://cache.example.org")
            && !log.contains("cache.example.org/"),
        "{log}"
    );
}

// ---------------------------------------------------------------------------------
// Documentation.

/// The README shows the deploy files the tests run, verbatim.
#[test]
fn the_readme_shows_the_tested_configurations() {
    for (name, text) in [
        ("deploy/nginx.conf", NGINX_CONF),
        ("deploy/Caddyfile", CADDYFILE),
    ] {
        assert!(
            README.contains(text),
            "README.md does not contain {name} verbatim"
        );
    }
}

/// The NixOS module's nginx virtual host has the location settings of deploy/nginx.conf.
#[test]
fn the_nixos_module_has_the_tested_nginx_settings() {
    let location = NGINX_CONF
        .split("location / {")
        .nth(1)
        .and_then(|l| l.split('}').next())
        .expect("a location block");
    for line in location.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with("proxy_pass ") {
            continue;
        }
        assert!(MODULE.contains(line), "nix/module.nix lacks {line:?}");
    }
    for line in [
        "proxy_cache_path /var/cache/nginx/nix-stored levels=1:2 keys_zone=nix_stored:10m max_size=50g inactive=30d use_temp_path=off;",
        "keepalive 16;",
        "client_max_body_size 0;",
        "client_body_timeout 300s;",
        "send_timeout 300s;",
    ] {
        assert!(NGINX_CONF.contains(line) && MODULE.contains(line), "{line}");
    }
}
