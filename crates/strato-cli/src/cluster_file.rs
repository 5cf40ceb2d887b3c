//! `--file cluster.yml`: the Azure ML CLI v2 YAML schema for `amlcompute`
//! (REFERENCE.md), read into a wire `ClusterSpec` and the list of fields the
//! file sets (the update mask for `compute update --file`).

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};
use serde::Deserialize;
use strato_core::spec::VmPriority;
use strato_proto::convert;
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
    min_instances: Option<u32>,
    max_instances: Option<u32>,
    idle_time_before_scale_down: Option<u64>,
    location: Option<String>,
    description: Option<String>,
    tags: Option<BTreeMap<String, serde_norway::Value>>,
    ssh_public_access_enabled: Option<bool>,
    ssh_settings: Option<SshFile>,
    network_settings: Option<NetworkFile>,
    identity: Option<IdentityFile>,
}

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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityFile {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    user_assigned_identities: Vec<UserAssignedFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserAssignedFile {
    resource_id: String,
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

pub fn parse(text: &str) -> anyhow::Result<ClusterFileSpec> {
    let file: ClusterFile = serde_norway::from_str(text)?;
    let mut out = ClusterFileSpec::default();
    let spec = &mut out.spec;
    let fields = &mut out.fields;
    if let Some(kind) = &file.kind {
        let compute_type = strato_core::spec::ComputeType::parse("type", kind)
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
        let p = VmPriority::parse(&tier)
            .with_context(|| format!("tier: {tier:?} must be dedicated or low_priority"))?;
        spec.vm_priority = convert::vm_priority(p) as i32;
        fields.push("vm_priority");
    }
    if let Some(min) = file.min_instances {
        spec.min_nodes = min;
        fields.push("min_nodes");
    }
    if let Some(max) = file.max_instances {
        spec.max_nodes = Some(max);
        fields.push("max_nodes");
    }
    if let Some(idle) = file.idle_time_before_scale_down {
        spec.idle_seconds_before_scaledown = Some(idle);
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
                serde_norway::Value::Number(n) => n.to_string(),
                serde_norway::Value::Bool(b) => b.to_string(),
                serde_norway::Value::Null => String::new(),
                _ => bail!("tags.{k}: a tag value must be a string, number or boolean"),
            };
            spec.tags.insert(k, v);
        }
        fields.push("tags");
    }
    if file.ssh_public_access_enabled.is_some() || file.ssh_settings.is_some() {
        let ssh = file.ssh_settings.unwrap_or(SshFile {
            admin_username: None,
            admin_password: None,
            ssh_key_value: None,
        });
        spec.ssh = Some(v1::SshSettings {
            remote_login_port_public_access: if file.ssh_public_access_enabled == Some(true) {
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
        spec.identity = Some(match identity.kind.to_ascii_lowercase().as_str() {
            "system_assigned" | "systemassigned" => {
                if !identity.user_assigned_identities.is_empty() {
                    bail!(
                        "identity: a system_assigned identity takes no user_assigned_identities; a cluster has one kind, never both"
                    );
                }
                v1::IdentitySpec {
                    system_assigned: true,
                    user_assigned_identities: Vec::new(),
                }
            }
            "user_assigned" | "userassigned" => v1::IdentitySpec {
                system_assigned: false,
                user_assigned_identities: identity
                    .user_assigned_identities
                    .into_iter()
                    .map(|u| u.resource_id)
                    .collect(),
            },
            other => bail!(
                "identity.type: {other:?} must be system_assigned or user_assigned (never both)"
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
        let parts: Vec<&str> = subnet.trim_matches('/').split('/').collect();
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
                "network_settings.subnet: a resource id must look like /subscriptions/S/resourceGroups/G/providers/Microsoft.Network/virtualNetworks/V/subnets/N"
            ),
        }
    } else {
        Ok(v1::VnetSettings {
            resource_group: String::new(),
            vnet_name: net.vnet_name.unwrap_or_default(),
            subnet_name: subnet,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
tags: {team: vision, cost-centre: 42}
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
