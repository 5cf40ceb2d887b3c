//! A pass over an attached cluster. Its machines join with a join token
//! and leave when detached: the loop never creates or removes one for
//! demand or idleness. It removes a detached (leaving) node once its job
//! has ended, keeps unusable ones (a machine whose agent comes back is
//! capacity again), and says why queued jobs wait. With power commands
//! (as Slurm's power saving), it resumes suspended machines while jobs
//! wait for more than the free ones (or fewer than `min_nodes` are awake)
//! and suspends machines idle for `idle_seconds` above `min_nodes`; a
//! failed command backs off and shows as `power_command_failed`.
//!
//! Rules (tested below): only leaving nodes without a job are removed;
//! only suspended nodes are resumed and only idle ones past their idle
//! time suspended, never below `min_nodes` awake and never while jobs
//! wait; nothing is resumed or suspended while the power commands back
//! off; the cluster is steady exactly when nothing moves and no job waits.

use super::NodeSnapshot;
use super::allocation::{ClusterAllocation, Issue, IssueCode};
use crate::node::{AllocationState, NodeState};

/// What the pass sees after placement.
#[derive(Debug, Clone, Copy)]
pub struct AttachedInput<'a> {
    pub cluster: &'a str,
    pub min_nodes: u32,
    pub max_nodes: u32,
    pub idle_seconds: u64,
    pub nodes: &'a [NodeSnapshot],
    /// Nodes the queued jobs need (a gang of N counts N).
    pub queued_nodes: u32,
    /// Whether the cluster has resume and suspend commands this control
    /// plane can run.
    pub power: bool,
    /// The cluster has power commands, but this control plane runs none
    /// (no `--power-commands-dir`).
    pub power_unavailable: bool,
    /// While a failed power command backs off: until when, and its error.
    pub power_backoff: Option<(i64, &'a str)>,
    pub now: i64,
}

/// What the pass does and records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedPass {
    /// Detached nodes whose work is done: their records go.
    pub remove: Vec<String>,
    /// Suspended machines to wake with the resume command.
    pub resume: Vec<String>,
    /// Idle machines to put to sleep with the suspend command.
    pub suspend: Vec<String>,
    pub allocation: ClusterAllocation,
}

/// The power decisions: (resume, suspend).
fn power(input: &AttachedInput<'_>) -> (Vec<String>, Vec<String>) {
    if !input.power
        || input
            .power_backoff
            .is_some_and(|(until, _)| input.now < until)
    {
        return (Vec::new(), Vec::new());
    }
    let count = |f: &dyn Fn(&NodeSnapshot) -> bool| {
        u32::try_from(input.nodes.iter().filter(|n| f(n)).count()).unwrap_or(u32::MAX)
    };
    let free = count(&|n| n.state == NodeState::Idle && !n.has_job);
    let starting = count(&|n| n.state == NodeState::Preparing && !n.has_job);
    let awake = count(&|n| super::is_live(n.state));
    let wanted = input
        .queued_nodes
        .saturating_sub(free.saturating_add(starting))
        .max(input.min_nodes.saturating_sub(awake));
    let mut suspended: Vec<&NodeSnapshot> = input
        .nodes
        .iter()
        .filter(|n| n.state == NodeState::Suspended)
        .collect();
    // The longest asleep first: one whose resume just failed is back in
    // the queue behind the others.
    suspended.sort_by(|a, b| (a.state_since, &a.node_id).cmp(&(b.state_since, &b.node_id)));
    let resume: Vec<String> = suspended
        .iter()
        .take(usize::try_from(wanted).unwrap_or(usize::MAX))
        .map(|n| n.node_id.clone())
        .collect();
    if input.queued_nodes > 0 || !resume.is_empty() {
        return (resume, Vec::new());
    }
    let idle_ms = i64::try_from(input.idle_seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
    let mut idle: Vec<&NodeSnapshot> = input
        .nodes
        .iter()
        .filter(|n| {
            n.state == NodeState::Idle
                && !n.has_job
                && input.now.saturating_sub(n.idle_since) >= idle_ms
        })
        .collect();
    // The longest idle first.
    idle.sort_by(|a, b| (a.idle_since, &a.node_id).cmp(&(b.idle_since, &b.node_id)));
    let spare = usize::try_from(awake.saturating_sub(input.min_nodes)).unwrap_or(0);
    let suspend = idle
        .into_iter()
        .take(spare)
        .map(|n| n.node_id.clone())
        .collect();
    (Vec::new(), suspend)
}

pub fn settle(input: &AttachedInput<'_>) -> AttachedPass {
    let remove: Vec<String> = input
        .nodes
        .iter()
        .filter(|n| n.state == NodeState::Leaving && !n.has_job)
        .map(|n| n.node_id.clone())
        .collect();
    let joined = u32::try_from(input.nodes.len()).unwrap_or(u32::MAX);
    let count = |f: &dyn Fn(&NodeSnapshot) -> bool| {
        u32::try_from(input.nodes.iter().filter(|n| f(n)).count()).unwrap_or(u32::MAX)
    };
    let live = count(&|n| super::is_live(n.state));
    let unusable = count(&|n| n.state == NodeState::Unusable);
    let leaving = count(&|n| n.state == NodeState::Leaving);
    let suspended = count(&|n| n.state == NodeState::Suspended);
    let starting = count(&|n| n.state == NodeState::Preparing);
    let free = count(&|n| n.state == NodeState::Idle && !n.has_job);
    let (resume, suspend) = power(input);
    let coming = free
        .saturating_add(starting)
        .saturating_add(u32::try_from(resume.len()).unwrap_or(u32::MAX));
    let mut issues = Vec::new();
    if let Some((until, error)) = input.power_backoff.filter(|(until, _)| input.now < *until) {
        issues.push(Issue::new(
            IssueCode::PowerCommandFailed,
            format!(
                "{error}; next try in {}s",
                (until - input.now).max(0) / 1000
            ),
        ));
    }
    if input.power_unavailable {
        issues.push(Issue::new(
            IssueCode::PowerCommandFailed,
            format!(
                "cluster {} has power commands, but this control plane runs without --power-commands-dir: its suspended machines are not resumed, idle ones not suspended",
                input.cluster
            ),
        ));
    }
    if input.queued_nodes > coming {
        let room = if joined >= input.max_nodes {
            format!(
                "it has max_nodes ({}) machines already: raise max_nodes or detach one",
                input.max_nodes
            )
        } else {
            format!(
                "join more with `strato compute join-token create -n {}`",
                input.cluster
            )
        };
        issues.push(Issue::new(
            IssueCode::WaitingForMachines,
            format!(
                "queued jobs need {} node(s) and no joined machine is free ({joined} joined: {live} usable, {unusable} unusable, {leaving} leaving, {suspended} suspended); {room}",
                input.queued_nodes
            ),
        ));
    }
    let moving = leaving > 0 || starting > 0 || !resume.is_empty() || !suspend.is_empty();
    let state = if issues.is_empty() && !moving && input.queued_nodes == 0 {
        AllocationState::Steady
    } else {
        AllocationState::Resizing
    };
    let waking = starting.saturating_add(u32::try_from(resume.len()).unwrap_or(u32::MAX));
    let queued_reason = (input.queued_nodes > 0).then(|| match issues.first() {
        Some(i) => format!("waiting for a node: {}", i.message),
        None if waking > 0 => format!("waiting for a node: resuming {waking} machine(s)"),
        None => "waiting for a node".to_owned(),
    });
    let target = live
        .saturating_add(u32::try_from(resume.len()).unwrap_or(u32::MAX))
        .saturating_sub(u32::try_from(suspend.len()).unwrap_or(u32::MAX));
    AttachedPass {
        remove,
        resume,
        suspend,
        allocation: ClusterAllocation {
            state,
            target,
            issues,
            queued_reason,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, state: NodeState, has_job: bool) -> NodeSnapshot {
        NodeSnapshot {
            node_id: id.into(),
            state,
            has_job,
            idle_since: 0,
            state_since: 0,
        }
    }

    /// No power commands, idle time 60 s, at 100 s.
    fn input<'a>(
        nodes: &'a [NodeSnapshot],
        max_nodes: u32,
        queued_nodes: u32,
    ) -> AttachedInput<'a> {
        AttachedInput {
            cluster: "lab",
            min_nodes: 0,
            max_nodes,
            idle_seconds: 60,
            nodes,
            queued_nodes,
            power: false,
            power_unavailable: false,
            power_backoff: None,
            now: 100_000,
        }
    }

    fn idle_since(id: &str, since: i64) -> NodeSnapshot {
        NodeSnapshot {
            idle_since: since,
            ..node(id, NodeState::Idle, false)
        }
    }

    #[test]
    fn waiting_jobs_resume_suspended_machines_and_idle_ones_sleep_above_min() {
        let nodes = [
            node("busy", NodeState::Running, true),
            node("s1", NodeState::Suspended, false),
            node("s2", NodeState::Suspended, false),
        ];
        let wake = settle(&AttachedInput {
            power: true,
            ..input(&nodes, 4, 1)
        });
        assert_eq!(wake.resume, vec!["s1".to_owned()]);
        assert!(wake.suspend.is_empty() && wake.allocation.issues.is_empty());
        // The longest asleep goes first.
        let mut later = nodes.clone();
        later[1].state_since = 50_000;
        let other = settle(&AttachedInput {
            power: true,
            ..input(&later, 4, 1)
        });
        assert_eq!(other.resume, vec!["s2".to_owned()]);
        assert_eq!(
            wake.allocation.queued_reason.as_deref(),
            Some("waiting for a node: resuming 1 machine(s)")
        );
        assert_eq!(wake.allocation.target, 2);
        // Without power commands the same jobs just wait.
        let no_power = settle(&input(&nodes, 4, 1));
        assert!(no_power.resume.is_empty());
        assert_eq!(
            no_power.allocation.issues[0].code,
            IssueCode::WaitingForMachines
        );
        // A machine already resuming counts: no second one for one job.
        let resuming = [
            node("busy", NodeState::Running, true),
            node("s1", NodeState::Preparing, false),
            node("s2", NodeState::Suspended, false),
        ];
        let pass = settle(&AttachedInput {
            power: true,
            ..input(&resuming, 4, 1)
        });
        assert!(pass.resume.is_empty());
        assert_eq!(pass.allocation.state, AllocationState::Resizing);

        // Idle past the idle time, above min_nodes: suspended, longest idle first.
        let idle = [
            idle_since("a", 30_000),
            idle_since("b", 10_000),
            idle_since("c", 90_000),
        ];
        let sleep = settle(&AttachedInput {
            power: true,
            min_nodes: 1,
            ..input(&idle, 4, 0)
        });
        assert_eq!(sleep.suspend, vec!["b".to_owned(), "a".to_owned()]);
        assert_eq!(sleep.allocation.target, 1);
        let keep = settle(&AttachedInput {
            power: true,
            min_nodes: 3,
            ..input(&idle, 4, 0)
        });
        assert!(keep.suspend.is_empty(), "never below min_nodes");
        // Below min_nodes awake: resumed even without jobs.
        let few = [
            idle_since("a", 90_000),
            node("s", NodeState::Suspended, false),
        ];
        let up = settle(&AttachedInput {
            power: true,
            min_nodes: 2,
            ..input(&few, 4, 0)
        });
        assert_eq!((up.resume, up.suspend.len()), (vec!["s".to_owned()], 0));
    }

    #[test]
    fn a_failed_power_command_backs_off_and_says_why() {
        let nodes = [node("s1", NodeState::Suspended, false)];
        let pass = settle(&AttachedInput {
            power: true,
            power_backoff: Some((130_000, "resume command wake failed (exit 1): no route")),
            ..input(&nodes, 4, 1)
        });
        assert!(pass.resume.is_empty());
        let codes: Vec<_> = pass.allocation.issues.iter().map(|i| i.code).collect();
        assert_eq!(
            codes,
            vec![IssueCode::PowerCommandFailed, IssueCode::WaitingForMachines]
        );
        assert!(
            pass.allocation.issues[0]
                .message
                .ends_with("no route; next try in 30s"),
            "{}",
            pass.allocation.issues[0].message
        );
        // Once the backoff has passed, the command is tried again.
        let later = settle(&AttachedInput {
            power: true,
            power_backoff: Some((130_000, "failed")),
            now: 130_000,
            ..input(&nodes, 4, 1)
        });
        assert_eq!(later.resume, vec!["s1".to_owned()]);
    }

    #[test]
    fn only_detached_nodes_without_a_job_go_and_idle_machines_stay() {
        let nodes = [
            node("idle", NodeState::Idle, false),
            node("lost", NodeState::Unusable, false),
            node("draining", NodeState::Leaving, true),
            node("drained", NodeState::Leaving, false),
        ];
        let pass = settle(&input(&nodes, 4, 0));
        assert_eq!(pass.remove, vec!["drained".to_owned()]);
        assert_eq!(
            pass.allocation.state,
            AllocationState::Resizing,
            "nodes leave"
        );
        assert_eq!(pass.allocation.target, 1);
        assert!(pass.allocation.issues.is_empty());
        assert_eq!(pass.allocation.queued_reason, None);

        let steady = settle(&input(&nodes[..2], 4, 0));
        assert!(steady.remove.is_empty());
        assert_eq!(steady.allocation.state, AllocationState::Steady);
    }

    #[test]
    fn waiting_jobs_say_how_to_get_a_machine() {
        let nodes = [node("busy", NodeState::Running, true)];
        let pass = settle(&input(&nodes, 2, 1));
        assert_eq!(pass.allocation.state, AllocationState::Resizing);
        let issue = &pass.allocation.issues[0];
        assert_eq!(issue.code, IssueCode::WaitingForMachines);
        assert!(
            issue
                .message
                .contains("strato compute join-token create -n lab"),
            "{}",
            issue.message
        );
        assert!(
            pass.allocation
                .queued_reason
                .as_deref()
                .is_some_and(|r| r.starts_with("waiting for a node: queued jobs need 1 node(s)")),
            "{:?}",
            pass.allocation.queued_reason
        );
        let full = settle(&input(&nodes, 1, 1));
        assert!(
            full.allocation.issues[0]
                .message
                .contains("raise max_nodes")
        );
    }
}
