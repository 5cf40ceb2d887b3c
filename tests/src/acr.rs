//! A stand-in for Azure Container Registry's token service, which the test
//! controls, in front of Debian's `docker-registry` with token auth:
//!
//! - `POST /oauth2/exchange` (form: `grant_type=access_token`, `service`,
//!   `tenant`, `access_token`): takes an identity's access token whose
//!   audience is the container registry resource and whose `appid` is the
//!   client id the test expects, and answers a refresh token (as ACR does);
//! - `GET /oauth2/token?service=…&scope=repository:NAME:pull` with basic
//!   auth `00000000-0000-0000-0000-000000000000:REFRESH_TOKEN` (what the
//!   Docker engine sends, logged in with the refresh token) or
//!   `admin:ADMIN_PASSWORD` (the test's own pushes): answers a registry
//!   token, a JWT signed with a key whose certificate is the registry's
//!   `rootcertbundle` and rides in the JWT's `x5c` header, valid for
//!   [`REGISTRY_TOKEN_SECONDS`].
//!
//! It serves HTTPS on the Docker bridge's gateway with a certificate of the
//! test's CA, which the engine trusts through `/etc/docker/certs.d/`
//! (removed when it is dropped). What it was asked is counted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::Engine as _;

use crate::registry::{TestCa, self_signed};

/// The registry tokens' issuer, as the registry's configuration names it.
pub const ISSUER: &str = "strato-test-acr";
/// The user the test pushes as.
pub const ADMIN: &str = "admin";
pub const ADMIN_PASSWORD: &str = "admin-push-password";
/// The user a refresh token logs in as.
pub const REFRESH_TOKEN_USER: &str = "00000000-0000-0000-0000-000000000000";
/// How long a registry token is good for: short, so a test sees one expire.
pub const REGISTRY_TOKEN_SECONDS: u64 = 3;
/// The audience an identity's token must have.
pub const ACR_RESOURCE: &str = "https://containerregistry.azure.net";

#[derive(Default)]
struct Ledger {
    /// Refresh tokens issued, with the client id they were issued for.
    refresh: HashMap<String, String>,
    /// Exchanges refused, with why.
    refused: Vec<String>,
    /// Registry tokens issued to refresh-token logins, with their expiry.
    pull_tokens: Vec<u64>,
}

struct Service {
    expected_client_id: Mutex<String>,
    ledger: Mutex<Ledger>,
    key: jsonwebtoken::EncodingKey,
    x5c: String,
}

/// The running stand-in; stops with the test's runtime.
pub struct AcrTokens {
    addr: SocketAddr,
    service: Arc<Service>,
    certificate: PathBuf,
    certs_d: PathBuf,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl AcrTokens {
    /// Starts it (inside a tokio runtime with more than one thread: the test
    /// blocks on commands while nodes call it).
    pub async fn start(dir: &Path, ca: &TestCa) -> anyhow::Result<AcrTokens> {
        let host = crate::registry::bridge_gateway()?;
        let (crt, key) = ca.issue(&host, "acr-tokens")?;
        // The key registry tokens are signed with, and its self-signed
        // certificate: the registry's trust anchor for tokens.
        let signing = dir.join("acr-signing");
        std::fs::create_dir_all(&signing)?;
        let (signing_key, signing_crt) = (signing.join("key.pem"), signing.join("crt.pem"));
        self_signed(&signing_key, &signing_crt, "strato test token signer")?;
        let der = pem_body(&std::fs::read_to_string(&signing_crt)?)?;
        let service = Arc::new(Service {
            expected_client_id: Mutex::new(String::new()),
            ledger: Mutex::new(Ledger::default()),
            key: jsonwebtoken::EncodingKey::from_ec_pem(&std::fs::read(&signing_key)?)
                .context("the signing key")?,
            x5c: der,
        });
        let router = Router::new()
            .route("/oauth2/exchange", post(exchange))
            .route("/oauth2/token", get(token))
            .with_state(service.clone());
        let tls = strato_runtime::https::server_config(
            &std::fs::read_to_string(&crt)?,
            &std::fs::read_to_string(&key)?,
            &std::fs::read_to_string(ca.certificate())?,
        )?;
        let listener = tokio::net::TcpListener::bind(format!("{host}:0")).await?;
        let addr = listener.local_addr()?;
        let https = strato_runtime::https::HttpsListener::new(
            listener,
            Some(Arc::new(strato_runtime::https::ServerTls::fixed(tls))),
        )?;
        tokio::spawn(async move {
            let _ = axum::serve(https, router).await;
        });
        let certs_d = Path::new("/etc/docker/certs.d").join(addr.to_string());
        std::fs::create_dir_all(&certs_d)?;
        std::fs::copy(ca.certificate(), certs_d.join("ca.crt"))?;
        Ok(AcrTokens {
            addr,
            service,
            certificate: signing_crt,
            certs_d,
        })
    }

    /// The registry's `auth.token.realm`.
    pub fn realm(&self) -> String {
        format!("https://{}/oauth2/token", self.addr)
    }

    /// The registry's `auth.token.rootcertbundle`.
    pub fn signing_certificate(&self) -> &Path {
        &self.certificate
    }

    /// Exchanges accept tokens of this client id only.
    pub fn expect_client_id(&self, client_id: &str) {
        if let Ok(mut c) = self.service.expected_client_id.lock() {
            *c = client_id.to_owned();
        }
    }

    /// Refresh tokens issued so far.
    pub fn exchanges(&self) -> usize {
        self.service.ledger.lock().map_or(0, |l| l.refresh.len())
    }

    /// Why exchanges were refused.
    pub fn refused(&self) -> Vec<String> {
        self.service
            .ledger
            .lock()
            .map(|l| l.refused.clone())
            .unwrap_or_default()
    }

    /// The expiries (Unix seconds) of the registry tokens pulls got.
    pub fn pull_tokens(&self) -> Vec<u64> {
        self.service
            .ledger
            .lock()
            .map(|l| l.pull_tokens.clone())
            .unwrap_or_default()
    }
}

impl Drop for AcrTokens {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.certs_d);
    }
}

/// The base64 DER of a PEM certificate (what `x5c` carries).
fn pem_body(pem: &str) -> anyhow::Result<String> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    anyhow::ensure!(!body.is_empty(), "not a PEM certificate");
    Ok(body)
}

/// The claims of a JWT, unverified (the stand-in trusts the control plane's
/// tokens as ACR trusts Entra's; what it checks is what they say).
fn claims(token: &str) -> Option<serde_json::Value> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

async fn exchange(
    State(service): State<Arc<Service>>,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, (StatusCode, String)> {
    let refuse = |why: String| {
        if let Ok(mut l) = service.ledger.lock() {
            l.refused.push(why.clone());
        }
        Err((StatusCode::UNAUTHORIZED, why))
    };
    if form.get("grant_type").map(String::as_str) != Some("access_token") {
        return refuse(format!("grant_type {:?}", form.get("grant_type")));
    }
    let Some(claims) = form.get("access_token").and_then(|t| claims(t)) else {
        return refuse("no access_token JWT".into());
    };
    let aud = claims["aud"].as_str().unwrap_or_default();
    if aud.trim_end_matches('/') != ACR_RESOURCE {
        return refuse(format!("audience {aud:?}"));
    }
    let client_id = claims["appid"].as_str().unwrap_or_default().to_owned();
    let expected = service
        .expected_client_id
        .lock()
        .map(|c| c.clone())
        .unwrap_or_default();
    if client_id != expected {
        return refuse(format!("client id {client_id:?}, expected {expected:?}"));
    }
    let refresh = format!(
        "refresh-{}-{}",
        now(),
        service.ledger.lock().map_or(0, |l| l.refresh.len())
    );
    if let Ok(mut l) = service.ledger.lock() {
        l.refresh.insert(refresh.clone(), client_id);
    }
    Ok(Json(serde_json::json!({ "refresh_token": refresh })))
}

async fn token(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, (StatusCode, String)> {
    let basic = headers
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let Some((user, password)) = basic.as_deref().and_then(|b| b.split_once(':')) else {
        return Err((StatusCode::UNAUTHORIZED, "basic auth required".into()));
    };
    let pull_login = user == REFRESH_TOKEN_USER
        && service
            .ledger
            .lock()
            .is_ok_and(|l| l.refresh.contains_key(password));
    let admin = user == ADMIN && password == ADMIN_PASSWORD;
    if !(pull_login || admin) {
        return Err((StatusCode::UNAUTHORIZED, format!("{user} is not known")));
    }
    let actions = if admin {
        vec!["pull", "push"]
    } else {
        vec!["pull"]
    };
    let access: Vec<serde_json::Value> = query
        .get("scope")
        .map(String::as_str)
        .unwrap_or_default()
        .split(' ')
        .filter_map(|scope| {
            let mut parts = scope.split(':');
            let (kind, name) = (parts.next()?, parts.next()?);
            Some(serde_json::json!({ "type": kind, "name": name, "actions": actions }))
        })
        .collect();
    let issued = now();
    let expires = issued + REGISTRY_TOKEN_SECONDS;
    let claims = serde_json::json!({
        "iss": ISSUER,
        "sub": user,
        "aud": query.get("service").cloned().unwrap_or_default(),
        "iat": issued,
        "nbf": issued.saturating_sub(5),
        "exp": expires,
        "jti": format!("{issued}-{}", access.len()),
        "access": access,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.x5c = Some(vec![service.x5c.clone()]);
    let jwt = jsonwebtoken::encode(&header, &claims, &service.key)
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    if pull_login && let Ok(mut l) = service.ledger.lock() {
        l.pull_tokens.push(expires);
    }
    Ok(Json(serde_json::json!({
        "token": jwt,
        "access_token": jwt,
        "expires_in": REGISTRY_TOKEN_SECONDS,
    })))
}
