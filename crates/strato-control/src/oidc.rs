//! Users from an OpenID Connect issuer the operator trusts
//! (`--oidc-issuer`, `--oidc-audience`): a bearer JWT it signed is a
//! caller `oidc:SUBJECT`, whose roles are its role assignments.
//!
//! The issuer's keys come from the `jwks_uri` of its discovery document
//! (`ISSUER/.well-known/openid-configuration`, whose `issuer` must be the
//! configured one), fetched at start, again every [`MAX_KEY_AGE`], and when
//! a token names a key not in the set (at most once every
//! [`REFRESH_EVERY`], so tokens with made-up key ids cannot make the
//! control plane hammer the issuer). One fetch runs at a time, and never
//! under the lock that verifications read the keys under. A token is accepted only if its
//! algorithm is an asymmetric one its key is for, its issuer and audience
//! are the configured ones, and it has not expired (`exp` required, `nbf`
//! honoured, [`LEEWAY_S`] of clock skew).

use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tokio::sync::{Mutex, RwLock};

/// The least time between two fetches of the issuer's keys.
pub const REFRESH_EVERY: Duration = Duration::from_secs(5);
/// Keys older than this are fetched again (a key the issuer removed stops
/// being trusted).
pub const MAX_KEY_AGE: Duration = Duration::from_secs(3600);
/// Clock skew allowed on `exp` and `nbf`.
pub const LEEWAY_S: u64 = 30;
/// The longest bearer JWT looked at.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// The most of a discovery document or key set read.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// Algorithms a token may be signed with: asymmetric ones only (never
/// `none`, never a shared secret).
const ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// What the operator configured.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// The issuer, exactly as tokens name it in `iss`.
    pub issuer: String,
    pub audience: String,
    /// Extra CA certificates (PEM) trusted for the issuer.
    pub ca_pem: Option<Vec<u8>>,
}

/// Why a token was not accepted (each says so in UNAUTHENTICATED).
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("the bearer token is over {MAX_TOKEN_BYTES} bytes")]
    TooLong,
    #[error("the bearer token is not a JWT: {0}")]
    NotJwt(String),
    #[error(
        "OIDC token signed with {0:?}: only asymmetric algorithms (RS*, PS*, ES256, ES384, EdDSA) are accepted"
    )]
    Algorithm(Algorithm),
    #[error("OIDC token names key {0:?}, which the issuer does not publish")]
    UnknownKey(String),
    #[error("OIDC token rejected: {0}")]
    Invalid(String),
    #[error("OIDC token has no subject (sub)")]
    NoSubject,
    #[error("the OIDC issuer's keys cannot be fetched: {0}")]
    Fetch(String),
    #[error("--oidc-issuer {0}")]
    Setup(String),
}

#[derive(Debug, serde::Deserialize)]
struct Claims {
    #[serde(default)]
    sub: String,
    exp: i64,
}

struct Keys {
    set: JwkSet,
    fetched: Option<Instant>,
}

/// Verifies JWTs of one issuer.
pub struct OidcVerifier {
    config: OidcConfig,
    client: reqwest::Client,
    keys: RwLock<Keys>,
    /// Held by the one fetch in progress.
    fetching: Mutex<()>,
}

impl std::fmt::Debug for OidcVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcVerifier")
            .field("issuer", &self.config.issuer)
            .field("audience", &self.config.audience)
            .finish_non_exhaustive()
    }
}

/// Whether `url` may be fetched: https, or http on a loopback host.
fn fetchable(url: &str) -> bool {
    if url.starts_with("https://") {
        return true;
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split(['/', '?']).next().unwrap_or_default();
    let host = host
        .rsplit_once(':')
        .map_or(host, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether `token` looks like a JWT (three dot-separated parts), as
/// opposed to a Strato API token.
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
}

impl OidcVerifier {
    pub fn new(config: OidcConfig) -> Result<OidcVerifier, OidcError> {
        if !fetchable(&config.issuer) {
            return Err(OidcError::Setup(format!(
                "{:?}: must be an https:// URL (http:// only for a loopback host)",
                config.issuer
            )));
        }
        if config.audience.is_empty() {
            return Err(OidcError::Setup(
                "needs --oidc-audience: the audience (aud) tokens for Strato carry".into(),
            ));
        }
        // No redirects: what is fetched is what was checked.
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(pem) = &config.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| OidcError::Setup(format!("--oidc-ca-file: {e}")))?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder
            .build()
            .map_err(|e| OidcError::Setup(format!("HTTP client: {e}")))?;
        Ok(OidcVerifier {
            config,
            client,
            keys: RwLock::new(Keys {
                set: JwkSet { keys: Vec::new() },
                fetched: None,
            }),
            fetching: Mutex::new(()),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.config.issuer
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, OidcError> {
        if !fetchable(url) {
            return Err(OidcError::Fetch(format!(
                "{url}: not https:// (http:// only on loopback)"
            )));
        }
        let mut response = self
            .client
            .get(url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| OidcError::Fetch(format!("{url}: {e}")))?;
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| OidcError::Fetch(format!("{url}: {e}")))?
        {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(OidcError::Fetch(format!("{url}: over 1 MiB")));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|e| OidcError::Fetch(format!("{url}: {e}")))
    }

    /// The audience tokens for Strato carry (what the studio asks the
    /// issuer for as its `resource`).
    pub fn audience(&self) -> &str {
        &self.config.audience
    }

    /// The issuer's authorization and token endpoints, from its discovery
    /// document (for the studio's sign-in: authorization code with PKCE).
    pub async fn code_flow_endpoints(&self) -> Result<(String, String), OidcError> {
        let discovery: serde_json::Value = self
            .get_json(&format!(
                "{}/.well-known/openid-configuration",
                self.config.issuer.trim_end_matches('/')
            ))
            .await?;
        let endpoint = |key: &str| {
            discovery[key]
                .as_str()
                .filter(|u| fetchable(u))
                .map(str::to_owned)
                .ok_or_else(|| {
                    OidcError::Fetch(format!("the discovery document has no https:// {key}"))
                })
        };
        Ok((
            endpoint("authorization_endpoint")?,
            endpoint("token_endpoint")?,
        ))
    }

    /// Redeems an authorization code at `token_endpoint` (a public client:
    /// its id and the PKCE verifier, no secret); the access token for
    /// Strato's audience.
    pub async fn redeem_code(
        &self,
        token_endpoint: &str,
        form: &[(&str, &str)],
    ) -> Result<String, OidcError> {
        let mut response = self
            .client
            .post(token_endpoint)
            .form(form)
            .send()
            .await
            .map_err(|e| OidcError::Fetch(format!("{token_endpoint}: {e}")))?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| OidcError::Fetch(format!("{token_endpoint}: {e}")))?
        {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(OidcError::Fetch(format!("{token_endpoint}: over 1 MiB")));
            }
            body.extend_from_slice(&chunk);
        }
        let answer: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| OidcError::Fetch(format!("{token_endpoint}: {e}")))?;
        if !status.is_success() {
            return Err(OidcError::Invalid(format!(
                "the issuer refused the code: {} {}",
                answer["error"].as_str().unwrap_or_default(),
                answer["error_description"].as_str().unwrap_or_default()
            )));
        }
        answer["access_token"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| OidcError::Invalid("the issuer's answer has no access_token".into()))
    }

    /// Fetches the issuer's keys (discovery document, then its jwks_uri)
    /// and puts them in place.
    pub async fn refresh(&self) -> Result<usize, OidcError> {
        let _one = self.fetching.lock().await;
        self.fetch().await
    }

    async fn fetch(&self) -> Result<usize, OidcError> {
        self.keys.write().await.fetched = Some(Instant::now());
        let discovery: serde_json::Value = self
            .get_json(&format!(
                "{}/.well-known/openid-configuration",
                self.config.issuer.trim_end_matches('/')
            ))
            .await?;
        if discovery["issuer"].as_str() != Some(self.config.issuer.as_str()) {
            return Err(OidcError::Fetch(format!(
                "the discovery document names issuer {}, not {}",
                discovery["issuer"], self.config.issuer
            )));
        }
        let jwks_uri = discovery["jwks_uri"]
            .as_str()
            .ok_or_else(|| OidcError::Fetch("the discovery document has no jwks_uri".into()))?;
        let mut set: JwkSet = self.get_json(jwks_uri).await?;
        // Signing keys only.
        set.keys.retain(|k| {
            !matches!(
                k.common.public_key_use,
                Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
            )
        });
        let count = set.keys.len();
        self.keys.write().await.set = set;
        tracing::info!(issuer = %self.config.issuer, keys = count, "OIDC issuer keys fetched");
        Ok(count)
    }

    /// The key `kid` names, fetching the set again if it is not there (and
    /// the last fetch was long enough ago) or the set is old.
    async fn key(&self, kid: Option<&str>) -> Result<jsonwebtoken::jwk::Jwk, OidcError> {
        let find = |set: &JwkSet| match kid {
            Some(kid) => set.find(kid).cloned(),
            // No key id: only a set of one key says which.
            None => (set.keys.len() == 1).then(|| set.keys[0].clone()),
        };
        let (found, fetched) = {
            let keys = self.keys.read().await;
            (find(&keys.set), keys.fetched)
        };
        let stale = fetched.is_none_or(|at| at.elapsed() >= MAX_KEY_AGE);
        if let Some(key) = found
            && !stale
        {
            return Ok(key);
        }
        if fetched.is_none_or(|at| at.elapsed() >= REFRESH_EVERY) {
            // One fetch at a time; who waited for it reads what it got.
            let one = self.fetching.lock().await;
            let again = self.keys.read().await.fetched;
            if again == fetched
                && let Err(e) = self.fetch().await
            {
                tracing::warn!(issuer = %self.config.issuer, error = %e, "fetching the OIDC issuer's keys");
            }
            drop(one);
        }
        find(&self.keys.read().await.set)
            .ok_or_else(|| OidcError::UnknownKey(kid.unwrap_or("(none)").to_owned()))
    }

    /// The subject of a valid token, and when it expires (seconds since
    /// the epoch).
    pub async fn verify(&self, token: &str) -> Result<(String, i64), OidcError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(OidcError::TooLong);
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| OidcError::NotJwt(e.to_string()))?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(OidcError::Algorithm(header.alg));
        }
        let jwk = self.key(header.kid.as_deref()).await?;
        // The key's own algorithm, when it names one, must be the token's.
        if let Some(alg) = jwk.common.key_algorithm
            && alg.to_string() != format!("{:?}", header.alg)
        {
            return Err(OidcError::Invalid(format!(
                "signed with {:?}, but its key is for {alg}",
                header.alg
            )));
        }
        let key = DecodingKey::from_jwk(&jwk).map_err(|e| OidcError::Invalid(e.to_string()))?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_S;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map_err(|e| OidcError::Invalid(e.to_string()))?;
        if data.claims.sub.is_empty() {
            return Err(OidcError::NoSubject);
        }
        Ok((data.claims.sub, data.claims.exp))
    }
}

/// A verifier shared by the use cases.
pub type Oidc = Option<Arc<OidcVerifier>>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::TokenIssuer;

    /// A verifier that already holds `issuer`'s keys (fetched just now, so
    /// an unknown key id fetches nothing).
    fn holding(issuer: &TokenIssuer, audience: &str) -> OidcVerifier {
        let verifier = OidcVerifier::new(OidcConfig {
            issuer: issuer.issuer().to_owned(),
            audience: audience.to_owned(),
            ca_pem: None,
        })
        .expect("verifier");
        let set: JwkSet = serde_json::from_value(issuer.jwks()).expect("jwks");
        *verifier.keys.try_write().expect("unlocked") = Keys {
            set,
            fetched: Some(Instant::now()),
        };
        verifier
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or_default())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn issuer_audience_expiry_and_algorithm_are_checked() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("tempdir");
        let issuer =
            TokenIssuer::load_or_create(dir.path(), "https://idp.test/".into(), "t".into())
                .expect("issuer");
        let verifier = holding(&issuer, "api://strato");
        let good = issuer
            .assertion("alice", "api://strato", now())
            .expect("token");
        assert_eq!(verifier.verify(&good).await.expect("valid").0, "alice");

        let other_aud = issuer
            .assertion("alice", "api://other", now())
            .expect("token");
        let e = verifier.verify(&other_aud).await.expect_err("audience");
        assert!(e.to_string().contains("InvalidAudience"), "{e}");
        // Ten minutes of life, an hour ago: expired even with the leeway.
        let old = issuer
            .assertion("alice", "api://strato", now() - 3600)
            .expect("token");
        let e = verifier.verify(&old).await.expect_err("expired");
        assert!(e.to_string().contains("ExpiredSignature"), "{e}");
        std::fs::create_dir_all(dir.path().join("other")).expect("dir");
        let stranger = TokenIssuer::load_or_create(
            &dir.path().join("other"),
            "https://stranger.test/".into(),
            "t".into(),
        )
        .expect("issuer");
        let foreign = stranger
            .assertion("alice", "api://strato", now())
            .expect("token");
        assert!(matches!(
            verifier.verify(&foreign).await,
            Err(OidcError::UnknownKey(_))
        ));
        // A shared-secret token is refused before any key is looked at.
        let hs = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "alice", "aud": "api://strato", "iss": "https://idp.test/", "exp": now() + 600}),
            &jsonwebtoken::EncodingKey::from_secret(b"guessable"),
        )
        .expect("token");
        assert!(matches!(
            verifier.verify(&hs).await,
            Err(OidcError::Algorithm(Algorithm::HS256))
        ));
        let none = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9.";
        assert!(matches!(
            verifier.verify(none).await,
            Err(OidcError::NotJwt(_))
        ));
        assert!(matches!(
            verifier.verify(&"a.b.".repeat(5_000)).await,
            Err(OidcError::TooLong)
        ));
    }

    #[test]
    fn only_https_or_loopback_http_is_fetched() {
        assert!(fetchable("https://login.example.com/tenant/v2.0"));
        assert!(fetchable("http://127.0.0.1:5556/dex"));
        assert!(fetchable("http://localhost:8080"));
        assert!(fetchable("http://[::1]:8080/x"));
        assert!(!fetchable("http://issuer.example.com"));
        assert!(!fetchable("ftp://127.0.0.1"));
    }

    #[test]
    fn api_tokens_are_not_jwts() {
        assert!(looks_like_jwt("eyJ.eyJ.sig"));
        assert!(!looks_like_jwt("strato_abcdef"));
    }
}
