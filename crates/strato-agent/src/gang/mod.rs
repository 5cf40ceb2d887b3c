//! Multi-node jobs on the agent: wiring a gang's containers (network, host
//! list, hostfile, the MPI and PyTorch variables, the launcher) and relaying
//! the launcher's remote commands between nodes.
//!
//! **Architecture invariant:** no SSH. `mpirun` in rank 0's container starts
//! its remote daemons with `strato-rsh HOST COMMAND` (`plm_rsh_agent`); the
//! launcher asks its own agent (`POST /strato/exec` on the identity
//! endpoint, with the attempt's secret), the agent asks the control plane
//! over its authenticated session, and the control plane hands the command
//! to the agent of that rank's node, which runs it in the same attempt's
//! container with `docker exec`. Output and the exit code travel back the
//! same way. Nothing but the gang's own containers can be reached: the
//! control plane checks that both nodes hold the same current attempt.

//!
//! Wiring is here; the relay is in `relay`.

use std::path::{Path, PathBuf};

use strato_core::job::{Distribution, MASTER_PORT};
use strato_proto::v1;
use strato_runtime::ContainerSpec;

mod relay;

pub use relay::{
    ExecRelay, FRAME_ERROR, FRAME_EXIT, FRAME_STDERR, FRAME_STDOUT, frame, routes, run_exec,
};

/// Where the launcher and the hostfile appear in a gang's containers.
pub const LAUNCHER_IN_CONTAINER: &str = "/mnt/strato/bin/strato-rsh";
const GANG_DIR_IN_CONTAINER: &str = "/mnt/strato/gang";

/// How the containers of a gang reach each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GangNetwork {
    /// The machine's own network (one node per machine): peers are the
    /// nodes' addresses.
    Host,
    /// A Docker network per cluster on one engine (the local provider):
    /// peers are the containers, named by their node ids.
    Cluster,
}

/// How this agent wires gangs.
#[derive(Debug, Clone)]
pub struct GangConfig {
    pub network: GangNetwork,
    /// The `strato-rsh` binary mounted into every gang container.
    pub launcher: PathBuf,
    /// The control plane whose local provider started this agent: part of
    /// the gang network's name.
    pub control_plane_id: Option<String>,
    /// With `host`: the interface the machine's peers reach it by, found at
    /// start. `None` when it could not be found (MPI and NCCL then choose
    /// for themselves).
    pub interface: Option<MachineInterface>,
}

/// The interface a machine's gang traffic goes over on the host network:
/// its name and its subnet. MPI and NCCL are told to use it, because every
/// Docker engine has a `docker0` bridge with the same address (172.17.0.1):
/// Open MPI would take a peer's bridge for a route to that peer and connect
/// to itself, and the job would hang.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineInterface {
    /// As the kernel names it (`eth0`, `ens5`): NCCL and Gloo take names.
    pub name: String,
    /// In CIDR notation (`10.0.0.0/24`): Open MPI takes subnets.
    pub subnet: String,
}

impl MachineInterface {
    /// The interface that holds `address`, among `(name, address, prefix)`
    /// of the machine's interfaces.
    pub fn holding(
        address: std::net::IpAddr,
        interfaces: impl IntoIterator<Item = (String, std::net::IpAddr, u8)>,
    ) -> Option<Self> {
        interfaces
            .into_iter()
            .find(|(_, a, _)| *a == address)
            .map(|(name, a, prefix)| MachineInterface {
                name,
                subnet: subnet(a, prefix),
            })
    }
}

/// The network `address/prefix` belongs to, in CIDR notation.
pub fn subnet(address: std::net::IpAddr, prefix: u8) -> String {
    use std::net::IpAddr;
    match address {
        IpAddr::V4(a) => {
            let prefix = prefix.min(32);
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            let network = std::net::Ipv4Addr::from(u32::from(a) & mask);
            format!("{network}/{prefix}")
        }
        IpAddr::V6(a) => {
            let prefix = prefix.min(128);
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            let network = std::net::Ipv6Addr::from(u128::from(a) & mask);
            format!("{network}/{prefix}")
        }
    }
}

pub use strato_core::naming::network_name;

/// The host names of a gang, by rank, as its containers reach each other.
pub fn hosts(config: &GangConfig, gang: &[v1::GangMember]) -> Vec<String> {
    gang.iter()
        .map(|m| match config.network {
            GangNetwork::Cluster => m.node_id.clone(),
            GangNetwork::Host if !m.private_ip.is_empty() => m.private_ip.clone(),
            GangNetwork::Host if !m.hostname.is_empty() => m.hostname.clone(),
            GangNetwork::Host => m.node_id.clone(),
        })
        .collect()
}

/// The distribution a job asked for, as the agent runs it.
pub fn distribution(spec: &v1::JobSpec) -> Distribution {
    match v1::Distribution::try_from(spec.distribution) {
        Ok(v1::Distribution::Mpi) => Distribution::Mpi,
        Ok(v1::Distribution::Pytorch) => Distribution::Pytorch,
        Ok(v1::Distribution::None) => Distribution::None,
        _ => Distribution::default_for(spec.node_count, spec.process_count_per_node),
    }
}

/// Turns one rank's container into a member of its gang: network and
/// hostname, the hostfile (written under `dir`), the launcher, the variables
/// of REFERENCE.md, and the command (`mpirun` on rank 0 and a placeholder
/// that waits on the others for `mpi`; the job's command, once per process,
/// otherwise). `exec_endpoint` is where the launcher asks for remote
/// commands.
pub fn wire(
    container: &mut ContainerSpec,
    config: &GangConfig,
    cluster: &str,
    assignment: &v1::JobAssignment,
    spec: &v1::JobSpec,
    dir: &Path,
    exec_endpoint: &str,
) -> std::io::Result<()> {
    let distribution = distribution(spec);
    // Only a job on several nodes may share the machine's network: one
    // node's ranks meet on its own loopback.
    let multi_node = assignment.gang.len() > 1;
    let hosts = match config.network {
        GangNetwork::Host if !multi_node => vec!["localhost".to_owned()],
        _ => hosts(config, &assignment.gang),
    };
    let nodes = u32::try_from(hosts.len()).unwrap_or(u32::MAX).max(1);
    let per_node = spec.process_count_per_node.max(1);
    let rank = assignment.rank;
    let master = hosts.first().cloned().unwrap_or_default();

    std::fs::create_dir_all(dir)?;
    let hostfile: String = hosts
        .iter()
        .map(|h| format!("{h} slots={per_node}\n"))
        .collect();
    std::fs::write(dir.join("hostfile"), hostfile)?;
    container.mounts.push((
        dir.display().to_string(),
        GANG_DIR_IN_CONTAINER.to_owned(),
        true,
    ));
    container.mounts.push((
        config.launcher.display().to_string(),
        LAUNCHER_IN_CONTAINER.to_owned(),
        true,
    ));
    match config.network {
        GangNetwork::Cluster => {
            container.network = Some(network_name(config.control_plane_id.as_deref(), cluster));
            container.hostname = hosts.get(rank as usize).cloned();
        }
        GangNetwork::Host if multi_node => container.network = Some("host".to_owned()),
        GangNetwork::Host => {}
    }

    let hostfile_path = format!("{GANG_DIR_IN_CONTAINER}/hostfile");
    let mut env = vec![
        ("AZ_BATCH_HOST_LIST".to_owned(), hosts.join(",")),
        (
            "AZ_BATCH_MASTER_NODE".to_owned(),
            format!("{master}:{MASTER_PORT}"),
        ),
        ("AZ_BATCHAI_MPI_MASTER_NODE".to_owned(), master.clone()),
        ("STRATO_HOSTFILE".to_owned(), hostfile_path.clone()),
        ("STRATO_NODE_RANK".to_owned(), rank.to_string()),
        ("STRATO_NODE_COUNT".to_owned(), nodes.to_string()),
        ("STRATO_EXEC_ENDPOINT".to_owned(), exec_endpoint.to_owned()),
    ];
    let user_command = std::mem::take(&mut container.command);
    container.command = match distribution {
        Distribution::Mpi => {
            env.extend([
                ("OMPI_ALLOW_RUN_AS_ROOT".to_owned(), "1".to_owned()),
                ("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM".to_owned(), "1".to_owned()),
                (
                    "OMPI_MCA_plm_rsh_agent".to_owned(),
                    LAUNCHER_IN_CONTAINER.to_owned(),
                ),
                // Rank 0 starts every daemon itself: the others have no way
                // to start further ones.
                ("OMPI_MCA_plm_rsh_no_tree_spawn".to_owned(), "1".to_owned()),
            ]);
            match (config.network, &config.interface) {
                // The gang network is each container's only interface.
                (GangNetwork::Cluster, _) => env.extend([
                    ("OMPI_MCA_btl_tcp_if_include".to_owned(), "eth0".to_owned()),
                    ("OMPI_MCA_oob_tcp_if_include".to_owned(), "eth0".to_owned()),
                ]),
                // The machine's interface towards its peers, not a bridge.
                (GangNetwork::Host, Some(interface)) if multi_node => env.extend([
                    (
                        "OMPI_MCA_btl_tcp_if_include".to_owned(),
                        interface.subnet.clone(),
                    ),
                    (
                        "OMPI_MCA_oob_tcp_if_include".to_owned(),
                        interface.subnet.clone(),
                    ),
                ]),
                (GangNetwork::Host, _) => {}
            }
            if rank == 0 {
                let mut c = vec![
                    "mpirun".to_owned(),
                    "--hostfile".to_owned(),
                    hostfile_path,
                    "-np".to_owned(),
                    (nodes * per_node).to_string(),
                ];
                c.extend(user_command);
                c
            } else {
                vec![LAUNCHER_IN_CONTAINER.to_owned(), "--wait".to_owned()]
            }
        }
        Distribution::Pytorch => {
            env.extend([
                ("MASTER_ADDR".to_owned(), master),
                ("MASTER_PORT".to_owned(), MASTER_PORT.to_string()),
                ("WORLD_SIZE".to_owned(), (nodes * per_node).to_string()),
                ("NODE_RANK".to_owned(), rank.to_string()),
            ]);
            per_process(&mut env, user_command, rank, per_node)
        }
        Distribution::None => per_process(&mut env, user_command, rank, per_node),
    };
    if let (GangNetwork::Host, Some(interface), true) =
        (config.network, &config.interface, multi_node)
    {
        // NCCL's and Gloo's bootstrap, for PyTorch (and any job using
        // them); `=` makes NCCL match the name exactly, not as a prefix.
        env.extend([
            (
                "NCCL_SOCKET_IFNAME".to_owned(),
                format!("={}", interface.name),
            ),
            ("GLOO_SOCKET_IFNAME".to_owned(), interface.name.clone()),
        ]);
    }
    // What the job set itself wins over the defaults chosen here for the
    // interface; an exclude list of its own rules out our include list
    // (Open MPI refuses both).
    let job_sets = |key: &str| container.env.iter().any(|(k, _)| k == key);
    env.retain(|(key, _)| match key.as_str() {
        "OMPI_MCA_btl_tcp_if_include" => !job_sets(key) && !job_sets("OMPI_MCA_btl_tcp_if_exclude"),
        "OMPI_MCA_oob_tcp_if_include" => !job_sets(key) && !job_sets("OMPI_MCA_oob_tcp_if_exclude"),
        "NCCL_SOCKET_IFNAME" | "GLOO_SOCKET_IFNAME" => !job_sets(key),
        _ => true,
    });
    container.env.extend(env);
    Ok(())
}

/// One process per node runs the command itself (RANK = NODE_RANK); more
/// are started by the launcher, each with its RANK and LOCAL_RANK.
fn per_process(
    env: &mut Vec<(String, String)>,
    command: Vec<String>,
    rank: u32,
    per_node: u32,
) -> Vec<String> {
    if per_node == 1 {
        env.extend([
            ("RANK".to_owned(), rank.to_string()),
            ("LOCAL_RANK".to_owned(), "0".to_owned()),
        ]);
        return command;
    }
    let mut c = vec![
        LAUNCHER_IN_CONTAINER.to_owned(),
        "--spawn".to_owned(),
        per_node.to_string(),
        "--".to_owned(),
    ];
    c.extend(command);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(rank: u32, node: &str) -> v1::GangMember {
        v1::GangMember {
            rank,
            node_id: node.into(),
            hostname: format!("host-{node}"),
            private_ip: String::new(),
        }
    }

    fn container() -> ContainerSpec {
        ContainerSpec {
            name: "c".into(),
            image: "img".into(),
            command: vec!["python3".into(), "train.py".into()],
            env: Vec::new(),
            cpus: None,
            memory_bytes: None,
            labels: Default::default(),
            mounts: Vec::new(),
            network: None,
            hostname: None,
            pids_limit: None,
            new_privileges: false,
            user: None,
            gpus: Vec::new(),
            entrypoint: None,
            fuse_mounts_at: None,
            working_dir: None,
            attach_output: false,
            prepared_network: false,
        }
    }

    fn env<'a>(c: &'a ContainerSpec, key: &str) -> Option<&'a str> {
        c.env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn wired(distribution: v1::Distribution, rank: u32, per_node: u32) -> ContainerSpec {
        let dir = std::env::temp_dir().join(format!(
            "strato-gang-test-{}-{rank}-{per_node}-{}",
            std::process::id(),
            distribution as i32
        ));
        let config = GangConfig {
            network: GangNetwork::Cluster,
            launcher: PathBuf::from("/opt/strato-rsh"),
            control_plane_id: Some("0123456789abcdef".into()),
            interface: None,
        };
        let assignment = v1::JobAssignment {
            rank,
            gang: vec![member(0, "c-n0"), member(1, "c-n1")],
            ..Default::default()
        };
        let spec = v1::JobSpec {
            node_count: 2,
            process_count_per_node: per_node,
            distribution: distribution as i32,
            ..Default::default()
        };
        let mut c = container();
        wire(
            &mut c,
            &config,
            "c",
            &assignment,
            &spec,
            &dir,
            "http://gw/strato/exec",
        )
        .expect("wired");
        assert_eq!(
            std::fs::read_to_string(dir.join("hostfile")).expect("hostfile"),
            format!("c-n0 slots={per_node}\nc-n1 slots={per_node}\n")
        );
        let _ = std::fs::remove_dir_all(&dir);
        c
    }

    #[test]
    fn mpi_runs_mpirun_on_rank_0_and_waits_elsewhere() {
        let head = wired(v1::Distribution::Mpi, 0, 2);
        assert_eq!(
            head.command,
            [
                "mpirun",
                "--hostfile",
                "/mnt/strato/gang/hostfile",
                "-np",
                "4",
                "python3",
                "train.py"
            ]
        );
        assert_eq!(env(&head, "AZ_BATCH_HOST_LIST"), Some("c-n0,c-n1"));
        assert_eq!(env(&head, "AZ_BATCH_MASTER_NODE"), Some("c-n0:6105"));
        assert_eq!(env(&head, "AZ_BATCHAI_MPI_MASTER_NODE"), Some("c-n0"));
        assert_eq!(
            env(&head, "OMPI_MCA_plm_rsh_agent"),
            Some(LAUNCHER_IN_CONTAINER)
        );
        assert_eq!(head.network.as_deref(), Some("strato-01234567-c"));
        assert_eq!(head.hostname.as_deref(), Some("c-n0"));
        let worker = wired(v1::Distribution::Mpi, 1, 2);
        assert_eq!(worker.command, [LAUNCHER_IN_CONTAINER, "--wait"]);
        assert_eq!(worker.hostname.as_deref(), Some("c-n1"));
    }

    #[test]
    fn pytorch_gets_the_rendezvous_variables() {
        let one = wired(v1::Distribution::Pytorch, 1, 1);
        assert_eq!(one.command, ["python3", "train.py"]);
        assert_eq!(env(&one, "MASTER_ADDR"), Some("c-n0"));
        assert_eq!(env(&one, "MASTER_PORT"), Some("6105"));
        assert_eq!(env(&one, "WORLD_SIZE"), Some("2"));
        assert_eq!(env(&one, "NODE_RANK"), Some("1"));
        assert_eq!(env(&one, "RANK"), Some("1"));
        assert_eq!(env(&one, "LOCAL_RANK"), Some("0"));
        let many = wired(v1::Distribution::Pytorch, 1, 3);
        assert_eq!(env(&many, "WORLD_SIZE"), Some("6"));
        assert_eq!(
            many.command,
            [
                LAUNCHER_IN_CONTAINER,
                "--spawn",
                "3",
                "--",
                "python3",
                "train.py"
            ]
        );
    }

    #[test]
    fn only_a_multi_node_job_gets_the_host_network() {
        let config = GangConfig {
            network: GangNetwork::Host,
            launcher: PathBuf::new(),
            control_plane_id: None,
            interface: None,
        };
        let dir = std::env::temp_dir().join(format!("strato-gang-host-{}", std::process::id()));
        let spec = v1::JobSpec {
            distribution: v1::Distribution::Mpi as i32,
            node_count: 1,
            process_count_per_node: 4,
            command: vec!["python3".into(), "train.py".into()],
            ..Default::default()
        };
        let mut assignment = v1::JobAssignment {
            gang: vec![member(0, "n0")],
            ..Default::default()
        };
        let mut one = container();
        wire(&mut one, &config, "c", &assignment, &spec, &dir, "http://x").expect("wire");
        assert_eq!(one.network, None, "one node keeps its own network");
        assert_eq!(
            std::fs::read_to_string(dir.join("hostfile")).expect("hostfile"),
            "localhost slots=4\n"
        );
        assignment.gang.push(member(1, "n1"));
        let spec = v1::JobSpec {
            node_count: 2,
            ..spec
        };
        let mut two = container();
        wire(&mut two, &config, "c", &assignment, &spec, &dir, "http://x").expect("wire");
        assert_eq!(two.network.as_deref(), Some("host"));
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn host_networking_uses_the_nodes_addresses() {
        let config = GangConfig {
            network: GangNetwork::Host,
            launcher: PathBuf::new(),
            control_plane_id: None,
            interface: None,
        };
        let mut m = member(0, "n0");
        m.private_ip = "10.0.0.4".into();
        assert_eq!(
            hosts(&config, &[m, member(1, "n1")]),
            ["10.0.0.4", "host-n1"]
        );
    }

    #[test]
    fn the_machine_interface_is_the_one_holding_its_address() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().expect("ip");
        let interfaces = [
            ("lo".to_owned(), ip("127.0.0.1"), 8),
            ("docker0".to_owned(), ip("172.17.0.1"), 16),
            ("eth0".to_owned(), ip("10.1.2.3"), 20),
        ];
        assert_eq!(
            MachineInterface::holding(ip("10.1.2.3"), interfaces.clone()),
            Some(MachineInterface {
                name: "eth0".into(),
                subnet: "10.1.0.0/20".into()
            })
        );
        assert_eq!(MachineInterface::holding(ip("10.9.9.9"), interfaces), None);
        assert_eq!(subnet(ip("192.168.7.9"), 32), "192.168.7.9/32");
        assert_eq!(subnet(ip("192.168.7.9"), 0), "0.0.0.0/0");
        assert_eq!(subnet(ip("fd00::1:2"), 64), "fd00::/64");
    }

    /// Every engine's docker0 has the same address: on the host network,
    /// MPI, NCCL and Gloo are told the machine's own interface, unless the
    /// job chose one itself; one node alone is told nothing.
    #[test]
    fn host_networking_names_the_machine_interface_unless_the_job_did() {
        let config = GangConfig {
            network: GangNetwork::Host,
            launcher: PathBuf::new(),
            control_plane_id: None,
            interface: Some(MachineInterface {
                name: "ens5".into(),
                subnet: "10.0.0.0/24".into(),
            }),
        };
        let dir = std::env::temp_dir().join(format!("strato-gang-if-{}", std::process::id()));
        let spec = v1::JobSpec {
            distribution: v1::Distribution::Mpi as i32,
            node_count: 2,
            process_count_per_node: 2,
            command: vec!["python3".into(), "train.py".into()],
            ..Default::default()
        };
        let assignment = v1::JobAssignment {
            gang: vec![member(0, "n0"), member(1, "n1")],
            ..Default::default()
        };
        let mut c = container();
        wire(&mut c, &config, "c", &assignment, &spec, &dir, "http://x").expect("wire");
        assert_eq!(env(&c, "OMPI_MCA_btl_tcp_if_include"), Some("10.0.0.0/24"));
        assert_eq!(env(&c, "OMPI_MCA_oob_tcp_if_include"), Some("10.0.0.0/24"));
        assert_eq!(env(&c, "NCCL_SOCKET_IFNAME"), Some("=ens5"));
        assert_eq!(env(&c, "GLOO_SOCKET_IFNAME"), Some("ens5"));

        let mut own = container();
        own.env
            .push(("OMPI_MCA_btl_tcp_if_include".into(), "ib0".into()));
        wire(&mut own, &config, "c", &assignment, &spec, &dir, "http://x").expect("wire");
        let chosen: Vec<&str> = own
            .env
            .iter()
            .filter(|(k, _)| k == "OMPI_MCA_btl_tcp_if_include")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(chosen, ["ib0"], "the job's own choice, once");

        let mut excluding = container();
        excluding
            .env
            .push(("OMPI_MCA_btl_tcp_if_exclude".into(), "lo,docker0".into()));
        wire(
            &mut excluding,
            &config,
            "c",
            &assignment,
            &spec,
            &dir,
            "http://x",
        )
        .expect("wire");
        assert_eq!(env(&excluding, "OMPI_MCA_btl_tcp_if_include"), None);
        assert_eq!(
            env(&excluding, "OMPI_MCA_oob_tcp_if_include"),
            Some("10.0.0.0/24"),
            "only the list the job chose is left alone"
        );

        let alone = v1::JobAssignment {
            gang: vec![member(0, "n0")],
            ..Default::default()
        };
        let single = v1::JobSpec {
            node_count: 1,
            ..spec
        };
        let mut one = container();
        wire(&mut one, &config, "c", &alone, &single, &dir, "http://x").expect("wire");
        assert!(
            !one.env
                .iter()
                .any(|(k, _)| k == "NCCL_SOCKET_IFNAME" || k == "OMPI_MCA_btl_tcp_if_include"),
            "{:?}",
            one.env
        );
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
