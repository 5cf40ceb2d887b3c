//! Evictions of low-priority nodes: the Scheduled Events endpoint watched
//! for a Preempt event for this node, which is reported to the control
//! plane, written to every running job's notice file, signalled to it with
//! SIGTERM, and acknowledged.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use strato_proto::v1::{self, agent_message::Body as Up};
use strato_runtime::{Clock, ContainerRuntime, LABEL_NODE};
use tokio::sync::mpsc;

use super::staging::attempt_dir;
use super::up;

/// Polls the Scheduled Events endpoint about once a second. On a Preempt
/// event for this node: tells the control plane, writes the notice file of
/// every running job (with the deadline) and sends it SIGTERM, then
/// acknowledges the event.
pub(super) async fn watch_evictions<R: ContainerRuntime>(
    runtime: Arc<R>,
    node_id: String,
    url: String,
    tls: Option<SideTls>,
    work_dir: PathBuf,
    clock: Arc<dyn Clock>,
    tx: mpsc::Sender<v1::AgentMessage>,
) {
    if url.is_empty() {
        // No Scheduled Events endpoint (a simulated fleet): nothing polled.
        return;
    }
    let mut handled: HashSet<String> = HashSet::new();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let doc = match http_json(&url, tls.as_ref(), "GET", None).await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(error = %e, "scheduled events not reachable");
                continue;
            }
        };
        for event in doc["Events"].as_array().cloned().unwrap_or_default() {
            let Some(id) = event["EventId"].as_str().map(str::to_owned) else {
                continue;
            };
            let ours = event["Resources"].as_array().is_none_or(|r| {
                r.is_empty() || r.iter().any(|x| x.as_str() == Some(node_id.as_str()))
            });
            if event["EventType"] != "Preempt" || !ours || handled.contains(&id) {
                continue;
            }
            handled.insert(id.clone());
            let not_before_text = event["NotBefore"].as_str().unwrap_or_default().to_owned();
            let not_before = strato_core::time::parse_rfc1123(&not_before_text)
                .unwrap_or_else(|| clock.now_ms().div_euclid(1000) + 30);
            tracing::warn!(event = %id, not_before = %not_before_text, "eviction notice");
            let _ = tx
                .send(up(Up::Preemption(v1::Preemption {
                    event_id: id.clone(),
                    not_before,
                })))
                .await;
            if let Ok(containers) = runtime.list(LABEL_NODE, &node_id).await {
                for c in containers.iter().filter(|c| c.running) {
                    let Some((job, attempt)) = c.attempt() else {
                        continue;
                    };
                    let dir = attempt_dir(&work_dir, job, attempt).join("notice");
                    let text = format!(
                        "Preempt {id}: this node is evicted at {not_before_text} ({not_before}); checkpoint now\n"
                    );
                    let written = std::fs::create_dir_all(&dir).and_then(|()| {
                        std::fs::write(dir.join("preempt.tmp"), &text)?;
                        std::fs::rename(dir.join("preempt.tmp"), dir.join("preempt"))
                    });
                    if let Err(e) = written {
                        tracing::warn!(job = %job, error = %e, "writing the eviction notice");
                    }
                    if let Err(e) = runtime.signal(&c.id, "SIGTERM").await {
                        tracing::warn!(job = %job, error = %e, "signalling the eviction");
                    }
                }
            }
            let ack = serde_json::json!({ "StartRequests": [{ "EventId": id }] });
            if let Err(e) = http_json(&url, tls.as_ref(), "POST", Some(&ack)).await {
                tracing::warn!(error = %e, "acknowledging the eviction");
            }
        }
    }
}

/// How the agent speaks TLS to an https:// Scheduled Events endpoint (the
/// control plane's side port): trusting the control plane's CA and
/// presenting the node's certificate, which that endpoint requires.
#[derive(Debug, Clone)]
pub(super) struct SideTls {
    pub ca_pem: Option<String>,
    pub credentials: Arc<super::credentials::Credentials>,
}

impl SideTls {
    fn connector(&self) -> Result<tokio_rustls::TlsConnector, MetadataError> {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let bad =
            |what: &str, e: &dyn std::fmt::Display| MetadataError::Tls(format!("{what}: {e}"));
        let ca = self.ca_pem.as_deref().ok_or_else(|| {
            MetadataError::Tls("an https:// endpoint needs --control-plane-ca".into())
        })?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
            let cert = cert.map_err(|e| bad("the CA", &e))?;
            roots.add(cert).map_err(|e| bad("the CA", &e))?;
        }
        let (cert_pem, key_pem) = self
            .credentials
            .identity()
            .ok_or_else(|| MetadataError::Tls("the node has no valid certificate yet".into()))?;
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad("the node certificate", &e))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| bad("the node key", &e))?;
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("TLS versions", &e))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| bad("the node certificate", &e))?;
        Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
    }
}

/// The most of a metadata response the agent reads.
const MAX_RESPONSE: u64 = 1024 * 1024;

/// Why the metadata endpoint gave no answer.
#[derive(Debug, thiserror::Error)]
pub(super) enum MetadataError {
    #[error("only http:// and https:// URLs")]
    NotHttp,
    #[error("TLS: {0}")]
    Tls(String),
    #[error("connect timed out")]
    ConnectTimedOut,
    #[error("read timed out")]
    ReadTimedOut,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("no HTTP response")]
    NoResponse,
    /// Not a 2xx answer: its status line.
    #[error("{0}")]
    Status(String),
    #[error("{0}")]
    Json(#[from] serde_json::Error),
}

/// A small HTTP/1.0 client for the metadata endpoints: plain http (IMDS)
/// or https with the node's certificate (the control plane's side port).
/// Responses are read up to 1 MiB.
async fn http_json(
    url: &str,
    tls: Option<&SideTls>,
    method: &str,
    body: Option<&serde_json::Value>,
) -> Result<serde_json::Value, MetadataError> {
    let (secure, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(rest), _) => (false, rest),
        (_, Some(rest)) => (true, rest),
        _ => return Err(MetadataError::NotHttp),
    };
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let addr = if host.contains(':') {
        host.to_owned()
    } else if secure {
        format!("{host}:443")
    } else {
        format!("{host}:80")
    };
    let tcp = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(&addr),
    )
    .await
    .map_err(|_| MetadataError::ConnectTimedOut)??;
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {host}\r\nMetadata: true\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{payload}",
        payload.len()
    );
    let response = if secure {
        let connector = tls
            .ok_or_else(|| MetadataError::Tls("no TLS settings for an https:// URL".into()))?
            .connector()?;
        let name = host
            .rsplit_once(':')
            .map_or(host, |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let name = rustls::pki_types::ServerName::try_from(name.to_owned())
            .map_err(|e| MetadataError::Tls(format!("{name}: {e}")))?;
        let stream = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
            .await
            .map_err(|_| MetadataError::ConnectTimedOut)??;
        exchange(stream, &request).await?
    } else {
        exchange(tcp, &request).await?
    };
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or(MetadataError::NoResponse)?;
    if !head.starts_with("HTTP/1.1 2") && !head.starts_with("HTTP/1.0 2") {
        return Err(MetadataError::Status(
            head.lines().next().unwrap_or_default().to_owned(),
        ));
    }
    if body.trim().is_empty() {
        return Ok(serde_json::Value::Null);
    }
    Ok(serde_json::from_str(body)?)
}

/// Sends `request` and reads the answer until the server closes (HTTP/1.0),
/// at most [`MAX_RESPONSE`] bytes, within 5 s.
async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    request: &str,
) -> Result<Vec<u8>, MetadataError> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    stream.write_all(request.as_bytes()).await?;
    stream.flush().await?;
    let mut response = Vec::new();
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        (&mut stream).take(MAX_RESPONSE).read_to_end(&mut response),
    )
    .await
    .map_err(|_| MetadataError::ReadTimedOut)?;
    match read {
        Ok(_) => Ok(response),
        // A TLS peer that closes without close_notify: what came is whole
        // (HTTP/1.0 ends at the close).
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {
            Ok(response)
        }
        Err(e) => Err(e.into()),
    }
}
