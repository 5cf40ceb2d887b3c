//! A job's lifecycle as decisions: given what is stored about a job and
//! what happened, what changes. The store only persists the answer.
//!
//! Builds on `job::after_attempt` (retry or final state), `job::after_rank`
//! (the gang rule) and `job::end_on_node` (an exit on an evicted node).
//! `hello`: what a (re)connecting agent's `Hello` means for its node's job.

pub mod hello;

use crate::job::{self, AttemptEnd, JobState, NextStep};
use crate::node::NodeState;

/// What the end of an attempt depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptFacts {
    /// The job's current attempt (the one that ends).
    pub attempt: u32,
    pub failures: u32,
    pub preemptions: u32,
    pub max_retries: u32,
    pub max_preemptions: u32,
    /// A user asked to cancel the job while it ran.
    pub cancel_requested: bool,
    /// Why, when not a user (empty: a user): the job's final reason.
    pub cancel_reason: String,
}

/// One recorded state change of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub attempt: u32,
    pub state: JobState,
    pub reason: String,
}

/// What ending an attempt changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptEnded {
    /// The attempt's exit code and reason, as its record keeps them.
    pub exit_code: Option<i64>,
    pub reason: String,
    /// The job's attempt, failures and preemptions afterwards.
    pub attempt: u32,
    pub failures: u32,
    pub preemptions: u32,
    /// The job's transitions, in order; the last one is its new state.
    pub transitions: Vec<Transition>,
}

/// Ends the current attempt with `end` (for `reason`): a cancel asked for
/// overrides whatever ended it; then a final state, or back to the queue as
/// the next attempt, a preemption counted apart from failures.
pub fn end_attempt(facts: &AttemptFacts, end: AttemptEnd, reason: &str) -> AttemptEnded {
    let end = if facts.cancel_requested {
        AttemptEnd::Canceled
    } else {
        end
    };
    let exit_code = match end {
        AttemptEnd::Exited(code) => Some(code),
        _ => None,
    };
    let reason = match end {
        AttemptEnd::Canceled if !facts.cancel_reason.is_empty() => facts.cancel_reason.clone(),
        AttemptEnd::Canceled => "canceled by user".to_owned(),
        _ => reason.to_owned(),
    };
    let a = facts.attempt;
    let step = job::after_attempt(
        &end,
        facts.failures,
        facts.max_retries,
        facts.preemptions,
        facts.max_preemptions,
    );
    let queued = |next: u32, why: String| Transition {
        attempt: next,
        state: JobState::Queued,
        reason: why,
    };
    let (attempt, failures, preemptions, transitions) = match step {
        NextStep::Finish(state) => {
            let t = Transition {
                attempt: a,
                state,
                reason: reason.clone(),
            };
            (a, facts.failures, facts.preemptions, vec![t])
        }
        NextStep::Retry if end == AttemptEnd::Preempted => {
            let (next, preemptions) = (a + 1, facts.preemptions + 1);
            let why = format!(
                "attempt {a} was preempted ({reason}); re-queued as attempt {next} ({preemptions} of {} preemptions; failure retries untouched)",
                facts.max_preemptions
            );
            let preempted = Transition {
                attempt: a,
                state: JobState::Preempted,
                reason: reason.clone(),
            };
            let ts = vec![preempted, queued(next, why)];
            (next, facts.failures, preemptions, ts)
        }
        NextStep::Retry if end == AttemptEnd::Requeued => {
            let next = a + 1;
            let why = format!(
                "attempt {a} ended ({reason}); queued again as attempt {next} (retries untouched)"
            );
            (
                next,
                facts.failures,
                facts.preemptions,
                vec![queued(next, why)],
            )
        }
        NextStep::Retry => {
            let (next, failures) = (a + 1, facts.failures + 1);
            let why = format!(
                "attempt {a} ended ({reason}); retrying as attempt {next} ({failures} of {} retries)",
                facts.max_retries
            );
            (next, failures, facts.preemptions, vec![queued(next, why)])
        }
    };
    AttemptEnded {
        exit_code,
        reason,
        attempt,
        failures,
        preemptions,
        transitions,
    }
}

/// What a cancel request does to a job in `state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelStep {
    /// Not started: canceled at once, with this transition reason.
    Now(&'static str),
    /// On its nodes: marked, so that they stop it and its end is a cancel.
    StopOnNodes,
    /// Final already, or marked already: nothing changes.
    Nothing,
}

pub fn cancel(state: JobState, cancel_requested: bool) -> CancelStep {
    match state {
        JobState::Queued | JobState::Preempted => {
            CancelStep::Now("canceled by user before it started")
        }
        s if s.on_node() && !cancel_requested => CancelStep::StopOnNodes,
        _ => CancelStep::Nothing,
    }
}

/// The reason of a job's placement on `nodes` (rank 0 first).
pub fn placed(attempt: u32, nodes: &[String]) -> String {
    match nodes {
        [one] => format!("attempt {attempt} placed on node {one}"),
        _ => format!(
            "attempt {attempt} placed on {} nodes: {}",
            nodes.len(),
            nodes.join(", ")
        ),
    }
}

/// A rank of a preparing attempt reports its container running: the job
/// becomes running once no rank waits any more. `nodes` are the attempt's
/// nodes, `node` the one reporting. Returns the transition, if any.
pub fn rank_started(
    state: JobState,
    attempt: u32,
    nodes: &[String],
    node: &str,
    ranks_waiting: u64,
) -> Option<Transition> {
    if state != JobState::Preparing || ranks_waiting > 0 {
        return None;
    }
    let reason = if nodes.len() > 1 {
        format!("attempt {attempt} started on {} nodes", nodes.len())
    } else {
        format!("attempt {attempt} started on node {node}")
    };
    Some(Transition {
        attempt,
        state: JobState::Running,
        reason,
    })
}

/// A node is freed (becomes idle) when the container of `job` on it
/// stopped, if it is still preparing or running that job. An unusable,
/// leaving or preempted node is no capacity and stays as it is.
pub fn frees_node(node: NodeState, node_job: Option<&str>, job: &str) -> bool {
    matches!(node, NodeState::Preparing | NodeState::Running) && node_job == Some(job)
}

/// A node that goes away (removed by the provider, or gone at its
/// eviction time) ends the attempts on it: as preempted if it was evicted
/// (`state` preempted), as lost otherwise. Returns the end and its reason.
pub fn node_removed(node_id: &str, state: Option<NodeState>) -> (AttemptEnd, String) {
    if state == Some(NodeState::Preempted) {
        (AttemptEnd::Preempted, format!("node {node_id} was evicted"))
    } else {
        (AttemptEnd::NodeLost, format!("node {node_id} was removed"))
    }
}

/// The reason a detached node shows while it drains.
pub fn detach_reason(requeue: bool) -> &'static str {
    if requeue {
        "detaching: its job was queued again"
    } else {
        "detaching: takes no new job, leaves once its job has ended"
    }
}

/// A node an operator detached with `--requeue`: its attempts run again,
/// without counting against the job's retries.
pub fn node_detached(node_id: &str) -> (AttemptEnd, String) {
    (AttemptEnd::Requeued, format!("node {node_id} was detached"))
}

/// A node found unusable (`why`: e.g. its heartbeats stopped) loses the
/// attempts on it.
pub fn node_lost(node_id: &str, why: &str) -> (AttemptEnd, String) {
    (AttemptEnd::NodeLost, format!("node {node_id} lost: {why}"))
}

/// Whether a node the scale decision removes may go at `now`: a preempted
/// node stays until its eviction time (`NotBefore`, `evict_at`), so that
/// its job keeps the notice window to checkpoint; any other node goes at
/// once.
pub fn may_remove(evict_at: Option<i64>, now: i64) -> bool {
    evict_at.is_none_or(|at| at <= now)
}

/// Whether a node's agent may enrol: an unusable or leaving node is to be
/// removed instead, except an attached cluster's machine: an unusable one
/// is kept for its agent to come back (Strato never replaces it), and one
/// being drained (leaving) must reach its running job until it ends.
pub fn may_enrol(state: NodeState, attached: bool) -> bool {
    match state {
        NodeState::Leaving | NodeState::Unusable => attached,
        _ => true,
    }
}

/// Why a join token is not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinRefusal {
    Expired,
    Used,
    /// An attached cluster's token with no uses left.
    UsedUp,
    /// The attached cluster has `max_nodes` machines.
    ClusterFull {
        max_nodes: u32,
    },
}

/// What names a join token in listings and revocations: the first 16 hex
/// digits of its SHA-256 (not a secret: the token cannot be had from it).
pub fn join_token_id(token_hash: &str) -> String {
    token_hash.chars().take(16).collect()
}

/// The most machines one join token admits.
pub const MAX_JOIN_TOKEN_USES: u32 = 1000;
/// The longest a join token lives: 30 days.
pub const MAX_JOIN_TOKEN_SECONDS: u64 = 30 * 24 * 3600;

/// An attached cluster's join token as asked for: its uses (default 1) and
/// lifetime in seconds (default an hour), each checked against its bound.
pub fn join_token_terms(
    uses: Option<u32>,
    expires_in_seconds: Option<u64>,
) -> Result<(u32, u64), crate::error::FieldError> {
    use crate::error::FieldError;
    let uses = uses.unwrap_or(1);
    if !(1..=MAX_JOIN_TOKEN_USES).contains(&uses) {
        return Err(FieldError::new(
            "uses",
            format!("must be from 1 to {MAX_JOIN_TOKEN_USES}; got {uses}"),
        ));
    }
    let seconds = expires_in_seconds.unwrap_or(3600);
    if !(60..=MAX_JOIN_TOKEN_SECONDS).contains(&seconds) {
        return Err(FieldError::new(
            "expires_in_seconds",
            format!("must be from 60 seconds to 30 days; got {seconds} seconds"),
        ));
    }
    Ok((uses, seconds))
}

/// Whether an attached cluster's join token admits one more machine at
/// `now`: before it expires, while it has uses left, and while the cluster
/// has fewer than `max_nodes` machines (`joined`, whatever their state).
/// The same agent presenting it again (`again`: its first answer was
/// lost) gets its own node back before expiry, without another use.
pub fn cluster_token_takes(
    expires_at: i64,
    uses_left: u32,
    joined: u32,
    max_nodes: u32,
    again: bool,
    now: i64,
) -> Result<(), JoinRefusal> {
    if now >= expires_at {
        return Err(JoinRefusal::Expired);
    }
    if again {
        return Ok(());
    }
    if uses_left == 0 {
        return Err(JoinRefusal::UsedUp);
    }
    if joined >= max_nodes {
        return Err(JoinRefusal::ClusterFull { max_nodes });
    }
    Ok(())
}

/// Whether a join token may enrol its node at `now`: before it expires,
/// once, or again by the same agent (`key`, its CSR's public key hash,
/// is the one the first enrolment named: its first answer was lost).
/// `key` is empty without TLS, and then never counts as the same.
pub fn join_token_takes(
    expires_at: Option<i64>,
    used: bool,
    used_key: Option<&str>,
    key: &str,
    now: i64,
) -> Result<(), JoinRefusal> {
    if expires_at.is_some_and(|at| now >= at) {
        return Err(JoinRefusal::Expired);
    }
    let same_agent = !key.is_empty() && used_key == Some(key);
    if used && !same_agent {
        return Err(JoinRefusal::Used);
    }
    Ok(())
}

/// A node's first enrolment makes it idle: it was preparing, waiting for
/// its agent. A node enrolling again (its agent restarted) keeps its state,
/// except an attached cluster's machine that was unusable, or that its
/// resume command woke (preparing without a job): it is back. A suspended
/// machine whose agent still talks (its suspend command returned before
/// the machine went down) stays suspended until it is resumed.
pub fn enrolment_makes_idle(
    enrolled_before: bool,
    state: NodeState,
    has_job: bool,
    attached: bool,
) -> bool {
    !has_job
        && ((!enrolled_before && state == NodeState::Preparing)
            || (attached && matches!(state, NodeState::Unusable | NodeState::Preparing)))
}

/// A power command's step for an attached cluster's machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerStep {
    /// The suspend command is about to run: the idle machine takes no work.
    Suspend,
    /// The suspend command failed: the machine is idle again.
    SuspendFailed,
    /// The resume command is about to run: the machine is starting (its
    /// agent enrols again with its certificate, within the start timeout).
    Resume,
    /// The resume command failed: the machine is suspended again.
    ResumeFailed,
}

impl PowerStep {
    /// The state the node must be in, and the state it goes to.
    pub fn transition(self) -> (NodeState, NodeState) {
        match self {
            PowerStep::Suspend => (NodeState::Idle, NodeState::Suspended),
            PowerStep::SuspendFailed => (NodeState::Suspended, NodeState::Idle),
            PowerStep::Resume => (NodeState::Suspended, NodeState::Preparing),
            PowerStep::ResumeFailed => (NodeState::Preparing, NodeState::Suspended),
        }
    }
}

/// Whether the end of `job`'s rank releases a leaving (detached) node:
/// it keeps leaving, without the job, and goes at the next pass.
pub fn releases_leaving_node(node: NodeState, node_job: Option<&str>, job: &str) -> bool {
    node == NodeState::Leaving && node_job == Some(job)
}

/// What decides whether a node's session owes it an attempt placed on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssignmentFacts {
    /// The node's state (it names the job as its run).
    pub node: NodeState,
    pub job: JobState,
    /// The job's current attempt is placed on this node.
    pub placed_on_node: bool,
    pub cancel_requested: bool,
    /// This session sent that attempt already.
    pub sent_in_session: bool,
}

/// The replica holding a node's session sends it the attempt placed on it
/// when the node is still being prepared for the job, the job for its
/// current attempt on this node, nobody asked to cancel it, and this
/// session has not sent it yet (a new session, after an agent moved or
/// reconnected, is owed it again; the agent's `Hello` says what it holds).
pub fn assignment_owed(facts: &AssignmentFacts) -> bool {
    facts.node == NodeState::Preparing
        && facts.job == JobState::Preparing
        && facts.placed_on_node
        && !facts.cancel_requested
        && !facts.sent_in_session
}

#[cfg(test)]
mod tests {

    #[test]
    fn an_attempt_is_owed_once_to_a_node_prepared_for_it() {
        let owed = AssignmentFacts {
            node: NodeState::Preparing,
            job: JobState::Preparing,
            placed_on_node: true,
            cancel_requested: false,
            sent_in_session: false,
        };
        assert!(assignment_owed(&owed));
        for not in [
            AssignmentFacts {
                sent_in_session: true,
                ..owed
            },
            AssignmentFacts {
                cancel_requested: true,
                ..owed
            },
            AssignmentFacts {
                placed_on_node: false,
                ..owed
            },
            AssignmentFacts {
                job: JobState::Running,
                ..owed
            },
            AssignmentFacts {
                job: JobState::Queued,
                ..owed
            },
            AssignmentFacts {
                node: NodeState::Running,
                ..owed
            },
            AssignmentFacts {
                node: NodeState::Leaving,
                ..owed
            },
        ] {
            assert!(!assignment_owed(&not), "{not:?}");
        }
    }

    #[test]
    fn a_join_token_takes_once_before_it_expires_and_again_for_the_same_key() {
        assert_eq!(join_token_takes(Some(10), false, None, "k", 9), Ok(()));
        assert_eq!(
            join_token_takes(Some(10), false, None, "k", 10),
            Err(JoinRefusal::Expired)
        );
        assert_eq!(join_token_takes(None, true, Some("k"), "k", 99), Ok(()));
        assert_eq!(
            join_token_takes(None, true, Some("k"), "other", 9),
            Err(JoinRefusal::Used)
        );
        assert_eq!(
            join_token_takes(None, true, Some(""), "", 9),
            Err(JoinRefusal::Used)
        );
        assert_eq!(
            join_token_takes(Some(5), true, Some("k"), "k", 6),
            Err(JoinRefusal::Expired)
        );
    }

    use super::*;

    fn facts() -> AttemptFacts {
        AttemptFacts {
            attempt: 1,
            failures: 0,
            preemptions: 0,
            max_retries: 2,
            max_preemptions: 1,
            cancel_requested: false,
            cancel_reason: String::new(),
        }
    }

    fn states(e: &AttemptEnded) -> Vec<JobState> {
        e.transitions.iter().map(|t| t.state).collect()
    }

    #[test]
    fn success_finishes_with_its_exit_code() {
        let e = end_attempt(&facts(), AttemptEnd::Exited(0), "exited with code 0");
        assert_eq!(
            (e.exit_code, e.attempt, e.failures, states(&e)),
            (Some(0), 1, 0, vec![JobState::Completed])
        );
        assert_eq!(e.transitions[0].reason, "exited with code 0");
    }

    #[test]
    fn a_failure_retries_until_max_retries() {
        let e = end_attempt(&facts(), AttemptEnd::Exited(3), "exited with code 3");
        assert_eq!(
            (e.exit_code, e.attempt, e.failures, states(&e)),
            (Some(3), 2, 1, vec![JobState::Queued])
        );
        assert_eq!(
            e.transitions[0],
            Transition {
                attempt: 2,
                state: JobState::Queued,
                reason:
                    "attempt 1 ended (exited with code 3); retrying as attempt 2 (1 of 2 retries)"
                        .into()
            }
        );
        assert_eq!(e.reason, "exited with code 3");
        let last = AttemptFacts {
            attempt: 3,
            failures: 2,
            ..facts()
        };
        let e = end_attempt(&last, AttemptEnd::NodeLost, "node n lost");
        assert_eq!(
            (e.exit_code, e.attempt, e.failures, states(&e)),
            (None, 3, 2, vec![JobState::Failed])
        );
        let e = end_attempt(&facts(), AttemptEnd::CannotStart, "no image");
        assert_eq!((e.attempt, states(&e)), (1, vec![JobState::Failed]));
    }

    #[test]
    fn a_preemption_is_counted_apart_and_limited() {
        let e = end_attempt(&facts(), AttemptEnd::Preempted, "node n was evicted");
        assert_eq!(
            (e.attempt, e.failures, e.preemptions, states(&e)),
            (2, 0, 1, vec![JobState::Preempted, JobState::Queued])
        );
        assert_eq!(e.transitions[0].attempt, 1);
        assert_eq!(
            e.transitions[1].reason,
            "attempt 1 was preempted (node n was evicted); re-queued as attempt 2 (1 of 1 preemptions; failure retries untouched)"
        );
        let used = AttemptFacts {
            attempt: 2,
            preemptions: 1,
            ..facts()
        };
        let e = end_attempt(&used, AttemptEnd::Preempted, "node m was evicted");
        assert_eq!(
            (e.attempt, e.preemptions, states(&e)),
            (2, 1, vec![JobState::Failed])
        );
        assert_eq!(e.transitions[0].reason, "node m was evicted");
    }

    #[test]
    fn a_cancel_asked_for_overrides_any_end() {
        let asked = AttemptFacts {
            cancel_requested: true,
            ..facts()
        };
        for end in [
            AttemptEnd::Exited(0),
            AttemptEnd::Exited(1),
            AttemptEnd::NodeLost,
            AttemptEnd::Preempted,
        ] {
            let e = end_attempt(&asked, end, "whatever");
            assert_eq!(
                (e.exit_code, e.attempt, e.failures, e.reason.as_str()),
                (None, 1, 0, "canceled by user")
            );
            assert_eq!(states(&e), vec![JobState::Canceled]);
        }
    }

    #[test]
    fn cancel_acts_by_state() {
        assert_eq!(
            cancel(JobState::Queued, false),
            CancelStep::Now("canceled by user before it started")
        );
        assert!(matches!(
            cancel(JobState::Preempted, false),
            CancelStep::Now(_)
        ));
        assert_eq!(cancel(JobState::Running, false), CancelStep::StopOnNodes);
        assert_eq!(cancel(JobState::Preparing, false), CancelStep::StopOnNodes);
        assert_eq!(cancel(JobState::Running, true), CancelStep::Nothing);
        for s in [JobState::Completed, JobState::Failed, JobState::Canceled] {
            assert_eq!(cancel(s, false), CancelStep::Nothing);
        }
    }

    #[test]
    fn reasons_of_placement_and_start() {
        let one = vec!["n0".to_owned()];
        let two = vec!["n0".to_owned(), "n1".to_owned()];
        assert_eq!(placed(1, &one), "attempt 1 placed on node n0");
        assert_eq!(placed(2, &two), "attempt 2 placed on 2 nodes: n0, n1");
        assert_eq!(rank_started(JobState::Preparing, 1, &two, "n1", 1), None);
        assert_eq!(rank_started(JobState::Running, 1, &two, "n1", 0), None);
        assert_eq!(
            rank_started(JobState::Preparing, 1, &two, "n1", 0).map(|t| t.reason),
            Some("attempt 1 started on 2 nodes".to_owned())
        );
        assert_eq!(
            rank_started(JobState::Preparing, 3, &one, "n0", 0),
            Some(Transition {
                attempt: 3,
                state: JobState::Running,
                reason: "attempt 3 started on node n0".into()
            })
        );
    }

    #[test]
    fn a_node_going_away_ends_its_attempts_by_how_it_went() {
        assert_eq!(
            node_removed("n", Some(NodeState::Preempted)),
            (AttemptEnd::Preempted, "node n was evicted".to_owned())
        );
        for state in [Some(NodeState::Running), Some(NodeState::Unusable), None] {
            assert_eq!(
                node_removed("n", state),
                (AttemptEnd::NodeLost, "node n was removed".to_owned())
            );
        }
        assert_eq!(
            node_lost("n", "no heartbeat"),
            (AttemptEnd::NodeLost, "node n lost: no heartbeat".to_owned())
        );
    }

    #[test]
    fn a_preempted_node_waits_for_not_before() {
        assert!(may_remove(None, 0));
        assert!(!may_remove(Some(30_000), 29_999));
        assert!(may_remove(Some(30_000), 30_000));
        assert!(may_remove(Some(30_000), 31_000));
    }

    #[test]
    fn enrolment_by_state() {
        assert!(!may_enrol(NodeState::Unusable, false) && !may_enrol(NodeState::Leaving, false));
        for s in [
            NodeState::Idle,
            NodeState::Preparing,
            NodeState::Running,
            NodeState::Preempted,
        ] {
            assert!(may_enrol(s, false) && may_enrol(s, true), "{s:?}");
        }
        assert!(enrolment_makes_idle(
            false,
            NodeState::Preparing,
            false,
            false
        ));
        assert!(!enrolment_makes_idle(
            true,
            NodeState::Preparing,
            false,
            false
        ));
        assert!(!enrolment_makes_idle(
            false,
            NodeState::Preparing,
            true,
            false
        ));
        assert!(!enrolment_makes_idle(
            false,
            NodeState::Running,
            false,
            false
        ));
        // An attached machine whose agent was lost comes back; a draining
        // one reconnects to its job and stays leaving.
        assert!(may_enrol(NodeState::Unusable, true) && may_enrol(NodeState::Leaving, true));
        assert!(
            !enrolment_makes_idle(true, NodeState::Leaving, false, true),
            "it keeps leaving"
        );
        assert!(enrolment_makes_idle(true, NodeState::Unusable, false, true));
        assert!(!enrolment_makes_idle(
            true,
            NodeState::Unusable,
            false,
            false
        ));
        assert!(!enrolment_makes_idle(true, NodeState::Unusable, true, true));
        assert!(
            !enrolment_makes_idle(true, NodeState::Suspended, false, true),
            "a suspended machine stays asleep until resumed"
        );
        assert!(
            enrolment_makes_idle(true, NodeState::Preparing, false, true),
            "resumed"
        );
        assert!(may_enrol(NodeState::Suspended, true));
    }

    #[test]
    fn join_token_terms_have_defaults_and_bounds() {
        assert_eq!(join_token_terms(None, None), Ok((1, 3600)));
        assert_eq!(join_token_terms(Some(3), Some(86_400)), Ok((3, 86_400)));
        for (uses, secs, field) in [
            (Some(0), None, "uses"),
            (Some(1001), None, "uses"),
            (None, Some(59), "expires_in_seconds"),
            (None, Some(MAX_JOIN_TOKEN_SECONDS + 1), "expires_in_seconds"),
        ] {
            assert_eq!(join_token_terms(uses, secs).expect_err(field).field, field);
        }
    }

    #[test]
    fn a_cluster_token_takes_while_it_has_uses_time_and_room() {
        assert_eq!(cluster_token_takes(10, 1, 0, 3, false, 9), Ok(()));
        assert_eq!(
            cluster_token_takes(10, 1, 0, 3, false, 10),
            Err(JoinRefusal::Expired)
        );
        assert_eq!(
            cluster_token_takes(10, 0, 0, 3, false, 9),
            Err(JoinRefusal::UsedUp)
        );
        assert_eq!(
            cluster_token_takes(10, 5, 3, 3, false, 9),
            Err(JoinRefusal::ClusterFull { max_nodes: 3 })
        );
        // The same agent again: its node back, no use, not after expiry.
        assert_eq!(cluster_token_takes(10, 0, 3, 3, true, 9), Ok(()));
        assert_eq!(
            cluster_token_takes(10, 0, 3, 3, true, 10),
            Err(JoinRefusal::Expired)
        );
        assert!(releases_leaving_node(NodeState::Leaving, Some("j"), "j"));
        assert!(!releases_leaving_node(NodeState::Leaving, Some("k"), "j"));
        assert!(!releases_leaving_node(NodeState::Running, Some("j"), "j"));
    }

    #[test]
    fn only_a_node_still_on_the_job_is_freed() {
        assert!(frees_node(NodeState::Running, Some("j"), "j"));
        assert!(frees_node(NodeState::Preparing, Some("j"), "j"));
        assert!(!frees_node(NodeState::Running, Some("k"), "j"));
        assert!(!frees_node(NodeState::Running, None, "j"));
        for s in [
            NodeState::Idle,
            NodeState::Unusable,
            NodeState::Leaving,
            NodeState::Preempted,
        ] {
            assert!(!frees_node(s, Some("j"), "j"), "{s:?}");
        }
    }
}
