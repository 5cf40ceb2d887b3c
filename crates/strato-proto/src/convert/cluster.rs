//! Clusters, nodes, sizes and quota on the wire.

use strato_core::VmSize;
use strato_core::error::FieldError;
use strato_core::identity::{self, Identity, IdentityKind};
use strato_core::node::{AllocationState, GpuInfo, NodeState, NodeStateCounts};
use strato_core::quota::UsageLine;
use strato_core::spec::{
    ClusterRequest, ClusterSpec, IdentitySpec, SshSettings, VmPriority, VnetSettings,
};

use crate::v1;

/// A wire spec as a create/update request. Empty strings and unset optional
/// fields mean "take the default".
pub fn cluster_request(spec: &v1::ClusterSpec) -> Result<ClusterRequest, FieldError> {
    let vm_priority = match v1::VmPriority::try_from(spec.vm_priority) {
        Ok(v1::VmPriority::Unspecified) => None,
        Ok(v1::VmPriority::Dedicated) => Some(VmPriority::Dedicated),
        Ok(v1::VmPriority::LowPriority) => Some(VmPriority::LowPriority),
        Err(_) => {
            return Err(FieldError::new(
                "vm_priority",
                format!(
                    "unknown value {}; use dedicated or lowpriority",
                    spec.vm_priority
                ),
            ));
        }
    };
    let ssh = match &spec.ssh {
        None => SshSettings::default(),
        Some(s) => SshSettings {
            public_access: match v1::RemoteLoginPortPublicAccess::try_from(
                s.remote_login_port_public_access,
            ) {
                Ok(v1::RemoteLoginPortPublicAccess::Enabled) => true,
                Ok(_) => false,
                Err(_) => {
                    return Err(FieldError::new(
                        "ssh.remote_login_port_public_access",
                        "unknown value; use Enabled, Disabled or NotSpecified",
                    ));
                }
            },
            admin_username: s.admin_username.clone(),
            admin_password: s.admin_password.clone(),
            admin_password_hash: String::new(),
            admin_ssh_public_key: s.admin_ssh_public_key.clone(),
        },
    };
    let vnet = spec
        .vnet
        .as_ref()
        .filter(|v| {
            !(v.resource_group.is_empty() && v.vnet_name.is_empty() && v.subnet_name.is_empty())
        })
        .map(|v| VnetSettings {
            resource_group: v.resource_group.clone(),
            vnet_name: v.vnet_name.clone(),
            subnet_name: v.subnet_name.clone(),
        });
    let identity = spec
        .identity
        .as_ref()
        .map(|i| IdentitySpec {
            system_assigned: i.system_assigned,
            user_assigned: i.user_assigned_identities.clone(),
        })
        .unwrap_or_default();
    let power = match &spec.power {
        None => None,
        Some(p) if p.resume_command.is_empty() && p.suspend_command.is_empty() => None,
        Some(p) => Some(strato_core::spec::PowerCommands {
            resume_command: p.resume_command.clone(),
            suspend_command: p.suspend_command.clone(),
            timeout_seconds: p
                .timeout_seconds
                .unwrap_or(strato_core::spec::DEFAULT_POWER_TIMEOUT_SECONDS),
        }),
    };
    let compute_type = match spec.r#type.as_str() {
        "" => None,
        t => Some(strato_core::spec::ComputeType::parse("type", t)?),
    };
    Ok(ClusterRequest {
        name: spec.name.clone(),
        compute_type,
        power,
        vm_size: non_empty(&spec.vm_size),
        vm_priority,
        min_nodes: Some(spec.min_nodes),
        max_nodes: spec.max_nodes,
        idle_seconds_before_scaledown: spec.idle_seconds_before_scaledown,
        location: non_empty(&spec.location),
        description: spec.description.clone(),
        tags: spec
            .tags
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        ssh,
        vnet,
        identity,
        inter_node_communication: spec.inter_node_communication,
        enable_node_public_ip: spec.enable_node_public_ip,
    })
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

/// A stored spec on the wire. The admin password never leaves the server.
pub fn cluster_spec(spec: &ClusterSpec) -> v1::ClusterSpec {
    v1::ClusterSpec {
        name: spec.name.clone(),
        vm_size: spec.vm_size.clone(),
        vm_priority: vm_priority(spec.vm_priority) as i32,
        min_nodes: spec.min_nodes,
        max_nodes: Some(spec.max_nodes),
        idle_seconds_before_scaledown: Some(spec.idle_seconds_before_scaledown),
        location: spec.location.clone(),
        description: spec.description.clone(),
        tags: spec
            .tags
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        ssh: Some(v1::SshSettings {
            remote_login_port_public_access: if spec.ssh.public_access {
                v1::RemoteLoginPortPublicAccess::Enabled
            } else {
                v1::RemoteLoginPortPublicAccess::Disabled
            } as i32,
            admin_username: spec.ssh.admin_username.clone(),
            admin_password: String::new(),
            admin_ssh_public_key: spec.ssh.admin_ssh_public_key.clone(),
        }),
        vnet: spec.vnet.as_ref().map(|v| v1::VnetSettings {
            resource_group: v.resource_group.clone(),
            vnet_name: v.vnet_name.clone(),
            subnet_name: v.subnet_name.clone(),
        }),
        identity: Some(v1::IdentitySpec {
            system_assigned: spec.identity.system_assigned,
            user_assigned_identities: spec.identity.user_assigned.clone(),
        }),
        inter_node_communication: Some(spec.inter_node_communication),
        enable_node_public_ip: Some(spec.enable_node_public_ip),
        r#type: spec.compute_type.as_str().to_owned(),
        power: spec.power.as_ref().map(|p| v1::PowerCommands {
            resume_command: p.resume_command.clone(),
            suspend_command: p.suspend_command.clone(),
            timeout_seconds: Some(p.timeout_seconds),
        }),
    }
}

pub fn vm_priority(p: VmPriority) -> v1::VmPriority {
    match p {
        VmPriority::Dedicated => v1::VmPriority::Dedicated,
        VmPriority::LowPriority => v1::VmPriority::LowPriority,
    }
}

pub fn node_state(s: NodeState) -> v1::NodeState {
    match s {
        NodeState::Idle => v1::NodeState::Idle,
        NodeState::Running => v1::NodeState::Running,
        NodeState::Preparing => v1::NodeState::Preparing,
        NodeState::Unusable => v1::NodeState::Unusable,
        NodeState::Leaving => v1::NodeState::Leaving,
        NodeState::Preempted => v1::NodeState::Preempted,
        NodeState::Suspended => v1::NodeState::Suspended,
    }
}

pub fn allocation_state(s: AllocationState) -> v1::AllocationState {
    match s {
        AllocationState::Steady => v1::AllocationState::Steady,
        AllocationState::Resizing => v1::AllocationState::Resizing,
    }
}

/// A cluster's identities on the wire, the default one first.
pub fn managed_identities(identities: &[Identity]) -> Vec<v1::ManagedIdentity> {
    let default = identity::default_identity(identities);
    let mut list: Vec<v1::ManagedIdentity> = identities
        .iter()
        .map(|i| v1::ManagedIdentity {
            kind: match i.kind {
                IdentityKind::SystemAssigned => "system_assigned",
                IdentityKind::UserAssigned => "user_assigned",
            }
            .to_owned(),
            resource_id: i.resource_id.clone(),
            client_id: i.client_id.clone(),
            principal_id: i.principal_id.clone(),
            is_default: Some(i) == default,
        })
        .collect();
    list.sort_by_key(|i| !i.is_default);
    list
}

pub fn node_state_counts(c: NodeStateCounts) -> v1::NodeStateCounts {
    v1::NodeStateCounts {
        idle: c.idle,
        running: c.running,
        preparing: c.preparing,
        unusable: c.unusable,
        leaving: c.leaving,
        preempted: c.preempted,
        suspended: c.suspended,
    }
}

pub fn gpu_info(g: GpuInfo) -> v1::GpuInfo {
    v1::GpuInfo {
        index: g.index,
        uuid: g.uuid,
        model: g.model,
        memory_mib: g.memory_mib,
        problem: g.problem.unwrap_or_default(),
    }
}

pub fn vm_size(s: &VmSize) -> v1::VmSize {
    v1::VmSize {
        name: s.name.to_owned(),
        vcpus: s.vcpus,
        memory_gib: s.memory_gib,
        gpus: s.gpus,
        gpu_model: s.gpu_model.to_owned(),
        family: s.family.to_owned(),
    }
}

pub fn quota_usage(l: UsageLine) -> v1::QuotaUsage {
    v1::QuotaUsage {
        name: l.name,
        unit: l.unit.to_owned(),
        current: l.current,
        limit: l.limit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_spec_round_trips_without_the_password() {
        let mut req = ClusterRequest {
            name: "gpu-a1".into(),
            vm_size: Some("standard_nc6s_v3".into()),
            max_nodes: Some(4),
            ..Default::default()
        };
        req.ssh.admin_username = "azureuser".into();
        req.ssh.admin_password = "Secret-Passw0rd".into();
        let spec = strato_core::spec::validate(&req, "local").expect("valid");
        let wire = cluster_spec(&spec);
        assert_eq!(
            wire.ssh.as_ref().map(|s| s.admin_password.as_str()),
            Some("")
        );
        let back = cluster_request(&wire).expect("converts");
        assert_eq!(back.vm_size.as_deref(), Some("Standard_NC6s_v3"));
        assert_eq!(back.max_nodes, Some(4));
        assert_eq!(back.location.as_deref(), Some("local"));
    }

    #[test]
    fn unknown_enum_value_names_the_field() {
        let wire = v1::ClusterSpec {
            vm_priority: 42,
            ..Default::default()
        };
        assert_eq!(
            cluster_request(&wire).expect_err("bad enum").field,
            "vm_priority"
        );
    }
}
