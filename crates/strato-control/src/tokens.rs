//! The token issuer: access tokens for clusters' managed identities, as JWTs
//! signed with the control plane's key (ES256), and the OIDC discovery
//! document and JWKS that let anyone verify them.
//!
//! The key lives in `DATA_DIR/token-signing-key.pem` (PKCS#8, mode 0600),
//! created on first start. Rotation: stop the control plane, rename the file
//! to `token-signing-key.previous.pem`, start it again. A new key signs from
//! then on, and the JWKS publishes both, so tokens signed with the old key
//! stay verifiable until they expire; remove the previous file after the
//! token lifetime has passed.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::SecretKey;
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use p256::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _, LineEnding};
use serde::Serialize;
use sha2::{Digest, Sha256};
use strato_core::identity::Identity;

pub const KEY_FILE: &str = "token-signing-key.pem";
pub const PREVIOUS_KEY_FILE: &str = "token-signing-key.previous.pem";
/// Token lifetime: one hour, as Entra ID's managed-identity tokens.
pub const LIFETIME_SECONDS: i64 = 3600;
/// The shortest lifetime `--token-lifetime` allows.
pub const MIN_LIFETIME_SECONDS: u32 = 60;
/// The longest (Entra ID's own tokens live 60 to 90 minutes; a day at most).
pub const MAX_LIFETIME_SECONDS: u32 = 86_400;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("signing key {path}: {message}")]
    Key { path: String, message: String },
    #[error("signing a token: {0}")]
    Sign(String),
}

/// A public key as a JWK (RFC 7517), for the JWKS.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PublicJwk {
    pub kty: &'static str,
    pub crv: &'static str,
    pub x: String,
    pub y: String,
    pub kid: String,
    #[serde(rename = "use")]
    pub use_: &'static str,
    pub alg: &'static str,
}

fn public_jwk(key: &SecretKey) -> PublicJwk {
    let point = key.public_key().to_encoded_point(false);
    let (x, y) = (
        point.x().map(|x| x.to_vec()).unwrap_or_default(),
        point.y().map(|y| y.to_vec()).unwrap_or_default(),
    );
    let digest = Sha256::digest([x.as_slice(), y.as_slice()].concat());
    PublicJwk {
        kty: "EC",
        crv: "P-256",
        x: URL_SAFE_NO_PAD.encode(&x),
        y: URL_SAFE_NO_PAD.encode(&y),
        kid: URL_SAFE_NO_PAD.encode(&digest[..12]),
        use_: "sig",
        alg: "ES256",
    }
}

fn read_key(path: &Path) -> Result<SecretKey, TokenError> {
    let err = |message: String| TokenError::Key {
        path: path.display().to_string(),
        message,
    };
    let pem = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    SecretKey::from_pkcs8_pem(&pem).map_err(|e| err(format!("not a PKCS#8 P-256 key: {e}")))
}

/// What a token says.
#[derive(Debug, Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    oid: &'a str,
    appid: &'a str,
    azp: &'a str,
    tid: &'a str,
    iat: i64,
    nbf: i64,
    exp: i64,
    xms_mirid: &'a str,
}

/// An issued access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    pub access_token: String,
    pub not_before: i64,
    pub expires_on: i64,
    pub resource: String,
    pub client_id: String,
}

pub struct TokenIssuer {
    issuer: String,
    tenant: String,
    /// Seconds an issued token is valid.
    lifetime: i64,
    key: EncodingKey,
    jwk: PublicJwk,
    previous: Option<PublicJwk>,
}

impl TokenIssuer {
    /// Loads the signing key from the data directory, creating it on first
    /// start.
    pub fn load_or_create(
        data_dir: &Path,
        issuer: String,
        tenant: String,
    ) -> Result<Self, TokenError> {
        let path = data_dir.join(KEY_FILE);
        let err = |message: String| TokenError::Key {
            path: path.display().to_string(),
            message,
        };
        if !path.exists() {
            let key = SecretKey::random(&mut rand_core::OsRng);
            let pem = key
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| err(e.to_string()))?;
            crate::data_dir::write_new_private(&path, pem.as_bytes())
                .map_err(|e| err(e.to_string()))?;
            tracing::info!(path = %path.display(), "created the token signing key");
        }
        let secret = read_key(&path)?;
        let pem = secret
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| err(e.to_string()))?;
        let key = EncodingKey::from_ec_pem(pem.as_bytes()).map_err(|e| err(e.to_string()))?;
        let previous_path = data_dir.join(PREVIOUS_KEY_FILE);
        let previous = if previous_path.exists() {
            Some(public_jwk(&read_key(&previous_path)?))
        } else {
            None
        };
        Ok(TokenIssuer {
            issuer,
            tenant,
            lifetime: LIFETIME_SECONDS,
            key,
            jwk: public_jwk(&secret),
            previous,
        })
    }

    /// Issued tokens are valid for `seconds` (`--token-lifetime`).
    pub fn with_lifetime(mut self, seconds: i64) -> Self {
        self.lifetime = seconds;
        self
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// An access token for `identity` and `resource` (the audience), valid
    /// from `now` (seconds) for an hour.
    pub fn issue(
        &self,
        identity: &Identity,
        resource: &str,
        now: i64,
    ) -> Result<IssuedToken, TokenError> {
        let aud = resource.trim_end_matches('/');
        let claims = Claims {
            iss: &self.issuer,
            aud,
            sub: &identity.principal_id,
            oid: &identity.principal_id,
            appid: &identity.client_id,
            azp: &identity.client_id,
            tid: &self.tenant,
            iat: now,
            nbf: now - 300,
            exp: now + self.lifetime,
            xms_mirid: &identity.resource_id,
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.jwk.kid.clone());
        let access_token = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| TokenError::Sign(e.to_string()))?;
        Ok(IssuedToken {
            access_token,
            not_before: claims.nbf,
            expires_on: claims.exp,
            resource: resource.to_owned(),
            client_id: identity.client_id.clone(),
        })
    }

    /// An assertion of this control plane for workload identity federation:
    /// `sub` and `aud` as given, valid ten minutes from `now` (seconds).
    pub fn assertion(&self, sub: &str, aud: &str, now: i64) -> Result<String, TokenError> {
        #[derive(serde::Serialize)]
        struct Assertion<'a> {
            iss: &'a str,
            sub: &'a str,
            aud: &'a str,
            iat: i64,
            nbf: i64,
            exp: i64,
            jti: String,
        }
        let claims = Assertion {
            iss: &self.issuer,
            sub,
            aud,
            iat: now,
            nbf: now - 60,
            exp: now + 600,
            jti: uuid::Uuid::new_v4().to_string(),
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.jwk.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| TokenError::Sign(e.to_string()))
    }

    /// The JWKS: the current key, and the previous one while it exists.
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<&PublicJwk> = std::iter::once(&self.jwk)
            .chain(self.previous.as_ref())
            .collect();
        serde_json::json!({ "keys": keys })
    }

    /// The OIDC discovery document; `base` is where this control plane's
    /// HTTP port is reached.
    pub fn discovery(&self, base: &str) -> serde_json::Value {
        serde_json::json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{}/jwks", base.trim_end_matches('/')),
            "id_token_signing_alg_values_supported": ["ES256"],
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "claims_supported": ["iss", "aud", "sub", "oid", "appid", "azp", "tid", "iat", "nbf", "exp"],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strato_core::identity::IdentityKind;

    fn identity() -> Identity {
        Identity {
            kind: IdentityKind::SystemAssigned,
            resource_id: "clusters/cpu".into(),
            client_id: "11111111-1111-1111-1111-111111111111".into(),
            principal_id: "22222222-2222-2222-2222-222222222222".into(),
        }
    }

    fn verify(jwks: &serde_json::Value, token: &str, aud: &str) -> serde_json::Value {
        let set: jsonwebtoken::jwk::JwkSet =
            serde_json::from_value(jwks.clone()).expect("jwks parses");
        let kid = jsonwebtoken::decode_header(token)
            .expect("header")
            .kid
            .expect("kid");
        let jwk = set.find(&kid).expect("key in jwks");
        let mut v = jsonwebtoken::Validation::new(Algorithm::ES256);
        v.set_audience(&[aud]);
        v.set_issuer(&["https://sts.windows.net/t/"]);
        jsonwebtoken::decode::<serde_json::Value>(
            token,
            &jsonwebtoken::DecodingKey::from_jwk(jwk).expect("decoding key"),
            &v,
        )
        .expect("token verifies")
        .claims
    }

    #[test]
    fn tokens_verify_against_the_jwks_and_the_key_survives_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let issuer = TokenIssuer::load_or_create(
            dir.path(),
            "https://sts.windows.net/t/".into(),
            "t".into(),
        )
        .expect("issuer");
        let now = jsonwebtoken::get_current_timestamp() as i64;
        let token = issuer
            .issue(&identity(), "https://storage.azure.com/", now)
            .expect("token");
        let claims = verify(
            &issuer.jwks(),
            &token.access_token,
            "https://storage.azure.com",
        );
        assert_eq!(claims["oid"], "22222222-2222-2222-2222-222222222222");
        assert_eq!(claims["appid"], "11111111-1111-1111-1111-111111111111");
        assert_eq!(claims["tid"], "t");
        assert_eq!(token.expires_on - now, LIFETIME_SECONDS);

        let mode = std::fs::metadata(dir.path().join(KEY_FILE)).map(|m| {
            use std::os::unix::fs::PermissionsExt as _;
            m.permissions().mode() & 0o777
        });
        assert_eq!(mode.expect("key file"), 0o600);
        let again = TokenIssuer::load_or_create(
            dir.path(),
            "https://sts.windows.net/t/".into(),
            "t".into(),
        )
        .expect("reload");
        assert_eq!(again.jwks(), issuer.jwks(), "same key after a restart");
        verify(
            &again.jwks(),
            &token.access_token,
            "https://storage.azure.com",
        );
    }

    #[test]
    fn rotation_keeps_old_tokens_verifiable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = TokenIssuer::load_or_create(
            dir.path(),
            "https://sts.windows.net/t/".into(),
            "t".into(),
        )
        .expect("issuer");
        let now = jsonwebtoken::get_current_timestamp() as i64;
        let token = old.issue(&identity(), "api://x", now).expect("token");
        std::fs::rename(
            dir.path().join(KEY_FILE),
            dir.path().join(PREVIOUS_KEY_FILE),
        )
        .expect("rotate");
        let new = TokenIssuer::load_or_create(
            dir.path(),
            "https://sts.windows.net/t/".into(),
            "t".into(),
        )
        .expect("new issuer");
        assert_ne!(new.jwk, old.jwk);
        assert_eq!(new.jwks()["keys"].as_array().map(Vec::len), Some(2));
        verify(&new.jwks(), &token.access_token, "api://x");
    }
}
