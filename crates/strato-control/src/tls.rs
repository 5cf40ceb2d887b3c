//! The control plane's TLS: its own certificate authority, made at first
//! start in `DATA_DIR/tls/`, and the server certificate it serves, issued
//! anew by that CA at every start for the names it is reached by (so a new
//! `--tls-san` takes effect on restart) and kept in memory only.
//! `--tls-cert`/`--tls-key` serve a certificate of the operator's instead.
//!
//! Files (0600, in a 0700 directory): `ca.crt`, `ca.key`. Rotating the
//! CA: stop the control plane,
//! move `tls/` away, start it (a new CA), and hand the new `ca.crt` to
//! every client and agent.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::data_dir::{write_new_private, write_private};

/// The CA certificate's lifetime: ten years.
const CA_DAYS: i64 = 3650;
/// A server certificate's lifetime (reissued at every start).
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
    /// `given` certificate and key.
    pub fn load_or_create(
        data_dir: &Path,
        names: &[String],
        given: Option<(&Path, &Path)>,
    ) -> anyhow::Result<Tls> {
        let dir = data_dir.join("tls");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        {
            use std::os::unix::fs::PermissionsExt as _;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        }
        let (ca_pem, issuer) = load_or_create_ca(&dir)?;
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

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "Strato");
    dn
}

/// The CA of `dir`, made if it has none (the key first, 0600 from the
/// start; a key without a certificate, left by a crash, is made anew).
fn load_or_create_ca(dir: &Path) -> anyhow::Result<(String, Issuer<'static, KeyPair>)> {
    let (cert_path, key_path) = (dir.join("ca.crt"), dir.join("ca.key"));
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
    params.distinguished_name = name("Strato control plane CA");
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
    write_new_private(&key_path, key.serialize_pem().as_bytes()).context("writing tls/ca.key")?;
    write_private(&cert_path, cert_pem.as_bytes()).context("writing tls/ca.crt")?;
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
        let first = Tls::load_or_create(dir.path(), &names, None).expect("first start");
        let second = Tls::load_or_create(dir.path(), &names, None).expect("second start");
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
        for file in ["ca.key", "ca.crt"] {
            let mode = std::fs::metadata(dir.path().join("tls").join(file))
                .expect("exists")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
    }
}
