//! The identity endpoint for job containers: an HTTP server on the Docker
//! bridge's gateway address that speaks the three protocols Azure SDKs use
//! (REFERENCE.md): Azure ML (`MSI_ENDPOINT` + `secret` header), App Service
//! (`IDENTITY_ENDPOINT` + `X-IDENTITY-HEADER`) and IMDS
//! (`/metadata/identity/oauth2/token` + `Metadata: true`, the caller known
//! by its container's address).
//!
//! **Architecture invariant:** every job attempt has its own secret, known
//! only to its container; a request without a live attempt's secret (or,
//! for IMDS, from an address that is not a live attempt's container) gets
//! no token. The control plane checks again that the attempt runs on this
//! node and that the identity belongs to the job's cluster.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};

use axum::Router;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use strato_proto::v1::{self, identity_service_client::IdentityServiceClient};
use strato_runtime::{Clock, SystemClock};
use tonic::transport::Channel;

/// A token is used from the cache until this many seconds before it expires.
const REFRESH_MARGIN_SECONDS: i64 = 300;

/// How long an IMDS caller whose address is not known waits while
/// containers that started have their addresses read (a job that asks for
/// a token as soon as it starts may ask before its agent has read its
/// address from the engine).
const ADDRESS_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The attempt a secret belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptIdentity {
    pub job_id: String,
    pub attempt: u32,
}

/// The agent's identity state: live attempts' secrets, their containers'
/// addresses, the way to the control plane, and cached tokens, which expire
/// by its clock.
pub struct Vending {
    clock: Arc<dyn Clock>,
    secrets: Mutex<HashMap<String, AttemptIdentity>>,
    addresses: Mutex<HashMap<IpAddr, String>>,
    control: RwLock<Option<(Channel, String)>>,
    /// By (job, attempt, identity as named, resource): a token is served
    /// from the cache only to the attempt the control plane issued it to.
    cache: Mutex<HashMap<(String, u32, String, String), v1::AccessToken>>,
    /// The host names of multi-node attempts' gangs, by rank.
    gangs: Mutex<HashMap<(String, u32), Vec<String>>>,
    /// Started containers whose addresses are being read
    /// ([`Vending::expect_address`]), and the signal that one was.
    reading_addresses: std::sync::atomic::AtomicUsize,
    address_read: tokio::sync::Notify,
}

/// A started container's address is being read: IMDS callers not known
/// yet wait for it ([`ADDRESS_WAIT`]) rather than be refused at once. Done
/// when dropped.
pub struct AddressPending(Arc<Vending>);

impl Drop for AddressPending {
    fn drop(&mut self) {
        self.0
            .reading_addresses
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        self.0.address_read.notify_waiters();
    }
}

/// On the system clock.
impl Default for Vending {
    fn default() -> Self {
        Vending::new(Arc::new(SystemClock))
    }
}

impl Vending {
    /// Empty state; tokens' expiry is read on `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Vending {
            clock,
            secrets: Mutex::default(),
            addresses: Mutex::default(),
            control: RwLock::default(),
            cache: Mutex::default(),
            gangs: Mutex::default(),
            reading_addresses: std::sync::atomic::AtomicUsize::new(0),
            address_read: tokio::sync::Notify::new(),
        }
    }

    /// A container started and its address is being read; IMDS callers
    /// wait for it until the returned guard goes.
    pub fn expect_address(self: &Arc<Self>) -> AddressPending {
        self.reading_addresses
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        AddressPending(self.clone())
    }

    /// The attempt of the container at `ip`; while addresses of started
    /// containers are being read, waits for them (at most `wait`).
    async fn attempt_at(&self, ip: IpAddr, wait: std::time::Duration) -> Option<AttemptIdentity> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Made before the checks, so a read that ends in between wakes
            // it; the count is read before the address, so a read that
            // admits it and ends in between is seen in the address.
            let read = self.address_read.notified();
            let reading = self
                .reading_addresses
                .load(std::sync::atomic::Ordering::SeqCst);
            if let Some(attempt) = self.attempt_for_address(ip) {
                return Some(attempt);
            }
            if reading == 0 {
                return None;
            }
            tokio::time::timeout_at(deadline, read).await.ok()?;
        }
    }

    /// Unix seconds, by this endpoint's clock.
    fn now(&self) -> i64 {
        self.clock.now_ms().div_euclid(1000)
    }

    /// A fresh secret for an attempt.
    pub fn new_secret() -> String {
        format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        )
    }

    /// The attempt's container runs: its secret (and address) are accepted.
    pub fn admit(&self, secret: &str, attempt: AttemptIdentity, ip: Option<IpAddr>) {
        if let Ok(mut s) = self.secrets.lock() {
            s.insert(secret.to_owned(), attempt);
        }
        if let (Some(ip), Ok(mut a)) = (ip, self.addresses.lock()) {
            a.insert(ip, secret.to_owned());
        }
    }

    /// The host names of a multi-node attempt's gang, by rank, for the
    /// launcher's remote commands.
    pub fn set_gang(&self, job_id: &str, attempt: u32, hosts: Vec<String>) {
        if let Ok(mut g) = self.gangs.lock() {
            g.insert((job_id.to_owned(), attempt), hosts);
        }
    }

    /// The gang of an attempt, if it has one.
    pub fn gang_hosts(&self, attempt: &AttemptIdentity) -> Option<Vec<String>> {
        self.gangs
            .lock()
            .ok()?
            .get(&(attempt.job_id.clone(), attempt.attempt))
            .cloned()
    }

    /// The attempt ended: its secret is refused from now on.
    pub fn revoke(&self, job_id: &str, attempt: u32) {
        if let Ok(mut g) = self.gangs.lock() {
            g.remove(&(job_id.to_owned(), attempt));
        }
        let mut revoked = Vec::new();
        if let Ok(mut s) = self.secrets.lock() {
            s.retain(|secret, a| {
                let keep = !(a.job_id == job_id && a.attempt == attempt);
                if !keep {
                    revoked.push(secret.clone());
                }
                keep
            });
        }
        if let Ok(mut a) = self.addresses.lock() {
            a.retain(|_, secret| !revoked.contains(secret));
        }
        if let Ok(mut c) = self.cache.lock() {
            c.retain(|(job, a, _, _), _| !(job == job_id && *a == attempt));
        }
    }

    /// The attempt's container stopped: its address may go to another
    /// container, so IMDS callers from it are no longer this attempt.
    pub fn forget_address(&self, job_id: &str, attempt: u32) {
        let secrets: Vec<String> = self
            .secrets
            .lock()
            .map(|s| {
                s.iter()
                    .filter(|(_, a)| a.job_id == job_id && a.attempt == attempt)
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default();
        if let Ok(mut a) = self.addresses.lock() {
            a.retain(|_, secret| !secrets.contains(secret));
        }
    }

    /// The session's channel and session token, for token requests.
    pub fn connected(&self, control: Option<(Channel, String)>) {
        // Without a session the control plane cannot vouch for any attempt.
        if control.is_none()
            && let Ok(mut c) = self.cache.lock()
        {
            c.clear();
        }
        if let Ok(mut c) = self.control.write() {
            *c = control;
        }
    }

    /// A token of the default identity for Azure Storage, for the agent's
    /// own transfers of an attempt's inputs and outputs.
    pub async fn storage_token(&self, attempt: &AttemptIdentity) -> Result<String, Refusal> {
        let query = TokenQuery {
            resource: crate::storage::STORAGE_RESOURCE.to_owned(),
            ..TokenQuery::default()
        };
        self.token(attempt, &query, self.now())
            .await
            .map(|t| t.access_token)
    }

    /// A token of the cluster's `identity` (`default`, or a user-assigned
    /// identity's resource id) for the container registry resource, for the
    /// agent's own login before an attempt's pull.
    pub async fn registry_token(
        &self,
        attempt: &AttemptIdentity,
        identity: &str,
    ) -> Result<String, Refusal> {
        let query = TokenQuery {
            resource: crate::registry::ACR_RESOURCE.to_owned(),
            mi_res_id: (identity != strato_core::registry::DEFAULT_IDENTITY)
                .then(|| identity.to_owned()),
            ..TokenQuery::default()
        };
        self.token(attempt, &query, self.now())
            .await
            .map(|t| t.access_token)
    }

    pub(crate) fn attempt_for_secret(&self, secret: &str) -> Option<AttemptIdentity> {
        self.secrets.lock().ok()?.get(secret).cloned()
    }

    fn attempt_for_address(&self, ip: IpAddr) -> Option<AttemptIdentity> {
        let secret = self.addresses.lock().ok()?.get(&ip).cloned()?;
        self.attempt_for_secret(&secret)
    }

    async fn token(
        &self,
        attempt: &AttemptIdentity,
        query: &TokenQuery,
        now: i64,
    ) -> Result<v1::AccessToken, Refusal> {
        let selector = query.selector();
        // Per identity (as named) and resource; a node serves one cluster.
        let key = (
            attempt.job_id.clone(),
            attempt.attempt,
            selector.clone(),
            query.resource.clone(),
        );
        if let Some(cached) = self.cache.lock().ok().and_then(|c| c.get(&key).cloned())
            && cached.expires_on - REFRESH_MARGIN_SECONDS > now
        {
            return Ok(cached);
        }
        let (channel, session) = self
            .control
            .read()
            .ok()
            .and_then(|c| c.clone())
            .ok_or_else(|| {
                Refusal::unavailable("the node is not connected to the control plane; try again")
            })?;
        let mut request = tonic::Request::new(v1::GetTokenRequest {
            job_id: attempt.job_id.clone(),
            attempt: attempt.attempt,
            resource: query.resource.clone(),
            client_id: query.client_id().unwrap_or_default(),
            principal_id: query.principal_id().unwrap_or_default(),
            mi_res_id: query.mi_res_id.clone().unwrap_or_default(),
        });
        let bearer = format!("Bearer {session}")
            .parse()
            .map_err(|_| Refusal::unavailable("bad session token"))?;
        request.metadata_mut().insert("authorization", bearer);
        let token = IdentityServiceClient::new(channel)
            .get_token(request)
            .await
            .map_err(Refusal::from_status)?
            .into_inner();
        if let Ok(mut c) = self.cache.lock() {
            c.insert(key, token.clone());
        }
        Ok(token)
    }
}

/// Query parameters of all three protocols.
#[derive(Debug, Default, serde::Deserialize)]
pub struct TokenQuery {
    #[serde(default)]
    resource: String,
    clientid: Option<String>,
    client_id: Option<String>,
    principal_id: Option<String>,
    object_id: Option<String>,
    /// `mi_res_id` (App Service) or `msi_res_id` (IMDS).
    #[serde(alias = "msi_res_id")]
    mi_res_id: Option<String>,
}

impl TokenQuery {
    fn client_id(&self) -> Option<String> {
        self.client_id
            .clone()
            .or_else(|| self.clientid.clone())
            .filter(|c| !c.is_empty())
    }

    fn principal_id(&self) -> Option<String> {
        self.principal_id
            .clone()
            .or_else(|| self.object_id.clone())
            .filter(|c| !c.is_empty())
    }

    /// Every protocol needs `resource`.
    fn require_resource(&self) -> Result<(), Refusal> {
        if self.resource.is_empty() {
            return Err(Refusal::bad_request(
                "Required query variable 'resource' is missing",
            ));
        }
        Ok(())
    }

    fn selector(&self) -> String {
        match (self.client_id(), self.principal_id(), &self.mi_res_id) {
            (Some(c), _, _) => format!("client:{}", c.to_ascii_lowercase()),
            (_, Some(p), _) => format!("principal:{}", p.to_ascii_lowercase()),
            (_, _, Some(r)) if !r.is_empty() => format!("resource:{}", r.to_ascii_lowercase()),
            _ => "default".to_owned(),
        }
    }
}

/// An error answer in the protocols' JSON shape; as an error (the agent's
/// own storage token), its description.
#[derive(Debug, thiserror::Error)]
#[error("{description}")]
pub struct Refusal {
    status: StatusCode,
    error: &'static str,
    description: String,
}

impl Refusal {
    fn bad_request(description: impl Into<String>) -> Self {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            error: "invalid_request",
            description: description.into(),
        }
    }

    fn unauthorized(description: impl Into<String>) -> Self {
        Refusal {
            status: StatusCode::UNAUTHORIZED,
            error: "unauthorized_client",
            description: description.into(),
        }
    }

    fn unavailable(description: impl Into<String>) -> Self {
        Refusal {
            status: StatusCode::SERVICE_UNAVAILABLE,
            error: "temporarily_unavailable",
            description: description.into(),
        }
    }

    fn from_status(s: tonic::Status) -> Self {
        match s.code() {
            tonic::Code::NotFound
            | tonic::Code::FailedPrecondition
            | tonic::Code::InvalidArgument => Refusal::bad_request(s.message().to_owned()),
            tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => {
                Refusal::unauthorized(s.message().to_owned())
            }
            _ => Refusal::unavailable(s.message().to_owned()),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        // Never the secret: the description names no header values.
        tracing::warn!(status = %self.status, error = self.error, description = %self.description, "identity request refused");
        (
            self.status,
            axum::Json(json!({ "error": self.error, "error_description": self.description })),
        )
            .into_response()
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Azure ML (`secret`) and App Service (`X-IDENTITY-HEADER`) protocols.
async fn msi_token(
    State(vending): State<Arc<Vending>>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
) -> Result<Response, Refusal> {
    let (secret, app_service) = match (
        header(&headers, "secret"),
        header(&headers, "x-identity-header"),
    ) {
        (Some(s), _) => (s, false),
        (None, Some(s)) => (s, true),
        (None, None) => {
            return Err(Refusal::bad_request(
                "Required metadata header not specified: send `secret: $MSI_SECRET` or `X-IDENTITY-HEADER: $IDENTITY_HEADER`",
            ));
        }
    };
    query.require_resource()?;
    let attempt = vending
        .attempt_for_secret(secret)
        .ok_or_else(|| Refusal::unauthorized("the secret does not belong to a running job"))?;
    let token = vending.token(&attempt, &query, vending.now()).await?;
    // Azure ML answers `expires_on` as a number; App Service (2019-08-01) as
    // a string of the same seconds, which Azure's Rust SDK insists on.
    let expires_on = if app_service {
        json!(token.expires_on.to_string())
    } else {
        json!(token.expires_on)
    };
    Ok(axum::Json(json!({
        "access_token": token.access_token,
        "expires_on": expires_on,
        "resource": token.resource,
        "token_type": token.token_type,
        "client_id": token.client_id,
    }))
    .into_response())
}

/// The IMDS protocol: the caller is known by its container's address.
async fn imds_token(
    State(vending): State<Arc<Vending>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
) -> Result<Response, Refusal> {
    if header(&headers, "metadata").is_none_or(|v| !v.eq_ignore_ascii_case("true")) {
        return Err(Refusal::bad_request(
            "Required metadata header not specified",
        ));
    }
    query.require_resource()?;
    let attempt = vending
        .attempt_at(peer.ip(), ADDRESS_WAIT)
        .await
        .ok_or_else(|| {
            Refusal::unauthorized(format!("{} is not a running job's container", peer.ip()))
        })?;
    let token = vending.token(&attempt, &query, vending.now()).await?;
    let now = vending.now();
    Ok(axum::Json(json!({
        "access_token": token.access_token,
        "refresh_token": "",
        "expires_in": (token.expires_on - now).max(0).to_string(),
        "expires_on": token.expires_on.to_string(),
        "not_before": token.not_before.to_string(),
        "resource": token.resource,
        "token_type": token.token_type,
        "client_id": token.client_id,
    }))
    .into_response())
}

/// Where job containers reach the endpoint, and the running server.
pub struct Endpoint {
    pub base: String,
}

impl Endpoint {
    /// The variables a job container gets for its attempt's secret.
    pub fn environment(&self, secret: &str, default_client_id: &str) -> Vec<(String, String)> {
        let token_url = format!("{}/msi/token", self.base);
        let mut env = vec![
            ("MSI_ENDPOINT".to_owned(), token_url.clone()),
            ("MSI_SECRET".to_owned(), secret.to_owned()),
            ("IDENTITY_ENDPOINT".to_owned(), token_url),
            ("IDENTITY_HEADER".to_owned(), secret.to_owned()),
            // azure-identity's IMDS credential honours this host override.
            (
                "AZURE_POD_IDENTITY_AUTHORITY_HOST".to_owned(),
                self.base.clone(),
            ),
            (
                "STRATO_IMDS_ENDPOINT".to_owned(),
                format!("{}/metadata/identity/oauth2/token", self.base),
            ),
        ];
        if !default_client_id.is_empty() {
            env.push((
                "DEFAULT_IDENTITY_CLIENT_ID".to_owned(),
                default_client_id.to_owned(),
            ));
            env.push(("AZURE_CLIENT_ID".to_owned(), default_client_id.to_owned()));
        }
        env
    }
}

/// Binds the endpoint and serves it in the background.
/// `extra` are more routes on the same port (the gang's exec relay).
pub async fn serve(
    vending: Arc<Vending>,
    extra: Router,
    listen: SocketAddr,
) -> std::io::Result<Endpoint> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/msi/token", get(msi_token))
        .route("/metadata/identity/oauth2/token", get(imds_token))
        .with_state(vending)
        .merge(extra);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        {
            tracing::error!(error = %e, "identity endpoint stopped");
        }
    });
    tracing::info!(%addr, "identity endpoint listening");
    Ok(Endpoint {
        base: format!("http://{addr}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_imds_caller_waits_while_addresses_are_read_and_no_longer() {
        let v = Arc::new(Vending::default());
        let attempt = AttemptIdentity {
            job_id: "j".into(),
            attempt: 1,
        };
        let (ip, stranger): (IpAddr, IpAddr) = (
            "172.17.0.5".parse().expect("ip"),
            "172.17.0.9".parse().expect("ip"),
        );
        let patience = std::time::Duration::from_secs(600);
        // Nothing being read: refused at once, however long it may wait.
        assert_eq!(v.attempt_at(ip, patience).await, None);

        let pending = v.expect_address();
        let caller = {
            let v = v.clone();
            tokio::spawn(async move { v.attempt_at(ip, patience).await })
        };
        let other = {
            let v = v.clone();
            tokio::spawn(async move { v.attempt_at(stranger, patience).await })
        };
        v.admit("s1", attempt.clone(), Some(ip));
        drop(pending);
        assert_eq!(caller.await.expect("caller"), Some(attempt));
        // The read ended without its address: refused then.
        assert_eq!(other.await.expect("other"), None);

        // A read that never ends keeps a stranger waiting no longer than
        // the wait.
        let _stuck = v.expect_address();
        let short = std::time::Duration::from_millis(20);
        assert_eq!(v.attempt_at(stranger, short).await, None);
    }

    #[test]
    fn secrets_are_refused_once_the_attempt_ends() {
        let v = Vending::default();
        let attempt = AttemptIdentity {
            job_id: "j".into(),
            attempt: 1,
        };
        let ip: IpAddr = "172.17.0.5".parse().expect("ip");
        v.admit("s1", attempt.clone(), Some(ip));
        assert_eq!(v.attempt_for_secret("s1"), Some(attempt.clone()));
        assert_eq!(v.attempt_for_address(ip), Some(attempt));
        v.revoke("j", 1);
        assert_eq!(v.attempt_for_secret("s1"), None);
        assert_eq!(v.attempt_for_address(ip), None);
    }

    /// A cached token is served until [`REFRESH_MARGIN_SECONDS`] before it
    /// expires by the endpoint's clock; after that the control plane is asked
    /// again (here: not connected, so the request is refused).
    #[tokio::test]
    async fn cached_tokens_expire_by_the_clock() {
        let clock = Arc::new(strato_runtime::ManualClock::starting_at(1_000_000));
        let v = Vending::new(clock.clone());
        let attempt = AttemptIdentity {
            job_id: "j".into(),
            attempt: 1,
        };
        let expires_on = 1_000 + REFRESH_MARGIN_SECONDS + 60;
        if let Ok(mut c) = v.cache.lock() {
            c.insert(
                (
                    "j".into(),
                    1,
                    "default".into(),
                    crate::storage::STORAGE_RESOURCE.into(),
                ),
                v1::AccessToken {
                    access_token: "cached".into(),
                    expires_on,
                    ..v1::AccessToken::default()
                },
            );
        }
        assert_eq!(
            v.storage_token(&attempt).await.expect("cached").as_str(),
            "cached"
        );
        clock.advance(std::time::Duration::from_secs(59));
        assert_eq!(
            v.storage_token(&attempt)
                .await
                .expect("still cached")
                .as_str(),
            "cached"
        );
        clock.advance(std::time::Duration::from_secs(1));
        let refused = v.storage_token(&attempt).await.expect_err("expired");
        assert!(refused.to_string().contains("not connected"), "{refused}");
    }

    #[test]
    fn every_job_gets_the_documented_variables() {
        let e = Endpoint {
            base: "http://172.17.0.1:4000".into(),
        };
        let env: HashMap<String, String> = e.environment("sec", "cid").into_iter().collect();
        assert_eq!(env["MSI_ENDPOINT"], "http://172.17.0.1:4000/msi/token");
        assert_eq!(env["MSI_SECRET"], "sec");
        assert_eq!(env["IDENTITY_HEADER"], "sec");
        assert_eq!(env["DEFAULT_IDENTITY_CLIENT_ID"], "cid");
        assert_eq!(env["AZURE_CLIENT_ID"], "cid");
        assert!(
            !e.environment("sec", "")
                .iter()
                .any(|(k, _)| k == "AZURE_CLIENT_ID")
        );
    }
}
