//! The studio: Strato's web UI, served on the control plane's HTTPS side
//! port under `/studio`. Server-rendered HTML (`html`) with a little
//! JavaScript (live logs, the quota a new cluster would use), calling the
//! same use cases (`app`) as gRPC: every rule, role and error message is
//! the one the CLI shows.
//!
//! **Sessions.** Signing in takes an API token; the studio checks it as
//! gRPC does and keeps it in memory only, under a random session id the
//! browser holds in a `__Host-` cookie (`Secure; HttpOnly;
//! SameSite=Strict; Path=/`). Every request authenticates the token again
//! (a revoked or expired one ends the session). Sessions end on sign-out,
//! after `SESSION_IDLE` without a request or `SESSION_MAX` in all, and with
//! the process; a principal keeps at most `SESSIONS_PER_PRINCIPAL` (its
//! oldest goes), and at most `MAX_SESSIONS` live at once (past it, signing
//! in is refused until some end: nobody can sign others out). A live log
//! stream ends with its session.
//!
//! **Forms.** Every POST carries the session's CSRF token (compared in
//! constant time) and, when the browser sends `Origin`, the studio's own
//! origin; signing in (which has no session yet) must come from the
//! studio's own origin too, so no other site can sign a browser into its
//! own account. A button a role may not use is not shown, and the use case
//! refuses it anyway.
//!
//! | path | who |
//! | --- | --- |
//! | `GET /studio/login`, `POST /studio/login`, `/studio/static/*` | anyone (signing in checks the token) |
//! | `GET /studio/login/oidc`, `GET /studio/login/callback` | anyone: signing in through the OIDC issuer (`oidc_login`) |
//! | every other `/studio` path | a session; each action the role of its use case |

mod html;
mod oidc_login;
mod pages;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse as _, Redirect, Response};
use axum::routing::{get, post};

use crate::app::{Access, Caller};
use crate::plane::Plane;
use crate::store::Store;

/// The session cookie's name: `__Host-` makes browsers take it only from
/// this origin over HTTPS, with `Path=/`.
pub const COOKIE: &str = "__Host-strato_studio";
/// The most sessions at once; past it, signing in waits for some to end.
pub const MAX_SESSIONS: usize = 10_000;
/// The most sessions of one principal; a new one past it ends its oldest.
pub const SESSIONS_PER_PRINCIPAL: usize = 16;
/// The largest form the studio reads.
pub const MAX_FORM_BYTES: usize = 64 * 1024;
/// A session ends after this long without a request...
pub const SESSION_IDLE: Duration = Duration::from_secs(3600);
/// ... and after this long in all.
pub const SESSION_MAX: Duration = Duration::from_secs(12 * 3600);
/// The longest token a sign-in takes.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// How often a live log stream checks that its session still holds.
pub const STREAM_SESSION_CHECK: Duration = Duration::from_secs(2);

const CSS: &str = include_str!("studio.css");
const JS: &str = include_str!("studio.js");

struct Session {
    principal: String,
    token: String,
    csrf: String,
    started: Instant,
    seen: Instant,
}

/// What the studio's handlers share.
pub struct Studio<S: Store> {
    plane: Arc<Plane<S>>,
    access: Arc<Access<S>>,
    sessions: Mutex<HashMap<String, Session>>,
    /// Sign-ins through the OIDC issuer under way.
    oidc_pending: oidc_login::Pending,
}

type Shared<S> = State<Arc<Studio<S>>>;

/// Who is signed in, for a page: the caller the token is, and the
/// session's CSRF token for its forms.
pub struct Visitor {
    pub caller: Caller,
    pub csrf: String,
    /// The session's id, for streams that end with it.
    pub session: String,
}

/// A page's signed-in visitor, as an extractor: without a session, the
/// request answers with the way to the sign-in page.
impl<S: Store> axum::extract::FromRequestParts<Arc<Studio<S>>> for Visitor {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        studio: &Arc<Studio<S>>,
    ) -> Result<Self, Response> {
        studio.visitor(&parts.headers).await
    }
}

impl Visitor {
    fn who(&self) -> Option<(&str, &str)> {
        Some((self.caller.principal(), self.csrf.as_str()))
    }
}

/// The studio's routes, to nest under `/studio` in a router of any state.
pub fn router<S: Store, T: Clone + Send + Sync + 'static>(
    plane: Arc<Plane<S>>,
    access: Arc<Access<S>>,
) -> Router<T> {
    let studio = Arc::new(Studio {
        plane,
        access,
        sessions: Mutex::new(HashMap::new()),
        oidc_pending: oidc_login::Pending::default(),
    });
    Router::new()
        .route("/", get(|| async { Redirect::to("/studio/compute") }))
        .route(
            "/static/studio.css",
            get(|| async { asset("text/css", CSS) }),
        )
        .route(
            "/static/studio.js",
            get(|| async { asset("text/javascript", JS) }),
        )
        .route(
            "/login",
            get(pages::login_form::<S>).post(pages::login::<S>),
        )
        .route("/login/oidc", get(oidc_login::start::<S>))
        .route("/login/callback", get(oidc_login::callback::<S>))
        .route("/logout", post(pages::logout::<S>))
        .route("/compute", get(pages::compute::<S>))
        .route(
            "/compute/new",
            get(pages::new_cluster::<S>).post(pages::create_cluster::<S>),
        )
        .route("/compute/{name}", get(pages::cluster::<S>))
        .route("/compute/{name}/update", post(pages::update_cluster::<S>))
        .route("/compute/{name}/evict", post(pages::evict::<S>))
        .route("/compute/{name}/delete", post(pages::delete_cluster::<S>))
        .route("/jobs", get(pages::jobs::<S>))
        .route("/jobs/{id}", get(pages::job::<S>))
        .route("/jobs/{id}/logs", get(pages::job_logs::<S>))
        .route("/jobs/{id}/cancel", post(pages::cancel_job::<S>))
        .route("/quota", get(pages::quota::<S>))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_FORM_BYTES))
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(studio)
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// No frames, no scripts or styles but the studio's own, nothing cached,
/// no referrer to other sites.
async fn secure_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        // Not `no-referrer`: with it, browsers send `Origin: null` on the
        // studio's own form posts, which the origin check refuses.
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

fn random_id() -> String {
    use base64::Engine as _;
    use rand_core::RngCore as _;
    let mut bytes = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether two secrets are equal, in time that does not depend on where
/// they differ: their SHA-256 digests are compared.
fn same(a: &str, b: &str) -> bool {
    use sha2::{Digest as _, Sha256};
    Sha256::digest(a.as_bytes()) == Sha256::digest(b.as_bytes())
}

fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
}

/// The refusal of a POST a browser sent from another origin: `Origin` (which
/// browsers send on every POST; `null` from a sandbox or a page that hides
/// its referrer) must be the studio's own. A client that sends none (not a
/// browser) is let through: cross-site forms are a browser's problem.
fn cross_origin(headers: &HeaderMap) -> Option<Response> {
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok())?;
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let from = origin.split_once("://").map(|(_, h)| h);
    (from != Some(host)).then(|| {
        refusal(
            StatusCode::FORBIDDEN,
            None,
            &format!("a form from {origin} is not the studio's"),
        )
    })
}

/// Why a caller may not hold a session: a principal with no role at all
/// could see nothing, and sessions are bounded for everyone.
fn roleless(caller: &Caller) -> Option<String> {
    match caller {
        Caller::User(p) if p.grants.is_empty() => Some(format!(
            "{} has no role in Strato: ask an Owner for a role assignment (`strato role assignment create --principal {} --role Reader`)",
            p.name, p.name
        )),
        _ => None,
    }
}

/// A page answer with its status.
fn html_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

/// A refusal as a page, with what the use case said.
fn refusal(status: StatusCode, visitor: Option<&Visitor>, message: &str) -> Response {
    let title = match status {
        StatusCode::FORBIDDEN => "Not allowed",
        StatusCode::NOT_FOUND => "Not found",
        _ => "Refused",
    };
    html_response(
        status,
        html::page(
            title,
            html::Section::None,
            visitor.and_then(Visitor::who),
            &html::notice("error", message),
        ),
    )
}

impl<S: Store> Studio<S> {
    /// A new session of `principal` for `token` (already checked); its
    /// cookie, or `None` when `MAX_SESSIONS` are live.
    fn start(&self, principal: &str, token: String) -> Option<String> {
        let id = random_id();
        let now = Instant::now();
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|_, s| {
            now.duration_since(s.seen) < SESSION_IDLE && now.duration_since(s.started) < SESSION_MAX
        });
        let mine: Vec<(String, Instant)> = sessions
            .iter()
            .filter(|(_, s)| s.principal == principal)
            .map(|(k, s)| (k.clone(), s.seen))
            .collect();
        if mine.len() >= SESSIONS_PER_PRINCIPAL
            && let Some((oldest, _)) = mine.iter().min_by_key(|(_, seen)| *seen)
        {
            sessions.remove(oldest);
        }
        if sessions.len() >= MAX_SESSIONS {
            return None;
        }
        sessions.insert(
            id.clone(),
            Session {
                principal: principal.to_owned(),
                token,
                csrf: random_id(),
                started: now,
                seen: now,
            },
        );
        Some(format!(
            "{COOKIE}={id}; Path=/; Secure; HttpOnly; SameSite=Strict"
        ))
    }

    /// Whether the session `id` is still live (for streams that outlast a
    /// request).
    fn holds(&self, id: &str) -> bool {
        let now = Instant::now();
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .is_some_and(|s| {
                now.duration_since(s.seen) < SESSION_IDLE
                    && now.duration_since(s.started) < SESSION_MAX
            })
    }

    fn end(&self, headers: &HeaderMap) {
        if let Some(id) = session_id(headers) {
            self.sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
        }
    }

    /// The signed-in visitor, or the way to the sign-in page.
    async fn visitor(&self, headers: &HeaderMap) -> Result<Visitor, Response> {
        let to_login = || Redirect::to("/studio/login").into_response();
        let id = session_id(headers).ok_or_else(to_login)?;
        let (token, csrf) = {
            let now = Instant::now();
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            let Some(s) = sessions.get_mut(&id) else {
                return Err(to_login());
            };
            if now.duration_since(s.seen) >= SESSION_IDLE
                || now.duration_since(s.started) >= SESSION_MAX
            {
                sessions.remove(&id);
                return Err(to_login());
            }
            s.seen = now;
            (s.token.clone(), s.csrf.clone())
        };
        match self.access.authenticate(Some(&token)).await {
            Ok(caller) => Ok(Visitor {
                caller,
                csrf,
                session: id,
            }),
            // Revoked or expired: the session ends.
            Err(crate::app::AppError::Unauthenticated(_)) => {
                self.sessions
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                Err(to_login())
            }
            // The store did not answer: the session stays.
            Err(e) => Err(refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                &e.to_string(),
            )),
        }
    }

    /// The visitor behind a form: a session, its CSRF token in the form,
    /// and (when the browser says) a request from the studio's own origin.
    async fn poster(&self, headers: &HeaderMap, csrf: &str) -> Result<Visitor, Response> {
        if let Some(refused) = cross_origin(headers) {
            return Err(refused);
        }
        let visitor = self.visitor(headers).await?;
        if !same(&visitor.csrf, csrf) {
            return Err(refusal(
                StatusCode::FORBIDDEN,
                Some(&visitor),
                "the form's CSRF token is missing or wrong: reload the page and try again",
            ));
        }
        Ok(visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().expect("header"));
        }
        h
    }

    #[test]
    fn forms_come_from_the_studios_own_origin() {
        let host = ("host", "127.0.0.1:7080");
        assert!(cross_origin(&headers(&[host, ("origin", "https://127.0.0.1:7080")])).is_none());
        assert!(cross_origin(&headers(&[host])).is_none(), "not a browser");
        for bad in ["https://evil.example", "null", "https://127.0.0.1:7081"] {
            let refused = cross_origin(&headers(&[host, ("origin", bad)])).expect(bad);
            assert_eq!(refused.status(), StatusCode::FORBIDDEN, "{bad}");
        }
    }

    #[test]
    fn the_session_is_the_host_cookie_alone() {
        let h = headers(&[(
            "cookie",
            "strato_studio=old; __Host-strato_studio=abc; other=1",
        )]);
        assert_eq!(session_id(&h).as_deref(), Some("abc"));
        assert_eq!(session_id(&headers(&[("cookie", "strato_studio=x")])), None);
        assert!(same("a", "a") && !same("a", "b"));
    }
}
