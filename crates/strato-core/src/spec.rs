//! Cluster specs: what a user may ask for, the defaults, the rules, and which
//! properties may change after creation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::catalog::{self, DEFAULT_VM_SIZE, VmSize};
use crate::error::{FieldError, SpecError};
use crate::name::validate_cluster_name;

/// Default `max_nodes` (CLI v2 YAML).
pub const DEFAULT_MAX_NODES: u32 = 1;
/// Default idle time before scale-down, in seconds (CLI v2).
pub const DEFAULT_IDLE_SECONDS: u64 = 120;
/// Most nodes while inter-node communication (needed for MPI) is on.
pub const MAX_NODES_WITH_INTER_NODE: u32 = 100;
/// Most nodes with inter-node communication off.
pub const MAX_NODES_WITHOUT_INTER_NODE: u32 = 1000;
/// Longest idle time accepted: one year.
pub const MAX_IDLE_SECONDS: u64 = 365 * 24 * 3600;
pub const MAX_DESCRIPTION_LEN: usize = 1024;
pub const MAX_TAGS: usize = 50;
pub const MAX_TAG_KEY_LEN: usize = 512;
pub const MAX_TAG_VALUE_LEN: usize = 256;
pub const MAX_USER_ASSIGNED_IDENTITIES: usize = 20;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmPriority {
    #[default]
    Dedicated,
    LowPriority,
}

impl VmPriority {
    /// AmlCompute's spelling (`dedicated`, `lowpriority`).
    pub fn as_str(self) -> &'static str {
        match self {
            VmPriority::Dedicated => "dedicated",
            VmPriority::LowPriority => "lowpriority",
        }
    }

    /// Accepts `dedicated`, and `lowpriority` / `low_priority` (the YAML
    /// spelling), case-insensitively.
    pub fn parse(s: &str) -> Option<VmPriority> {
        match s.to_ascii_lowercase().as_str() {
            "dedicated" => Some(VmPriority::Dedicated),
            "lowpriority" | "low_priority" => Some(VmPriority::LowPriority),
            _ => None,
        }
    }
}

#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshSettings {
    /// Whether the remote-login port is open to the public; off by default.
    pub public_access: bool,
    pub admin_username: String,
    /// Write-only; never returned by the API nor logged.
    pub admin_password: String,
    pub admin_ssh_public_key: String,
}

/// Debug output never shows the password, so a logged spec leaks nothing.
impl std::fmt::Debug for SshSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshSettings")
            .field("public_access", &self.public_access)
            .field("admin_username", &self.admin_username)
            .field(
                "admin_password",
                &if self.admin_password.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("admin_ssh_public_key", &self.admin_ssh_public_key)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VnetSettings {
    pub resource_group: String,
    pub vnet_name: String,
    pub subnet_name: String,
}

/// A cluster's identities: a system-assigned one or user-assigned ones,
/// never both.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentitySpec {
    pub system_assigned: bool,
    pub user_assigned: Vec<String>,
}

/// A create request as the user gave it: `None` means "take the default".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterRequest {
    pub name: String,
    pub vm_size: Option<String>,
    pub vm_priority: Option<VmPriority>,
    pub min_nodes: Option<u32>,
    pub max_nodes: Option<u32>,
    pub idle_seconds_before_scaledown: Option<u64>,
    pub location: Option<String>,
    pub description: String,
    pub tags: BTreeMap<String, String>,
    pub ssh: SshSettings,
    pub vnet: Option<VnetSettings>,
    pub identity: IdentitySpec,
    pub inter_node_communication: Option<bool>,
}

/// A validated cluster spec, defaults filled in, VM size in catalog spelling.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSpec {
    pub name: String,
    pub vm_size: String,
    pub vm_priority: VmPriority,
    pub min_nodes: u32,
    pub max_nodes: u32,
    pub idle_seconds_before_scaledown: u64,
    pub location: String,
    pub description: String,
    pub tags: BTreeMap<String, String>,
    pub ssh: SshSettings,
    pub vnet: Option<VnetSettings>,
    pub identity: IdentitySpec,
    pub inter_node_communication: bool,
}

impl ClusterSpec {
    /// The catalog entry of the spec's size. A stored spec always names one.
    pub fn size(&self) -> Result<&'static VmSize, FieldError> {
        catalog::lookup(&self.vm_size)
    }

    /// The most nodes any cluster with this inter-node setting may have.
    pub fn node_limit(&self) -> u32 {
        node_limit(self.inter_node_communication)
    }
}

fn node_limit(inter_node_communication: bool) -> u32 {
    if inter_node_communication {
        MAX_NODES_WITH_INTER_NODE
    } else {
        MAX_NODES_WITHOUT_INTER_NODE
    }
}

/// Validates a create request and fills in defaults. `default_location` is
/// the control plane's region.
pub fn validate(req: &ClusterRequest, default_location: &str) -> Result<ClusterSpec, FieldError> {
    validate_cluster_name(&req.name)?;
    let size = catalog::lookup(req.vm_size.as_deref().unwrap_or(DEFAULT_VM_SIZE))?;
    let location = match req.location.as_deref() {
        None | Some("") => default_location.to_owned(),
        Some(l) => l.to_owned(),
    };
    let spec = ClusterSpec {
        name: req.name.clone(),
        vm_size: size.name.to_owned(),
        vm_priority: req.vm_priority.unwrap_or_default(),
        min_nodes: req.min_nodes.unwrap_or(0),
        max_nodes: req.max_nodes.unwrap_or(DEFAULT_MAX_NODES),
        idle_seconds_before_scaledown: req
            .idle_seconds_before_scaledown
            .unwrap_or(DEFAULT_IDLE_SECONDS),
        location,
        description: req.description.clone(),
        tags: req.tags.clone(),
        ssh: req.ssh.clone(),
        vnet: req.vnet.clone(),
        identity: req.identity.clone(),
        inter_node_communication: req.inter_node_communication.unwrap_or(true),
    };
    check(&spec)?;
    Ok(spec)
}

/// Checks every rule on a filled-in spec.
pub fn check(spec: &ClusterSpec) -> Result<(), FieldError> {
    validate_cluster_name(&spec.name)?;
    catalog::lookup(&spec.vm_size)?;
    check_location(&spec.location)?;
    check_scale(spec)?;
    check_text(spec)?;
    check_ssh(&spec.ssh)?;
    if let Some(vnet) = &spec.vnet {
        check_vnet(vnet)?;
    }
    check_identity(&spec.identity)
}

fn check_location(location: &str) -> Result<(), FieldError> {
    let ok = (1..=64).contains(&location.len())
        && location.starts_with(|c: char| c.is_ascii_lowercase())
        && location
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            "location",
            format!(
                "must be a region name of 1 to 64 lowercase letters and digits, starting with a letter (e.g. westeurope); got {location:?}"
            ),
        ))
    }
}

fn check_scale(spec: &ClusterSpec) -> Result<(), FieldError> {
    let limit = node_limit(spec.inter_node_communication);
    if spec.max_nodes < 1 {
        return Err(FieldError::new("max_nodes", "must be at least 1"));
    }
    if spec.max_nodes > limit {
        let why = if spec.inter_node_communication {
            format!(
                "must be at most {limit} while inter-node communication is on (turn it off to allow up to {MAX_NODES_WITHOUT_INTER_NODE})"
            )
        } else {
            format!("must be at most {limit}")
        };
        return Err(FieldError::new(
            "max_nodes",
            format!("{why}; got {}", spec.max_nodes),
        ));
    }
    if spec.min_nodes > spec.max_nodes {
        return Err(FieldError::new(
            "min_nodes",
            format!(
                "must not exceed max_nodes ({}); got {}",
                spec.max_nodes, spec.min_nodes
            ),
        ));
    }
    if spec.idle_seconds_before_scaledown > MAX_IDLE_SECONDS {
        return Err(FieldError::new(
            "idle_seconds_before_scaledown",
            format!(
                "must be at most {MAX_IDLE_SECONDS} (one year); got {}",
                spec.idle_seconds_before_scaledown
            ),
        ));
    }
    Ok(())
}

fn check_text(spec: &ClusterSpec) -> Result<(), FieldError> {
    if spec.description.chars().count() > MAX_DESCRIPTION_LEN {
        return Err(FieldError::new(
            "description",
            format!("must be at most {MAX_DESCRIPTION_LEN} characters"),
        ));
    }
    if spec.tags.len() > MAX_TAGS {
        return Err(FieldError::new(
            "tags",
            format!("at most {MAX_TAGS} tags; got {}", spec.tags.len()),
        ));
    }
    for (k, v) in &spec.tags {
        let field = format!("tags[{k:?}]");
        if k.is_empty() || k.chars().count() > MAX_TAG_KEY_LEN {
            return Err(FieldError::new(
                field,
                format!("a tag name must be 1 to {MAX_TAG_KEY_LEN} characters"),
            ));
        }
        if k.chars()
            .any(|c| matches!(c, '<' | '>' | '%' | '&' | '\\' | '?' | '/') || c.is_control())
        {
            return Err(FieldError::new(
                field,
                "a tag name may not hold <, >, %, &, \\, ?, / or control characters",
            ));
        }
        if v.chars().count() > MAX_TAG_VALUE_LEN {
            return Err(FieldError::new(
                field,
                format!("a tag value must be at most {MAX_TAG_VALUE_LEN} characters"),
            ));
        }
    }
    Ok(())
}

/// Azure's rule for VM admin passwords: 12 to 123 characters, and at least
/// three of lowercase, uppercase, digit and other characters.
pub fn check_admin_password(password: &str) -> Result<(), FieldError> {
    let len = password.chars().count();
    let classes = [
        password.chars().any(|c| c.is_lowercase()),
        password.chars().any(|c| c.is_uppercase()),
        password.chars().any(|c| c.is_ascii_digit()),
        password
            .chars()
            .any(|c| !c.is_alphanumeric() && !c.is_whitespace()),
    ]
    .into_iter()
    .filter(|x| *x)
    .count();
    // The message never repeats the password.
    if !(12..=123).contains(&len) || classes < 3 {
        return Err(FieldError::new(
            "ssh.admin_password",
            "must be 12 to 123 characters and hold at least 3 of: a lowercase letter, an uppercase letter, a digit, another character",
        ));
    }
    Ok(())
}

fn check_ssh(ssh: &SshSettings) -> Result<(), FieldError> {
    let has_credential = !ssh.admin_password.is_empty() || !ssh.admin_ssh_public_key.is_empty();
    if ssh.admin_username.is_empty() {
        if has_credential || ssh.public_access {
            return Err(FieldError::new(
                "ssh.admin_username",
                "is required when SSH access, a password or a key is given",
            ));
        }
        return Ok(());
    }
    let user = &ssh.admin_username;
    let ok = (1..=32).contains(&user.len())
        && user.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && user
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !ok {
        return Err(FieldError::new(
            "ssh.admin_username",
            format!(
                "must be 1 to 32 lowercase letters, digits, '_' or '-', starting with a letter or '_'; got {user:?}"
            ),
        ));
    }
    if matches!(
        user.as_str(),
        "root" | "admin" | "administrator" | "daemon" | "bin" | "sys"
    ) {
        return Err(FieldError::new(
            "ssh.admin_username",
            format!("{user:?} is reserved; choose another name"),
        ));
    }
    if !has_credential {
        return Err(FieldError::new(
            "ssh.admin_password",
            "an admin user needs a password or an SSH public key (ssh.admin_ssh_public_key)",
        ));
    }
    if !ssh.admin_password.is_empty() {
        check_admin_password(&ssh.admin_password)?;
    }
    let key = ssh.admin_ssh_public_key.trim();
    if !key.is_empty()
        && !["ssh-rsa ", "ssh-ed25519 ", "ecdsa-sha2-"]
            .iter()
            .any(|p| key.starts_with(p))
    {
        return Err(FieldError::new(
            "ssh.admin_ssh_public_key",
            "must be an OpenSSH public key (starting with ssh-rsa, ssh-ed25519 or ecdsa-sha2-)",
        ));
    }
    Ok(())
}

fn check_vnet(vnet: &VnetSettings) -> Result<(), FieldError> {
    let parts = [
        ("vnet.resource_group", &vnet.resource_group),
        ("vnet.vnet_name", &vnet.vnet_name),
        ("vnet.subnet_name", &vnet.subnet_name),
    ];
    let given = parts.iter().filter(|(_, v)| !v.is_empty()).count();
    if given == 0 {
        return Ok(());
    }
    if let Some((field, _)) = parts.iter().find(|(_, v)| v.is_empty()) {
        return Err(FieldError::new(
            *field,
            "resource group, vnet name and subnet name must be given together, or none of them",
        ));
    }
    for (field, value) in parts {
        let ok = value.len() <= 90
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '(' | ')'));
        if !ok {
            return Err(FieldError::new(
                field,
                format!(
                    "must be at most 90 letters, digits, '-', '_', '.', '(' or ')'; got {value:?}"
                ),
            ));
        }
    }
    Ok(())
}

pub fn check_identity(identity: &IdentitySpec) -> Result<(), FieldError> {
    if identity.system_assigned && !identity.user_assigned.is_empty() {
        return Err(FieldError::new(
            "identity",
            "a cluster has either a system-assigned identity or user-assigned identities, never both",
        ));
    }
    if identity.user_assigned.len() > MAX_USER_ASSIGNED_IDENTITIES {
        return Err(FieldError::new(
            "identity.user_assigned_identities",
            format!("at most {MAX_USER_ASSIGNED_IDENTITIES} identities"),
        ));
    }
    for (i, id) in identity.user_assigned.iter().enumerate() {
        let field = format!("identity.user_assigned_identities[{i}]");
        if id.is_empty()
            || id.len() > 512
            || id.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(FieldError::new(
                field,
                "must be an identity resource id of 1 to 512 characters without spaces",
            ));
        }
        if identity.user_assigned[..i]
            .iter()
            .any(|earlier| earlier.eq_ignore_ascii_case(id))
        {
            return Err(FieldError::new(field, format!("{id:?} is listed twice")));
        }
    }
    Ok(())
}

/// The spec fields an update may name, as request paths.
pub const MUTABLE_FIELDS: &[&str] = &[
    "min_nodes",
    "max_nodes",
    "idle_seconds_before_scaledown",
    "description",
    "tags",
];

/// Fields fixed at creation. Naming one in an update is accepted only when
/// the value is unchanged, so re-applying a cluster file is harmless.
pub const IMMUTABLE_FIELDS: &[&str] = &[
    "name",
    "vm_size",
    "vm_priority",
    "location",
    "ssh",
    "vnet",
    "identity",
    "inter_node_communication",
];

/// Applies the fields named in `mask` from `desired` to `current`.
///
/// Mutable fields take the desired value (an unset one takes its default).
/// An immutable field whose desired value differs is refused, naming it.
/// The result is checked against every rule.
pub fn apply_update(
    current: &ClusterSpec,
    desired: &ClusterRequest,
    mask: &[String],
) -> Result<ClusterSpec, SpecError> {
    if mask.is_empty() {
        return Err(FieldError::new(
            "update_mask",
            format!(
                "name at least one field to change ({})",
                MUTABLE_FIELDS.join(", ")
            ),
        )
        .into());
    }
    let mut next = current.clone();
    for path in mask {
        match path.as_str() {
            "min_nodes" => next.min_nodes = desired.min_nodes.unwrap_or(0),
            "max_nodes" => next.max_nodes = desired.max_nodes.unwrap_or(DEFAULT_MAX_NODES),
            "idle_seconds_before_scaledown" => {
                next.idle_seconds_before_scaledown = desired
                    .idle_seconds_before_scaledown
                    .unwrap_or(DEFAULT_IDLE_SECONDS)
            }
            "description" => next.description = desired.description.clone(),
            "tags" => next.tags = desired.tags.clone(),
            immutable if IMMUTABLE_FIELDS.contains(&immutable) => {
                if let Some(hint) = immutable_change(current, desired, immutable)? {
                    return Err(SpecError::Immutable {
                        field: immutable.to_owned(),
                        hint,
                    });
                }
            }
            other => {
                return Err(FieldError::new(
                    "update_mask",
                    format!(
                        "unknown field {other:?}; fields that may change: {}",
                        MUTABLE_FIELDS.join(", ")
                    ),
                )
                .into());
            }
        }
    }
    check(&next)?;
    Ok(next)
}

/// `Some(hint)` when `desired` changes the immutable `field` of `current`.
fn immutable_change(
    current: &ClusterSpec,
    desired: &ClusterRequest,
    field: &str,
) -> Result<Option<String>, FieldError> {
    let changed = |was: &str, asked: &str| Some(format!(" (it is {was}; asked for {asked})"));
    Ok(match field {
        "name" => (!desired.name.eq_ignore_ascii_case(&current.name))
            .then(|| format!(" (it is {}; create a new cluster instead)", current.name)),
        "vm_size" => {
            let asked = catalog::lookup(desired.vm_size.as_deref().unwrap_or(DEFAULT_VM_SIZE))?;
            (asked.name != current.vm_size)
                .then(|| changed(&current.vm_size, asked.name))
                .flatten()
        }
        "vm_priority" => {
            let asked = desired.vm_priority.unwrap_or_default();
            (asked != current.vm_priority)
                .then(|| changed(current.vm_priority.as_str(), asked.as_str()))
                .flatten()
        }
        "location" => match desired.location.as_deref() {
            None | Some("") => None,
            Some(l) if l == current.location => None,
            Some(l) => changed(&current.location, l),
        },
        "ssh" => (desired.ssh != current.ssh).then(String::new),
        "vnet" => (desired.vnet != current.vnet).then(String::new),
        "identity" => (desired.identity != current.identity).then(|| {
            " through UpdateCluster; identities are added and removed with their own calls"
                .to_owned()
        }),
        "inter_node_communication" => {
            let asked = desired.inter_node_communication.unwrap_or(true);
            (asked != current.inter_node_communication)
                .then(|| {
                    changed(
                        &current.inter_node_communication.to_string(),
                        &asked.to_string(),
                    )
                })
                .flatten()
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn req(name: &str) -> ClusterRequest {
        ClusterRequest {
            name: name.to_owned(),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_are_the_v2_defaults() {
        let spec = validate(&req("cpu"), "local").expect("valid");
        assert_eq!(spec.vm_size, "Standard_DS3_v2");
        assert_eq!(spec.vm_priority, VmPriority::Dedicated);
        assert_eq!((spec.min_nodes, spec.max_nodes), (0, 1));
        assert_eq!(spec.idle_seconds_before_scaledown, 120);
        assert_eq!(spec.location, "local");
        assert!(spec.inter_node_communication);
    }

    #[test]
    fn size_is_stored_in_catalog_spelling() {
        let mut r = req("gpu");
        r.vm_size = Some("standard_nc6s_v3".into());
        assert_eq!(
            validate(&r, "local").expect("valid").vm_size,
            "Standard_NC6s_v3"
        );
    }

    #[test]
    fn min_above_max_names_min_nodes() {
        let mut r = req("cpu");
        r.min_nodes = Some(3);
        r.max_nodes = Some(2);
        let e = validate(&r, "local").expect_err("min > max");
        assert_eq!(e.field, "min_nodes");
    }

    #[test]
    fn node_limit_depends_on_inter_node_communication() {
        let mut r = req("cpu");
        r.max_nodes = Some(101);
        let e = validate(&r, "local").expect_err("101 with MPI");
        assert_eq!(e.field, "max_nodes");
        assert!(e.rule.contains("inter-node"), "{e}");
        r.inter_node_communication = Some(false);
        assert!(validate(&r, "local").is_ok());
        r.max_nodes = Some(1001);
        assert_eq!(validate(&r, "local").expect_err("1001").field, "max_nodes");
    }

    #[test]
    fn vnet_is_all_or_none() {
        let mut r = req("cpu");
        r.vnet = Some(VnetSettings {
            resource_group: "rg".into(),
            vnet_name: "vnet".into(),
            subnet_name: String::new(),
        });
        assert_eq!(
            validate(&r, "local").expect_err("partial").field,
            "vnet.subnet_name"
        );
        r.vnet = Some(VnetSettings {
            resource_group: "rg".into(),
            vnet_name: "vnet".into(),
            subnet_name: "default".into(),
        });
        assert!(validate(&r, "local").is_ok());
    }

    #[test]
    fn system_and_user_assigned_never_together() {
        let mut r = req("cpu");
        r.identity = IdentitySpec {
            system_assigned: true,
            user_assigned: vec!["/subscriptions/s/resourceGroups/g/providers/Microsoft.ManagedIdentity/userAssignedIdentities/u".into()],
        };
        assert_eq!(validate(&r, "local").expect_err("both").field, "identity");
        r.identity.system_assigned = false;
        assert!(validate(&r, "local").is_ok());
        r.identity
            .user_assigned
            .push(r.identity.user_assigned[0].to_uppercase());
        assert!(
            validate(&r, "local")
                .expect_err("dup")
                .rule
                .contains("twice")
        );
    }

    #[test]
    fn admin_password_needs_three_classes_and_is_never_echoed() {
        for bad in [
            "short1A!",
            "alllowercaseletters",
            "lowerUPPERonly",
            "123456789012",
        ] {
            let e = check_admin_password(bad).expect_err(bad);
            assert_eq!(e.field, "ssh.admin_password");
            assert!(!e.to_string().contains(bad));
        }
        for good in ["lowerUPPER1234", "lower-1234-5678", "UPPER_5678_ABCD"] {
            assert!(check_admin_password(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn debug_output_redacts_the_password() {
        let mut r = req("cpu");
        r.ssh.admin_password = "Sup3r-Secret-Value".into();
        assert!(!format!("{r:?}").contains("Sup3r-Secret-Value"));
    }

    #[test]
    fn ssh_user_needs_a_credential() {
        let mut r = req("cpu");
        r.ssh.admin_username = "azureuser".into();
        assert_eq!(
            validate(&r, "local").expect_err("no cred").field,
            "ssh.admin_password"
        );
        r.ssh.admin_ssh_public_key = "ssh-ed25519 AAAAC3Nza user@host".into();
        assert!(validate(&r, "local").is_ok());
        r.ssh.admin_username = String::new();
        r.ssh.public_access = true;
        assert_eq!(
            validate(&r, "local").expect_err("no user").field,
            "ssh.admin_username"
        );
    }

    #[test]
    fn update_changes_mutable_fields_only() {
        let current = validate(&req("cpu"), "local").expect("valid");
        let mut desired = req("cpu");
        desired.max_nodes = Some(4);
        desired.min_nodes = Some(1);
        let mask = vec!["max_nodes".to_owned(), "min_nodes".to_owned()];
        let next = apply_update(&current, &desired, &mask).expect("update");
        assert_eq!((next.min_nodes, next.max_nodes), (1, 4));

        desired.vm_size = Some("Standard_D2_v2".into());
        let e = apply_update(&current, &desired, &["vm_size".to_owned()]).expect_err("immutable");
        assert!(
            matches!(&e, SpecError::Immutable { field, .. } if field == "vm_size"),
            "{e}"
        );
        assert!(e.to_string().contains("Standard_DS3_v2"), "{e}");

        // Naming an immutable field with its current value is harmless.
        desired.vm_size = Some("STANDARD_DS3_V2".into());
        assert!(apply_update(&current, &desired, &["vm_size".to_owned()]).is_ok());

        let e = apply_update(&current, &desired, &[]).expect_err("empty mask");
        assert_eq!(e.field(), "update_mask");
        let e = apply_update(&current, &desired, &["colour".to_owned()]).expect_err("unknown");
        assert_eq!(e.field(), "update_mask");
    }

    #[test]
    fn update_is_checked_against_every_rule() {
        let current = validate(&req("cpu"), "local").expect("valid");
        let mut desired = req("cpu");
        desired.min_nodes = Some(5);
        let e = apply_update(&current, &desired, &["min_nodes".to_owned()]).expect_err("min > max");
        assert_eq!(e.field(), "min_nodes");
    }

    #[test]
    fn every_immutable_field_is_refused_when_changed() {
        let current = validate(&req("cpu"), "local").expect("valid");
        let mut desired = req("cpu");
        desired.vm_priority = Some(VmPriority::LowPriority);
        desired.location = Some("westeurope".into());
        desired.ssh.public_access = true;
        desired.vnet = Some(VnetSettings {
            resource_group: "g".into(),
            vnet_name: "v".into(),
            subnet_name: "s".into(),
        });
        desired.identity.system_assigned = true;
        desired.inter_node_communication = Some(false);
        desired.name = "other".into();
        for field in IMMUTABLE_FIELDS.iter().filter(|f| **f != "vm_size") {
            let e = apply_update(&current, &desired, &[(*field).to_owned()]).expect_err(field);
            assert!(
                matches!(&e, SpecError::Immutable { field: f, .. } if f == field),
                "{e}"
            );
        }
    }

    fn arb_request() -> impl Strategy<Value = ClusterRequest> {
        (
            "[a-z][a-z0-9-]{0,26}",
            prop::option::of(prop::sample::select(vec![
                "Standard_D2_v2",
                "standard_nc6",
                "Standard_NC6s_v3",
                "bogus",
            ])),
            prop::option::of(0u32..1200),
            prop::option::of(0u32..1200),
            prop::option::of(any::<bool>()),
            prop::option::of(prop::sample::select(vec![0u64, 60, MAX_IDLE_SECONDS + 1])),
            (any::<bool>(), prop::collection::vec("[a-z/]{0,6}", 0..3)),
            prop::option::of(("[a-z]{0,2}", "[a-z]{0,2}", "[a-z]{0,2}")),
        )
            .prop_map(|(name, size, min, max, inter, idle, (sys, users), vnet)| {
                ClusterRequest {
                    name,
                    vm_size: size.map(str::to_owned),
                    min_nodes: min,
                    max_nodes: max,
                    inter_node_communication: inter,
                    idle_seconds_before_scaledown: idle,
                    identity: IdentitySpec {
                        system_assigned: sys,
                        user_assigned: users,
                    },
                    vnet: vnet.map(|(g, v, s)| VnetSettings {
                        resource_group: g,
                        vnet_name: v,
                        subnet_name: s,
                    }),
                    ..Default::default()
                }
            })
    }

    proptest! {
        #[test]
        fn validation_never_accepts_a_spec_that_breaks_a_rule(r in arb_request()) {
            if let Ok(spec) = validate(&r, "local") {
                prop_assert!(crate::name::validate_cluster_name(&spec.name).is_ok());
                prop_assert!(spec.min_nodes <= spec.max_nodes);
                prop_assert!(spec.max_nodes >= 1);
                let limit = if spec.inter_node_communication { 100 } else { 1000 };
                prop_assert!(spec.max_nodes <= limit);
                prop_assert!(spec.idle_seconds_before_scaledown <= MAX_IDLE_SECONDS);
                prop_assert!(crate::catalog::CATALOG.iter().any(|s| s.name == spec.vm_size));
                prop_assert!(!spec.identity.system_assigned || spec.identity.user_assigned.is_empty());
                prop_assert!(spec.identity.user_assigned.iter().all(|u| !u.is_empty()));
                if let Some(v) = &spec.vnet {
                    let given = [&v.resource_group, &v.vnet_name, &v.subnet_name]
                        .iter().filter(|s| !s.is_empty()).count();
                    prop_assert!(given == 0 || given == 3);
                }
            }
        }

        #[test]
        fn updates_never_produce_a_spec_that_breaks_a_rule(
            r in arb_request(), min in 0u32..200, max in 0u32..200,
        ) {
            let base = validate(&req("base"), "local").expect("valid base");
            let mut desired = r;
            desired.min_nodes = Some(min);
            desired.max_nodes = Some(max);
            let mask = vec!["min_nodes".to_owned(), "max_nodes".to_owned()];
            match apply_update(&base, &desired, &mask) {
                Ok(next) => {
                    prop_assert!(next.min_nodes <= next.max_nodes && next.max_nodes <= 100);
                    prop_assert_eq!(next.vm_size, base.vm_size);
                }
                Err(e) => prop_assert!(min > max || max == 0 || max > 100, "{}", e),
            }
        }
    }
}
