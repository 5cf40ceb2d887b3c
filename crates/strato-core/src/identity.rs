//! Managed identities of a cluster: a system-assigned one, or user-assigned
//! ones, each with a client id and a principal (object) id, and which one is
//! the default.

use serde::{Deserialize, Serialize};

use crate::error::FieldError;
use crate::spec::IdentitySpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityKind {
    SystemAssigned,
    UserAssigned,
}

/// One identity as issued: what tokens name in `appid`/`azp` (client id)
/// and `oid` (principal id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub kind: IdentityKind,
    /// The user-assigned identity's resource id; for a system-assigned one,
    /// the cluster's own id (`clusters/<name>`).
    pub resource_id: String,
    pub client_id: String,
    pub principal_id: String,
}

/// The default identity: the system-assigned one, else the first
/// user-assigned one.
pub fn default_identity(identities: &[Identity]) -> Option<&Identity> {
    identities
        .iter()
        .find(|i| i.kind == IdentityKind::SystemAssigned)
        .or_else(|| {
            identities
                .iter()
                .find(|i| i.kind == IdentityKind::UserAssigned)
        })
}

/// How a token request names an identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySelector {
    Default,
    ClientId(String),
    PrincipalId(String),
    ResourceId(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    #[error("no managed identity is assigned to the cluster")]
    NoIdentity,
    #[error("Identity not found")]
    NotFound,
}

/// Picks the identity a token request names, among the cluster's only.
pub fn select<'a>(
    identities: &'a [Identity],
    selector: &IdentitySelector,
) -> Result<&'a Identity, SelectError> {
    if identities.is_empty() {
        return Err(SelectError::NoIdentity);
    }
    let found = match selector {
        IdentitySelector::Default => default_identity(identities),
        IdentitySelector::ClientId(c) => identities
            .iter()
            .find(|i| i.client_id.eq_ignore_ascii_case(c)),
        IdentitySelector::PrincipalId(p) => identities
            .iter()
            .find(|i| i.principal_id.eq_ignore_ascii_case(p)),
        IdentitySelector::ResourceId(r) => identities
            .iter()
            .find(|i| i.resource_id.eq_ignore_ascii_case(r)),
    };
    found.ok_or(SelectError::NotFound)
}

/// The identities a cluster has after `spec` is applied: kept where they
/// already exist (a system-assigned identity keeps its ids), created with
/// `new_ids` otherwise (given the resource id; it returns client and
/// principal ids).
pub fn reconcile_identities(
    cluster: &str,
    spec: &IdentitySpec,
    existing: &[Identity],
    mut new_ids: impl FnMut(&str, IdentityKind) -> (String, String),
) -> Vec<Identity> {
    let mut out = Vec::new();
    let mut take = |kind: IdentityKind, resource_id: &str| {
        if let Some(i) = existing
            .iter()
            .find(|i| i.kind == kind && i.resource_id.eq_ignore_ascii_case(resource_id))
        {
            out.push(i.clone());
        } else {
            let (client_id, principal_id) = new_ids(resource_id, kind);
            out.push(Identity {
                kind,
                resource_id: resource_id.to_owned(),
                client_id,
                principal_id,
            });
        }
    };
    if spec.system_assigned {
        take(IdentityKind::SystemAssigned, &format!("clusters/{cluster}"));
    }
    for id in &spec.user_assigned {
        take(IdentityKind::UserAssigned, id);
    }
    out
}

/// Adds identities to a spec: `[system]`, or user-assigned ids. Never both
/// kinds on one cluster.
pub fn assign(
    spec: &IdentitySpec,
    system: bool,
    user_assigned: &[String],
) -> Result<IdentitySpec, FieldError> {
    let mut next = spec.clone();
    if system {
        next.system_assigned = true;
    }
    for id in user_assigned {
        if !next
            .user_assigned
            .iter()
            .any(|u| u.eq_ignore_ascii_case(id))
        {
            next.user_assigned.push(id.clone());
        }
    }
    if next.system_assigned && !next.user_assigned.is_empty() {
        return Err(FieldError::new(
            "identity",
            "a cluster has either a system-assigned identity or user-assigned identities, never both; remove the other kind first",
        ));
    }
    crate::spec::check_identity(&next)?;
    Ok(next)
}

/// Removes identities from a spec: the named user-assigned ones, or (none
/// named) every identity, the system-assigned one included.
pub fn remove(spec: &IdentitySpec, user_assigned: &[String]) -> Result<IdentitySpec, FieldError> {
    if user_assigned.is_empty() {
        return Ok(IdentitySpec::default());
    }
    let mut next = spec.clone();
    for id in user_assigned {
        let before = next.user_assigned.len();
        next.user_assigned.retain(|u| !u.eq_ignore_ascii_case(id));
        if next.user_assigned.len() == before {
            return Err(FieldError::new(
                "identity.user_assigned_identities",
                format!("{id:?} is not assigned to the cluster"),
            ));
        }
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(cluster: &str, spec: &IdentitySpec, existing: &[Identity]) -> Vec<Identity> {
        let mut n = 0;
        reconcile_identities(cluster, spec, existing, |r, _| {
            n += 1;
            (format!("client-{r}-{n}"), format!("principal-{r}-{n}"))
        })
    }

    #[test]
    fn default_is_system_else_first_user_assigned() {
        let sys = ids(
            "c",
            &IdentitySpec {
                system_assigned: true,
                user_assigned: vec![],
            },
            &[],
        );
        assert_eq!(
            default_identity(&sys).map(|i| i.kind),
            Some(IdentityKind::SystemAssigned)
        );
        let users = ids(
            "c",
            &IdentitySpec {
                system_assigned: false,
                user_assigned: vec!["u1".into(), "u2".into()],
            },
            &[],
        );
        assert_eq!(
            default_identity(&users).map(|i| i.resource_id.as_str()),
            Some("u1")
        );
        assert_eq!(
            select(&[], &IdentitySelector::Default),
            Err(SelectError::NoIdentity)
        );
    }

    #[test]
    fn existing_identities_keep_their_ids() {
        let spec = IdentitySpec {
            system_assigned: true,
            user_assigned: vec![],
        };
        let first = ids("c", &spec, &[]);
        let again = ids("c", &spec, &first);
        assert_eq!(first, again);
    }

    #[test]
    fn select_only_among_the_clusters_identities() {
        let users = ids(
            "c",
            &IdentitySpec {
                system_assigned: false,
                user_assigned: vec!["u1".into()],
            },
            &[],
        );
        let client = users[0].client_id.clone();
        assert!(select(&users, &IdentitySelector::ClientId(client.to_uppercase())).is_ok());
        assert_eq!(
            select(&users, &IdentitySelector::ClientId("other".into())),
            Err(SelectError::NotFound)
        );
        assert!(select(&users, &IdentitySelector::ResourceId("U1".into())).is_ok());
    }

    #[test]
    fn assign_and_remove_keep_the_never_both_rule() {
        let none = IdentitySpec::default();
        let sys = assign(&none, true, &[]).expect("system");
        assert_eq!(
            assign(&sys, false, &["u".into()]).expect_err("both").field,
            "identity"
        );
        let users = assign(&none, false, &["a".into(), "b".into()]).expect("users");
        let one = remove(&users, &["A".into()]).expect("remove a");
        assert_eq!(one.user_assigned, vec!["b".to_owned()]);
        assert!(remove(&one, &["zzz".into()]).is_err());
        assert_eq!(
            remove(&sys, &[]).expect("remove all"),
            IdentitySpec::default()
        );
    }
}
