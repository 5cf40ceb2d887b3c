//! `strato compute`: clusters (create, update, show, list, delete), their
//! nodes and identities, the VM sizes and the quota. Talks to
//! `ComputeService`.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use strato_core::spec::VmPriority;
use strato_proto::convert;
use strato_proto::v1::{self, compute_service_client::ComputeServiceClient};
use tonic::transport::Channel;

use crate::Failure;
use crate::client::connect;
use crate::cluster_file;
use crate::view::cluster::ClusterView;
use crate::view::node::NodeView;
use crate::view::size::SizeView;
use crate::view::usage::UsageView;
use crate::view::{Format, print};

#[derive(Debug, Subcommand)]
pub enum ComputeCommand {
    /// Assign or remove a cluster's managed identities.
    #[command(subcommand)]
    Identity(IdentityCommand),
    /// Create a cluster, from flags or an AmlCompute YAML file (flags win).
    Create(Box<CreateArgs>),
    /// Change min nodes, max nodes, idle time, description or tags.
    Update(UpdateArgs),
    /// Show one cluster: its spec, allocation state, node counts and errors.
    Show(NameArg),
    /// List clusters.
    List,
    /// List the nodes of a cluster.
    ListNodes(NameArg),
    /// List the VM sizes clusters may use.
    ListSizes,
    /// Show quota usage and limits of a location.
    ListUsage {
        /// Region; default: the control plane's.
        #[arg(long)]
        location: Option<String>,
    },
    /// Deliver a real Preempt scheduled event to a node of a low-priority
    /// cluster, as an actual eviction would, to test checkpointing.
    SimulateEviction {
        #[command(flatten)]
        name: NameArg,
        /// The node to evict (see `compute list-nodes`).
        #[arg(long = "node")]
        node_id: String,
        /// Seconds between the notice and the eviction; default 30.
        #[arg(long)]
        notice_seconds: Option<u32>,
    },
    /// Delete a cluster.
    Delete {
        #[command(flatten)]
        name: NameArg,
        /// Do not ask for confirmation.
        #[arg(short = 'y', long)]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum IdentityCommand {
    /// Add '[system]' (a system-assigned identity) or user-assigned identity
    /// resource ids. A cluster has one kind, never both.
    Assign {
        #[command(flatten)]
        name: NameArg,
        /// '[system]' or user-assigned identity resource ids.
        #[arg(required = true, num_args = 1..)]
        identities: Vec<String>,
    },
    /// Remove the named user-assigned identities, or every identity when
    /// none is named.
    Remove {
        #[command(flatten)]
        name: NameArg,
        identities: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct NameArg {
    /// Cluster name.
    #[arg(short = 'n', long)]
    name: String,
}

fn parse_priority(s: &str) -> Result<VmPriority, String> {
    VmPriority::parse(s).ok_or_else(|| format!("{s:?}: use dedicated or lowpriority"))
}

fn parse_tag(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?}: a tag is KEY=VALUE"))
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Cluster name: 3-24 letters, digits and '-', starting with a letter.
    #[arg(short = 'n', long)]
    name: Option<String>,
    /// An AmlCompute YAML file (name, size, tier, min_instances,
    /// max_instances, idle_time_before_scale_down, location, ...).
    #[arg(short = 'f', long)]
    file: Option<PathBuf>,
    /// VM size (see `strato compute list-sizes`); default Standard_DS3_v2.
    #[arg(short = 's', long, visible_alias = "vm-size")]
    size: Option<String>,
    /// Fewest nodes, kept even when idle; default 0.
    #[arg(long, visible_alias = "min-instances")]
    min_nodes: Option<u32>,
    /// Most nodes; default 1.
    #[arg(long, visible_alias = "max-instances")]
    max_nodes: Option<u32>,
    /// Seconds a node stays idle before it is removed; default 120.
    #[arg(long, visible_alias = "idle-time-before-scale-down")]
    idle_seconds_before_scaledown: Option<u64>,
    /// dedicated (default) or lowpriority.
    #[arg(long, visible_alias = "tier", value_parser = parse_priority)]
    vm_priority: Option<VmPriority>,
    /// Region; default: the control plane's.
    #[arg(long)]
    location: Option<String>,
    #[arg(long)]
    description: Option<String>,
    /// A tag, KEY=VALUE; repeat for more.
    #[arg(long = "tag", value_parser = parse_tag)]
    tags: Vec<(String, String)>,
    /// '[system]' for a system-assigned identity, or user-assigned identity
    /// resource ids (never both).
    #[arg(long, num_args = 1..)]
    assign_identity: Vec<String>,
    /// Admin user on the nodes.
    #[arg(long)]
    admin_username: Option<String>,
    /// Admin password (12+ characters, 3 of 4 classes). Prefer the variable
    /// to keep it out of the process list.
    #[arg(long, env = "STRATO_ADMIN_PASSWORD", hide_env_values = true)]
    admin_password: Option<String>,
    /// Admin SSH public key.
    #[arg(long)]
    ssh_key_value: Option<String>,
    /// Open the nodes' remote-login port to the public (off by default).
    #[arg(long)]
    ssh_public_access: bool,
    /// Virtual network resource group (with --vnet-name and --subnet-name).
    #[arg(long)]
    vnet_resourcegroup_name: Option<String>,
    #[arg(long)]
    vnet_name: Option<String>,
    #[arg(long)]
    subnet_name: Option<String>,
    /// Turn inter-node communication off (allows up to 1000 nodes, but no
    /// multi-node MPI jobs).
    #[arg(long)]
    no_inter_node_communication: bool,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Cluster name.
    #[arg(short = 'n', long)]
    name: Option<String>,
    /// An AmlCompute YAML file; the fields it sets are applied. Fields fixed
    /// at creation (size, tier, location, ...) must be unchanged.
    #[arg(short = 'f', long)]
    file: Option<PathBuf>,
    #[arg(long, visible_alias = "min-instances")]
    min_nodes: Option<u32>,
    #[arg(long, visible_alias = "max-instances")]
    max_nodes: Option<u32>,
    #[arg(long, visible_alias = "idle-time-before-scale-down")]
    idle_seconds_before_scaledown: Option<u64>,
    #[arg(long)]
    description: Option<String>,
    /// Add or change a tag, KEY=VALUE; repeat for more.
    #[arg(long = "tag", value_parser = parse_tag)]
    tags: Vec<(String, String)>,
    /// Remove a tag by key; repeat for more.
    #[arg(long = "remove-tag")]
    remove_tags: Vec<String>,
}

pub async fn run(endpoint: &str, format: Format, command: ComputeCommand) -> Result<(), Failure> {
    // Commands that need no server check their input before connecting.
    let create_spec = match &command {
        ComputeCommand::Create(args) => Some(create_spec(args)?),
        _ => None,
    };
    let mut client = ComputeServiceClient::new(connect(endpoint).await?);
    match command {
        ComputeCommand::Create(_) => {
            let spec = create_spec.context("create spec")?;
            let response = client
                .create_cluster(v1::CreateClusterRequest { spec: Some(spec) })
                .await?
                .into_inner();
            for w in &response.warnings {
                eprintln!("strato: warning: {w}");
            }
            let cluster = response
                .cluster
                .context("the control plane returned no cluster")?;
            print(format, &ClusterView::from(cluster))?;
        }
        ComputeCommand::Update(args) => {
            let request = update_request(&mut client, args).await?;
            let cluster = client.update_cluster(request).await?.into_inner();
            print(format, &ClusterView::from(cluster))?;
        }
        ComputeCommand::Show(NameArg { name }) => {
            let cluster = client
                .get_cluster(v1::GetClusterRequest { name })
                .await?
                .into_inner();
            print(format, &ClusterView::from(cluster))?;
        }
        ComputeCommand::List => {
            let clusters = client
                .list_clusters(v1::ListClustersRequest {})
                .await?
                .into_inner()
                .clusters;
            print(
                format,
                &clusters
                    .into_iter()
                    .map(ClusterView::from)
                    .collect::<Vec<_>>(),
            )?;
        }
        ComputeCommand::ListNodes(NameArg { name }) => {
            let nodes = client
                .list_nodes(v1::ListNodesRequest { cluster: name })
                .await?
                .into_inner()
                .nodes;
            print(
                format,
                &nodes.into_iter().map(NodeView::from).collect::<Vec<_>>(),
            )?;
        }
        ComputeCommand::ListSizes => {
            let sizes = client
                .list_sizes(v1::ListSizesRequest {})
                .await?
                .into_inner()
                .sizes;
            print(
                format,
                &sizes.into_iter().map(SizeView::from).collect::<Vec<_>>(),
            )?;
        }
        ComputeCommand::ListUsage { location } => {
            let r = client
                .list_usage(v1::ListUsageRequest {
                    location: location.unwrap_or_default(),
                })
                .await?
                .into_inner();
            let views: Vec<UsageView> = r
                .usages
                .into_iter()
                .map(|u| UsageView {
                    location: r.location.clone(),
                    name: u.name,
                    unit: u.unit,
                    current: u.current,
                    limit: u.limit,
                })
                .collect();
            print(format, &views)?;
        }
        ComputeCommand::Identity(IdentityCommand::Assign {
            name: NameArg { name },
            identities,
        }) => {
            let (system, user_assigned_identities) = split_identities(identities);
            let cluster = client
                .assign_identity(v1::AssignIdentityRequest {
                    name,
                    system_assigned: system,
                    user_assigned_identities,
                })
                .await?
                .into_inner();
            print(format, &ClusterView::from(cluster))?;
        }
        ComputeCommand::Identity(IdentityCommand::Remove {
            name: NameArg { name },
            identities,
        }) => {
            let cluster = client
                .remove_identity(v1::RemoveIdentityRequest {
                    name,
                    user_assigned_identities: identities,
                })
                .await?
                .into_inner();
            print(format, &ClusterView::from(cluster))?;
        }
        ComputeCommand::SimulateEviction {
            name: NameArg { name },
            node_id,
            notice_seconds,
        } => {
            let node = client
                .simulate_eviction(v1::SimulateEvictionRequest {
                    name,
                    node_id,
                    notice_seconds,
                })
                .await?
                .into_inner();
            if format == Format::Table {
                println!(
                    "eviction of node {} scheduled in {}s",
                    node.node_id,
                    notice_seconds.unwrap_or(30)
                );
            } else {
                print(format, &vec![NodeView::from(node)])?;
            }
        }
        ComputeCommand::Delete {
            name: NameArg { name },
            yes,
        } => {
            if !yes && std::io::stdin().is_terminal() && !confirm(&name)? {
                return Err(Failure::refused(
                    "delete not confirmed; nothing was deleted",
                ));
            }
            client
                .delete_cluster(v1::DeleteClusterRequest { name: name.clone() })
                .await?;
            if format == Format::Table {
                println!("cluster {name} deleted");
            } else {
                print(
                    format,
                    &serde_json::json!({ "name": name, "deleted": true }),
                )?;
            }
        }
    }
    Ok(())
}

fn confirm(name: &str) -> anyhow::Result<bool> {
    eprint!("delete cluster {name} and its nodes? [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// `--assign-identity` or `identity assign` values: whether '[system]' (any
/// case) is among them, and the user-assigned identity resource ids.
fn split_identities(ids: impl IntoIterator<Item = String>) -> (bool, Vec<String>) {
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
fn create_spec(args: &CreateArgs) -> Result<v1::ClusterSpec, Failure> {
    let mut spec = match &args.file {
        Some(path) => cluster_file::load(path)?.spec,
        None => v1::ClusterSpec::default(),
    };
    overlay(&mut spec.name, &args.name);
    if spec.name.is_empty() {
        return Err(no_name());
    }
    overlay(&mut spec.vm_size, &args.size);
    if let Some(min) = args.min_nodes {
        spec.min_nodes = min;
    }
    if args.max_nodes.is_some() {
        spec.max_nodes = args.max_nodes;
    }
    if args.idle_seconds_before_scaledown.is_some() {
        spec.idle_seconds_before_scaledown = args.idle_seconds_before_scaledown;
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
    if args.admin_username.is_some()
        || args.admin_password.is_some()
        || args.ssh_key_value.is_some()
        || args.ssh_public_access
    {
        let ssh = spec.ssh.get_or_insert_with(Default::default);
        overlay(&mut ssh.admin_username, &args.admin_username);
        overlay(&mut ssh.admin_password, &args.admin_password);
        overlay(&mut ssh.admin_ssh_public_key, &args.ssh_key_value);
        if args.ssh_public_access {
            ssh.remote_login_port_public_access = v1::RemoteLoginPortPublicAccess::Enabled as i32;
        }
    }
    if args.vnet_resourcegroup_name.is_some()
        || args.vnet_name.is_some()
        || args.subnet_name.is_some()
    {
        let vnet = spec.vnet.get_or_insert_with(Default::default);
        overlay(&mut vnet.resource_group, &args.vnet_resourcegroup_name);
        overlay(&mut vnet.vnet_name, &args.vnet_name);
        overlay(&mut vnet.subnet_name, &args.subnet_name);
    }
    if args.no_inter_node_communication {
        spec.inter_node_communication = Some(false);
    }
    Ok(spec)
}

async fn update_request(
    client: &mut ComputeServiceClient<Channel>,
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
    if let Some(min) = args.min_nodes {
        spec.min_nodes = min;
        set("min_nodes", &mut mask);
    }
    if let Some(max) = args.max_nodes {
        spec.max_nodes = Some(max);
        set("max_nodes", &mut mask);
    }
    if let Some(idle) = args.idle_seconds_before_scaledown {
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
    fn create_without_a_name_is_a_usage_error() {
        let failure = create(&["--max-nodes", "2"]).expect_err("refused");
        assert_eq!(failure.code, 2);
        assert_eq!(
            failure.message,
            "name: give -n/--name or a --file with a name"
        );
    }
}
