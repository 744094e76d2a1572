//! TLS (rustls with the ring provider), shared by the P/D proxy (its HTTPS listener and
//! upstream legs), the EPP (its ext_proc port) and the ext_proc client (the gateway's EPP leg).
//!
//! The P/D proxy:
//! - **Listener**: `--secure-proxy` (llm-d's, on by default) serves HTTPS: with
//!   `--cert-path DIR`, DIR's certificate; without, a self-signed one made at startup (as
//!   llm-d does; clients must skip verification). `--secure-proxy=false` serves plain HTTP.
//!   `--cert-path DIR` serves HTTPS (HTTP/1.1 and h2 by ALPN) with `DIR/tls.crt`
//!   (PEM chain) and `DIR/tls.key` (PEM PKCS#8, PKCS#1 or SEC1), the layout of a Kubernetes
//!   `kubernetes.io/tls` secret. The files are re-read when their modification time changes
//!   (cert-manager rotates them in place); a bad new pair is logged and the old one kept.
//! - **Upstream**: `--enable-tls prefiller,decoder` dials that leg over HTTPS, verifying the
//!   engine's certificate against `--tls-ca-file` (only that CA) or the system roots;
//!   `--tls-insecure-skip-verify prefiller,decoder` skips verification (development only).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::RwLock;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio_util::sync::CancellationToken;

/// File names inside `--cert-path`, as in a `kubernetes.io/tls` secret.
pub const CERT_FILE: &str = "tls.crt";
/// The private key's file name.
pub const KEY_FILE: &str = "tls.key";

/// TLS setup errors.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file cannot be read or holds no usable PEM.
    #[error("{path}: {why}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// rustls refused the material.
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The crypto provider used everywhere (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn file_error(path: &Path, why: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        why: why.to_string(),
    }
}

/// Reads every certificate of a PEM file (at least one).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|e| file_error(path, e))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(path, "no CERTIFICATE block"));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = std::fs::read(path).map_err(|e| file_error(path, e))?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| file_error(path, format!("no private key: {e}")))
}

/// The configuration of a plain-HTTP leg: hyper's connector is the same type for both schemes,
/// and with no trusted root nothing could verify should an `https://` URL ever reach it.
pub fn plain_client_config() -> Result<rustls::ClientConfig, TlsError> {
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth())
}

/// The client configuration of one upstream leg.
pub fn client_config(
    ca_file: Option<&Path>,
    insecure_skip_verify: bool,
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    if insecure_skip_verify {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth());
    }
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in read_certs(path)? {
                roots.add(cert)?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for error in native.errors {
                tracing::debug!(%error, "system root certificates");
            }
            let (added, ignored) = roots.add_parsable_certificates(native.certs);
            tracing::debug!(added, ignored, "system root certificates loaded");
        }
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// Accepts any server certificate (`--tls-insecure-skip-verify`); signatures are still checked
/// so the handshake itself is sound.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
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

/// The listener's certificate, re-read from its directory when the files change (or, for
/// llm-d's `--secure-proxy` without `--cert-path`, a self-signed one made at startup).
#[derive(Debug)]
pub struct CertDir {
    /// `None`: self-signed, nothing to re-read.
    dir: Option<PathBuf>,
    provider: Arc<CryptoProvider>,
    current: RwLock<(Option<SystemTime>, Arc<CertifiedKey>)>,
}

impl CertDir {
    /// Loads `dir/tls.crt` and `dir/tls.key`.
    pub fn load(dir: &Path) -> Result<Arc<Self>, TlsError> {
        let provider = provider();
        let key = Self::read(dir, &provider)?;
        Ok(Arc::new(Self {
            dir: Some(dir.to_owned()),
            provider,
            current: RwLock::new((Self::stamp(dir), key)),
        }))
    }

    /// A self-signed certificate for `localhost` and this host's name (llm-d's `--secure-proxy`
    /// without `--cert-path`; for testing, as llm-d says: clients must skip verification).
    pub fn self_signed() -> Result<Arc<Self>, TlsError> {
        let mut names = vec!["localhost".to_owned()];
        if let Ok(h) = std::env::var("HOSTNAME")
            && !h.is_empty()
        {
            names.push(h);
        }
        let generated = rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::File {
            path: "(self-signed)".into(),
            why: e.to_string(),
        })?;
        let provider = provider();
        let key = provider
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(
                generated.signing_key.serialize_der().into(),
            ))
            .map_err(|e| TlsError::File {
                path: "(self-signed)".into(),
                why: e.to_string(),
            })?;
        let certified = CertifiedKey::new(vec![generated.cert.der().clone()], key);
        Ok(Arc::new(Self {
            dir: None,
            provider,
            current: RwLock::new((None, Arc::new(certified))),
        }))
    }

    fn read(dir: &Path, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, TlsError> {
        let certs = read_certs(&dir.join(CERT_FILE))?;
        let key_path = dir.join(KEY_FILE);
        let key = provider
            .key_provider
            .load_private_key(read_key(&key_path)?)
            .map_err(|e| file_error(&key_path, e))?;
        let certified = CertifiedKey::new(certs, key);
        certified.keys_match().map_err(|e| {
            file_error(
                &dir.join(CERT_FILE),
                format!("does not match {KEY_FILE}: {e}"),
            )
        })?;
        Ok(Arc::new(certified))
    }

    /// The later modification time of the two files.
    fn stamp(dir: &Path) -> Option<SystemTime> {
        let m = |f: &str| {
            std::fs::metadata(dir.join(f))
                .and_then(|m| m.modified())
                .ok()
        };
        m(CERT_FILE).max(m(KEY_FILE))
    }

    /// Re-reads the pair if a file changed; true when a new certificate is in use.
    pub fn reload_if_changed(&self) -> bool {
        let Some(dir) = &self.dir else {
            return false;
        };
        let stamp = Self::stamp(dir);
        if stamp == self.current.read().0 {
            return false;
        }
        match Self::read(dir, &self.provider) {
            Ok(key) => {
                *self.current.write() = (stamp, key);
                tracing::info!(dir = %dir.display(), "TLS certificate reloaded");
                true
            }
            Err(error) => {
                // Remember the stamp so a broken pair is reported once, not every poll.
                self.current.write().0 = stamp;
                tracing::warn!(%error, "new TLS certificate unusable; keeping the old one");
                false
            }
        }
    }

    /// Polls the files every `every` until cancelled.
    pub fn watch(self: &Arc<Self>, every: Duration, stop: CancellationToken) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => { me.reload_if_changed(); }
                }
            }
        });
    }

    /// A server configuration serving this certificate, TLS 1.2 and 1.3, ALPN h2 and http/1.1.
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, TlsError> {
        self.server_config_alpn(&[b"h2", b"http/1.1"])
    }

    /// A server configuration for gRPC: ALPN h2 only.
    pub fn grpc_server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, TlsError> {
        self.server_config_alpn(&[b"h2"])
    }

    fn server_config_alpn(
        self: &Arc<Self>,
        alpn: &[&[u8]],
    ) -> Result<rustls::ServerConfig, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }

    /// The certificate chain served now (its leaf first).
    pub fn current_chain(&self) -> Vec<CertificateDer<'static>> {
        self.current.read().1.cert.clone()
    }
}

impl ResolvesServerCert for CertDir {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().1.clone())
    }
}

/// A TLS handshake on a server port that takes longer than this is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// One accepted, handshaken TLS connection, as tonic's server takes it (tonic's own TLS
/// support cannot swap certificates, so the EPP serves tonic over this instead).
#[derive(Debug)]
pub struct TlsConn(tokio_rustls::server::TlsStream<tokio::net::TcpStream>);

impl tokio::io::AsyncRead for TlsConn {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsConn {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().0.connect_info()
    }
}

/// The connections of a TLS listener for tonic's `serve_with_incoming*`: TCP accepted with
/// `TCP_NODELAY`, each handshake run on its own task (a slow client delays nobody) within
/// [`HANDSHAKE_TIMEOUT`]; failed handshakes are logged at debug and skipped. Accepting stops
/// when `stop` is cancelled or the stream is dropped.
pub fn incoming(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    stop: CancellationToken,
) -> impl futures::Stream<Item = Result<TlsConn, std::io::Error>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<TlsConn>(64);
    tokio::spawn(async move {
        loop {
            let tcp = tokio::select! {
                _ = stop.cancelled() => break,
                _ = tx.closed() => break,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _)) => tcp,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(TlsConn(tls)).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%error, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            });
        }
    });
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|conn| (Ok(conn), rx))
    })
}

/// A connector for tonic's `Endpoint::connect_with_connector*`: `http://` URIs in plaintext,
/// `https://` over TLS with `config` (ALPN h2), `TCP_NODELAY` on.
pub fn grpc_connector(
    config: rustls::ClientConfig,
) -> hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector> {
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http2()
        .wrap_connector(http)
}
