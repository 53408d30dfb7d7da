//! nix-stored: a Nix binary cache server.
//!
//! Layers, each only calling the one below: [`http`] (routing, auth, errors) →
//! [`cache`] (keys, validation, ingest) → [`storage`] (backends behind one trait).

pub mod budget;
pub mod cache;
pub mod config;
pub mod http;
pub mod logging;
pub mod prometheus;
pub mod server;
pub mod storage;
pub mod systemd;
#[cfg(feature = "tls")]
pub mod tls;

use std::sync::Arc;

use cache::{Cache, CacheSettings};
use config::{Config, StorageConfig};
use http::auth::Auth;
use http::AppState;
use storage::fs::FsStorage;
#[cfg(feature = "s3")]
use storage::s3::S3Storage;
use storage::Storage;

/// A startup failure, reported as one line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(String);

/// Opens the storage, binds the address and serves until a termination signal.
pub async fn run(config: Config) -> Result<(), StartError> {
    // Before anything is created on disk: a bad certificate is a configuration error.
    #[cfg(feature = "tls")]
    let tls = match &config.tls {
        Some(files) => Some(Arc::new(
            tls::Tls::load(files).map_err(|e| StartError(e.to_string()))?,
        )),
        None => None,
    };
    let nofile = server::raise_nofile_limit()
        .map_err(|e| StartError(format!("cannot read the open file limit: {e}")))?;
    let max_connections = server::connection_limit(config.max_connections, nofile);
    if server::limit_exceeds_descriptors(max_connections, nofile) {
        tracing::warn!(
            "NIX_STORED_MAX_CONNECTIONS {max_connections} may need more file descriptors than the limit of {nofile}: raise LimitNOFILE"
        );
    }
    let max_connections_per_address =
        server::per_address_limit(config.max_connections_per_address, max_connections);
    tracing::info!(
        "connection limit {max_connections}, {max_connections_per_address} per client address (open file limit {nofile})"
    );
    let budget = budget::Budget::new(config.memory_budget);
    let cache = open_cache(&config, budget).await?;
    cache.start_index();
    if config.metrics {
        cache.start_usage_count();
    }
    cache.start_retention();
    if cache.retention().enabled() {
        spawn_pins_reloader(cache.retention().clone())?;
    }
    let auth = Auth::new(
        config.read_user.as_ref(),
        config.write_user.as_ref(),
        config.anonymous_writes(),
    );
    let (listener, origin) = match systemd::inherited_listener().map_err(StartError)? {
        Some(l) => (
            tokio::net::TcpListener::from_std(l)
                .map_err(|e| StartError(format!("cannot use the socket passed by systemd: {e}")))?,
            " (socket passed by systemd; NIX_STORED_LISTEN_INTERFACE is not used)",
        ),
        None => (
            tokio::net::TcpListener::bind(config.listen)
                .await
                .map_err(|e| StartError(format!("cannot listen on {}: {e}", config.listen)))?,
            "",
        ),
    };
    let addr = listener
        .local_addr()
        .map_err(|e| StartError(format!("cannot read the bound address: {e}")))?;
    #[cfg(feature = "tls")]
    let scheme = match &tls {
        Some(tls) => {
            tls.spawn_reloader()
                .map_err(|e| StartError(format!("cannot handle SIGHUP: {e}")))?;
            "https"
        }
        None => "http",
    };
    #[cfg(not(feature = "tls"))]
    let scheme = "http";
    // From the socket actually listening: under socket activation the configured
    // address says nothing about who can connect. Before the "listening" line, which
    // tells supervisors (and the tests) that start-up is over.
    warn_about_uploads(&config, addr);
    if let Some(url) = &config.proxy.public_url {
        tracing::info!("public URL (behind a reverse proxy): {url}");
    }
    tracing::info!("listening on {scheme}://{addr}{origin}");
    systemd::notify("READY=1");
    let cache_policy = http::objects::CachePolicy::new(auth.reads_are_private());
    let retention = cache.retention().clone();
    let app = Arc::new(AppState {
        cache: Arc::new(cache),
        auth,
        throttle: http::throttle::AuthThrottle::new(config.max_auth_failures),
        body_timeout: config.body_timeout,
        cache_policy,
        metrics: http::metrics::Metrics::new(config.page),
        metrics_enabled: config.metrics,
        readiness: http::service::Readiness::default(),
        trusted_proxies: config.proxy.trusted.clone(),
        public_url: config.proxy.public_url.clone(),
        tls: scheme == "https",
    });
    let options = server::ServeOptions {
        header_timeout: config.header_timeout,
        write_stall_timeout: config.body_timeout,
        max_connections,
        max_connections_per_address,
        grace: config.shutdown_timeout,
    };
    #[cfg(feature = "tls")]
    let transport = match tls {
        Some(tls) => server::Transport::Tls(tls),
        None => server::Transport::Plain,
    };
    #[cfg(not(feature = "tls"))]
    let transport = server::Transport::Plain;
    let served = server::serve(listener, app, options, transport).await;
    // Uses since the last flush would otherwise make their paths look older after
    // a restart.
    if let Err(e) = retention.flush().await {
        tracing::warn!("cannot write the recency journal: {e}");
    }
    served.map_err(|e| StartError(format!("server failed: {e}")))
}

/// Opens the storage the configuration names and the cache over it.
async fn open_cache(config: &Config, budget: Arc<budget::Budget>) -> Result<Cache, StartError> {
    let storage: Arc<dyn Storage> = match &config.storage {
        StorageConfig::Fs(path) => Arc::new(
            FsStorage::open(path, config.store_dir.as_str())
                .map_err(|e| {
                    StartError(format!(
                        "NIX_STORED_PATH {}: cannot create or write the cache directory: {e}",
                        path.display()
                    ))
                })?
                .with_memory_budget(budget.clone()),
        ),
        #[cfg(feature = "s3")]
        StorageConfig::S3(settings) => Arc::new(
            S3Storage::open(settings.clone(), config.store_dir.as_str())
                .await
                .map_err(StartError)?,
        ),
    };
    tracing::info!("storage: {}", storage.describe());
    let narinfo_linger = match &config.storage {
        #[cfg(feature = "s3")]
        StorageConfig::S3(s) => s.narinfo_ttl + std::time::Duration::from_secs(1),
        _ => std::time::Duration::ZERO,
    };
    // The directory is watched (each change drops its entry); a bucket is not.
    let narinfo_cache_coherence = match &config.storage {
        #[cfg(feature = "s3")]
        StorageConfig::S3(s) => cache::narinfo_cache::Coherence::Ttl(s.narinfo_ttl),
        _ => cache::narinfo_cache::Coherence::Watched,
    };
    let cache = Cache::new(
        storage,
        CacheSettings {
            store_dir: config.store_dir.clone(),
            priority: config.priority,
            max_upload_size: config.max_upload_size,
            trusted_keys: config.trusted_keys.clone(),
            retention: config.retention.clone(),
            narinfo_linger,
            page: config.page,
            narinfo_cache_size: config.narinfo_cache_size,
            narinfo_cache_coherence,
        },
        budget,
    );
    #[cfg(feature = "upstream")]
    let cache = {
        let upstreams =
            cache::upstream::Upstreams::new(config.upstream.clone()).map_err(StartError)?;
        if let Some(up) = &upstreams {
            tracing::info!(
                "upstream caches: {}",
                up.names().collect::<Vec<_>>().join(" ")
            );
        }
        cache.with_upstreams(upstreams)
    };
    Ok(cache)
}

/// Re-reads the pins file on SIGHUP (changes to it are seen at each pass anyway).
fn spawn_pins_reloader(retention: Arc<cache::retention::Retention>) -> Result<(), StartError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())
        .map_err(|e| StartError(format!("cannot handle SIGHUP: {e}")))?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            retention.reload_pins();
        }
    });
    Ok(())
}

/// `nix-stored gc --dry-run`: what a pass would remove now, printed; nothing changes.
/// The storage is opened as the server opens it (which writes nothing but a missing
/// nix-cache-info).
pub async fn gc_dry_run(config: Config) -> Result<String, StartError> {
    if !config.retention.enabled() {
        return Err(StartError(
            "retention is off: set NIX_STORED_MAX_SIZE or NIX_STORED_RETENTION to see what a pass would remove".into(),
        ));
    }
    let budget = budget::Budget::new(config.memory_budget);
    let cache = open_cache(&config, budget).await?;
    cache.retention().reload_pins();
    let report = cache
        .retention()
        .pass(true)
        .await
        .map_err(|e| StartError(format!("cannot survey the storage: {e}")))?;
    Ok(report.render())
}

/// Says at start when uploads are open to anyone who can connect, or closed to all.
fn warn_about_uploads(config: &Config, addr: std::net::SocketAddr) {
    if config.anonymous_writes() {
        if !addr.ip().is_loopback() {
            tracing::warn!(
                "anonymous uploads are on (NIX_STORED_ANONYMOUS_WRITES=true) and the server listens on {addr}, which is not a loopback address: anyone who can connect can upload"
            );
        }
    } else if config.write_user.is_none() {
        tracing::warn!(
            "uploads are refused: no write user is configured; set NIX_STORED_USER_WRITE and NIX_STORED_USER_WRITE_PASSFILE (or NIX_STORED_ANONYMOUS_WRITES=true on a single-user machine) to accept uploads"
        );
    }
    if config.anonymous_writes_setting && config.write_user.is_some() {
        tracing::info!(
            "NIX_STORED_ANONYMOUS_WRITES is ignored: a write user is configured, and uploads need its credentials"
        );
    }
}
