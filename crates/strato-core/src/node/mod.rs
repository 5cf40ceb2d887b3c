//! Node and allocation states, as AmlCompute names them; GPU readiness;
//! `health`: when a node becomes unusable.

use serde::{Deserialize, Serialize};

pub mod health;

/// The state of one node of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    Idle,
    Running,
    Preparing,
    Unusable,
    Leaving,
    Preempted,
    /// An attached cluster's machine its suspend command powered down;
    /// its resume command wakes it when jobs wait.
    Suspended,
}

impl NodeState {
    pub const ALL: [NodeState; 7] = [
        NodeState::Idle,
        NodeState::Running,
        NodeState::Preparing,
        NodeState::Unusable,
        NodeState::Leaving,
        NodeState::Preempted,
        NodeState::Suspended,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Idle => "idle",
            NodeState::Running => "running",
            NodeState::Preparing => "preparing",
            NodeState::Unusable => "unusable",
            NodeState::Leaving => "leaving",
            NodeState::Preempted => "preempted",
            NodeState::Suspended => "suspended",
        }
    }

    pub fn parse(s: &str) -> Option<NodeState> {
        NodeState::ALL.into_iter().find(|n| n.as_str() == s)
    }
}

/// How many nodes of a cluster are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeStateCounts {
    pub idle: u32,
    pub running: u32,
    pub preparing: u32,
    pub unusable: u32,
    pub leaving: u32,
    pub preempted: u32,
    pub suspended: u32,
}

impl NodeStateCounts {
    pub fn from_states(states: impl IntoIterator<Item = NodeState>) -> Self {
        let mut c = NodeStateCounts::default();
        for s in states {
            *match s {
                NodeState::Idle => &mut c.idle,
                NodeState::Running => &mut c.running,
                NodeState::Preparing => &mut c.preparing,
                NodeState::Unusable => &mut c.unusable,
                NodeState::Leaving => &mut c.leaving,
                NodeState::Preempted => &mut c.preempted,
                NodeState::Suspended => &mut c.suspended,
            } += 1;
        }
        c
    }

    /// Every node the cluster holds, whatever its state: each one counts
    /// against the quota until it is gone.
    pub fn total(&self) -> u32 {
        self.idle
            + self.running
            + self.preparing
            + self.unusable
            + self.leaving
            + self.preempted
            + self.suspended
    }
}

/// Whether a cluster's node count is where its spec wants it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllocationState {
    Steady,
    Resizing,
}

impl AllocationState {
    pub fn as_str(self) -> &'static str {
        match self {
            AllocationState::Steady => "steady",
            AllocationState::Resizing => "resizing",
        }
    }
}

/// The node count a cluster aims for while no job waits: at least
/// `min_nodes`, and never fewer than the nodes it holds until they are
/// removed.
pub fn target_node_count(min_nodes: u32, max_nodes: u32, current: u32) -> u32 {
    current.clamp(min_nodes, max_nodes.max(min_nodes))
}

/// One GPU as a node's agent found it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GpuInfo {
    pub index: u32,
    pub uuid: String,
    pub model: String,
    pub memory_mib: u64,
    /// Why it cannot be used; `None` when healthy.
    pub problem: Option<String>,
}

/// A node of a GPU size without as many healthy GPUs as the size promises.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{size} needs {needed} GPU(s) ({model}), the agent found {found}{}",
    unhealthy_text(unhealthy)
)]
pub struct GpusMissing {
    /// The VM size, in catalog spelling.
    pub size: String,
    pub needed: u32,
    pub model: String,
    /// How many GPUs the agent found, healthy or not.
    pub found: usize,
    /// `GPU <index> (<uuid>): <problem>` for each unhealthy one.
    pub unhealthy: Vec<String>,
}

fn unhealthy_text(unhealthy: &[String]) -> String {
    if unhealthy.is_empty() {
        String::new()
    } else {
        format!(", unhealthy: {}", unhealthy.join("; "))
    }
}

/// GPU readiness: a node of a size with GPUs is capacity only when it has
/// as many healthy GPUs as the size promises. The error says why the node
/// is unusable.
pub fn gpu_readiness(size: &crate::catalog::VmSize, found: &[GpuInfo]) -> Result<(), GpusMissing> {
    if size.gpus == 0 {
        return Ok(());
    }
    let healthy = found.iter().filter(|g| g.problem.is_none()).count();
    if u32::try_from(healthy).unwrap_or(u32::MAX) >= size.gpus {
        return Ok(());
    }
    Err(GpusMissing {
        size: size.name.to_owned(),
        needed: size.gpus,
        model: size.gpu_model.to_owned(),
        found: found.len(),
        unhealthy: found
            .iter()
            .filter_map(|g| {
                g.problem
                    .as_ref()
                    .map(|p| format!("GPU {} ({}): {p}", g.index, g.uuid))
            })
            .collect(),
    })
}

/// What a machine that joins an attached cluster reports of itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineFacts {
    pub vcpus: u32,
    pub memory_bytes: u64,
    /// Healthy GPUs.
    pub gpus: u32,
}

/// A joining machine smaller than its cluster's size: each thing it lacks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("smaller than {size}: {}", lacks.join(", "))]
pub struct MachineTooSmall {
    pub size: String,
    /// e.g. `2 vCPUs of 4`, `7.5 GiB of memory of 14`.
    pub lacks: Vec<String>,
}

/// How much of a size's memory a machine must report: the kernel keeps
/// some of the installed memory for itself, so a machine sold as 8 GiB
/// reports a little less.
pub const MEMORY_TOLERANCE_PERCENT: u64 = 90;

/// Whether a machine is as large as `size` promises (vCPUs, memory within
/// [`MEMORY_TOLERANCE_PERCENT`], healthy GPUs), so every job sized for the
/// cluster fits on it.
pub fn machine_fits(
    size: &crate::catalog::VmSize,
    machine: MachineFacts,
) -> Result<(), MachineTooSmall> {
    let mut lacks = Vec::new();
    if machine.vcpus < size.vcpus {
        lacks.push(format!("{} vCPUs of {}", machine.vcpus, size.vcpus));
    }
    let size_bytes = u64::from(size.memory_gib) << 30;
    if machine.memory_bytes < size_bytes / 100 * MEMORY_TOLERANCE_PERCENT {
        lacks.push(format!(
            "{:.1} GiB of memory of {}",
            machine.memory_bytes as f64 / f64::from(1u32 << 30),
            size.memory_gib
        ));
    }
    if machine.gpus < size.gpus {
        lacks.push(format!("{} GPUs of {}", machine.gpus, size.gpus));
    }
    if lacks.is_empty() {
        Ok(())
    } else {
        Err(MachineTooSmall {
            size: size.name.to_owned(),
            lacks,
        })
    }
}

/// Why a node of a GPU size whose GPUs NVML sees cannot run its jobs.
pub const NO_GPU_RUNTIME: &str = "its GPUs are seen by NVML, but Docker has no NVIDIA container \
     runtime to hand them to containers: install nvidia-container-toolkit, run `nvidia-ctk runtime \
     configure --runtime=docker` and restart Docker";

/// Why an enrolling node is no capacity, if it is not: a draining
/// (leaving) node is not checked (it only finishes its job); a machine of
/// an attached cluster (`attached`) must be as large as the size; any node
/// of a GPU size needs its GPUs, healthy (`gpus`: what its agent found),
/// and an engine that hands them to containers (`gpu_runtime`).
pub fn readiness(
    size: &crate::catalog::VmSize,
    state: NodeState,
    attached: bool,
    vcpus: u32,
    memory_bytes: u64,
    gpus: &[GpuInfo],
    gpu_runtime: bool,
) -> Result<(), String> {
    if state == NodeState::Leaving {
        return Ok(());
    }
    if attached {
        let healthy = gpus.iter().filter(|g| g.problem.is_none()).count();
        let machine = MachineFacts {
            vcpus,
            memory_bytes,
            gpus: u32::try_from(healthy).unwrap_or(u32::MAX),
        };
        machine_fits(size, machine).map_err(|e| e.to_string())?;
    }
    gpu_readiness(size, gpus).map_err(|e| e.to_string())?;
    if size.gpus > 0 && !gpu_runtime {
        return Err(NO_GPU_RUNTIME.to_owned());
    }
    Ok(())
}

/// What a provider holds that the store does not know: nodes and clusters
/// left behind by a control plane that stopped before they were taken down.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Orphans {
    pub nodes: std::collections::BTreeSet<String>,
    pub clusters: std::collections::BTreeSet<String>,
}

/// The provider's holdings (`held_nodes`, `held_clusters`) that are not
/// among the store's `known_nodes` and `known_clusters`. A known cluster's
/// resources are never orphans, even while it has no nodes.
pub fn orphans<'a>(
    known_clusters: &std::collections::BTreeSet<String>,
    known_nodes: &std::collections::BTreeSet<String>,
    held_nodes: impl IntoIterator<Item = &'a str>,
    held_clusters: impl IntoIterator<Item = &'a str>,
) -> Orphans {
    Orphans {
        nodes: held_nodes
            .into_iter()
            .filter(|n| !known_nodes.contains(*n))
            .map(str::to_owned)
            .collect(),
        clusters: held_clusters
            .into_iter()
            .filter(|c| !known_clusters.contains(*c))
            .map(str::to_owned)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_checks_machines_of_attached_clusters_and_gpus_not_draining_nodes() {
        let size = crate::catalog::lookup("Standard_DS3_v2").expect("size");
        let small = |state, attached| readiness(size, state, attached, 2, 32 << 30, &[], false);
        let e = small(NodeState::Idle, true).expect_err("too small");
        assert!(
            e.starts_with("smaller than Standard_DS3_v2: 2 vCPUs of 4"),
            "{e}"
        );
        assert_eq!(
            small(NodeState::Idle, false),
            Ok(()),
            "a created node is its size"
        );
        assert_eq!(
            small(NodeState::Leaving, true),
            Ok(()),
            "a draining node only finishes"
        );
        let gpu = crate::catalog::lookup("Standard_NC6s_v3").expect("size");
        assert!(readiness(gpu, NodeState::Idle, false, 6, 112 << 30, &[], true).is_err());
    }

    /// GPUs NVML sees are no use without the engine's NVIDIA runtime: a
    /// node of a GPU size is unusable, saying what to install; a CPU size
    /// does not care.
    #[test]
    fn a_gpu_node_needs_the_nvidia_container_runtime() {
        let gpu = crate::catalog::lookup("Standard_NC6s_v3").expect("size");
        let found = [GpuInfo {
            index: 0,
            uuid: "GPU-1".into(),
            model: "Tesla V100-PCIE-16GB".into(),
            memory_mib: 16_384,
            problem: None,
        }];
        let ready = |runtime| readiness(gpu, NodeState::Idle, false, 6, 112 << 30, &found, runtime);
        assert_eq!(ready(true), Ok(()));
        let e = ready(false).expect_err("no runtime");
        assert!(
            e.contains("no NVIDIA container runtime") && e.contains("nvidia-container-toolkit"),
            "{e}"
        );
        let cpu = crate::catalog::lookup("Standard_D2_v2").expect("size");
        assert_eq!(
            readiness(cpu, NodeState::Idle, false, 2, 8 << 30, &found, false),
            Ok(())
        );
    }

    #[test]
    fn a_joining_machine_must_be_as_large_as_its_size() {
        let size = crate::catalog::lookup("Standard_D2_v2").expect("size");
        let gib = 1u64 << 30;
        let fits = MachineFacts {
            vcpus: 2,
            memory_bytes: 7 * gib - gib / 4,
            gpus: 0,
        };
        assert_eq!(
            machine_fits(size, fits),
            Ok(()),
            "a little under is the kernel's share"
        );
        let small = MachineFacts {
            vcpus: 1,
            memory_bytes: 2 * gib,
            gpus: 0,
        };
        let e = machine_fits(size, small).expect_err("too small");
        assert_eq!(
            e.to_string(),
            "smaller than Standard_D2_v2: 1 vCPUs of 2, 2.0 GiB of memory of 7"
        );
        let gpu = crate::catalog::lookup("Standard_NC6s_v3").expect("gpu size");
        let no_gpu = MachineFacts {
            vcpus: 64,
            memory_bytes: 512 * gib,
            gpus: 0,
        };
        let e = machine_fits(gpu, no_gpu).expect_err("no GPU");
        assert_eq!(e.lacks, vec!["0 GPUs of 1".to_owned()]);
    }

    #[test]
    fn orphans_are_what_the_store_does_not_know() {
        let set = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
        let got = orphans(
            &set(&["a", "b"]),
            &set(&["a-1", "b-1"]),
            ["a-1", "a-2", "gone-1"],
            ["a", "gone"],
        );
        assert_eq!(got.nodes, set(&["a-2", "gone-1"]));
        assert_eq!(got.clusters, set(&["gone"]));
        let none = orphans(&set(&["a"]), &set(&["a-1"]), ["a-1"], ["a"]);
        assert_eq!(none, Orphans::default());
    }

    #[test]
    fn a_gpu_node_needs_its_healthy_gpus() {
        let size = crate::catalog::lookup("Standard_NC6s_v3").expect("size");
        let gpu = |problem: Option<&str>| GpuInfo {
            index: 0,
            uuid: "GPU-1".into(),
            model: "Tesla V100".into(),
            memory_mib: 16384,
            problem: problem.map(str::to_owned),
        };
        assert!(gpu_readiness(size, &[gpu(None)]).is_ok());
        let missing = gpu_readiness(size, &[]).expect_err("no GPU").to_string();
        assert!(
            missing.contains("needs 1 GPU(s)") && missing.contains("found 0"),
            "{missing}"
        );
        let sick = gpu_readiness(size, &[gpu(Some("memory pages pending retirement"))])
            .expect_err("unhealthy")
            .to_string();
        assert!(
            sick.contains("found 1")
                && sick.contains("GPU 0 (GPU-1): memory pages pending retirement"),
            "{sick}"
        );
        let cpu = crate::catalog::lookup("Standard_D2_v2").expect("size");
        assert!(gpu_readiness(cpu, &[]).is_ok());
    }

    #[test]
    fn counts_every_state() {
        let c = NodeStateCounts::from_states(NodeState::ALL.into_iter().chain([NodeState::Idle]));
        assert_eq!((c.idle, c.preempted, c.suspended, c.total()), (2, 1, 1, 8));
        for s in NodeState::ALL {
            assert_eq!(NodeState::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn target_stays_between_min_and_max() {
        assert_eq!(target_node_count(1, 4, 0), 1);
        assert_eq!(target_node_count(0, 4, 3), 3);
        assert_eq!(target_node_count(0, 2, 5), 2);
    }
}
