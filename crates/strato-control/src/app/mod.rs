//! The control plane's use cases, between the wire and the store: what
//! each call checks, asks `strato-core` to decide, has the store and the
//! provider carry out, and logs. Nothing here knows gRPC or HTTP; the
//! adapters in `grpc/` convert requests and answers and map [`AppError`] to
//! a status code in one place.
//!
//! Every use case takes the [`Caller`] and asks [`authorize`] whether it may
//! run its [`Action`] on its scope: the one place where roles are checked
//! (`strato_core::access` holds the table), so gRPC and the studio share
//! it.

pub mod access;
pub mod compute;
pub mod datastores;
pub mod identity;
pub mod job_data;
pub mod jobs;
pub mod registries;

pub use strato_core::access::Action;
use strato_core::access::{self as rules, Grant, Role, Scope};
use strato_core::node::NodeState;
use strato_core::quota::QuotaError;
use strato_core::{FieldError, SpecError};

use crate::federation::FederationError;
use crate::store::{Conflict, StoreError};
use crate::tokens::TokenError;

pub use access::Access;
pub use compute::{ClusterView, Compute, CreatedCluster, Usage};
pub use datastores::{Datastores, NewDatastore};
pub use identity::{TokenRequest, Vending};
pub use job_data::{CodePart, CodeSnapshot, OutputPart, OutputStream};
pub use jobs::{Jobs, LogStream};
pub use registries::{NewRegistry, Registries};

/// Why a use case refused or failed, by whose fault: one variant per
/// answer a caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Bad input; the message starts with the field path.
    #[error(transparent)]
    InvalidArgument(#[from] FieldError),
    #[error(transparent)]
    NotFound(NotFound),
    #[error(transparent)]
    AlreadyExists(AlreadyExists),
    /// The state found forbids the change.
    #[error(transparent)]
    FailedPrecondition(Precondition),
    /// Over the quota.
    #[error(transparent)]
    ResourceExhausted(#[from] QuotaError),
    /// Over a rate limit: what it is, and when to try again.
    #[error(
        "{caller} may submit {rate} jobs per second (bursts of {burst}); retry in {retry_after_ms} ms"
    )]
    RateLimited {
        caller: String,
        rate: f64,
        burst: u32,
        retry_after_ms: u64,
    },
    /// The caller follows as many log streams as it may.
    #[error(
        "{caller} keeps {limit} log streams, job waits or code and output transfers open already (--max-followers-per-caller); end one first"
    )]
    TooManyFollowers { caller: String, limit: u32 },
    /// The caller did not prove who it is.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// A service the control plane depends on refused or was not reached.
    #[error("{0}")]
    Unavailable(String),
    /// The server's own fault; logged where it becomes a status.
    #[error(transparent)]
    Internal(Internal),
}

/// What was looked for and is not there.
#[derive(Debug, thiserror::Error)]
pub enum NotFound {
    #[error("cluster {0:?} not found")]
    Cluster(String),
    #[error("datastore {0:?} not found")]
    Datastore(String),
    /// An API token or role assignment, as the store says it.
    #[error("{0}")]
    Access(String),
    #[error("job {0:?} not found")]
    Job(String),
    #[error("node {0:?} not found")]
    Node(String),
    #[error("node {node:?} is not in cluster {cluster}")]
    NodeOfCluster { node: String, cluster: String },
    /// No identity of the cluster matches the selector.
    #[error("Identity not found")]
    Identity,
}

/// What a create would make twice.
#[derive(Debug, thiserror::Error)]
pub enum AlreadyExists {
    #[error("a cluster named {0:?} already exists")]
    Cluster(String),
    #[error("a datastore named {0:?} already exists")]
    Datastore(String),
    /// An API token or role assignment, as the store says it.
    #[error("{0}")]
    Access(String),
}

/// What about the current state forbids the call.
#[derive(Debug, thiserror::Error)]
pub enum Precondition {
    /// What the store found.
    #[error(transparent)]
    Conflict(#[from] Conflict),
    /// An immutable property would change.
    #[error(transparent)]
    Immutable(SpecError),
    #[error(
        "cluster {cluster} is dedicated: dedicated nodes are never evicted, only low-priority ones"
    )]
    DedicatedCluster { cluster: String },
    #[error(
        "simulated evictions are delivered by the local provider's Scheduled Events; this control plane has none"
    )]
    NoScheduledEvents,
    #[error("node {node} is {}: only a live node can be evicted", .state.as_str())]
    NodeNotLive { node: String, state: NodeState },
    #[error("no managed identity is assigned to cluster {cluster}")]
    NoIdentity { cluster: String },
    /// Code snapshots, artifacts and outputs without a path need the
    /// default datastore.
    #[error(
        "{what} goes to the default datastore, and none is registered: register it once with `strato datastore create -n {} --account-url URL --container NAME`",
        strato_core::job::DEFAULT_DATASTORE
    )]
    NoDefaultDatastore { what: String },
    /// The identity cannot be federated to Entra ID.
    #[error("{0}")]
    NotFederated(String),
    /// A datastore's container or path is not there.
    #[error("{0}")]
    Storage(String),
    /// An attached cluster admits no more machines.
    #[error("{0}")]
    Join(String),
    #[error(
        "power: this control plane runs no power commands; start it with --power-commands-dir DIR holding them"
    )]
    NoPowerCommands,
    /// Join tokens and detaching are for attached clusters' machines.
    #[error(
        "cluster {cluster} is of type amlcompute: its nodes come from the provider; join tokens and detach are for clusters of type attached"
    )]
    NotAttached { cluster: String },
}

/// The server's own faults.
#[derive(Debug, thiserror::Error)]
pub enum Internal {
    /// The database failed or holds what cannot be read.
    #[error("store failure: {0}")]
    Store(StoreError),
    #[error("stored cluster has a bad size: {0}")]
    StoredSize(FieldError),
    #[error(transparent)]
    Token(#[from] TokenError),
    /// Federation is set up wrongly.
    #[error("{0}")]
    Federation(String),
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::ClusterNotFound(n) => AppError::NotFound(NotFound::Cluster(n)),
            StoreError::DatastoreNotFound(n) => AppError::NotFound(NotFound::Datastore(n)),
            StoreError::JobNotFound(n) => AppError::NotFound(NotFound::Job(n)),
            StoreError::NodeNotFound(n) => AppError::NotFound(NotFound::Node(n)),
            StoreError::ClusterExists(n) => AppError::AlreadyExists(AlreadyExists::Cluster(n)),
            StoreError::DatastoreExists(n) => AppError::AlreadyExists(AlreadyExists::Datastore(n)),
            e @ (StoreError::BadToken
            | StoreError::JoinTokenUsed(_)
            | StoreError::JoinTokenExpired(_)) => AppError::Unauthenticated(e.to_string()),
            e @ StoreError::JoinTokenNotFound { .. } => {
                AppError::NotFound(NotFound::Access(e.to_string()))
            }
            e @ StoreError::TooManyJoinTokens { .. } => {
                AppError::FailedPrecondition(Precondition::Join(e.to_string()))
            }
            e @ StoreError::JoinRefused {
                why: strato_core::lifecycle::JoinRefusal::ClusterFull { .. },
                ..
            } => AppError::FailedPrecondition(Precondition::Join(e.to_string())),
            e @ StoreError::JoinRefused { .. } => AppError::Unauthenticated(e.to_string()),
            e @ (StoreError::RegistryExists(_) | StoreError::RegistryServerTaken { .. }) => {
                AppError::AlreadyExists(AlreadyExists::Access(e.to_string()))
            }
            e @ StoreError::RegistryNotFound(_) => {
                AppError::NotFound(NotFound::Access(e.to_string()))
            }
            e @ (StoreError::TokenExists(_) | StoreError::AssignmentExists { .. }) => {
                AppError::AlreadyExists(AlreadyExists::Access(e.to_string()))
            }
            e @ (StoreError::TokenNotFound(_) | StoreError::AssignmentNotFound { .. }) => {
                AppError::NotFound(NotFound::Access(e.to_string()))
            }
            StoreError::Conflict(c) => AppError::FailedPrecondition(Precondition::Conflict(c)),
            StoreError::Spec(SpecError::Invalid(f)) => AppError::InvalidArgument(f),
            StoreError::Spec(e @ SpecError::Immutable { .. }) => {
                AppError::FailedPrecondition(Precondition::Immutable(e))
            }
            StoreError::Quota(q) => AppError::ResourceExhausted(q),
            e @ (StoreError::Database(_)
            | StoreError::Migration(_)
            | StoreError::Fenced(_)
            | StoreError::Corrupt(_)) => AppError::Internal(Internal::Store(e)),
        }
    }
}

impl From<Precondition> for AppError {
    fn from(p: Precondition) -> Self {
        AppError::FailedPrecondition(p)
    }
}

impl From<FederationError> for AppError {
    fn from(e: FederationError) -> Self {
        match e {
            FederationError::NotFederated(m) => Precondition::NotFederated(m).into(),
            e @ FederationError::Exchange(_) => AppError::Unavailable(e.to_string()),
            FederationError::Setup(m) => AppError::Internal(Internal::Federation(m)),
        }
    }
}

/// A required text field: empty is refused, naming the field.
pub(crate) fn required(field: &str, value: &str) -> Result<(), AppError> {
    if value.is_empty() {
        return Err(FieldError::new(field, "is required").into());
    }
    Ok(())
}

/// Who makes a call, as the authentication layer established it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A user or program with a bearer token (an API token, an OIDC JWT),
    /// and every role it holds.
    User(Principal),
    /// A node's agent, on the agent-only services, authenticated as node
    /// `0` by its session token and (under TLS) its client certificate.
    Node(String),
}

/// An authenticated principal: `token:NAME`, or `oidc:SUBJECT`, and its
/// roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub grants: Vec<Grant>,
    /// When its credential stops being valid (ms; an API token's or a
    /// JWT's expiry): long-lived calls end then.
    pub expires_at: Option<i64>,
}

impl Caller {
    /// Who it is, for limits, records and logs.
    pub fn principal(&self) -> &str {
        match self {
            Caller::User(p) => &p.name,
            Caller::Node(node) => node,
        }
    }

    /// The roles it holds.
    pub fn grants(&self) -> &[Grant] {
        match self {
            Caller::User(p) => &p.grants,
            Caller::Node(_) => &[],
        }
    }

    /// An Owner at `/` (tests and in-process callers).
    pub fn owner(name: &str) -> Caller {
        Caller::User(Principal {
            name: name.to_owned(),
            grants: vec![Grant {
                role: Role::Owner,
                scope: Scope::All,
            }],
            expires_at: None,
        })
    }
}

/// Whether `caller` may run `action` on a cluster (`Some(name)`) or on
/// the whole control plane (`None`); PERMISSION_DENIED naming both
/// otherwise.
pub fn authorize(caller: &Caller, action: Action, cluster: Option<&str>) -> Result<(), AppError> {
    let target = match cluster {
        Some(name) => Scope::cluster(name),
        None => Scope::All,
    };
    authorize_at(caller, action, &target)
}

/// Whether `caller` may run `action` on `target`.
pub fn authorize_at(caller: &Caller, action: Action, target: &Scope) -> Result<(), AppError> {
    let allowed = match caller {
        // An agent may only ask for its job's tokens; which job is checked
        // by the use case against the session it brings.
        Caller::Node(_) => action == Action::GetToken,
        Caller::User(p) => rules::permits(&p.grants, action, target),
    };
    if allowed {
        return Ok(());
    }
    Err(denied(caller, action, &target.to_string()))
}

/// Whether `caller` may run `action` at some scope, for what belongs to no
/// one scope (the VM sizes, the quota, who the caller is).
pub fn authorize_anywhere(caller: &Caller, action: Action) -> Result<(), AppError> {
    if rules::permits_anywhere(caller.grants(), action) {
        return Ok(());
    }
    Err(denied(caller, action, "any scope"))
}

/// Which clusters `caller` may run `action` on: all (`None`) or those
/// listed; refused when none. Listings show only those.
pub fn visible_clusters(caller: &Caller, action: Action) -> Result<Option<Vec<String>>, AppError> {
    match rules::visible_clusters(caller.grants(), action) {
        Some(names) if names.is_empty() => Err(denied(caller, action, "any scope")),
        visible => Ok(visible),
    }
}

fn denied(caller: &Caller, action: Action, target: &str) -> AppError {
    let roles: Vec<&str> = action.roles().into_iter().map(Role::as_str).collect();
    AppError::PermissionDenied(format!(
        "{} may not {action} at {target}: that needs the role {} there",
        caller.principal(),
        roles.join(" or ")
    ))
}

#[cfg(test)]
mod tests;
