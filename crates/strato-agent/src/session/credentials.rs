//! The node's client certificate: how the agent proves which node it is
//! after its first enrolment (the join token is single use).
//!
//! The key is made once and kept in `WORK_DIR/credentials/node.key`, the
//! certificate the control plane signed for it in `node.crt` (both 0600, in
//! a 0700 directory), so a restarted agent enrols again as the same node.
//! The serving certificate of `/metrics` for the same key (`metrics.crt`)
//! and the CA whose scraper certificates may read it (`scraper-ca.crt`)
//! come with it and are put into the metrics port's [`ServerTls`] at once,
//! and again from disk after a restart.
//! The agent renews the certificate when two thirds of its lifetime have
//! passed, and gets a fresh one at every re-enrolment. A node cut off for
//! longer than the lifetime needs a new join token: remove `credentials/`
//! and start the agent with it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use rcgen::{CertificateParams, KeyPair};
use strato_proto::v1;
use strato_runtime::https::ServerTls;

/// The node's key and, once enrolled, its certificate.
pub struct Credentials {
    dir: PathBuf,
    key: KeyPair,
    held: Mutex<Option<Held>>,
    /// What the metrics port serves, kept up to date here.
    metrics: Arc<ServerTls>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
struct Held {
    pem: String,
    /// Seconds since the epoch.
    not_after: i64,
    /// When to ask for a new one: two thirds into its lifetime.
    renew_at: i64,
}

/// Why the credentials cannot be read or kept.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a private key ({reason}); remove it to make a new one")]
    Key { path: PathBuf, reason: String },
    #[error("making the certificate signing request: {0}")]
    Csr(String),
    #[error("the metrics port's TLS: {0}")]
    MetricsTls(#[from] strato_runtime::https::TlsConfigError),
}

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// When a certificate valid from `from` to `not_after` is renewed.
fn renew_at(from: i64, not_after: i64) -> i64 {
    from + (not_after - from).max(0) * 2 / 3
}

impl Credentials {
    /// Reads the key and certificate from `dir` (`WORK_DIR/credentials`),
    /// making a new key if there is none, and serves the metrics port with
    /// the serving certificate kept there, while it is valid.
    pub fn load(dir: &Path, metrics: Arc<ServerTls>) -> Result<Credentials, CredentialsError> {
        let key_path = dir.join("node.key");
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| CredentialsError::Io { path, source }
        };
        let key = match std::fs::read_to_string(&key_path) {
            Ok(pem) => KeyPair::from_pem(&pem).map_err(|e| CredentialsError::Key {
                path: key_path.clone(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = KeyPair::generate().map_err(|e| CredentialsError::Key {
                    path: key_path.clone(),
                    reason: e.to_string(),
                })?;
                strato_runtime::write_private(&key_path, key.serialize_pem().as_bytes())
                    .map_err(io(&key_path))?;
                key
            }
            Err(e) => return Err(io(&key_path)(e)),
        };
        let cert_path = dir.join("node.crt");
        let held = match std::fs::read_to_string(&cert_path) {
            Ok(pem) => not_after(&pem).map(|not_after| Held {
                renew_at: renew_at(now_s(), not_after),
                pem,
                not_after,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(&cert_path)(e)),
        };
        let credentials = Credentials {
            dir: dir.to_owned(),
            key,
            held: Mutex::new(held),
            metrics,
        };
        let kept = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
        if let (Some(serving), Some(scraper_ca)) = (kept("metrics.crt"), kept("scraper-ca.crt"))
            && not_after(&serving).is_some_and(|t| t > now_s())
            && let Err(e) = credentials.serve_metrics(&serving, &scraper_ca)
        {
            tracing::warn!(error = %e, "the kept serving certificate is not usable; /metrics waits for the next one");
        }
        Ok(credentials)
    }

    fn serve_metrics(&self, serving: &str, scraper_ca: &str) -> Result<(), CredentialsError> {
        let config =
            strato_runtime::https::server_config(serving, &self.key.serialize_pem(), scraper_ca)?;
        self.metrics.set(config);
        Ok(())
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Option<Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A certificate signing request for the node's key (its subject does
    /// not matter: the control plane names the node).
    pub fn csr(&self) -> Result<String, CredentialsError> {
        CertificateParams::default()
            .serialize_request(&self.key)
            .and_then(|csr| csr.pem())
            .map_err(|e| CredentialsError::Csr(e.to_string()))
    }

    /// The certificate and key to present, while the certificate is valid.
    pub fn identity(&self) -> Option<(String, String)> {
        let held = self.held().clone()?;
        (held.not_after > now_s()).then(|| (held.pem, self.key.serialize_pem()))
    }

    /// Keeps a certificate the control plane signed, on disk too, and
    /// serves `/metrics` with the serving certificate that came with it.
    pub fn store(&self, cert: &v1::NodeCertificate) -> Result<(), CredentialsError> {
        let write = |name: &str, pem: &str| {
            let path = self.dir.join(name);
            strato_runtime::write_private(&path, pem.as_bytes())
                .map_err(|source| CredentialsError::Io { path, source })
        };
        write("node.crt", &cert.certificate_pem)?;
        if !cert.serving_certificate_pem.is_empty() {
            self.serve_metrics(&cert.serving_certificate_pem, &cert.scraper_ca_pem)?;
            write("metrics.crt", &cert.serving_certificate_pem)?;
            write("scraper-ca.crt", &cert.scraper_ca_pem)?;
        }
        *self.held() = Some(Held {
            pem: cert.certificate_pem.clone(),
            not_after: cert.not_after,
            renew_at: renew_at(cert.not_before.min(now_s()), cert.not_after),
        });
        Ok(())
    }

    /// The node the certificate names (its subject CN).
    pub fn node_id(&self) -> Option<String> {
        let pem = self.held().as_ref()?.pem.clone();
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
        let (_, cert) = x509_parser::parse_x509_certificate(&pem.contents).ok()?;
        let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
        strato_core::naming::is_node_id(cn).then(|| cn.to_owned())
    }

    /// Forgets the certificate (the control plane refused it): the next
    /// enrolment uses the join token.
    pub fn forget(&self) {
        *self.held() = None;
        let _ = std::fs::remove_file(self.dir.join("node.crt"));
    }

    /// How long until the certificate should be renewed (zero if it is
    /// due); `None` without one.
    pub fn renew_in(&self) -> Option<Duration> {
        let at = self.held().as_ref()?.renew_at;
        Some(Duration::from_secs(
            u64::try_from(at.saturating_sub(now_s())).unwrap_or(0),
        ))
    }
}

/// When the PEM certificate `pem` stops being valid.
fn not_after(pem: &str) -> Option<i64> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&pem.contents).ok()?;
    Some(cert.validity().not_after.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_comes_two_thirds_into_the_lifetime() {
        assert_eq!(renew_at(1_000, 1_000 + 86_400), 1_000 + 57_600);
        assert_eq!(renew_at(1_000, 1_030), 1_020);
        assert_eq!(renew_at(1_000, 900), 1_000, "an expired one at once");
    }

    #[test]
    fn the_key_is_made_once_and_kept_private() {
        let dir = std::env::temp_dir().join(format!("strato-cred-{}", std::process::id()));
        let first = Credentials::load(&dir, Arc::default()).expect("made");
        let again = Credentials::load(&dir, Arc::default()).expect("read");
        assert_eq!(first.key.serialize_pem(), again.key.serialize_pem());
        assert!(first.identity().is_none(), "no certificate yet");
        assert!(first.csr().expect("csr").contains("CERTIFICATE REQUEST"));
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.join("node.key"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
