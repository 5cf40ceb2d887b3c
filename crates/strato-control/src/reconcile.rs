//! The reconcile loop: level-triggered. On every event (a submitted job, an
//! agent's report, a session opening or closing) and on a short tick it reads
//! the state, asks `strato-core` what to do, carries that out through the
//! provider and the agents' sessions, and records the cluster's allocation
//! state with its cause. After a crash it simply runs again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use strato_core::backoff::Backoff;
use strato_core::lifecycle;
use strato_core::node::health::{self, Health};
use strato_core::scale::allocation::{self, ClusterQuota, Issue, IssueCode};
use strato_core::scale::{self, NodeSnapshot, RemoveReason, ScaleInput, attached};
use strato_core::spec::ComputeType;

use crate::agents::send_assignment_with;
use crate::plane::{Plane, hash_token, new_token};
use crate::provider::{NodeLaunch, ProviderError};
use crate::store::{ClusterIssue, ClusterRecord, NodeRecord, QUEUED_READ, Store, StoreError};

pub struct Reconciler<S> {
    plane: Arc<Plane<S>>,
    /// What the pass writes through: the plane's store fenced by this
    /// replica's leader lease, so a deposed leader stores nothing.
    store: S,
    /// Provider failures per cluster: a provider that keeps failing does
    /// not spin.
    backoff: HashMap<String, Backoff>,
    /// When this control plane started: agents could not heartbeat while it
    /// was down, so their silence counts only from here.
    started_at: i64,
    /// The Prometheus targets file as last written.
    targets: Option<String>,
    /// When ended jobs past `--job-retention` were last deleted.
    retention_at: Option<i64>,
    /// Attached clusters' power commands in flight and their failures.
    power: Arc<crate::power::Power>,
    /// The queued reason each cluster's queued jobs were last given.
    reasons: HashMap<String, scale::ReasonGiven>,
}

/// How often ended jobs past the retention period are looked for.
const RETENTION_EVERY_MS: i64 = 60_000;
/// Jobs deleted in one transaction (each with its logs: kept small, so no
/// writer waits long), and the most batches in one pass.
const RETENTION_BATCH: u32 = 50;
const RETENTION_BATCHES: u32 = 10;

/// Machines a scale-up asks the provider for at once (a round); the lease
/// is checked again before each round after the first.
const LAUNCHES_AT_ONCE: usize = 16;

impl<S: Store> Reconciler<S> {
    /// A reconcile loop of the leader: `store` is the plane's store fenced
    /// by the lease (`Store::fenced`). Nodes' silence counts from now: a
    /// new leader gives every agent the heartbeat timeout to show up.
    pub fn new(plane: Arc<Plane<S>>, store: S) -> Self {
        Reconciler {
            started_at: plane.clock.now_ms(),
            plane,
            store,
            backoff: HashMap::new(),
            targets: None,
            retention_at: None,
            power: Arc::default(),
            reasons: HashMap::new(),
        }
    }

    /// Runs until `stop` resolves.
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        let tick = Duration::from_millis(self.plane.settings.config.reconcile_interval_ms);
        tokio::pin!(stop);
        loop {
            let began = tokio::time::Instant::now();
            match self.pass().await {
                Ok(()) => {
                    self.plane
                        .counters
                        .reconcile_passes
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Err(e @ StoreError::Fenced(_)) => {
                    // The lease is another's: this loop ends (the caller
                    // sees the lease go too).
                    tracing::warn!(error = %e, "no longer the leader; the reconcile loop stops");
                    return;
                }
                Err(e) => tracing::error!(error = %e, "reconcile pass failed; trying again"),
            }
            // An event asks for the next pass at once, but not sooner than
            // the last one took: under a storm of events (a burst of
            // submits, each one) passes take at most about half the time,
            // leaving the rest to the calls that asked for them.
            let took = began.elapsed();
            tokio::select! {
                _ = &mut stop => return,
                _ = async {
                    tokio::time::sleep(took).await;
                    self.plane.events.reconcile_requested().await;
                } => {}
                _ = tokio::time::sleep(tick) => {}
            }
        }
    }

    /// One pass over every cluster.
    pub async fn pass(&mut self) -> Result<(), StoreError> {
        let now = self.plane.clock.now_ms();
        let clusters = self.store.list_clusters().await?;
        let mut nodes = self.store.all_nodes().await?;
        let mut read_at = tokio::time::Instant::now();
        // The nodes as the pass began (one read of them all a pass): a
        // node added or removed now is in the file after the next pass.
        self.write_targets(&nodes);
        if self.check_node_health(&clusters, &nodes, now).await? {
            // Some became unusable: the clusters' steps see them so.
            nodes = self.store.all_nodes().await?;
            read_at = tokio::time::Instant::now();
        }
        // Each cluster's step starts from this one read of its nodes while
        // it is younger than a pass interval (earlier clusters' provider
        // calls may take seconds: then a step reads its own).
        let fresh_for = Duration::from_millis(self.plane.settings.config.reconcile_interval_ms);
        let mut by_cluster: HashMap<String, Vec<NodeRecord>> = HashMap::new();
        for node in nodes {
            by_cluster
                .entry(node.cluster.clone())
                .or_default()
                .push(node);
        }
        let names: std::collections::HashSet<String> =
            clusters.iter().map(|c| c.spec.name.clone()).collect();
        self.reasons.retain(|name, _| names.contains(name));
        self.power.forget(&names);
        for cluster in clusters {
            let read = by_cluster.remove(&cluster.spec.name).unwrap_or_default();
            let nodes = if read_at.elapsed() <= fresh_for {
                Ok(read)
            } else {
                self.store.list_nodes(&cluster.spec.name).await
            };
            // One cluster's trouble does not hold up the others.
            let step = match nodes {
                Ok(nodes) => self.reconcile_cluster(&cluster, nodes, now).await,
                Err(e) => Err(e),
            };
            match step {
                Ok(()) => {}
                Err(e @ StoreError::Fenced(_)) => return Err(e),
                Err(e) => {
                    tracing::error!(cluster = %cluster.spec.name, error = %e, "reconcile failed for the cluster");
                }
            }
        }
        for job in self.store.cancel_timed_out(now).await? {
            tracing::info!(job = %job.id, reason = %job.cancel_reason, "job past its timeout: canceling");
        }
        self.forget_old_jobs(now).await?;
        Ok(())
    }

    /// Deletes jobs that ended more than `--job-retention` ago, with their
    /// logs: at most once a minute, 50 a transaction and at most 500 a pass
    /// (a pass that found more goes on at the next pass).
    async fn forget_old_jobs(&mut self, now: i64) -> Result<(), StoreError> {
        let retention_s = self.plane.settings.config.job_retention;
        if retention_s == 0
            || self
                .retention_at
                .is_some_and(|at| now - at < RETENTION_EVERY_MS)
        {
            return Ok(());
        }
        let retention_ms = i64::try_from(retention_s.saturating_mul(1000)).unwrap_or(i64::MAX);
        let cutoff = now.saturating_sub(retention_ms);
        let (mut deleted, mut more) = (0, true);
        for _ in 0..RETENTION_BATCHES {
            let batch = self
                .store
                .delete_jobs_ended_before(cutoff, RETENTION_BATCH)
                .await?;
            deleted += batch;
            if batch < u64::from(RETENTION_BATCH) {
                more = false;
                break;
            }
        }
        if deleted > 0 {
            tracing::info!(
                jobs = deleted,
                retention_s,
                "deleted jobs past the retention period"
            );
        }
        if !more {
            self.retention_at = Some(now);
        }
        Ok(())
    }

    /// Keeps `DATA_DIR/prometheus/agents.json` (Prometheus file-based
    /// discovery) listing every node's agent.
    fn write_targets(&mut self, nodes: &[NodeRecord]) {
        let text = crate::metrics::agent_targets(nodes);
        if self.targets.as_deref() == Some(text.as_str()) {
            return;
        }
        let dir = self.plane.settings.config.data_dir.join("prometheus");
        let written = std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(dir.join("agents.json.tmp"), &text))
            .and_then(|()| std::fs::rename(dir.join("agents.json.tmp"), dir.join("agents.json")));
        match written {
            Ok(()) => self.targets = Some(text),
            Err(e) => tracing::warn!(error = %e, "writing the Prometheus targets file"),
        }
    }

    /// Nodes that never enrolled or stopped heartbeating become unusable
    /// (`node::health`); their jobs are retried or failed (by the store),
    /// and the next scale decision removes and replaces them. True when
    /// some became unusable.
    async fn check_node_health(
        &mut self,
        clusters: &[ClusterRecord],
        nodes: &[NodeRecord],
        now: i64,
    ) -> Result<bool, StoreError> {
        let mut changed = false;
        let config = &self.plane.settings.config;
        let timeouts = health::Timeouts {
            start_seconds: config.node_start_timeout,
            heartbeat_seconds: config.node_heartbeat_timeout,
        };
        // A machine woken by its resume command may take as long to come
        // back as the command may run, if that is longer.
        let resume_timeouts: HashMap<&str, u64> = clusters
            .iter()
            .filter_map(|c| {
                let power = c.spec.power.as_ref()?;
                Some((c.spec.name.as_str(), u64::from(power.timeout_seconds)))
            })
            .collect();
        for node in nodes {
            let facts = health::NodeFacts {
                state: node.state,
                enrolled: node.enrolled,
                has_job: node.run_id.is_some(),
                created_at: node.created_at,
                state_since: node.state_since,
                last_heartbeat: node.last_heartbeat,
            };
            let resume_timeout = resume_timeouts.get(node.cluster.as_str()).copied();
            let timeouts = health::Timeouts {
                start_seconds: timeouts
                    .start_seconds
                    .max(resume_timeout.unwrap_or_default()),
                ..timeouts
            };
            match health::check(&facts, timeouts, self.started_at, now) {
                Health::Unusable { cause, reason } => {
                    tracing::warn!(node = %node.node_id, cluster = %node.cluster, %reason, "node unusable");
                    if cause == health::Cause::NeverEnrolled && resume_timeout.is_some() {
                        // Its resume command ran, the machine did not come
                        // back: wake no other before the backoff.
                        self.power.fail(
                            &node.cluster,
                            now,
                            format!("node {} was resumed but {reason}", node.node_id),
                        );
                    } else if cause == health::Cause::NeverEnrolled {
                        self.backoff
                            .entry(node.cluster.clone())
                            .or_default()
                            .fail(now, format!("node {}: {reason}", node.node_id));
                    }
                    let jobs = self
                        .store
                        .node_unusable(&node.node_id, &reason, now)
                        .await?;
                    for job in jobs {
                        tracing::warn!(job = %job, node = %node.node_id, "attempt lost with its node");
                    }
                    self.plane.sessions.drop_node(&node.node_id);
                    self.plane.events.changed();
                    changed = true;
                }
                Health::Up => {
                    // A node created after the last failure came up: the
                    // provider works again.
                    if let Some(b) = self.backoff.get_mut(&node.cluster) {
                        b.succeeded_since(node.created_at);
                    }
                }
                Health::NotLive | Health::Starting => {}
            }
        }
        Ok(changed)
    }

    /// One cluster's step, from `nodes`: its nodes as the pass read them.
    async fn reconcile_cluster(
        &mut self,
        cluster: &ClusterRecord,
        mut nodes: Vec<NodeRecord>,
        now: i64,
    ) -> Result<(), StoreError> {
        let name = &cluster.spec.name;
        let plane = self.plane.clone();
        let store = &self.store.clone();
        // Placement first, so idle nodes that take work are not removed.
        let ready: Vec<String> = nodes
            .iter()
            .filter(|n| scale::takes_work(n.state, n.run_id.is_some(), n.session_replica.is_some()))
            .map(|n| n.node_id.clone())
            .collect();
        let attached = cluster.spec.compute_type == ComputeType::Attached;
        let read = scale::queued_to_read(
            attached,
            cluster.spec.max_nodes,
            busy(&nodes),
            count(ready.len()),
            QUEUED_READ,
        );
        let mut queued = store.queued_jobs(name, read).await?;
        let mut more_queued = full(&queued, read);
        let queue: Vec<(String, u32)> = queued
            .iter()
            .map(|q| (q.id.clone(), q.node_count))
            .collect();
        let placed: Vec<(String, Vec<String>)> = scale::place(&queue, &ready)
            .into_iter()
            .map(|(j, n)| (j.to_owned(), n.into_iter().map(str::to_owned).collect()))
            .collect();
        // The pass's placements in one transaction (one commit, however
        // many jobs), then the assignments go out.
        let results = if placed.is_empty() {
            Vec::new()
        } else {
            store.assign_jobs(&placed, now).await?
        };
        let mut taken = std::collections::HashSet::new();
        // The assignments go with the cluster and nodes this pass read (a
        // node's host name and address are what its enrolment stored): no
        // read a job.
        let by_id: HashMap<&str, &NodeRecord> =
            nodes.iter().map(|n| (n.node_id.as_str(), n)).collect();
        for ((job_id, node_ids), result) in placed.iter().zip(results) {
            match result {
                Ok(job) => {
                    taken.insert(job_id.as_str());
                    tracing::info!(job = %job_id, nodes = ?node_ids, attempt = job.attempt, "job placed");
                    send_assignment_with(&self.plane, &job, None, Some(cluster), |id| {
                        by_id.get(id).copied()
                    })
                    .await;
                }
                Err(why) => tracing::info!(job = %job_id, %why, "placement skipped"),
            }
        }
        if !taken.is_empty() {
            self.plane.events.changed();
        }
        if !placed.is_empty() {
            // The nodes given a job (taken or refused) as stored now, the
            // others as the pass read them: one read of those, not of
            // every node.
            let placed_on: Vec<String> = placed
                .iter()
                .flat_map(|(_, on)| on.iter().cloned())
                .collect();
            let now_stored = store.nodes_by_id(&placed_on).await?;
            nodes = with_placed_as_stored(nodes, &placed_on, now_stored);
            // What the pass placed leaves the queue (a job that queued
            // meanwhile counts at the next pass).
            queued.retain(|q| !taken.contains(q.id.as_str()));
        }
        if attached {
            return self.settle_attached(cluster, &nodes, &queued, now).await;
        }
        // A full read that placement left room beyond is read again: the
        // decision needs every job that fits. (Nodes that finished a job
        // since the pass read them count at the next pass: only the
        // placed nodes were read again.)
        if let Some(read) = scale::queued_to_read_again(
            more_queued,
            cluster.spec.max_nodes,
            busy(&nodes),
            queued.len(),
            QUEUED_READ,
        ) {
            queued = store.queued_jobs(name, read).await?;
            more_queued = full(&queued, read);
        }

        let size = cluster
            .spec
            .size()
            .map_err(|e| StoreError::Corrupt(format!("cluster {name}: {e}")))?;
        let limits = plane.settings.quota.region(&cluster.spec.location);
        let others = store.usage_of_others(&cluster.spec.location, name).await?;
        let cluster_quota = ClusterQuota {
            location: &cluster.spec.location,
            limits,
            others: &others,
            family: &size.family,
            priority: cluster.spec.vm_priority,
            vcpus_per_node: size.vcpus,
            min_nodes: cluster.spec.min_nodes,
            held: count(nodes.len()),
        };
        let backoff = self.backoff.get(name).and_then(|b| b.waiting(now));
        let provider_backoff_until = backoff.map(|(until, _)| until);
        let provider_error = backoff.map(|(_, e)| e.to_owned()).unwrap_or_default();
        let snapshots = snapshots(&nodes);
        let decision = scale::decide(&ScaleInput {
            min_nodes: cluster.spec.min_nodes,
            max_nodes: cluster.spec.max_nodes,
            idle_seconds: cluster.spec.idle_seconds_before_scaledown,
            nodes: &snapshots,
            queued_nodes: queued_nodes(&queued),
            quota_nodes_left: cluster_quota.nodes_left(),
            provider_backoff_until,
            now,
        });

        let mut remaining = nodes.len();
        for (node_id, reason) in &decision.remove {
            // A preempted node goes at its eviction time: its job has the
            // notice window to checkpoint.
            if let Some(node) = nodes.iter().find(|n| &n.node_id == node_id)
                && lifecycle::may_remove(node.evict_at, now)
                && self.remove_node(node, reason, now).await?
            {
                remaining -= 1;
            }
        }
        let creates_nodes = self.plane.provider.capabilities().creates_nodes;
        let to_add = allocation::nodes_to_add(
            &decision,
            creates_nodes,
            cluster.spec.max_nodes,
            count(remaining),
        );
        let (added, add_failed) = self.add_nodes(cluster, to_add, now).await?;
        let live = count(nodes.iter().filter(|n| scale::is_live(n.state)).count());
        let settled = allocation::settle(&allocation::Pass {
            decision: &decision,
            creates_nodes,
            live,
            added,
            add_failed: add_failed.as_ref(),
            quota: &cluster_quota,
            provider_error: &provider_error,
            jobs_queued: !queued.is_empty() || more_queued,
            now,
        });
        self.record(cluster, settled, live, now).await
    }

    /// An attached cluster's pass (`scale::attached`): detached machines
    /// whose work is done leave, nothing is created or removed for demand,
    /// and queued jobs say what they wait for.
    async fn settle_attached(
        &mut self,
        cluster: &ClusterRecord,
        nodes: &[NodeRecord],
        queued: &[crate::store::QueuedJob],
        now: i64,
    ) -> Result<(), StoreError> {
        let name = &cluster.spec.name;
        let snapshots = snapshots(nodes);
        let backoff = self.power.backoff(name, now);
        let power_dir = self.plane.settings.config.power_commands_dir.clone();
        let power = cluster.spec.power.as_ref().filter(|_| power_dir.is_some());
        let pass = attached::settle(&attached::AttachedInput {
            cluster: name,
            min_nodes: cluster.spec.min_nodes,
            max_nodes: cluster.spec.max_nodes,
            idle_seconds: cluster.spec.idle_seconds_before_scaledown,
            nodes: &snapshots,
            queued_nodes: queued_nodes(queued),
            power: power.is_some(),
            power_unavailable: cluster.spec.power.is_some() && power_dir.is_none(),
            power_backoff: backoff.as_ref().map(|(until, e)| (*until, e.as_str())),
            now,
        });
        if let (Some(commands), Some(dir)) = (power, &power_dir) {
            let runs = pass
                .resume
                .iter()
                .map(|id| (crate::power::Action::Resume, id, &commands.resume_command))
                .chain(
                    pass.suspend
                        .iter()
                        .map(|id| (crate::power::Action::Suspend, id, &commands.suspend_command)),
                );
            for (action, node_id, command) in runs {
                // What the agent reported: handed on only if it is a host
                // name (the operator's script may not quote it).
                let hostname = nodes
                    .iter()
                    .find(|n| &n.node_id == node_id)
                    .map(|n| n.hostname.clone())
                    .filter(|h| strato_core::naming::is_host_name(h))
                    .unwrap_or_default();
                let run = crate::power::Run {
                    action,
                    cluster: name.clone(),
                    node_id: node_id.clone(),
                    hostname,
                    command: command.clone(),
                    timeout: Duration::from_secs(u64::from(commands.timeout_seconds)),
                };
                self.power.start(&self.plane, &self.store, dir, run).await;
            }
        }
        for node_id in &pass.remove {
            // Strato never takes an attached machine down: the record goes,
            // and with it the agent's session.
            self.plane.sessions.drop_node(node_id);
            self.store.delete_node(node_id, now).await?;
            tracing::info!(cluster = %name, node = %node_id, "detached: node removed");
            self.plane.counters.scaled(name, "down", "detached");
            self.plane.events.changed();
        }
        self.record(cluster, pass.allocation, count(nodes.len()), now)
            .await
    }

    /// Records what a pass settled: the queued jobs' reason, the allocation
    /// state, target and issues.
    async fn record(
        &mut self,
        cluster: &ClusterRecord,
        settled: allocation::ClusterAllocation,
        live: u32,
        now: i64,
    ) -> Result<(), StoreError> {
        let name = &cluster.spec.name;
        if let Some(reason) = &settled.queued_reason {
            let last = self.reasons.get(name);
            let sweep = scale::reason_sweep(last, reason, now);
            let since = match sweep {
                scale::ReasonSweep::All => None,
                scale::ReasonSweep::Since(at) => Some(at),
            };
            self.store.set_queued_reason(name, reason, since).await?;
            let all_at = match (sweep, last) {
                (scale::ReasonSweep::Since(_), Some(l)) => l.all_at,
                _ => now,
            };
            self.reasons.insert(
                name.clone(),
                scale::ReasonGiven {
                    reason: reason.clone(),
                    all_at,
                    at: now,
                },
            );
        }
        let store = &self.store;
        if settled.state != cluster.allocation_state
            || settled
                .issues
                .iter()
                .map(|i| i.code.as_str())
                .ne(cluster.errors.iter().map(|i| i.code.as_str()))
        {
            tracing::info!(
                cluster = %name, state = settled.state.as_str(), target = settled.target, current = live,
                issues = ?settled.issues.iter().map(|i| i.code.as_str()).collect::<Vec<_>>(),
                "allocation state"
            );
            let issues: Vec<&str> = settled.issues.iter().map(|i| i.code.as_str()).collect();
            self.plane.scale_events.record(
                name,
                now,
                format!(
                    "allocation {}: {live} of target {} nodes{}",
                    settled.state.as_str(),
                    settled.target,
                    if issues.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", issues.join(", "))
                    }
                ),
            );
        }
        let issues = settled
            .issues
            .into_iter()
            .map(|i| ClusterIssue {
                code: i.code.as_str().to_owned(),
                message: i.message,
                since: now,
            })
            .collect();
        store
            .set_allocation(name, settled.state, settled.target, issues, now)
            .await
    }

    /// Adds `count` nodes to the cluster: their records in one transaction
    /// when all fit the quota (else one by one, as many as fit), then each
    /// machine from the provider. Returns how many were added and, if not
    /// all, why.
    async fn add_nodes(
        &mut self,
        cluster: &ClusterRecord,
        count: u32,
        now: i64,
    ) -> Result<(u32, Option<Issue>), StoreError> {
        if count == 0 {
            return Ok((0, None));
        }
        let name = &cluster.spec.name;
        // Single use, and only while the node may still enrol: one that has
        // not within --node-start-timeout is replaced with a new token.
        let start_timeout_ms = i64::try_from(
            self.plane
                .settings
                .config
                .node_start_timeout
                .saturating_mul(1000),
        )
        .unwrap_or(i64::MAX);
        let join_expires_at = now.saturating_add(start_timeout_ms);
        let limits = &self.plane.settings.quota;
        let fresh = || {
            let node_id = format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
            (node_id, new_token())
        };
        let batch: Vec<(String, String)> = (0..count).map(|_| fresh()).collect();
        let hashed: Vec<(String, String)> = batch
            .iter()
            .map(|(id, token)| (id.clone(), hash_token(token)))
            .collect();
        let mut made: Vec<(NodeRecord, String)> = Vec::new();
        let mut quota_issue = None;
        match self
            .store
            .create_nodes(name, &hashed, join_expires_at, limits, now)
            .await
        {
            Ok(nodes) => made.extend(nodes.into_iter().zip(batch.into_iter().map(|(_, t)| t))),
            // Not all fit: as many as do, one by one.
            Err(StoreError::Quota(_)) => {
                for (node_id, token) in batch {
                    match self
                        .store
                        .create_node(
                            name,
                            &node_id,
                            &hash_token(&token),
                            join_expires_at,
                            limits,
                            now,
                        )
                        .await
                    {
                        Ok(node) => made.push((node, token)),
                        Err(StoreError::Quota(e)) => {
                            quota_issue = Some(Issue::quota(&e));
                            break;
                        }
                        Err(e) => {
                            self.forget_unlaunched(made.into_iter(), now).await;
                            return Err(e);
                        }
                    }
                }
            }
            Err(e) => return Err(e),
        }
        let mut added = 0;
        let mut made = made.into_iter();
        loop {
            let round: Vec<(NodeRecord, String)> = made.by_ref().take(LAUNCHES_AT_ONCE).collect();
            if round.is_empty() {
                break;
            }
            // A long scale-up checks before each round that this replica
            // still leads: a deposed one asks the provider for nothing more.
            if added > 0
                && let Err(e) = self.store.check_lease().await
            {
                tracing::warn!(cluster = %name, error = %e, "scale-up stopped");
                self.forget_unlaunched(round.into_iter().chain(made), now)
                    .await;
                return Err(e);
            }
            // The round's machines are asked for at once (a cloud's create
            // call takes seconds), their answers recorded in order.
            let launches: Vec<NodeLaunch> = round
                .into_iter()
                .map(|(node, join_token)| NodeLaunch {
                    node_id: node.node_id,
                    cluster: name.clone(),
                    join_token,
                })
                .collect();
            let plane = self.plane.clone();
            let answers = futures_util::future::join_all(
                launches
                    .iter()
                    .map(|launch| plane.provider.create_node(launch)),
            )
            .await;
            // Every answer of the round is recorded, even past a store
            // error (those machines were asked for).
            let (mut failed, mut store_error) = (None, None);
            for (launch, answer) in launches.iter().zip(answers) {
                match self.launched(launch, &answer, now).await {
                    Ok(()) if answer.is_ok() => added += 1,
                    Ok(()) => {}
                    Err(e) => {
                        // This node's machine may exist (its pid not
                        // written): its record stays.
                        tracing::warn!(node = %launch.node_id, error = %e, "recording the provider's answer");
                        store_error = store_error.or(Some(e));
                    }
                }
                if let Err(e) = answer {
                    failed.get_or_insert(e);
                }
            }
            // One provider failure (however many of the round's calls it
            // failed) grows the backoff once, also when recording it
            // failed.
            if let Some(e) = &failed {
                self.backoff
                    .entry(name.clone())
                    .or_default()
                    .fail(now, e.to_string());
            }
            if let Some(e) = store_error {
                // The rest are never asked for (a deposed leader's deletes
                // are refused too: their records go at their start timeout).
                tracing::warn!(cluster = %name, error = %e, "scale-up stopped");
                self.forget_unlaunched(made, now).await;
                return Err(e);
            }
            if let Some(e) = failed {
                // The provider fails: the rest are not asked for.
                self.forget_unlaunched(made, now).await;
                let code = match e {
                    ProviderError::NoProvider => IssueCode::NoNodeProvider,
                    _ => IssueCode::ProviderError,
                };
                return Ok((added, Some(Issue::new(code, e.to_string()))));
            }
        }
        Ok((added, quota_issue))
    }

    /// Deletes the records of nodes whose machines were never asked for
    /// (best effort: what is left never enrols, and goes at its start
    /// timeout).
    async fn forget_unlaunched(
        &mut self,
        nodes: impl Iterator<Item = (NodeRecord, String)>,
        now: i64,
    ) {
        for (node, _) in nodes {
            if let Err(e) = self.store.delete_node(&node.node_id, now).await {
                tracing::warn!(node = %node.node_id, error = %e, "cannot delete the record of a node never asked for; it goes at its start timeout");
                return;
            }
        }
    }

    /// Records the provider's answer for the machine of a node just
    /// recorded; when it could not make one, the record goes (the caller
    /// grows the cluster's provider backoff, once a round).
    async fn launched(
        &mut self,
        launch: &NodeLaunch,
        answer: &Result<Option<u32>, ProviderError>,
        now: i64,
    ) -> Result<(), StoreError> {
        let (name, node_id) = (&launch.cluster, &launch.node_id);
        match answer {
            Ok(pid) => {
                if let Some(pid) = *pid {
                    self.store.set_node_pid(node_id, pid).await?;
                }
                tracing::info!(cluster = %name, node = %node_id, "scale up: node added");
                self.plane.scale_events.record(
                    name,
                    now,
                    format!("scale up: node {node_id} added"),
                );
                self.plane.counters.scaled(name, "up", "demand");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(cluster = %name, node = %node_id, error = %e, "provider could not create the node");
                self.plane.scale_events.record(
                    name,
                    now,
                    format!("scale up failed: the provider could not create node {node_id}: {e}"),
                );
                self.store.delete_node(node_id, now).await
            }
        }
    }

    /// Takes a node down and forgets it; false when the provider failed (the
    /// record stays, and the next pass tries again).
    async fn remove_node(
        &mut self,
        node: &NodeRecord,
        reason: &RemoveReason,
        now: i64,
    ) -> Result<bool, StoreError> {
        let why = reason.describe(&node.reason);
        // The machine goes before its record: a deposed leader must not
        // take it down (its later write would be refused, too late).
        self.store.check_lease().await?;
        if let Err(e) = self.plane.provider.delete_node(&node.into()).await {
            // Keep the record so the next pass tries again.
            tracing::warn!(node = %node.node_id, error = %e, "provider could not remove the node");
            return Ok(false);
        }
        self.plane.sessions.drop_node(&node.node_id);
        self.plane.scheduled_events.forget(&node.node_id);
        self.store.delete_node(&node.node_id, now).await?;
        tracing::info!(cluster = %node.cluster, node = %node.node_id, reason = %why, "scale down: node removed");
        self.plane.scale_events.record(
            &node.cluster,
            now,
            format!("scale down: node {} removed ({why})", node.node_id),
        );
        self.plane
            .counters
            .scaled(&node.cluster, "down", reason.label());
        self.plane.events.changed();
        Ok(true)
    }
}

/// The nodes the queued jobs need (a gang of N counts N).
fn queued_nodes(queued: &[crate::store::QueuedJob]) -> u32 {
    queued
        .iter()
        .map(|q| q.node_count)
        .fold(0u32, u32::saturating_add)
}

/// The pass's nodes with those of `placed_on` replaced by how they are
/// stored now (`now_stored`); one no longer stored is left out.
fn with_placed_as_stored(
    nodes: Vec<NodeRecord>,
    placed_on: &[String],
    now_stored: Vec<NodeRecord>,
) -> Vec<NodeRecord> {
    let placed_on: std::collections::HashSet<&str> = placed_on.iter().map(String::as_str).collect();
    let mut now_stored: HashMap<String, NodeRecord> = now_stored
        .into_iter()
        .map(|n| (n.node_id.clone(), n))
        .collect();
    nodes
        .into_iter()
        .filter_map(|n| {
            if placed_on.contains(n.node_id.as_str()) {
                now_stored.remove(&n.node_id)
            } else {
                Some(n)
            }
        })
        .collect()
}

/// A read of `read` jobs that came back full may have left jobs in the
/// database.
fn full(queued: &[crate::store::QueuedJob], read: u32) -> bool {
    queued.len() >= usize::try_from(read).unwrap_or(usize::MAX)
}

/// The live nodes holding a job (the decision's busy nodes).
fn busy(nodes: &[NodeRecord]) -> u32 {
    count(
        nodes
            .iter()
            .filter(|n| scale::is_busy(n.state, n.run_id.is_some()))
            .count(),
    )
}

/// The nodes as the scale decision sees them.
fn snapshots(nodes: &[NodeRecord]) -> Vec<NodeSnapshot> {
    nodes
        .iter()
        .map(|n| NodeSnapshot {
            node_id: n.node_id.clone(),
            state: n.state,
            has_job: n.run_id.is_some(),
            idle_since: n.idle_since,
            state_since: n.state_since,
        })
        .collect()
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
