//! Cluster specs: what a user may ask for, the defaults, the rules, and which
//! properties may change after creation (`update`); the SSH, network and
//! identity rules are in `access`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::catalog::{self, Catalog, DEFAULT_VM_SIZE, VmSize};
use crate::error::FieldError;
use crate::name::validate_cluster_name;

mod access;
#[cfg(test)]
mod tests;
mod update;

pub use access::{check_admin_password, check_identity};
use access::{check_ssh, check_vnet};
pub use update::{IMMUTABLE_FIELDS, MUTABLE_FIELDS, apply_update};

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

/// Where a cluster's nodes come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComputeType {
    /// Nodes the control plane's provider creates and removes as jobs
    /// wait and nodes sit idle (Azure ML's `amlcompute`).
    #[default]
    AmlCompute,
    /// Machines a team already has, which join with a join token
    /// (`strato compute join-token create`) and leave when detached;
    /// Strato never creates or deletes them.
    Attached,
}

impl ComputeType {
    /// The YAML and CLI spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ComputeType::AmlCompute => "amlcompute",
            ComputeType::Attached => "attached",
        }
    }

    /// `amlcompute` or `attached`, case-insensitively.
    pub fn parse(field: &str, s: &str) -> Result<ComputeType, FieldError> {
        match s.to_ascii_lowercase().as_str() {
            "amlcompute" => Ok(ComputeType::AmlCompute),
            "attached" => Ok(ComputeType::Attached),
            _ => Err(FieldError::new(
                field,
                format!("must be amlcompute or attached; got {s:?}"),
            )),
        }
    }
}

/// How an attached cluster's machines are woken and put to sleep, as
/// Slurm's power saving does: executables of the operator's
/// (`strato-control --power-commands-dir`), named without a path, run by
/// the control plane with the node id and host name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowerCommands {
    pub resume_command: String,
    pub suspend_command: String,
    /// How long one run may take.
    pub timeout_seconds: u32,
}

/// A power command's default and longest run.
pub const DEFAULT_POWER_TIMEOUT_SECONDS: u32 = 300;
pub const MAX_POWER_TIMEOUT_SECONDS: u32 = 3600;

/// Whether `name` may name a power command: a file name (letters, digits,
/// `.`, `_`, `-`; not starting with `.`), never a path.
pub fn check_power_command(field: &str, name: &str) -> Result<(), FieldError> {
    let ok = (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!(
                "must name an executable in the control plane's --power-commands-dir: 1 to 64 letters, digits, '.', '_' and '-', no path; got {name:?}"
            ),
        ))
    }
}

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
    /// Write-only, in a request; never returned by the API nor logged, and
    /// never stored: [`SshSettings::seal`] keeps its hash instead.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub admin_password: String,
    /// The admin password as SHA-512 crypt (`$6$SALT$HASH`), what
    /// `/etc/shadow` takes: what the store keeps.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub admin_password_hash: String,
    pub admin_ssh_public_key: String,
}

impl SshSettings {
    /// Replaces the password in clear with its SHA-512 crypt hash, made
    /// with `salt` (up to 16 characters of [`crate::crypt::ALPHABET`]).
    pub fn seal(&mut self, salt: &str) {
        if !self.admin_password.is_empty() {
            self.admin_password_hash = crate::crypt::sha512_crypt(&self.admin_password, salt);
            self.admin_password.clear();
        }
    }

    /// Whether an admin password is set (in clear in a request, or as its
    /// hash once stored).
    /// Whether nodes serve SSH: remote login is enabled and names the
    /// admin user (who logs in with its key or password).
    pub fn serves_ssh(&self) -> bool {
        self.public_access && !self.admin_username.is_empty()
    }

    pub fn has_password(&self) -> bool {
        !self.admin_password.is_empty() || !self.admin_password_hash.is_empty()
    }

    /// Whether `asked` (a request's settings, with the password in clear
    /// or none) is what these stored settings hold.
    pub fn holds(&self, asked: &SshSettings) -> bool {
        let password = match (
            asked.admin_password.is_empty(),
            self.admin_password_hash.is_empty(),
        ) {
            (true, true) => self.admin_password.is_empty(),
            (true, false) => false,
            (false, false) => {
                crate::crypt::verify(&asked.admin_password, &self.admin_password_hash)
            }
            (false, true) => asked.admin_password == self.admin_password,
        };
        password
            && self.public_access == asked.public_access
            && self.admin_username == asked.admin_username
            && self.admin_ssh_public_key == asked.admin_ssh_public_key
    }
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
            .field(
                "admin_password_hash",
                &if self.admin_password_hash.is_empty() {
                    ""
                } else {
                    "<set>"
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
    /// Default `amlcompute`.
    pub compute_type: Option<ComputeType>,
    /// An attached cluster's power commands; both or neither.
    pub power: Option<PowerCommands>,
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
    /// Default true.
    pub enable_node_public_ip: Option<bool>,
}

fn public_ip_default() -> bool {
    true
}

/// A validated cluster spec, defaults filled in, VM size in catalog spelling.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSpec {
    pub name: String,
    /// Absent in specs stored before attached clusters: `amlcompute`.
    #[serde(default)]
    pub compute_type: ComputeType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power: Option<PowerCommands>,
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
    /// Azure ML's `enable_node_public_ip`, kept as given (default true);
    /// absent in specs stored before it was: true.
    #[serde(default = "public_ip_default")]
    pub enable_node_public_ip: bool,
    /// The size as the catalog had it at creation, so a size of the
    /// operator's own stays known; absent in specs stored before it was
    /// kept (built-in sizes, looked up again).
    #[serde(default, rename = "size", skip_serializing_if = "Option::is_none")]
    pub recorded_size: Option<VmSize>,
}

impl ClusterSpec {
    /// The spec's size: as recorded at creation, else the built-in one.
    pub fn size(&self) -> Result<VmSize, FieldError> {
        match &self.recorded_size {
            Some(size) => Ok(size.clone()),
            None => catalog::lookup(&self.vm_size).cloned(),
        }
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
    validate_in(req, default_location, &Catalog::builtin())
}

/// [`validate`] against `catalog`'s sizes (the built-in ones and the
/// operator's); the spec records the size it names.
pub fn validate_in(
    req: &ClusterRequest,
    default_location: &str,
    catalog: &Catalog,
) -> Result<ClusterSpec, FieldError> {
    validate_cluster_name(&req.name)?;
    let size = catalog.lookup(req.vm_size.as_deref().unwrap_or(DEFAULT_VM_SIZE))?;
    let location = match req.location.as_deref() {
        None | Some("") => default_location.to_owned(),
        Some(l) => l.to_owned(),
    };
    let spec = ClusterSpec {
        name: req.name.clone(),
        compute_type: req.compute_type.unwrap_or_default(),
        power: req.power.clone(),
        vm_size: size.name.clone(),
        recorded_size: Some(size.clone()),
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
        enable_node_public_ip: req.enable_node_public_ip.unwrap_or(true),
    };
    check(&spec)?;
    Ok(spec)
}

/// Checks every rule on a filled-in spec.
pub fn check(spec: &ClusterSpec) -> Result<(), FieldError> {
    validate_cluster_name(&spec.name)?;
    spec.size()?;
    check_location(&spec.location)?;
    check_scale(spec)?;
    check_attached(spec)?;
    check_text(spec)?;
    check_ssh(&spec.ssh)?;
    if let Some(vnet) = &spec.vnet {
        check_vnet(vnet)?;
    }
    check_identity(&spec.identity)
}

pub fn check_location(location: &str) -> Result<(), FieldError> {
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

/// An attached cluster's machines are a team's own: never evicted, and
/// joined rather than created, so only power commands keep `min_nodes` of
/// them awake.
fn check_attached(spec: &ClusterSpec) -> Result<(), FieldError> {
    if spec.compute_type != ComputeType::Attached {
        if spec.power.is_some() {
            return Err(FieldError::new(
                "power",
                "resume and suspend commands are for clusters of type attached",
            ));
        }
        return Ok(());
    }
    if spec.vm_priority != VmPriority::Dedicated {
        return Err(FieldError::new(
            "vm_priority",
            "must be dedicated for an attached cluster: its machines are not evicted",
        ));
    }
    match &spec.power {
        None if spec.min_nodes != 0 => Err(FieldError::new(
            "min_nodes",
            format!(
                "must be 0 for an attached cluster without power commands: its machines join by themselves, nothing wakes them; got {}",
                spec.min_nodes
            ),
        )),
        None => Ok(()),
        Some(power) => {
            check_power_command("power.resume_command", &power.resume_command)?;
            check_power_command("power.suspend_command", &power.suspend_command)?;
            if !(1..=MAX_POWER_TIMEOUT_SECONDS).contains(&power.timeout_seconds) {
                return Err(FieldError::new(
                    "power.timeout_seconds",
                    format!(
                        "must be from 1 to {MAX_POWER_TIMEOUT_SECONDS}; got {}",
                        power.timeout_seconds
                    ),
                ));
            }
            Ok(())
        }
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
