//! Node health: a node whose agent never enrols, or whose heartbeats stop,
//! is unusable. Time is an argument (ms since the epoch).
//!
//! The rule (property-tested below): a watched node that is up is unusable
//! exactly when it has been silent for longer than the heartbeat timeout,
//! silence counted from its last heartbeat (or its creation), but never
//! from before the control plane's own start: agents could not heartbeat
//! while it was down. A starting node (its agent never enrolled, or a
//! machine its resume command woke: preparing without a job) is unusable
//! once the start timeout has passed since it was created or entered its
//! state (or the start). Watched are the live nodes, and a leaving node
//! while its job runs (its job must end if the machine dies); nodes that
//! hold no capacity (unusable, preempted, suspended, leaving without a job)
//! are not.

use super::NodeState;
use crate::scale::is_live;

/// The timeouts, in seconds, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// How long a new node's agent may take to enrol.
    pub start_seconds: u64,
    /// How long an enrolled node may stay silent.
    pub heartbeat_seconds: u64,
}

/// What health depends on, as stored for one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeFacts {
    pub state: NodeState,
    pub enrolled: bool,
    /// Whether a job is on it.
    pub has_job: bool,
    pub created_at: i64,
    /// When it entered its state: a machine woken by its resume command is
    /// starting from then.
    pub state_since: i64,
    pub last_heartbeat: Option<i64>,
}

/// Why a node became unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Its agent never enrolled: the provider's node did not come up, which
    /// counts as a provider failure.
    NeverEnrolled,
    /// Its heartbeats stopped.
    Silent,
}

/// A node's health at `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// It holds no capacity: not watched.
    NotLive,
    /// Created, its agent not enrolled yet, still within the start timeout.
    Starting,
    /// Enrolled and heartbeating.
    Up,
    /// To be marked unusable, for `reason`.
    Unusable { cause: Cause, reason: String },
}

fn ms(seconds: u64) -> i64 {
    i64::try_from(seconds.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// The health of `node` at `now`, for a control plane started at
/// `started_at`.
pub fn check(node: &NodeFacts, timeouts: Timeouts, started_at: i64, now: i64) -> Health {
    let draining = node.state == NodeState::Leaving && node.has_job;
    if !is_live(node.state) && !draining {
        return Health::NotLive;
    }
    if starting(node) {
        let waited = now.saturating_sub(node.created_at.max(node.state_since).max(started_at));
        return if waited > ms(timeouts.start_seconds) {
            Health::Unusable {
                cause: Cause::NeverEnrolled,
                reason: format!("the agent did not enrol within {}s", timeouts.start_seconds),
            }
        } else {
            Health::Starting
        };
    }
    let silent = now.saturating_sub(
        node.last_heartbeat
            .unwrap_or(node.created_at)
            .max(started_at),
    );
    if silent > ms(timeouts.heartbeat_seconds) {
        Health::Unusable {
            cause: Cause::Silent,
            reason: format!("no heartbeat for {}s", silent / 1000),
        }
    } else {
        Health::Up
    }
}

/// Whether the node waits for its agent: it never enrolled, or its
/// machine was resumed (preparing, but without a job to prepare).
fn starting(node: &NodeFacts) -> bool {
    !node.enrolled || (node.state == NodeState::Preparing && !node.has_job)
}

/// How often a control-plane replica writes the heartbeats it received
/// (ms): a third of the heartbeat timeout, so the leader, which judges
/// nodes by what is written, misses two writes before it declares a node
/// lost; at least every second, at most every 30 s.
pub fn heartbeats_written_every_ms(node_heartbeat_timeout_s: u64) -> i64 {
    let third =
        i64::try_from(node_heartbeat_timeout_s.saturating_mul(1000) / 3).unwrap_or(i64::MAX);
    third.clamp(1_000, 30_000)
}

#[cfg(test)]
mod tests {
    #[test]
    fn heartbeats_are_written_every_third_of_the_timeout_within_bounds() {
        assert_eq!(heartbeats_written_every_ms(15), 5_000);
        assert_eq!(heartbeats_written_every_ms(30), 10_000);
        assert_eq!(
            heartbeats_written_every_ms(2),
            1_000,
            "at least every second"
        );
        assert_eq!(
            heartbeats_written_every_ms(600),
            30_000,
            "at most every 30 s"
        );
        assert_eq!(heartbeats_written_every_ms(u64::MAX), 30_000);
    }

    use super::*;
    use proptest::prelude::*;

    const T: Timeouts = Timeouts {
        start_seconds: 60,
        heartbeat_seconds: 15,
    };

    fn enrolled(last_heartbeat: Option<i64>) -> NodeFacts {
        NodeFacts {
            state: NodeState::Running,
            enrolled: true,
            has_job: true,
            created_at: 1_000,
            state_since: 1_000,
            last_heartbeat,
        }
    }

    fn unusable(cause: Cause, reason: &str) -> Health {
        Health::Unusable {
            cause,
            reason: reason.to_owned(),
        }
    }

    #[test]
    fn silence_longer_than_the_timeout_makes_a_node_unusable() {
        let node = enrolled(Some(10_000));
        assert_eq!(check(&node, T, 0, 25_000), Health::Up);
        assert_eq!(
            check(&node, T, 0, 3_671_000),
            unusable(Cause::Silent, "no heartbeat for 3661s")
        );
        // Never heartbeated: counted from its creation.
        assert!(matches!(
            check(&enrolled(None), T, 0, 16_001),
            Health::Unusable { .. }
        ));
    }

    #[test]
    fn silence_counts_only_from_the_control_planes_start() {
        let node = enrolled(Some(10_000));
        assert_eq!(check(&node, T, 1_000_000, 1_015_000), Health::Up);
        assert_eq!(
            check(&node, T, 1_000_000, 1_016_000),
            unusable(Cause::Silent, "no heartbeat for 16s")
        );
    }

    #[test]
    fn a_node_that_never_enrols_times_out() {
        let node = NodeFacts {
            state: NodeState::Preparing,
            enrolled: false,
            has_job: false,
            created_at: 1_000,
            state_since: 1_000,
            last_heartbeat: None,
        };
        assert_eq!(check(&node, T, 0, 61_000), Health::Starting);
        assert_eq!(
            check(&node, T, 0, 61_001),
            unusable(Cause::NeverEnrolled, "the agent did not enrol within 60s")
        );
        assert_eq!(check(&node, T, 50_000, 110_000), Health::Starting);
        // A machine its resume command woke starts again from then, its
        // session kept.
        let resumed = NodeFacts {
            enrolled: true,
            state_since: 500_000,
            last_heartbeat: Some(1_000),
            ..node
        };
        assert_eq!(check(&resumed, T, 0, 559_000), Health::Starting);
        assert!(matches!(
            check(&resumed, T, 0, 561_000),
            Health::Unusable {
                cause: Cause::NeverEnrolled,
                ..
            }
        ));
    }

    #[test]
    fn nodes_without_capacity_are_not_watched() {
        for state in [
            NodeState::Unusable,
            NodeState::Leaving,
            NodeState::Preempted,
            NodeState::Suspended,
        ] {
            let node = NodeFacts {
                state,
                has_job: false,
                ..enrolled(None)
            };
            assert_eq!(check(&node, T, 0, i64::MAX), Health::NotLive);
        }
        // A draining machine is watched while its job runs.
        let draining = NodeFacts {
            state: NodeState::Leaving,
            ..enrolled(Some(1_000))
        };
        assert!(matches!(
            check(&draining, T, 0, 20_000),
            Health::Unusable {
                cause: Cause::Silent,
                ..
            }
        ));
    }

    fn arb_state() -> impl Strategy<Value = NodeState> {
        prop::sample::select(NodeState::ALL.to_vec())
    }

    proptest! {
        #[test]
        fn unusable_iff_silent_longer_than_the_timeout(
            state in arb_state(),
            enrolled in any::<bool>(),
            has_job in any::<bool>(),
            created_at in 0i64..1_000_000,
            state_since in 0i64..1_000_000,
            beat in prop::option::of(0i64..1_000_000),
            started_at in 0i64..1_000_000,
            after in 0i64..200_000,
            start_seconds in 0u64..100,
            heartbeat_seconds in 0u64..100,
        ) {
            let node = NodeFacts { state, enrolled, has_job, created_at, state_since, last_heartbeat: beat };
            let t = Timeouts { start_seconds, heartbeat_seconds };
            let starting = !enrolled || (state == NodeState::Preparing && !has_job);
            let watched = is_live(state) || (state == NodeState::Leaving && has_job);
            let since = if starting {
                created_at.max(state_since)
            } else {
                beat.unwrap_or(created_at)
            }
            .max(started_at);
            let now = since + after;
            let limit = if starting { start_seconds } else { heartbeat_seconds } as i64 * 1000;
            let health = check(&node, t, started_at, now);
            if !watched {
                prop_assert_eq!(health, Health::NotLive);
            } else if let Health::Unusable { cause, .. } = &health {
                prop_assert!(after > limit);
                prop_assert_eq!(*cause == Cause::NeverEnrolled, starting);
            } else {
                prop_assert!(after <= limit);
                prop_assert_eq!(health, if starting { Health::Starting } else { Health::Up });
            }
        }
    }
}
