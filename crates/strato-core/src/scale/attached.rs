//! A pass over an attached cluster. Its machines join with a join token
//! and leave when detached: the loop never creates or removes one for
//! demand or idleness. It removes a detached (leaving) node once its job
//! has ended, keeps unusable ones (a machine whose agent comes back is
//! capacity again), and says why queued jobs wait.
//!
//! Rules (tested below): only leaving nodes without a job are removed; the
//! cluster is steady exactly when nothing is leaving and no job waits.

use super::NodeSnapshot;
use super::allocation::{ClusterAllocation, Issue, IssueCode};
use crate::node::{AllocationState, NodeState};

/// What the pass sees after placement.
#[derive(Debug, Clone, Copy)]
pub struct AttachedInput<'a> {
    pub cluster: &'a str,
    pub max_nodes: u32,
    pub nodes: &'a [NodeSnapshot],
    /// Nodes the queued jobs need (a gang of N counts N).
    pub queued_nodes: u32,
}

/// What the pass does and records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedPass {
    /// Detached nodes whose work is done: their records go.
    pub remove: Vec<String>,
    pub allocation: ClusterAllocation,
}

pub fn settle(input: &AttachedInput<'_>) -> AttachedPass {
    let remove: Vec<String> = input
        .nodes
        .iter()
        .filter(|n| n.state == NodeState::Leaving && !n.has_job)
        .map(|n| n.node_id.clone())
        .collect();
    let joined = u32::try_from(input.nodes.len()).unwrap_or(u32::MAX);
    let count = |state: NodeState| {
        u32::try_from(input.nodes.iter().filter(|n| n.state == state).count()).unwrap_or(u32::MAX)
    };
    let (unusable, leaving) = (count(NodeState::Unusable), count(NodeState::Leaving));
    let live = joined.saturating_sub(unusable).saturating_sub(leaving);
    let mut issues = Vec::new();
    if input.queued_nodes > 0 {
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
                "queued jobs need {} node(s) and no joined machine is free ({joined} joined: {live} usable, {unusable} unusable, {leaving} leaving); {room}",
                input.queued_nodes
            ),
        ));
    }
    let state = if issues.is_empty() && leaving == 0 {
        AllocationState::Steady
    } else {
        AllocationState::Resizing
    };
    let queued_reason = (input.queued_nodes > 0).then(|| match issues.first() {
        Some(i) => format!("waiting for a node: {}", i.message),
        None => "waiting for a node".to_owned(),
    });
    AttachedPass {
        remove,
        allocation: ClusterAllocation {
            state,
            target: live,
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
        }
    }

    #[test]
    fn only_detached_nodes_without_a_job_go_and_idle_machines_stay() {
        let nodes = [
            node("idle", NodeState::Idle, false),
            node("lost", NodeState::Unusable, false),
            node("draining", NodeState::Leaving, true),
            node("drained", NodeState::Leaving, false),
        ];
        let pass = settle(&AttachedInput {
            cluster: "lab",
            max_nodes: 4,
            nodes: &nodes,
            queued_nodes: 0,
        });
        assert_eq!(pass.remove, vec!["drained".to_owned()]);
        assert_eq!(
            pass.allocation.state,
            AllocationState::Resizing,
            "nodes leave"
        );
        assert_eq!(pass.allocation.target, 1);
        assert!(pass.allocation.issues.is_empty());
        assert_eq!(pass.allocation.queued_reason, None);

        let steady = settle(&AttachedInput {
            cluster: "lab",
            max_nodes: 4,
            nodes: &nodes[..2],
            queued_nodes: 0,
        });
        assert!(steady.remove.is_empty());
        assert_eq!(steady.allocation.state, AllocationState::Steady);
    }

    #[test]
    fn waiting_jobs_say_how_to_get_a_machine() {
        let nodes = [node("busy", NodeState::Running, true)];
        let pass = settle(&AttachedInput {
            cluster: "lab",
            max_nodes: 2,
            nodes: &nodes,
            queued_nodes: 1,
        });
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
        let full = settle(&AttachedInput {
            cluster: "lab",
            max_nodes: 1,
            nodes: &nodes,
            queued_nodes: 1,
        });
        assert!(
            full.allocation.issues[0]
                .message
                .contains("raise max_nodes")
        );
    }
}
