//! The requests `compute create` and `compute update` send: an AmlCompute
//! `--file` (if any) overlaid with the flags, checked for a name (and, for
//! update, for something to change) before anything is sent.

use std::collections::BTreeMap;

use strato_proto::client::AuthedChannel;
use strato_proto::convert;
use strato_proto::v1::{self, compute_service_client::ComputeServiceClient};

use super::{CreateArgs, UpdateArgs};
use crate::Failure;
use crate::cluster_file;

/// `--assign-identity` or `identity assign` values: whether '[system]' (any
/// case) is among them, and the user-assigned identity resource ids.
pub(super) fn split_identities(ids: impl IntoIterator<Item = String>) -> (bool, Vec<String>) {
    let mut system = false;
    let mut user_assigned = Vec::new();
    for id in ids {
        if id.eq_ignore_ascii_case("[system]") {
            system = true;
        } else {
            user_assigned.push(id);
        }
    }
    (system, user_assigned)
}

/// `create` or `update` with neither `-n` nor a file that names the cluster.
fn no_name() -> Failure {
    Failure::usage("name: give -n/--name or a --file with a name")
}

/// Replaces `dst` with the flag's value when the flag was given.
fn overlay(dst: &mut String, flag: &Option<String>) {
    if let Some(v) = flag {
        dst.clone_from(v);
    }
}

/// The create request from `--file` (if any) overlaid with the flags.
pub(super) fn create_spec(args: &CreateArgs) -> Result<v1::ClusterSpec, Failure> {
    let mut spec = match &args.file {
        Some(path) => {
            let given = cluster_file::Given {
                name: args.name.is_some(),
                compute_type: args.compute_type.is_some(),
            };
            cluster_file::load_for_create(path, given)?.spec
        }
        None => v1::ClusterSpec::default(),
    };
    overlay(&mut spec.name, &args.name);
    if spec.name.is_empty() {
        return Err(no_name());
    }
    overlay(&mut spec.vm_size, &args.size);
    overlay(&mut spec.r#type, &args.compute_type);
    if let (Some(resume), Some(suspend)) = (&args.resume_command, &args.suspend_command) {
        spec.power = Some(v1::PowerCommands {
            resume_command: resume.clone(),
            suspend_command: suspend.clone(),
            timeout_seconds: args.power_timeout,
        });
    }
    if let Some(min) = args.scale.min_nodes {
        spec.min_nodes = min;
    }
    if args.scale.max_nodes.is_some() {
        spec.max_nodes = args.scale.max_nodes;
    }
    if args.scale.idle_seconds_before_scaledown.is_some() {
        spec.idle_seconds_before_scaledown = args.scale.idle_seconds_before_scaledown;
    }
    if let Some(p) = args.vm_priority {
        spec.vm_priority = convert::vm_priority(p) as i32;
    }
    overlay(&mut spec.location, &args.location);
    overlay(&mut spec.description, &args.description);
    spec.tags.extend(args.tags.iter().cloned());
    if !args.assign_identity.is_empty() {
        let identity = spec.identity.get_or_insert_with(Default::default);
        let (system, user_assigned) = split_identities(args.assign_identity.iter().cloned());
        identity.system_assigned |= system;
        identity.user_assigned_identities.extend(user_assigned);
    }
    match args
        .identity_type
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None if args.user_assigned_identities.is_empty() => {}
        None => {
            return Err(Failure::usage(
                "--user-assigned-identities goes with --identity-type user_assigned",
            ));
        }
        Some("system_assigned" | "systemassigned") if args.user_assigned_identities.is_empty() => {
            spec.identity = Some(v1::IdentitySpec {
                system_assigned: true,
                user_assigned_identities: Vec::new(),
            });
        }
        Some("user_assigned" | "userassigned") if !args.user_assigned_identities.is_empty() => {
            spec.identity = Some(v1::IdentitySpec {
                system_assigned: false,
                user_assigned_identities: args.user_assigned_identities.clone(),
            });
        }
        Some("none") if args.user_assigned_identities.is_empty() => {
            spec.identity = Some(v1::IdentitySpec::default());
        }
        Some(other) => {
            return Err(Failure::usage(format!(
                "--identity-type {other:?}: system_assigned, user_assigned (with --user-assigned-identities) or none"
            )));
        }
    }
    if args.enable_node_public_ip.is_some() {
        spec.enable_node_public_ip = args.enable_node_public_ip;
    }
    let public_access = match args.remote_login_port_public_access.as_deref() {
        None => args
            .ssh_public_access_enabled
            .or(args.ssh_public_access.then_some(true)),
        Some(a) if a.eq_ignore_ascii_case("enabled") => Some(true),
        Some(a) if a.eq_ignore_ascii_case("disabled") || a.eq_ignore_ascii_case("notspecified") => {
            Some(false)
        }
        Some(other) => {
            return Err(Failure::usage(format!(
                "--remote-login-port-public-access {other:?}: Enabled, Disabled or NotSpecified"
            )));
        }
    };
    if args.admin_username.is_some()
        || args.admin_password.is_some()
        || args.ssh_key_value.is_some()
        || public_access.is_some()
    {
        let ssh = spec.ssh.get_or_insert_with(Default::default);
        overlay(&mut ssh.admin_username, &args.admin_username);
        overlay(&mut ssh.admin_password, &args.admin_password);
        overlay(&mut ssh.admin_ssh_public_key, &args.ssh_key_value);
        match public_access {
            Some(true) => {
                ssh.remote_login_port_public_access =
                    v1::RemoteLoginPortPublicAccess::Enabled as i32;
            }
            Some(false) => {
                ssh.remote_login_port_public_access =
                    v1::RemoteLoginPortPublicAccess::Disabled as i32;
            }
            None => {}
        }
    }
    if args.vnet_resourcegroup_name.is_some()
        || args.vnet_name.is_some()
        || args.subnet_name.is_some()
    {
        let vnet = spec.vnet.get_or_insert_with(Default::default);
        overlay(&mut vnet.resource_group, &args.vnet_resourcegroup_name);
        overlay(&mut vnet.vnet_name, &args.vnet_name);
        match args.subnet_name.as_deref() {
            // A subnet's resource id names its group and network too.
            Some(id) if id.starts_with('/') => {
                *vnet = cluster_file::subnet_by_id(id)
                    .map_err(|e| Failure::usage(format!("--subnet: {e:#}")))?;
            }
            _ => overlay(&mut vnet.subnet_name, &args.subnet_name),
        }
    }
    if args.no_inter_node_communication {
        spec.inter_node_communication = Some(false);
    }
    Ok(spec)
}

pub(super) async fn update_request(
    client: &mut ComputeServiceClient<AuthedChannel>,
    args: UpdateArgs,
) -> Result<v1::UpdateClusterRequest, Failure> {
    let (mut spec, mut mask) = match &args.file {
        Some(path) => {
            let f = cluster_file::load(path)?;
            (
                f.spec,
                f.fields.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
            )
        }
        None => (v1::ClusterSpec::default(), Vec::new()),
    };
    if let Some(name) = &args.name {
        spec.name = name.clone();
    }
    let name = spec.name.clone();
    if name.is_empty() {
        return Err(no_name());
    }
    let set = |field: &str, mask: &mut Vec<String>| {
        if !mask.iter().any(|m| m == field) {
            mask.push(field.to_owned());
        }
    };
    // az's --set, as the flags it stands for.
    let mut args = args;
    for (path, value) in std::mem::take(&mut args.set) {
        let count = |what: &str| {
            value.parse::<u64>().map_err(|_| {
                Failure::usage(format!("--set {path}={value}: {what} is a whole number"))
            })
        };
        match path.as_str() {
            "min_instances" => {
                args.scale.min_nodes = Some(
                    u32::try_from(count("min_instances")?)
                        .map_err(|_| Failure::usage(format!("--set {path}={value}: too large")))?,
                );
            }
            "max_instances" => {
                args.scale.max_nodes = Some(
                    u32::try_from(count("max_instances")?)
                        .map_err(|_| Failure::usage(format!("--set {path}={value}: too large")))?,
                );
            }
            "idle_time_before_scale_down" => {
                args.scale.idle_seconds_before_scaledown =
                    Some(count("idle_time_before_scale_down")?);
            }
            "description" => args.description = Some(value),
            tag if tag.starts_with("tags.") && tag.len() > "tags.".len() => {
                args.tags.push((tag["tags.".len()..].to_owned(), value));
            }
            other => {
                return Err(Failure::usage(format!(
                    "--set {other}: Strato updates min_instances, max_instances, idle_time_before_scale_down, description and tags.KEY"
                )));
            }
        }
    }
    if let Some(min) = args.scale.min_nodes {
        spec.min_nodes = min;
        set("min_nodes", &mut mask);
    }
    if let Some(max) = args.scale.max_nodes {
        spec.max_nodes = Some(max);
        set("max_nodes", &mut mask);
    }
    if let Some(idle) = args.scale.idle_seconds_before_scaledown {
        spec.idle_seconds_before_scaledown = Some(idle);
        set("idle_seconds_before_scaledown", &mut mask);
    }
    if let Some(d) = args.description {
        spec.description = d;
        set("description", &mut mask);
    }
    if !args.tags.is_empty() || !args.remove_tags.is_empty() {
        // Tags are replaced whole by the server: start from the current ones
        // (or the file's) and apply the changes.
        let mut tags: BTreeMap<String, String> = if mask.iter().any(|m| m == "tags") {
            spec.tags.clone().into_iter().collect()
        } else {
            let current = client
                .get_cluster(v1::GetClusterRequest { name: name.clone() })
                .await?
                .into_inner();
            current.spec.unwrap_or_default().tags.into_iter().collect()
        };
        tags.extend(args.tags);
        for k in &args.remove_tags {
            tags.remove(k);
        }
        spec.tags = tags.into_iter().collect();
        set("tags", &mut mask);
    }
    mask.retain(|m| m != "name");
    if mask.is_empty() {
        return Err(Failure::usage(
            "nothing to update: give --min-nodes, --max-nodes, --idle-seconds-before-scaledown, --description, --tag, --remove-tag or --file",
        ));
    }
    Ok(v1::UpdateClusterRequest {
        name,
        spec: Some(spec),
        update_mask: Some(prost_types::FieldMask { paths: mask }),
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cmd::compute::ComputeCommand;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        compute: ComputeCommand,
    }

    fn create(args: &[&str]) -> Result<v1::ClusterSpec, Failure> {
        let cli = Cli::try_parse_from(
            ["strato-compute", "create"]
                .into_iter()
                .chain(args.iter().copied()),
        )
        .expect("parses");
        match cli.compute {
            ComputeCommand::Create(a) => create_spec(&a),
            other => panic!("not a create: {other:?}"),
        }
    }

    #[test]
    fn identities_split_into_system_and_user_assigned() {
        assert_eq!(
            split_identities([
                "[System]".to_owned(),
                "/ids/a".to_owned(),
                "/ids/b".to_owned()
            ]),
            (true, vec!["/ids/a".to_owned(), "/ids/b".to_owned()])
        );
        let identity = create(&["-n", "cpu", "--assign-identity", "/ids/a", "[system]"])
            .expect("a spec")
            .identity
            .expect("an identity");
        assert!(identity.system_assigned);
        assert_eq!(identity.user_assigned_identities, ["/ids/a"]);
        assert_eq!(create(&["-n", "cpu"]).expect("a spec").identity, None);
    }

    #[test]
    fn az_and_v1_flag_spellings_make_the_same_spec() {
        let s = create(&[
            "-n",
            "cpu",
            "-t",
            "amlcompute",
            "-d",
            "nightly",
            "-l",
            "westeurope",
            "--tags",
            "team=ml",
            "cost=42",
            "--identity-type",
            "user_assigned",
            "--user-assigned-identities",
            "/ids/a",
            "--enable-node-public-ip",
            "false",
            "--admin-user-name",
            "azureuser",
            "--admin-user-ssh-key",
            "ssh-ed25519 AAAA user@host",
            "--remote-login-port-public-access",
            "Enabled",
            "--subnet",
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/vn/subnets/default",
        ])
        .expect("a spec");
        assert_eq!(
            (
                s.r#type.as_str(),
                s.description.as_str(),
                s.location.as_str()
            ),
            ("amlcompute", "nightly", "westeurope")
        );
        assert_eq!(s.tags.len(), 2);
        assert_eq!(s.enable_node_public_ip, Some(false));
        let identity = s.identity.expect("identity");
        assert_eq!(
            (identity.system_assigned, identity.user_assigned_identities),
            (false, vec!["/ids/a".to_owned()])
        );
        let ssh = s.ssh.expect("ssh");
        assert_eq!(ssh.admin_username, "azureuser");
        assert_eq!(
            ssh.remote_login_port_public_access,
            v1::RemoteLoginPortPublicAccess::Enabled as i32
        );
        let vnet = s.vnet.expect("vnet");
        assert_eq!(
            (
                vnet.resource_group.as_str(),
                vnet.vnet_name.as_str(),
                vnet.subnet_name.as_str()
            ),
            ("rg", "vn", "default")
        );
        let e = create(&["-n", "cpu", "--identity-type", "both"]).expect_err("bad type");
        assert_eq!(e.code, 2);
        let e = create(&["-n", "cpu", "--user-assigned-identities", "/ids/a"]).expect_err("alone");
        assert!(
            e.message.contains("--identity-type user_assigned"),
            "{}",
            e.message
        );
        let off = create(&[
            "-n",
            "cpu",
            "--ssh-public-access-enabled",
            "false",
            "--admin-username",
            "u",
        ])
        .expect("a spec");
        assert_eq!(
            off.ssh.expect("ssh").remote_login_port_public_access,
            v1::RemoteLoginPortPublicAccess::Disabled as i32
        );
    }

    #[test]
    fn create_without_a_name_is_a_usage_error() {
        let failure = create(&["--max-nodes", "2"]).expect_err("refused");
        assert_eq!(failure.code, 2);
        assert_eq!(
            failure.message,
            "name: give -n/--name or a --file with a name"
        );
    }
}
