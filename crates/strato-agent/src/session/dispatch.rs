//! What the control plane asks of this node during a session: assign an
//! attempt, cancel it, release it once its end is stored, and run another
//! rank's remote command.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use strato_core::naming::container_name;
use strato_proto::v1::{self, control_message::Body as Down};
use strato_runtime::{ContainerRuntime, LABEL_CONTROL_PLANE, LABEL_JOB};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::attempt::{ImagePull, Staging, container_spec, give_gpus, start};
use super::mounts;
use super::staging::{DataPlan, attempt_dir};
use super::{AgentConfig, IdentityContext, job_key, node_fault, report};
use crate::gang;
use crate::identity::Vending;

/// One session's attempts on this node and the stops under way.
pub(super) struct Dispatch<'a, R> {
    pub config: &'a AgentConfig,
    pub runtime: &'a Arc<R>,
    pub identity: &'a IdentityContext,
    pub node_id: &'a str,
    pub cluster: &'a str,
    pub tx: &'a mpsc::Sender<v1::AgentMessage>,
    /// By [`job_key`]: the task starting or following each attempt.
    pub attempts: HashMap<String, JoinHandle<()>>,
    /// Containers being stopped, by name.
    pub stopping: HashSet<String>,
    /// Where a finished stop says so.
    pub stopped: mpsc::UnboundedSender<String>,
}

/// A session that ends, or is dropped (a simulated node taken down), takes
/// its attempts' tasks with it: a new session follows what still runs.
impl<R> Drop for Dispatch<'_, R> {
    fn drop(&mut self) {
        for task in self.attempts.values() {
            task.abort();
        }
    }
}

impl<R: ContainerRuntime> Dispatch<'_, R> {
    /// Handles one message from the control plane.
    pub async fn handle(&mut self, body: Option<Down>) {
        match body {
            Some(Down::Assign(a)) => self.assign(a).await,
            Some(Down::Cancel(c)) => self.cancel(c).await,
            Some(Down::Release(r)) => self.release(&r),
            Some(Down::Exec(x)) => {
                let container = container_name(self.node_id, &x.job_id, x.attempt);
                tracing::info!(node = %self.node_id, job = %x.job_id, attempt = x.attempt, "exec from another rank");
                tokio::spawn(gang::run_exec(
                    self.runtime.clone(),
                    container,
                    x,
                    self.tx.clone(),
                ));
            }
            Some(Down::ExecOutput(o)) => self.identity.relay.output(&o),
            Some(Down::ExecExit(x)) => self.identity.relay.exit(&x),
            None => {}
        }
    }

    async fn assign(&mut self, a: v1::JobAssignment) {
        let (identity, tx) = (self.identity, self.tx);
        let key = job_key(&a.job_id, a.attempt);
        if self.attempts.get(&key).is_some_and(|t| !t.is_finished()) {
            return;
        }
        let Some(spec) = a.spec.clone() else { return };
        let pull = ImagePull::of(&a);
        let mut container = container_spec(self.node_id, self.cluster, &a.job_id, a.attempt, &spec);
        if let Some(id) = &self.config.control_plane_id {
            container
                .labels
                .insert(LABEL_CONTROL_PLANE.to_owned(), id.clone());
        }
        // A GPU node's job gets all its GPUs, where the engine can hand
        // them over (a GPU size's node without that is unusable).
        let gpus = identity.gpus.sample();
        if !gpus.is_empty() && self.runtime.gpu_support().await.unwrap_or(false) {
            let uuids: Vec<String> = gpus.into_iter().map(|g| g.uuid).collect();
            give_gpus(&mut container, &uuids);
        }
        container.pids_limit = self.config.job_pids_limit;
        container.new_privileges = self.config.allow_new_privileges;
        // The attempt's own secret for the identity endpoint.
        let secret = Vending::new_secret();
        container.env.extend(
            identity
                .endpoint
                .environment(&secret, &a.default_identity_client_id),
        );
        if a.gang.len() > 1 || gang::distribution(&spec) != strato_core::job::Distribution::None {
            let dir = attempt_dir(&identity.work_dir, &a.job_id, a.attempt).join("gang");
            let exec_endpoint = format!("{}/strato/exec", identity.endpoint.base);
            if let Err(e) = gang::wire(
                &mut container,
                &identity.gang,
                self.cluster,
                &a,
                &spec,
                &dir,
                &exec_endpoint,
            ) {
                tracing::warn!(job = %a.job_id, attempt = a.attempt, error = %e, "cannot wire the gang");
                let _ = tx
                    .send(node_fault(
                        &a.job_id,
                        a.attempt,
                        format!("cannot write the hostfile: {e}"),
                    ))
                    .await;
                return;
            }
            identity
                .vending
                .set_gang(&a.job_id, a.attempt, gang::hosts(&identity.gang, &a.gang));
        }
        tracing::info!(node = %self.node_id, job = %a.job_id, attempt = a.attempt, image = %spec.image, "job assigned");
        let plan = DataPlan::of(&spec);
        let started = start(
            self.runtime.clone(),
            Staging::of(identity),
            plan,
            pull,
            container,
            a.job_id.clone(),
            a.attempt,
            tx.clone(),
        );
        let (job_id, attempt, tx) = (a.job_id, a.attempt, tx.clone());
        let task = tokio::spawn(async move {
            use futures_util::FutureExt as _;
            // A bug that panics must not leave the attempt preparing for
            // ever: it ends as the node's fault, and is retried.
            if std::panic::AssertUnwindSafe(started)
                .catch_unwind()
                .await
                .is_err()
            {
                tracing::error!(job = %job_id, attempt, "the attempt's task panicked");
                let _ = tx
                    .send(super::node_fault(
                        &job_id,
                        attempt,
                        "the agent failed while starting the attempt (see its log)".to_owned(),
                    ))
                    .await;
            }
        });
        self.attempts.insert(key, task);
    }

    async fn cancel(&mut self, c: v1::JobCancellation) {
        let key = container_name(self.node_id, &c.job_id, c.attempt);
        if self.stopping.contains(&key) {
            return;
        }
        // Only a running container can be stopped; the control plane
        // sends the cancellation again until the attempt ends.
        let Ok(containers) = self.runtime.list(LABEL_JOB, &c.job_id).await else {
            return;
        };
        let mine = containers
            .iter()
            .find(|x| x.name.trim_start_matches('/') == key);
        if mine.is_none() {
            // No container (the assignment never arrived, or its data
            // is still being staged): stop the start and say so, so
            // the node does not stay busy with an attempt that ended.
            if let Some(task) = self.attempts.remove(&job_key(&c.job_id, c.attempt)) {
                task.abort();
            }
            self.identity.vending.revoke(&c.job_id, c.attempt);
            tracing::info!(node = %self.node_id, job = %c.job_id, attempt = c.attempt, "stopped before its container started");
            let _ = self
                .tx
                .send(report(
                    &c.job_id,
                    c.attempt,
                    v1::JobState::Canceled,
                    None,
                    "stopped before its container started".to_owned(),
                ))
                .await;
            return;
        }
        let running = mine.is_some_and(|x| x.running);
        if running {
            self.stopping.insert(key.clone());
            tracing::info!(node = %self.node_id, job = %c.job_id, attempt = c.attempt, "stopping a canceled job");
            let runtime = self.runtime.clone();
            let grace = Duration::from_secs(u64::from(c.grace_seconds));
            let done = self.stopped.clone();
            tokio::spawn(async move {
                if let Err(e) = runtime.stop(&key, grace).await {
                    tracing::warn!(container = %key, error = %e, "stop failed");
                }
                let _ = done.send(key);
            });
        }
    }

    fn release(&mut self, r: &v1::JobRelease) {
        let identity = self.identity;
        identity.vending.revoke(&r.job_id, r.attempt);
        if let Some(task) = self.attempts.remove(&job_key(&r.job_id, r.attempt)) {
            task.abort();
        }
        let key = container_name(self.node_id, &r.job_id, r.attempt);
        self.stopping.remove(&key);
        let runtime = self.runtime.clone();
        let dir = attempt_dir(&identity.work_dir, &r.job_id, r.attempt);
        let image = identity.mounts.image.clone();
        tokio::spawn(async move {
            match runtime.remove(&key).await {
                Ok(()) => tracing::info!(container = %key, "released and removed"),
                Err(e) => tracing::warn!(container = %key, error = %e, "remove failed"),
            }
            // Mounts first (an attempt canceled while it prepared may hold
            // some); the removal never enters one that is left.
            let _ = mounts::unmount_data(runtime.as_ref(), &image, &key, false).await;
            let left = strato_runtime::remove_tree_on_one_filesystem(&dir);
            if left > 0 {
                tracing::warn!(dir = %dir.display(), left, "could not remove all of the attempt's directory");
            }
        });
    }
}
