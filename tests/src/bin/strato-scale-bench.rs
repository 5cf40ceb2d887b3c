//! `strato-scale-bench sqlite|postgres NODES JOBS`: the control plane with a
//! simulated fleet (`strato-control-sim`, agents over real gRPC on fake
//! engines) at NODES nodes, measured from outside:
//!
//! 1. NODES jobs of 30 s submitted to empty clusters (of 1,000 nodes at most): the
//!    time from each job queued (its submit answered) to the provider
//!    asked for a node (the fleet's `creates.log`), paired in order per
//!    cluster, p50 and p99 (`made`: the nodes asked for, fewer than NODES
//!    where nodes done with a job took the last ones); and the time from
//!    the first submit until every node asked for enrolled and ran a job.
//! 2. Every node idle and heartbeating once a second for 20 s: the control
//!    plane's CPU (its threads, not the fleet's `sim-fleet` ones, from
//!    `/proc/PID/task`) and the process's memory (RSS, the fleet's
//!    included).
//! 3. A job that would run an hour on every node; JOBS more jobs of
//!    100 ms queued behind them (submits per second); then the hour-long
//!    ones canceled, and placements per second from the cancels until the
//!    queue is empty or for 30 s (jobs leaving `queued`, from
//!    `strato_jobs` on `/metrics`, every second). (Queued to idle nodes,
//!    they would be placed as they come: a rate of submits, not of
//!    placements.)
//!
//! Prints one line. Needs `strato-control-sim` beside it (the workspace's
//! bins) and, for `postgres`, the test server (`cargo xtask setup`).

#![allow(clippy::print_stdout, clippy::print_stderr)] // reason: a load tool; it reports on stdout

use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use strato_control::store::conformance::postgres::Schema;
use strato_e2e::{admin_config, binary_beside, connect_tls, free_port};
use strato_proto::v1::{
    self, compute_service_client::ComputeServiceClient, job_service_client::JobServiceClient,
};

/// Nodes a cluster holds at most (clusters without inter-node
/// communication).
const PER_CLUSTER: usize = 1_000;
/// Submits in flight at once.
const SUBMITTERS: usize = 32;

#[tokio::main]
async fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().collect();
    let (Some(backend), Some(nodes), Some(jobs)) = (
        args.get(1).map(String::as_str),
        args.get(2).and_then(|n| n.parse::<usize>().ok()),
        args.get(3).and_then(|n| n.parse::<usize>().ok()),
    ) else {
        eprintln!("usage: strato-scale-bench sqlite|postgres NODES JOBS");
        return ExitCode::from(2);
    };
    match run(backend, nodes, jobs).await {
        Ok(line) => {
            println!("{backend} {line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("strato-scale-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The control plane under test; killed when dropped.
struct Sim(Child);

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Open files a fleet of `nodes` needs in one process: each agent's
/// session connection and the control plane's end of it, with room for
/// the database, certificates read and listeners.
fn open_files_needed(nodes: usize) -> u64 {
    u64::try_from(nodes)
        .unwrap_or(u64::MAX)
        .saturating_mul(2)
        .saturating_add(2_000)
}

/// This process's soft limit of open files (`/proc/self/limits`), which
/// the fleet inherits; `None` when unlimited or unreadable.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

async fn run(backend: &str, nodes: usize, jobs: usize) -> anyhow::Result<String> {
    // Short of files, agents fail to connect and retry until their start
    // timeout: say so now instead of waiting for it.
    let needed = open_files_needed(nodes);
    if let Some(limit) = open_files_limit().filter(|l| *l < needed) {
        bail!(
            "{nodes} simulated nodes need about {needed} open files in one process, and this one may open {limit} \
             (`ulimit -n`); raise it (`ulimit -n {needed}`, within the hard limit `ulimit -Hn`) or run fewer nodes"
        );
    }
    let schema = match backend {
        "sqlite" => None,
        "postgres" => Some(Schema::new().await),
        other => bail!("unknown backend {other:?}"),
    };
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let quota = dir.path().join("quota.toml");
    let cores = nodes * 2 + 100;
    std::fs::write(
        &quota,
        format!(
            "[default]\ndedicated_cores_total = {cores}\ndedicated_cores_per_family = {cores}\nlow_priority_cores = {cores}\n"
        ),
    )?;
    let (grpc, http) = (free_port(), free_port());
    let log = std::fs::File::create(dir.path().join("control.log"))?;
    let mut command = Command::new(binary_beside("strato-control-sim")?);
    command
        .args([
            "--provider",
            "sim",
            "--sim-job-ms",
            "100",
            "--sim-threads",
            "1",
        ])
        .arg("--data-dir")
        .arg(&data)
        .args(["--grpc-listen", &format!("127.0.0.1:{grpc}")])
        .args(["--http-listen", &format!("127.0.0.1:{http}")])
        .arg("--quota-file")
        .arg(&quota)
        .args([
            "--heartbeat-interval",
            "1",
            "--node-heartbeat-timeout",
            "120",
        ])
        .args([
            "--node-start-timeout",
            "900",
            "--reconcile-interval-ms",
            "200",
        ])
        .args(["--submit-rate", "1000000", "--submit-burst", "1000000"])
        .args(["--log", "warn"])
        .env_remove("STRATO_DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(log);
    if let Some(schema) = &schema {
        command.env("STRATO_DATABASE_URL", schema.url());
    }
    let sim = Sim(command.spawn().context("starting strato-control-sim")?);
    let admin_path = data.join("admin.conf");
    let admin = wait(Duration::from_secs(60), "admin.conf", || {
        admin_config(&admin_path).ok()
    })
    .await?;
    let channel = loop {
        match connect_tls(&admin, admin.token.as_deref()).await {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let mut compute = ComputeServiceClient::new(channel.clone());
    let job_client = JobServiceClient::new(channel);
    let clusters: Vec<String> = (0..nodes.div_ceil(PER_CLUSTER))
        .map(|i| format!("scale{i:03}"))
        .collect();
    for (i, name) in clusters.iter().enumerate() {
        let max = (nodes - i * PER_CLUSTER).min(PER_CLUSTER);
        compute
            .create_cluster(v1::CreateClusterRequest {
                spec: Some(v1::ClusterSpec {
                    name: name.clone(),
                    vm_size: "Standard_D2_v2".into(),
                    min_nodes: 0,
                    max_nodes: Some(u32::try_from(max)?),
                    idle_seconds_before_scaledown: Some(3_600),
                    inter_node_communication: Some(false),
                    ..Default::default()
                }),
            })
            .await
            .with_context(|| format!("creating cluster {name}"))?;
    }

    // 1. One job a node: queued to the provider asked.
    let targets: Vec<String> = (0..nodes)
        .map(|i| clusters[i / PER_CLUSTER].clone())
        .collect();
    // Long enough that every job needs a node of its own.
    let submitted = Instant::now();
    let (acks, _) = submit_all(&job_client, &targets, 30_000).await?;
    let phase_one = targets;
    let mut latencies = Vec::with_capacity(nodes);
    let creates = data.join("sim").join("creates.log");
    // Every job placed (nodes that finished a job early take the last
    // ones: the provider may be asked for fewer than NODES).
    let http_addr: std::net::SocketAddr = format!("127.0.0.1:{http}").parse()?;
    wait(Duration::from_secs(1800), "every job placed", || {
        (queued(http_addr, &admin) == 0).then_some(())
    })
    .await?;
    let text = std::fs::read_to_string(&creates).context("the fleet's creates.log")?;
    let asked: Vec<(String, i64)> = text
        .lines()
        .filter_map(|l| {
            let (node, at) = l.split_once(' ')?;
            // Node ids are CLUSTER-SUFFIX.
            let (cluster, _) = node.rsplit_once('-')?;
            Some((cluster.to_owned(), at.parse().ok()?))
        })
        .collect();
    let made = asked.len();
    for name in &clusters {
        let mut submitted: Vec<i64> = acks
            .iter()
            .filter(|(c, _, _)| c == name)
            .map(|(_, at, _)| *at)
            .collect();
        submitted.sort_unstable();
        let mut created: Vec<i64> = asked
            .iter()
            .filter(|(c, _)| c == name)
            .map(|(_, at)| *at)
            .collect();
        created.sort_unstable();
        for (s, c) in submitted.iter().zip(&created) {
            latencies.push((c - s).max(0));
        }
    }
    latencies.sort_unstable();
    let p = |q: f64| {
        let i = ((latencies.len() as f64 - 1.0) * q).round() as usize;
        latencies.get(i).copied().unwrap_or_default()
    };
    let (p50, p99) = (p(0.5), p(0.99));
    let count = |states: &'static [v1::NodeState]| {
        let (compute, clusters) = (compute.clone(), clusters.clone());
        move || {
            let (mut compute, clusters) = (compute.clone(), clusters.clone());
            async move {
                let mut n = 0;
                for name in &clusters {
                    n += list_nodes(&mut compute, name)
                        .await
                        .ok()?
                        .iter()
                        .filter(|x| states.iter().any(|s| x.state == *s as i32))
                        .count();
                }
                (n >= made).then_some(())
            }
        }
    };
    wait_async(
        Duration::from_secs(1800),
        "every node enrolled, running its job",
        count(&[v1::NodeState::Running, v1::NodeState::Idle]),
    )
    .await?;
    let enrolled_in = submitted.elapsed();
    wait_async(
        Duration::from_secs(600),
        "every node idle",
        count(&[v1::NodeState::Idle]),
    )
    .await?;

    // 2. Idle, heartbeating once a second.
    let pid = sim.0.id();
    let before = cpu_of(pid)?;
    let window = Duration::from_secs(20);
    tokio::time::sleep(window).await;
    let after = cpu_of(pid)?;
    let ticks = ticks_per_second();
    let control_cpu = after.0.saturating_sub(before.0) as f64 / ticks / window.as_secs_f64();
    let fleet_cpu = after.1.saturating_sub(before.1) as f64 / ticks / window.as_secs_f64();
    let rss_mib = rss_kib(pid)? / 1024;

    // 3. A job that would run an hour on every node, JOBS queued behind
    // them, then those canceled: placements while JOBS wait.
    let (blockers, _) = submit_all(&job_client, &phase_one, 3_600_000).await?;
    wait(
        Duration::from_secs(1800),
        "a long job on every node",
        || (queued(http_addr, &admin) == 0).then_some(()),
    )
    .await?;
    let targets: Vec<String> = (0..jobs)
        .map(|i| clusters[i % clusters.len()].clone())
        .collect();
    let (_, submit_rate) = submit_all(&job_client, &targets, 100).await?;
    let queued_at_start = queued(http_addr, &admin);
    let measure = Instant::now();
    cancel_all(&job_client, blockers.into_iter().map(|(_, _, id)| id)).await?;
    // Until the queue is empty, or 30 s.
    let mut queued_at_end = queued_at_start;
    while queued_at_end > 0 && measure.elapsed() < Duration::from_secs(30) {
        // Once a second: a scrape of /metrics reads every node and job.
        tokio::time::sleep(Duration::from_secs(1)).await;
        queued_at_end = queued(http_addr, &admin);
    }
    let placements =
        queued_at_start.saturating_sub(queued_at_end) as f64 / measure.elapsed().as_secs_f64();
    drop(sim);
    drop(schema);
    Ok(format!(
        "nodes={nodes} made={made} queued-to-provider-p50-ms={p50} p99-ms={p99} submit-to-all-running-s={:.1} \
         control-plane-cpu-cores={control_cpu:.2} fleet-cpu-cores={fleet_cpu:.2} rss-mib={rss_mib} \
         submit/s={submit_rate:.0} queued={queued_at_start} placements/s={placements:.0}",
        enrolled_in.as_secs_f64()
    ))
}

/// Submits a job of 1 node that runs `runs_ms` to each cluster in
/// `targets`, `SUBMITTERS` at a time; each one's cluster, acknowledgement
/// time (ms) and id, and submits per second.
async fn submit_all(
    jobs: &JobServiceClient<strato_e2e::Channel>,
    targets: &[String],
    runs_ms: u64,
) -> anyhow::Result<(Vec<(String, i64, String)>, f64)> {
    let started = Instant::now();
    let chunks: Vec<Vec<String>> = targets
        .chunks(targets.len().div_ceil(SUBMITTERS).max(1))
        .map(<[String]>::to_vec)
        .collect();
    let mut tasks = Vec::new();
    for chunk in chunks {
        let mut jobs = jobs.clone();
        tasks.push(tokio::spawn(async move {
            let mut acks = Vec::with_capacity(chunk.len());
            for cluster in chunk {
                let job = jobs
                    .submit_job(v1::SubmitJobRequest {
                        spec: Some(v1::JobSpec {
                            cluster: cluster.clone(),
                            image: "sim".into(),
                            command: vec!["sleep-ms".into(), runs_ms.to_string()],
                            ..Default::default()
                        }),
                    })
                    .await
                    .context("submit")?
                    .into_inner();
                acks.push((cluster, now_ms(), job.id));
            }
            Ok::<_, anyhow::Error>(acks)
        }));
    }
    let mut acks = Vec::with_capacity(targets.len());
    for t in tasks {
        acks.extend(t.await??);
    }
    let rate = acks.len() as f64 / started.elapsed().as_secs_f64();
    Ok((acks, rate))
}

/// Cancels the jobs `ids`, `SUBMITTERS` at a time.
async fn cancel_all(
    jobs: &JobServiceClient<strato_e2e::Channel>,
    ids: impl Iterator<Item = String>,
) -> anyhow::Result<()> {
    let ids: Vec<String> = ids.collect();
    let mut tasks = Vec::new();
    for chunk in ids.chunks(ids.len().div_ceil(SUBMITTERS).max(1)) {
        let (mut jobs, chunk) = (jobs.clone(), chunk.to_vec());
        tasks.push(tokio::spawn(async move {
            for id in chunk {
                jobs.cancel_job(v1::CancelJobRequest { id })
                    .await
                    .context("cancel")?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

async fn list_nodes(
    compute: &mut ComputeServiceClient<strato_e2e::Channel>,
    cluster: &str,
) -> anyhow::Result<Vec<v1::Node>> {
    Ok(compute
        .list_nodes(v1::ListNodesRequest {
            cluster: cluster.into(),
        })
        .await?
        .into_inner()
        .nodes)
}

/// Jobs queued now, from the control plane's `/metrics` (it reads every
/// node and counts every job: at 10,000 nodes under load an answer can
/// take longer than the client's 10 s, so a slow one is waited for,
/// on curl, up to 120 s).
fn queued(http: std::net::SocketAddr, admin: &strato_core::client_config::ClientConfig) -> u64 {
    let ca = std::env::temp_dir().join(format!("strato-scale-bench-ca-{}.pem", std::process::id()));
    let written = std::fs::write(&ca, admin.ca_certificate.as_deref().unwrap_or_default());
    let auth = format!(
        "Authorization: Bearer {}",
        admin.token.as_deref().unwrap_or_default()
    );
    // The token goes on stdin, not in the command line others can read.
    let out = written.and_then(|()| {
        use std::io::Write as _;
        let mut curl = Command::new("curl")
            .args(["-sS", "--fail", "--max-time", "120", "-H", "@-", "--cacert"])
            .arg(&ca)
            .arg(format!("https://{http}/metrics"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = curl.stdin.take() {
            writeln!(stdin, "{auth}")?;
        }
        curl.wait_with_output()
    });
    let _ = std::fs::remove_file(&ca);
    let body = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => panic!("GET /metrics: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => panic!("GET /metrics: curl: {e}"),
    };
    body.lines()
        .filter(|l| l.starts_with("strato_jobs{") && l.contains("state=\"queued\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// CPU ticks so far of process `pid`: (all but its `sim-fleet` threads,
/// those). The process's total (`/proc/PID/stat`) counts threads that
/// ended too; the fleet's threads live as long as it.
fn cpu_of(pid: u32) -> anyhow::Result<(u64, u64)> {
    let total = ticks_of(&std::fs::read_to_string(format!("/proc/{pid}/stat"))?);
    let mut fleet = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = task?.path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if comm.trim().starts_with("sim-fleet") {
            fleet += ticks_of(&std::fs::read_to_string(task.join("stat")).unwrap_or_default());
        }
    }
    Ok((total.saturating_sub(fleet), fleet))
}

/// utime + stime of a `stat` line: after the command's closing
/// parenthesis, state is field 3, utime 14 and stime 15.
fn ticks_of(stat: &str) -> u64 {
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

fn ticks_per_second() -> f64 {
    // Linux's USER_HZ, which /proc counts in: 100 on every architecture
    // Linux runs this on.
    100.0
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmRSS")
}

async fn wait<T>(
    within: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(t) = check() {
            return Ok(t);
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {within:?}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn wait_async<T, F, Fut>(within: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(t) = check().await {
            return Ok(t);
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
