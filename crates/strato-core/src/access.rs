//! Who may do what: the four roles (modelled on Azure ML's built-in ones),
//! the scopes they are granted at, every action a caller can take, and the
//! one table of which role allows which action.
//!
//! - **Reader** reads clusters, nodes, sizes, usage, jobs, datastores and
//!   registries (never their passwords).
//! - **DataScientist**: Reader, and submits, cancels and reads the logs of
//!   jobs; no cluster writes.
//! - **ComputeOperator**: Reader, and creates, updates and deletes clusters,
//!   assigns identities, simulates evictions, makes join tokens and
//!   detaches machines.
//! - **Owner**: everything, including API tokens, role assignments,
//!   datastores and registries.
//!
//! Scopes: `/` (everything), `/clusters/NAME` (one cluster and its jobs),
//! and a user-assigned identity's resource id (`/subscriptions/…`), where
//! the right to assign that identity is granted.

use std::fmt;

use crate::FieldError;

/// A built-in role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Reader,
    DataScientist,
    ComputeOperator,
    Owner,
}

impl Role {
    pub const ALL: [Role; 4] = [
        Role::Reader,
        Role::DataScientist,
        Role::ComputeOperator,
        Role::Owner,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "Reader",
            Role::DataScientist => "DataScientist",
            Role::ComputeOperator => "ComputeOperator",
            Role::Owner => "Owner",
        }
    }

    /// A role by its name (case-insensitive), or an error naming `field`.
    pub fn parse(field: &str, text: &str) -> Result<Role, FieldError> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(text))
            .ok_or_else(|| {
                FieldError::new(
                    field,
                    format!(
                        "{text:?} is not a role; one of Reader, DataScientist, ComputeOperator, Owner"
                    ),
                )
            })
    }

    /// What it may do, in a line, for help texts and tables.
    pub fn describe(self) -> &'static str {
        match self {
            Role::Reader => {
                "read clusters, nodes, sizes, usage, jobs, datastores, registries and metrics"
            }
            Role::DataScientist => {
                "Reader, and submit, cancel, delete and read the logs and outputs of jobs (and upload their code)"
            }
            Role::ComputeOperator => {
                "Reader, and create, update and delete clusters, assign identities, simulate evictions, make join tokens and detach machines"
            }
            Role::Owner => {
                "everything, including API tokens, role assignments, datastores and registries"
            }
        }
    }

    /// Whether this role allows `action` (at a scope that covers it).
    pub fn allows(self, action: Action) -> bool {
        use Action::*;
        let reads = matches!(
            action,
            GetCluster
                | ListClusters
                | ListNodes
                | ListSizes
                | ListUsage
                | GetJob
                | ListJobs
                | WaitJob
                | GetDatastore
                | ListDatastores
                | GetRegistry
                | ListRegistries
                | WhoAmI
                | ReadMetrics
        );
        match self {
            Role::Owner => true,
            Role::Reader => reads,
            Role::DataScientist => {
                reads
                    || matches!(
                        action,
                        SubmitJob | CancelJob | DeleteJob | StreamLogs | ReadOutputs
                    )
            }
            Role::ComputeOperator => {
                reads
                    || matches!(
                        action,
                        CreateCluster
                            | UpdateCluster
                            | DeleteCluster
                            | AssignIdentity
                            | RemoveIdentity
                            | UseIdentity
                            | SimulateEviction
                            | CreateJoinToken
                            | ListJoinTokens
                            | RevokeJoinToken
                            | DetachNode
                    )
            }
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a role is granted, or what an action is taken on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// `/`: the whole control plane.
    All,
    /// `/clusters/NAME`: one cluster, its nodes and its jobs. Kept
    /// lowercase: cluster names are unique regardless of case.
    Cluster(String),
    /// A user-assigned identity's resource id (kept lowercase, as Azure
    /// compares them): where the right to assign it is granted.
    Identity(String),
}

impl Scope {
    /// Parses `/`, `/clusters/NAME` or `/subscriptions/…`, naming `field`
    /// when it is none of them.
    pub fn parse(field: &str, text: &str) -> Result<Scope, FieldError> {
        if text == "/" || text.is_empty() {
            return Ok(Scope::All);
        }
        if let Some(name) = text.strip_prefix("/clusters/") {
            crate::name::validate_cluster_name(name)
                .map_err(|e| FieldError::new(field, format!("{text:?}: {}", e.rule)))?;
            return Ok(Scope::cluster(name));
        }
        if text.len() <= 1024
            && text.to_ascii_lowercase().starts_with("/subscriptions/")
            && !text.contains(char::is_whitespace)
        {
            return Ok(Scope::identity(text));
        }
        Err(FieldError::new(
            field,
            format!(
                "{text:?} is not a scope; one of /, /clusters/NAME, or a user-assigned identity's resource id"
            ),
        ))
    }

    /// The scope of a cluster, by its name in any case.
    pub fn cluster(name: &str) -> Scope {
        Scope::Cluster(name.to_ascii_lowercase())
    }

    /// The scope of a user-assigned identity, by its resource id (compared
    /// as Azure does, ignoring case).
    pub fn identity(resource_id: &str) -> Scope {
        Scope::Identity(resource_id.to_ascii_lowercase())
    }

    /// Whether a grant at this scope reaches `target`.
    pub fn covers(&self, target: &Scope) -> bool {
        matches!(self, Scope::All) || self == target
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::All => f.write_str("/"),
            Scope::Cluster(name) => write!(f, "/clusters/{name}"),
            Scope::Identity(id) => f.write_str(id),
        }
    }
}

/// Who calls: an API token (`token:NAME`) or an OIDC caller
/// (`oidc:SUBJECT`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Principal {
    Token(String),
    Oidc(String),
}

/// The longest principal, as written.
pub const MAX_PRINCIPAL_LEN: usize = 256;

impl Principal {
    /// Parses `token:NAME` or `oidc:SUBJECT`, naming `field` otherwise.
    pub fn parse(field: &str, text: &str) -> Result<Principal, FieldError> {
        let bad = || {
            FieldError::new(
                field,
                format!(
                    "{text:?} is not a principal; token:NAME or oidc:SUBJECT (at most {MAX_PRINCIPAL_LEN} characters)"
                ),
            )
        };
        if text.len() > MAX_PRINCIPAL_LEN || text.chars().any(char::is_control) {
            return Err(bad());
        }
        match text.split_once(':') {
            Some(("token", name)) => {
                validate_token_name(field, name).map_err(|_| bad())?;
                Ok(Principal::Token(name.to_owned()))
            }
            Some(("oidc", subject)) if !subject.is_empty() => {
                Ok(Principal::Oidc(subject.to_owned()))
            }
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Token(name) => write!(f, "token:{name}"),
            Principal::Oidc(subject) => write!(f, "oidc:{subject}"),
        }
    }
}

/// An API token's name: 1 to 63 lowercase letters, digits and '-'.
pub fn validate_token_name(field: &str, name: &str) -> Result<(), FieldError> {
    let ok = (1..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !ok {
        return Err(FieldError::new(
            field,
            "must be 1 to 63 lowercase letters, digits and '-'",
        ));
    }
    Ok(())
}

/// The longest lifetime a token may be given: ten years.
pub const MAX_TOKEN_SECONDS: u64 = 10 * 365 * 24 * 3600;

/// When a token made at `now_ms` to live `seconds` (0: for ever) expires,
/// or an error naming `field` when it would live too long.
pub fn token_expiry(field: &str, now_ms: i64, seconds: u64) -> Result<Option<i64>, FieldError> {
    if seconds > MAX_TOKEN_SECONDS {
        return Err(FieldError::new(
            field,
            format!("must be at most {MAX_TOKEN_SECONDS} (ten years); 0: never expires"),
        ));
    }
    // Bounded above: at most 3.2e11 ms.
    let ms = i64::try_from(seconds).unwrap_or(0) * 1000;
    Ok((seconds > 0).then_some(now_ms + ms))
}

/// Whether a token is good at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    Valid,
    Revoked,
    Expired,
}

/// A token's state at `now_ms`, from when it was revoked and expires.
pub fn token_state(revoked_at: Option<i64>, expires_at: Option<i64>, now_ms: i64) -> TokenState {
    if revoked_at.is_some() {
        TokenState::Revoked
    } else if expires_at.is_some_and(|e| now_ms >= e) {
        TokenState::Expired
    } else {
        TokenState::Valid
    }
}

/// A role at a scope, held by a principal.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Grant {
    pub role: Role,
    pub scope: Scope,
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {}", self.role, self.scope)
    }
}

/// Every use case a caller can run, by name: what a role grants or
/// withholds. Each RPC maps to exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    CreateCluster,
    GetCluster,
    ListClusters,
    UpdateCluster,
    DeleteCluster,
    ListNodes,
    AssignIdentity,
    RemoveIdentity,
    /// Assigning one user-assigned identity, checked at the identity's
    /// scope (Azure's `userAssignedIdentities/*/assign/action`).
    UseIdentity,
    SimulateEviction,
    /// Making a join token for an attached cluster's machines.
    CreateJoinToken,
    /// Listing an attached cluster's join tokens (never their secrets).
    ListJoinTokens,
    /// Revoking one.
    RevokeJoinToken,
    /// Draining a machine out of an attached cluster.
    DetachNode,
    ListSizes,
    ListUsage,
    SubmitJob,
    GetJob,
    ListJobs,
    CancelJob,
    /// Deleting an ended job with its logs.
    DeleteJob,
    StreamLogs,
    /// Reading a job's outputs and artifacts through the control plane
    /// (with its cluster's identity), as `job download` does.
    ReadOutputs,
    WaitJob,
    CreateDatastore,
    GetDatastore,
    ListDatastores,
    DeleteDatastore,
    /// Registries hold credentials: made and removed by Owners only.
    CreateRegistry,
    GetRegistry,
    ListRegistries,
    DeleteRegistry,
    CreateToken,
    ListTokens,
    RevokeToken,
    CreateRoleAssignment,
    ListRoleAssignments,
    DeleteRoleAssignment,
    WhoAmI,
    /// A node's agent asking for a token of its job's identity.
    GetToken,
    /// Scraping the control plane's `/metrics` (every cluster's numbers:
    /// needs the right at `/`).
    ReadMetrics,
}

impl Action {
    /// The permission's name, as refusals say it.
    pub fn name(self) -> &'static str {
        use Action::*;
        match self {
            CreateCluster => "clusters/create",
            GetCluster | ListClusters => "clusters/read",
            UpdateCluster => "clusters/write",
            DeleteCluster => "clusters/delete",
            ListNodes => "nodes/read",
            AssignIdentity | RemoveIdentity => "clusters/identities/write",
            UseIdentity => "identities/assign",
            SimulateEviction => "nodes/evict",
            CreateJoinToken => "clusters/joinTokens/create",
            ListJoinTokens => "clusters/joinTokens/read",
            RevokeJoinToken => "clusters/joinTokens/delete",
            DetachNode => "nodes/detach",
            ListSizes => "sizes/read",
            ListUsage => "usage/read",
            SubmitJob => "jobs/submit",
            GetJob | ListJobs | WaitJob => "jobs/read",
            CancelJob => "jobs/cancel",
            DeleteJob => "jobs/delete",
            StreamLogs => "jobs/logs/read",
            ReadOutputs => "jobs/outputs/read",
            CreateDatastore => "datastores/create",
            GetDatastore | ListDatastores => "datastores/read",
            DeleteDatastore => "datastores/delete",
            CreateRegistry => "registries/create",
            GetRegistry | ListRegistries => "registries/read",
            DeleteRegistry => "registries/delete",
            CreateToken => "tokens/create",
            ListTokens => "tokens/read",
            RevokeToken => "tokens/revoke",
            CreateRoleAssignment => "roleAssignments/create",
            ListRoleAssignments => "roleAssignments/read",
            DeleteRoleAssignment => "roleAssignments/delete",
            WhoAmI => "whoami",
            GetToken => "identities/token",
            ReadMetrics => "metrics/read",
        }
    }

    /// The roles that allow it, lowest first, for refusals.
    pub fn roles(self) -> Vec<Role> {
        Role::ALL.into_iter().filter(|r| r.allows(self)).collect()
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether `grants` allow `action` on `target`.
pub fn permits(grants: &[Grant], action: Action, target: &Scope) -> bool {
    grants
        .iter()
        .any(|g| g.role.allows(action) && g.scope.covers(target))
}

/// Whether `grants` allow `action` at some scope: for what belongs to no
/// one scope (the VM sizes, the quota, who the caller is).
pub fn permits_anywhere(grants: &[Grant], action: Action) -> bool {
    grants.iter().any(|g| g.role.allows(action))
}

/// Which clusters a listing may show to a caller with `grants`: all of
/// them (`None`), or those named (a caller granted `action` only on some
/// clusters sees only those).
pub fn visible_clusters(grants: &[Grant], action: Action) -> Option<Vec<String>> {
    let mut names = Vec::new();
    for g in grants.iter().filter(|g| g.role.allows(action)) {
        match &g.scope {
            Scope::All => return None,
            Scope::Cluster(name) => names.push(name.clone()),
            Scope::Identity(_) => {}
        }
    }
    names.sort();
    names.dedup();
    Some(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(role: Role, scope: &str) -> Grant {
        Grant {
            role,
            scope: Scope::parse("scope", scope).expect("scope"),
        }
    }

    #[test]
    fn roles_follow_azure_ml_built_ins() {
        use Action::*;
        let ds = Role::DataScientist;
        assert!(ds.allows(SubmitJob) && ds.allows(StreamLogs) && ds.allows(GetCluster));
        assert!(!ds.allows(CreateCluster) && !ds.allows(UpdateCluster));
        assert!(!ds.allows(UseIdentity) && !ds.allows(CreateToken));
        let op = Role::ComputeOperator;
        assert!(op.allows(CreateCluster) && op.allows(SimulateEviction) && op.allows(UseIdentity));
        assert!(op.allows(CreateJoinToken) && op.allows(DetachNode));
        assert!(op.allows(ListJoinTokens) && op.allows(RevokeJoinToken));
        assert!(!Role::Reader.allows(ListJoinTokens));
        assert!(!ds.allows(CreateJoinToken) && !ds.allows(DetachNode));
        assert!(!op.allows(SubmitJob) && !op.allows(StreamLogs) && !op.allows(CreateDatastore));
        let r = Role::Reader;
        assert!(r.allows(ListJobs) && !r.allows(StreamLogs) && !r.allows(CancelJob));
        // Nothing a user has allows an agent's token vending but Owner.
        assert_eq!(GetToken.roles(), vec![Role::Owner]);
        for role in Role::ALL {
            assert!(role.allows(WhoAmI), "{role} may ask who it is");
        }
    }

    #[test]
    fn a_cluster_scope_reaches_only_its_cluster() {
        let grants = [grant(Role::DataScientist, "/clusters/team-a")];
        let a = Scope::Cluster("team-a".into());
        let b = Scope::Cluster("team-b".into());
        assert!(permits(&grants, Action::SubmitJob, &a));
        assert!(!permits(&grants, Action::SubmitJob, &b));
        assert!(!permits(&grants, Action::SubmitJob, &Scope::All));
        assert_eq!(
            visible_clusters(&grants, Action::ListJobs),
            Some(vec!["team-a".to_owned()])
        );
        assert_eq!(
            visible_clusters(&[grant(Role::Reader, "/")], Action::ListJobs),
            None
        );
    }

    #[test]
    fn identities_are_assigned_only_where_granted() {
        let id = "/subscriptions/S/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/teamA";
        let target = Scope::parse("identity", id).expect("identity scope");
        let on_cluster = [grant(Role::ComputeOperator, "/clusters/team-b")];
        assert!(!permits(&on_cluster, Action::UseIdentity, &target));
        let on_identity = [grant(Role::ComputeOperator, &id.to_uppercase())];
        assert!(permits(&on_identity, Action::UseIdentity, &target));
        assert!(permits(
            &[grant(Role::Owner, "/")],
            Action::UseIdentity,
            &target
        ));
        assert_eq!(Scope::identity(id), target);
        assert!(permits_anywhere(&on_cluster, Action::WhoAmI));
        assert!(!permits_anywhere(&on_cluster, Action::CreateToken));
        assert!(!permits_anywhere(&[], Action::WhoAmI));
    }

    #[test]
    fn cluster_scopes_ignore_case_as_cluster_names_do() {
        let grants = [grant(Role::DataScientist, "/clusters/Team-A")];
        assert!(permits(&grants, Action::GetJob, &Scope::cluster("team-a")));
        assert_eq!(
            visible_clusters(&grants, Action::ListJobs),
            Some(vec!["team-a".to_owned()])
        );
    }

    #[test]
    fn principals_and_token_lifetimes() {
        let p = Principal::parse("principal", "token:ci-1").expect("token");
        assert_eq!(p, Principal::Token("ci-1".into()));
        assert_eq!(p.to_string(), "token:ci-1");
        assert_eq!(
            Principal::parse("principal", "oidc:alice@example.com").expect("oidc"),
            Principal::Oidc("alice@example.com".into())
        );
        for bad in ["alice", "token:", "token:Bad Name", "oidc:", "user:x"] {
            let e = Principal::parse("principal", bad).expect_err(bad);
            assert!(e.to_string().starts_with("principal: "), "{e}");
        }
        assert_eq!(token_expiry("t", 1_000, 0), Ok(None));
        assert_eq!(token_expiry("t", 1_000, 2), Ok(Some(3_000)));
        assert!(token_expiry("t", 0, MAX_TOKEN_SECONDS + 1).is_err());
        assert_eq!(token_state(None, Some(3_000), 2_999), TokenState::Valid);
        assert_eq!(token_state(None, Some(3_000), 3_000), TokenState::Expired);
        assert_eq!(token_state(Some(5), None, 0), TokenState::Revoked);
        assert_eq!(token_state(None, None, i64::MAX), TokenState::Valid);
    }

    #[test]
    fn scopes_and_roles_parse_or_name_the_field() {
        assert_eq!(Scope::parse("s", "/").expect("root"), Scope::All);
        assert_eq!(
            Scope::parse("s", "/clusters/gpu-a1")
                .expect("cluster")
                .to_string(),
            "/clusters/gpu-a1"
        );
        let e = Scope::parse("scope", "/teams/x").expect_err("unknown");
        assert!(e.to_string().starts_with("scope: "), "{e}");
        assert!(Scope::parse("scope", "/clusters/Bad Name").is_err());
        assert_eq!(Role::parse("role", "owner").expect("any case"), Role::Owner);
        let e = Role::parse("role", "Admin").expect_err("unknown");
        assert!(e.to_string().contains("ComputeOperator"), "{e}");
    }
}
