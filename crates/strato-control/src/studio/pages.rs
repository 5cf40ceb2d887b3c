//! The studio's pages and forms, one handler each; every one calls the use
//! case gRPC calls, with the signed-in caller.

use std::convert::Infallible;
use std::fmt::Write as _;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse as _, Redirect, Response};
use futures_util::StreamExt as _;
use serde::Deserialize;
use strato_core::ClusterRequest;
use strato_core::spec::{ComputeType, IdentitySpec, SshSettings, VmPriority};

use super::html::{self, Field, Section, esc, seg};
use super::{MAX_TOKEN_BYTES, Shared, Studio, Visitor, html_response, refusal};
use crate::app::{Action, AppError, Compute, Jobs, authorize};
use crate::store::{JobPage, Store};

/// The status a use case's refusal is shown with.
fn status_of(e: &AppError) -> StatusCode {
    match e {
        AppError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
        AppError::NotFound(_) => StatusCode::NOT_FOUND,
        AppError::AlreadyExists(_) | AppError::FailedPrecondition(_) => StatusCode::CONFLICT,
        AppError::ResourceExhausted(_)
        | AppError::RateLimited { .. }
        | AppError::TooManyFollowers { .. } => StatusCode::TOO_MANY_REQUESTS,
        AppError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        AppError::PermissionDenied(_) => StatusCode::FORBIDDEN,
        AppError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn refused(visitor: &Visitor, e: &AppError) -> Response {
    if let AppError::Internal(internal) = e {
        tracing::error!(error = %internal, principal = %visitor.caller.principal(), "studio: internal failure");
    }
    refusal(status_of(e), Some(visitor), &e.to_string())
}

/// After a form: to `to`, or the refusal.
fn done(visitor: &Visitor, outcome: Result<(), AppError>, to: &str) -> Response {
    match outcome {
        Ok(()) => see_other(to),
        Err(e) => refused(visitor, &e),
    }
}

fn may(visitor: &Visitor, action: Action, cluster: Option<&str>) -> bool {
    authorize(&visitor.caller, action, cluster).is_ok()
}

fn ok_page(visitor: &Visitor, title: &str, section: Section, body: &str) -> Response {
    html_response(
        StatusCode::OK,
        html::page(title, section, visitor.who(), body),
    )
}

fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

// ---- signing in and out ----

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    token: String,
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// What the sign-in page offers: `plain`, this control plane serves HTTP
/// (`--insecure-plaintext`), where browsers keep the `Secure` session
/// cookie only on localhost; `oidc`, the issuer to sign in through.
pub struct SignIn {
    plain: bool,
    oidc: Option<String>,
}

fn sign_in_of<S: Store>(studio: &Studio<S>) -> SignIn {
    SignIn {
        plain: studio.plane.tls.is_none(),
        // The issuer sends the browser back to an https:// URI only.
        oidc: studio
            .plane
            .settings
            .config
            .studio_oidc_client_id
            .as_ref()
            .and(studio.plane.oidc.as_ref())
            .filter(|_| studio.plane.tls.is_some())
            .map(|o| o.issuer().to_owned()),
    }
}

/// The sign-in page.
fn login_page(status: StatusCode, studio_of: SignIn, error: Option<&str>) -> Response {
    let SignIn { plain, oidc } = studio_of;
    let field = Field {
        name: "token",
        label: "API token",
        control: html::input("password", "", "required autocomplete=\"off\""),
        hint: "A token from `strato token create`, or the Owner token in admin.conf.",
        error,
    };
    let warning = if plain {
        html::notice(
            "error",
            "This control plane serves plain HTTP (--insecure-plaintext): a browser keeps the studio's session only on localhost.",
        )
    } else {
        String::new()
    };
    let elsewhere = match oidc {
        Some(issuer) => format!(
            "<p><a class=\"button\" href=\"/studio/login/oidc\">Sign in with {}</a></p>",
            esc(&issuer)
        ),
        None => String::new(),
    };
    let body = format!(
        "{warning}{elsewhere}<form method=\"post\" action=\"/studio/login\" class=\"card\">{}<button type=\"submit\">Sign in</button></form>",
        field.render()
    );
    html_response(status, html::page("Sign in", Section::None, None, &body))
}

pub async fn login_form<S: Store>(State(studio): Shared<S>) -> Response {
    login_page(StatusCode::OK, sign_in_of(&studio), None)
}

pub async fn login<S: Store>(
    State(studio): Shared<S>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    // No other site may sign this browser in (into its own account).
    if let Some(refused) = super::cross_origin(&headers) {
        return refused;
    }
    let token = form.token.trim();
    if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
        return login_page(
            StatusCode::BAD_REQUEST,
            sign_in_of(&studio),
            Some(&format!(
                "an API token of 1 to {MAX_TOKEN_BYTES} bytes is required"
            )),
        );
    }
    match studio.access.authenticate(Some(token)).await {
        Ok(caller) => {
            if let Some(why) = super::roleless(&caller) {
                return login_page(StatusCode::FORBIDDEN, sign_in_of(&studio), Some(&why));
            }
            // A session already in this browser ends: no fixation.
            studio.end(&headers);
            let Some(cookie) = studio.start(caller.principal(), token.to_owned()) else {
                return login_page(
                    StatusCode::TOO_MANY_REQUESTS,
                    sign_in_of(&studio),
                    Some(&format!(
                        "the studio holds {} sessions, its most: try again when some have ended",
                        super::MAX_SESSIONS
                    )),
                );
            };
            tracing::info!(principal = %caller.principal(), "studio sign-in");
            let mut response = see_other("/studio/compute");
            if let Ok(v) = cookie.parse() {
                response.headers_mut().insert(header::SET_COOKIE, v);
            }
            response
        }
        Err(e) => login_page(status_of(&e), sign_in_of(&studio), Some(&e.to_string())),
    }
}

pub async fn logout<S: Store>(
    State(studio): Shared<S>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(r) = studio.poster(&headers, &form.csrf).await {
        return r;
    }
    studio.end(&headers);
    let mut response = see_other("/studio/login");
    response.headers_mut().insert(
        header::SET_COOKIE,
        axum::http::HeaderValue::from_static(
            "__Host-strato_studio=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Strict",
        ),
    );
    response
}

// ---- compute ----

#[derive(Deserialize)]
pub struct TabQuery {
    #[serde(default)]
    tab: String,
}

fn node_counts(nodes: &[crate::store::NodeRecord]) -> (usize, usize) {
    use strato_core::node::NodeState;
    let live = nodes
        .iter()
        .filter(|n| !matches!(n.state, NodeState::Leaving))
        .count();
    let busy = nodes
        .iter()
        .filter(|n| matches!(n.state, NodeState::Running))
        .count();
    (live, busy)
}

pub async fn compute<S: Store>(
    State(studio): Shared<S>,
    visitor: Visitor,
    Query(q): Query<TabQuery>,
) -> Response {
    let attached = q.tab == "attached";
    let clusters = match Compute::new(studio.plane.clone())
        .list_clusters(&visitor.caller)
        .await
    {
        Ok(c) => c,
        Err(e) => return refused(&visitor, &e),
    };
    let rows: Vec<Vec<String>> = clusters
        .iter()
        .filter(|c| (c.record.spec.compute_type == ComputeType::Attached) == attached)
        .map(|c| {
            let s = &c.record.spec;
            let (live, _) = node_counts(&c.nodes);
            vec![
                format!(
                    "<a href=\"/studio/compute/{}\">{}</a>",
                    seg(&s.name),
                    esc(&s.name)
                ),
                esc(c.record.allocation_state.as_str()),
                format!("{live} / {}", c.record.target_nodes),
                esc(&s.vm_size),
                esc(match s.vm_priority {
                    VmPriority::Dedicated => "dedicated",
                    VmPriority::LowPriority => "low priority",
                }),
                c.record
                    .errors
                    .iter()
                    .map(|e| format!("<span class=\"bad\">{}</span>", esc(&e.code)))
                    .collect::<Vec<_>>()
                    .join(" "),
            ]
        })
        .collect();
    let tab = |id: &str, label: &str, on: bool| {
        format!(
            "<a href=\"/studio/compute?tab={id}\"{}>{label}</a>",
            if on { " aria-current=\"page\"" } else { "" }
        )
    };
    let mut body = format!(
        "<nav aria-label=\"Compute kinds\" class=\"tabs\">{}{}</nav>",
        tab("amlcompute", "Compute clusters", !attached),
        tab("attached", "Attached compute", attached)
    );
    if may(&visitor, Action::CreateCluster, None) {
        body.push_str("<p><a class=\"button\" href=\"/studio/compute/new\">New cluster</a></p>");
    }
    body.push_str(&html::table(
        if attached {
            "Attached compute"
        } else {
            "Compute clusters"
        },
        &[
            "Name",
            "State",
            "Nodes (current / target)",
            "Size",
            "Priority",
            "Errors",
        ],
        &rows,
    ));
    ok_page(&visitor, "Compute", Section::Compute, &body)
}

#[derive(Deserialize, Default, Clone)]
pub struct ClusterForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    location: String,
    #[serde(default)]
    tier: String,
    /// `cpu` or `gpu`: which sizes the size list offers (a filter only).
    #[serde(default)]
    kind: String,
    #[serde(default)]
    size: String,
    #[serde(default)]
    min_nodes: String,
    #[serde(default)]
    max_nodes: String,
    #[serde(default)]
    idle_seconds: String,
    #[serde(default)]
    admin_username: String,
    #[serde(default)]
    ssh_key: String,
    #[serde(default)]
    ssh_public: Option<String>,
    #[serde(default)]
    identity: String,
    #[serde(default)]
    user_identity: String,
}

/// The form's fields as the API names them, for its errors.
fn form_field(api_field: &str) -> &'static str {
    match api_field {
        "name" => "name",
        "location" => "location",
        "vm_size" | "size" => "size",
        "vm_priority" | "tier" => "tier",
        "min_nodes" => "min_nodes",
        "max_nodes" => "max_nodes",
        "idle_seconds_before_scaledown" => "idle_seconds",
        f if f.starts_with("ssh.admin_username") || f == "admin_username" => "admin_username",
        f if f.starts_with("ssh") => "ssh_key",
        f if f.starts_with("identity") => "user_identity",
        _ => "",
    }
}

async fn cluster_form_page<S: Store>(
    studio: &Studio<S>,
    visitor: &Visitor,
    form: &ClusterForm,
    error: Option<(String, String)>,
    status: StatusCode,
) -> Response {
    let compute = Compute::new(studio.plane.clone());
    let sizes = compute.list_sizes(&visitor.caller, "").unwrap_or_default();
    let usage = compute
        .list_usage(&visitor.caller, String::new())
        .await
        .map(|u| u.lines)
        .unwrap_or_default();
    let err = |name: &str| {
        error
            .as_ref()
            .filter(|(f, _)| f == name)
            .map(|(_, m)| m.as_str())
    };
    let size_options: Vec<(String, String)> = sizes
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                format!(
                    "{} · {} vCPUs, {} GiB{}",
                    s.name,
                    s.vcpus,
                    s.memory_gib,
                    if s.gpus > 0 {
                        format!(", {} × {}", s.gpus, s.gpu_model)
                    } else {
                        String::new()
                    }
                ),
            )
        })
        .collect();
    let fields = [
        Field {
            name: "name",
            label: "Compute name",
            control: html::input("text", &form.name, "required autocomplete=\"off\""),
            hint: "2 to 16 letters, digits and '-', starting with a letter.",
            error: err("name"),
        },
        Field {
            name: "location",
            label: "Location",
            control: html::input(
                "text",
                &form.location,
                "placeholder=\"the control plane's\"",
            ),
            hint: "A region, e.g. westeurope; empty: the control plane's.",
            error: err("location"),
        },
        Field {
            name: "tier",
            label: "Virtual machine tier",
            control: html::select(
                &[
                    ("dedicated".into(), "Dedicated".into()),
                    ("lowpriority".into(), "Low priority (may be evicted)".into()),
                ],
                &form.tier,
            ),
            hint: "",
            error: err("tier"),
        },
        Field {
            name: "kind",
            label: "Virtual machine type",
            control: html::select(
                &[("cpu".into(), "CPU".into()), ("gpu".into(), "GPU".into())],
                &form.kind,
            ),
            hint: "Which sizes the list below offers.",
            error: None,
        },
        Field {
            name: "size",
            label: "Virtual machine size",
            control: html::select(&size_options, &form.size),
            hint: "CPU and GPU sizes from the catalog.",
            error: err("size"),
        },
        Field {
            name: "min_nodes",
            label: "Minimum number of nodes",
            control: html::input("number", &form.min_nodes, "min=\"0\" inputmode=\"numeric\""),
            hint: "",
            error: err("min_nodes"),
        },
        Field {
            name: "max_nodes",
            label: "Maximum number of nodes",
            control: html::input("number", &form.max_nodes, "min=\"1\" inputmode=\"numeric\""),
            hint: "",
            error: err("max_nodes"),
        },
        Field {
            name: "idle_seconds",
            label: "Idle seconds before scale down",
            control: html::input(
                "number",
                &form.idle_seconds,
                "min=\"0\" inputmode=\"numeric\"",
            ),
            hint: "",
            error: err("idle_seconds"),
        },
        Field {
            name: "admin_username",
            label: "SSH admin user (optional)",
            control: html::input("text", &form.admin_username, "autocomplete=\"off\""),
            hint: "",
            error: err("admin_username"),
        },
        Field {
            name: "ssh_key",
            label: "SSH public key",
            control: html::input("text", &form.ssh_key, "autocomplete=\"off\""),
            hint: "",
            error: err("ssh_key"),
        },
        Field {
            name: "identity",
            label: "Managed identity",
            control: html::select(
                &[
                    ("none".into(), "None".into()),
                    ("system".into(), "System-assigned".into()),
                    ("user".into(), "User-assigned".into()),
                ],
                &form.identity,
            ),
            hint: "",
            error: None,
        },
        Field {
            name: "user_identity",
            label: "User-assigned identity resource id",
            control: html::input("text", &form.user_identity, "autocomplete=\"off\""),
            hint: "",
            error: err("user_identity"),
        },
    ];
    let mut body = String::new();
    if let Some((field, message)) = &error
        && field.is_empty()
    {
        body.push_str(&html::notice("error", message));
    }
    // The quota the cluster would use, for the script: each size's vCPUs
    // and family, each quota line's room.
    let mut sizes_data = String::new();
    for s in &sizes {
        let _ = write!(
            sizes_data,
            "<li data-size=\"{}\" data-vcpus=\"{}\" data-gpus=\"{}\" data-family=\"{}\"></li>",
            esc(&s.name),
            s.vcpus,
            s.gpus,
            esc(&s.family)
        );
    }
    let mut quota_data = String::new();
    for l in &usage {
        let _ = write!(
            quota_data,
            "<li data-quota=\"{}\" data-current=\"{}\" data-limit=\"{}\"></li>",
            esc(&l.name),
            l.current,
            l.limit
        );
    }
    let _ = write!(
        body,
        "<form method=\"post\" action=\"/studio/compute/new\" class=\"card\" id=\"create-cluster\">{}{}\
         <div class=\"field\"><label><input type=\"checkbox\" name=\"ssh_public\"{}> Open the remote-login port to the public</label></div>\
         <p id=\"quota-preview\" aria-live=\"polite\"></p>\
         <ul hidden id=\"size-data\">{sizes_data}</ul><ul hidden id=\"quota-data\">{quota_data}</ul>\
         <button type=\"submit\">Create</button></form>",
        html::csrf_field(&visitor.csrf),
        fields.iter().map(Field::render).collect::<String>(),
        if form.ssh_public.is_some() {
            " checked"
        } else {
            ""
        },
    );
    html_response(
        status,
        html::page("New cluster", Section::Compute, visitor.who(), &body),
    )
}

pub async fn new_cluster<S: Store>(State(studio): Shared<S>, visitor: Visitor) -> Response {
    if let Err(e) = authorize(&visitor.caller, Action::CreateCluster, None) {
        return refused(&visitor, &e);
    }
    let form = ClusterForm {
        min_nodes: "0".into(),
        max_nodes: "4".into(),
        idle_seconds: "120".into(),
        size: strato_core::catalog::DEFAULT_VM_SIZE.into(),
        identity: "none".into(),
        ..Default::default()
    };
    cluster_form_page(&studio, &visitor, &form, None, StatusCode::OK).await
}

fn number<T: std::str::FromStr>(field: &str, text: &str) -> Result<Option<T>, (String, String)> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| (field.to_owned(), format!("{text:?} must be a whole number")))
}

/// A number the form must give.
fn given<T: std::str::FromStr>(field: &str, text: &str) -> Result<T, (String, String)> {
    number(field, text)?.ok_or_else(|| (field.to_owned(), "is required".to_owned()))
}

fn cluster_request(form: &ClusterForm) -> Result<ClusterRequest, (String, String)> {
    let identity = match form.identity.as_str() {
        "system" => IdentitySpec {
            system_assigned: true,
            user_assigned: Vec::new(),
        },
        "user" => IdentitySpec {
            system_assigned: false,
            user_assigned: vec![form.user_identity.trim().to_owned()],
        },
        _ => IdentitySpec::default(),
    };
    Ok(ClusterRequest {
        name: form.name.trim().to_owned(),
        vm_size: Some(form.size.trim().to_owned()).filter(|s| !s.is_empty()),
        vm_priority: Some(match form.tier.as_str() {
            "lowpriority" => VmPriority::LowPriority,
            _ => VmPriority::Dedicated,
        }),
        min_nodes: number("min_nodes", &form.min_nodes)?,
        max_nodes: number("max_nodes", &form.max_nodes)?,
        idle_seconds_before_scaledown: number("idle_seconds", &form.idle_seconds)?,
        location: Some(form.location.trim().to_owned()).filter(|l| !l.is_empty()),
        ssh: SshSettings {
            public_access: form.ssh_public.is_some(),
            admin_username: form.admin_username.trim().to_owned(),
            admin_ssh_public_key: form.ssh_key.trim().to_owned(),
            ..Default::default()
        },
        identity,
        ..Default::default()
    })
}

pub async fn create_cluster<S: Store>(
    State(studio): Shared<S>,
    headers: HeaderMap,
    Form(form): Form<ClusterForm>,
) -> Response {
    let visitor = match studio.poster(&headers, &form.csrf).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let request = match cluster_request(&form) {
        Ok(r) => r,
        Err(e) => {
            return cluster_form_page(&studio, &visitor, &form, Some(e), StatusCode::BAD_REQUEST)
                .await;
        }
    };
    match Compute::new(studio.plane.clone())
        .create_cluster(&visitor.caller, request)
        .await
    {
        Ok(created) => see_other(&format!(
            "/studio/compute/{}",
            seg(&created.cluster.record.spec.name)
        )),
        Err(e) => {
            let status = status_of(&e);
            let placed = match &e {
                AppError::InvalidArgument(f) => (form_field(&f.field).to_owned(), e.to_string()),
                _ => (String::new(), e.to_string()),
            };
            cluster_form_page(&studio, &visitor, &form, Some(placed), status).await
        }
    }
}

pub async fn cluster<S: Store>(
    State(studio): Shared<S>,
    visitor: Visitor,
    Path(name): Path<String>,
) -> Response {
    let view = match Compute::new(studio.plane.clone())
        .get_cluster(&visitor.caller, &name)
        .await
    {
        Ok(v) => v,
        Err(e) => return refused(&visitor, &e),
    };
    let r = &view.record;
    let s = &r.spec;
    let name = s.name.clone();
    let (live, busy) = node_counts(&view.nodes);
    let mut body = html::facts(&[
        ("Type", esc(s.compute_type.as_str())),
        ("Size", esc(&s.vm_size)),
        ("Priority", esc(s.vm_priority.as_str())),
        ("Location", esc(&s.location)),
        (
            "Allocation state",
            format!(
                "{} since {}",
                esc(r.allocation_state.as_str()),
                esc(&html::when(r.allocation_since))
            ),
        ),
        (
            "Nodes",
            format!(
                "{live} (busy {busy}, idle {}) of target {}; min {}, max {}",
                live - busy,
                r.target_nodes,
                s.min_nodes,
                s.max_nodes
            ),
        ),
        (
            "Idle seconds before scale down",
            s.idle_seconds_before_scaledown.to_string(),
        ),
    ]);
    if !r.errors.is_empty() {
        body.push_str("<h2>Why it cannot progress</h2><ul class=\"errors\">");
        for e in &r.errors {
            let _ = write!(
                body,
                "<li><strong>{}</strong>: {} <small>(since {})</small></li>",
                esc(&e.code),
                esc(&e.message),
                esc(&html::when(e.since))
            );
        }
        body.push_str("</ul>");
    }
    let low_priority = s.vm_priority == VmPriority::LowPriority;
    let may_evict = low_priority && may(&visitor, Action::SimulateEviction, Some(&name));
    let ssh_user = (!s.ssh.admin_username.is_empty()).then_some(s.ssh.admin_username.clone());
    let rows: Vec<Vec<String>> = view
        .nodes
        .iter()
        .map(|n| {
            let usage = &n.usage;
            let memory = if usage.memory_total > 0 {
                format!(
                    "{:.0}%",
                    usage.memory_used as f64 * 100.0 / usage.memory_total as f64
                )
            } else {
                "-".into()
            };
            let ssh = match (&ssh_user, n.port) {
                (Some(user), port) if !n.private_ip.is_empty() && port > 0 => {
                    let host = if n.private_ip.contains(':') {
                        format!("[{}]", n.private_ip)
                    } else {
                        n.private_ip.clone()
                    };
                    format!("<code>ssh -p {port} {}@{}</code>", esc(user), esc(&host))
                }
                _ => "-".into(),
            };
            let mut evict = String::new();
            if may_evict && !matches!(n.state, strato_core::node::NodeState::Leaving) {
                evict = format!(
                    "<form method=\"post\" action=\"/studio/compute/{}/evict\">{}<input type=\"hidden\" name=\"node\" value=\"{}\"><button type=\"submit\" aria-label=\"Simulate eviction of {}\">Simulate eviction</button></form>",
                    seg(&name),
                    html::csrf_field(&visitor.csrf),
                    esc(&n.node_id),
                    esc(&n.node_id)
                );
            }
            vec![
                esc(&n.node_id),
                esc(n.state.as_str()),
                n.run_id
                    .as_ref()
                    .map(|j| format!("<a href=\"/studio/jobs/{}\">{}</a>", seg(j), esc(j)))
                    .unwrap_or_else(|| "-".into()),
                format!("{:.0}%", usage.cpu_percent),
                memory,
                if n.gpus > 0 {
                    format!("{:.0}%", usage.gpu_percent)
                } else {
                    "-".into()
                },
                ssh,
                evict,
            ]
        })
        .collect();
    body.push_str("<section id=\"nodes\">");
    body.push_str(&html::table(
        "Nodes",
        &[
            "Node", "State", "Job", "CPU", "Memory", "GPU", "SSH", "Actions",
        ],
        &rows,
    ));
    body.push_str("</section>");
    let scale_rows: Vec<Vec<String>> = studio
        .plane
        .scale_events
        .of(&name)
        .into_iter()
        .take(20)
        .map(|e| vec![esc(&html::when(e.at)), esc(&e.what)])
        .collect();
    body.push_str(&html::table(
        "Recent scale events, newest first",
        &["When", "What"],
        &scale_rows,
    ));
    let identity_rows: Vec<Vec<String>> = r
        .identities
        .iter()
        .map(|i| {
            vec![
                match i.kind {
                    strato_core::identity::IdentityKind::SystemAssigned => "system-assigned",
                    strato_core::identity::IdentityKind::UserAssigned => "user-assigned",
                }
                .to_owned(),
                esc(&i.resource_id),
                esc(&i.client_id),
                esc(&i.principal_id),
            ]
        })
        .collect();
    body.push_str(&html::table(
        "Managed identities",
        &["Kind", "Resource id", "Client id", "Principal id"],
        &identity_rows,
    ));
    if may(&visitor, Action::UpdateCluster, Some(&name)) {
        let fields = [
            Field {
                name: "min_nodes",
                label: "Minimum number of nodes",
                control: html::input("number", &s.min_nodes.to_string(), "min=\"0\""),
                hint: "",
                error: None,
            },
            Field {
                name: "max_nodes",
                label: "Maximum number of nodes",
                control: html::input("number", &s.max_nodes.to_string(), "min=\"1\""),
                hint: "",
                error: None,
            },
            Field {
                name: "idle_seconds",
                label: "Idle seconds before scale down",
                control: html::input(
                    "number",
                    &s.idle_seconds_before_scaledown.to_string(),
                    "min=\"0\"",
                ),
                hint: "",
                error: None,
            },
        ];
        let _ = write!(
            body,
            "<h2>Scale settings</h2><form method=\"post\" action=\"/studio/compute/{}/update\" class=\"card\">{}{}<button type=\"submit\">Save</button></form>",
            seg(&name),
            html::csrf_field(&visitor.csrf),
            fields.iter().map(Field::render).collect::<String>()
        );
    }
    if may(&visitor, Action::DeleteCluster, Some(&name)) {
        let confirm = Field {
            name: "confirm",
            label: "Type the cluster's name to delete it",
            control: html::input("text", "", "required autocomplete=\"off\""),
            hint: "Its nodes are removed; running jobs fail.",
            error: None,
        };
        let _ = write!(
            body,
            "<h2>Delete</h2><form method=\"post\" action=\"/studio/compute/{}/delete\" class=\"card danger\">{}{}<button type=\"submit\">Delete cluster</button></form>",
            seg(&name),
            html::csrf_field(&visitor.csrf),
            confirm.render()
        );
    }
    ok_page(&visitor, &name, Section::Compute, &body)
}

#[derive(Deserialize)]
pub struct ScaleForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    min_nodes: String,
    #[serde(default)]
    max_nodes: String,
    #[serde(default)]
    idle_seconds: String,
}

pub async fn update_cluster<S: Store>(
    State(studio): Shared<S>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<ScaleForm>,
) -> Response {
    let visitor = match studio.poster(&headers, &form.csrf).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    // Every field is given: an empty one is not "the default".
    let parsed = (|| {
        Ok::<_, (String, String)>(ClusterRequest {
            min_nodes: Some(given("min_nodes", &form.min_nodes)?),
            max_nodes: Some(given("max_nodes", &form.max_nodes)?),
            idle_seconds_before_scaledown: Some(given("idle_seconds", &form.idle_seconds)?),
            ..Default::default()
        })
    })();
    let desired = match parsed {
        Ok(d) => d,
        Err((field, message)) => {
            return refusal(
                StatusCode::BAD_REQUEST,
                Some(&visitor),
                &format!("{field}: {message}"),
            );
        }
    };
    let mask = vec![
        "min_nodes".to_owned(),
        "max_nodes".to_owned(),
        "idle_seconds_before_scaledown".to_owned(),
    ];
    let outcome = Compute::new(studio.plane.clone())
        .update_cluster(&visitor.caller, &name, desired, mask)
        .await
        .map(drop);
    done(
        &visitor,
        outcome,
        &format!("/studio/compute/{}", seg(&name)),
    )
}

#[derive(Deserialize)]
pub struct EvictForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    node: String,
}

pub async fn evict<S: Store>(
    State(studio): Shared<S>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<EvictForm>,
) -> Response {
    let visitor = match studio.poster(&headers, &form.csrf).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let outcome = Compute::new(studio.plane.clone())
        .simulate_eviction(&visitor.caller, &name, &form.node, None)
        .await
        .map(drop);
    done(
        &visitor,
        outcome,
        &format!("/studio/compute/{}", seg(&name)),
    )
}

#[derive(Deserialize)]
pub struct DeleteForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    confirm: String,
}

pub async fn delete_cluster<S: Store>(
    State(studio): Shared<S>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<DeleteForm>,
) -> Response {
    let visitor = match studio.poster(&headers, &form.csrf).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if form.confirm.trim() != name {
        return refusal(
            StatusCode::BAD_REQUEST,
            Some(&visitor),
            &format!("confirm: type {name:?} to delete the cluster"),
        );
    }
    match Compute::new(studio.plane.clone())
        .delete_cluster(&visitor.caller, &name)
        .await
    {
        Ok(()) => see_other("/studio/compute"),
        Err(e) => refused(&visitor, &e),
    }
}

// ---- jobs ----

#[derive(Deserialize, Default)]
pub struct JobFilter {
    #[serde(default)]
    cluster: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    submitter: String,
    /// Where the page starts: a page token as `ListJobs` gives them.
    #[serde(default)]
    page: String,
}

/// The most jobs one list page shows.
pub const JOB_LIST_LIMIT: u32 = 200;

pub async fn jobs<S: Store>(
    State(studio): Shared<S>,
    visitor: Visitor,
    Query(filter): Query<JobFilter>,
) -> Response {
    let cluster = (!filter.cluster.trim().is_empty()).then(|| filter.cluster.trim().to_owned());
    let page: JobPage = match crate::grpc::convert::job_page(JOB_LIST_LIMIT, filter.page.trim()) {
        Ok(p) => p,
        Err(e) => return refused(&visitor, &AppError::InvalidArgument(e)),
    };
    let listed = Jobs::new(studio.plane.clone())
        .list_jobs(&visitor.caller, cluster.as_deref(), page)
        .await;
    let (jobs, next) = match listed {
        Ok((jobs, next)) => (jobs, next.map(crate::grpc::convert::job_page_token)),
        Err(e) => return refused(&visitor, &e),
    };
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .filter(|j| filter.state.is_empty() || j.state.as_str() == filter.state)
        .filter(|j| filter.submitter.is_empty() || j.submitted_by.contains(filter.submitter.trim()))
        .map(|j| {
            vec![
                format!("<a href=\"/studio/jobs/{}\">{}</a>", seg(&j.id), esc(&j.id)),
                esc(&j.spec.display_name),
                esc(&j.spec.cluster),
                esc(j.state.as_str()),
                esc(&j.reason),
                esc(&j.submitted_by),
                esc(&html::when(j.created_at)),
            ]
        })
        .collect();
    let states: Vec<(String, String)> = std::iter::once((String::new(), "Any state".to_owned()))
        .chain(
            strato_core::job::JobState::ALL
                .iter()
                .map(|s| (s.as_str().to_owned(), s.as_str().to_owned())),
        )
        .collect();
    let filters = [
        Field {
            name: "cluster",
            label: "Cluster",
            control: html::input("text", &filter.cluster, ""),
            hint: "",
            error: None,
        },
        Field {
            name: "state",
            label: "State",
            control: html::select(&states, &filter.state),
            hint: "",
            error: None,
        },
        Field {
            name: "submitter",
            label: "Submitter",
            control: html::input("text", &filter.submitter, ""),
            hint: "",
            error: None,
        },
    ];
    let body = format!(
        "<form method=\"get\" action=\"/studio/jobs\" class=\"filters\" role=\"search\">{}<button type=\"submit\">Filter</button></form>{}{}",
        filters.iter().map(Field::render).collect::<String>(),
        html::table(
            "Jobs, newest first",
            &[
                "Job",
                "Name",
                "Cluster",
                "State",
                "Why",
                "Submitter",
                "Created"
            ],
            &rows
        ),
        match &next {
            // The same filters, from where this page ended.
            Some(token) => format!(
                "<p><a href=\"/studio/jobs?cluster={}&amp;state={}&amp;submitter={}&amp;page={}\">Older jobs</a> <small class=\"muted\">(pages of {JOB_LIST_LIMIT}; state and submitter filter each page)</small></p>",
                seg(&filter.cluster),
                seg(&filter.state),
                seg(&filter.submitter),
                seg(token)
            ),
            None => String::new(),
        }
    );
    ok_page(&visitor, "Jobs", Section::Jobs, &body)
}

pub async fn job<S: Store>(
    State(studio): Shared<S>,
    visitor: Visitor,
    Path(id): Path<String>,
) -> Response {
    let j = match Jobs::new(studio.plane.clone())
        .get_job(&visitor.caller, &id)
        .await
    {
        Ok(j) => j,
        Err(e) => return refused(&visitor, &e),
    };
    let waiting = matches!(j.state, strato_core::job::JobState::Queued);
    let mut body = html::facts(&[
        ("State", esc(j.state.as_str())),
        (
            if waiting { "Why it waits" } else { "Why" },
            esc(if j.reason.is_empty() { "-" } else { &j.reason }),
        ),
        (
            "Cluster",
            format!(
                "<a href=\"/studio/compute/{}\">{}</a>",
                seg(&j.spec.cluster),
                esc(&j.spec.cluster)
            ),
        ),
        ("Name", esc(&j.spec.display_name)),
        ("Image", esc(&j.spec.image)),
        (
            "Command",
            format!("<code>{}</code>", esc(&j.spec.command.join(" "))),
        ),
        ("Attempt", j.attempt.to_string()),
        (
            "Exit code",
            j.exit_code.map_or_else(|| "-".into(), |c| c.to_string()),
        ),
        ("Submitter", esc(&j.submitted_by)),
        ("Created", esc(&html::when(j.created_at))),
    ]);
    if !j.state.is_final() && may(&visitor, Action::CancelJob, Some(&j.spec.cluster)) {
        let _ = write!(
            body,
            "<form method=\"post\" action=\"/studio/jobs/{}/cancel\">{}<button type=\"submit\" class=\"danger\">Cancel job</button></form>",
            seg(&j.id),
            html::csrf_field(&visitor.csrf)
        );
    }
    let attempts: Vec<Vec<String>> = j
        .attempts
        .iter()
        .map(|a| {
            vec![
                a.attempt.to_string(),
                esc(&a.node_ids.join(", ")),
                esc(&html::when(a.started_at)),
                esc(&a.ended_at.map(html::when).unwrap_or_else(|| "-".into())),
                a.exit_code.map_or_else(|| "-".into(), |c| c.to_string()),
                esc(&a.reason),
            ]
        })
        .collect();
    body.push_str(&html::table(
        "Attempts",
        &[
            "Attempt",
            "Nodes",
            "Started",
            "Ended",
            "Exit code",
            "Why it ended",
        ],
        &attempts,
    ));
    if may(&visitor, Action::StreamLogs, Some(&j.spec.cluster)) {
        let _ = write!(
            body,
            "<h2 id=\"logs-title\">Logs</h2><pre id=\"logs\" class=\"logs\" role=\"log\" aria-live=\"off\" tabindex=\"0\" aria-labelledby=\"logs-title\" data-src=\"/studio/jobs/{}/logs\" data-final=\"{}\"></pre><p id=\"logs-state\" class=\"muted\" role=\"status\"></p>",
            seg(&j.id),
            j.state.is_final()
        );
    }
    ok_page(&visitor, &format!("Job {}", j.id), Section::Jobs, &body)
}

/// The job's log lines as server-sent events (`line`, each with its
/// position as the event's id, then `end`), followed until the job ends;
/// one of the caller's long-lived calls. A browser that reconnects sends
/// the last id it saw (`Last-Event-ID`) and gets the lines after it.
pub async fn job_logs<S: Store>(
    State(studio): Shared<S>,
    visitor: Visitor,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let after = last_event_id(&headers);
    let lines = match Jobs::new(studio.plane.clone())
        .stream_logs(&visitor.caller, id, true, after)
        .await
    {
        Ok(lines) => lines,
        Err(e) => return refused(&visitor, &e),
    };
    // Relayed by a task that also ends the stream when the session does
    // (signed out elsewhere, expired), not only when the job ends.
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(16);
    let session = visitor.session.clone();
    tokio::spawn(async move {
        let mut lines = lines;
        let mut check = tokio::time::interval(super::STREAM_SESSION_CHECK);
        loop {
            let event = tokio::select! {
                line = lines.next() => match line {
                    Some(Ok(l)) => Event::default()
                        .event("line")
                        .id(l.pos.to_string())
                        .data(if l.stream == 2 {
                            format!("[stderr] {}", l.line)
                        } else {
                            l.line
                        }),
                    Some(Err(e)) => {
                        let _ = tx.send(Event::default().event("failed").data(e.to_string())).await;
                        return;
                    }
                    None => {
                        let _ = tx.send(Event::default().event("end").data("the job ended")).await;
                        return;
                    }
                },
                _ = check.tick() => {
                    if studio.holds(&session) {
                        continue;
                    }
                    let _ = tx.send(Event::default().event("failed").data("the session ended")).await;
                    return;
                }
                () = tx.closed() => return,
            };
            if tx.send(event).await.is_err() {
                return;
            }
        }
    });
    let events = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, Infallible>);
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The position a reconnecting `EventSource` saw last; none for a first
/// connection or an id that is not one of ours.
fn last_event_id(headers: &HeaderMap) -> Option<u64> {
    headers
        .get("last-event-id")?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|pos| i64::try_from(*pos).is_ok())
}

pub async fn cancel_job<S: Store>(
    State(studio): Shared<S>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let visitor = match studio.poster(&headers, &form.csrf).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let outcome = Jobs::new(studio.plane.clone())
        .cancel_job(&visitor.caller, &id)
        .await
        .map(drop);
    done(&visitor, outcome, &format!("/studio/jobs/{}", seg(&id)))
}

// ---- quota ----

#[derive(Deserialize)]
pub struct LocationQuery {
    #[serde(default)]
    location: String,
}

pub async fn quota<S: Store>(
    State(studio): Shared<S>,
    visitor: Visitor,
    Query(q): Query<LocationQuery>,
) -> Response {
    let usage = match Compute::new(studio.plane.clone())
        .list_usage(&visitor.caller, q.location.trim().to_owned())
        .await
    {
        Ok(u) => u,
        Err(e) => return refused(&visitor, &e),
    };
    let rows: Vec<Vec<String>> = usage
        .lines
        .iter()
        .filter(|l| l.current > 0 || l.limit > 0)
        .map(|l| {
            // No limit: shown full.
            let percent = l
                .current
                .saturating_mul(100)
                .checked_div(l.limit)
                .map_or(100, |p| p.min(100));
            vec![
                esc(&l.name),
                format!("{} / {} {}", l.current, l.limit, esc(l.unit)),
                format!(
                    "<meter min=\"0\" max=\"100\" value=\"{percent}\" aria-label=\"{} used\">{percent}%</meter>",
                    esc(&l.name)
                ),
            ]
        })
        .collect();
    let location = Field {
        name: "location",
        label: "Location",
        control: html::input("text", &usage.location, ""),
        hint: "",
        error: None,
    };
    let body = format!(
        "<form method=\"get\" action=\"/studio/quota\" class=\"filters\">{}<button type=\"submit\">Show</button></form>{}",
        location.render(),
        html::table(
            &format!("Quota and usage in {}", usage.location),
            &["Quota", "Used / limit", ""],
            &rows
        )
    );
    ok_page(&visitor, "Quota", Section::Quota, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reconnecting_browser_goes_on_after_the_last_line_it_saw() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("last-event-id", value.parse().expect("a header value"));
            last_event_id(&headers)
        };
        assert_eq!(last_event_id(&HeaderMap::new()), None, "a first connection");
        assert_eq!(with("41"), Some(41));
        assert_eq!(with(" 41 "), Some(41));
        assert_eq!(with("not-ours"), None);
        assert_eq!(with("-1"), None);
        assert_eq!(with(&u64::MAX.to_string()), None, "beyond any position");
    }
}
