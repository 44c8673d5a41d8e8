//! TLS on both ports, with rustls: the certificate and key (and, for mutual TLS, the CA that
//! signs client certificates) are read from PEM files into one server configuration per port
//! (ALPN `h2` for gRPC; `h2` and `http/1.1` for REST), replaced whole when the files are re-read.
//! A connection keeps the configuration it was accepted with, so a rotation drops none.
//!
//! Handshakes run on tasks of their own, at most [`MAX_HANDSHAKES`] at once and each within
//! [`HANDSHAKE_TIMEOUT`], so a client that opens a connection and sends nothing holds no one
//! else up; the finished streams are handed to tonic and axum as their incoming connections.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// TLS handshakes in progress at once, per port.
pub const MAX_HANDSHAKES: usize = 1024;
/// The longest a handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether clients must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// A certificate signed by the client CA, or no connection.
    Required,
    /// A certificate, if any, must be signed by the client CA; none is accepted too.
    Optional,
}

impl std::str::FromStr for ClientAuth {
    type Err = String;

    fn from_str(s: &str) -> Result<ClientAuth, String> {
        match s {
            "required" => Ok(ClientAuth::Required),
            "optional" => Ok(ClientAuth::Optional),
            other => Err(format!("'{other}': expected required or optional")),
        }
    }
}

/// Where the TLS material is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, PEM, leaf first.
    pub cert: PathBuf,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CA certificates client certificates must chain to (mutual TLS), PEM.
    pub client_ca: Option<PathBuf>,
    /// Whether a client certificate is required (with `client_ca`).
    pub client_auth: ClientAuth,
}

/// Why the TLS material cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read or holds no PEM of the kind expected.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The key is not the certificate's.
    #[error(
        "{key} is not the private key of the certificate in {cert} ({reason}); give the key the certificate was issued for"
    )]
    Mismatch {
        /// The certificate file.
        cert: String,
        /// The key file.
        key: String,
        /// rustls's words.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn file_error(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// The ALPN protocols each port offers.
const GRPC_ALPN: &[&[u8]] = &[b"h2"];
const REST_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// The gRPC port's configuration and the REST port's, from one reading of `files`: they differ
/// only in the ALPN protocols offered.
fn build_both(files: &TlsFiles) -> Result<(ServerConfig, ServerConfig), TlsError> {
    let mut grpc = build(files)?;
    let mut rest = grpc.clone();
    grpc.alpn_protocols = GRPC_ALPN.iter().map(|p| p.to_vec()).collect();
    rest.alpn_protocols = REST_ALPN.iter().map(|p| p.to_vec()).collect();
    Ok((grpc, rest))
}

/// One port's server configuration, read from `files` (with ring, named here rather than
/// left to a process-wide default).
fn build(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| file_error(&files.key, e))?;
    // A key that is not the certificate's would fail every handshake: refuse it now.
    CertifiedKey::from_der(certs.clone(), key.clone_key(), &provider).map_err(|e| {
        TlsError::Mismatch {
            cert: files.cert.display().to_string(),
            key: files.key.display().to_string(),
            reason: e.to_string(),
        }
    })?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca)? {
                roots.add(cert).map_err(|e| file_error(ca, e))?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
            let verifier = match files.client_auth {
                ClientAuth::Required => verifier,
                ClientAuth::Optional => verifier.allow_unauthenticated(),
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| TlsError::Config(e.to_string()))?,
            )
        }
    };
    builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))
}

/// The TLS configuration in force for both ports.
#[derive(Debug)]
pub struct Tls {
    files: TlsFiles,
    grpc: ArcSwap<ServerConfig>,
    rest: ArcSwap<ServerConfig>,
    /// The files' (modification time, length) when last read, to notice changes.
    seen: std::sync::Mutex<Vec<Option<(SystemTime, u64)>>>,
}

impl Tls {
    /// Reads `files`; fails on anything that would fail every handshake.
    pub fn load(files: TlsFiles) -> Result<Tls, TlsError> {
        let (grpc, rest) = build_both(&files)?;
        let tls = Tls {
            grpc: ArcSwap::from_pointee(grpc),
            rest: ArcSwap::from_pointee(rest),
            seen: std::sync::Mutex::new(Vec::new()),
            files,
        };
        tls.changed();
        Ok(tls)
    }

    /// Whether the files changed since they were last read (and notes how they are now).
    fn changed(&self) -> bool {
        let paths = [
            Some(&self.files.cert),
            Some(&self.files.key),
            self.files.client_ca.as_ref(),
        ];
        let now: Vec<_> = paths
            .into_iter()
            .flatten()
            .map(|p| {
                let meta = std::fs::metadata(p).ok()?;
                Some((meta.modified().ok()?, meta.len()))
            })
            .collect();
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let changed = *seen != now;
        *seen = now;
        changed
    }

    /// Reads the files again; on failure, what served goes on serving.
    pub fn reload(&self) -> Result<(), TlsError> {
        let (grpc, rest) = build_both(&self.files)?;
        self.grpc.store(Arc::new(grpc));
        self.rest.store(Arc::new(rest));
        Ok(())
    }

    /// Re-reads the files on every SIGHUP, and whenever they change (looked at every
    /// `interval`); logs what happened.
    pub async fn watch(self: Arc<Tls>, interval: Duration) {
        let mut hangups = crate::serving::lifecycle::listen_for_hangups();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let hangup = async {
                match hangups.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            let asked = tokio::select! {
                _ = hangup => true,
                _ = tick.tick() => false,
            };
            // A change seen mid-write may read badly; the next look reads it again.
            if !self.changed() && !asked {
                continue;
            }
            match self.reload() {
                Ok(()) => {
                    tracing::info!(cert = %self.files.cert.display(), "TLS certificate re-read")
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot re-read the TLS files; the ones in force stay");
                    // Look again next time even if nothing changes meanwhile.
                    self.seen
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .clear();
                }
            }
        }
    }

    /// Accepts TLS connections on `listener` for gRPC (`rest` false) or REST: the finished
    /// handshakes, as they complete.
    pub fn incoming(
        self: &Arc<Tls>,
        listener: TcpListener,
        rest: bool,
        nodelay: bool,
    ) -> mpsc::Receiver<TlsConnection> {
        let (done, incoming) = mpsc::channel(64);
        let tls = Arc::clone(self);
        tokio::spawn(async move {
            let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors, most likely: wait rather than spin.
                        tracing::warn!(error = %e, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if done.is_closed() {
                    return;
                }
                let _ = tcp.set_nodelay(nodelay);
                let Ok(permit) = Arc::clone(&handshakes).try_acquire_owned() else {
                    tracing::debug!(%peer, "too many TLS handshakes in progress; connection closed");
                    continue;
                };
                let config = if rest {
                    tls.rest.load_full()
                } else {
                    tls.grpc.load_full()
                };
                let done = done.clone();
                tokio::spawn(async move {
                    let handshake = TlsAcceptor::from(config).accept(tcp).into_fallible();
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                        Ok(Ok(stream)) => {
                            drop(permit);
                            let _ = done.send(TlsConnection { stream, peer }).await;
                        }
                        Ok(Err((e, tcp))) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            close_after_alert(tcp).await;
                        }
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        incoming
    }
}

/// Closes a connection whose handshake failed so that the client reads the alert sent (a
/// certificate required, or from an unknown CA): in TLS 1.3 a client sends its first request
/// before the server has checked its certificate, and closing with that request unread would
/// reset the connection, and the alert with it. What the client sends is read and dropped for
/// a moment, at most 64 KiB, before the socket closes.
async fn close_after_alert(mut tcp: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tcp.shutdown().await;
    let mut buf = [0u8; 4096];
    let drain = async {
        let mut read = 0;
        while read < 64 * 1024 {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => read += n,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

/// A connection past its handshake.
#[derive(Debug)]
pub struct TlsConnection {
    stream: TlsStream<TcpStream>,
    peer: SocketAddr,
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for TlsConnection {
    type ConnectInfo = Option<SocketAddr>;

    fn connect_info(&self) -> Self::ConnectInfo {
        Some(self.peer)
    }
}

/// Finished TLS connections as axum's listener.
#[derive(Debug)]
pub struct TlsListener {
    /// The handshakes done.
    pub incoming: mpsc::Receiver<TlsConnection>,
    /// The address listened on.
    pub local: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsConnection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TlsConnection, SocketAddr) {
        match self.incoming.recv().await {
            Some(connection) => {
                let peer = connection.peer;
                (connection, peer)
            }
            // The accept loop ended; so does serving, by its drain.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}
