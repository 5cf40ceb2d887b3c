//! `strato compute`: clusters (create, update, show, list, delete), their
//! nodes and identities, the VM sizes and the quota. Talks to
//! `ComputeService`.

mod request;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use strato_core::spec::VmPriority;
use strato_proto::v1::{self, compute_service_client::ComputeServiceClient};

use self::request::{create_spec, split_identities, update_request};
use crate::Failure;
use crate::client::connect;
use crate::cmd::ArgError;
use crate::config::Settings;
use crate::view::cluster::{ClusterView, JoinTokenView};
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
    List {
        /// Only clusters of this type (amlcompute or attached), as `az ml
        /// compute list --type`.
        #[arg(short = 't', long = "type", value_name = "TYPE")]
        compute_type: Option<String>,
        /// At most this many.
        #[arg(long, value_name = "N")]
        max_results: Option<usize>,
    },
    /// List the nodes of a cluster.
    ListNodes(NameArg),
    /// List the VM sizes clusters may use.
    ListSizes {
        /// Only the sizes a node of can be had in this region under its
        /// quota (its family's dedicated quota or the low-priority quota
        /// holds one node), as `az ml compute list-sizes --location`.
        #[arg(short = 'l', long)]
        location: Option<String>,
    },
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
    /// Log in to a node with the OpenSSH client (`ssh -p PORT USER@ADDRESS`),
    /// for a cluster with an admin user and remote login: a command runs
    /// in the node's running job container, else on the node.
    ConnectSsh {
        #[command(flatten)]
        name: NameArg,
        /// The node (see `compute list-nodes`).
        #[arg(long = "node")]
        node_id: String,
        /// Passed to ssh after the destination, e.g. `-- -i key nvidia-smi`.
        #[arg(last = true)]
        ssh_args: Vec<String>,
    },
    /// Join tokens for the machines of an attached cluster.
    #[command(subcommand)]
    JoinToken(JoinTokenCommand),
    /// Drain a machine out of an attached cluster: it takes no new job,
    /// its job finishes (or, with --requeue, is queued again at once), then
    /// it leaves and its agent is refused from then on.
    Detach {
        #[command(flatten)]
        name: NameArg,
        /// The machine's node (see `compute list-nodes`).
        #[arg(long = "node")]
        node_id: String,
        /// End its job now and queue it again instead of letting it finish.
        #[arg(long)]
        requeue: bool,
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
pub enum JoinTokenCommand {
    /// Make a join token and print it (once: only its hash is kept). On
    /// each machine, put it in a root-only file and start
    /// `strato-agent --control-plane https://HOST:7070 --ca-file ca.crt
    /// --join-token-file FILE`.
    Create {
        #[command(flatten)]
        name: NameArg,
        /// How many machines may join with it (1 to 1000).
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// How long it is valid: 90s, 30m, 12h, 30d or plain seconds (60
        /// seconds to 30 days).
        #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = crate::cmd::parse_duration)]
        expires_in: u64,
    },
    /// List the cluster's join tokens that are still stored: id, uses
    /// left, expiry, who made them (never the tokens themselves).
    List(NameArg),
    /// Revoke a join token at once; machines that joined with it stay.
    Revoke {
        #[command(flatten)]
        name: NameArg,
        /// The token's id (see `join-token list`).
        #[arg(long)]
        id: String,
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

fn parse_priority(s: &str) -> Result<VmPriority, ArgError> {
    VmPriority::parse(s).ok_or_else(|| ArgError::Priority(s.to_owned()))
}

pub(crate) fn parse_tag(s: &str) -> Result<(String, String), ArgError> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| ArgError::Tag(s.to_owned()))
}

/// How many nodes a cluster may have, and when idle ones go: the same
/// flags for create and update.
#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// Fewest nodes, kept even when idle; at create, default 0.
    #[arg(long, visible_alias = "min-instances")]
    min_nodes: Option<u32>,
    /// Most nodes; at create, default 1.
    #[arg(long, visible_alias = "max-instances")]
    max_nodes: Option<u32>,
    /// Seconds a node stays idle before it is removed; at create, default
    /// 120.
    #[arg(long, visible_alias = "idle-time-before-scale-down")]
    idle_seconds_before_scaledown: Option<u64>,
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
    /// amlcompute (default: nodes Strato creates and removes) or attached
    /// (machines a team has, which join with `compute join-token create`).
    #[arg(short = 't', long = "type", value_name = "TYPE")]
    compute_type: Option<String>,
    /// An attached cluster's resume command: an executable in the control
    /// plane's --power-commands-dir that wakes a suspended machine (run
    /// with the node id and host name) while jobs wait. With
    /// --suspend-command.
    #[arg(long, requires = "suspend_command")]
    resume_command: Option<String>,
    /// An attached cluster's suspend command, run for machines idle for
    /// the idle time above min nodes. With --resume-command.
    #[arg(long, requires = "resume_command")]
    suspend_command: Option<String>,
    /// How long one power command may run, in seconds (default 300).
    #[arg(long, requires = "resume_command")]
    power_timeout: Option<u32>,
    /// VM size (see `strato compute list-sizes`); default Standard_DS3_v2.
    /// For an attached cluster, what every machine must at least have.
    #[arg(short = 's', long, visible_alias = "vm-size")]
    size: Option<String>,
    #[command(flatten)]
    scale: ScaleArgs,
    /// dedicated (default) or lowpriority.
    #[arg(long, visible_alias = "tier", value_parser = parse_priority)]
    vm_priority: Option<VmPriority>,
    /// Region; default: the control plane's.
    #[arg(short = 'l', long)]
    location: Option<String>,
    #[arg(short = 'd', long)]
    description: Option<String>,
    /// Tags, KEY=VALUE; several after one --tags (as az takes them) or
    /// --tag repeated.
    #[arg(long = "tag", visible_alias = "tags", num_args = 1.., value_parser = parse_tag)]
    tags: Vec<(String, String)>,
    /// '[system]' for a system-assigned identity, or user-assigned identity
    /// resource ids (never both).
    #[arg(long, num_args = 1..)]
    assign_identity: Vec<String>,
    /// As `az ml compute create`: system_assigned, user_assigned (with
    /// --user-assigned-identities) or none.
    #[arg(long, value_name = "TYPE")]
    identity_type: Option<String>,
    /// User-assigned identity resource ids, with --identity-type
    /// user_assigned.
    #[arg(long, num_args = 1.., value_name = "ID")]
    user_assigned_identities: Vec<String>,
    /// Whether nodes get a public address (Azure ML's
    /// enable_node_public_ip; default true): kept and shown.
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
    enable_node_public_ip: Option<bool>,
    /// Admin user on the nodes.
    #[arg(long, visible_alias = "admin-user-name")]
    admin_username: Option<String>,
    /// Admin password (12+ characters, 3 of 4 classes). Prefer the variable
    /// to keep it out of the process list.
    #[arg(
        long,
        visible_alias = "admin-user-password",
        env = "STRATO_ADMIN_PASSWORD",
        hide_env_values = true
    )]
    admin_password: Option<String>,
    /// Admin SSH public key.
    #[arg(long, visible_alias = "admin-user-ssh-key")]
    ssh_key_value: Option<String>,
    /// Open the nodes' remote-login port to the public (off by default).
    #[arg(long)]
    ssh_public_access: bool,
    /// As `az ml compute create`: true opens the remote-login port.
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
    ssh_public_access_enabled: Option<bool>,
    /// As v1's `az ml computetarget create amlcompute`: Enabled, Disabled
    /// or NotSpecified.
    #[arg(long, value_name = "ACCESS")]
    remote_login_port_public_access: Option<String>,
    /// Virtual network resource group (with --vnet-name and --subnet-name).
    #[arg(long)]
    vnet_resourcegroup_name: Option<String>,
    #[arg(long)]
    vnet_name: Option<String>,
    /// A subnet name (with --vnet-name), or a subnet's resource id.
    #[arg(long, visible_alias = "subnet")]
    subnet_name: Option<String>,
    /// Turn inter-node communication off (allows up to 1000 nodes, but no
    /// multi-node MPI jobs).
    #[arg(long)]
    no_inter_node_communication: bool,
    /// Return once the cluster is stored. Without it, the command waits,
    /// showing progress on stderr, until the cluster's min nodes are up
    /// (at once for min nodes 0), as `az ml compute create` does.
    #[arg(long)]
    no_wait: bool,
    /// v1's project folder (`az ml computetarget create amlcompute -p`):
    /// accepted so v1 scripts run, and not used: Strato finds its control
    /// plane through `strato login`, not a project's config.
    #[arg(short = 'p', long = "path", value_name = "DIR")]
    project_path: Option<PathBuf>,
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
    #[command(flatten)]
    scale: ScaleArgs,
    #[arg(short = 'd', long)]
    description: Option<String>,
    /// Add or change tags, KEY=VALUE; several after one --tags or --tag
    /// repeated.
    #[arg(long = "tag", visible_alias = "tags", num_args = 1.., value_parser = parse_tag)]
    tags: Vec<(String, String)>,
    /// Remove a tag by key; repeat for more.
    #[arg(long = "remove-tag")]
    remove_tags: Vec<String>,
    /// Return once the change is stored, without waiting for new min
    /// nodes to come up.
    #[arg(long)]
    no_wait: bool,
    /// As `az ml compute update --set`: PATH=VALUE for min_instances,
    /// max_instances, idle_time_before_scale_down, description or
    /// tags.KEY; repeat for more.
    #[arg(long = "set", value_name = "PATH=VALUE", value_parser = parse_set)]
    set: Vec<(String, String)>,
}

/// Waits until a cluster of type amlcompute has its min nodes up (idle or
/// running), showing progress on stderr: a bar on a terminal, a line per
/// change otherwise. Stops with the cluster's errors when it has reported
/// some (quota, provider) for `ERRORS_FOR` polls in a row while short of
/// its min nodes: a passing error does not end the wait.
async fn wait_for_min_nodes(
    client: &mut ComputeServiceClient<strato_proto::client::AuthedChannel>,
    mut cluster: v1::Cluster,
) -> Result<v1::Cluster, Failure> {
    let spec = cluster.spec.clone().unwrap_or_default();
    let want = spec.min_nodes;
    if want == 0 || spec.r#type.eq_ignore_ascii_case("attached") {
        return Ok(cluster);
    }
    const ERRORS_FOR: u32 = 5;
    let tty = std::io::stderr().is_terminal();
    let mut last = String::new();
    let mut errors_seen = 0;
    loop {
        let counts = cluster.node_state_counts.unwrap_or_default();
        let ready = counts.idle + counts.running;
        let state = match v1::AllocationState::try_from(cluster.allocation_state) {
            Ok(v1::AllocationState::Resizing) => "resizing",
            _ => "steady",
        };
        let line = format!(
            "{ready} of {want} min nodes up ({state}; {} preparing)",
            counts.preparing
        );
        if line != last {
            if tty {
                let done = (ready.min(want) * 20 / want) as usize;
                eprint!(
                    "\r{}: [{}{}] {line}   ",
                    spec.name,
                    "#".repeat(done),
                    "-".repeat(20 - done)
                );
            } else {
                eprintln!("{}: {line}", spec.name);
            }
            last = line;
        }
        if ready >= want {
            if tty {
                eprintln!();
            }
            return Ok(cluster);
        }
        errors_seen = if cluster.errors.is_empty() {
            0
        } else {
            errors_seen + 1
        };
        if errors_seen >= ERRORS_FOR {
            if tty {
                eprintln!();
            }
            let why: Vec<String> = cluster
                .errors
                .iter()
                .map(|e| format!("{}: {}", e.code, e.message))
                .collect();
            return Err(Failure::refused(format!(
                "cluster {} is stored but cannot bring up its {want} min nodes: {} (see `strato compute show -n {}`)",
                spec.name,
                why.join("; "),
                spec.name
            )));
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        cluster = client
            .get_cluster(v1::GetClusterRequest {
                name: spec.name.clone(),
            })
            .await?
            .into_inner();
    }
}

fn parse_set(s: &str) -> Result<(String, String), ArgError> {
    match s.split_once('=') {
        Some((path, value)) if !path.is_empty() => Ok((path.to_owned(), value.to_owned())),
        _ => Err(ArgError::Set(s.to_owned())),
    }
}

pub async fn run(
    settings: &Settings,
    format: Format,
    command: ComputeCommand,
) -> Result<(), Failure> {
    // Commands that need no server check their input before connecting.
    let create_spec = match &command {
        ComputeCommand::Create(args) => Some(create_spec(args)?),
        _ => None,
    };
    let mut client = ComputeServiceClient::new(connect(settings).await?);
    match command {
        ComputeCommand::Create(args) => {
            if let Some(path) = &args.project_path {
                eprintln!(
                    "strato: note: -p/--path {} (v1's project folder) is not used: the control plane comes from `strato login`",
                    path.display()
                );
            }
            let spec = create_spec.context("create spec")?;
            let response = client
                .create_cluster(v1::CreateClusterRequest { spec: Some(spec) })
                .await?
                .into_inner();
            for w in &response.warnings {
                eprintln!("strato: warning: {w}");
            }
            let mut cluster = response
                .cluster
                .context("the control plane returned no cluster")?;
            if !args.no_wait {
                cluster = wait_for_min_nodes(&mut client, cluster).await?;
            }
            print(format, &ClusterView::from(cluster))?;
        }
        ComputeCommand::Update(args) => {
            let no_wait = args.no_wait;
            let request = update_request(&mut client, args).await?;
            let mut cluster = client.update_cluster(request).await?.into_inner();
            if !no_wait {
                cluster = wait_for_min_nodes(&mut client, cluster).await?;
            }
            print(format, &ClusterView::from(cluster))?;
        }
        ComputeCommand::Show(NameArg { name }) => {
            let cluster = client
                .get_cluster(v1::GetClusterRequest { name })
                .await?
                .into_inner();
            print(format, &ClusterView::from(cluster))?;
        }
        ComputeCommand::List {
            compute_type,
            max_results,
        } => {
            let clusters: Vec<v1::Cluster> = client
                .list_clusters(v1::ListClustersRequest {})
                .await?
                .into_inner()
                .clusters
                .into_iter()
                .filter(|c| {
                    compute_type.as_deref().is_none_or(|t| {
                        c.spec
                            .as_ref()
                            .is_some_and(|s| s.r#type.eq_ignore_ascii_case(t))
                    })
                })
                .take(max_results.unwrap_or(usize::MAX))
                .collect();
            print(
                format,
                &clusters
                    .into_iter()
                    .map(ClusterView::from)
                    .collect::<Vec<_>>(),
            )?;
        }
        ComputeCommand::ListNodes(NameArg { name }) => {
            let (user, nodes) = nodes_with_ssh_user(&mut client, name).await?;
            print(
                format,
                &nodes
                    .into_iter()
                    .map(|n| NodeView::from(n).with_ssh(&user))
                    .collect::<Vec<_>>(),
            )?;
        }
        ComputeCommand::ConnectSsh {
            name: NameArg { name },
            node_id,
            ssh_args,
        } => {
            let (user, nodes) = nodes_with_ssh_user(&mut client, name.clone()).await?;
            let node = nodes
                .into_iter()
                .find(|n| n.node_id == node_id)
                .ok_or_else(|| Failure::refused(format!("cluster {name} has no node {node_id}")))?;
            let view = NodeView::from(node).with_ssh(&user);
            let host_key = strato_core::naming::ssh_key_line(&view.ssh_host_key);
            // How known_hosts names it: the address, with the port if not 22.
            let known_host = if view.port == 22 {
                view.private_ip.clone()
            } else {
                format!("[{}]:{}", view.private_ip, view.port)
            };
            let Some(connection) = view.ssh else {
                return Err(Failure::refused(format!(
                    "node {node_id} serves no SSH: cluster {name} has no admin user with remote login (create it with --admin-username and --ssh-public-access)"
                )));
            };
            let mut words = connection.split_whitespace().skip(1);
            let mut ssh = std::process::Command::new("ssh");
            // The host key the node's agent reported over its
            // authenticated session, pinned: no trust on first use. (ssh
            // takes the first value of an option, so these hold.)
            if let Some(key) = host_key {
                ssh.args([
                    "-o",
                    &format!("KnownHostsCommand=/bin/echo {known_host} {key}"),
                    "-o",
                    "StrictHostKeyChecking=yes",
                    "-o",
                    "UserKnownHostsFile=/dev/null",
                ]);
            }
            ssh.args(words.by_ref()).args(&ssh_args);
            use std::os::unix::process::CommandExt as _;
            let e = ssh.exec();
            return Err(Failure::refused(format!(
                "cannot run ssh ({e}); install the OpenSSH client, or run: {connection}"
            )));
        }
        ComputeCommand::ListSizes { location } => {
            let sizes = client
                .list_sizes(v1::ListSizesRequest {
                    location: location.unwrap_or_default(),
                })
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
        ComputeCommand::JoinToken(JoinTokenCommand::Create {
            name: NameArg { name },
            uses,
            expires_in,
        }) => {
            let made = client
                .create_join_token(v1::CreateJoinTokenRequest {
                    name: name.clone(),
                    uses: Some(uses),
                    expires_in_seconds: Some(expires_in),
                })
                .await?
                .into_inner();
            let expires_at = crate::view::ts(made.expires_at.as_ref());
            if format == Format::Table {
                println!("{}", made.join_token);
                eprintln!(
                    "join token {} for cluster {name}: {} machine(s), until {expires_at}; shown once",
                    made.id, made.uses
                );
            } else {
                print(
                    format,
                    &serde_json::json!({
                        "cluster": name,
                        "id": made.id,
                        "join_token": made.join_token,
                        "uses": made.uses,
                        "expires_at": expires_at,
                    }),
                )?;
            }
        }
        ComputeCommand::JoinToken(JoinTokenCommand::List(NameArg { name })) => {
            let tokens = client
                .list_join_tokens(v1::ListJoinTokensRequest { name })
                .await?
                .into_inner()
                .tokens;
            let views: Vec<JoinTokenView> = tokens.into_iter().map(JoinTokenView::from).collect();
            print(format, &views)?;
        }
        ComputeCommand::JoinToken(JoinTokenCommand::Revoke {
            name: NameArg { name },
            id,
        }) => {
            client
                .revoke_join_token(v1::RevokeJoinTokenRequest {
                    name: name.clone(),
                    id: id.clone(),
                })
                .await?;
            if format == Format::Table {
                println!("join token {id} of cluster {name} revoked");
            } else {
                print(
                    format,
                    &serde_json::json!({ "cluster": name, "id": id, "revoked": true }),
                )?;
            }
        }
        ComputeCommand::Detach {
            name: NameArg { name },
            node_id,
            requeue,
        } => {
            let node = client
                .detach_node(v1::DetachNodeRequest {
                    name,
                    node_id,
                    requeue,
                })
                .await?
                .into_inner();
            if format == Format::Table {
                println!("node {} is leaving: {}", node.node_id, node.reason);
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

/// A cluster's admin user (empty if it serves no SSH) and its nodes.
async fn nodes_with_ssh_user(
    client: &mut ComputeServiceClient<strato_proto::client::AuthedChannel>,
    name: String,
) -> Result<(String, Vec<v1::Node>), Failure> {
    let spec = client
        .get_cluster(v1::GetClusterRequest { name: name.clone() })
        .await?
        .into_inner()
        .spec
        .unwrap_or_default();
    // The rule is strato-core's (`SshSettings::serves_ssh`), on the spec
    // as the control plane stored it.
    let user = strato_proto::convert::cluster_request(&spec)
        .ok()
        .map(|r| r.ssh)
        .filter(strato_core::spec::SshSettings::serves_ssh)
        .map(|ssh| ssh.admin_username)
        .unwrap_or_default();
    let nodes = client
        .list_nodes(v1::ListNodesRequest { cluster: name })
        .await?
        .into_inner()
        .nodes;
    Ok((user, nodes))
}

fn confirm(name: &str) -> anyhow::Result<bool> {
    eprint!("delete cluster {name} and its nodes? [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}
