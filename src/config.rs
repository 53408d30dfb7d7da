//! Configuration: every setting is an environment variable (names compatible with the
//! original Go nix-stored) and a command-line flag, parsed into typed values by clap
//! ([`values`]); each backend's settings are declared beside it and flattened in.

mod credentials;
mod storage;
pub mod values;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use nix_derivation::StoreDir;
use nix_narinfo::TrustedPublicKey;

use crate::cache::retention::settings::{RetentionArgs, RetentionSettings};
pub use crate::logging::LogFormat;
pub use credentials::Credentials;
pub use storage::{StorageArgs, StorageConfig, StorageKind};
pub use values::{LogLevel, TrustedKeys};

/// Command line and environment of the server.
#[derive(Debug, Parser)]
#[command(
    name = "nix-stored",
    version,
    about = "A Nix binary cache server: takes uploads from `nix copy --to http://…`, verifies them, serves them back.",
    after_help = "Passwords come from files (--user-read-passfile, --user-write-passfile) or from the environment only:\n  NIX_STORED_USER_READ_PASS   password of the read user [env: NIX_STORED_USER_READ_PASS]\n  NIX_STORED_USER_WRITE_PASS  password of the write user [env: NIX_STORED_USER_WRITE_PASS]\nThere are no password flags: a command line is visible to every local user in `ps`."
)]
pub struct Args {
    /// Directory holding the cache (itself a valid `file://` binary cache).
    #[arg(long, env = "NIX_STORED_PATH", default_value = "/var/lib/nixStored")]
    pub path: PathBuf,

    /// Address and port to listen on (port 0 picks a free port).
    #[arg(
        long,
        env = "NIX_STORED_LISTEN_INTERFACE",
        default_value = "127.0.0.1:8100",
        value_parser = values::listen_address
    )]
    pub listen_interface: SocketAddr,

    /// User name allowed to read. Unset: reads are public.
    #[arg(long, env = "NIX_STORED_USER_READ")]
    pub user_read: Option<String>,
    /// Password of the read user: NIX_STORED_USER_READ_PASS, from the environment
    /// only (there is no flag: a command line is visible to every local user in `ps`).
    #[arg(skip = std::env::var("NIX_STORED_USER_READ_PASS").ok())]
    pub user_read_pass: Option<String>,
    /// File holding the password of the read user (one trailing newline is ignored).
    #[arg(long, env = "NIX_STORED_USER_READ_PASSFILE")]
    pub user_read_passfile: Option<PathBuf>,

    /// User name allowed to upload (and read). Unset: uploads are refused, unless
    /// NIX_STORED_ANONYMOUS_WRITES is true.
    #[arg(long, env = "NIX_STORED_USER_WRITE")]
    pub user_write: Option<String>,
    /// Password of the write user: NIX_STORED_USER_WRITE_PASS, from the environment
    /// only (there is no flag: a command line is visible to every local user in `ps`).
    #[arg(skip = std::env::var("NIX_STORED_USER_WRITE_PASS").ok())]
    pub user_write_pass: Option<String>,
    /// File holding the password of the write user (one trailing newline is ignored).
    #[arg(long, env = "NIX_STORED_USER_WRITE_PASSFILE")]
    pub user_write_passfile: Option<PathBuf>,

    /// Let clients without credentials upload (only without a write user). Anyone who
    /// can reach the server, a reverse proxy in front of it or a web page a local
    /// browser opens can then write to the cache: meant for a single-user machine.
    #[arg(long, env = "NIX_STORED_ANONYMOUS_WRITES", default_value = "false", value_parser = values::Switch, action = clap::ArgAction::Set)]
    pub anonymous_writes: bool,

    /// Log level: debug, info, warning or error.
    #[arg(
        long,
        env = "NIX_STORED_LOG_LEVEL",
        default_value = "info",
        ignore_case = true,
        hide_possible_values = true
    )]
    pub log_level: LogLevel,

    /// Log line format: text (for people) or json (one object per line, for collectors).
    #[arg(
        long,
        env = "NIX_STORED_LOG_FORMAT",
        default_value = "text",
        ignore_case = true,
        hide_possible_values = true
    )]
    pub log_format: LogFormat,

    /// Serve Prometheus metrics at /metrics (readable by whoever may read the cache).
    #[arg(long, env = "NIX_STORED_METRICS", default_value = "true", value_parser = values::Switch, action = clap::ArgAction::Set)]
    pub metrics: bool,

    /// Serve the page for people at / and /path/<hash>, and its data at /api/
    /// (readable by whoever may read the cache). From its first visit on, the server
    /// keeps an index of the stored paths for it (about 120 bytes a path, 11 MiB at
    /// 100 000 paths; with retention on, whose graph it shares, about 45 more).
    #[arg(long, env = "NIX_STORED_PAGE", default_value = "true", value_parser = values::Switch, action = clap::ArgAction::Set)]
    pub page: bool,

    /// Priority advertised in nix-cache-info (lower is preferred; cache.nixos.org uses 40).
    #[arg(long, env = "NIX_STORED_PRIORITY", default_value = "30", value_parser = values::priority)]
    pub priority: i64,

    /// Largest accepted upload, in bytes or with a K, M, G or T suffix (powers of 1024).
    #[arg(long, env = "NIX_STORED_MAX_UPLOAD_SIZE", default_value = "32G", value_parser = values::size)]
    pub max_upload_size: u64,

    /// Memory for client data held whole (narinfo, realisation and debuginfo bodies
    /// being validated, the decoders verifying NAR uploads, write blocks of uploads), in
    /// bytes or with a K, M, G or T suffix. An upload that would go beyond it waits or
    /// is refused with 503 and Retry-After. The default is budget::DEFAULT_BUDGET.
    #[arg(long, env = "NIX_STORED_MEMORY_BUDGET", default_value = "512M", value_parser = values::nonzero_size)]
    pub memory_budget: u64,

    /// Memory for narinfos held to answer GET and HEAD without asking storage (the
    /// often-asked ones stay), in bytes or with a K, M, G or T suffix; 0 turns it
    /// off. About 1 KiB a narinfo. On a directory, changes seen by its watch drop
    /// entries at once; on S3, entries live NIX_STORED_S3_NARINFO_TTL at most.
    #[arg(long, env = "NIX_STORED_NARINFO_CACHE_SIZE", default_value = "8M", value_parser = values::size)]
    pub narinfo_cache_size: u64,

    /// Space-separated public keys (`name:base64`, as in nix.conf's trusted-public-keys).
    /// When set, a narinfo upload must carry a valid signature by one of them.
    #[arg(long, env = "NIX_STORED_TRUSTED_PUBLIC_KEYS", default_value = "", value_parser = values::trusted_keys)]
    pub trusted_public_keys: TrustedKeys,

    /// Nix store directory of the paths in this cache.
    #[arg(long, env = "NIX_STORED_STORE_DIR", default_value = "/nix/store", value_parser = values::store_dir)]
    pub store_dir: StoreDir,

    /// Seconds an upload body may stay idle, or a download may wait for the client
    /// to take more bytes, before the transfer is aborted.
    #[arg(long, env = "NIX_STORED_BODY_TIMEOUT", default_value = "60", value_parser = clap::value_parser!(u64).range(1..))]
    pub body_timeout: u64,

    /// Print the OpenAPI document of the HTTP interface and exit.
    #[arg(long)]
    pub print_openapi: bool,

    /// Seconds a client gets to send a request's headers (from the connection's start,
    /// or from the end of its previous request); idle connections close after it.
    #[arg(long, env = "NIX_STORED_HEADER_TIMEOUT", default_value = "30", value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout: u64,

    /// Most connections served at once; more wait in the listen backlog. Default:
    /// 10000, or fewer when the file descriptor limit (raised to its hard limit at
    /// start) cannot hold two descriptors per connection.
    #[arg(long, env = "NIX_STORED_MAX_CONNECTIONS", value_parser = values::at_least_one)]
    pub max_connections: Option<usize>,

    /// Most connections one client address may have open; more are answered 503 and
    /// closed. Default: a quarter of the connection limit, at least 32 and at most 256.
    /// IPv4-mapped IPv6 addresses count as the IPv4 address.
    #[arg(long, env = "NIX_STORED_MAX_CONNECTIONS_PER_ADDRESS", value_parser = values::at_least_one)]
    pub max_connections_per_address: Option<usize>,

    /// Wrong credentials a client address (an IPv6 /64) may send in a row; after that it
    /// regains one attempt per second, and requests with credentials are answered 429
    /// (with Retry-After) unchecked meanwhile. A correct login resets it. 0: no limit.
    #[arg(long, env = "NIX_STORED_MAX_AUTH_FAILURES", default_value = "10")]
    pub max_auth_failures: u32,

    /// Seconds in-flight requests get to finish after SIGTERM/SIGINT.
    #[arg(long, env = "NIX_STORED_SHUTDOWN_TIMEOUT", default_value = "30")]
    pub shutdown_timeout: u64,

    /// Storage backend and its settings.
    #[command(flatten)]
    pub storage: StorageArgs,

    /// PEM file with the TLS certificate chain (the server's certificate first). With
    /// NIX_STORED_TLS_KEY, the server speaks HTTPS (HTTP/2 and HTTP/1.1) instead of HTTP.
    /// Reloaded on SIGHUP and when it changes.
    #[arg(long, env = "NIX_STORED_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// PEM file with the certificate's private key (PKCS#8, PKCS#1 or SEC1, unencrypted).
    #[arg(long, env = "NIX_STORED_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    #[command(flatten)]
    pub retention: RetentionArgs,

    /// Reverse-proxy settings (see `crate::http::proxy`).
    #[command(flatten)]
    pub proxy: crate::http::proxy::ProxyArgs,

    /// Pull-through upstream caches (see `crate::cache::upstream`).
    #[command(flatten)]
    pub upstream: crate::cache::upstream::UpstreamArgs,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What to do instead of serving.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Print what a retention pass would remove now (paths, bytes, why), with the
    /// server's settings, and change nothing; safe next to a running server.
    Gc {
        /// Required: passes that remove run in the server.
        #[arg(long)]
        dry_run: bool,
    },
}

/// A command line or environment that clap refused, as one line that names the
/// variable too: clap names the flag, and most deployments set the variable.
pub fn parse_error_line(e: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue};
    let text = e.to_string();
    let line = text.lines().next().unwrap_or("invalid arguments");
    let line = line.strip_prefix("error: ").unwrap_or(line);
    // clap lists the valid values on a line of their own.
    let line = match e.get(ContextKind::ValidValue) {
        Some(ContextValue::Strings(valid)) => format!("{line}: not one of {}", valid.join(", ")),
        _ => line.to_owned(),
    };
    let Some(ContextValue::String(flag)) = e.get(ContextKind::InvalidArg) else {
        return line;
    };
    let long = flag
        .split_whitespace()
        .next()
        .unwrap_or("")
        .trim_start_matches('-');
    let command = <Args as clap::CommandFactory>::command();
    let env = command
        .get_arguments()
        .find(|a| a.get_long() == Some(long))
        .and_then(|a| a.get_env())
        .and_then(|v| v.to_str());
    match env {
        Some(var) => format!("{var}: {line}"),
        None => line,
    }
}

/// The certificate chain and private key files of HTTPS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// The validated configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Storage backend.
    pub storage: StorageConfig,
    /// Listen address.
    pub listen: SocketAddr,
    /// Read user, if any.
    pub read_user: Option<Credentials>,
    /// Write user, if any.
    pub write_user: Option<Credentials>,
    /// NIX_STORED_ANONYMOUS_WRITES as set; see [`Config::anonymous_writes`].
    pub anonymous_writes_setting: bool,
    /// Log level.
    pub log_level: LogLevel,
    /// Log line format.
    pub log_format: LogFormat,
    /// Whether `/metrics` is served.
    pub metrics: bool,
    /// Whether the page (`/`, `/path/…`, `/api/…`) is served, and its catalog kept.
    pub page: bool,
    /// nix-cache-info priority.
    pub priority: i64,
    /// Upload size limit in bytes.
    pub max_upload_size: u64,
    /// Bytes of client data held in memory at once.
    pub memory_budget: u64,
    /// Bytes of narinfo answers held in memory (0: none).
    pub narinfo_cache_size: u64,
    /// Keys uploads must be signed by.
    pub trusted_keys: Vec<TrustedPublicKey>,
    /// Nix store directory.
    pub store_dir: StoreDir,
    /// Idle body timeout (uploads and downloads).
    pub body_timeout: Duration,
    /// Time a client gets to send request headers.
    pub header_timeout: Duration,
    /// Connection limit set explicitly; `None` derives it from the descriptor limit.
    pub max_connections: Option<usize>,
    /// Per-address connection limit set explicitly; `None` derives it from the
    /// connection limit.
    pub max_connections_per_address: Option<usize>,
    /// Wrong credentials in a row per client network before throttling (0: never).
    pub max_auth_failures: u32,
    /// Grace period on shutdown.
    pub shutdown_timeout: Duration,
    /// HTTPS certificate and key; `None` serves plain HTTP.
    pub tls: Option<TlsFiles>,
    /// Quota, age limit, pins.
    pub retention: RetentionSettings,
    /// Trusted reverse proxies and the outside URL.
    pub proxy: crate::http::proxy::ProxySettings,
    /// Pull-through upstream caches.
    pub upstream: crate::cache::upstream::UpstreamSettings,
}

/// A configuration problem, reported as one line before exiting.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

fn err(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

impl Config {
    /// Checks what parsing alone cannot (settings that go together, files that must be
    /// readable) and builds the configuration.
    pub fn from_args(args: Args) -> Result<Self, ConfigError> {
        let storage = args.storage.select(&args.path)?;
        let read_user = credentials::credentials(
            "READ",
            args.user_read,
            args.user_read_pass,
            args.user_read_passfile.as_deref(),
        )?;
        let write_user = credentials::credentials(
            "WRITE",
            args.user_write,
            args.user_write_pass,
            args.user_write_passfile.as_deref(),
        )?;
        let tls = tls_files(args.tls_cert, args.tls_key)?;
        Ok(Config {
            storage,
            listen: args.listen_interface,
            read_user,
            write_user,
            anonymous_writes_setting: args.anonymous_writes,
            log_level: args.log_level,
            log_format: args.log_format,
            metrics: args.metrics,
            page: args.page,
            priority: args.priority,
            max_upload_size: args.max_upload_size,
            memory_budget: args.memory_budget,
            narinfo_cache_size: args.narinfo_cache_size,
            trusted_keys: args.trusted_public_keys.0,
            store_dir: args.store_dir,
            body_timeout: Duration::from_secs(args.body_timeout),
            header_timeout: Duration::from_secs(args.header_timeout),
            max_connections: args.max_connections,
            max_connections_per_address: args.max_connections_per_address,
            max_auth_failures: args.max_auth_failures,
            shutdown_timeout: Duration::from_secs(args.shutdown_timeout),
            tls,
            retention: args.retention.into(),
            proxy: crate::http::proxy::ProxySettings::from_args(&args.proxy).map_err(err)?,
            upstream: crate::cache::upstream::UpstreamSettings::from_args(&args.upstream)
                .map_err(err)?,
        })
    }

    /// Whether anonymous clients may upload: only when asked for explicitly and no
    /// write user is configured. Never derived from the listening address: a reverse
    /// proxy on the same host, every local user and DNS rebinding all reach a loopback
    /// listener, and under socket activation the address is not even this setting's.
    pub fn anonymous_writes(&self) -> bool {
        self.anonymous_writes_setting && self.write_user.is_none()
    }

    /// One line describing the effective configuration, secrets redacted.
    pub fn summary(&self) -> String {
        let user = |c: &Option<Credentials>| {
            c.as_ref().map_or("none".to_owned(), |c| {
                format!("{} (password redacted)", c.user)
            })
        };
        let tls = self.tls.as_ref().map_or("off".to_owned(), |t| {
            format!("cert:{},key:{}", t.cert.display(), t.key.display())
        });
        let auto = |n: Option<usize>| n.map_or("auto".to_owned(), |n| n.to_string());
        format!(
            "storage={} listen={} read_user={} write_user={} anonymous_writes={} metrics={} page={} priority={} max_upload_size={} memory_budget={} narinfo_cache_size={} trusted_public_keys={} store_dir={} body_timeout={}s header_timeout={}s max_connections={} max_connections_per_address={} max_auth_failures={} shutdown_timeout={}s tls={} retention={}",
            self.storage,
            self.listen,
            user(&self.read_user),
            user(&self.write_user),
            self.anonymous_writes(),
            self.metrics,
            self.page,
            self.priority,
            self.max_upload_size,
            self.memory_budget,
            self.narinfo_cache_size,
            self.trusted_keys.len(),
            self.store_dir.as_str(),
            self.body_timeout.as_secs(),
            self.header_timeout.as_secs(),
            auto(self.max_connections),
            auto(self.max_connections_per_address),
            self.max_auth_failures,
            self.shutdown_timeout.as_secs(),
            tls,
            self.retention.summary(),
        )
    }
}

/// The HTTPS files: both or neither. An empty variable counts as unset, as a
/// blanked-out line in an env file means.
fn tls_files(cert: Option<PathBuf>, key: Option<PathBuf>) -> Result<Option<TlsFiles>, ConfigError> {
    let nonempty = |p: Option<PathBuf>| p.filter(|p| !p.as_os_str().is_empty());
    let tls = match (nonempty(cert), nonempty(key)) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        (None, None) => None,
        (Some(_), None) => {
            return Err(err(
                "NIX_STORED_TLS_CERT is set but NIX_STORED_TLS_KEY is not: HTTPS needs both",
            ))
        }
        (None, Some(_)) => {
            return Err(err(
                "NIX_STORED_TLS_KEY is set but NIX_STORED_TLS_CERT is not: HTTPS needs both",
            ))
        }
    };
    if cfg!(not(feature = "tls")) && tls.is_some() {
        return Err(err(
            "HTTPS is configured (NIX_STORED_TLS_CERT and NIX_STORED_TLS_KEY) but this binary was built without the tls feature",
        ));
    }
    Ok(tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        parse_with_passwords(args, None, None)
    }

    /// As [`parse`], with the password variables as if set in the environment.
    fn parse_with_passwords(
        args: &[&str],
        read_pass: Option<&str>,
        write_pass: Option<&str>,
    ) -> Result<Config, ConfigError> {
        let mut all = vec!["nix-stored"];
        all.extend_from_slice(args);
        let mut parsed = Args::try_parse_from(all).map_err(|e| err(e.to_string()))?;
        parsed.user_read_pass = read_pass.map(str::to_owned);
        parsed.user_write_pass = write_pass.map(str::to_owned);
        Config::from_args(parsed)
    }

    #[test]
    fn users_need_exactly_one_password_source() {
        assert!(parse(&["--user-read", "r"])
            .unwrap_err()
            .0
            .contains("no password"));
        assert!(parse_with_passwords(&[], None, Some("p"))
            .unwrap_err()
            .0
            .contains("user name"));
        let both = parse_with_passwords(
            &["--user-read", "r", "--user-read-passfile", "/x"],
            Some("p"),
            None,
        );
        assert!(both.unwrap_err().0.contains("both set"));
        let missing = parse(&["--user-read", "r", "--user-read-passfile", "/nonexistent/x"]);
        assert!(missing.unwrap_err().0.contains("cannot read"));
    }

    #[test]
    fn passfile_drops_one_trailing_newline() {
        let file = std::env::temp_dir().join(format!("nix-stored-pass-{}", std::process::id()));
        std::fs::write(&file, "secret\n\n").unwrap();
        let c = parse(&[
            "--user-write",
            "w",
            "--user-write-passfile",
            file.to_str().unwrap(),
        ]);
        std::fs::remove_file(&file).unwrap();
        let c = c.unwrap();
        assert_eq!(c.write_user.unwrap().password, "secret\n");
    }

    #[test]
    fn anonymous_writes_only_when_asked_for() {
        // Whatever the address: loopback is reachable by proxies and local users.
        assert!(!parse(&[]).unwrap().anonymous_writes());
        assert!(!parse(&["--listen-interface", "[::1]:1"])
            .unwrap()
            .anonymous_writes());
        assert!(parse(&["--anonymous-writes", "true"])
            .unwrap()
            .anonymous_writes());
        assert!(parse(&[
            "--anonymous-writes",
            "yes",
            "--listen-interface",
            "0.0.0.0:1"
        ])
        .unwrap()
        .anonymous_writes());
        // A write user always wins.
        let w = parse_with_passwords(
            &["--anonymous-writes", "true", "--user-write", "w"],
            None,
            Some("p"),
        )
        .unwrap();
        assert!(!w.anonymous_writes());
    }

    #[test]
    fn parse_errors_name_the_variable() {
        let e = Args::try_parse_from(["nix-stored", "--metrics", "maybe"]).unwrap_err();
        let line = parse_error_line(&e);
        assert!(line.starts_with("NIX_STORED_METRICS: "), "{line}");
        assert!(line.contains("not true or false"), "{line}");
        let e = Args::try_parse_from(["nix-stored", "--s3-redirect-expiry", "x"]).unwrap_err();
        assert!(parse_error_line(&e).starts_with("NIX_STORED_S3_REDIRECT_EXPIRY: "));
    }

    #[test]
    fn every_switch_takes_the_same_words() {
        for flag in [
            "--anonymous-writes",
            "--metrics",
            "--page",
            "--s3-path-style",
            "--s3-redirect",
        ] {
            for (word, on) in [("yes", true), ("OFF", false), (" 1 ", true), ("f", false)] {
                let args = Args::try_parse_from(["nix-stored", flag, word])
                    .unwrap_or_else(|e| panic!("{flag} {word:?}: {e}"));
                let value = match flag {
                    "--anonymous-writes" => args.anonymous_writes,
                    "--metrics" => args.metrics,
                    "--page" => args.page,
                    "--s3-path-style" => args.storage.s3.s3_path_style,
                    _ => args.storage.s3.s3_redirect,
                };
                assert_eq!(value, on, "{flag} {word:?}");
            }
            assert!(Args::try_parse_from(["nix-stored", flag, "maybe"]).is_err());
        }
    }

    #[test]
    fn names_are_case_blind() {
        let c = parse(&[
            "--log-level",
            "WARN",
            "--log-format",
            "Json",
            "--storage",
            "FS",
        ])
        .unwrap();
        assert_eq!(c.log_level, LogLevel::Warning);
        assert_eq!(c.log_format, LogFormat::Json);
        assert!(matches!(c.storage, StorageConfig::Fs(_)));
        assert_eq!(
            parse(&["--log-level", "trace"]).unwrap().log_level,
            LogLevel::Debug
        );
    }

    #[test]
    fn there_are_no_password_flags() {
        for flag in ["--user-read-pass", "--user-write-pass"] {
            assert!(
                Args::try_parse_from(["nix-stored", flag, "secret"]).is_err(),
                "{flag} must not exist: it would show the password in ps"
            );
        }
    }

    #[test]
    fn summary_redacts_passwords() {
        let c = parse_with_passwords(&["--user-write", "w"], None, Some("hunter2")).unwrap();
        assert!(!c.summary().contains("hunter2"));
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    #[cfg(feature = "tls")]
    fn tls_needs_both_files() {
        assert!(parse(&[]).unwrap().tls.is_none());
        let cert_only = parse(&["--tls-cert", "/c.pem"]).unwrap_err().0;
        assert!(
            cert_only.contains("NIX_STORED_TLS_KEY is not"),
            "{cert_only}"
        );
        let key_only = parse(&["--tls-key", "/k.pem"]).unwrap_err().0;
        assert!(
            key_only.contains("NIX_STORED_TLS_CERT is not"),
            "{key_only}"
        );
        let both = parse(&["--tls-cert", "/c.pem", "--tls-key", "/k.pem"]).unwrap();
        let files = both.tls.as_ref().unwrap();
        assert_eq!(files.cert, std::path::Path::new("/c.pem"));
        assert_eq!(files.key, std::path::Path::new("/k.pem"));
        assert!(both.summary().contains("tls=cert:/c.pem,key:/k.pem"));
    }

    #[test]
    fn rejects_bad_values() {
        assert!(parse(&["--listen-interface", "localhost"]).is_err());
        assert!(parse(&["--priority", "high"]).is_err());
        assert!(parse(&["--log-level", "loud"]).is_err());
        assert!(parse(&["--trusted-public-keys", "k:notbase64"]).is_err());
        assert!(parse(&["--store-dir", "relative"]).is_err());
        assert!(parse(&["--header-timeout", "0"]).is_err());
        assert!(parse(&["--max-connections", "0"]).is_err());
        assert!(parse(&["--memory-budget", "0"]).is_err());
        assert!(parse(&["--memory-budget", "lots"]).is_err());
        assert_eq!(
            parse(&["--memory-budget", "64K"]).unwrap().memory_budget,
            64 << 10
        );
        assert_eq!(
            parse(&[]).unwrap().memory_budget,
            crate::budget::DEFAULT_BUDGET
        );
        assert!(parse(&["--max-connections-per-address", "0"]).is_err());
        assert_eq!(parse(&[]).unwrap().narinfo_cache_size, 8 << 20);
        assert_eq!(
            parse(&["--narinfo-cache-size", "0"])
                .unwrap()
                .narinfo_cache_size,
            0
        );
        assert!(parse(&["--narinfo-cache-size", "lots"]).is_err());
        assert_eq!(parse(&[]).unwrap().max_auth_failures, 10);
        assert_eq!(
            parse(&["--max-connections-per-address", "3"])
                .unwrap()
                .max_connections_per_address,
            Some(3)
        );
        assert_eq!(
            parse(&["--max-connections", "7"]).unwrap().max_connections,
            Some(7)
        );
    }

    #[test]
    #[cfg(feature = "s3")]
    fn s3_is_chosen_by_a_bucket_and_checked_offline() {
        let c = parse(&["--s3-bucket", "cache", "--s3-prefix", "/a/b/"]).unwrap();
        let StorageConfig::S3(s) = c.storage else {
            panic!("a bucket selects S3")
        };
        assert_eq!(s.prefix, "a/b");
        assert!(s.path_style && s.redirect.is_none());
        assert!(matches!(parse(&[]).unwrap().storage, StorageConfig::Fs(_)));
        for bad in [
            &["--storage", "s3"][..],
            &["--storage", "ftp"],
            &["--storage", "fs", "--s3-bucket", "cache"],
            &["--s3-bucket", "Bad_Bucket!"],
            &["--s3-bucket", "cache", "--s3-endpoint", "s3.example.com"],
            &["--s3-bucket", "cache", "--s3-prefix", "a/../b"],
            &["--s3-bucket", "cache", "--s3-redirect-expiry", "0"],
            &[
                "--s3-bucket",
                "cache",
                "--s3-credentials-file",
                "/nonexistent/c",
            ],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let r = parse(&["--s3-bucket", "cache", "--s3-redirect", "yes"]).unwrap();
        let StorageConfig::S3(s) = r.storage else {
            panic!()
        };
        assert_eq!(s.redirect, Some(std::time::Duration::from_secs(300)));
    }
}
