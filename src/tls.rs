//! HTTPS: the certificate and key files, their reload on SIGHUP or when they change,
//! and the TLS acceptor (ALPN `h2` and `http/1.1`).
//!
//! The certificate lives in a resolver that every handshake asks, so a reload swaps
//! one `Arc` and the `ServerConfig` (with its session cache) stays: connections
//! already open keep the certificate they were made with, new handshakes get the new one.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsFiles;

/// How often the certificate and key files are looked at for changes. A `stat` of two
/// files every few seconds costs nothing and, unlike inotify on their directory, also
/// follows symlink swaps (certbot's `live/`, Kubernetes secrets) wherever they point.
const POLL_INTERVAL: Duration = Duration::from_secs(2);
/// A change is acted on once the files have stopped changing for this long, so that a
/// certificate and a key written one after the other are read as a pair.
const SETTLE: Duration = Duration::from_millis(500);
/// At most this many settle periods are waited for files that keep changing.
const MAX_SETTLES: u32 = 10;

/// Why the certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file could not be read.
    #[error("NIX_STORED_TLS_CERT {path}: cannot read it: {source}")]
    ReadCert {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The key file could not be read.
    #[error("NIX_STORED_TLS_KEY {path}: cannot read it: {source}")]
    ReadKey {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The certificate file holds no usable certificate chain.
    #[error("NIX_STORED_TLS_CERT {path}: not a PEM certificate chain ({reason})")]
    BadCert {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The key file holds no usable private key.
    #[error(
        "NIX_STORED_TLS_KEY {path}: not an unencrypted PEM private key (PKCS#8, PKCS#1 or SEC1) ({reason})"
    )]
    BadKey {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The key is not the one the certificate was issued for.
    #[error("NIX_STORED_TLS_KEY {key} is not the private key of the certificate in NIX_STORED_TLS_CERT {cert}")]
    Mismatch {
        /// The certificate file.
        cert: String,
        /// The key file.
        key: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(rustls::Error),
}

/// The TLS side of the server: what to present, and how to accept connections.
pub struct Tls {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: Arc<CurrentCert>,
    acceptor: TlsAcceptor,
}

impl Tls {
    /// Reads and checks the certificate and key, and builds the acceptor.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = read_certified_key(files, &provider)?;
        tracing::info!(
            "TLS certificate {}: sha256 fingerprint {}",
            files.cert.display(),
            fingerprint(&key)
        );
        let current = Arc::new(CurrentCert(RwLock::new(Arc::new(key))));
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&current) as Arc<dyn ResolvesServerCert>);
        // h2 first: Nix (libcurl) then multiplexes its narinfo lookups on one connection.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Tls {
            files: files.clone(),
            provider,
            current,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// The acceptor for new connections.
    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Reads the files again and, if they hold a valid pair, presents it from the next
    /// handshake on. On error the previous certificate stays. Returns the new
    /// certificate's SHA-256 fingerprint.
    pub fn reload(&self) -> Result<String, TlsError> {
        let key = read_certified_key(&self.files, &self.provider)?;
        let fp = fingerprint(&key);
        *self
            .current
            .0
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(key);
        Ok(fp)
    }

    /// Reloads on SIGHUP and when the files change, for as long as the runtime runs.
    ///
    /// The SIGHUP handler is installed before this returns, so a SIGHUP sent once the
    /// server says it listens never hits the default action (terminating the process).
    pub fn spawn_reloader(self: &Arc<Self>) -> std::io::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup())?;
        let tls = Arc::clone(self);
        tokio::spawn(async move {
            let mut seen = tls.files.stamp();
            let mut tick = tokio::time::interval(POLL_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    got = hup.recv() => {
                        if got.is_none() {
                            break;
                        }
                        seen = tls.files.stamp();
                        tls.reload_logged("SIGHUP");
                    }
                    _ = tick.tick() => {
                        if tls.files.stamp() != seen {
                            seen = tls.settled().await;
                            tls.reload_logged("files changed");
                        }
                    }
                }
            }
        });
        Ok(())
    }

    /// Waits until the files have not changed for [`SETTLE`]; returns their stamp.
    async fn settled(&self) -> Stamp {
        let mut stamp = self.files.stamp();
        for _ in 0..MAX_SETTLES {
            tokio::time::sleep(SETTLE).await;
            let again = self.files.stamp();
            if again == stamp {
                break;
            }
            stamp = again;
        }
        stamp
    }

    fn reload_logged(&self, why: &str) {
        // Two small files, read at most every few seconds: not worth a blocking thread.
        match self.reload() {
            Ok(fp) => tracing::info!(
                "TLS certificate reloaded ({why}): {}: sha256 fingerprint {fp}",
                self.files.cert.display()
            ),
            Err(e) => tracing::warn!(
                "TLS certificate not reloaded ({why}), still serving the previous one: {e}"
            ),
        }
    }
}

/// What identifies one version of the two files; `None` for a file that cannot be
/// looked at (it is being replaced, say).
type Stamp = [Option<(u64, u64, i64, i64, u64)>; 2];

impl TlsFiles {
    fn stamp(&self) -> Stamp {
        // `metadata` follows symlinks: a swapped link target is a change.
        let one = |p: &Path| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.size()))
        };
        [one(&self.cert), one(&self.key)]
    }
}

/// Answers every handshake with the current certificate.
#[derive(Debug)]
struct CurrentCert(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.0.read().unwrap_or_else(PoisonError::into_inner),
        ))
    }
}

fn read_certified_key(
    files: &TlsFiles,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let cert_path = files.cert.display().to_string();
    let key_path = files.key.display().to_string();
    let cert_pem = std::fs::read(&files.cert).map_err(|source| TlsError::ReadCert {
        path: cert_path.clone(),
        source,
    })?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCert {
            path: cert_path.clone(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::BadCert {
            path: cert_path,
            reason: "no CERTIFICATE block".into(),
        });
    }
    let key_pem = std::fs::read(&files.key).map_err(|source| TlsError::ReadKey {
        path: key_path.clone(),
        source,
    })?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::BadKey {
        path: key_path.clone(),
        reason: e.to_string(),
    })?;
    let signing_key =
        provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::BadKey {
                path: key_path.clone(),
                reason: e.to_string(),
            })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // ring knows the public key of every key type it loads; `Unknown` cannot
        // happen with it, and would mean "cannot tell", not "wrong".
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(rustls::Error::InconsistentKeys(_)) => Err(TlsError::Mismatch {
            cert: cert_path,
            key: key_path,
        }),
        Err(e) => Err(TlsError::BadCert {
            path: cert_path,
            reason: e.to_string(),
        }),
    }
}

/// SHA-256 of the end-entity certificate, as `openssl x509 -fingerprint -sha256` prints it.
fn fingerprint(key: &CertifiedKey) -> String {
    let Some(cert) = key.cert.first() else {
        return String::new();
    };
    let digest = Sha256::digest(cert.as_ref());
    let mut out = String::with_capacity(digest.len() * 3);
    for (i, b) in digest.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        out.push_str(&format!("{b:02X}"));
    }
    out
}
