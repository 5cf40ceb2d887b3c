//! Registry objects: a server job images name, and the credentials nodes
//! pull from it with. The rules a new one must meet.

use crate::FieldError;

/// The longest password (or token) a registry takes, in bytes.
pub const MAX_PASSWORD_BYTES: usize = 4096;
/// The longest user name, in bytes.
pub const MAX_USERNAME_BYTES: usize = 256;

/// How nodes log in to a registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Login<'a> {
    /// A user name and a password (or token).
    Basic {
        username: &'a str,
        password: &'a str,
    },
    /// The job's cluster identity, through the registry's token exchange:
    /// `default`, or a user-assigned identity's resource id.
    Identity(&'a str),
}

impl std::fmt::Debug for Login<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Login::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Login::Identity(identity) => write!(f, "Identity({identity})"),
        }
    }
}

/// The identity value that names a cluster's default identity.
pub const DEFAULT_IDENTITY: &str = "default";

/// Which login a request asks for: an identity, or basic credentials; both
/// is refused, naming the field.
pub fn login<'a>(
    username: &'a str,
    password: &'a str,
    identity: &'a str,
) -> Result<Login<'a>, FieldError> {
    if identity.is_empty() {
        return Ok(Login::Basic { username, password });
    }
    if !(username.is_empty() && password.is_empty()) {
        return Err(FieldError::new(
            "identity",
            "is an alternative to username and password: give one or the other",
        ));
    }
    let resource_id = identity.starts_with("/subscriptions/")
        && identity.len() <= 512
        && !identity
            .chars()
            .any(|c| c.is_whitespace() || c.is_control());
    if identity == DEFAULT_IDENTITY || resource_id {
        Ok(Login::Identity(identity))
    } else {
        Err(FieldError::new(
            "identity",
            "must be `default` or a user-assigned identity's resource id (/subscriptions/…)",
        ))
    }
}

/// Checks a registry to create: its name, its server (HOST or HOST:PORT, as
/// image references name it) and how nodes log in (basic credentials, both
/// required, or an identity).
pub fn validate(name: &str, server: &str, login: &Login<'_>) -> Result<(), FieldError> {
    let name_ok = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !name_ok {
        return Err(FieldError::new(
            "name",
            "must be 1 to 64 lowercase letters, digits, '_' and '-', starting with a letter",
        ));
    }
    if matches!(
        server.to_ascii_lowercase().as_str(),
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    ) {
        return Err(FieldError::new(
            "server",
            "Docker Hub is not supported yet (its short names, such as `python`, name no server); pull from Docker Hub anonymously or mirror the image",
        ));
    }
    if !crate::image::is_registry_server(server) || server.contains('/') {
        return Err(FieldError::new(
            "server",
            "must be the registry's HOST or HOST:PORT as image names start with it, e.g. myacr.azurecr.io",
        ));
    }
    let Login::Basic { username, password } = *login else {
        return Ok(());
    };
    let printable = |s: &str| !s.chars().any(char::is_control);
    if username.is_empty()
        || username.len() > MAX_USERNAME_BYTES
        || !printable(username)
        || username.contains(':')
    {
        return Err(FieldError::new(
            "username",
            format!("is required: 1 to {MAX_USERNAME_BYTES} printable bytes without ':'"),
        ));
    }
    if password.is_empty() || password.len() > MAX_PASSWORD_BYTES || !printable(password) {
        return Err(FieldError::new(
            "password",
            format!("is required: 1 to {MAX_PASSWORD_BYTES} printable bytes"),
        ));
    }
    Ok(())
}

/// The most clusters a registry names.
pub const MAX_CLUSTERS: usize = 100;

/// What `clusters` names every cluster.
pub const ALL_CLUSTERS: &str = "*";

/// Checks the clusters a registry serves: at least one, each a cluster
/// name or `*` alone.
pub fn check_clusters(clusters: &[String]) -> Result<(), FieldError> {
    if clusters.is_empty() || clusters.len() > MAX_CLUSTERS {
        return Err(FieldError::new(
            "clusters",
            format!(
                "must name 1 to {MAX_CLUSTERS} clusters whose jobs may pull with it, or `*` for every cluster"
            ),
        ));
    }
    if clusters.len() > 1 && clusters.iter().any(|c| c == ALL_CLUSTERS) {
        return Err(FieldError::new("clusters", "`*` stands alone"));
    }
    for c in clusters.iter().filter(|c| *c != ALL_CLUSTERS) {
        crate::name::validate_cluster_name(c)
            .map_err(|e| FieldError::new("clusters", format!("{c:?}: {}", e.rule)))?;
    }
    Ok(())
}

/// Whether a registry serving `clusters` serves `cluster` (names compared
/// regardless of case, as cluster names are unique).
pub fn serves(clusters: &[String], cluster: &str) -> bool {
    clusters
        .iter()
        .any(|c| c == ALL_CLUSTERS || c.eq_ignore_ascii_case(cluster))
}

/// Whether a cluster with `identities` has the identity a registry pulls
/// with (`default`, or one of its user-assigned identities by resource id,
/// compared as Azure does, regardless of case).
pub fn cluster_has(identities: &[crate::identity::Identity], identity: &str) -> bool {
    if identity == DEFAULT_IDENTITY {
        crate::identity::default_identity(identities).is_some()
    } else {
        identities
            .iter()
            .any(|i| i.resource_id.eq_ignore_ascii_case(identity))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registry_serves_the_clusters_it_names() {
        let named = vec!["gpu-a".to_owned(), "cpu".to_owned()];
        assert_eq!(check_clusters(&named), Ok(()));
        assert!(serves(&named, "GPU-A") && !serves(&named, "other"));
        assert!(serves(&["*".to_owned()], "anything"));
        assert_eq!(check_clusters(&[]).expect_err("none").field, "clusters");
        assert_eq!(
            check_clusters(&["*".to_owned(), "cpu".to_owned()])
                .expect_err("both")
                .field,
            "clusters"
        );
        assert_eq!(
            check_clusters(&["Bad Name".to_owned()])
                .expect_err("bad")
                .field,
            "clusters"
        );
    }

    fn validate(
        name: &str,
        server: &str,
        username: &str,
        password: &str,
    ) -> Result<(), FieldError> {
        super::validate(name, server, &Login::Basic { username, password })
    }

    #[test]
    fn a_login_is_an_identity_or_basic_credentials_not_both() {
        assert_eq!(
            login("u", "p", ""),
            Ok(Login::Basic {
                username: "u",
                password: "p"
            })
        );
        assert_eq!(login("", "", "default"), Ok(Login::Identity("default")));
        let id = "/subscriptions/s/resourceGroups/g/providers/Microsoft.ManagedIdentity/userAssignedIdentities/puller";
        assert_eq!(login("", "", id), Ok(Login::Identity(id)));
        assert_eq!(
            login("u", "", "default").expect_err("both").field,
            "identity"
        );
        assert_eq!(login("", "", "mine").expect_err("bad").field, "identity");
        assert_eq!(
            super::validate("acr", "myacr.azurecr.io", &Login::Identity("default")),
            Ok(())
        );
    }

    #[test]
    fn a_registry_needs_a_name_a_server_and_credentials() {
        assert_eq!(validate("acr", "myacr.azurecr.io", "u", "p"), Ok(()));
        assert_eq!(validate("local-1", "127.0.0.1:5000", "u", "p"), Ok(()));
        for (name, server, user, password, field) in [
            ("ACR", "myacr.azurecr.io", "u", "p", "name"),
            ("acr", "https://myacr.azurecr.io", "u", "p", "server"),
            ("acr", "myacr.azurecr.io/team", "u", "p", "server"),
            ("acr", "", "u", "p", "server"),
            ("acr", "myacr.azurecr.io", "", "p", "username"),
            ("acr", "myacr.azurecr.io", "a:b", "p", "username"),
            ("acr", "myacr.azurecr.io", "u", "", "password"),
            ("acr", "myacr.azurecr.io", "u", "line\nbreak", "password"),
        ] {
            let e = validate(name, server, user, password).expect_err(field);
            assert_eq!(e.field, field, "{name} {server} {user}");
        }
        assert_eq!(
            validate("hub", "docker.io", "u", "p")
                .expect_err("hub")
                .field,
            "server"
        );
        let long = "p".repeat(MAX_PASSWORD_BYTES + 1);
        assert_eq!(
            validate("acr", "h.io", "u", &long).expect_err("long").field,
            "password"
        );
    }
}
