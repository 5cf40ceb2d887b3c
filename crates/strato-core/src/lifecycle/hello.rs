//! What a (re)connecting agent's `Hello` means for the job the store
//! places on its node.
//!
//! The agent's `Hello` lists the attempts whose containers it holds. The
//! node's current job (the store's `run_id`), when its current attempt runs
//! on this node and the agent does not hold it:
//! - still preparing and canceled meanwhile: the attempt ends as canceled
//!   (its container never existed, so it must not start now);
//! - still preparing: the assignment may have been lost, so it is sent
//!   again (starting an existing container by name is idempotent);
//! - running: its container vanished, so the attempt ends, the node lost.
//!
//! Held containers the store has moved past need nothing here: the agent
//! follows each one and reports it, and a report about an attempt that is
//! over, or not this node's, is answered with `Release`
//! (`ReportOutcome::Release`/`Stale` in the store).

use crate::job::{AttemptEnd, JobState};

/// The job the store places on the node, as far as the `Hello` concerns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlacedJob<'a> {
    pub job_id: &'a str,
    /// The job's current attempt.
    pub attempt: u32,
    pub state: JobState,
    pub cancel_requested: bool,
    /// The node is one of the current attempt's nodes.
    pub on_this_node: bool,
}

/// An attempt whose container the agent holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held<'a> {
    pub job_id: &'a str,
    pub attempt: u32,
}

/// What to do about the placed job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelloAction {
    /// Send the current attempt's assignment to this node again.
    Resend,
    /// End the current attempt as if this node reported `end` for `reason`.
    End { end: AttemptEnd, reason: String },
}

/// What the `Hello` of `node_id`'s agent, holding `held`, means for
/// `placed`, the job the store places on the node (if any).
pub fn after_hello(
    node_id: &str,
    placed: Option<&PlacedJob<'_>>,
    held: &[Held<'_>],
) -> Option<HelloAction> {
    let job = placed?;
    let holds = held
        .iter()
        .any(|h| h.job_id == job.job_id && h.attempt == job.attempt);
    if !job.on_this_node || holds {
        return None;
    }
    match job.state {
        JobState::Preparing if job.cancel_requested => Some(HelloAction::End {
            end: AttemptEnd::Canceled,
            reason: "canceled by user".to_owned(),
        }),
        JobState::Preparing => Some(HelloAction::Resend),
        JobState::Running => Some(HelloAction::End {
            end: AttemptEnd::NodeLost,
            reason: format!(
                "the container of attempt {} disappeared from node {node_id}",
                job.attempt
            ),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn placed(state: JobState) -> PlacedJob<'static> {
        PlacedJob {
            job_id: "j",
            attempt: 2,
            state,
            cancel_requested: false,
            on_this_node: true,
        }
    }

    const NOTHING: &[Held<'static>] = &[];

    #[test]
    fn a_lost_assignment_is_sent_again() {
        assert_eq!(
            after_hello("n", Some(&placed(JobState::Preparing)), NOTHING),
            Some(HelloAction::Resend)
        );
    }

    #[test]
    fn a_cancel_before_the_container_existed_ends_the_attempt() {
        let canceled = PlacedJob {
            cancel_requested: true,
            ..placed(JobState::Preparing)
        };
        assert_eq!(
            after_hello("n", Some(&canceled), NOTHING),
            Some(HelloAction::End {
                end: AttemptEnd::Canceled,
                reason: "canceled by user".into()
            })
        );
    }

    #[test]
    fn a_vanished_container_ends_its_attempt() {
        assert_eq!(
            after_hello("n", Some(&placed(JobState::Running)), NOTHING),
            Some(HelloAction::End {
                end: AttemptEnd::NodeLost,
                reason: "the container of attempt 2 disappeared from node n".into()
            })
        );
    }

    #[test]
    fn a_held_attempt_or_another_nodes_needs_nothing() {
        let running = placed(JobState::Running);
        let held = [Held {
            job_id: "j",
            attempt: 2,
        }];
        assert_eq!(after_hello("n", Some(&running), &held), None);
        // Holding an earlier attempt is not holding the current one.
        let earlier = [Held {
            job_id: "j",
            attempt: 1,
        }];
        assert!(after_hello("n", Some(&running), &earlier).is_some());
        let elsewhere = PlacedJob {
            on_this_node: false,
            ..running
        };
        assert_eq!(after_hello("n", Some(&elsewhere), NOTHING), None);
        assert_eq!(after_hello("n", None, &held), None);
    }

    fn arb_state() -> impl Strategy<Value = JobState> {
        prop::sample::select(JobState::ALL.to_vec())
    }

    proptest! {
        /// An attempt the agent holds is never re-sent nor ended, and only
        /// a job on the node (preparing or running) is acted on.
        #[test]
        fn only_a_missing_attempt_on_the_node_is_acted_on(
            state in arb_state(),
            cancel_requested in any::<bool>(),
            on_this_node in any::<bool>(),
            held in prop::collection::vec((0usize..2, 0u32..4), 0..4),
        ) {
            let job = PlacedJob { job_id: "j", attempt: 2, state, cancel_requested, on_this_node };
            let held: Vec<Held<'_>> = held
                .iter()
                .map(|(j, attempt)| Held { job_id: ["j", "k"][*j], attempt: *attempt })
                .collect();
            let holds = held.iter().any(|h| h.job_id == "j" && h.attempt == 2);
            let action = after_hello("n", Some(&job), &held);
            let missing = on_this_node && !holds && state.on_node();
            prop_assert_eq!(action.is_some(), missing);
            if action == Some(HelloAction::Resend) {
                prop_assert!(state == JobState::Preparing && !cancel_requested);
            }
        }
    }
}
