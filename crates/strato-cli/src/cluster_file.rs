//! `--file cluster.yml`: the Azure ML CLI v2 YAML schema for `amlcompute`
//! (REFERENCE.md), read into a wire `ClusterSpec` and the list of fields the
//! file sets (the update mask for `compute update --file`).

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Deserializer};
use strato_proto::v1;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterFile {
    #[serde(rename = "$schema")]
    _schema: Option<String>,
    name: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    size: Option<String>,
    tier: Option<String>,
    min_instances: Option<IntLike>,
    max_instances: Option<IntLike>,
    idle_time_before_scale_down: Option<IntLike>,
    location: Option<String>,
    description: Option<String>,
    tags: Option<BTreeMap<String, serde_norway::Value>>,
    ssh_public_access_enabled: Option<BoolLike>,
    ssh_settings: Option<SshFile>,
    network_settings: Option<NetworkFile>,
    identity: Option<IdentityFile>,
    enable_node_public_ip: Option<BoolLike>,
    // What `compute show -o yaml` prints and azure-ai-ml drops on load.
    #[serde(rename = "id")]
    _id: Option<serde_norway::Value>,
    #[serde(rename = "resource_id")]
    _resource_id: Option<serde_norway::Value>,
    #[serde(rename = "provisioning_state")]
    _provisioning_state: Option<serde_norway::Value>,
    #[serde(rename = "provisioning_errors")]
    _provisioning_errors: Option<serde_norway::Value>,
    #[serde(rename = "created_on")]
    _created_on: Option<serde_norway::Value>,
}

/// The keys of the file, and of its sections, as azure-ai-ml knows them.
const KEYS: &[&str] = &[
    "$schema",
    "name",
    "type",
    "size",
    "tier",
    "min_instances",
    "max_instances",
    "idle_time_before_scale_down",
    "location",
    "description",
    "tags",
    "ssh_public_access_enabled",
    "ssh_settings",
    "network_settings",
    "identity",
    "enable_node_public_ip",
    "id",
    "resource_id",
    "provisioning_state",
    "provisioning_errors",
    "created_on",
];
const SSH_KEYS: &[&str] = &["admin_username", "admin_password", "ssh_key_value"];
const NETWORK_KEYS: &[&str] = &["vnet_name", "subnet", "public_ip_address"];
const IDENTITY_KEYS: &[&str] = &[
    "type",
    "user_assigned_identities",
    "principal_id",
    "tenant_id",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SshFile {
    admin_username: Option<String>,
    admin_password: Option<String>,
    ssh_key_value: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkFile {
    vnet_name: Option<String>,
    subnet: Option<String>,
    /// Azure's answer, dropped on load.
    #[serde(rename = "public_ip_address")]
    _public_ip_address: Option<serde_norway::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityFile {
    #[serde(rename = "type")]
    kind: String,
    user_assigned_identities: Option<Vec<UserAssignedFile>>,
    // Azure's answers, dropped on load.
    #[serde(rename = "principal_id")]
    _principal_id: Option<serde_norway::Value>,
    #[serde(rename = "tenant_id")]
    _tenant_id: Option<serde_norway::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserAssignedFile {
    resource_id: String,
    #[serde(rename = "client_id")]
    _client_id: Option<serde_norway::Value>,
    #[serde(rename = "principal_id")]
    _principal_id: Option<serde_norway::Value>,
}

/// An integer as azure-ai-ml reads one (marshmallow's `Integer`): a number,
/// whose fraction is dropped, or a string that holds an integer.
#[derive(Debug, Clone, Copy)]
struct IntLike(i64);

impl<'de> Deserialize<'de> for IntLike {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        match serde_norway::Value::deserialize(d)? {
            serde_norway::Value::Number(n) => n
                .as_i64()
                .or_else(|| {
                    n.as_f64()
                        .filter(|f| f.is_finite() && f.abs() < 1e15)
                        .map(|f| f.trunc() as i64)
                })
                .map(IntLike)
                .ok_or_else(|| D::Error::custom(format!("{n} is not a valid integer"))),
            serde_norway::Value::String(s) => s
                .trim()
                .parse::<i64>()
                .map(IntLike)
                .map_err(|_| D::Error::custom(format!("{s:?} is not a valid integer"))),
            _ => Err(D::Error::custom("not a valid integer")),
        }
    }
}

impl IntLike {
    /// The value as a count, named by `key` when it is negative or too large.
    fn count<T: TryFrom<i64>>(self, key: &str) -> anyhow::Result<T> {
        T::try_from(self.0).map_err(|_| anyhow::anyhow!("{key}: {} must be 0 or more", self.0))
    }
}

/// A boolean as azure-ai-ml reads one (marshmallow's `Boolean`): true or
/// false, 1 or 0, or their usual spellings as strings.
#[derive(Debug, Clone, Copy)]
struct BoolLike(bool);

impl<'de> Deserialize<'de> for BoolLike {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        // marshmallow's own lists, spelled as it spells them.
        const TRUE: &[&str] = &[
            "t", "T", "true", "True", "TRUE", "on", "On", "ON", "y", "Y", "yes", "Yes", "YES", "1",
        ];
        const FALSE: &[&str] = &[
            "f", "F", "false", "False", "FALSE", "off", "Off", "OFF", "n", "N", "no", "No", "NO",
            "0",
        ];
        match serde_norway::Value::deserialize(d)? {
            serde_norway::Value::Bool(b) => Ok(BoolLike(b)),
            serde_norway::Value::Number(n) if n.as_f64() == Some(1.0) => Ok(BoolLike(true)),
            serde_norway::Value::Number(n) if n.as_f64() == Some(0.0) => Ok(BoolLike(false)),
            serde_norway::Value::String(s) if TRUE.contains(&s.as_str()) => Ok(BoolLike(true)),
            serde_norway::Value::String(s) if FALSE.contains(&s.as_str()) => Ok(BoolLike(false)),
            _ => Err(D::Error::custom("not a valid boolean: use true or false")),
        }
    }
}

/// A cluster file read: the spec, and the spec fields it sets.
#[derive(Debug, Default)]
pub struct ClusterFileSpec {
    pub spec: v1::ClusterSpec,
    pub fields: Vec<&'static str>,
}

pub fn load(path: &std::path::Path) -> anyhow::Result<ClusterFileSpec> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("--file {}", path.display()))?;
    parse(&text).with_context(|| format!("--file {}", path.display()))
}

/// What the command line gives beside a file (as `az ml compute create`
/// overrides the file's values with its flags).
#[derive(Debug, Clone, Copy, Default)]
pub struct Given {
    pub name: bool,
    pub compute_type: bool,
}

/// A file for `compute create`: as [`load`], with what Azure requires of
/// a whole file (`name` and `type`, unless flags give them) and the values
/// Azure fills in for what it leaves out.
pub fn load_for_create(path: &std::path::Path, given: Given) -> anyhow::Result<ClusterFileSpec> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("--file {}", path.display()))?;
    parse_for_create(&text, given).with_context(|| format!("--file {}", path.display()))
}

/// What Azure's SDK sends for a cluster whose file leaves these out.
pub const AZURE_DEFAULT_SIZE: &str = "Standard_DS3_v2";
pub const AZURE_DEFAULT_MAX_INSTANCES: u32 = 4;
pub const AZURE_DEFAULT_IDLE_SECONDS: u64 = 120;

pub fn parse_for_create(text: &str, given: Given) -> anyhow::Result<ClusterFileSpec> {
    let mut out = parse(text)?;
    if !out.fields.contains(&"name") && !given.name {
        bail!("name: required (in the file, or -n)");
    }
    if !out.fields.contains(&"type") && !given.compute_type {
        bail!("type: required: amlcompute (or Strato's attached)");
    }
    let spec = &mut out.spec;
    if spec.r#type.is_empty() || spec.r#type == "amlcompute" {
        if spec.vm_size.is_empty() {
            spec.vm_size = AZURE_DEFAULT_SIZE.to_owned();
        }
        spec.max_nodes.get_or_insert(AZURE_DEFAULT_MAX_INSTANCES);
        // The SDK leaves out an idle time of 0, so Azure applies its own.
        if spec.idle_seconds_before_scaledown.unwrap_or(0) == 0 {
            spec.idle_seconds_before_scaledown = Some(AZURE_DEFAULT_IDLE_SECONDS);
        }
        spec.enable_node_public_ip.get_or_insert(true);
    }
    Ok(out)
}

/// A key the schema does not know, with the closest one it does.
fn check_keys(section: &str, value: &serde_norway::Value, known: &[&str]) -> anyhow::Result<()> {
    let Some(map) = value.as_mapping() else {
        return Ok(());
    };
    for (key, v) in map {
        if v.is_null() {
            let key = serde_norway::to_string(key).unwrap_or_default();
            let key = key.trim();
            let path = if section.is_empty() {
                key.to_owned()
            } else {
                format!("{section}.{key}")
            };
            bail!("{path}: may not be null");
        }
        let key = match key {
            serde_norway::Value::String(s) => s.clone(),
            other => serde_norway::to_string(other)
                .unwrap_or_default()
                .trim()
                .to_owned(),
        };
        if !known.contains(&key.as_str()) {
            let path = if section.is_empty() {
                key.clone()
            } else {
                format!("{section}.{key}")
            };
            let closest = known
                .iter()
                .min_by_key(|k| edit_distance(&key, k))
                .copied()
                .unwrap_or_default();
            bail!("{path}: unknown key; did you mean {closest}?");
        }
    }
    Ok(())
}

/// Levenshtein distance, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

pub fn parse(text: &str) -> anyhow::Result<ClusterFileSpec> {
    let value: serde_norway::Value = serde_norway::from_str(text)?;
    check_keys("", &value, KEYS)?;
    for (section, known) in [
        ("ssh_settings", SSH_KEYS),
        ("network_settings", NETWORK_KEYS),
        ("identity", IDENTITY_KEYS),
    ] {
        if let Some(v) = value.get(section) {
            check_keys(section, v, known)?;
        }
    }
    let file: ClusterFile = serde_norway::from_value(value)?;
    let mut out = ClusterFileSpec::default();
    let spec = &mut out.spec;
    let fields = &mut out.fields;
    if let Some(kind) = &file.kind {
        let compute_type = strato_core::spec::ComputeType::parse("type", &kind.to_lowercase())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        spec.r#type = compute_type.as_str().to_owned();
        fields.push("type");
    }
    if let Some(name) = file.name {
        spec.name = name;
        fields.push("name");
    }
    if let Some(size) = file.size {
        spec.vm_size = size;
        fields.push("vm_size");
    }
    if let Some(tier) = file.tier {
        // Exactly the schema's two words (any case): `lowpriority` is not one.
        let priority = match tier.to_lowercase().as_str() {
            "dedicated" => v1::VmPriority::Dedicated,
            "low_priority" => v1::VmPriority::LowPriority,
            _ => bail!("tier: {tier:?} must be dedicated or low_priority"),
        };
        spec.vm_priority = priority as i32;
        fields.push("vm_priority");
    }
    if let Some(min) = file.min_instances {
        spec.min_nodes = min.count("min_instances")?;
        fields.push("min_nodes");
    }
    if let Some(max) = file.max_instances {
        spec.max_nodes = Some(max.count("max_instances")?);
        fields.push("max_nodes");
    }
    if let Some(idle) = file.idle_time_before_scale_down {
        spec.idle_seconds_before_scaledown = Some(idle.count("idle_time_before_scale_down")?);
        fields.push("idle_seconds_before_scaledown");
    }
    if let Some(location) = file.location {
        spec.location = location;
        fields.push("location");
    }
    if let Some(description) = file.description {
        spec.description = description;
        fields.push("description");
    }
    if let Some(tags) = file.tags {
        for (k, v) in tags {
            let v = match v {
                serde_norway::Value::String(s) => s,
                serde_norway::Value::Number(n) => {
                    bail!("tags.{k}: {n} is not a string: quote it (\"{n}\")")
                }
                _ => bail!("tags.{k}: a tag value must be a string"),
            };
            spec.tags.insert(k, v);
        }
        fields.push("tags");
    }
    if let Some(public_ip) = file.enable_node_public_ip {
        spec.enable_node_public_ip = Some(public_ip.0);
        fields.push("enable_node_public_ip");
    }
    if file.ssh_public_access_enabled.is_some() || file.ssh_settings.is_some() {
        if file
            .ssh_settings
            .as_ref()
            .is_some_and(|s| s.admin_username.is_none())
        {
            bail!("ssh_settings.admin_username: required");
        }
        let ssh = file.ssh_settings.unwrap_or(SshFile {
            admin_username: None,
            admin_password: None,
            ssh_key_value: None,
        });
        spec.ssh = Some(v1::SshSettings {
            remote_login_port_public_access: if file.ssh_public_access_enabled.map(|b| b.0)
                == Some(true)
            {
                v1::RemoteLoginPortPublicAccess::Enabled
            } else {
                v1::RemoteLoginPortPublicAccess::Disabled
            } as i32,
            admin_username: ssh.admin_username.unwrap_or_default(),
            admin_password: ssh.admin_password.unwrap_or_default(),
            admin_ssh_public_key: ssh.ssh_key_value.unwrap_or_default(),
        });
        fields.push("ssh");
    }
    if let Some(net) = file.network_settings {
        spec.vnet = Some(vnet(net)?);
        fields.push("vnet");
    }
    if let Some(identity) = file.identity {
        // As azure-ai-ml: snake_case in any case, or Azure's CamelCase.
        let kind = match identity.kind.as_str() {
            "SystemAssigned" => "system_assigned".to_owned(),
            "UserAssigned" => "user_assigned".to_owned(),
            other => other.to_ascii_lowercase(),
        };
        let listed = identity.user_assigned_identities.unwrap_or_default();
        spec.identity = Some(match kind.as_str() {
            "system_assigned" => {
                if !listed.is_empty() {
                    bail!(
                        "identity: a system_assigned identity takes no user_assigned_identities; a cluster has one kind, never both"
                    );
                }
                v1::IdentitySpec {
                    system_assigned: true,
                    user_assigned_identities: Vec::new(),
                }
            }
            "user_assigned" if listed.is_empty() => {
                bail!(
                    "identity.user_assigned_identities: a user_assigned identity names at least one"
                )
            }
            "user_assigned" => v1::IdentitySpec {
                system_assigned: false,
                user_assigned_identities: listed.into_iter().map(|u| u.resource_id).collect(),
            },
            "none" if !listed.is_empty() => {
                bail!("identity.user_assigned_identities: an identity of type none names none")
            }
            "none" => v1::IdentitySpec::default(),
            other => bail!(
                "identity.type: {other:?} must be system_assigned, user_assigned or none (a cluster has one kind, never both)"
            ),
        });
        fields.push("identity");
    }
    Ok(out)
}

/// `network_settings`: `subnet` is a subnet name (with `vnet_name`) or a
/// full subnet resource id, which also names the resource group.
fn vnet(net: NetworkFile) -> anyhow::Result<v1::VnetSettings> {
    let subnet = net.subnet.unwrap_or_default();
    if subnet.starts_with('/') {
        subnet_by_id(&subnet).context("network_settings.subnet")
    } else {
        Ok(v1::VnetSettings {
            resource_group: String::new(),
            vnet_name: net.vnet_name.unwrap_or_default(),
            subnet_name: subnet,
        })
    }
}

/// A subnet's resource id as the group, network and subnet it names.
pub fn subnet_by_id(id: &str) -> anyhow::Result<v1::VnetSettings> {
    let parts: Vec<&str> = id.trim_matches('/').split('/').collect();
    let find = |key: &str| {
        parts
            .iter()
            .position(|p| p.eq_ignore_ascii_case(key))
            .and_then(|i| parts.get(i + 1))
            .map(|s| (*s).to_owned())
    };
    match (
        find("resourceGroups"),
        find("virtualNetworks"),
        find("subnets"),
    ) {
        (Some(resource_group), Some(vnet_name), Some(subnet_name)) => Ok(v1::VnetSettings {
            resource_group,
            vnet_name,
            subnet_name,
        }),
        _ => bail!(
            "a subnet's resource id must look like /subscriptions/S/resourceGroups/G/providers/Microsoft.Network/virtualNetworks/V/subnets/N"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strato_proto::convert;

    /// Every file of `tests/compute-yaml` through azure-ai-ml's
    /// `load_compute` (the oracle, which `cargo xtask setup` installs in
    /// .data/venv) and through Strato's create path (this reader, then the
    /// control plane's own rules): both accept it, with the same values,
    /// defaults included, or both refuse it. Files named `service-refuses-*`
    /// (the SDK lets them through, Azure's service refuses them) and
    /// `outside-*` (other compute types) Strato refuses.
    #[test]
    fn compute_yaml_reads_as_azure_ml_reads_it() {
        for (name, path, azure) in crate::oracle::answers("load_compute.py", "compute-yaml") {
            let text = std::fs::read_to_string(&path).expect("read");
            let strato = parse_for_create(&text, Given::default()).and_then(|f| {
                let req = convert::cluster_request(&f.spec).map_err(|e| anyhow::anyhow!("{e}"))?;
                strato_core::spec::validate(&req, "local").map_err(|e| anyhow::anyhow!("{e}"))
            });
            let refused_by_service =
                name.starts_with("service-refuses-") || name.starts_with("outside-");
            match (azure["ok"].as_bool(), strato) {
                (Some(true), Ok(spec)) if !refused_by_service => {
                    let v = &azure["values"];
                    let tier = match spec.vm_priority {
                        strato_core::spec::VmPriority::Dedicated => "dedicated",
                        strato_core::spec::VmPriority::LowPriority => "low_priority",
                    };
                    let identity = if spec.identity.system_assigned {
                        Some("system_assigned")
                    } else if spec.identity.user_assigned.is_empty() {
                        None
                    } else {
                        Some("user_assigned")
                    };
                    let azure_identity = v["identity"].as_str().filter(|k| *k != "none");
                    let tags: BTreeMap<String, String> =
                        serde_json::from_value(v["tags"].clone()).expect("tags");
                    assert_eq!(
                        (
                            spec.name.as_str(),
                            spec.vm_size.to_lowercase(),
                            tier,
                            i64::from(spec.min_nodes),
                            i64::from(spec.max_nodes),
                            spec.idle_seconds_before_scaledown,
                            spec.enable_node_public_ip,
                            spec.description.as_str(),
                            &spec.tags,
                            identity,
                        ),
                        (
                            v["name"].as_str().expect("name"),
                            v["size"].as_str().expect("size").to_lowercase(),
                            v["tier"].as_str().expect("tier"),
                            v["min_instances"].as_i64().expect("min"),
                            v["max_instances"].as_i64().expect("max"),
                            v["idle_seconds"].as_u64().expect("idle"),
                            v["enable_node_public_ip"].as_bool().expect("public ip"),
                            v["description"].as_str().unwrap_or(""),
                            &tags,
                            azure_identity,
                        ),
                        "{name}: Strato and azure-ai-ml disagree"
                    );
                    if let Some(location) = v["location"].as_str() {
                        assert_eq!(spec.location, location, "{name}: location");
                    }
                    let ids: Vec<String> =
                        serde_json::from_value(v["user_assigned_identities"].clone()).expect("ids");
                    assert_eq!(spec.identity.user_assigned, ids, "{name}: identities");
                }
                (Some(false), Err(_)) => {}
                (Some(true), Err(_)) if refused_by_service => {}
                (_, strato) => crate::oracle::disagree(&name, &azure, &strato),
            }
        }
    }

    #[test]
    fn unknown_keys_name_the_closest_known_one() {
        let e = parse("name: cpu\nmax_instance: 3\n").expect_err("typo");
        assert_eq!(
            e.to_string(),
            "max_instance: unknown key; did you mean max_instances?"
        );
        let e = parse("ssh_settings:\n  admin_user: a\n").expect_err("typo");
        assert_eq!(
            e.to_string(),
            "ssh_settings.admin_user: unknown key; did you mean admin_username?"
        );
    }

    #[test]
    fn reads_the_documented_schema() {
        let f = parse(
            r#"
$schema: https://azuremlschemas.azureedge.net/latest/amlCompute.schema.json
name: gpu-cluster
type: amlcompute
size: Standard_NC6s_v3
tier: low_priority
min_instances: 0
max_instances: 4
idle_time_before_scale_down: 300
location: westeurope
description: training
tags: {team: vision, cost-centre: "42"}
ssh_public_access_enabled: false
ssh_settings:
  admin_username: azureuser
  ssh_key_value: ssh-ed25519 AAAA user@host
network_settings:
  subnet: /subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/vn/subnets/default
identity:
  type: user_assigned
  user_assigned_identities:
    - resource_id: /subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id1
"#,
        )
        .expect("parses");
        let s = &f.spec;
        assert_eq!(
            (s.name.as_str(), s.vm_size.as_str()),
            ("gpu-cluster", "Standard_NC6s_v3")
        );
        assert_eq!(s.vm_priority, v1::VmPriority::LowPriority as i32);
        assert_eq!(
            (s.min_nodes, s.max_nodes, s.idle_seconds_before_scaledown),
            (0, Some(4), Some(300))
        );
        assert_eq!(s.tags.get("cost-centre").map(String::as_str), Some("42"));
        let vnet = s.vnet.as_ref().expect("vnet");
        assert_eq!(
            (
                vnet.resource_group.as_str(),
                vnet.vnet_name.as_str(),
                vnet.subnet_name.as_str()
            ),
            ("rg", "vn", "default")
        );
        assert_eq!(
            s.identity
                .as_ref()
                .map(|i| i.user_assigned_identities.len()),
            Some(1)
        );
        assert!(f.fields.contains(&"vm_size") && f.fields.contains(&"identity"));
    }

    #[test]
    fn the_shipped_examples_parse_and_validate() {
        for text in [
            include_str!("../../../deploy/examples/cpu-cluster.yml"),
            include_str!("../../../deploy/examples/gpu-cluster.yml"),
        ] {
            let f = parse(text).expect("example parses");
            let req = convert::cluster_request(&f.spec).expect("converts");
            strato_core::spec::validate(&req, "local").expect("example is a valid cluster");
        }
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let e = parse("name: cpu\nmax_instance: 3\n").expect_err("typo");
        assert!(format!("{e:#}").contains("max_instance"), "{e:#}");
    }

    #[test]
    fn other_types_are_refused() {
        let e = parse("name: cpu\ntype: kubernetes\n").expect_err("type");
        assert!(
            e.to_string()
                .starts_with("type: must be amlcompute or attached"),
            "{e}"
        );
        let attached = parse("name: lab\ntype: attached\nmax_instances: 3\n").expect("attached");
        assert_eq!(attached.spec.r#type, "attached");
        assert!(attached.fields.contains(&"type"));
    }

    #[test]
    fn only_set_fields_are_listed() {
        let f = parse("max_instances: 3\n").expect("parses");
        assert_eq!(f.fields, vec!["max_nodes"]);
    }
}
