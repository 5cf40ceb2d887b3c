//! The control plane's TLS: its own certificate authority, made at first
//! start in `DATA_DIR/tls/`, and the server certificate it serves, issued
//! anew by that CA at every start for the names it is reached by (so a new
//! `--tls-san` takes effect on restart) and kept in memory only.
//! `--tls-cert`/`--tls-key` serve a certificate of the operator's instead.
//!
//! The same CA signs each node's client certificate ([`NodeCa`]): short
//! lived, naming the node, renewed by its agent; and, at every start, the
//! scraper certificate Prometheus presents to agents (`scraper.crt`,
//! `scraper.key`; organisation "Strato scrapers", client auth only).
//!
//! A second CA, the node serving CA, signs each agent's serving
//! certificate for its `/metrics` (same key, same lifetime as its client
//! certificate), naming the host of the metrics URL the agent reported.
//! It is a CA of its own because that name is one the node claims: only
//! Prometheus's agents job trusts it (`node-serving-ca.crt`), so a node
//! can never pass for the control plane or anything else a client trusts
//! the main CA for (as kubelet serving certificates are kept apart).
//!
//! Files (0600, in a 0700 directory): `ca.crt`, `ca.key`,
//! `node-serving-ca.crt`, `node-serving-ca.key`, `scraper.crt`,
//! `scraper.key`. Rotating the CAs: stop the control plane, move `tls/`
//! away, start it (new CAs), and hand the new `ca.crt` to every client and
//! agent and the new `node-serving-ca.crt`, `scraper.crt` and `scraper.key`
//! to Prometheus.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use strato_core::certificate::{Holder, NODE_ORGANISATION, SCRAPER_ORGANISATION};

use crate::data_dir::{write_new_private, write_private};

/// The CA certificate's lifetime: ten years.
const CA_DAYS: i64 = 3650;
/// A server or scraper certificate's lifetime (reissued at every start).
const SERVER_DAYS: i64 = 397;

/// What the control plane serves TLS with.
pub struct Tls {
    /// The CA certificate (PEM) that clients and agents trust.
    pub ca_pem: String,
    /// Whether clients must trust `ca_pem` for the served certificate
    /// (false when the operator gave their own).
    pub serves_own_ca: bool,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    /// Signs the nodes' client and serving certificates.
    pub nodes: NodeCa,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("serves_own_ca", &self.serves_own_ca)
            .finish_non_exhaustive()
    }
}

/// The names the server certificate carries: loopback, the host's name,
/// the listen addresses that are not unspecified, and `extra`.
pub fn subject_alt_names(listen: &[IpAddr], extra: &[String]) -> Vec<String> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let host = host.trim();
        if !host.is_empty() {
            names.push(host.to_owned());
        }
    }
    names.extend(
        listen
            .iter()
            .filter(|ip| !ip.is_unspecified())
            .map(IpAddr::to_string),
    );
    names.extend(extra.iter().cloned());
    let mut seen = std::collections::BTreeSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

fn days(n: i64) -> time::Duration {
    time::Duration::days(n)
}

impl Tls {
    /// Loads the CA from `DATA_DIR/tls/` (making it at first start) and
    /// issues the server certificate for `names`, or reads the operator's
    /// `given` certificate and key. Node certificates last
    /// `node_lifetime_s`.
    pub fn load_or_create(
        data_dir: &Path,
        names: &[String],
        given: Option<(&Path, &Path)>,
        node_lifetime_s: u64,
    ) -> anyhow::Result<Tls> {
        let dir = data_dir.join("tls");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        {
            use std::os::unix::fs::PermissionsExt as _;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        }
        let (ca_pem, issuer) = load_or_create_ca(&dir, "ca", "Strato control plane CA")?;
        let (serving_ca_pem, serving) =
            load_or_create_ca(&dir, "node-serving-ca", "Strato node serving CA")?;
        write_scraper_certificate(&dir, &issuer)?;
        let (server_cert_pem, server_key_pem, serves_own_ca) = match given {
            Some((cert, key)) => {
                let read = |p: &Path, flag: &str| {
                    std::fs::read_to_string(p)
                        .with_context(|| format!("{flag} {}: cannot read it", p.display()))
                };
                (read(cert, "--tls-cert")?, read(key, "--tls-key")?, false)
            }
            None => {
                let key = KeyPair::generate().context("making the server key")?;
                let mut params = CertificateParams::new(names.to_vec())
                    .context("the server certificate's names (--tls-san)")?;
                params.distinguished_name = name("strato-control");
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
                params.key_usages = vec![
                    KeyUsagePurpose::DigitalSignature,
                    KeyUsagePurpose::KeyEncipherment,
                ];
                let now = time::OffsetDateTime::now_utc();
                params.not_before = now - time::Duration::hours(1);
                params.not_after = now + days(SERVER_DAYS);
                let cert = params
                    .signed_by(&key, &issuer)
                    .context("signing the server certificate")?;
                (cert.pem(), key.serialize_pem(), true)
            }
        };
        Ok(Tls {
            nodes: NodeCa {
                issuer,
                serving,
                serving_ca_pem,
                scraper_ca_pem: ca_pem.clone(),
                lifetime_s: i64::try_from(node_lifetime_s).unwrap_or(i64::MAX),
            },
            ca_pem,
            serves_own_ca,
            server_cert_pem,
            server_key_pem,
        })
    }

    /// The CA certificate's path in a data directory.
    pub fn ca_path(data_dir: &Path) -> PathBuf {
        data_dir.join("tls").join("ca.crt")
    }
}

/// Issues the scraper certificate (client auth only, "Strato scrapers")
/// into `dir`, replacing the last one: earlier copies stay valid until
/// they expire.
fn write_scraper_certificate(dir: &Path, issuer: &Issuer<'static, KeyPair>) -> anyhow::Result<()> {
    let key = KeyPair::generate().context("making the scraper key")?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "strato-scraper");
    dn.push(DnType::OrganizationName, SCRAPER_ORGANISATION);
    params.distinguished_name = dn;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + days(SERVER_DAYS);
    let cert = params
        .signed_by(&key, issuer)
        .context("signing the scraper certificate")?;
    write_private(&dir.join("scraper.key"), key.serialize_pem().as_bytes())
        .context("writing tls/scraper.key")?;
    write_private(&dir.join("scraper.crt"), cert.pem().as_bytes())
        .context("writing tls/scraper.crt")?;
    Ok(())
}

/// How far a node certificate's validity starts before its issue, for
/// clocks a little apart.
const CLOCK_SKEW_S: i64 = 60;

/// Signs nodes' client certificates with the control plane's CA, and
/// their serving certificates with the node serving CA.
pub struct NodeCa {
    issuer: Issuer<'static, KeyPair>,
    serving: Issuer<'static, KeyPair>,
    /// What Prometheus's agents job trusts.
    pub serving_ca_pem: String,
    /// What agents verify scraper certificates against (the main CA).
    pub scraper_ca_pem: String,
    lifetime_s: i64,
}

impl std::fmt::Debug for NodeCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCa")
            .field("lifetime_s", &self.lifetime_s)
            .finish_non_exhaustive()
    }
}

/// A node's client certificate, as issued, with its serving certificate
/// when it reported where it serves metrics over TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCertificate {
    pub pem: String,
    /// For the agent's `/metrics`, naming its host; same key.
    pub serving_pem: Option<String>,
    /// Seconds since the epoch: when it was issued, and when it stops
    /// being valid.
    pub issued_at: i64,
    pub not_after: i64,
}

/// Why a CSR cannot be signed.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error("csr_pem is required: a PKCS#10 certificate signing request (PEM) for the node's key")]
    Missing,
    #[error("csr_pem: not a PKCS#10 certificate signing request with a valid signature ({0})")]
    Invalid(String),
}

/// A CSR whose signature checked out, to be signed once the node is known.
pub struct Csr(rcgen::CertificateSigningRequestParams);

impl Csr {
    /// The SHA-256 (hex) of the public key it asks a certificate for.
    pub fn key_hash(&self) -> String {
        use rcgen::PublicKeyData as _;
        use sha2::Digest as _;
        sha2::Sha256::digest(self.0.public_key.der_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Parses `pem` and checks that its key signed it.
    pub fn parse(pem: &str) -> Result<Csr, CsrError> {
        if pem.trim().is_empty() {
            return Err(CsrError::Missing);
        }
        if pem.len() > 16 * 1024 {
            return Err(CsrError::Invalid("over 16 KiB".into()));
        }
        rcgen::CertificateSigningRequestParams::from_pem(pem)
            .map(Csr)
            .map_err(|e| CsrError::Invalid(e.to_string()))
    }
}

impl NodeCa {
    /// Signs `csr`'s key into a client certificate naming `node_id` (the
    /// subject CN; what the CSR asked for is ignored), valid from now, and,
    /// given the host its metrics are served at, a serving certificate for
    /// that host alone, valid as long.
    pub fn sign(
        &self,
        csr: Csr,
        node_id: &str,
        metrics_host: Option<&str>,
    ) -> anyhow::Result<NodeCertificate> {
        let mut csr = csr.0;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node_id);
        dn.push(DnType::OrganizationName, NODE_ORGANISATION);
        params.distinguished_name = dn.clone();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = time::OffsetDateTime::now_utc();
        let not_after = now + time::Duration::seconds(self.lifetime_s);
        params.not_before = now - time::Duration::seconds(CLOCK_SKEW_S);
        params.not_after = not_after;
        csr.params = params.clone();
        let cert = csr
            .signed_by(&self.issuer)
            .context("signing the node certificate")?;
        let serving_pem = match metrics_host {
            None => None,
            Some(host) => {
                let mut serving = CertificateParams::new(vec![host.to_owned()])
                    .with_context(|| format!("the metrics host {host:?}"))?;
                serving.distinguished_name = dn;
                serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
                serving.key_usages = vec![
                    KeyUsagePurpose::DigitalSignature,
                    KeyUsagePurpose::KeyEncipherment,
                ];
                serving.not_before = params.not_before;
                serving.not_after = not_after;
                csr.params = serving;
                Some(
                    csr.signed_by(&self.serving)
                        .context("signing the node's serving certificate")?
                        .pem(),
                )
            }
        };
        Ok(NodeCertificate {
            pem: cert.pem(),
            serving_pem,
            issued_at: now.unix_timestamp(),
            not_after: not_after.unix_timestamp(),
        })
    }
}

/// The node a verified client certificate names (its subject CN), if it
/// is a node certificate (not, say, a server certificate of the same CA).
pub fn node_of(cert_der: &[u8]) -> Option<String> {
    match strato_runtime::https::holder_of(cert_der)? {
        Holder::Node(node) => Some(node),
        Holder::Scraper | Holder::Other => None,
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "Strato");
    dn
}

/// The CA of `dir`, made if it has none (the key first, 0600 from the
/// start; a key without a certificate, left by a crash, is made anew).
fn load_or_create_ca(
    dir: &Path,
    stem: &str,
    common_name: &str,
) -> anyhow::Result<(String, Issuer<'static, KeyPair>)> {
    let (cert_path, key_path) = (
        dir.join(format!("{stem}.crt")),
        dir.join(format!("{stem}.key")),
    );
    if cert_path.exists() && key_path.exists() {
        let cert_pem = std::fs::read_to_string(&cert_path)
            .with_context(|| format!("reading {}", cert_path.display()))?;
        let key_pem = std::fs::read_to_string(&key_path)
            .with_context(|| format!("reading {}", key_path.display()))?;
        let key = KeyPair::from_pem(&key_pem)
            .with_context(|| format!("{}: not a private key", key_path.display()))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
            .with_context(|| format!("{}: not a CA certificate", cert_path.display()))?;
        return Ok((cert_pem, issuer));
    }
    let key = KeyPair::generate().context("making the CA key")?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + days(CA_DAYS);
    let cert = params
        .self_signed(&key)
        .context("signing the CA certificate")?;
    let cert_pem = cert.pem();
    let _ = std::fs::remove_file(&key_path);
    write_new_private(&key_path, key.serialize_pem().as_bytes())
        .with_context(|| format!("writing tls/{stem}.key"))?;
    write_private(&cert_path, cert_pem.as_bytes())
        .with_context(|| format!("writing tls/{stem}.crt"))?;
    Ok((cert_pem, Issuer::new(params, key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_is_made_once_and_the_server_certificate_each_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let names = subject_alt_names(
            &["10.1.2.3".parse().expect("ip")],
            &["cp.example.com".into()],
        );
        assert!(
            names.contains(&"10.1.2.3".to_owned()) && names.contains(&"cp.example.com".to_owned())
        );
        let first = Tls::load_or_create(dir.path(), &names, None, 3600).expect("first start");
        let second = Tls::load_or_create(dir.path(), &names, None, 3600).expect("second start");
        assert_eq!(first.ca_pem, second.ca_pem, "the CA is kept");
        assert_ne!(
            first.server_key_pem, second.server_key_pem,
            "the server key is new"
        );
        assert!(
            !dir.path().join("tls").join("server.key").exists(),
            "the server key stays in memory"
        );
        use std::os::unix::fs::PermissionsExt as _;
        for file in [
            "ca.key",
            "ca.crt",
            "node-serving-ca.key",
            "node-serving-ca.crt",
            "scraper.key",
            "scraper.crt",
        ] {
            let mode = std::fs::metadata(dir.path().join("tls").join(file))
                .expect("exists")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
    }

    fn csr(common_name: &str) -> String {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name);
        params
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem")
    }

    #[test]
    fn a_node_certificate_names_the_node_whatever_the_csr_asked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = Tls::load_or_create(dir.path(), &["localhost".into()], None, 600).expect("tls");
        let csr = Csr::parse(&csr("someone-else")).expect("a valid CSR");
        let cert = tls.nodes.sign(csr, "cpu-n0", None).expect("signed");
        assert!((590..=610).contains(&(cert.not_after - cert.issued_at)));
        assert_eq!(
            cert.serving_pem, None,
            "no metrics host, no serving certificate"
        );
        use rustls::pki_types::{CertificateDer, pem::PemObject as _};
        let der = CertificateDer::from_pem_slice(cert.pem.as_bytes()).expect("pem");
        assert_eq!(node_of(&der).as_deref(), Some("cpu-n0"));
        // The server certificate of the same CA names no node.
        let server = CertificateDer::from_pem_slice(tls.server_cert_pem.as_bytes()).expect("pem");
        assert_eq!(node_of(&server), None);
    }

    /// Verifies `pem` as a server certificate for `host` against `ca_pem`.
    fn serves_as(pem: &str, ca_pem: &str, host: &str) -> Result<(), rustls::Error> {
        use rustls::client::danger::ServerCertVerifier as _;
        use rustls::pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject as _};
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("ca"))
            .expect("root");
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .expect("verifier");
        let cert = CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem");
        let name = ServerName::try_from(host.to_owned()).expect("name");
        verifier
            .verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
            .map(|_| ())
    }

    #[test]
    fn a_nodes_serving_certificate_names_its_metrics_host_under_its_own_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = Tls::load_or_create(dir.path(), &["localhost".into()], None, 600).expect("tls");
        let csr = Csr::parse(&csr("cp.example.com")).expect("a valid CSR");
        let cert = tls
            .nodes
            .sign(csr, "cpu-n0", Some("10.0.0.4"))
            .expect("signed");
        let serving = cert.serving_pem.expect("a serving certificate");
        serves_as(&serving, &tls.nodes.serving_ca_pem, "10.0.0.4").expect("valid for its host");
        assert!(
            serves_as(&serving, &tls.nodes.serving_ca_pem, "cp.example.com").is_err(),
            "only the metrics host, whatever the CSR asked"
        );
        assert!(
            serves_as(&serving, &tls.ca_pem, "10.0.0.4").is_err(),
            "clients of the main CA never trust a node's serving certificate"
        );
        // The control plane's server certificate is not of the serving CA.
        assert!(serves_as(&tls.server_cert_pem, &tls.nodes.serving_ca_pem, "localhost").is_err());
        serves_as(&tls.server_cert_pem, &tls.ca_pem, "localhost").expect("the server's own");

        // The scraper certificate is the main CA's, for scrapers only.
        use rustls::pki_types::{CertificateDer, pem::PemObject as _};
        let scraper = std::fs::read_to_string(dir.path().join("tls/scraper.crt")).expect("written");
        let der = CertificateDer::from_pem_slice(scraper.as_bytes()).expect("pem");
        assert_eq!(
            strato_runtime::https::holder_of(&der),
            Some(Holder::Scraper)
        );
        assert_eq!(node_of(&der), None);
        assert_eq!(tls.nodes.scraper_ca_pem, tls.ca_pem);
    }

    #[test]
    fn a_csr_must_be_there_and_signed_by_its_key() {
        assert!(matches!(Csr::parse(""), Err(CsrError::Missing)));
        let mut bad = csr("x");
        // Flip a character inside the base64 body: the signature fails.
        let at = bad.len() / 2;
        let flipped = if &bad[at..=at] == "A" { "B" } else { "A" };
        bad.replace_range(at..=at, flipped);
        assert!(matches!(Csr::parse(&bad), Err(CsrError::Invalid(_))));
        assert!(matches!(
            Csr::parse(&"x".repeat(20_000)),
            Err(CsrError::Invalid(_))
        ));
    }
}
