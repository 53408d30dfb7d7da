//! Configuration: every setting is an environment variable (names compatible with the
//! original Go nix-stored) and a command-line flag.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use nix_derivation::StoreDir;
use nix_narinfo::TrustedPublicKey;

#[cfg(feature = "s3")]
use crate::storage::s3::S3Settings;

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
        default_value = "127.0.0.1:8100"
    )]
    pub listen_interface: String,

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
    #[arg(long, env = "NIX_STORED_ANONYMOUS_WRITES", default_value = "false", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub anonymous_writes: bool,

    /// Log level: debug, info, warning or error.
    #[arg(long, env = "NIX_STORED_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Log line format: text (for people) or json (one object per line, for collectors).
    #[arg(long, env = "NIX_STORED_LOG_FORMAT", default_value = "text")]
    pub log_format: String,

    /// Serve Prometheus metrics at /metrics (readable by whoever may read the cache).
    #[arg(long, env = "NIX_STORED_METRICS", default_value = "true")]
    pub metrics: String,

    /// Priority advertised in nix-cache-info (lower is preferred; cache.nixos.org uses 40).
    #[arg(long, env = "NIX_STORED_PRIORITY", default_value = "30")]
    pub priority: String,

    /// Largest accepted upload, in bytes or with a K, M, G or T suffix (powers of 1024).
    #[arg(long, env = "NIX_STORED_MAX_UPLOAD_SIZE", default_value = "32G")]
    pub max_upload_size: String,

    /// Memory for client data held whole (narinfo, realisation and debuginfo bodies
    /// being validated, the decoders verifying NAR uploads, the S3 narinfo memo), in
    /// bytes or with a K, M, G or T suffix. An upload that would go beyond it waits or
    /// is refused with 503 and Retry-After. The default is budget::DEFAULT_BUDGET.
    #[arg(long, env = "NIX_STORED_MEMORY_BUDGET", default_value = "512M")]
    pub memory_budget: String,

    /// Space-separated public keys (`name:base64`, as in nix.conf's trusted-public-keys).
    /// When set, a narinfo upload must carry a valid signature by one of them.
    #[arg(long, env = "NIX_STORED_TRUSTED_PUBLIC_KEYS", default_value = "")]
    pub trusted_public_keys: String,

    /// Nix store directory of the paths in this cache.
    #[arg(long, env = "NIX_STORED_STORE_DIR", default_value = "/nix/store")]
    pub store_dir: String,

    /// Seconds an upload body may stay idle, or a download may wait for the client
    /// to take more bytes, before the transfer is aborted.
    #[arg(long, env = "NIX_STORED_BODY_TIMEOUT", default_value = "60")]
    pub body_timeout: u64,

    /// Print the OpenAPI document of the HTTP interface and exit.
    #[arg(long)]
    pub print_openapi: bool,

    /// Seconds a client gets to send a request's headers (from the connection's start,
    /// or from the end of its previous request); idle connections close after it.
    #[arg(long, env = "NIX_STORED_HEADER_TIMEOUT", default_value = "30")]
    pub header_timeout: u64,

    /// Most connections served at once; more wait in the listen backlog. Default:
    /// 10000, or fewer when the file descriptor limit (raised to its hard limit at
    /// start) cannot hold two descriptors per connection.
    #[arg(long, env = "NIX_STORED_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Most connections one client address may have open; more are answered 503 and
    /// closed. Default: a quarter of the connection limit, at least 32 and at most 256.
    /// IPv4-mapped IPv6 addresses count as the IPv4 address.
    #[arg(long, env = "NIX_STORED_MAX_CONNECTIONS_PER_ADDRESS")]
    pub max_connections_per_address: Option<usize>,

    /// Wrong credentials a client address (an IPv6 /64) may send in a row; after that it
    /// regains one attempt per second, and requests with credentials are answered 429
    /// (with Retry-After) unchecked meanwhile. A correct login resets it. 0: no limit.
    #[arg(long, env = "NIX_STORED_MAX_AUTH_FAILURES", default_value = "10")]
    pub max_auth_failures: u32,

    /// Seconds in-flight requests get to finish after SIGTERM/SIGINT.
    #[arg(long, env = "NIX_STORED_SHUTDOWN_TIMEOUT", default_value = "30")]
    pub shutdown_timeout: u64,

    /// Where objects live: `fs` (the NIX_STORED_PATH directory) or `s3` (a bucket).
    /// Unset: `s3` when NIX_STORED_S3_BUCKET is set, else `fs`.
    #[arg(long, env = "NIX_STORED_STORAGE")]
    pub storage: Option<String>,

    /// S3 bucket holding the cache.
    #[arg(long, env = "NIX_STORED_S3_BUCKET")]
    pub s3_bucket: Option<String>,

    /// Key prefix inside the bucket (e.g. `cache` puts narinfos at `cache/<hash>.narinfo`).
    #[arg(long, env = "NIX_STORED_S3_PREFIX", default_value = "")]
    pub s3_prefix: String,

    /// S3 endpoint URL, for stores other than AWS (e.g. `http://127.0.0.1:3900`).
    /// Unset: AWS_ENDPOINT_URL, else AWS itself.
    #[arg(long, env = "NIX_STORED_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,

    /// S3 region. Unset: AWS_REGION, else AWS_DEFAULT_REGION, else us-east-1.
    #[arg(long, env = "NIX_STORED_S3_REGION")]
    pub s3_region: Option<String>,

    /// Path-style addressing (`endpoint/bucket/key`); false for virtual-hosted
    /// (`bucket.endpoint/key`).
    #[arg(long, env = "NIX_STORED_S3_PATH_STYLE", default_value = "true", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub s3_path_style: bool,

    /// AWS shared credentials file holding the S3 key (profile AWS_PROFILE, else
    /// `default`); takes precedence over AWS_ACCESS_KEY_ID and ~/.aws/credentials.
    #[arg(long, env = "NIX_STORED_S3_CREDENTIALS_FILE")]
    pub s3_credentials_file: Option<PathBuf>,

    /// Answer NAR downloads with a redirect to a presigned S3 URL instead of streaming
    /// them through the server.
    #[arg(long, env = "NIX_STORED_S3_REDIRECT", default_value = "false", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub s3_redirect: bool,

    /// Seconds a presigned redirect URL stays valid (at most 604800, S3's limit).
    #[arg(long, env = "NIX_STORED_S3_REDIRECT_EXPIRY", default_value = "300")]
    pub s3_redirect_expiry: u64,

    /// Milliseconds a narinfo read from S3 may be answered from memory (0: never).
    /// Bounds how long a narinfo replaced or deleted by another server can be served.
    #[arg(long, env = "NIX_STORED_S3_NARINFO_TTL", default_value = "5000")]
    pub s3_narinfo_ttl: u64,

    /// PEM file with the TLS certificate chain (the server's certificate first). With
    /// NIX_STORED_TLS_KEY, the server speaks HTTPS (HTTP/2 and HTTP/1.1) instead of HTTP.
    /// Reloaded on SIGHUP and when it changes.
    #[arg(long, env = "NIX_STORED_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// PEM file with the certificate's private key (PKCS#8, PKCS#1 or SEC1, unencrypted).
    #[arg(long, env = "NIX_STORED_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// Reverse-proxy settings (see `crate::http::proxy`).
    #[command(flatten)]
    pub proxy: crate::http::proxy::ProxyArgs,
}

/// The certificate chain and private key files of HTTPS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// A user name and its password.
#[derive(Clone)]
pub struct Credentials {
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (password redacted)", self.user)
    }
}

/// Log verbosity.
#[derive(Debug, Clone, Copy)]
pub enum LogLevel {
    /// Everything, including per-request details.
    Debug,
    /// One line per request and the lifecycle.
    Info,
    /// Problems only.
    Warning,
    /// Failures only.
    Error,
}

/// Where the cache's objects live.
#[derive(Debug, Clone)]
pub enum StorageConfig {
    /// A local directory (NIX_STORED_PATH).
    Fs(PathBuf),
    /// An S3 bucket.
    #[cfg(feature = "s3")]
    S3(S3Settings),
}

/// The validated configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Cache directory, used when `storage` is [`StorageConfig::Fs`].
    pub path: PathBuf,
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
    pub log_format: crate::logging::LogFormat,
    /// Whether `/metrics` is served.
    pub metrics: bool,
    /// nix-cache-info priority.
    pub priority: i64,
    /// Upload size limit in bytes.
    pub max_upload_size: u64,
    /// Bytes of client data held in memory at once.
    pub memory_budget: u64,
    /// Keys uploads must be signed by.
    pub trusted_keys: Vec<TrustedPublicKey>,
    /// Nix store directory.
    pub store_dir: StoreDir,
    /// Idle body timeout (uploads and downloads).
    pub body_timeout: std::time::Duration,
    /// Time a client gets to send request headers.
    pub header_timeout: std::time::Duration,
    /// Connection limit set explicitly; `None` derives it from the descriptor limit.
    pub max_connections: Option<usize>,
    /// Per-address connection limit set explicitly; `None` derives it from the
    /// connection limit.
    pub max_connections_per_address: Option<usize>,
    /// Wrong credentials in a row per client network before throttling (0: never).
    pub max_auth_failures: u32,
    /// Grace period on shutdown.
    pub shutdown_timeout: std::time::Duration,
    /// HTTPS certificate and key; `None` serves plain HTTP.
    pub tls: Option<TlsFiles>,
    /// Trusted reverse proxies and the outside URL.
    pub proxy: crate::http::proxy::ProxySettings,
}

/// A configuration problem, reported as one line before exiting.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

fn err(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

impl Config {
    /// Validates parsed arguments.
    pub fn from_args(args: Args) -> Result<Self, ConfigError> {
        let storage = storage(&args)?;
        let listen: SocketAddr = args.listen_interface.parse().map_err(|_| {
            err(format!(
                "NIX_STORED_LISTEN_INTERFACE {:?} is not an address like 127.0.0.1:8100 or [::1]:8100",
                args.listen_interface
            ))
        })?;
        let read_user = credentials(
            "READ",
            args.user_read,
            args.user_read_pass,
            args.user_read_passfile.as_deref(),
        )?;
        let write_user = credentials(
            "WRITE",
            args.user_write,
            args.user_write_pass,
            args.user_write_passfile.as_deref(),
        )?;
        let log_level = match args.log_level.to_ascii_lowercase().as_str() {
            "debug" | "trace" => LogLevel::Debug,
            "info" => LogLevel::Info,
            "warning" | "warn" => LogLevel::Warning,
            "error" => LogLevel::Error,
            other => {
                return Err(err(format!(
                    "NIX_STORED_LOG_LEVEL {other:?} is not one of debug, info, warning, error"
                )))
            }
        };
        let log_format = match args.log_format.to_ascii_lowercase().as_str() {
            "text" => crate::logging::LogFormat::Text,
            "json" => crate::logging::LogFormat::Json,
            other => {
                return Err(err(format!(
                    "NIX_STORED_LOG_FORMAT {other:?} is not one of text, json"
                )))
            }
        };
        let metrics = parse_bool(&args.metrics).ok_or_else(|| {
            err(format!(
                "NIX_STORED_METRICS {:?} is not true or false",
                args.metrics
            ))
        })?;
        let priority: i64 = args.priority.trim().parse().map_err(|_| {
            err(format!(
                "NIX_STORED_PRIORITY {:?} is not an integer (Nix clients abort on a non-numeric priority)",
                args.priority
            ))
        })?;
        let max_upload_size = parse_size(&args.max_upload_size).ok_or_else(|| {
            err(format!(
                "NIX_STORED_MAX_UPLOAD_SIZE {:?} is not a size like 1073741824, 512M or 32G",
                args.max_upload_size
            ))
        })?;
        let memory_budget = parse_size(&args.memory_budget)
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                err(format!(
                    "NIX_STORED_MEMORY_BUDGET {:?} is not a size like 268435456, 256M or 1G",
                    args.memory_budget
                ))
            })?;
        let trusted_keys = args
            .trusted_public_keys
            .split_whitespace()
            .map(|k| {
                TrustedPublicKey::parse(k).map_err(|e| {
                    err(format!(
                        "NIX_STORED_TRUSTED_PUBLIC_KEYS: {k:?} is not a public key ({e})"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let store_dir = StoreDir::new(args.store_dir.clone()).map_err(|e| {
            err(format!(
                "NIX_STORED_STORE_DIR {:?} is not a store directory ({e})",
                args.store_dir
            ))
        })?;
        if args.body_timeout == 0 {
            return Err(err("NIX_STORED_BODY_TIMEOUT must be at least 1 second"));
        }
        // An empty variable counts as unset, as a blanked-out line in an env file means.
        let nonempty = |p: Option<PathBuf>| p.filter(|p| !p.as_os_str().is_empty());
        let tls =
            match (nonempty(args.tls_cert), nonempty(args.tls_key)) {
                (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
                (None, None) => None,
                (Some(_), None) => return Err(err(
                    "NIX_STORED_TLS_CERT is set but NIX_STORED_TLS_KEY is not: HTTPS needs both",
                )),
                (None, Some(_)) => return Err(err(
                    "NIX_STORED_TLS_KEY is set but NIX_STORED_TLS_CERT is not: HTTPS needs both",
                )),
            };
        if cfg!(not(feature = "tls")) && tls.is_some() {
            return Err(err(
                "HTTPS is configured (NIX_STORED_TLS_CERT and NIX_STORED_TLS_KEY) but this binary was built without the tls feature",
            ));
        }
        if args.header_timeout == 0 {
            return Err(err("NIX_STORED_HEADER_TIMEOUT must be at least 1 second"));
        }
        if args.max_connections == Some(0) {
            return Err(err("NIX_STORED_MAX_CONNECTIONS must be at least 1"));
        }
        if args.max_connections_per_address == Some(0) {
            return Err(err(
                "NIX_STORED_MAX_CONNECTIONS_PER_ADDRESS must be at least 1",
            ));
        }
        Ok(Config {
            storage,
            path: args.path,
            listen,
            read_user,
            write_user,
            anonymous_writes_setting: args.anonymous_writes,
            log_level,
            log_format,
            metrics,
            priority,
            max_upload_size,
            memory_budget,
            trusted_keys,
            store_dir,
            body_timeout: std::time::Duration::from_secs(args.body_timeout),
            header_timeout: std::time::Duration::from_secs(args.header_timeout),
            max_connections: args.max_connections,
            max_connections_per_address: args.max_connections_per_address,
            max_auth_failures: args.max_auth_failures,
            shutdown_timeout: std::time::Duration::from_secs(args.shutdown_timeout),
            tls,
            proxy: crate::http::proxy::ProxySettings::from_args(&args.proxy).map_err(err)?,
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
        format!(
            "storage={} listen={} read_user={} write_user={} anonymous_writes={} metrics={} priority={} max_upload_size={} memory_budget={} trusted_public_keys={} store_dir={} body_timeout={}s header_timeout={}s max_connections={} max_connections_per_address={} max_auth_failures={} shutdown_timeout={}s tls={}",
            match &self.storage {
                StorageConfig::Fs(p) => format!("fs:{}", p.display()),
                #[cfg(feature = "s3")]
                StorageConfig::S3(s) => format!("s3://{}/{}", s.bucket, s.prefix),
            },
            self.listen,
            user(&self.read_user),
            user(&self.write_user),
            self.anonymous_writes(),
            self.metrics,
            self.priority,
            self.max_upload_size,
            self.memory_budget,
            self.trusted_keys.len(),
            self.store_dir.as_str(),
            self.body_timeout.as_secs(),
            self.header_timeout.as_secs(),
            self.max_connections
                .map_or("auto".to_owned(), |n| n.to_string()),
            self.max_connections_per_address
                .map_or("auto".to_owned(), |n| n.to_string()),
            self.max_auth_failures,
            self.shutdown_timeout.as_secs(),
            tls,
        )
    }
}

/// The storage settings: S3 when asked for (or when a bucket is named), checked
/// here as far as that needs no network; the bucket itself is checked at start.
fn storage(args: &Args) -> Result<StorageConfig, ConfigError> {
    let s3 = match args
        .storage
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("fs") => {
            if args.s3_bucket.is_some() {
                return Err(err(
                    "NIX_STORED_S3_BUCKET is set but NIX_STORED_STORAGE is fs; unset one of them",
                ));
            }
            false
        }
        Some("s3") => true,
        None => args.s3_bucket.is_some(),
        Some(other) => {
            return Err(err(format!(
                "NIX_STORED_STORAGE {other:?} is not one of fs, s3"
            )))
        }
    };
    if !s3 {
        return Ok(StorageConfig::Fs(args.path.clone()));
    }
    s3_storage(args)
}

/// Without the `s3` feature, S3 settings are an error rather than silently unused.
#[cfg(not(feature = "s3"))]
fn s3_storage(_: &Args) -> Result<StorageConfig, ConfigError> {
    Err(err(
        "S3 storage is configured (NIX_STORED_S3_BUCKET or NIX_STORED_STORAGE=s3) but this binary was built without the s3 feature",
    ))
}

/// The S3 settings, checked as far as that needs no network.
#[cfg(feature = "s3")]
fn s3_storage(args: &Args) -> Result<StorageConfig, ConfigError> {
    let bucket = args.s3_bucket.clone().unwrap_or_default();
    // S3's rules, loosely: what no store accepts is refused before any request.
    let valid_bucket = (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | '_'))
        && !bucket.starts_with(['-', '.'])
        && !bucket.ends_with(['-', '.']);
    if bucket.is_empty() {
        return Err(err(
            "NIX_STORED_STORAGE is s3 but NIX_STORED_S3_BUCKET is not set",
        ));
    }
    if !valid_bucket {
        return Err(err(format!(
            "NIX_STORED_S3_BUCKET {bucket:?} is not a bucket name (3 to 63 lowercase letters, digits, '-' and '.')"
        )));
    }
    let prefix = args.s3_prefix.trim_matches('/').to_owned();
    if prefix
        .split('/')
        .any(|seg| prefix.contains("//") || seg == "." || seg == "..")
    {
        return Err(err(format!(
            "NIX_STORED_S3_PREFIX {:?} must be a plain path like cache or team/cache",
            args.s3_prefix
        )));
    }
    let endpoint = match args.s3_endpoint.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(e) => {
            let lower = e.to_ascii_lowercase();
            let host = lower
                .strip_prefix("http://")
                .or_else(|| lower.strip_prefix("https://"))
                .unwrap_or("");
            if host.is_empty() || host.starts_with('/') {
                return Err(err(format!(
                    "NIX_STORED_S3_ENDPOINT {e:?} is not a URL like https://s3.example.com or http://127.0.0.1:3900"
                )));
            }
            Some(e.trim_end_matches('/').to_owned())
        }
    };
    let region = match args.s3_region.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(r) => Some(r.to_owned()),
    };
    if let Some(file) = &args.s3_credentials_file {
        std::fs::metadata(file).map_err(|e| {
            err(format!(
                "NIX_STORED_S3_CREDENTIALS_FILE {}: cannot read it: {e}",
                file.display()
            ))
        })?;
    }
    if args.s3_redirect_expiry == 0 || args.s3_redirect_expiry > 604_800 {
        return Err(err(
            "NIX_STORED_S3_REDIRECT_EXPIRY must be between 1 and 604800 seconds (7 days, S3's limit)",
        ));
    }
    Ok(StorageConfig::S3(S3Settings {
        bucket,
        prefix,
        endpoint,
        region,
        path_style: args.s3_path_style,
        credentials_file: args.s3_credentials_file.clone(),
        redirect: args
            .s3_redirect
            .then(|| std::time::Duration::from_secs(args.s3_redirect_expiry)),
        narinfo_ttl: std::time::Duration::from_millis(args.s3_narinfo_ttl),
    }))
}

fn credentials(
    role: &str,
    user: Option<String>,
    pass: Option<String>,
    passfile: Option<&Path>,
) -> Result<Option<Credentials>, ConfigError> {
    let var = format!("NIX_STORED_USER_{role}");
    let password = match (pass, passfile) {
        (Some(_), Some(_)) => {
            return Err(err(format!(
                "{var}_PASS and {var}_PASSFILE are both set; use one"
            )))
        }
        (Some(p), None) => Some(p),
        (None, Some(file)) => {
            let text = std::fs::read_to_string(file).map_err(|e| {
                err(format!(
                    "{var}_PASSFILE {}: cannot read it: {e}",
                    file.display()
                ))
            })?;
            Some(text.strip_suffix('\n').unwrap_or(&text).to_owned())
        }
        (None, None) => None,
    };
    match (user, password) {
        (None, None) => Ok(None),
        (Some(user), Some(password)) => {
            if user.is_empty() || user.contains(':') {
                return Err(err(format!("{var} must be a non-empty name without ':'")));
            }
            if password.is_empty() {
                return Err(err(format!("{var}: the password is empty")));
            }
            Ok(Some(Credentials { user, password }))
        }
        (Some(_), None) => Err(err(format!(
            "{var} is set but has no password: set {var}_PASS or {var}_PASSFILE"
        ))),
        (None, Some(_)) => Err(err(format!(
            "a password is set but {var} (the user name) is not"
        ))),
    }
}

/// `true`/`false` and their usual spellings in environment files.
fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Parses `1234`, `512K`, `64M`, `32G`, `1T` (powers of 1024; a trailing `B`/`iB` is accepted).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let s = s
        .strip_suffix("iB")
        .or_else(|| s.strip_suffix('B'))
        .unwrap_or(s);
    let (digits, shift) = match s.chars().last()? {
        'K' | 'k' => (&s[..s.len() - 1], 10),
        'M' | 'm' => (&s[..s.len() - 1], 20),
        'G' | 'g' => (&s[..s.len() - 1], 30),
        'T' | 't' => (&s[..s.len() - 1], 40),
        _ => (s, 0),
    };
    let n: u64 = digits.trim().parse().ok()?;
    n.checked_mul(1u64 << shift)
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
        let mut parsed = Args::try_parse_from(all).unwrap();
        parsed.user_read_pass = read_pass.map(str::to_owned);
        parsed.user_write_pass = write_pass.map(str::to_owned);
        Config::from_args(parsed)
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("32G"), Some(32 << 30));
        assert_eq!(parse_size("512MiB"), Some(512 << 20));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("99999999999T"), None);
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
        assert_eq!(files.cert, Path::new("/c.pem"));
        assert_eq!(files.key, Path::new("/k.pem"));
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
