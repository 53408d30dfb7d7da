//! HTTPS helpers: self-signed certificates made with the `openssl` command, a server
//! started with them, `curl`, and a small TLS client (rustls, blocking) that reports
//! which certificate the server presented and speaks raw HTTP/1.1 over it.

use std::io::{self, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};

use super::{read_response, Response, ServerBuilder};

/// The private key encodings the server accepts.
#[derive(Clone, Copy, Debug)]
pub enum KeyFormat {
    /// P-256 key, `BEGIN PRIVATE KEY` (openssl's default).
    Pkcs8Ec,
    /// P-256 key, `BEGIN EC PRIVATE KEY`.
    Sec1Ec,
    /// RSA 2048 key, `BEGIN RSA PRIVATE KEY`.
    Pkcs1Rsa,
}

/// A self-signed certificate for `localhost` and 127.0.0.1 and its key, as PEM files.
#[derive(Clone, Debug)]
pub struct TestCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("the openssl command is needed (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestCert {
    /// Generates `<dir>/<name>.crt` and `<dir>/<name>.key` with subject `CN=<name>`
    /// and the subject alternative names clients check: DNS `localhost`, IP 127.0.0.1.
    pub fn generate(dir: &Path, name: &str, format: KeyFormat) -> TestCert {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        let new_key: &[&str] = match format {
            KeyFormat::Pkcs8Ec | KeyFormat::Sec1Ec => {
                &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
            }
            KeyFormat::Pkcs1Rsa => &["-newkey", "rsa:2048"],
        };
        let mut args = vec!["req", "-x509"];
        args.extend_from_slice(new_key);
        let subject = format!("/CN={name}");
        args.extend_from_slice(&[
            "-nodes",
            "-days",
            "2",
            "-subj",
            &subject,
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ]);
        openssl(&args);
        let k = key.to_str().unwrap();
        match format {
            KeyFormat::Pkcs8Ec => {}
            KeyFormat::Sec1Ec => openssl(&["ec", "-in", k, "-out", k]),
            KeyFormat::Pkcs1Rsa => openssl(&["rsa", "-traditional", "-in", k, "-out", k]),
        }
        let pem = std::fs::read_to_string(&key).unwrap();
        let marker = match format {
            KeyFormat::Pkcs8Ec => "-----BEGIN PRIVATE KEY-----",
            KeyFormat::Sec1Ec => "-----BEGIN EC PRIVATE KEY-----",
            KeyFormat::Pkcs1Rsa => "-----BEGIN RSA PRIVATE KEY-----",
        };
        assert!(
            pem.contains(marker),
            "{format:?} key is not {marker}: {pem}"
        );
        TestCert { cert, key }
    }

    /// The certificate, DER-encoded (what a TLS client is presented).
    pub fn der(&self) -> Vec<u8> {
        CertificateDer::from_pem_file(&self.cert)
            .unwrap()
            .as_ref()
            .to_vec()
    }

    /// Writes this certificate and key over `other`'s files (in place, key first).
    pub fn copy_over(&self, other: &TestCert) {
        std::fs::copy(&self.key, &other.key).unwrap();
        std::fs::copy(&self.cert, &other.cert).unwrap();
    }
}

impl ServerBuilder {
    /// Serves HTTPS with `cert`.
    pub fn tls(self, cert: &TestCert) -> Self {
        self.env("NIX_STORED_TLS_CERT", cert.cert.to_str().unwrap())
            .env("NIX_STORED_TLS_KEY", cert.key.to_str().unwrap())
    }
}

/// `curl -sS --max-time 30 ARGS…` (fails the test if curl is missing).
pub fn curl(args: &[&str]) -> Output {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30"])
        .args(args)
        .output()
        .expect("curl is needed (apt-get install curl)");
    eprintln!(
        "$ curl {} -> {}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim_end()
    );
    out
}

/// Accepts whatever certificate the server presents (checking only that the server
/// holds its key): the tests compare the presented certificate themselves.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS connection whose handshake is complete.
pub struct TlsConn {
    reader: BufReader<StreamOwned<ClientConnection, TcpStream>>,
}

/// Connects to `addr` offering the ALPN protocols `alpn` and completes the handshake.
pub fn tls_connect(addr: SocketAddr, alpn: &[&[u8]]) -> io::Result<TlsConn> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = ServerName::try_from("localhost").map_err(io::Error::other)?;
    let mut conn = ClientConnection::new(Arc::new(config), name).map_err(io::Error::other)?;
    let mut sock = TcpStream::connect(addr)?;
    sock.set_read_timeout(Some(Duration::from_secs(60)))?;
    sock.set_write_timeout(Some(Duration::from_secs(60)))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)?;
    }
    Ok(TlsConn {
        reader: BufReader::new(StreamOwned::new(conn, sock)),
    })
}

impl TlsConn {
    /// The end-entity certificate the server presented, DER-encoded.
    pub fn peer_cert(&self) -> Vec<u8> {
        self.reader
            .get_ref()
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref().to_vec())
            .unwrap_or_default()
    }

    /// The protocol the server chose by ALPN.
    pub fn alpn(&self) -> Option<Vec<u8>> {
        self.reader
            .get_ref()
            .conn
            .alpn_protocol()
            .map(<[u8]>::to_vec)
    }

    /// Sends `request` as written and reads one answer (HTTP/1.1).
    pub fn request(&mut self, request: &[u8]) -> io::Result<Response> {
        let stream = self.reader.get_mut();
        stream.write_all(request)?;
        stream.flush()?;
        read_response(&mut self.reader, request.starts_with(b"HEAD "))
    }

    /// Sends raw bytes.
    pub fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        let stream = self.reader.get_mut();
        stream.write_all(bytes)?;
        stream.flush()
    }

    /// Reads (and drops) whatever the server sends until it closes the connection;
    /// `Err` when it is still open after `limit`.
    pub fn wait_for_close(&mut self, limit: Duration) -> io::Result<()> {
        use std::io::Read;
        let deadline = std::time::Instant::now() + limit;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "still open"));
            }
            self.reader.get_ref().sock.set_read_timeout(Some(left))?;
            match self.reader.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(e)
                }
                // A reset, or a close without close_notify: closed all the same.
                Err(_) => return Ok(()),
            }
        }
    }
}
