//! Signing in to the studio through the OIDC issuer (`--oidc-issuer` with
//! `--studio-oidc-client-id`): the authorization code flow with PKCE, as a
//! public client.
//!
//! `GET /studio/login/oidc` makes a `state` and a PKCE verifier, keeps them
//! (at most `MAX_PENDING`, the oldest dropped past it, for `PENDING_FOR`),
//! puts the state in a
//! `__Host-` cookie (`SameSite=Lax`: the issuer's redirect back is a
//! top-level navigation from another site) and sends the browser to the
//! issuer. `GET /studio/login/callback` takes the code only with the state
//! its own cookie holds (so no other site can finish a sign-in in this
//! browser), redeems it with the verifier for an access token of Strato's
//! audience, checks that token as every bearer JWT is checked, and starts
//! a session with it (it ends when the token expires). The session cookie
//! is `SameSite=Strict`, which a browser does not send on the rest of a
//! redirect chain another site started, so the callback answers with a
//! page that moves on to the studio itself.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse as _, Redirect, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::html::{self, Section};
use super::{Shared, html_response, random_id, refusal, same};
use crate::store::Store;

/// The cookie that ties a callback to the browser that started it.
pub const STATE_COOKIE: &str = "__Host-strato_oidc";
/// Sign-ins started and not finished, at most, and for how long each.
pub const MAX_PENDING: usize = 1_000;
pub const PENDING_FOR: Duration = Duration::from_secs(600);

/// Sign-ins under way, by state: the PKCE verifier and when it started.
#[derive(Default)]
pub struct Pending(Mutex<HashMap<String, (String, Instant)>>);

impl Pending {
    /// Keeps a sign-in under way; past `MAX_PENDING`, the oldest is
    /// dropped (whoever started it starts again), so that nobody can keep
    /// others from signing in by starting many.
    fn add(&self, state: String, verifier: String) {
        let now = Instant::now();
        let mut pending = self.0.lock().unwrap_or_else(|e| e.into_inner());
        pending.retain(|_, (_, at)| now.duration_since(*at) < PENDING_FOR);
        if pending.len() >= MAX_PENDING
            && let Some(oldest) = pending
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| k.clone())
        {
            pending.remove(&oldest);
        }
        pending.insert(state, (verifier, now));
    }

    fn take(&self, state: &str) -> Option<String> {
        let (verifier, at) = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(state)?;
        (at.elapsed() < PENDING_FOR).then_some(verifier)
    }
}

fn cookie_of<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Where the issuer sends the browser back: this studio, as the browser
/// reached it (the issuer accepts only the URIs registered for the client).
fn redirect_uri(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1");
    format!("https://{host}/studio/login/callback")
}

fn not_configured() -> Response {
    refusal(
        StatusCode::NOT_FOUND,
        None,
        "signing in through an OIDC issuer is not configured: start the control plane with --oidc-issuer and --studio-oidc-client-id",
    )
}

pub async fn start<S: Store>(State(studio): Shared<S>, headers: HeaderMap) -> Response {
    let (Some(oidc), Some(client_id)) = (
        studio.plane.oidc.clone(),
        studio.plane.settings.config.studio_oidc_client_id.clone(),
    ) else {
        return not_configured();
    };
    let (authorize, _) = match oidc.code_flow_endpoints().await {
        Ok(e) => e,
        Err(e) => return refusal(StatusCode::BAD_GATEWAY, None, &e.to_string()),
    };
    let state = random_id();
    let verifier = random_id();
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    studio.oidc_pending.add(state.clone(), verifier);
    let query = [
        ("response_type", "code"),
        ("client_id", client_id.as_str()),
        ("redirect_uri", redirect_uri(&headers).as_str()),
        (
            "scope",
            studio.plane.settings.config.studio_oidc_scope.as_str(),
        ),
        ("state", state.as_str()),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
        ("resource", oidc.audience()),
    ]
    .iter()
    .map(|(k, v)| format!("{k}={}", html::seg(v)))
    .collect::<Vec<_>>()
    .join("&");
    let separator = if authorize.contains('?') { '&' } else { '?' };
    let mut response = Redirect::to(&format!("{authorize}{separator}{query}")).into_response();
    if let Ok(cookie) = format!(
        "{STATE_COOKIE}={state}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={}",
        PENDING_FOR.as_secs()
    )
    .parse()
    {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

#[derive(Deserialize)]
pub struct Callback {
    #[serde(default)]
    code: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    error: String,
}

pub async fn callback<S: Store>(
    State(studio): Shared<S>,
    headers: HeaderMap,
    Query(back): Query<Callback>,
) -> Response {
    let (Some(oidc), Some(client_id)) = (
        studio.plane.oidc.clone(),
        studio.plane.settings.config.studio_oidc_client_id.clone(),
    ) else {
        return not_configured();
    };
    // The state must be this browser's own, also before an error is shown
    // (no other site can put words on the studio's page).
    let ours = cookie_of(&headers, STATE_COOKIE).is_some_and(|c| same(c, &back.state));
    if ours && !back.error.is_empty() {
        studio.oidc_pending.take(&back.state);
        // The code only (RFC 6749's words), never the issuer's free text.
        let code: String = back
            .error
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(64)
            .collect();
        return refusal(
            StatusCode::UNAUTHORIZED,
            None,
            &format!("the OIDC issuer did not sign you in ({code}): sign in again"),
        );
    }
    let verifier = ours
        .then(|| studio.oidc_pending.take(&back.state))
        .flatten();
    let Some(verifier) = verifier.filter(|_| !back.code.is_empty()) else {
        return refusal(
            StatusCode::BAD_REQUEST,
            None,
            "this sign-in was not started in this browser, or took over 10 minutes: sign in again",
        );
    };
    let (_, token_endpoint) = match oidc.code_flow_endpoints().await {
        Ok(e) => e,
        Err(e) => return refusal(StatusCode::BAD_GATEWAY, None, &e.to_string()),
    };
    let redirect = redirect_uri(&headers);
    let token = match oidc
        .redeem_code(
            &token_endpoint,
            &[
                ("grant_type", "authorization_code"),
                ("code", back.code.as_str()),
                ("redirect_uri", redirect.as_str()),
                ("client_id", client_id.as_str()),
                ("code_verifier", verifier.as_str()),
                ("resource", oidc.audience()),
            ],
        )
        .await
    {
        Ok(t) => t,
        Err(e) => return refusal(StatusCode::UNAUTHORIZED, None, &e.to_string()),
    };
    let caller = match studio.access.authenticate(Some(&token)).await {
        Ok(c) => c,
        Err(e) => return refusal(StatusCode::UNAUTHORIZED, None, &e.to_string()),
    };
    if let Some(why) = super::roleless(&caller) {
        return refusal(StatusCode::FORBIDDEN, None, &why);
    }
    studio.end(&headers);
    let Some(session) = studio.start(caller.principal(), token) else {
        return refusal(
            StatusCode::TOO_MANY_REQUESTS,
            None,
            "the studio holds as many sessions as it may: try again when some have ended",
        );
    };
    tracing::info!(principal = %caller.principal(), "studio sign-in through the OIDC issuer");
    let body = format!(
        "<meta http-equiv=\"refresh\" content=\"0;url=/studio/compute\"><p>Signed in as {}. <a href=\"/studio/compute\">Continue to the studio</a>.</p>",
        html::esc(caller.principal())
    );
    let mut response = html_response(
        StatusCode::OK,
        html::page("Signed in", Section::None, None, &body),
    );
    let headers = response.headers_mut();
    if let Ok(v) = session.parse() {
        headers.append(header::SET_COOKIE, v);
    }
    headers.append(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "__Host-strato_oidc=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Lax",
        ),
    );
    response
}
