//! The scale decision: how many nodes a cluster should add, which it should
//! remove, and why; and placement, which idle node takes which queued job.
//!
//! Rules (property-tested below):
//! - never above `max_nodes`, counting nodes still leaving;
//! - never below `min_nodes` by removing nodes;
//! - only idle nodes without a job, idle for at least the idle time, are
//!   removed for being idle; a node preparing or running a job never is;
//! - nodes already starting count as capacity, so a burst does not scale twice;
//! - what does not fit the quota is not added, and the decision says so;
//! - unusable nodes are removed (and so replaced when still needed).
//!
//! Gangs (multi-node jobs), the rule: a job takes all of its N nodes in one
//! step or none, first come first served, and a queued job that does not fit
//! the ready nodes holds back every job behind it (no backfill). Nothing is
//! ever reserved partially, so two gangs can never each hold part of what
//! the other needs (no deadlock), and a gang is never starved by smaller jobs
//! that keep taking the nodes it waits for. The autoscaler counts a queued
//! gang as N nodes of demand.
//!
//! `allocation`: what a pass records once the decision is carried out;
//! `attached`: the pass of an attached cluster, whose machines join and
//! leave by themselves.

pub mod allocation;
pub mod attached;

use crate::node::NodeState;

/// One node as the decision sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSnapshot {
    pub node_id: String,
    pub state: NodeState,
    /// The node holds a job (preparing or running it).
    pub has_job: bool,
    /// When the node last became idle (ms since the epoch).
    pub idle_since: i64,
    /// When it entered its state.
    pub state_since: i64,
}

/// Everything the decision depends on.
#[derive(Debug, Clone)]
pub struct ScaleInput<'a> {
    pub min_nodes: u32,
    pub max_nodes: u32,
    pub idle_seconds: u64,
    pub nodes: &'a [NodeSnapshot],
    /// Nodes the queued jobs need (a gang of N counts N).
    pub queued_nodes: u32,
    /// How many more nodes the quota admits for this cluster.
    pub quota_nodes_left: u32,
    /// The provider failed recently: add nothing before this time (ms).
    pub provider_backoff_until: Option<i64>,
    pub now: i64,
}

/// Why a node is removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoveReason {
    /// Idle for at least the cluster's idle time.
    Idle { idle_seconds: u64 },
    /// Unusable or preempted: it holds no capacity and is replaced.
    Unusable,
}

impl RemoveReason {
    /// Why, in words, for a node whose stored reason is `node_reason`.
    pub fn describe(&self, node_reason: &str) -> String {
        match self {
            RemoveReason::Idle { idle_seconds } => format!("idle for at least {idle_seconds}s"),
            RemoveReason::Unusable => format!("unusable: {node_reason}"),
        }
    }

    /// The reason as a metric label.
    pub fn label(&self) -> &'static str {
        match self {
            RemoveReason::Idle { .. } => "idle",
            RemoveReason::Unusable => "unusable",
        }
    }
}

/// Why the cluster cannot reach its target now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocked {
    /// The quota admits only `admitted` of the `wanted` nodes.
    QuotaExceeded { wanted: u32, admitted: u32 },
    /// The provider failed; adding waits until `until` (ms).
    ProviderBackoff { until: i64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleDecision {
    /// The node count the cluster aims for.
    pub target: u32,
    /// Nodes to create now.
    pub add: u32,
    pub remove: Vec<(String, RemoveReason)>,
    pub blocked: Option<Blocked>,
}

impl ScaleDecision {
    /// Nothing to do and nothing in the way.
    pub fn is_steady(&self, live: u32) -> bool {
        self.add == 0 && self.remove.is_empty() && self.blocked.is_none() && live == self.target
    }
}

/// Nodes that hold capacity: idle, preparing (starting or preparing a job)
/// and running.
pub fn is_live(state: NodeState) -> bool {
    matches!(
        state,
        NodeState::Idle | NodeState::Preparing | NodeState::Running
    )
}

/// Whether a node counts as busy in the demand: live and holding a job.
pub fn is_busy(state: NodeState, has_job: bool) -> bool {
    is_live(state) && has_job
}

/// Whether a node can take a queued job now: idle, without a job, and its
/// agent connected (a placement must reach it).
pub fn takes_work(state: NodeState, has_job: bool, connected: bool) -> bool {
    state == NodeState::Idle && !has_job && connected
}

pub fn decide(input: &ScaleInput<'_>) -> ScaleDecision {
    let live: Vec<&NodeSnapshot> = input.nodes.iter().filter(|n| is_live(n.state)).collect();
    let live_count = count(live.len());
    let leaving = count(
        input
            .nodes
            .iter()
            .filter(|n| n.state == NodeState::Leaving)
            .count(),
    );
    let mut remove: Vec<(String, RemoveReason)> = input
        .nodes
        .iter()
        .filter(|n| matches!(n.state, NodeState::Unusable | NodeState::Preempted))
        .map(|n| (n.node_id.clone(), RemoveReason::Unusable))
        .collect();

    let busy = count(
        input
            .nodes
            .iter()
            .filter(|n| is_busy(n.state, n.has_job))
            .count(),
    );
    let demand = busy.saturating_add(input.queued_nodes);
    let max = input.max_nodes.max(input.min_nodes);
    let target = demand.clamp(input.min_nodes, max);

    let mut add = 0;
    let mut blocked = None;
    if live_count < target {
        let room = max.saturating_sub(live_count + leaving);
        let wanted = (target - live_count).min(room);
        if let Some(until) = input.provider_backoff_until.filter(|u| *u > input.now) {
            blocked = (wanted > 0).then_some(Blocked::ProviderBackoff { until });
        } else {
            add = wanted.min(input.quota_nodes_left);
            if add < wanted {
                blocked = Some(Blocked::QuotaExceeded {
                    wanted,
                    admitted: add,
                });
            }
        }
    } else if live_count > target {
        let idle_ms = i64::try_from(input.idle_seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
        let mut idle: Vec<&&NodeSnapshot> = live
            .iter()
            .filter(|n| {
                n.state == NodeState::Idle
                    && !n.has_job
                    && input.now.saturating_sub(n.idle_since) >= idle_ms
            })
            .collect();
        idle.sort_by(|a, b| (a.idle_since, &a.node_id).cmp(&(b.idle_since, &b.node_id)));
        let surplus = usize::try_from(live_count - target).unwrap_or(usize::MAX);
        remove.extend(idle.into_iter().take(surplus).map(|n| {
            (
                n.node_id.clone(),
                RemoveReason::Idle {
                    idle_seconds: input.idle_seconds,
                },
            )
        }));
    }
    ScaleDecision {
        target,
        add,
        remove,
        blocked,
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// How many of a cluster's oldest queued jobs a pass reads, at most `most`,
/// for a cluster with `busy` busy nodes (`is_busy`) and `ready` nodes that
/// can take one (`takes_work`).
///
/// A managed cluster's decision counts demand (`busy` plus the queued
/// jobs' nodes) only up to `max_nodes`, and each job takes one node or
/// more: its oldest `max_nodes - busy` jobs decide as the whole queue does,
/// before and after the pass places some. Placement takes the oldest jobs
/// first and at most one a ready node, so `ready` jobs are all it can place
/// (more than `max_nodes - busy` only when `max_nodes` was lowered). At
/// least one is read, to know whether any waits. So a full cluster with a
/// long queue reads about as many as it has nodes free, not `max_nodes`.
/// An attached cluster's issue says how many nodes the whole queue needs:
/// `most`.
pub fn queued_to_read(attached: bool, max_nodes: u32, busy: u32, ready: u32, most: u32) -> u32 {
    if attached {
        most
    } else {
        max_nodes
            .saturating_sub(busy)
            .max(ready)
            .clamp(1, most.max(1))
    }
}

/// After placement, how many of a managed cluster's oldest queued jobs to
/// read again, if any: when its first read was full (`more`) and nodes
/// freed meanwhile (`busy` now) leave room for more than the `kept` jobs
/// it holds, the decision needs them (`queued_to_read`'s rule).
pub fn queued_to_read_again(
    more: bool,
    max_nodes: u32,
    busy: u32,
    kept: usize,
    most: u32,
) -> Option<u32> {
    let read = queued_to_read(false, max_nodes, busy, 0, most);
    (more && usize::try_from(read).unwrap_or(usize::MAX) > kept).then_some(read)
}

/// A cluster's queued reason as a pass last gave it to its queued jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReasonGiven {
    pub reason: String,
    /// When every queued job was last given it (ms).
    pub all_at: i64,
    /// When the last pass gave it (ms).
    pub at: i64,
}

/// Which of a cluster's queued jobs a pass gives the queued reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasonSweep {
    /// Every queued job.
    All,
    /// Only those queued (submitted or queued again) at or after this time
    /// (ms): the others have the reason already.
    Since(i64),
}

/// Every queued job is given the reason again at least this often (ms),
/// for jobs stamped by a replica whose clock is behind this one's.
pub const REASON_SWEEP_ALL_MS: i64 = 60_000;
/// How far before the last pass a later pass looks for newly queued jobs
/// (ms): a job is stamped with the time its submit was taken, before the
/// write waits for a connection and its turn (each up to 30 s, rarely
/// more than a second); clocks of replicas a little apart. A job stamped
/// earlier still gets the reason by the sweep of all once a minute.
pub const REASON_SWEEP_MARGIN_MS: i64 = 40_000;

/// Which queued jobs a pass gives `reason`, after `last`: all of them when
/// the reason changed, when none was given yet (a new leader), once a
/// minute or when the clock went back; else only those queued since
/// shortly before the last pass.
/// Looking at every queued job every pass grows with the queue (100,000
/// jobs read to change none).
pub fn reason_sweep(last: Option<&ReasonGiven>, reason: &str, now: i64) -> ReasonSweep {
    match last {
        Some(l)
            if l.reason == reason
                && now >= l.at
                && now.saturating_sub(l.all_at) < REASON_SWEEP_ALL_MS =>
        {
            ReasonSweep::Since(l.at.saturating_sub(REASON_SWEEP_MARGIN_MS))
        }
        _ => ReasonSweep::All,
    }
}

/// Which queued job goes to which ready nodes: first come, first served,
/// one job per node, a gang all at once or not at all, and no job placed
/// before an earlier one that does not fit (see the module's rule).
/// `queued` is (job, node count) in submission order; `ready` are idle nodes
/// with a live session and no job.
pub fn place<'a>(queued: &'a [(String, u32)], ready: &'a [String]) -> Vec<(&'a str, Vec<&'a str>)> {
    let mut free = ready.iter().map(String::as_str);
    let mut left = ready.len();
    let mut placed = Vec::new();
    for (job, nodes) in queued {
        let n = usize::try_from((*nodes).max(1)).unwrap_or(usize::MAX);
        if n > left {
            break;
        }
        left -= n;
        placed.push((job.as_str(), free.by_ref().take(n).collect()));
    }
    placed
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_pass_reads_what_it_could_place_or_the_whole_bound_when_attached() {
        assert_eq!(queued_to_read(false, 1_000, 0, 0, 5_000), 1_000);
        assert_eq!(
            queued_to_read(false, 1_000, 980, 20, 5_000),
            20,
            "a full cluster reads as many as it has nodes free"
        );
        assert_eq!(
            queued_to_read(false, 2, 0, 10, 5_000),
            10,
            "max_nodes lowered below the ready nodes: as many as they take"
        );
        assert_eq!(
            queued_to_read(false, 0, 0, 0, 5_000),
            1,
            "one, to know any waits"
        );
        assert_eq!(
            queued_to_read(false, 10, 10, 0, 5_000),
            1,
            "one, to know any waits"
        );
        assert_eq!(queued_to_read(false, 9_000, 0, 0, 5_000), 5_000);
        assert_eq!(queued_to_read(true, 10, 3, 2, 5_000), 5_000);
    }

    #[test]
    fn the_queue_is_read_again_only_when_a_full_read_left_room_unread() {
        // 10 nodes, 6 busy now: room for 4, and the full read kept 2.
        assert_eq!(queued_to_read_again(true, 10, 6, 2, 5_000), Some(4));
        assert_eq!(
            queued_to_read_again(true, 10, 6, 4, 5_000),
            None,
            "kept enough"
        );
        assert_eq!(
            queued_to_read_again(false, 10, 6, 2, 5_000),
            None,
            "the read held the whole queue"
        );
    }

    #[test]
    fn a_pass_gives_the_reason_to_every_queued_job_only_when_it_changed_or_once_a_minute() {
        let given = |reason: &str, all_at, at| ReasonGiven {
            reason: reason.into(),
            all_at,
            at,
        };
        assert_eq!(reason_sweep(None, "waiting", 1_000), ReasonSweep::All);
        let last = given("waiting", 1_000, 50_000);
        assert_eq!(
            reason_sweep(Some(&last), "waiting", 51_000),
            ReasonSweep::Since(50_000 - REASON_SWEEP_MARGIN_MS)
        );
        assert_eq!(
            reason_sweep(Some(&last), "waiting", 49_000),
            ReasonSweep::All,
            "the clock went back"
        );
        assert_eq!(
            reason_sweep(Some(&last), "waiting: quota", 51_000),
            ReasonSweep::All
        );
        assert_eq!(
            reason_sweep(Some(&last), "waiting", 1_000 + REASON_SWEEP_ALL_MS),
            ReasonSweep::All
        );
        assert_eq!(
            reason_sweep(Some(&last), "waiting", REASON_SWEEP_ALL_MS),
            ReasonSweep::Since(50_000 - REASON_SWEEP_MARGIN_MS)
        );
    }

    fn node(id: &str, state: NodeState, has_job: bool, idle_since: i64) -> NodeSnapshot {
        NodeSnapshot {
            node_id: id.into(),
            state,
            has_job,
            idle_since,
            state_since: idle_since,
        }
    }

    fn input(nodes: &[NodeSnapshot], queued: u32) -> ScaleInput<'_> {
        ScaleInput {
            min_nodes: 0,
            max_nodes: 2,
            idle_seconds: 10,
            nodes,
            queued_nodes: queued,
            quota_nodes_left: 100,
            provider_backoff_until: None,
            now: 100_000,
        }
    }

    #[test]
    fn remove_reasons_in_words_and_labels() {
        let idle = RemoveReason::Idle { idle_seconds: 120 };
        assert_eq!(idle.describe("ignored"), "idle for at least 120s");
        assert_eq!(idle.label(), "idle");
        let unusable = RemoveReason::Unusable;
        assert_eq!(
            unusable.describe("no heartbeat for 20s"),
            "unusable: no heartbeat for 20s"
        );
        assert_eq!(unusable.label(), "unusable");
    }

    #[test]
    fn only_an_idle_connected_node_without_a_job_takes_work() {
        assert!(takes_work(NodeState::Idle, false, true));
        assert!(!takes_work(NodeState::Idle, true, true));
        assert!(!takes_work(NodeState::Idle, false, false));
        for s in NodeState::ALL.into_iter().filter(|s| *s != NodeState::Idle) {
            assert!(!takes_work(s, false, true), "{s:?}");
        }
    }

    #[test]
    fn three_jobs_on_max_two_add_two_not_three() {
        let d = decide(&input(&[], 3));
        assert_eq!((d.target, d.add), (2, 2));
        assert!(d.blocked.is_none());
    }

    #[test]
    fn starting_nodes_count_so_a_burst_does_not_scale_twice() {
        let nodes = [
            node("a", NodeState::Preparing, false, 0),
            node("b", NodeState::Preparing, false, 0),
        ];
        assert_eq!(decide(&input(&nodes, 3)).add, 0);
    }

    #[test]
    fn idle_nodes_leave_after_the_idle_time_down_to_min() {
        let nodes = [
            node("a", NodeState::Idle, false, 95_000),
            node("b", NodeState::Idle, false, 80_000),
        ];
        let d = decide(&input(&nodes, 0));
        assert_eq!(
            d.remove,
            vec![("b".to_owned(), RemoveReason::Idle { idle_seconds: 10 })]
        );
        let mut keep_one = input(&nodes, 0);
        keep_one.min_nodes = 1;
        keep_one.now = 1_000_000;
        assert_eq!(decide(&keep_one).remove.len(), 1, "min 1 keeps one node");
    }

    #[test]
    fn busy_nodes_are_never_removed() {
        let nodes = [
            node("a", NodeState::Running, true, 0),
            node("b", NodeState::Preparing, true, 0),
        ];
        let mut i = input(&nodes, 0);
        i.max_nodes = 1;
        let d = decide(&i);
        assert!(d.remove.is_empty());
        assert_eq!(d.add, 0);
    }

    #[test]
    fn quota_shortfall_is_reported_with_numbers() {
        let mut i = input(&[], 2);
        i.quota_nodes_left = 1;
        let d = decide(&i);
        assert_eq!(d.add, 1);
        assert_eq!(
            d.blocked,
            Some(Blocked::QuotaExceeded {
                wanted: 2,
                admitted: 1
            })
        );
    }

    #[test]
    fn unusable_nodes_are_removed_and_replaced() {
        let nodes = [node("a", NodeState::Unusable, true, 0)];
        let d = decide(&input(&nodes, 1));
        assert_eq!(d.remove, vec![("a".to_owned(), RemoveReason::Unusable)]);
        assert_eq!(d.add, 1);
    }

    #[test]
    fn provider_backoff_adds_nothing_and_says_until_when() {
        let mut i = input(&[], 1);
        i.provider_backoff_until = Some(200_000);
        let d = decide(&i);
        assert_eq!(d.add, 0);
        assert_eq!(d.blocked, Some(Blocked::ProviderBackoff { until: 200_000 }));
    }

    fn q(jobs: &[(&str, u32)]) -> Vec<(String, u32)> {
        jobs.iter().map(|(j, n)| ((*j).to_owned(), *n)).collect()
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("n{i}")).collect()
    }

    #[test]
    fn placement_is_first_come_first_served() {
        let queue = q(&[("j1", 1), ("j2", 1), ("j3", 1)]);
        let nodes = ids(2);
        assert_eq!(
            place(&queue, &nodes),
            vec![("j1", vec!["n0"]), ("j2", vec!["n1"])]
        );
    }

    #[test]
    fn a_gang_takes_all_its_nodes_or_none_and_holds_back_later_jobs() {
        let queue = q(&[("g1", 2), ("g2", 2), ("single", 1)]);
        let nodes = ids(3);
        // g1 takes two nodes; g2 does not fit the third, and the single job
        // behind it waits too rather than starving g2.
        assert_eq!(place(&queue, &nodes), vec![("g1", vec!["n0", "n1"])]);
        assert!(place(&q(&[("g", 3)]), &ids(2)).is_empty());
    }

    #[test]
    fn a_queued_gang_counts_all_its_nodes_as_demand() {
        let d = decide(&ScaleInput {
            max_nodes: 3,
            ..input(&[], 4)
        });
        assert_eq!((d.target, d.add), (3, 3));
    }

    fn arb_nodes() -> impl Strategy<Value = Vec<NodeSnapshot>> {
        prop::collection::vec(
            (
                prop::sample::select(NodeState::ALL.to_vec()),
                any::<bool>(),
                0i64..200_000,
            ),
            0..8,
        )
        .prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (state, job, idle))| {
                    // Only nodes that can hold a job hold one.
                    let has_job = job
                        && matches!(
                            state,
                            NodeState::Preparing | NodeState::Running | NodeState::Unusable
                        );
                    node(&format!("n{i}"), state, has_job, idle)
                })
                .collect()
        })
    }

    proptest! {
        /// The oldest `queued_to_read` jobs place and decide as the whole
        /// queue does, before placement and after it.
        #[test]
        fn the_jobs_a_pass_reads_place_and_decide_as_the_whole_queue(
            nodes in arb_nodes(),
            min in 0u32..4,
            max in 0u32..12,
            jobs in prop::collection::vec(1u32..4, 0..40),
        ) {
            let max = max.max(min);
            let busy = nodes.iter().filter(|n| is_busy(n.state, n.has_job)).count() as u32;
            let ready: Vec<String> = nodes
                .iter()
                .filter(|n| takes_work(n.state, n.has_job, true))
                .map(|n| n.node_id.clone())
                .collect();
            let queue: Vec<(String, u32)> = jobs
                .iter()
                .enumerate()
                .map(|(i, n)| (format!("j{i}"), *n))
                .collect();
            let read = queued_to_read(false, max, busy, ready.len() as u32, 5_000) as usize;
            let partial = &queue[..read.min(queue.len())];
            let decide_on = |nodes: &[NodeSnapshot], queue: &[(String, u32)]| {
                decide(&ScaleInput {
                    min_nodes: min,
                    max_nodes: max,
                    idle_seconds: 60,
                    nodes,
                    queued_nodes: queue.iter().map(|(_, n)| n).sum(),
                    quota_nodes_left: 100,
                    provider_backoff_until: None,
                    now: 150_000,
                })
            };
            prop_assert_eq!(decide_on(&nodes, partial), decide_on(&nodes, &queue));
            let placed = place(partial, &ready);
            prop_assert_eq!(&placed, &place(&queue, &ready));
            // After placement: the placed jobs' nodes hold them, the
            // placed jobs leave both queues.
            let taken: Vec<&str> = placed.iter().flat_map(|(_, n)| n.iter().copied()).collect();
            let after: Vec<NodeSnapshot> = nodes
                .iter()
                .map(|n| NodeSnapshot {
                    has_job: n.has_job || taken.contains(&n.node_id.as_str()),
                    ..n.clone()
                })
                .collect();
            let left = |q: &[(String, u32)]| -> Vec<(String, u32)> {
                q.iter().filter(|(j, _)| !placed.iter().any(|(p, _)| p == j)).cloned().collect()
            };
            prop_assert_eq!(
                decide_on(&after, &left(partial)),
                decide_on(&after, &left(&queue))
            );
        }

        #[test]
        fn decisions_keep_every_rule(
            nodes in arb_nodes(),
            min in 0u32..4,
            extra in 0u32..6,
            queued in 0u32..10,
            quota in 0u32..10,
            idle_seconds in 0u64..150,
            backoff in prop::option::of(0i64..200_000),
        ) {
            let max = min + extra.max(1);
            let i = ScaleInput {
                min_nodes: min,
                max_nodes: max,
                idle_seconds,
                nodes: &nodes,
                queued_nodes: queued,
                quota_nodes_left: quota,
                provider_backoff_until: backoff,
                now: 150_000,
            };
            let d = decide(&i);
            let live = nodes.iter().filter(|n| is_live(n.state)).count() as u32;
            let leaving = nodes.iter().filter(|n| n.state == NodeState::Leaving).count() as u32;
            let removed_live = d.remove.iter().filter(|(id, _)| {
                nodes.iter().any(|n| &n.node_id == id && is_live(n.state))
            }).count() as u32;

            // Never above max (counting nodes still leaving), unless already above.
            if live + leaving <= max {
                prop_assert!(live + leaving + d.add <= max);
            } else {
                prop_assert_eq!(d.add, 0);
            }
            // Never below min by removal.
            prop_assert!(live - removed_live >= min.min(live));
            // Only idle nodes past their idle time, or unusable ones, are removed.
            for (id, reason) in &d.remove {
                let n = nodes.iter().find(|n| &n.node_id == id).expect("removed node exists");
                match reason {
                    RemoveReason::Idle { .. } => {
                        prop_assert_eq!(n.state, NodeState::Idle);
                        prop_assert!(!n.has_job);
                        prop_assert!(150_000 - n.idle_since >= (idle_seconds * 1000) as i64);
                    }
                    RemoveReason::Unusable => prop_assert!(matches!(n.state, NodeState::Unusable | NodeState::Preempted)),
                }
            }
            // Quota is respected; adding and removing idle nodes never both happen.
            prop_assert!(d.add <= quota);
            prop_assert!(!(d.add > 0 && removed_live > 0));
            // Applying the decision (new nodes start as preparing) asks for nothing more.
            let mut after: Vec<NodeSnapshot> = nodes.iter()
                .filter(|n| !d.remove.iter().any(|(id, _)| id == &n.node_id))
                .cloned()
                .collect();
            for k in 0..d.add {
                after.push(node(&format!("new{k}"), NodeState::Preparing, false, 150_000));
            }
            let again = decide(&ScaleInput { nodes: &after, quota_nodes_left: quota - d.add, ..i.clone() });
            prop_assert_eq!(again.add, 0, "a second pass must not scale again: {:?}", again);
        }

        #[test]
        fn placement_gives_each_gang_its_nodes_in_order(
            counts in prop::collection::vec(1u32..5, 0..8),
            ready in 0usize..10,
        ) {
            let queue: Vec<(String, u32)> =
                counts.iter().enumerate().map(|(i, n)| (format!("j{i}"), *n)).collect();
            let nodes = ids(ready);
            let placed = place(&queue, &nodes);
            let mut used = std::collections::HashSet::new();
            for (k, (job, got)) in placed.iter().enumerate() {
                // A prefix of the queue, each with exactly its node count.
                prop_assert_eq!(*job, queue[k].0.as_str());
                prop_assert_eq!(got.len() as u32, queue[k].1);
                for n in got {
                    prop_assert!(used.insert(*n), "node {} given twice", n);
                }
            }
            // The first job left out does not fit what is left.
            if let Some((_, need)) = queue.get(placed.len()) {
                prop_assert!(*need as usize > ready - used.len());
            }
        }

        /// No deadlock: on a cluster of `max` nodes, any queue of gangs that
        /// each fit `max` drains, whichever running job ends first.
        #[test]
        fn gangs_never_deadlock(
            counts in prop::collection::vec(1u32..4, 1..10),
            max in 3usize..5,
            ends in prop::collection::vec(any::<prop::sample::Index>(), 40),
        ) {
            let mut queue: Vec<(String, u32)> =
                counts.iter().enumerate().map(|(i, n)| (format!("j{i}"), *n)).collect();
            let mut idle = ids(max);
            let mut running: Vec<(String, Vec<String>)> = Vec::new();
            let mut finished = 0;
            for end in ends.iter().cycle().take(100) {
                let placed: Vec<(String, Vec<String>)> = place(&queue, &idle)
                    .into_iter()
                    .map(|(j, n)| (j.to_owned(), n.into_iter().map(str::to_owned).collect()))
                    .collect();
                for (job, nodes) in placed {
                    queue.retain(|(j, _)| *j != job);
                    idle.retain(|n| !nodes.contains(n));
                    running.push((job, nodes));
                }
                if running.is_empty() {
                    break;
                }
                let (_, nodes) = running.remove(end.index(running.len()));
                idle.extend(nodes);
                finished += 1;
            }
            prop_assert!(queue.is_empty() && running.is_empty(), "stuck: queue {:?}", queue);
            prop_assert_eq!(finished, counts.len());
        }
    }
}
