//! What a reconcile pass records for a cluster: how many nodes it asks the
//! provider for, its allocation state (steady or resizing), its target, the
//! issues that keep it from the target, and what queued jobs wait for.
//!
//! Rules (property-tested below): nothing is added past `max_nodes` or by a
//! control plane whose provider creates no nodes; a cluster is steady only
//! when the decision has nothing to do, nothing was added and there is no
//! issue; issues of one code are not repeated one after the other.

use super::{Blocked, ScaleDecision};
use crate::node::AllocationState;
use crate::quota::{self, QuotaError, QuotaUsage, RegionQuota};
use crate::spec::VmPriority;

/// The kind of an issue, as the API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IssueCode {
    /// The quota admits fewer nodes than the cluster wants.
    QuotaExceeded,
    /// The provider failed (and is backed off).
    ProviderError,
    /// This control plane creates no nodes (`--provider none`).
    NoNodeProvider,
    /// Jobs of an attached cluster wait for machines to join (or to come
    /// back, or to finish their work).
    WaitingForMachines,
    /// An attached cluster's resume or suspend command failed (and is
    /// backed off).
    PowerCommandFailed,
}

impl IssueCode {
    pub fn as_str(self) -> &'static str {
        match self {
            IssueCode::QuotaExceeded => "quota_exceeded",
            IssueCode::ProviderError => "provider_error",
            IssueCode::NoNodeProvider => "no_node_provider",
            IssueCode::WaitingForMachines => "waiting_for_machines",
            IssueCode::PowerCommandFailed => "power_command_failed",
        }
    }
}

/// Why a cluster is not where it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub code: IssueCode,
    pub message: String,
}

impl Issue {
    pub fn new(code: IssueCode, message: impl Into<String>) -> Self {
        Issue {
            code,
            message: message.into(),
        }
    }

    /// The store refused a node for the quota.
    pub fn quota(e: &QuotaError) -> Self {
        Issue::new(IssueCode::QuotaExceeded, e.to_string())
    }
}

/// The quota as it bears on one cluster's growth.
#[derive(Debug, Clone, Copy)]
pub struct ClusterQuota<'a> {
    pub location: &'a str,
    pub limits: &'a RegionQuota,
    /// What the region's other clusters hold.
    pub others: &'a QuotaUsage,
    pub family: &'a str,
    pub priority: VmPriority,
    pub vcpus_per_node: u32,
    pub min_nodes: u32,
    /// The nodes the cluster holds now, whatever their state.
    pub held: u32,
}

impl ClusterQuota<'_> {
    /// How many more nodes the quota admits.
    pub fn nodes_left(&self) -> u32 {
        let admitted = quota::max_nodes_admitted(
            self.limits,
            self.others,
            self.family,
            self.priority,
            self.vcpus_per_node,
        );
        u32::try_from(admitted.saturating_sub(u64::from(self.held))).unwrap_or(u32::MAX)
    }

    /// Why `wanted` more nodes do not fit, in the quota's words.
    pub fn exceeded(&self, wanted: u32) -> String {
        let ask = quota::Allocation {
            family: self.family.to_owned(),
            priority: self.priority,
            vcpus_per_node: self.vcpus_per_node,
            nodes: self.held.saturating_add(wanted).max(self.min_nodes),
        };
        match quota::check(self.location, self.limits, self.others, &ask, false) {
            Err(e) => e.to_string(),
            Ok(()) => format!("quota exceeded: {wanted} more nodes do not fit"),
        }
    }
}

/// How many nodes to ask the provider for: what the decision adds, but
/// none where the provider creates no nodes, and never past `max_nodes`
/// counting the `remaining` nodes (those this pass could not remove too).
pub fn nodes_to_add(
    decision: &ScaleDecision,
    creates_nodes: bool,
    max_nodes: u32,
    remaining: u32,
) -> u32 {
    if creates_nodes {
        decision.add.min(max_nodes.saturating_sub(remaining))
    } else {
        0
    }
}

/// What one pass found and did for a cluster.
#[derive(Debug, Clone, Copy)]
pub struct Pass<'a> {
    pub decision: &'a ScaleDecision,
    pub creates_nodes: bool,
    /// Live nodes when the pass began.
    pub live: u32,
    /// Nodes the provider created in this pass.
    pub added: u32,
    /// Why adding stopped, where it did.
    pub add_failed: Option<&'a Issue>,
    pub quota: &'a ClusterQuota<'a>,
    /// The provider's last failure, while its backoff holds.
    pub provider_error: &'a str,
    pub jobs_queued: bool,
    pub now: i64,
}

/// What the pass records for the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterAllocation {
    pub state: AllocationState,
    pub target: u32,
    pub issues: Vec<Issue>,
    /// What the cluster's queued jobs wait for; `None` when none waits.
    pub queued_reason: Option<String>,
}

/// The allocation state, target and issues after `pass`.
pub fn settle(pass: &Pass<'_>) -> ClusterAllocation {
    let d = pass.decision;
    let mut issues = Vec::new();
    if !pass.creates_nodes && pass.live < d.target {
        issues.push(Issue::new(
            IssueCode::NoNodeProvider,
            format!(
                "the cluster wants {} nodes and has {}, but this control plane runs with --provider none and creates no nodes",
                d.target, pass.live
            ),
        ));
    }
    issues.extend(pass.add_failed.cloned());
    match d.blocked.as_ref().filter(|_| pass.creates_nodes) {
        Some(Blocked::QuotaExceeded { wanted, .. }) => issues.push(Issue::new(
            IssueCode::QuotaExceeded,
            pass.quota.exceeded(*wanted),
        )),
        Some(Blocked::ProviderBackoff { until }) => issues.push(Issue::new(
            IssueCode::ProviderError,
            format!(
                "{}; next try in {}s",
                pass.provider_error,
                (until - pass.now).max(0) / 1000
            ),
        )),
        None => {}
    }
    issues.dedup_by(|a, b| a.code == b.code);
    let state = if d.is_steady(pass.live) && issues.is_empty() && pass.added == 0 {
        AllocationState::Steady
    } else {
        AllocationState::Resizing
    };
    let queued_reason = pass.jobs_queued.then(|| match issues.first() {
        Some(i) => format!("waiting for a node: {}", i.message),
        None => "waiting for a node".to_owned(),
    });
    ClusterAllocation {
        state,
        target: d.target,
        issues,
        queued_reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn region(cores: u64) -> RegionQuota {
        RegionQuota {
            dedicated_cores_total: cores,
            dedicated_cores_per_family: cores,
            ..RegionQuota::default()
        }
    }

    fn cluster_quota<'a>(limits: &'a RegionQuota, others: &'a QuotaUsage) -> ClusterQuota<'a> {
        ClusterQuota {
            location: "westeurope",
            limits,
            others,
            family: "standardDv2Family",
            priority: VmPriority::Dedicated,
            vcpus_per_node: 2,
            min_nodes: 0,
            held: 1,
        }
    }

    fn decision(target: u32, add: u32, blocked: Option<Blocked>) -> ScaleDecision {
        ScaleDecision {
            target,
            add,
            remove: Vec::new(),
            blocked,
        }
    }

    fn pass<'a>(d: &'a ScaleDecision, q: &'a ClusterQuota<'a>) -> Pass<'a> {
        Pass {
            decision: d,
            creates_nodes: true,
            live: 1,
            added: 0,
            add_failed: None,
            quota: q,
            provider_error: "",
            jobs_queued: false,
            now: 10_000,
        }
    }

    #[test]
    fn at_target_with_nothing_to_do_is_steady() {
        let (limits, others) = (region(100), QuotaUsage::default());
        let q = cluster_quota(&limits, &others);
        let d = decision(1, 0, None);
        let a = settle(&pass(&d, &q));
        assert_eq!(
            a,
            ClusterAllocation {
                state: AllocationState::Steady,
                target: 1,
                issues: vec![],
                queued_reason: None
            }
        );
        let added = settle(&Pass {
            added: 1,
            ..pass(&d, &q)
        });
        assert_eq!(added.state, AllocationState::Resizing);
    }

    #[test]
    fn the_quota_says_what_does_not_fit() {
        let (limits, others) = (region(4), QuotaUsage::default());
        let q = cluster_quota(&limits, &others);
        assert_eq!(q.nodes_left(), 1);
        let d = decision(
            4,
            1,
            Some(Blocked::QuotaExceeded {
                wanted: 3,
                admitted: 1,
            }),
        );
        let a = settle(&Pass {
            jobs_queued: true,
            ..pass(&d, &q)
        });
        assert_eq!(a.state, AllocationState::Resizing);
        assert_eq!(a.issues.len(), 1);
        assert_eq!(a.issues[0].code.as_str(), "quota_exceeded");
        assert!(
            a.issues[0].message.starts_with(
                "quota exceeded: the standardDv2Family vCPU quota in region westeurope is 4"
            ),
            "{}",
            a.issues[0].message
        );
        assert_eq!(
            a.queued_reason,
            Some(format!("waiting for a node: {}", a.issues[0].message))
        );
        let roomy = region(100);
        let fits = cluster_quota(&roomy, &others);
        assert_eq!(fits.exceeded(3), "quota exceeded: 3 more nodes do not fit");
    }

    #[test]
    fn a_backed_off_provider_says_its_last_error_and_when() {
        let (limits, others) = (region(100), QuotaUsage::default());
        let q = cluster_quota(&limits, &others);
        let d = decision(2, 0, Some(Blocked::ProviderBackoff { until: 13_999 }));
        let a = settle(&Pass {
            provider_error: "out of machines",
            ..pass(&d, &q)
        });
        assert_eq!(
            a.issues,
            vec![Issue::new(
                IssueCode::ProviderError,
                "out of machines; next try in 3s"
            )]
        );
    }

    #[test]
    fn without_a_provider_nothing_is_added_and_the_cluster_says_so() {
        let (limits, others) = (region(100), QuotaUsage::default());
        let q = cluster_quota(&limits, &others);
        let d = decision(
            3,
            2,
            Some(Blocked::QuotaExceeded {
                wanted: 2,
                admitted: 0,
            }),
        );
        assert_eq!(nodes_to_add(&d, false, 5, 1), 0);
        let a = settle(&Pass {
            creates_nodes: false,
            jobs_queued: true,
            ..pass(&d, &q)
        });
        assert_eq!(
            a.issues,
            vec![Issue::new(
                IssueCode::NoNodeProvider,
                "the cluster wants 3 nodes and has 1, but this control plane runs with --provider none and creates no nodes"
            )]
        );
        assert!(
            a.queued_reason
                .is_some_and(|r| r.starts_with("waiting for a node: the cluster wants 3"))
        );
    }

    #[test]
    fn a_failed_add_is_not_repeated_by_its_block() {
        let (limits, others) = (region(100), QuotaUsage::default());
        let q = cluster_quota(&limits, &others);
        let failed = Issue::new(IssueCode::QuotaExceeded, "refused by the store");
        let d = decision(
            3,
            1,
            Some(Blocked::QuotaExceeded {
                wanted: 2,
                admitted: 1,
            }),
        );
        let a = settle(&Pass {
            add_failed: Some(&failed),
            ..pass(&d, &q)
        });
        assert_eq!(a.issues, vec![failed]);
    }

    #[test]
    fn adding_stops_at_max_nodes() {
        let d = decision(4, 3, None);
        assert_eq!(nodes_to_add(&d, true, 4, 2), 2);
        assert_eq!(nodes_to_add(&d, true, 4, 0), 3);
        assert_eq!(nodes_to_add(&d, true, 2, 3), 0);
    }

    fn arb_blocked() -> impl Strategy<Value = Option<Blocked>> {
        prop_oneof![
            Just(None),
            (0u32..5, 0u32..5)
                .prop_map(|(wanted, admitted)| Some(Blocked::QuotaExceeded { wanted, admitted })),
            (0i64..20_000).prop_map(|until| Some(Blocked::ProviderBackoff { until })),
        ]
    }

    proptest! {
        #[test]
        fn steady_only_with_nothing_to_do_and_no_issue(
            target in 0u32..5,
            add in 0u32..5,
            blocked in arb_blocked(),
            creates_nodes in any::<bool>(),
            live in 0u32..6,
            added in 0u32..3,
            failed in any::<bool>(),
            max_nodes in 0u32..6,
            remaining in 0u32..8,
        ) {
            let (limits, others) = (region(8), QuotaUsage::default());
            let q = cluster_quota(&limits, &others);
            let d = decision(target, add, blocked);
            let failure = Issue::new(IssueCode::ProviderError, "no");
            let a = settle(&Pass {
                creates_nodes,
                live,
                added,
                add_failed: failed.then_some(&failure),
                ..pass(&d, &q)
            });
            let steady = a.state == AllocationState::Steady;
            prop_assert_eq!(
                steady,
                d.is_steady(live) && added == 0 && a.issues.is_empty()
            );
            prop_assert_eq!(a.target, target);
            prop_assert!(a.issues.windows(2).all(|w| w[0].code != w[1].code));
            if !creates_nodes && live < target {
                prop_assert_eq!(a.issues[0].code, IssueCode::NoNodeProvider);
            }
            let n = nodes_to_add(&d, creates_nodes, max_nodes, remaining);
            prop_assert!(n <= add);
            prop_assert!(remaining.saturating_add(n) <= max_nodes.max(remaining));
            if !creates_nodes {
                prop_assert_eq!(n, 0);
            }
        }
    }
}
