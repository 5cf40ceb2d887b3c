//! HTTPS for both binaries' side ports (the control plane's HTTP port and
//! an agent's `/metrics`): an axum [`Listener`](axum::serve::Listener) that
//! accepts TCP connections, does their TLS handshakes concurrently (at most
//! [`MAX_HANDSHAKES`], each within 5 s), and hands on those that succeed
//! with who their verified client certificate names ([`Peer`]).
//!
//! The TLS configuration is a [`ServerTls`], read at every connection: the
//! control plane's is set once, an agent's only once the control plane has
//! signed its serving certificate (connections before that are closed) and
//! again at every renewal.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use strato_core::certificate::Holder;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};

/// TLS handshakes in progress at once; connections past it are closed.
pub const MAX_HANDSHAKES: usize = 256;
/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Who is at the other end of a connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// Whom its client certificate (verified against the CA) names; `None`
    /// without one.
    pub holder: Option<Holder>,
}

impl Peer {
    /// The node a node certificate names.
    pub fn node(&self) -> Option<&str> {
        match &self.holder {
            Some(Holder::Node(node)) => Some(node),
            _ => None,
        }
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, HttpsListener>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, HttpsListener>) -> Peer {
        stream.remote_addr().clone()
    }
}

/// What a certificate (DER) says of its holder, by its subject's
/// organisation and common name.
pub fn holder_of(cert_der: &[u8]) -> Option<Holder> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let subject = cert.subject();
    let organisation = subject
        .iter_organization()
        .next()
        .and_then(|o| o.as_str().ok());
    let common_name = subject
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok());
    Some(Holder::of(organisation, common_name))
}

/// A server's TLS configuration, which may come later and change.
#[derive(Default)]
pub struct ServerTls(RwLock<Option<Arc<rustls::ServerConfig>>>);

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("ready", &self.current().is_some())
            .finish()
    }
}

impl ServerTls {
    /// A configuration known from the start.
    pub fn fixed(config: rustls::ServerConfig) -> ServerTls {
        ServerTls(RwLock::new(Some(Arc::new(config))))
    }

    /// Replaces the configuration; new connections use it.
    pub fn set(&self, config: rustls::ServerConfig) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(config));
    }

    pub fn current(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Why a server configuration cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("{what}: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    #[error("the client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// A server configuration (ring, HTTP/1.1) serving `chain_pem` with
/// `key_pem`, asking for client certificates and verifying those offered
/// against `client_ca_pem` without requiring one: the handler decides what
/// a request without one gets.
pub fn server_config(
    chain_pem: &str,
    key_pem: &str,
    client_ca_pem: &str,
) -> Result<rustls::ServerConfig, TlsConfigError> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let pem = |what: &'static str| {
        move |e: rustls::pki_types::pem::Error| TlsConfigError::Pem {
            what,
            reason: e.to_string(),
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(client_ca_pem.as_bytes()) {
        roots.add(ca.map_err(pem("the client CA certificate"))?)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()?;
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem("the server certificate"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(pem("the server key"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A connection, TLS or not.
pub trait Connection: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Connection for T {}

/// The listener: plaintext without a [`ServerTls`], else TLS only.
pub struct HttpsListener {
    accepted: mpsc::Receiver<(Box<dyn Connection>, Peer)>,
    local: SocketAddr,
}

impl HttpsListener {
    /// Serves `listener`; must be called inside a tokio runtime.
    pub fn new(
        listener: TcpListener,
        tls: Option<Arc<ServerTls>>,
    ) -> std::io::Result<HttpsListener> {
        let local = listener.local_addr()?;
        let (tx, accepted) = mpsc::channel::<(Box<dyn Connection>, Peer)>(64);
        tokio::spawn(async move {
            let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
            loop {
                let (tcp, addr) = tokio::select! {
                    r = listener.accept() => match r {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            tracing::warn!(error = %e, "HTTP accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                    // The server stopped.
                    () = tx.closed() => break,
                };
                let Some(tls) = &tls else {
                    let peer = Peer { addr, holder: None };
                    if tx.send((Box::new(tcp), peer)).await.is_err() {
                        break;
                    }
                    continue;
                };
                let Some(config) = tls.current() else {
                    tracing::debug!(%addr, "no certificate to serve yet: connection closed");
                    continue;
                };
                let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                    tracing::debug!(%addr, "too many TLS handshakes at once: connection closed");
                    continue;
                };
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let holder = stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|certs| certs.first())
                                .and_then(|cert| holder_of(cert));
                            let _ = tx.send((Box::new(stream), Peer { addr, holder })).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%addr, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(HttpsListener { accepted, local })
    }
}

impl axum::serve::Listener for HttpsListener {
    type Io = Box<dyn Connection>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(accepted) => accepted,
            // The acceptor ended: no more connections.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Peer> {
        Ok(Peer {
            addr: self.local,
            holder: None,
        })
    }
}
