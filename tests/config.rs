//! Configuration: bad settings stop the server with one `nix-stored: error:` line,
//! `--help` documents every variable, flags work, and the startup log shows the
//! effective configuration without secrets.

mod common;

use std::process::{Command, Stdio};

use common::*;

/// Every setting of the contract.
const VARIABLES: &[&str] = &[
    "NIX_STORED_PATH",
    "NIX_STORED_LISTEN_INTERFACE",
    "NIX_STORED_USER_READ",
    "NIX_STORED_USER_READ_PASS",
    "NIX_STORED_USER_READ_PASSFILE",
    "NIX_STORED_USER_WRITE",
    "NIX_STORED_USER_WRITE_PASS",
    "NIX_STORED_USER_WRITE_PASSFILE",
    "NIX_STORED_LOG_LEVEL",
    "NIX_STORED_PRIORITY",
    "NIX_STORED_MAX_UPLOAD_SIZE",
    "NIX_STORED_TRUSTED_PUBLIC_KEYS",
    "NIX_STORED_STORE_DIR",
    "NIX_STORED_BODY_TIMEOUT",
    "NIX_STORED_HEADER_TIMEOUT",
    "NIX_STORED_MAX_CONNECTIONS",
    "NIX_STORED_MAX_CONNECTIONS_PER_ADDRESS",
    "NIX_STORED_MAX_AUTH_FAILURES",
    "NIX_STORED_SHUTDOWN_TIMEOUT",
    "NIX_STORED_TLS_CERT",
    "NIX_STORED_TLS_KEY",
    "NIX_STORED_STORAGE",
    "NIX_STORED_S3_BUCKET",
    "NIX_STORED_S3_PREFIX",
    "NIX_STORED_S3_ENDPOINT",
    "NIX_STORED_S3_REGION",
    "NIX_STORED_S3_PATH_STYLE",
    "NIX_STORED_S3_CREDENTIALS_FILE",
    "NIX_STORED_S3_REDIRECT",
    "NIX_STORED_S3_REDIRECT_EXPIRY",
    "NIX_STORED_S3_NARINFO_TTL",
];

const SECRET: &str = "Sup3r-s3cret-frobozz";

/// Runs a server with `env` and asserts it refuses to start the documented way.
fn refuses(what: &str, builder: ServerBuilder) -> String {
    let (status, stderr) = builder.start_expect_failure();
    assert!(
        !status.success(),
        "{what}: exit status {status:?}\n{stderr}"
    );
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("nix-stored: error:"))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "{what}: expected exactly one `nix-stored: error:` line, stderr:\n{stderr}"
    );
    assert!(
        errors[0].len() > "nix-stored: error: ".len(),
        "{what}: the line gives a reason"
    );
    assert!(
        !stderr.contains("listening on"),
        "{what}: must not start listening:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{what}: panicked:\n{stderr}");
    stderr
}

fn with_user(role: &str) -> ServerBuilder {
    ServerBuilder::new().env(&format!("NIX_STORED_USER_{role}"), "someone")
}

#[test]
fn a_user_without_a_password() {
    for role in ["READ", "WRITE"] {
        refuses(&format!("{role} user without password"), with_user(role));
        let empty = temp_dir("empty-pass");
        let file = empty.join("pass");
        std::fs::write(&file, "\n").unwrap();
        refuses(
            &format!("{role} user with an empty password file"),
            with_user(role).env(
                &format!("NIX_STORED_USER_{role}_PASSFILE"),
                file.to_str().unwrap(),
            ),
        );
        refuses(
            &format!("{role} user with an empty password"),
            with_user(role).env(&format!("NIX_STORED_USER_{role}_PASS"), ""),
        );
        let _ = std::fs::remove_dir_all(&empty);
    }
}

#[test]
fn both_a_password_and_a_password_file() {
    let dir = temp_dir("both");
    let file = dir.join("pass");
    std::fs::write(&file, format!("{SECRET}\n")).unwrap();
    for role in ["READ", "WRITE"] {
        let err = refuses(
            &format!("{role} with both"),
            with_user(role)
                .env(&format!("NIX_STORED_USER_{role}_PASS"), SECRET)
                .env(
                    &format!("NIX_STORED_USER_{role}_PASSFILE"),
                    file.to_str().unwrap(),
                ),
        );
        assert!(
            !err.contains(SECRET),
            "the error shows the password:\n{err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unreadable_password_file() {
    let dir = temp_dir("unreadable");
    for role in ["READ", "WRITE"] {
        let var = format!("NIX_STORED_USER_{role}_PASSFILE");
        let missing = dir.join("does-not-exist");
        refuses(
            &format!("{role} passfile missing"),
            with_user(role).env(&var, missing.to_str().unwrap()),
        );
        refuses(
            &format!("{role} passfile is a directory"),
            with_user(role).env(&var, dir.to_str().unwrap()),
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unparsable_listen_address() {
    for addr in [
        "not-an-address",
        "127.0.0.1",
        "127.0.0.1:99999",
        "127.0.0.1:-1",
        ":8100",
        "",
        "256.0.0.1:80",
        "[::1:80",
    ] {
        refuses(
            &format!("listen {addr:?}"),
            ServerBuilder::new().env("NIX_STORED_LISTEN_INTERFACE", addr),
        );
    }
}

#[test]
fn a_store_path_that_cannot_be_created() {
    let base = temp_dir("badpath");
    let file = base.join("regular-file");
    std::fs::write(&file, b"not a directory").unwrap();
    refuses(
        "store under a regular file",
        ServerBuilder::new().dir(&file.join("store")),
    );
    refuses("store is a regular file", ServerBuilder::new().dir(&file));
    assert_eq!(
        std::fs::read(&file).unwrap(),
        b"not a directory",
        "the file was modified"
    );
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn a_bad_priority() {
    for p in ["high", "", "1.5", "30x", "99999999999999999999999"] {
        refuses(
            &format!("priority {p:?}"),
            ServerBuilder::new().env("NIX_STORED_PRIORITY", p),
        );
    }
}

#[test]
fn other_bad_values() {
    let cases: &[(&str, &str)] = &[
        ("NIX_STORED_LOG_LEVEL", "verbose"),
        ("NIX_STORED_MAX_UPLOAD_SIZE", "12Q"),
        ("NIX_STORED_MAX_UPLOAD_SIZE", "lots"),
        ("NIX_STORED_TRUSTED_PUBLIC_KEYS", "no-colon"),
        ("NIX_STORED_TRUSTED_PUBLIC_KEYS", "name:!!!not-base64"),
        ("NIX_STORED_TRUSTED_PUBLIC_KEYS", "name:AAAA"),
        ("NIX_STORED_STORE_DIR", "relative/store"),
        ("NIX_STORED_BODY_TIMEOUT", "0"),
        ("NIX_STORED_HEADER_TIMEOUT", "0"),
        ("NIX_STORED_MAX_CONNECTIONS", "0"),
        ("NIX_STORED_MAX_CONNECTIONS_PER_ADDRESS", "0"),
    ];
    for (var, value) in cases {
        refuses(
            &format!("{var}={value:?}"),
            ServerBuilder::new().env(var, value),
        );
    }
}

#[test]
fn timeouts_that_are_not_numbers() {
    // Values the argument parser itself rejects are bad configuration too, reported
    // the same way.
    let cases: &[(&str, &str)] = &[
        ("NIX_STORED_BODY_TIMEOUT", "abc"),
        ("NIX_STORED_BODY_TIMEOUT", "-5"),
        ("NIX_STORED_SHUTDOWN_TIMEOUT", "soon"),
        ("NIX_STORED_HEADER_TIMEOUT", "never"),
        ("NIX_STORED_MAX_CONNECTIONS", "many"),
        ("NIX_STORED_MAX_CONNECTIONS_PER_ADDRESS", "many"),
        ("NIX_STORED_MAX_AUTH_FAILURES", "-1"),
    ];
    for (var, value) in cases {
        refuses(
            &format!("{var}={value:?}"),
            ServerBuilder::new().env(var, value),
        );
    }
}

#[test]
fn help_lists_every_variable_without_secrets() {
    let out = Command::new(env!("CARGO_BIN_EXE_nix-stored"))
        .arg("--help")
        .env("NIX_STORED_USER_WRITE", "writer")
        .env("NIX_STORED_USER_WRITE_PASS", SECRET)
        .env("NIX_STORED_USER_READ", "reader")
        .env("NIX_STORED_USER_READ_PASS", SECRET)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    let help =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    for var in VARIABLES {
        assert!(help.contains(var), "--help does not mention {var}:\n{help}");
    }
    for flag in [
        "--path",
        "--listen-interface",
        "--user-read",
        "--user-read-passfile",
        "--user-write",
        "--user-write-passfile",
        "--anonymous-writes",
        "--log-level",
        "--priority",
        "--max-upload-size",
        "--trusted-public-keys",
        "--store-dir",
        "--body-timeout",
        "--header-timeout",
        "--max-connections",
        "--max-connections-per-address",
        "--max-auth-failures",
        "--shutdown-timeout",
    ] {
        assert!(help.contains(flag), "--help does not mention {flag}");
    }
    assert!(
        !help.contains(SECRET),
        "--help shows a password from the environment:\n{help}"
    );
}

#[test]
fn passwords_cannot_be_given_on_the_command_line() {
    // A command line is world-readable in /proc and `ps`: the flags do not exist,
    // the variables and the password files do.
    for flag in ["--user-read-pass", "--user-write-pass"] {
        let (status, log) = ServerBuilder::new()
            .env("NIX_STORED_USER_WRITE", "writer")
            .arg(flag)
            .arg(SECRET)
            .start_expect_failure();
        assert!(!status.success(), "{flag} was accepted:\n{log}");
        assert!(
            !log.contains(SECRET),
            "the error repeats the password:\n{log}"
        );
    }
    let s = ServerBuilder::new()
        .env("NIX_STORED_USER_WRITE", "writer")
        .env("NIX_STORED_USER_WRITE_PASS", SECRET)
        .start();
    let nar = nar_of(b"password from the environment");
    let key = format!("/nar/{}.nar", nix32_sha256(&nar));
    let r = send(
        s.addr,
        "PUT",
        &key,
        &[("Authorization", &basic("writer", SECRET))],
        &nar,
    );
    assert_eq!(r.status, 201, "{}", r.text());
}

#[test]
fn flags_configure_the_server() {
    let s = ServerBuilder::new()
        .env_remove("NIX_STORED_LISTEN_INTERFACE")
        .arg("--listen-interface")
        .arg("127.0.0.1:0")
        .arg("--priority")
        .arg("12")
        .arg("--store-dir")
        .arg("/opt/store")
        .start();
    assert_eq!(
        get(&s, "/nix-cache-info").text(),
        "StoreDir: /opt/store\nWantMassQuery: 1\nPriority: 12\n"
    );
}

#[test]
fn startup_log_shows_the_configuration_without_passwords() {
    let base = temp_dir("startup-log");
    let file = base.join("read-pass");
    let file_secret = "F1le-s3cret-zorkmid";
    std::fs::write(&file, format!("{file_secret}\n")).unwrap();
    let s = ServerBuilder::new()
        .env("NIX_STORED_USER_READ", "reader")
        .env("NIX_STORED_USER_READ_PASSFILE", file.to_str().unwrap())
        .env("NIX_STORED_USER_WRITE", "writer")
        .env("NIX_STORED_USER_WRITE_PASS", SECRET)
        .env("NIX_STORED_PRIORITY", "17")
        .env("NIX_STORED_LOG_LEVEL", "debug")
        .start();
    // Exercise the credentials once, so a request log line exists too.
    let auth = basic("writer", SECRET);
    let r = send(
        s.addr,
        "GET",
        "/nix-cache-info",
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!(r.status, 200);
    let r = send(
        s.addr,
        "GET",
        "/nix-cache-info",
        &[("Authorization", &basic("reader", file_secret))],
        b"",
    );
    assert_eq!(r.status, 200);
    assert!(
        eventually(std::time::Duration::from_secs(5), || s
            .log()
            .matches("nix-cache-info")
            .count()
            >= 2),
        "requests are logged:\n{}",
        s.log()
    );

    let log = s.log();
    let startup = log
        .lines()
        .find(|l| l.contains("reader") && l.contains("writer"))
        .unwrap_or_else(|| panic!("no startup line naming both users:\n{log}"));
    assert!(
        startup.contains(s.dir.to_str().unwrap()),
        "the startup line shows the path: {startup}"
    );
    assert!(
        startup.contains("17"),
        "the startup line shows the priority: {startup}"
    );
    for secret in [SECRET, file_secret, &auth[6..]] {
        assert!(
            !log.contains(secret),
            "the log shows a secret {secret:?}:\n{log}"
        );
    }
    drop(s);
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn the_store_directory_is_created() {
    let base = temp_dir("create");
    let dir = base.join("a").join("b").join("cache");
    let s = ServerBuilder::new().dir(&dir).start();
    assert!(dir.join("nix-cache-info").is_file());
    let nar = nar_of(b"created");
    let r = put(&s, &format!("/nar/{}.nar", nix32_sha256(&nar)), &nar);
    assert_eq!(r.status, 201, "{}", r.text());
    drop(s);
    let _ = std::fs::remove_dir_all(&base);
}

// ---------------------------------------------------------------------------------
// S3: a wrong setting fails at start, after one check against the real bucket
// (Garage, started for this test binary when scripts/test.sh did not start one).

/// A server pointed at the shared Garage, in a fresh prefix.
#[cfg(feature = "s3")]
fn s3_server() -> ServerBuilder {
    let g = garage();
    let mut b = ServerBuilder::new().store(&Store::Dir(temp_dir("unused")));
    for (k, v) in g.server_env(&format!("config-{}", std::process::id())) {
        b = b.env(&k, &v);
    }
    b
}

#[test]
#[cfg(feature = "s3")]
fn s3_misconfiguration_fails_at_start() {
    let cases = [
        (
            "unreachable endpoint",
            s3_server().env("NIX_STORED_S3_ENDPOINT", "http://127.0.0.1:1"),
            "unreachable",
        ),
        (
            "wrong secret",
            s3_server().env("AWS_SECRET_ACCESS_KEY", "0".repeat(64).as_str()),
            "credentials were refused",
        ),
        (
            "unknown key id",
            s3_server().env("AWS_ACCESS_KEY_ID", "GK00000000000000000000000000"),
            "credentials were refused",
        ),
        (
            "missing bucket",
            s3_server().env("NIX_STORED_S3_BUCKET", "no-such-bucket"),
            "does not exist",
        ),
        (
            "wrong region",
            s3_server().env("NIX_STORED_S3_REGION", "eu-west-9"),
            "NIX_STORED_S3_REGION",
        ),
        (
            "invalid bucket name",
            s3_server().env("NIX_STORED_S3_BUCKET", "Not A Bucket"),
            "NIX_STORED_S3_BUCKET",
        ),
        (
            "s3 without a bucket",
            ServerBuilder::new().env("NIX_STORED_STORAGE", "s3"),
            "NIX_STORED_S3_BUCKET",
        ),
        (
            "endpoint without a scheme",
            s3_server().env("NIX_STORED_S3_ENDPOINT", "127.0.0.1:3900"),
            "NIX_STORED_S3_ENDPOINT",
        ),
        (
            "missing credentials file",
            s3_server().env("NIX_STORED_S3_CREDENTIALS_FILE", "/nonexistent/credentials"),
            "NIX_STORED_S3_CREDENTIALS_FILE",
        ),
    ];
    for (what, builder, reason) in cases {
        let started = std::time::Instant::now();
        let stderr = refuses(what, builder);
        assert!(
            stderr.contains(reason),
            "{what}: no {reason:?} in\n{stderr}"
        );
        assert!(
            !stderr.contains(&garage().secret),
            "{what}: the secret is shown:\n{stderr}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(15),
            "{what}: took {:?} to fail",
            started.elapsed()
        );
    }
}

#[test]
#[cfg(feature = "s3")]
fn s3_credentials_from_a_file() {
    let g = garage();
    let base = temp_dir("s3-creds");
    let file = base.join("credentials");
    std::fs::write(
        &file,
        format!(
            "[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n\n[cache]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            g.key_id, g.secret
        ),
    )
    .unwrap();
    let file = file.to_str().unwrap();
    // The setting wins over the environment; the profile comes from AWS_PROFILE.
    let s = s3_server()
        .env("AWS_SECRET_ACCESS_KEY", "wrong")
        .env("NIX_STORED_S3_CREDENTIALS_FILE", file)
        .env("AWS_PROFILE", "cache")
        .start();
    let nar = nar_of(b"credentials file");
    let r = put(&s, &format!("/nar/{}.nar", nix32_sha256(&nar)), &nar);
    assert!(matches!(r.status, 201 | 204), "{}", r.text());
    drop(s);
    // The standard AWS_SHARED_CREDENTIALS_FILE is read when the environment has no key.
    let s = s3_server()
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("AWS_SHARED_CREDENTIALS_FILE", file)
        .env("AWS_PROFILE", "cache")
        .start();
    assert_eq!(get(&s, "/nix-cache-info").status, 200);
    drop(s);
    // The default profile's key is refused by the bucket: a clear error at start.
    let stderr = refuses(
        "default profile with a wrong key",
        s3_server()
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env("NIX_STORED_S3_CREDENTIALS_FILE", file),
    );
    assert!(stderr.contains("credentials were refused"), "{stderr}");
    let _ = std::fs::remove_dir_all(&base);
}

// ---------------------------------------------------------------------------------
// The lean build (`--no-default-features`): S3, HTTPS and upstream settings are refused by
// name, never silently ignored.

#[test]
#[cfg(not(feature = "s3"))]
fn s3_settings_are_refused_without_the_s3_feature() {
    for (what, builder) in [
        (
            "a bucket",
            ServerBuilder::new().env("NIX_STORED_S3_BUCKET", "cache"),
        ),
        (
            "storage s3",
            ServerBuilder::new().env("NIX_STORED_STORAGE", "s3"),
        ),
    ] {
        let stderr = refuses(what, builder);
        assert!(
            stderr.contains("built without the s3 feature"),
            "{what}: {stderr}"
        );
    }
}

#[test]
#[cfg(not(feature = "tls"))]
fn tls_settings_are_refused_without_the_tls_feature() {
    let dir = temp_dir("lean-tls");
    let stderr = refuses(
        "a certificate and key",
        ServerBuilder::new()
            .env("NIX_STORED_TLS_CERT", dir.join("c.pem").to_str().unwrap())
            .env("NIX_STORED_TLS_KEY", dir.join("k.pem").to_str().unwrap()),
    );
    assert!(stderr.contains("built without the tls feature"), "{stderr}");
}

#[test]
#[cfg(not(feature = "upstream"))]
fn upstream_settings_are_refused_without_the_upstream_feature() {
    let stderr = refuses(
        "an upstream",
        ServerBuilder::new()
            .env(
                "NIX_STORED_UPSTREAMS",
                "https://user:s3cret@cache.example.org",
            )
            .env(
                "NIX_STORED_UPSTREAM_KEYS",
                "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=",
            ),
    );
    assert!(
        stderr.contains("built without the upstream feature"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret"), "{stderr}");
}

#[test]
fn every_switch_takes_the_same_words() {
    // One syntax for all four switches: blanks around the word, any case, and the
    // short forms clap's boolean parser knows (`y`, `f`) as well as `on`/`off`.
    let s = ServerBuilder::new()
        .env("NIX_STORED_METRICS", "Y")
        .env("NIX_STORED_ANONYMOUS_WRITES", " true ")
        .env("NIX_STORED_S3_PATH_STYLE", "Off")
        .env("NIX_STORED_S3_REDIRECT", "0")
        .start();
    assert_eq!(get(&s, "/metrics").status, 200);
    assert!(s.log().contains("anonymous_writes=true"), "{}", s.log());
    drop(s);
    let off = ServerBuilder::new()
        .env("NIX_STORED_METRICS", "f")
        .env("NIX_STORED_ANONYMOUS_WRITES", "NO")
        .start();
    assert_eq!(get(&off, "/metrics").status, 404);
    assert!(
        off.log().contains("anonymous_writes=false"),
        "{}",
        off.log()
    );
    drop(off);
    for (var, value) in [
        ("NIX_STORED_METRICS", "enabled"),
        ("NIX_STORED_ANONYMOUS_WRITES", "2"),
        ("NIX_STORED_S3_REDIRECT", ""),
    ] {
        let stderr = refuses(
            &format!("{var}={value:?}"),
            ServerBuilder::new().env(var, value),
        );
        assert!(stderr.contains(var), "{var}: not named in\n{stderr}");
    }
}
