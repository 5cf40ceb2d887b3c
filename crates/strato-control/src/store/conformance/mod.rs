//! The store's conformance suite: what every `Store` must do, written
//! against the trait alone, so that each backend passes the same cases.
//!
//! A backend instantiates it once with a function that makes a fresh, empty
//! store and something to keep alive while the case runs (a temporary
//! directory, a schema to drop):
//!
//! ```ignore
//! strato_control::store_conformance_suite!(|| async {
//!     let dir = tempfile::tempdir().expect("tempdir");
//!     let store = SqlStore::open(dir.path()).await.expect("open");
//!     (store, dir)
//! });
//! ```
//!
//! That expands into one `#[tokio::test]` per case. A case takes its store
//! by value, passes every time explicitly (`now`, in milliseconds) and
//! sleeps never (but one: the lease is timed by the database's clock, and
//! `a_lease_that_runs_out_is_taken_over` waits 1 ms of it). Available to this crate's tests and, with the `test-util`
//! feature, to other crates.

pub mod access;
pub mod attached;
pub mod clusters;
pub mod gangs;
pub mod jobs;
pub mod nodes;
pub mod postgres;
pub mod replicas;

use strato_core::job::{AttemptEnd, Distribution, JobSpec};
use strato_core::quota::{QuotaLimits, RegionQuota};
use strato_core::spec::{ClusterRequest, ClusterSpec, validate};

use super::{AttemptReport, EnrollReport, Enrolment, JobRecord, NodeRecord, Store};

/// Expands into one `#[tokio::test]` per conformance case, each on a store
/// made by `$fresh`: a closure returning a future of `(store, guard)`; the
/// guard is dropped after the case.
#[macro_export]
macro_rules! store_conformance_suite {
    ($fresh:expr) => {
        $crate::store_conformance_suite!(@cases $fresh;
            clusters: [
                cluster_create_get_list_update_delete,
                cluster_names_are_unique_regardless_of_case,
                cluster_create_over_quota_stores_nothing,
                cluster_update_checks_quota_for_growth_only,
                two_creates_cannot_both_take_the_last_cores,
                nodes_count_against_the_quota_beyond_min_nodes,
                a_scale_ups_nodes_are_made_together_or_not_at_all,
                low_priority_and_dedicated_quotas_do_not_touch,
                identities_are_replaced_in_one_update,
                allocation_keeps_its_since_while_unchanged,
                max_nodes_cannot_drop_below_an_unfinished_gang,
                delete_is_refused_while_jobs_are_unfinished,
                datastores_create_get_list_delete,
                registries_take_a_name_and_a_server_once,
            ],
            nodes: [
                node_enrols_becomes_idle_and_heartbeats,
                enrolling_again_keeps_the_state_and_replaces_the_session,
                an_expired_join_token_is_refused,
                an_unusable_node_refuses_enrolment,
                a_lost_node_ends_its_attempt_and_the_job_retries,
                a_removed_node_ends_its_attempt_as_lost,
                a_preempted_node_keeps_its_job_until_it_is_evicted,
                preemptions_are_counted_apart_and_limited,
                an_exit_on_an_evicted_node_is_a_preemption,
                nodes_read_by_id_are_those_that_exist_as_get_node_reads_them,
            ],
            jobs: [
                job_runs_to_completion,
                reports_are_stored_together_and_answered_one_by_one,
                reports_in_a_batch_store_what_one_by_one_stores,
                an_ended_job_is_deleted_with_its_logs_and_a_live_one_is_not,
                jobs_ended_before_the_cutoff_are_deleted_oldest_first,
                a_failing_job_retries_until_max_retries_then_fails,
                an_attempt_that_cannot_start_is_not_retried,
                cancel_while_queued,
                cancel_while_running_overrides_the_reported_end,
                a_job_past_its_timeout_is_canceled_saying_so,
                cancel_of_a_finished_job_changes_nothing,
                stale_reports_are_answered_stale_or_release,
                assign_is_all_or_nothing,
                placements_are_stored_together_and_refused_one_by_one,
                placements_of_a_large_pass_see_the_earlier_ones,
                submit_needs_a_cluster_and_stores_its_canonical_name,
                writes_at_once_take_turns,
                job_counts_and_lists,
                queued_reason_is_set_on_queued_jobs_only,
            ],
            access: [
                tokens_are_found_by_hash_listed_and_revoked_once,
                role_assignments_are_unique_per_principal_role_and_scope,
            ],
            attached: [
                machines_join_with_the_clusters_token_within_its_uses_and_max_nodes,
                a_lost_machine_comes_back_when_its_agent_does,
                a_detached_machine_finishes_its_job_or_queues_it_again,
                power_steps_move_only_from_their_state,
                join_tokens_are_listed_revoked_and_bounded,
            ],
            gangs: [
                a_gang_ends_as_a_whole_and_frees_each_node_when_its_container_stops,
                an_ended_gang_is_kept_while_a_rank_still_stops,
                a_gang_runs_once_every_rank_runs,
                a_gang_completes_once_every_rank_exited_0,
                an_mpi_worker_ending_first_fails_the_attempt,
                a_lost_rank_ends_the_gang,
                logs_keep_arrival_order_rank_and_sequence,
                logs_of_an_attempt_the_node_does_not_run_are_refused,
                lines_past_the_bound_leave_one_marker_and_nothing_more,
                log_messages_stored_together_are_refused_one_by_one,
            ],
            replicas: [
                the_lease_is_held_by_one_replica_renewed_and_given_up,
                a_lease_that_runs_out_is_taken_over,
                a_deposed_leaders_writes_are_refused_and_store_nothing,
                the_replica_holding_a_session_is_recorded_until_it_ends,
                node_sessions_say_what_the_nodes_say,
            ],
        );
    };
    (@cases $fresh:expr; $($module:ident: [$($case:ident),* $(,)?]),* $(,)?) => {
        $($(
            #[::tokio::test]
            async fn $case() {
                let fresh = $fresh;
                let (store, guard) = fresh().await;
                $crate::store::conformance::$module::$case(store).await;
                drop(guard);
            }
        )*)*
    };
}

/// The region every case's clusters are in.
pub const REGION: &str = "local";

/// A valid cluster spec of `size` with `min..=max` nodes.
pub fn cluster(name: &str, size: &str, min: u32, max: u32) -> ClusterSpec {
    validate(
        &ClusterRequest {
            name: name.into(),
            vm_size: Some(size.into()),
            min_nodes: Some(min),
            max_nodes: Some(max),
            inter_node_communication: Some(true),
            ..Default::default()
        },
        REGION,
    )
    .expect("valid spec")
}

/// Quota limits of `family_cores` dedicated vCPUs per family.
pub fn limits(family_cores: u64) -> QuotaLimits {
    QuotaLimits {
        default: RegionQuota {
            dedicated_cores_per_family: family_cores,
            ..RegionQuota::default()
        },
        ..QuotaLimits::default()
    }
}

/// A single-node job on `cluster` with three retries and three preemptions.
pub fn job(cluster: &str) -> JobSpec {
    JobSpec {
        cluster: cluster.into(),
        display_name: String::new(),
        image: "img".into(),
        command: vec!["true".into()],
        environment: Default::default(),
        cpu: 0.0,
        memory_mb: 0,
        max_retries: 3,
        max_preemptions: 3,
        inputs: Vec::new(),
        outputs: Vec::new(),
        node_count: 1,
        process_count_per_node: 1,
        distribution: Distribution::None,
        user: String::new(),
        pull: strato_core::job::PullPolicy::IfNotPresent,
        experiment_name: String::new(),
        description: String::new(),
        tags: Default::default(),
        timeout_seconds: None,
        code: None,
        artifacts: None,
    }
}

/// A job of `nodes` nodes with two processes each.
pub fn gang(cluster: &str, nodes: u32, distribution: Distribution) -> JobSpec {
    JobSpec {
        node_count: nodes,
        process_count_per_node: 2,
        distribution,
        max_retries: 1,
        ..job(cluster)
    }
}

/// The public key hash a case's agents enrol with.
pub const AGENT_KEY: &str = "key-of-the-agent";

/// When the join tokens of a case's nodes expire.
pub const JOIN_EXPIRES: i64 = 1_000;

/// The join token hash a case gives node `id`.
pub fn join_token(id: &str) -> String {
    format!("join-{id}")
}

/// The session token hash a case's node `id` enrols with.
pub fn session_token(id: &str) -> String {
    format!("session-{id}")
}

/// The ids of at most `limit` of a cluster's queued jobs, oldest first.
pub async fn queued_ids<S: Store>(store: &S, cluster: &str, limit: u32) -> Vec<String> {
    store
        .queued_jobs(cluster, limit)
        .await
        .expect("queue")
        .into_iter()
        .map(|q| q.id)
        .collect()
}

/// Creates cluster `name` (Standard_D2_v2, 0 to 4 nodes) with generous
/// quota at time 1.
pub async fn given_cluster<S: Store>(store: &S, name: &str) {
    store
        .create_cluster(
            cluster(name, "Standard_D2_v2", 0, 4),
            Vec::new(),
            &limits(100),
            1,
        )
        .await
        .expect("create cluster");
}

/// Creates and enrols nodes `ids` of `cluster` at time 2: they are idle.
pub async fn given_idle_nodes<S: Store>(store: &S, cluster: &str, ids: &[&str]) -> Vec<String> {
    for id in ids {
        store
            .create_node(cluster, id, &join_token(id), JOIN_EXPIRES, &limits(100), 2)
            .await
            .expect("create node");
        store
            .enroll(
                Enrolment::JoinToken {
                    token: &join_token(id),
                    key: AGENT_KEY,
                },
                &session_token(id),
                &EnrollReport::default(),
                2,
            )
            .await
            .expect("enrol");
    }
    ids.iter().map(|id| (*id).to_owned()).collect()
}

/// Assigns queued job `id` to `nodes` and reports each rank running, at
/// time `now`; returns the job as stored then.
pub async fn given_running<S: Store>(store: &S, id: &str, nodes: &[String], now: i64) -> JobRecord {
    let job = store.assign_job(id, nodes, now).await.expect("assign");
    assert_eq!(
        store.get_job(id).await.expect("job"),
        job,
        "what assign answers is what it stored"
    );
    for n in nodes {
        store
            .report_attempt(n, id, job.attempt, AttemptReport::Running, now)
            .await
            .expect("running");
    }
    store.get_job(id).await.expect("job")
}

/// Jobs `a` and `b` of cluster `cpu` (made here), attempt 1 of each
/// placed at time 4, on nodes `cpu-n0` and `cpu-n1`.
pub async fn given_a_and_b_placed<S: Store>(store: &S) {
    given_cluster(store, "cpu").await;
    let nodes = given_idle_nodes(store, "cpu", &["cpu-n0", "cpu-n1"]).await;
    given_placed(store, &["a", "b"], &nodes).await;
}

/// Each of `jobs` (of cluster `cpu`) submitted at time 3 and its attempt 1
/// placed at time 4 on the node of `nodes` at its index.
pub async fn given_placed<S: Store>(store: &S, jobs: &[&str], nodes: &[String]) {
    for (id, n) in jobs.iter().zip(nodes) {
        store
            .submit_job(id, job("cpu"), "", 3)
            .await
            .expect("submit");
        store
            .assign_job(id, std::slice::from_ref(n), 4)
            .await
            .expect("assign");
    }
}

/// What node `node` says of attempt 1 of `job`, as a batch takes it.
pub fn report_of(node: &str, job: &str, report: AttemptReport) -> crate::store::NodeReport {
    crate::store::NodeReport {
        node_id: node.into(),
        job_id: job.into(),
        attempt: 1,
        report,
    }
}

/// A report that the container exited with `code`.
pub fn exited(code: i64) -> AttemptReport {
    AttemptReport::Ended(AttemptEnd::Exited(code), format!("exited with code {code}"))
}

/// Node `id` as stored.
pub async fn node<S: Store>(store: &S, id: &str) -> NodeRecord {
    store
        .all_nodes()
        .await
        .expect("nodes")
        .into_iter()
        .find(|n| n.node_id == id)
        .unwrap_or_else(|| panic!("node {id} is not stored"))
}

/// The states a job went through, in order.
pub fn states(job: &JobRecord) -> Vec<strato_core::job::JobState> {
    job.transitions.iter().map(|t| t.state).collect()
}

/// The reason of a job's last transition.
pub fn last_reason(job: &JobRecord) -> &str {
    job.transitions.last().map_or("", |t| t.reason.as_str())
}
