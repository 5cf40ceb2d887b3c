//! `SimProvider`: a node provider whose nodes are in-process agents (the
//! real `strato_agent::session`, speaking the real protocol over loopback
//! gRPC) on their own [`FakeRuntime`] each, as if every node were a machine
//! with its own engine. For the in-process tier (an agent thread each) and
//! for simulations of large fleets (`SimFleet::large`, agents as tasks on
//! one runtime, jobs that run for a set time: `strato-control-sim`);
//! nothing here runs a container.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::future::BoxFuture;
use strato_agent::gang::{ExecRelay, GangConfig, GangNetwork};
use strato_agent::identity::{self, Vending};
use strato_agent::session::{self, AgentConfig, IdentityContext};
use strato_agent::telemetry::{AgentHealth, NoGpus};
use strato_control::provider::{
    Capabilities, Holdings, NodeLaunch, NodeProvider, ProvidedNode, ProviderError,
};
use strato_runtime::Clock;
use strato_runtime::fake::FakeRuntime;

/// One simulated machine.
struct SimNode {
    runtime: FakeRuntime,
    /// The agent; gone once the node is taken down or its agent stopped.
    agent: Option<Agent>,
    /// What runs its simulated jobs, if the fleet's jobs run themselves.
    jobs: Option<tokio::task::JoinHandle<()>>,
}

/// A simulated node's agent: on a thread and runtime of its own (the
/// in-process tier: stopping it is a crash), or a task on the fleet's
/// shared runtime (a large fleet for benchmarks).
enum Agent {
    Thread(AgentThread),
    Task(tokio::task::JoinHandle<()>),
}

impl Agent {
    async fn stop(self) {
        match self {
            Agent::Thread(t) => t.stop().await,
            Agent::Task(t) => {
                t.abort();
                let _ = t.await;
            }
        }
    }

    /// Stops it without a runtime to wait on: a thread's agent is joined,
    /// a task's aborted.
    fn stop_blocking(self) {
        match self {
            Agent::Thread(t) => t.stop_blocking(),
            Agent::Task(t) => t.abort(),
        }
    }
}

/// What simulated jobs do: each container prints one line, runs for
/// `duration` (or the milliseconds its command's last argument says, as
/// `sleep-ms 60000`) and exits, with 1 in every `fail_every` exiting 1 (0:
/// none fail).
#[derive(Debug, Clone, Copy)]
pub struct SimJobs {
    pub duration: std::time::Duration,
    pub fail_every: u64,
}

/// Runs what `jobs` says in every container started on `runtime`, until
/// aborted (with its node).
async fn run_jobs(runtime: FakeRuntime, jobs: SimJobs) {
    let mut changes = runtime.subscribe();
    let mut seen = BTreeSet::new();
    let mut started = 0u64;
    loop {
        for c in runtime.containers() {
            if !c.running() || !seen.insert(c.id.clone()) {
                continue;
            }
            started += 1;
            let fails = jobs.fail_every > 0 && started.is_multiple_of(jobs.fail_every);
            let duration = match c.spec.command.as_slice() {
                [first, ms] if first == "sleep-ms" => ms
                    .parse()
                    .map_or(jobs.duration, std::time::Duration::from_millis),
                _ => jobs.duration,
            };
            let runtime = runtime.clone();
            tokio::spawn(async move {
                let _ = runtime.print(&c.id, strato_runtime::OutputStream::Stdout, "simulated");
                tokio::time::sleep(duration).await;
                let _ = runtime.exit(&c.id, i64::from(fails));
            });
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// An agent on a thread and a runtime of its own, as on its own machine:
/// stopping it drops that runtime, and every task the agent spawned with
/// it, as a crash would.
struct AgentThread {
    stop: tokio::sync::oneshot::Sender<()>,
    exited: tokio::sync::oneshot::Receiver<()>,
    thread: std::thread::JoinHandle<()>,
}

impl AgentThread {
    fn spawn(
        node: String,
        config: AgentConfig,
        runtime: FakeRuntime,
        identity: Arc<IdentityContext>,
    ) -> std::io::Result<Self> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (exit, exited) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("agent-{node}"))
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(async {
                        tokio::select! {
                            result = session::run(config, Arc::new(runtime), identity) => {
                                if let Err(e) = result {
                                    tracing::info!(%node, error = %e, "simulated agent ended");
                                }
                            }
                            _ = stopped => {}
                        }
                    }),
                    Err(e) => tracing::error!(%node, error = %e, "no runtime for the agent"),
                }
                // The runtime, with every task of the agent, is gone now.
                let _ = exit.send(());
            })?;
        Ok(AgentThread {
            stop,
            exited,
            thread,
        })
    }

    /// Stops the agent and waits until nothing of it runs.
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.exited.await;
    }

    /// Stops the agent and blocks until its thread ended.
    fn stop_blocking(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

/// The simulated fleet, shared by the provider and the test that watches it.
pub struct SimFleet {
    /// The control plane's gRPC endpoint, where agents enrol.
    endpoint: String,
    /// The control plane's HTTP base, where agents poll Scheduled Events.
    http_base: String,
    /// The control plane's CA certificate (written at its start).
    ca_file: PathBuf,
    /// The endpoint agents dial, with that CA (PEM).
    dial: std::sync::OnceLock<(tonic::transport::Endpoint, String)>,
    /// Where agents stage attempts' data.
    work_root: PathBuf,
    clock: Arc<dyn Clock>,
    nodes: Mutex<BTreeMap<String, SimNode>>,
    /// Create calls that fail before the next one succeeds.
    failing_creates: AtomicU32,
    /// Every create call, failed or not.
    creates: AtomicU32,
    /// How long a create call takes (ms; 0: at once), as a cloud's does;
    /// the calls under way, and the most there were at once.
    create_ms: std::sync::atomic::AtomicU64,
    creating: AtomicU32,
    most_creating: AtomicU32,
    /// Where agents run as tasks (`None`: a thread each), and what jobs do
    /// (`None`: what the test makes them do).
    shared: Option<tokio::runtime::Handle>,
    jobs: Option<SimJobs>,
    /// A large fleet's record of each create call: `NODE_ID MS` lines in
    /// `WORK_ROOT/creates.log` (when the provider was asked, for the
    /// benchmark).
    creates_log: Option<Mutex<std::fs::File>>,
}

impl SimFleet {
    pub fn new(
        endpoint: String,
        http_base: String,
        work_root: PathBuf,
        clock: Arc<dyn Clock>,
        ca_file: PathBuf,
    ) -> Arc<Self> {
        Arc::new(SimFleet {
            endpoint,
            http_base,
            ca_file,
            dial: std::sync::OnceLock::new(),
            work_root,
            clock,
            nodes: Mutex::default(),
            failing_creates: AtomicU32::new(0),
            creates: AtomicU32::new(0),
            create_ms: std::sync::atomic::AtomicU64::new(0),
            creating: AtomicU32::new(0),
            most_creating: AtomicU32::new(0),
            shared: None,
            jobs: None,
            creates_log: None,
        })
    }

    /// A fleet for benchmarks: its agents are tasks on `shared` (a runtime
    /// of the fleet's own, so that its threads are told apart from the
    /// control plane's), and its jobs run as `jobs` says.
    pub fn large(
        endpoint: String,
        http_base: String,
        work_root: PathBuf,
        ca_file: PathBuf,
        shared: tokio::runtime::Handle,
        jobs: SimJobs,
    ) -> Arc<Self> {
        let creates_log = std::fs::create_dir_all(&work_root)
            .and_then(|()| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(work_root.join("creates.log"))
            })
            .ok()
            .map(Mutex::new);
        Arc::new(SimFleet {
            endpoint,
            http_base,
            ca_file,
            dial: std::sync::OnceLock::new(),
            work_root,
            clock: Arc::new(strato_runtime::SystemClock),
            nodes: Mutex::default(),
            failing_creates: AtomicU32::new(0),
            creates: AtomicU32::new(0),
            create_ms: std::sync::atomic::AtomicU64::new(0),
            creating: AtomicU32::new(0),
            most_creating: AtomicU32::new(0),
            shared: Some(shared),
            jobs: Some(jobs),
            creates_log,
        })
    }

    fn nodes_map(&self) -> MutexGuard<'_, BTreeMap<String, SimNode>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The node ids the provider holds now.
    pub fn node_ids(&self) -> Vec<String> {
        self.nodes_map().keys().cloned().collect()
    }

    /// The container engine of node `node_id`.
    pub fn runtime(&self, node_id: &str) -> Option<FakeRuntime> {
        self.nodes_map().get(node_id).map(|n| n.runtime.clone())
    }

    /// Stops node `node_id`'s agent as a crash would, and returns once it
    /// has stopped: its containers keep running, it sends nothing more.
    pub async fn stop_agent(&self, node_id: &str) {
        let agent = self
            .nodes_map()
            .get_mut(node_id)
            .and_then(|n| n.agent.take());
        if let Some(agent) = agent {
            agent.stop().await;
        }
    }

    /// The next `n` create calls fail, as a provider out of machines would.
    pub fn fail_next_creates(&self, n: u32) {
        self.failing_creates.store(n, Ordering::SeqCst);
    }

    /// How many times the control plane asked for a node.
    pub fn creates(&self) -> u32 {
        self.creates.load(Ordering::SeqCst)
    }

    /// Each create call takes `latency` from now on, as a cloud's does.
    pub fn set_create_latency(&self, latency: std::time::Duration) {
        let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        self.create_ms.store(ms, Ordering::SeqCst);
    }

    /// The most create calls that were under way at once.
    pub fn most_creates_at_once(&self) -> u32 {
        self.most_creating.load(Ordering::SeqCst)
    }

    /// A create call: takes the set latency, then starts the node.
    async fn create(&self, launch: &NodeLaunch) -> Result<(), ProviderError> {
        self.asked(launch);
        let now = self.creating.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_creating.fetch_max(now, Ordering::SeqCst);
        let ms = self.create_ms.load(Ordering::SeqCst);
        if ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
        let started = self.start(launch);
        self.creating.fetch_sub(1, Ordering::SeqCst);
        started
    }

    /// Counts a create call (and logs it, for a large fleet) as it comes.
    fn asked(&self, launch: &NodeLaunch) {
        self.creates.fetch_add(1, Ordering::SeqCst);
        if let Some(log) = &self.creates_log {
            use std::io::Write as _;
            let at = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
            let _ = writeln!(log, "{} {at}", launch.node_id);
        }
    }

    fn start(&self, launch: &NodeLaunch) -> Result<(), ProviderError> {
        let failing = self
            .failing_creates
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if failing.is_ok() {
            return Err(ProviderError::Io {
                what: format!("creating node {}", launch.node_id),
                source: std::io::Error::other("the simulated provider is out of machines"),
            });
        }
        let runtime = FakeRuntime::new();
        let vending = Arc::new(Vending::new(self.clock.clone()));
        let work_dir = self.work_root.join(&launch.node_id);
        let identity = Arc::new(IdentityContext {
            mounts: Arc::default(),
            image_cache: Arc::new(strato_agent::image_cache::ImageCache::open(
                &self.work_root,
                u64::MAX,
            )),
            relay: Arc::new(ExecRelay::new(vending.clone())),
            vending,
            health: Arc::new(AgentHealth::default()),
            gpus: Arc::new(NoGpus),
            metrics_url: String::new(),
            metrics_tls: Arc::default(),
            ssh: Arc::default(),
            // Not served: simulated jobs run nothing that asks for tokens.
            endpoint: identity::Endpoint {
                base: "http://127.0.0.1:9".to_owned(),
            },
            work_dir,
            storage_ca: None,
            // A large fleet polls no Scheduled Events (10,000 requests a
            // second would be the benchmark).
            scheduled_events_url: match self.shared {
                Some(_) => String::new(),
                None => format!(
                    "{}/scheduledevents/{}?api-version=2020-07-01",
                    self.http_base, launch.node_id
                ),
            },
            gang: GangConfig {
                network: GangNetwork::Cluster,
                launcher: self.work_root.join("strato-rsh"),
                control_plane_id: None,
                interface: None,
            },
            clock: self.clock.clone(),
        });
        let io = |what: &str, source| ProviderError::Io {
            what: format!("{what} for {}", launch.node_id),
            source,
        };
        // Made once, at the first node: the CA exists from the control
        // plane's start on.
        let (endpoint, ca) = match self.dial.get() {
            Some(e) => e.clone(),
            None => {
                let ca =
                    std::fs::read_to_string(&self.ca_file).map_err(|e| io("reading the CA", e))?;
                let e = strato_proto::client::endpoint(&self.endpoint, Some(&ca))
                    .map_err(|e| io("the endpoint", std::io::Error::other(e.to_string())))?;
                self.dial.get_or_init(|| (e, ca)).clone()
            }
        };
        let config = AgentConfig {
            control_plane: self.endpoint.clone(),
            replicas: vec![session::Replica {
                url: self.endpoint.clone(),
                endpoint,
            }],
            preferred: Default::default(),
            transport: session::Transport::Tls { ca_pem: Some(ca) },
            join_token: launch.join_token.clone(),
            hostname: launch.node_id.clone(),
            control_plane_id: None,
            give_up_after: None,
            job_pids_limit: Some(strato_runtime::PIDS_LIMIT),
            allow_new_privileges: false,
            network_sandboxes: false,
            ssh_listen: None,
            ssh_node_shell: false,
        };
        let jobs = match (&self.shared, self.jobs) {
            (Some(shared), Some(jobs)) => Some(shared.spawn(run_jobs(runtime.clone(), jobs))),
            _ => None,
        };
        let agent = match &self.shared {
            Some(shared) => {
                let (node, runtime) = (launch.node_id.clone(), Arc::new(runtime.clone()));
                Agent::Task(shared.spawn(async move {
                    if let Err(e) = session::run(config, runtime, identity).await {
                        tracing::info!(%node, error = %e, "simulated agent ended");
                    }
                }))
            }
            None => Agent::Thread(
                AgentThread::spawn(launch.node_id.clone(), config, runtime.clone(), identity)
                    .map_err(|source| ProviderError::Io {
                        what: format!("starting the agent of {}", launch.node_id),
                        source,
                    })?,
            ),
        };
        self.nodes_map().insert(
            launch.node_id.clone(),
            SimNode {
                runtime,
                agent: Some(agent),
                jobs,
            },
        );
        Ok(())
    }

    /// Stops every agent and waits for their threads, blocking: a test's
    /// teardown, so that no agent writes into its work directory (its
    /// credentials, on reconnecting) after that directory was removed.
    pub fn stop_every_agent(&self) {
        let nodes = std::mem::take(&mut *self.nodes_map());
        for node in nodes.into_values() {
            if let Some(jobs) = node.jobs {
                jobs.abort();
            }
            if let Some(agent) = node.agent {
                agent.stop_blocking();
            }
        }
    }

    async fn take_down(&self, node_id: &str) {
        let Some(node) = self.nodes_map().remove(node_id) else {
            return;
        };
        if let Some(jobs) = node.jobs {
            jobs.abort();
        }
        if let Some(agent) = node.agent {
            agent.stop().await;
        }
    }
}

// Dropping the fleet drops every agent's stop sender: each agent thread
// then ends, taking its runtime and tasks with it.

/// The provider face of a [`SimFleet`].
pub struct SimProvider(pub Arc<SimFleet>);

/// Every simulated node has an engine of its own: a gang needs nothing
/// made for it, and a cluster holds nothing of its own (the trait's
/// defaults).
impl NodeProvider for SimProvider {
    fn kind(&self) -> &'static str {
        "sim"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            creates_nodes: true,
            // Its agents poll this control plane's Scheduled Events (not a
            // large fleet's).
            simulated_evictions: self.0.shared.is_none(),
        }
    }

    fn create_node<'a>(
        &'a self,
        launch: &'a NodeLaunch,
    ) -> BoxFuture<'a, Result<Option<u32>, ProviderError>> {
        Box::pin(async move { self.0.create(launch).await.map(|()| None) })
    }

    fn delete_node<'a>(
        &'a self,
        node: &'a ProvidedNode,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            self.0.take_down(&node.node_id).await;
            Ok(())
        })
    }

    fn holdings(&self) -> BoxFuture<'_, Result<Holdings, ProviderError>> {
        Box::pin(async move {
            let nodes = self.0.nodes_map();
            Ok(Holdings {
                nodes: nodes
                    .keys()
                    .map(|id| ProvidedNode {
                        node_id: id.clone(),
                        pid: None,
                    })
                    .collect(),
                clusters: BTreeSet::new(),
            })
        })
    }
}
