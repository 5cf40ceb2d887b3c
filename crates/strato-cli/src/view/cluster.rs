//! `strato compute create|update|show|list` and the identity verbs: one
//! cluster as KEY/VALUE rows, or a list with a row per cluster.

use std::collections::BTreeMap;

use serde::Serialize;
use strato_proto::v1;

use super::{Render, Table, ts};

fn priority(p: i32) -> &'static str {
    match v1::VmPriority::try_from(p) {
        Ok(v1::VmPriority::LowPriority) => "lowpriority",
        _ => "dedicated",
    }
}

#[derive(Debug, Serialize)]
pub struct NodeStateCountsView {
    pub idle: u32,
    pub running: u32,
    pub preparing: u32,
    pub unusable: u32,
    pub leaving: u32,
    pub preempted: u32,
    pub suspended: u32,
}

#[derive(Debug, Serialize)]
pub struct ClusterErrorView {
    pub code: String,
    pub message: String,
    pub since: String,
}

/// `identity` as `az ml compute show` prints it (`type`, the system-assigned
/// identity's `principal_id`, `user_assigned_identities` with their ids),
/// and Strato's `identities`, each with whether it is the default.
#[derive(Debug, Serialize)]
pub struct IdentityView {
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal_id: Option<String>,
    pub user_assigned_identities: Vec<UserAssignedView>,
    /// Each identity with its ids; the default one first.
    pub identities: Vec<ManagedIdentityView>,
}

#[derive(Debug, Serialize)]
pub struct UserAssignedView {
    pub resource_id: String,
    pub client_id: String,
    pub principal_id: String,
}

#[derive(Debug, Serialize)]
pub struct ManagedIdentityView {
    #[serde(rename = "type")]
    pub kind: String,
    pub resource_id: String,
    pub client_id: String,
    pub principal_id: String,
    pub default: bool,
}

#[derive(Debug, Serialize)]
pub struct SshView {
    pub public_access: bool,
    pub admin_username: String,
    pub admin_password_set: bool,
    pub admin_ssh_public_key: String,
}

#[derive(Debug, Serialize)]
pub struct PowerView {
    pub resume_command: String,
    pub suspend_command: String,
    pub timeout_seconds: u32,
}

#[derive(Debug, Serialize)]
pub struct VnetView {
    pub resource_group: String,
    pub vnet_name: String,
    pub subnet_name: String,
}

/// az's `ssh_settings` (the password is never shown).
#[derive(Debug, Serialize)]
pub struct AzSshSettings {
    pub admin_username: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub ssh_key_value: String,
}

/// az's `network_settings`.
#[derive(Debug, Serialize)]
pub struct AzNetworkSettings {
    pub vnet_name: String,
    pub subnet: String,
}

/// `compute show -o json`: one object per cluster.
#[derive(Debug, Serialize)]
pub struct ClusterView {
    pub name: String,
    /// amlcompute or attached.
    #[serde(rename = "type")]
    pub compute_type: String,
    /// An attached cluster's power commands.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub power: Option<PowerView>,
    pub vm_size: String,
    pub vm_priority: &'static str,
    pub min_nodes: u32,
    pub max_nodes: u32,
    pub idle_seconds_before_scaledown: u64,
    pub location: String,
    pub description: String,
    pub tags: BTreeMap<String, String>,
    /// The same values under the keys `az ml compute show` prints them, for
    /// scripts written against Azure ML.
    pub size: String,
    pub tier: &'static str,
    pub min_instances: u32,
    pub max_instances: u32,
    pub idle_time_before_scale_down: u64,
    pub provisioning_state: &'static str,
    pub ssh_public_access_enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh_settings: Option<AzSshSettings>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_settings: Option<AzNetworkSettings>,
    pub allocation_state: &'static str,
    pub allocation_state_transition_time: String,
    pub current_node_count: u32,
    pub target_node_count: u32,
    pub node_state_counts: NodeStateCountsView,
    pub errors: Vec<ClusterErrorView>,
    pub quota_family: String,
    pub vcpus_per_node: u32,
    pub inter_node_communication: bool,
    pub enable_node_public_ip: bool,
    pub identity: IdentityView,
    pub ssh: SshView,
    pub vnet: Option<VnetView>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<v1::Cluster> for ClusterView {
    fn from(c: v1::Cluster) -> Self {
        let s = c.spec.unwrap_or_default();
        let counts = c.node_state_counts.unwrap_or_default();
        let identity = s.identity.unwrap_or_default();
        let ssh = s.ssh.unwrap_or_default();
        ClusterView {
            name: s.name,
            compute_type: if s.r#type.is_empty() {
                "amlcompute".to_owned()
            } else {
                s.r#type
            },
            power: s.power.map(|p| PowerView {
                resume_command: p.resume_command,
                suspend_command: p.suspend_command,
                timeout_seconds: p.timeout_seconds.unwrap_or_default(),
            }),
            vm_size: s.vm_size.clone(),
            vm_priority: priority(s.vm_priority),
            min_nodes: s.min_nodes,
            max_nodes: s.max_nodes.unwrap_or_default(),
            idle_seconds_before_scaledown: s.idle_seconds_before_scaledown.unwrap_or_default(),
            location: s.location,
            description: s.description,
            tags: s.tags.into_iter().collect(),
            size: s.vm_size.clone(),
            tier: if s.vm_priority == v1::VmPriority::LowPriority as i32 {
                "low_priority"
            } else {
                "dedicated"
            },
            min_instances: s.min_nodes,
            max_instances: s.max_nodes.unwrap_or_default(),
            idle_time_before_scale_down: s.idle_seconds_before_scaledown.unwrap_or_default(),
            provisioning_state: "Succeeded",
            ssh_public_access_enabled: ssh.remote_login_port_public_access
                == v1::RemoteLoginPortPublicAccess::Enabled as i32,
            ssh_settings: (!ssh.admin_username.is_empty()).then(|| AzSshSettings {
                admin_username: ssh.admin_username.clone(),
                ssh_key_value: ssh.admin_ssh_public_key.clone(),
            }),
            network_settings: s.vnet.as_ref().map(|v| AzNetworkSettings {
                vnet_name: v.vnet_name.clone(),
                subnet: v.subnet_name.clone(),
            }),
            allocation_state: match v1::AllocationState::try_from(c.allocation_state) {
                Ok(v1::AllocationState::Resizing) => "resizing",
                _ => "steady",
            },
            allocation_state_transition_time: ts(c.allocation_state_transition_time.as_ref()),
            current_node_count: c.current_node_count,
            target_node_count: c.target_node_count,
            node_state_counts: NodeStateCountsView {
                idle: counts.idle,
                running: counts.running,
                preparing: counts.preparing,
                unusable: counts.unusable,
                leaving: counts.leaving,
                preempted: counts.preempted,
                suspended: counts.suspended,
            },
            errors: c
                .errors
                .into_iter()
                .map(|e| ClusterErrorView {
                    code: e.code,
                    message: e.message,
                    since: ts(e.since.as_ref()),
                })
                .collect(),
            quota_family: c.quota_family,
            vcpus_per_node: c.vcpus_per_node,
            inter_node_communication: s.inter_node_communication.unwrap_or(true),
            enable_node_public_ip: s.enable_node_public_ip.unwrap_or(true),
            identity: IdentityView {
                kind: if identity.system_assigned {
                    "system_assigned"
                } else if identity.user_assigned_identities.is_empty() {
                    "none"
                } else {
                    "user_assigned"
                },
                principal_id: c
                    .identities
                    .iter()
                    .find(|i| i.kind == "system_assigned")
                    .map(|i| i.principal_id.clone()),
                user_assigned_identities: identity
                    .user_assigned_identities
                    .iter()
                    .map(|id| {
                        let known = c
                            .identities
                            .iter()
                            .find(|i| i.resource_id.eq_ignore_ascii_case(id));
                        UserAssignedView {
                            resource_id: id.clone(),
                            client_id: known.map(|i| i.client_id.clone()).unwrap_or_default(),
                            principal_id: known.map(|i| i.principal_id.clone()).unwrap_or_default(),
                        }
                    })
                    .collect(),
                identities: c
                    .identities
                    .into_iter()
                    .map(|i| ManagedIdentityView {
                        kind: i.kind,
                        resource_id: i.resource_id,
                        client_id: i.client_id,
                        principal_id: i.principal_id,
                        default: i.is_default,
                    })
                    .collect(),
            },
            ssh: SshView {
                public_access: ssh.remote_login_port_public_access
                    == v1::RemoteLoginPortPublicAccess::Enabled as i32,
                admin_username: ssh.admin_username,
                admin_password_set: c.admin_password_set,
                admin_ssh_public_key: ssh.admin_ssh_public_key,
            },
            vnet: s.vnet.map(|v| VnetView {
                resource_group: v.resource_group,
                vnet_name: v.vnet_name,
                subnet_name: v.subnet_name,
            }),
            created_at: ts(c.created_at.as_ref()),
            updated_at: ts(c.updated_at.as_ref()),
        }
    }
}

impl Render for ClusterView {
    fn table(&self) -> Table {
        let c = &self.node_state_counts;
        let mut pairs = vec![
            ("name", self.name.clone()),
            ("type", self.compute_type.clone()),
            ("vm_size", self.vm_size.clone()),
            ("vm_priority", self.vm_priority.to_owned()),
            ("location", self.location.clone()),
            ("min_nodes", self.min_nodes.to_string()),
            ("max_nodes", self.max_nodes.to_string()),
            (
                "idle_seconds_before_scaledown",
                self.idle_seconds_before_scaledown.to_string(),
            ),
            ("allocation_state", self.allocation_state.to_owned()),
            (
                "nodes",
                format!(
                    "{} of {} target",
                    self.current_node_count, self.target_node_count
                ),
            ),
            (
                "node_states",
                format!(
                    "idle {} running {} preparing {} unusable {} leaving {} preempted {} suspended {}",
                    c.idle, c.running, c.preparing, c.unusable, c.leaving, c.preempted, c.suspended
                ),
            ),
            (
                "quota",
                format!(
                    "{} ({} vCPUs per node)",
                    self.quota_family, self.vcpus_per_node
                ),
            ),
            ("identity", self.identity.kind.to_owned()),
        ];
        for i in &self.identity.identities {
            pairs.push((
                if i.default { "  default" } else { "  identity" },
                format!(
                    "{} client_id={} principal_id={}",
                    i.resource_id, i.client_id, i.principal_id
                ),
            ));
        }
        if !self.description.is_empty() {
            pairs.push(("description", self.description.clone()));
        }
        if !self.tags.is_empty() {
            let tags: Vec<String> = self.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
            pairs.push(("tags", tags.join(", ")));
        }
        pairs.push(("created_at", self.created_at.clone()));
        for e in &self.errors {
            pairs.push(("error", format!("{}: {}", e.code, e.message)));
        }
        Table::properties(pairs)
    }
}

impl Render for Vec<ClusterView> {
    fn table(&self) -> Table {
        let mut t = Table::new(&[
            "NAME", "SIZE", "PRIORITY", "LOCATION", "MIN", "MAX", "NODES", "STATE",
        ]);
        for c in self {
            t.row(vec![
                c.name.clone(),
                c.vm_size.clone(),
                c.vm_priority.to_owned(),
                c.location.clone(),
                c.min_nodes.to_string(),
                c.max_nodes.to_string(),
                format!("{}/{}", c.current_node_count, c.target_node_count),
                c.allocation_state.to_owned(),
            ]);
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_json_has_the_documented_keys() {
        let view = ClusterView::from(v1::Cluster {
            spec: Some(v1::ClusterSpec {
                name: "cpu".into(),
                max_nodes: Some(2),
                ..Default::default()
            }),
            ..Default::default()
        });
        let json = serde_json::to_value(&view).expect("serialises");
        for key in [
            "name",
            "vm_size",
            "vm_priority",
            "min_nodes",
            "max_nodes",
            "idle_seconds_before_scaledown",
            "location",
            "allocation_state",
            "current_node_count",
            "target_node_count",
            "node_state_counts",
            "errors",
        ] {
            assert!(json.get(key).is_some(), "{key} missing");
        }
        for key in [
            "idle",
            "running",
            "preparing",
            "unusable",
            "leaving",
            "preempted",
            "suspended",
        ] {
            assert!(
                json["node_state_counts"].get(key).is_some(),
                "{key} missing"
            );
        }
    }
}

/// `strato compute join-token list`: a row per token.
#[derive(Debug, Serialize)]
pub struct JoinTokenView {
    pub id: String,
    pub uses_left: u32,
    pub expires_at: String,
    pub created_at: String,
    pub created_by: String,
}

impl From<v1::JoinToken> for JoinTokenView {
    fn from(t: v1::JoinToken) -> Self {
        JoinTokenView {
            id: t.id,
            uses_left: t.uses_left,
            expires_at: ts(t.expires_at.as_ref()),
            created_at: ts(t.created_at.as_ref()),
            created_by: t.created_by,
        }
    }
}

impl Render for Vec<JoinTokenView> {
    fn table(&self) -> Table {
        let mut t = Table::new(&["ID", "USES_LEFT", "EXPIRES_AT", "CREATED_BY"]);
        for j in self {
            t.row(vec![
                j.id.clone(),
                j.uses_left.to_string(),
                j.expires_at.clone(),
                j.created_by.clone(),
            ]);
        }
        t
    }
}
