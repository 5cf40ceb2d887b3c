//! The in-process tier: the control plane (`strato_control::serve`) runs
//! inside the test process on a temporary store, with a [`ManualClock`] and
//! nodes from a [`SimProvider`] (real agent sessions on `FakeRuntime`s).
//! No Docker, no binaries, no sleeping: tests move the clock and wait for
//! the conditions that follow.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::Channel;
use anyhow::Context as _;
use clap::Parser as _;
use strato_control::config::Config;
use strato_proto::v1;
use strato_proto::v1::compute_service_client::ComputeServiceClient;
use strato_proto::v1::job_service_client::JobServiceClient;
use strato_runtime::ManualClock;

use crate::sim::{SimFleet, SimProvider};

/// A bound on any wait in this tier; reached only when something is broken.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A control plane in this process.
pub struct InProcess {
    pub clock: Arc<ManualClock>,
    pub fleet: Arc<SimFleet>,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    /// Its admin.conf: the CA and the Owner's token.
    admin: strato_core::client_config::ClientConfig,
    channel: Channel,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl InProcess {
    /// Starts a control plane with these extra flags (as `strato-control`
    /// takes them) over the tier's defaults: a 50 ms reconcile pass and
    /// timeouts long enough that only a test's clock moves trip them.
    pub async fn start(extra_args: &[&str]) -> anyhow::Result<Self> {
        // What the control plane and agents log, shown with a failing test.
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .try_init();
        let dir = tempfile::tempdir()?;
        let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let (grpc, http) = (grpc_listener.local_addr()?, http_listener.local_addr()?);
        let data_dir = dir.path().join("data");
        let mut args = vec![
            "strato-control".to_owned(),
            "--data-dir".to_owned(),
            data_dir.display().to_string(),
            "--grpc-listen".to_owned(),
            grpc.to_string(),
            "--http-listen".to_owned(),
            http.to_string(),
        ];
        let defaults = [
            ("--reconcile-interval-ms", "50"),
            ("--heartbeat-interval", "1"),
            ("--node-start-timeout", "600"),
            ("--node-heartbeat-timeout", "86400"),
        ];
        for (flag, value) in defaults {
            if !extra_args.contains(&flag) {
                args.extend([flag.to_owned(), value.to_owned()]);
            }
        }
        args.extend(extra_args.iter().map(|a| (*a).to_owned()));
        let settings = Config::try_parse_from(args)
            .context("the in-process control plane's flags")?
            .validate()?;
        let start_ms = strato_runtime::Clock::now_ms(&strato_runtime::SystemClock);
        let clock = Arc::new(ManualClock::starting_at(start_ms));
        let fleet = SimFleet::new(
            format!("https://{grpc}"),
            format!("https://{http}"),
            dir.path().join("nodes"),
            clock.clone(),
            strato_control::tls::Tls::ca_path(&data_dir),
        );
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let parts = strato_control::Parts {
            grpc: grpc_listener,
            http: http_listener,
            provider: Box::new(SimProvider(fleet.clone())),
            clock: clock.clone(),
            ready: Some(ready_tx),
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(strato_control::serve(settings, parts, async move {
            let _ = stop_rx.await;
        }));
        // admin.conf is written once the store is open and the CA made;
        // a control plane that fails to start drops the sender.
        match tokio::time::timeout(PATIENCE, ready_rx).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                let why = match server.await {
                    Ok(Err(e)) => format!("{e:#}"),
                    other => format!("{other:?}"),
                };
                anyhow::bail!("the in-process control plane did not start: {why}");
            }
            Err(_) => {
                anyhow::bail!("the in-process control plane was not ready within {PATIENCE:?}")
            }
        }
        let admin = crate::admin_config(&strato_control::data_dir::admin_conf(&data_dir))?;
        let channel = crate::connect_tls(&admin, admin.token.as_deref())
            .await
            .context("connecting to the in-process control plane")?;
        Ok(InProcess {
            clock,
            fleet,
            grpc,
            http,
            admin,
            channel,
            stop: Some(stop_tx),
            server: Some(server),
            _dir: dir,
        })
    }

    pub fn compute(&self) -> ComputeServiceClient<Channel> {
        ComputeServiceClient::new(self.channel.clone())
    }

    pub fn jobs(&self) -> JobServiceClient<Channel> {
        JobServiceClient::new(self.channel.clone())
    }

    /// Moves the control plane's clock forward.
    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    /// Creates cluster `name` of Standard_DS3_v2 nodes with `min..=max`
    /// nodes and `idle_seconds` before scale-down.
    pub async fn create_cluster(&self, name: &str, min: u32, max: u32, idle_seconds: u64) {
        self.create_cluster_with(cluster_spec(name, min, max, idle_seconds))
            .await;
    }

    pub async fn create_cluster_with(&self, spec: v1::ClusterSpec) {
        self.compute()
            .create_cluster(v1::CreateClusterRequest { spec: Some(spec) })
            .await
            .expect("create the cluster");
    }

    /// Submits `spec` and returns the job's id.
    pub async fn submit(&self, spec: v1::JobSpec) -> String {
        self.jobs()
            .submit_job(v1::SubmitJobRequest { spec: Some(spec) })
            .await
            .expect("submit")
            .into_inner()
            .id
    }

    pub async fn job(&self, id: &str) -> v1::Job {
        self.jobs()
            .get_job(v1::GetJobRequest { id: id.to_owned() })
            .await
            .expect("get job")
            .into_inner()
    }

    pub async fn nodes(&self, cluster: &str) -> Vec<v1::Node> {
        self.compute()
            .list_nodes(v1::ListNodesRequest {
                cluster: cluster.to_owned(),
            })
            .await
            .expect("list nodes")
            .into_inner()
            .nodes
    }

    pub async fn cluster(&self, name: &str) -> v1::Cluster {
        self.compute()
            .get_cluster(v1::GetClusterRequest {
                name: name.to_owned(),
            })
            .await
            .expect("get cluster")
            .into_inner()
    }

    /// Waits until job `id` is in `state`, and returns it.
    pub async fn job_in(&self, id: &str, state: v1::JobState) -> v1::Job {
        eventually(&format!("job {id} {state:?}"), || async {
            let job = self.job(id).await;
            (job.state == state as i32).then_some(job)
        })
        .await
    }

    /// Waits until job `id` runs and its container exists on its node (rank
    /// 0's), and returns the container's node and name.
    pub async fn running_container(&self, id: &str) -> (String, String) {
        eventually(&format!("job {id}'s container"), || async {
            let job = self.job(id).await;
            if job.state != v1::JobState::Running as i32 {
                return None;
            }
            let runtime = self.fleet.runtime(&job.node_id)?;
            let name = runtime
                .containers()
                .into_iter()
                .find(|c| c.running() && c.spec.labels.get("strato.job") == Some(&job.id))?
                .spec
                .name;
            Some((job.node_id, name))
        })
        .await
    }

    /// The reconcile passes completed so far (`strato_reconcile_passes_total`
    /// on the control plane's `/metrics`).
    pub async fn passes(&self) -> u64 {
        self.metric("strato_reconcile_passes_total").await as u64
    }

    /// Agents with an open session (`strato_agent_sessions`).
    pub async fn sessions(&self) -> u64 {
        self.metric("strato_agent_sessions").await as u64
    }

    /// A sample without labels from the control plane's `/metrics`; 0 when
    /// it is not there.
    pub async fn metric(&self, name: &str) -> f64 {
        let (http, admin) = (self.http, self.admin.clone());
        let text = tokio::task::spawn_blocking(move || crate::https_get(http, &admin, "/metrics"))
            .await
            .expect("read /metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    }

    /// Waits until the reconcile loop has made `n` more whole passes: what
    /// a pass would do after a change has then been done.
    pub async fn after_passes(&self, n: u64) {
        // The pass running now may have read the state before the change.
        let from = self.passes().await + 1;
        eventually(&format!("{n} reconcile passes"), || async {
            (self.passes().await >= from + n).then_some(())
        })
        .await;
    }

    /// Stops the control plane and waits for it; the fleet's agents go with
    /// the fleet.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.await??;
        }
        Ok(())
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
        // Before the work directory goes (`_dir`, dropped after this).
        self.fleet.stop_every_agent();
    }
}

/// A cluster spec with the tier's defaults, for tests that set more.
pub fn cluster_spec(name: &str, min: u32, max: u32, idle_seconds: u64) -> v1::ClusterSpec {
    v1::ClusterSpec {
        name: name.to_owned(),
        vm_size: "Standard_DS3_v2".to_owned(),
        min_nodes: min,
        max_nodes: Some(max),
        idle_seconds_before_scaledown: Some(idle_seconds),
        ..Default::default()
    }
}

/// A job on `cluster` with the test image; what it does is the test's to
/// play through the node's FakeRuntime.
pub fn job_spec(cluster: &str) -> v1::JobSpec {
    v1::JobSpec {
        cluster: cluster.to_owned(),
        image: "strato-test/busybox:latest".to_owned(),
        command: vec!["sh".to_owned(), "-c".to_owned(), "true".to_owned()],
        ..Default::default()
    }
}

/// Checks `check` until it returns `Some`, yielding to the control plane in
/// between (every 5 ms), and fails naming `what` after [`PATIENCE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what} after {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
