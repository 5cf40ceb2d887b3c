//! Calling the control plane as a client: an `https://` endpoint that
//! trusts the control plane's CA (never plaintext), and the bearer token
//! every user call carries. The CLI, the agent and the tests build their
//! channels here.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// Why an endpoint cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error(
        "{0:?}: an http:// endpoint would send tokens in clear; use https:// (the control plane speaks only TLS)"
    )]
    Plaintext(String),
    #[error("{0:?}: not an https:// URL; e.g. https://127.0.0.1:7070")]
    NotUrl(String),
    #[error("TLS settings: {0}")]
    Tls(String),
    #[error("{0:?}: plaintext is only for a loopback address (127.0.0.1, ::1, localhost)")]
    PlaintextNotLoopback(String),
}

/// A TLS endpoint for `url`, trusting `ca_pem` (else the system's roots).
pub fn endpoint(url: &str, ca_pem: Option<&str>) -> Result<Endpoint, EndpointError> {
    tls_endpoint(url, ca_pem, None)
}

/// A TLS endpoint for `url` that trusts `ca_pem` (else the system's
/// roots) and presents a client certificate (a node's: `cert_pem` with its
/// key `key_pem`).
pub fn endpoint_with_identity(
    url: &str,
    ca_pem: Option<&str>,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Endpoint, EndpointError> {
    tls_endpoint(
        url,
        ca_pem,
        Some(tonic::transport::Identity::from_pem(cert_pem, key_pem)),
    )
}

fn tls_endpoint(
    url: &str,
    ca_pem: Option<&str>,
    identity: Option<tonic::transport::Identity>,
) -> Result<Endpoint, EndpointError> {
    if url.starts_with("http://") {
        return Err(EndpointError::Plaintext(url.to_owned()));
    }
    if !url.starts_with("https://") {
        return Err(EndpointError::NotUrl(url.to_owned()));
    }
    let mut tls = ClientTlsConfig::new();
    tls = match ca_pem {
        Some(pem) => tls.ca_certificate(Certificate::from_pem(pem)),
        None => tls.with_native_roots(),
    };
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    Ok(keep_alive(
        Endpoint::from_shared(url.to_owned())
            .map_err(|_| EndpointError::NotUrl(url.to_owned()))?
            .tls_config(tls)
            .map_err(|e| EndpointError::Tls(e.to_string()))?,
    ))
}

/// HTTP/2 pings every 5 s, also while idle, answered within 10 s: a peer
/// frozen or partitioned away (the TCP connection open, nothing answering)
/// is noticed within about 15 s, and the caller (an agent's session, a
/// waiting CLI) moves on, to another replica where there are several. Not
/// sooner: a control plane busy with 10,000 agents answers late, and a
/// session dropped for that would come back as a reconnect storm.
fn keep_alive(endpoint: Endpoint) -> Endpoint {
    endpoint
        .http2_keep_alive_interval(std::time::Duration::from_secs(5))
        .keep_alive_timeout(std::time::Duration::from_secs(10))
        .keep_alive_while_idle(true)
}

/// A plaintext endpoint, for a control plane started with
/// `--insecure-plaintext`: only an `http://` URL of a loopback host.
pub fn insecure_endpoint(url: &str) -> Result<Endpoint, EndpointError> {
    let endpoint =
        Endpoint::from_shared(url.to_owned()).map_err(|_| EndpointError::NotUrl(url.to_owned()))?;
    let loopback = match endpoint.uri().host() {
        Some("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    };
    if !url.starts_with("http://") || !loopback {
        return Err(EndpointError::PlaintextNotLoopback(url.to_owned()));
    }
    Ok(keep_alive(endpoint))
}

/// Adds `authorization: Bearer TOKEN` to every call.
#[derive(Debug, Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

/// A token that cannot be sent as a header.
#[derive(Debug, thiserror::Error)]
#[error("the token holds characters a header cannot carry (printable ASCII only)")]
pub struct BadToken;

impl Bearer {
    /// `None`: calls go without a token (and are refused, except health).
    pub fn new(token: Option<&str>) -> Result<Bearer, BadToken> {
        match token {
            None => Ok(Bearer(None)),
            Some(t) => format!("Bearer {}", t.trim())
                .parse()
                .map(|v| Bearer(Some(v)))
                .map_err(|_| BadToken),
        }
    }
}

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

/// A channel whose every call carries the bearer token.
pub type AuthedChannel = InterceptedService<Failover, Bearer>;

/// `channel` with `bearer` on every call.
pub fn authed(channel: Channel, bearer: Bearer) -> AuthedChannel {
    authed_failover(vec![channel], 0, bearer)
}

/// Channels to replicas, the one at `first` in use (`Failover`), with
/// `bearer` on every call.
pub fn authed_failover(channels: Vec<Channel>, first: usize, bearer: Bearer) -> AuthedChannel {
    InterceptedService::new(Failover::new(channels, first), bearer)
}

/// Channels to several control-plane replicas, one in use at a time: a call
/// that fails below gRPC before its answer began (the replica is gone:
/// refused, reset, timed out) moves the next calls to the next replica,
/// round the list. A caller that retries such failures (the CLI's `Retry`)
/// so goes on through another replica; a call is never sent again here
/// (it may have been acted on). A stream that breaks after its answer
/// began moves nothing: the caller's retry fails on the gone replica
/// first, and that moves it.
#[derive(Clone)]
pub struct Failover {
    channels: std::sync::Arc<[Channel]>,
    current: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Failover {
    /// `channels` (at least one), starting with the one at `first`.
    pub fn new(channels: Vec<Channel>, first: usize) -> Failover {
        assert!(!channels.is_empty(), "a failover needs a channel");
        Failover {
            current: std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(
                first % channels.len(),
            )),
            channels: channels.into(),
        }
    }
}

impl std::fmt::Debug for Failover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Failover")
            .field("channels", &self.channels.len())
            .field(
                "current",
                &self.current.load(std::sync::atomic::Ordering::Relaxed),
            )
            .finish()
    }
}

impl tonic::codegen::Service<tonic::codegen::http::Request<tonic::body::Body>> for Failover {
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = tonic::transport::Error;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        // Each call waits for its own channel to be ready.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: tonic::codegen::http::Request<tonic::body::Body>) -> Self::Future {
        use std::sync::atomic::Ordering;
        let at = self.current.load(Ordering::Relaxed);
        let mut channel = self.channels[at].clone();
        let (count, current) = (self.channels.len(), self.current.clone());
        Box::pin(async move {
            let answer = async {
                std::future::poll_fn(|cx| tonic::codegen::Service::poll_ready(&mut channel, cx))
                    .await?;
                tonic::codegen::Service::call(&mut channel, request).await
            }
            .await;
            if answer.is_err() {
                // Moved on once however many calls saw this replica fail.
                let _ = current.compare_exchange(
                    at,
                    (at + 1) % count,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            answer
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_is_refused_not_downgraded() {
        let e = endpoint("http://127.0.0.1:7070", None).expect_err("plaintext");
        assert!(matches!(e, EndpointError::Plaintext(_)));
        assert!(e.to_string().contains("https://"), "{e}");
        assert!(matches!(
            endpoint("127.0.0.1:7070", None),
            Err(EndpointError::NotUrl(_))
        ));
        // Plaintext only when asked for, and only on loopback.
        assert!(insecure_endpoint("http://127.0.0.1:7070").is_ok());
        assert!(insecure_endpoint("http://[::1]:7070").is_ok());
        assert!(matches!(
            insecure_endpoint("http://10.0.0.5:7070"),
            Err(EndpointError::PlaintextNotLoopback(_))
        ));
    }

    #[test]
    fn a_token_becomes_the_authorization_header() {
        let mut bearer = Bearer::new(Some("strato_abc\n")).expect("ascii");
        let request = bearer.call(tonic::Request::new(())).expect("passes");
        assert_eq!(
            request
                .metadata()
                .get("authorization")
                .map(|v| v.to_str().ok()),
            Some(Some("Bearer strato_abc"))
        );
        assert!(Bearer::new(Some("t\u{7}x")).is_err());
    }
}
