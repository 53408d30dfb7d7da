//! Who may do what: the whole read/write matrix for GET, HEAD and PUT over every
//! configuration of users, password files, and non-loopback listening.

mod common;

use std::path::Path;

use common::*;

const STORE: &str = "/nix/store";
const READ_USER: &str = "reader";
const READ_PASS: &str = "R3ad-pa55-xyzzy";
const WRITE_USER: &str = "writer";
const WRITE_PASS: &str = "Wr1te-pa55-plugh";
const REALM: &str = "Basic realm=\"nix-stored\"";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Cred {
    None,
    Read,
    Write,
    ReadWrongPass,
    WriteWrongPass,
    Unknown,
    /// `Authorization` headers that are not valid Basic credentials at all.
    Malformed(&'static str),
}

const CREDS: &[Cred] = &[
    Cred::None,
    Cred::Read,
    Cred::Write,
    Cred::ReadWrongPass,
    Cred::WriteWrongPass,
    Cred::Unknown,
    Cred::Malformed("Basic !!!not-base64!!!"),
    Cred::Malformed("Bearer abcdef"),
    // base64("reader") without a colon.
    Cred::Malformed("Basic cmVhZGVy"),
    // The write user's name and password swapped.
    Cred::Malformed("Basic V3IxdGUtcGE1NS1wbHVnaDp3cml0ZXI="),
];

impl Cred {
    fn header(self) -> Option<String> {
        match self {
            Cred::None => None,
            Cred::Read => Some(basic(READ_USER, READ_PASS)),
            Cred::Write => Some(basic(WRITE_USER, WRITE_PASS)),
            Cred::ReadWrongPass => Some(basic(READ_USER, WRITE_PASS)),
            Cred::WriteWrongPass => Some(basic(WRITE_USER, READ_PASS)),
            Cred::Unknown => Some(basic("mallory", READ_PASS)),
            Cred::Malformed(h) => Some(h.to_owned()),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Setup {
    read_user: bool,
    write_user: bool,
    loopback: bool,
    /// NIX_STORED_ANONYMOUS_WRITES=true.
    anonymous: bool,
}

#[derive(Debug, PartialEq)]
enum Expect {
    Allowed,
    Status(u16),
}

/// The contract's table.
fn expected(setup: Setup, method: &str, cred: Cred) -> Expect {
    let valid = match cred {
        Cred::Read => setup.read_user,
        Cred::Write => setup.write_user,
        _ => false,
    };
    if cred != Cred::None && !valid {
        return Expect::Status(401);
    }
    if method == "PUT" {
        match cred {
            Cred::Write => Expect::Allowed,
            Cred::Read => Expect::Status(403),
            _ if setup.write_user => Expect::Status(401),
            _ if setup.anonymous => Expect::Allowed,
            _ => Expect::Status(403),
        }
    } else if cred == Cred::None && setup.read_user {
        Expect::Status(401)
    } else {
        Expect::Allowed
    }
}

/// Objects placed directly in the directory before the server starts (the layout is
/// a file:// cache, served as it is).
struct Fixture {
    nar: Vec<u8>,
    nar_key: String,
    narinfo_key: String,
    narinfo: String,
}

fn populate(store: &Store) -> Fixture {
    let nar = nar_of(b"served to those allowed to read");
    let fh = nix32_sha256(&nar);
    let h = store_hash("auth fixture");
    let narinfo = NarInfo::uncompressed(STORE, &h, "fixture", &nar, &[]).render();
    store.write(&format!("nar/{fh}.nar"), &nar);
    store.write(&format!("{h}.narinfo"), narinfo.as_bytes());
    Fixture {
        nar,
        nar_key: format!("/nar/{fh}.nar"),
        narinfo_key: format!("/{h}.narinfo"),
        narinfo,
    }
}

fn builder(setup: Setup, store: &Store, passfiles: Option<&Path>) -> ServerBuilder {
    let mut b = ServerBuilder::new()
        .store(store)
        .env("NIX_STORED_LOG_LEVEL", "debug")
        // The table sends dozens of wrong credentials from one address; throttling
        // them is tested in the robustness suite.
        .env("NIX_STORED_MAX_AUTH_FAILURES", "0");
    if !setup.loopback {
        b = b.env("NIX_STORED_LISTEN_INTERFACE", "0.0.0.0:0");
    }
    b = b.env(
        "NIX_STORED_ANONYMOUS_WRITES",
        if setup.anonymous { "true" } else { "false" },
    );
    if setup.read_user {
        b = b.env("NIX_STORED_USER_READ", READ_USER);
        b = match passfiles {
            Some(d) => {
                let f = d.join("read-pass");
                std::fs::write(&f, format!("{READ_PASS}\n")).unwrap();
                b.env("NIX_STORED_USER_READ_PASSFILE", f.to_str().unwrap())
            }
            None => b.env("NIX_STORED_USER_READ_PASS", READ_PASS),
        };
    }
    if setup.write_user {
        b = b.env("NIX_STORED_USER_WRITE", WRITE_USER);
        b = match passfiles {
            Some(d) => {
                let f = d.join("write-pass");
                std::fs::write(&f, format!("{WRITE_PASS}\n")).unwrap();
                b.env("NIX_STORED_USER_WRITE_PASSFILE", f.to_str().unwrap())
            }
            None => b.env("NIX_STORED_USER_WRITE_PASS", WRITE_PASS),
        };
    }
    b
}

fn with_auth(cred: Cred) -> Vec<(String, String)> {
    cred.header()
        .map(|h| vec![("Authorization".to_owned(), h)])
        .unwrap_or_default()
}

fn request(s: &Server, method: &str, path: &str, cred: Cred, body: &[u8]) -> Response {
    let headers = with_auth(cred);
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    send(s.addr, method, path, &headers, body)
}

fn check_denial(r: &Response, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.text());
    if status == 401 {
        assert_eq!(
            r.header("www-authenticate"),
            Some(REALM),
            "{what}: 401 must ask for Basic credentials"
        );
    }
}

/// Runs the whole matrix against one configuration.
fn matrix(setup: Setup, passfiles: bool) {
    let base = temp_dir("auth");
    let fresh = Store::fresh("auth");
    let dir = match fresh.dir() {
        Some(d) => {
            let _ = std::fs::remove_dir_all(d);
            Store::Dir(base.join("store"))
        }
        None => fresh,
    };
    let fx = populate(&dir);
    let s = builder(setup, &dir, passfiles.then_some(base.as_path())).start();
    let cache_control_scope = if setup.read_user { "private" } else { "public" };

    for (ci, &cred) in CREDS.iter().enumerate() {
        // Reads.
        for method in ["GET", "HEAD"] {
            for path in [&fx.nar_key, &fx.narinfo_key, &"/nix-cache-info".to_owned()] {
                let what = format!("{setup:?} {method} {path} with {cred:?}");
                let r = request(&s, method, path, cred, b"");
                match expected(setup, method, cred) {
                    Expect::Allowed => {
                        assert_eq!(r.status, 200, "{what}: {}", r.text());
                        if method == "GET" && path == &fx.nar_key {
                            assert_eq!(r.body, fx.nar, "{what}");
                        }
                        if method == "GET" && path == &fx.narinfo_key {
                            assert_eq!(r.text(), fx.narinfo, "{what}");
                        }
                        assert!(
                            r.header("cache-control")
                                .is_some_and(|v| v.starts_with(cache_control_scope)),
                            "{what}: Cache-Control {:?}",
                            r.header("cache-control")
                        );
                    }
                    Expect::Status(st) => {
                        check_denial(&r, st, &what);
                        if method == "GET" {
                            assert!(
                                !r.body.windows(fx.nar.len()).any(|w| w == fx.nar.as_slice()),
                                "{what}: leaked the object"
                            );
                        }
                    }
                }
            }
            // A miss is only revealed to those allowed to read.
            let miss = format!("/{}.narinfo", store_hash("not there"));
            let r = request(&s, method, &miss, cred, b"");
            match expected(setup, method, cred) {
                Expect::Allowed => assert_eq!(r.status, 404, "{setup:?} {method} miss {cred:?}"),
                Expect::Status(st) => check_denial(&r, st, &format!("{method} miss {cred:?}")),
            }
        }

        // Uploads of every kind, each to a fresh key.
        let nar = nar_of(format!("upload {ci}").as_bytes());
        let nar_key = format!("/nar/{}.nar", nix32_sha256(&nar));
        let h = store_hash(&format!("upload {ci}"));
        let narinfo = NarInfo::uncompressed(STORE, &h, "up", &fx.nar, &[]).render();
        let uploads: Vec<(String, Vec<u8>)> = vec![
            (nar_key, nar),
            (format!("/{h}.narinfo"), narinfo.into_bytes()),
            (format!("/{h}.ls"), br#"{"version":1,"root":{}}"#.to_vec()),
            (format!("/log/{h}-up.drv"), b"build log\n".to_vec()),
            (
                format!("/realisations/sha256:{}!out.doi", "cd".repeat(32)),
                br#"{"outPath":"x"}"#.to_vec(),
            ),
            (
                "/debuginfo/02623eda209c26a59b1a8638ff7752f6b945c26b.debug".to_owned(),
                br#"{"archive":"x"}"#.to_vec(),
            ),
            ("/nix-cache-info".to_owned(), b"Priority: 1\n".to_vec()),
        ];
        for (path, body) in uploads {
            let what = format!("{setup:?} PUT {path} with {cred:?}");
            let before = dir.read(&path);
            let existed = before.is_some();
            let r = request(&s, "PUT", &path, cred, &body);
            match expected(setup, "PUT", cred) {
                Expect::Allowed => {
                    assert!(
                        matches!(r.status, 201 | 204),
                        "{what}: {} {}",
                        r.status,
                        r.text()
                    );
                    if path != "/nix-cache-info" {
                        assert_eq!(dir.read(&path).unwrap(), body, "{what}");
                    }
                }
                Expect::Status(st) => {
                    check_denial(&r, st, &what);
                    assert_eq!(
                        dir.read(&path),
                        before,
                        "{what}: a refused upload changed the store"
                    );
                    if !existed {
                        assert!(!dir.exists(&path), "{what}: stored");
                    }
                }
            }
        }
    }
    assert!(s.pending().is_empty(), "{:?}", s.pending());

    // Secrets never reach the log, even at debug level.
    let log = s.log();
    for secret in [
        READ_PASS.to_owned(),
        WRITE_PASS.to_owned(),
        basic(READ_USER, READ_PASS),
        basic(WRITE_USER, WRITE_PASS),
        basic(READ_USER, READ_PASS)[6..].to_owned(),
        basic(WRITE_USER, WRITE_PASS)[6..].to_owned(),
    ] {
        assert!(
            !log.contains(&secret),
            "{setup:?}: the log shows {secret:?}:\n{log}"
        );
    }
    drop(s);
    let _ = std::fs::remove_dir_all(&base);
}

const fn setup(read_user: bool, write_user: bool) -> Setup {
    Setup {
        read_user,
        write_user,
        loopback: true,
        anonymous: true,
    }
}

#[test]
fn loopback_without_write_user_refuses_anonymous_uploads_by_default() {
    // A reverse proxy on the same host, every local user and DNS rebinding all reach
    // a loopback listener: the address alone never opens uploads.
    for read_user in [false, true] {
        matrix(
            Setup {
                read_user,
                write_user: false,
                loopback: true,
                anonymous: false,
            },
            false,
        );
    }
}

#[test]
fn anonymous_writes_on_a_public_address_when_asked_for() {
    matrix(
        Setup {
            read_user: false,
            write_user: false,
            loopback: false,
            anonymous: true,
        },
        false,
    );
}

#[test]
fn no_users() {
    matrix(setup(false, false), false);
}

#[test]
fn read_user_only() {
    matrix(setup(true, false), false);
}

#[test]
fn write_user_only() {
    matrix(setup(false, true), false);
}

#[test]
fn read_and_write_users() {
    matrix(setup(true, true), false);
}

#[test]
fn read_and_write_users_from_password_files() {
    matrix(setup(true, true), true);
}

#[test]
fn read_user_from_password_file_only() {
    matrix(setup(true, false), true);
}

#[test]
fn non_loopback_without_write_user() {
    matrix(
        Setup {
            read_user: false,
            write_user: false,
            loopback: false,
            anonymous: false,
        },
        false,
    );
    matrix(
        Setup {
            read_user: true,
            write_user: false,
            loopback: false,
            anonymous: false,
        },
        false,
    );
}

#[test]
fn non_loopback_with_write_user() {
    matrix(
        Setup {
            read_user: true,
            write_user: true,
            loopback: false,
            anonymous: false,
        },
        false,
    );
}

fn warnings(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.to_ascii_lowercase().contains("warn"))
        .collect()
}

#[test]
fn without_write_user_or_anonymous_writes_warns_at_start() {
    let s = ServerBuilder::new()
        .env("NIX_STORED_LISTEN_INTERFACE", "0.0.0.0:0")
        .env_remove("NIX_STORED_ANONYMOUS_WRITES")
        .start();
    let log = s.log();
    assert!(
        warnings(&log).iter().any(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("upload") || l.contains("put") || l.contains("write")
        }),
        "a startup warning about refused anonymous uploads expected:\n{log}"
    );
    let nar = nar_of(b"anonymous");
    let r = put(&s, &format!("/nar/{}.nar", nix32_sha256(&nar)), &nar);
    assert_eq!(r.status, 403, "{}", r.text());

    // On loopback with anonymous writes asked for, or with a write user, there is
    // nothing to warn about.
    let quiet = ServerBuilder::new().start();
    assert!(
        warnings(&quiet.log()).is_empty(),
        "unexpected warning on loopback:\n{}",
        quiet.log()
    );
    let with_writer = ServerBuilder::new()
        .env("NIX_STORED_LISTEN_INTERFACE", "0.0.0.0:0")
        .env_remove("NIX_STORED_ANONYMOUS_WRITES")
        .env("NIX_STORED_USER_WRITE", WRITE_USER)
        .env("NIX_STORED_USER_WRITE_PASS", WRITE_PASS)
        .start();
    assert!(
        warnings(&with_writer.log()).is_empty(),
        "unexpected warning with a write user:\n{}",
        with_writer.log()
    );
}

#[test]
fn password_file_trailing_newline_is_not_part_of_the_password() {
    let base = temp_dir("passfile");
    let file = base.join("pass");
    std::fs::write(&file, format!("{WRITE_PASS}\n")).unwrap();
    let s = ServerBuilder::new()
        .env("NIX_STORED_USER_WRITE", WRITE_USER)
        .env("NIX_STORED_USER_WRITE_PASSFILE", file.to_str().unwrap())
        .start();
    let nar = nar_of(b"passfile");
    let key = format!("/nar/{}.nar", nix32_sha256(&nar));
    let with_newline = basic(WRITE_USER, &format!("{WRITE_PASS}\n"));
    let r = send(
        s.addr,
        "PUT",
        &key,
        &[("Authorization", &with_newline)],
        &nar,
    );
    assert_eq!(r.status, 401, "the newline is not part of the password");
    let good = basic(WRITE_USER, WRITE_PASS);
    let r = send(s.addr, "PUT", &key, &[("Authorization", &good)], &nar);
    assert_eq!(r.status, 201, "{}", r.text());

    // A file without the newline works the same.
    std::fs::write(&file, WRITE_PASS).unwrap();
    let s2 = ServerBuilder::new()
        .env("NIX_STORED_USER_WRITE", WRITE_USER)
        .env("NIX_STORED_USER_WRITE_PASSFILE", file.to_str().unwrap())
        .start();
    let r = send(s2.addr, "PUT", &key, &[("Authorization", &good)], &nar);
    assert_eq!(r.status, 201, "{}", r.text());
    drop((s, s2));
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn the_read_user_cannot_upload_anything() {
    // The original Go server let the read user upload NARs.
    for s in [
        ServerBuilder::new()
            .env("NIX_STORED_USER_READ", READ_USER)
            .env("NIX_STORED_USER_READ_PASS", READ_PASS)
            .start(),
        ServerBuilder::new()
            .env("NIX_STORED_USER_READ", READ_USER)
            .env("NIX_STORED_USER_READ_PASS", READ_PASS)
            .env("NIX_STORED_USER_WRITE", WRITE_USER)
            .env("NIX_STORED_USER_WRITE_PASS", WRITE_PASS)
            .start(),
    ] {
        let nar = nar_of(b"read user upload");
        let key = format!("/nar/{}.nar", nix32_sha256(&nar));
        let h = store_hash("read user upload");
        let auth = basic(READ_USER, READ_PASS);
        for (path, body) in [
            (key.clone(), nar.clone()),
            (format!("/{h}.narinfo"), b"StorePath: x\n".to_vec()),
            (format!("/{h}.ls"), b"{}".to_vec()),
            (format!("/log/{h}-x.drv"), b"log".to_vec()),
            ("/nix-cache-info".to_owned(), b"".to_vec()),
        ] {
            let r = send(s.addr, "PUT", &path, &[("Authorization", &auth)], &body);
            assert_eq!(r.status, 403, "read user PUT {path}: {}", r.text());
        }
        // With Expect: 100-continue the refusal comes before the body.
        let mut stream = connect(s.addr);
        use std::io::Write as _;
        stream
            .write_all(&request_head(
                s.addr,
                "PUT",
                &key,
                &[("Authorization", &auth), ("Expect", "100-continue")],
                Some(nar.len() as u64),
            ))
            .unwrap();
        let first = read_head(&mut std::io::BufReader::new(stream)).unwrap();
        assert_eq!(first.status, 403, "no 100 Continue for the read user");
        assert_eq!(s.store.files(), vec!["nix-cache-info".to_owned()]);
    }
}
