//! `cargo xtask bench dispatch | agent | followers`: release builds against
//! one warm node, measured next to a baseline (plain `docker run` and
//! `srun docker run` on a one-node Slurm, node_exporter, the same load
//! without followers).

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};

use crate::command::{have, run};
use crate::control::{Control, first_metrics_url, free_port, node_states, scrape, strato_output};
use crate::images::TEST_IMAGE;
use crate::setup::{apt_install, setup};
use crate::slurm::Slurm;
use crate::workspace::{PROFILE, cargo, profile_dir, root, target_dir};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Spawns `cmd` and returns how long it took until its first stdout line,
/// then waits for it to exit (killing it first if that line is wrong).
fn time_to_first_line(mut cmd: Command, started: Instant) -> anyhow::Result<Duration> {
    use std::io::{BufRead, BufReader};
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut first = String::new();
    let read = BufReader::new(stdout).read_line(&mut first);
    let elapsed = started.elapsed();
    let checked = read.map_err(anyhow::Error::from).and_then(|_| {
        ensure!(first.trim() == "ready", "unexpected first line {first:?}");
        Ok(elapsed)
    });
    if checked.is_err() {
        let _ = child.kill();
    }
    child.wait()?;
    checked
}

/// `docker run --rm TEST_IMAGE sh -c SCRIPT`: the first baseline.
fn docker_run(script: &str) -> Command {
    let mut docker = Command::new("docker");
    docker.args(["run", "--rm", TEST_IMAGE, "sh", "-c", script]);
    docker
}

/// The same `docker run` as a Slurm job step: `srun --quiet docker run ...`.
fn srun_docker_run(slurm: &Slurm, script: &str) -> Command {
    let mut srun = slurm.srun();
    srun.args(["docker", "run", "--rm", TEST_IMAGE, "sh", "-c", script]);
    srun
}

fn print_ms(label: &str, d: Duration) {
    println!("  {label:<36}{:>7.1} ms", d.as_secs_f64() * 1000.0);
}

fn print_ratio(label: &str, a: Duration, b: Duration) {
    println!("  {label:<36}{:>7.2}", a.as_secs_f64() / b.as_secs_f64());
}

/// The jobs timed: one that exits as soon as it printed (where Docker
/// answers a logs request only once it has handled the exit, tens of
/// milliseconds that `docker run`, attached before the start, does not
/// wait), and one that runs on, as real work does.
const DISPATCH_JOBS: [(&str, &str); 2] = [
    ("a job that exits at once (echo ready)", "echo ready"),
    (
        "a job that runs on (echo ready; sleep 1)",
        "echo ready; sleep 1",
    ),
];

pub(crate) fn bench_dispatch() -> anyhow::Result<()> {
    const RUNS: usize = 15;
    let (control, data_dir, _grpc) = warm_bench_cluster("dispatch", &[])?;
    // Stopped when dropped, also when a round fails.
    let slurm = crate::slurm::start()?;
    time_to_first_line(srun_docker_run(&slurm, "echo ready"), Instant::now())?;
    let mut results = Vec::new();
    for (what, script) in DISPATCH_JOBS {
        let mut strato_times = Vec::new();
        let mut docker_times = Vec::new();
        let mut srun_times = Vec::new();
        for run_no in 0..=RUNS {
            // Strato: submit and follow the job's output on one connection
            // (`--stream`) until its first line; the command ends with the
            // job.
            let started = Instant::now();
            let mut submit = control.cli();
            submit.args([
                "job",
                "submit",
                "--stream",
                "--compute",
                "bench",
                "--image",
                TEST_IMAGE,
                "--",
                "sh",
                "-c",
                script,
            ]);
            let strato_time = time_to_first_line(submit, started)?;
            // Let the node become idle again before the next job.
            while !node_states(&control, "bench")?
                .iter()
                .any(|(_, s)| s == "idle")
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            // Baselines: plain docker run of the same image and command,
            // and the same docker run as a Slurm job (srun waits for its
            // end).
            let docker_time = time_to_first_line(docker_run(script), Instant::now())?;
            let srun_time = time_to_first_line(srun_docker_run(&slurm, script), Instant::now())?;
            if run_no > 0 {
                // The first round warms caches and is not counted.
                strato_times.push(strato_time);
                docker_times.push(docker_time);
                srun_times.push(srun_time);
            }
        }
        results.push((
            what,
            median(strato_times),
            median(docker_times),
            median(srun_times),
        ));
    }
    drop(slurm);
    println!("dispatch: submit -> first output line, warm node, median of {RUNS} runs each");
    for (what, s, d, r) in results {
        println!("{what}:");
        print_ms("strato job submit --stream:", s);
        print_ms("docker run (same image, command):", d);
        print_ms("srun docker run (one-node Slurm):", r);
        print_ratio("ratio strato / docker run:", s, d);
        print_ratio("ratio strato / srun docker run:", s, r);
    }
    remove_bench_cluster(control, &data_dir)
}

/// `cargo xtask bench scale` (release build), on SQLite and on the test
/// PostgreSQL server:
///
/// - the store alone (`strato-store-bench`), 1,000 and 10,000 idle nodes:
///   enrolments and submits per second (a transaction each), placements per
///   second with a pass's placements in one transaction and with one
///   transaction a job, the placed jobs' reports in the report writer's
///   batches (reports per second), a heartbeat from every node (in
///   memory, then one write), and a read of every node (as a reconcile
///   pass reads them, and as the courier does);
/// - the control plane with a simulated fleet (`strato-scale-bench`
///   driving `strato-control-sim`: agents over real gRPC on fake engines),
///   1,000 and 10,000 nodes: queued-to-provider p50 and p99, the control
///   plane's CPU and the process's memory with every node heartbeating once
///   a second, then 100,000 jobs queued behind a long job on every node
///   (submits per second) and placed once those are canceled (placements
///   per second).
///
/// Prints each run's line.
pub(crate) fn bench_scale() -> anyhow::Result<()> {
    setup()?;
    let _ = PROFILE.set("release");
    let mut build = cargo();
    build.args(["build", "--release", "--quiet", "--bins"]);
    run("cargo build --release --bins", build)?;
    let bins = target_dir().join(profile_dir());
    let store = bins.join("strato-store-bench");
    println!("scale: the store alone (no gRPC, no agents), release build");
    for (nodes, jobs) in [(1_000, 2_000), (10_000, 11_000)] {
        for backend in ["sqlite", "postgres"] {
            print!("  {}", bench_line(&store, backend, nodes, jobs)?);
        }
    }
    let fleet = bins.join("strato-scale-bench");
    println!(
        "scale: the control plane and a simulated fleet (agents over gRPC, one fleet thread), release build"
    );
    for nodes in [1_000, 10_000] {
        for backend in ["sqlite", "postgres"] {
            print!("  {}", bench_line(&fleet, backend, nodes, 100_000)?);
        }
    }
    Ok(())
}

/// One run of a scale tool: its line.
fn bench_line(
    tool: &std::path::Path,
    backend: &str,
    nodes: usize,
    jobs: usize,
) -> anyhow::Result<String> {
    let out = Command::new(tool)
        .args([backend, &nodes.to_string(), &jobs.to_string()])
        .output()
        .with_context(|| format!("{} (built with the workspace's bins)", tool.display()))?;
    ensure!(
        out.status.success(),
        "{} {backend} {nodes} {jobs}: {}",
        tool.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `cargo xtask bench followers`: log ingestion (a job printing 50,000
/// lines, from submit to its end) with no one following and with 1,500 idle
/// `logs --follow` streams on another job, which a log batch must not wake.
/// Prints both rates and their ratio; fails below one half.
pub(crate) fn bench_followers() -> anyhow::Result<()> {
    const FOLLOWERS: usize = 1_500;
    const LINES: u32 = 50_000;
    const RUNS: usize = 3;
    // No low-priority cores: the parked job never gets a node, so its
    // followers stay open and idle.
    let quota = root()
        .join(".data")
        .join(format!("bench-followers-quota-{}.toml", std::process::id()));
    std::fs::create_dir_all(root().join(".data"))?;
    std::fs::write(&quota, "[default]\nlow_priority_cores = 0\n")?;
    let quota_arg = quota.display().to_string();
    let (control, data_dir, _grpc) = warm_bench_cluster(
        "followers",
        &[
            "--max-followers-per-caller",
            "2000",
            "--quota-file",
            &quota_arg,
        ],
    )?;
    strato_output(
        &control,
        &[
            "compute",
            "create",
            "-n",
            "parked",
            "--tier",
            "lowpriority",
            "--max-nodes",
            "1",
        ],
    )?;
    let parked = strato_output(
        &control,
        &[
            "job",
            "submit",
            "--compute",
            "parked",
            "--image",
            TEST_IMAGE,
            "--",
            "true",
        ],
    )?
    .trim()
    .to_owned();
    let script = format!("seq 1 {LINES}");
    let ingest = || -> anyhow::Result<Duration> {
        let started = Instant::now();
        let id = strato_output(
            &control,
            &[
                "job",
                "submit",
                "--compute",
                "bench",
                "--image",
                TEST_IMAGE,
                "--",
                "sh",
                "-c",
                &script,
            ],
        )?
        .trim()
        .to_owned();
        strato_output(&control, &["job", "wait", &id])?;
        let elapsed = started.elapsed();
        while !node_states(&control, "bench")?
            .iter()
            .any(|(_, s)| s == "idle")
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(elapsed)
    };
    println!("==> {RUNS} jobs of {LINES} lines, no followers");
    let unloaded = median((0..RUNS).map(|_| ingest()).collect::<Result<_, _>>()?);
    println!("==> {FOLLOWERS} idle followers on job {parked}");
    let mut followers = Command::new(target_dir().join(profile_dir()).join("strato-followers"))
        .arg(data_dir.join("admin.conf"))
        .arg(&parked)
        .arg(FOLLOWERS.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .context("strato-followers (built with the workspace's bins)")?;
    let ready = {
        use std::io::BufRead as _;
        let stdout = followers.stdout.take().context("stdout")?;
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        line
    };
    let loaded = if ready.trim() == format!("ready {FOLLOWERS}") {
        println!("==> {RUNS} jobs of {LINES} lines, {FOLLOWERS} followers open");
        (0..RUNS).map(|_| ingest()).collect::<Result<Vec<_>, _>>()
    } else {
        Err(anyhow::anyhow!("the followers did not open: {ready:?}"))
    };
    let _ = followers.kill();
    let _ = followers.wait();
    let loaded = median(loaded?);
    let rate = |d: Duration| f64::from(LINES) / d.as_secs_f64();
    let ratio = rate(loaded) / rate(unloaded);
    println!("followers: a {LINES}-line job from submit to its end, median of {RUNS}");
    println!("  no followers:            {:>9.0} lines/s", rate(unloaded));
    println!(
        "  {FOLLOWERS} idle followers:    {:>9.0} lines/s",
        rate(loaded)
    );
    println!("  ratio loaded / unloaded: {ratio:>9.2}");
    strato_output(&control, &["job", "cancel", &parked])?;
    strato_output(&control, &["compute", "delete", "-n", "parked", "--yes"])?;
    remove_bench_cluster(control, &data_dir)?;
    std::fs::remove_file(&quota).ok();
    ensure!(
        ratio >= 0.5,
        "idle followers slowed ingestion below half its unloaded rate"
    );
    Ok(())
}

/// CPU seconds (user + system) a process used so far, from /proc.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name, which may hold spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("odd /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11).context("utime")?.parse()?;
    let stime: f64 = fields.get(12).context("stime")?.parse()?;
    Ok((utime + stime) / 100.0)
}

fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("VmRSS")?
        .parse()?;
    Ok(kib / 1024.0)
}

/// CPU % and resident MiB of `pid` over `window`, calling `scrape` ten
/// times a second meanwhile if given.
fn measure(pid: u32, window: Duration, scrape: Option<&dyn Fn()>) -> anyhow::Result<(f64, f64)> {
    let started = Instant::now();
    let cpu0 = cpu_seconds(pid)?;
    while started.elapsed() < window {
        if let Some(scrape) = scrape {
            scrape();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let cpu = (cpu_seconds(pid)? - cpu0) / started.elapsed().as_secs_f64() * 100.0;
    Ok((cpu, rss_mib(pid)?))
}

/// One plain-HTTP GET of `path` at `addr`, its answer read and dropped.
fn plain_get(addr: &str, path: &str) {
    use std::io::{Read, Write};
    if let Ok(mut s) = TcpStream::connect(addr) {
        let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n");
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }
}

/// The pid of an agent of the control plane at `endpoint`.
fn find_agent(endpoint: &str) -> Option<u32> {
    let wanted = format!("STRATO_CONTROL_PLANE={endpoint}");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let environ = std::fs::read(e.path().join("environ")).ok()?;
        environ
            .split(|b| *b == 0)
            .any(|v| v == wanted.as_bytes())
            .then_some(pid)
    })
}

pub(crate) fn bench_agent() -> anyhow::Result<()> {
    const WINDOW: Duration = Duration::from_secs(10);
    // Heartbeats and container sampling every second.
    let (control, data_dir, grpc) = warm_bench_cluster(
        "agent",
        &["--heartbeat-interval", "1", "--node-heartbeat-timeout", "5"],
    )?;
    let pid = find_agent(&format!("https://{grpc}")).context("the agent process")?;
    let url = first_metrics_url(&control, "bench")?;
    // As Prometheus scrapes it: TLS, the node serving CA, the scraper
    // certificate; curl makes a new connection (and handshake) each time,
    // where Prometheus keeps one open, so this is the dearer case.
    let curl = || {
        let mut curl = scrape(&data_dir, &url);
        curl.args(["-o", "/dev/null"]);
        curl
    };
    ensure!(
        curl()
            .status()
            .context("curl (apt-get install curl)")?
            .success(),
        "the agent's /metrics did not answer the scraper certificate at {url}"
    );
    let scrape_agent = || {
        let _ = curl().status();
    };
    println!(
        "==> measuring strato-agent (pid {pid}): {}s idle, then {}s scraped",
        WINDOW.as_secs(),
        WINDOW.as_secs()
    );
    let agent_idle = measure(pid, WINDOW, None)?;
    let agent_scraped = measure(pid, WINDOW, Some(&scrape_agent))?;

    let exporter =
        if have("prometheus-node-exporter") || apt_install(&["prometheus-node-exporter"]).is_ok() {
            let port = free_port()?;
            let mut child = Command::new("prometheus-node-exporter")
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            let addr = format!("127.0.0.1:{port}");
            let deadline = Instant::now() + Duration::from_secs(10);
            while TcpStream::connect(&addr).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            println!("==> measuring node_exporter (pid {})", child.id());
            let idle = measure(child.id(), WINDOW, None);
            let scraped = measure(child.id(), WINDOW, Some(&|| plain_get(&addr, "/metrics")));
            let _ = child.kill();
            let _ = child.wait();
            Some((idle?, scraped?))
        } else {
            None
        };
    println!(
        "agent: CPU and resident memory, {}s windows, scrapes every 100 ms (the agent's over TLS, a new connection each)",
        WINDOW.as_secs()
    );
    println!("  {:<24} {:>8} {:>10}", "", "CPU %", "RSS MiB");
    println!(
        "  {:<24} {:>8.2} {:>10.1}",
        "strato-agent idle", agent_idle.0, agent_idle.1
    );
    println!(
        "  {:<24} {:>8.2} {:>10.1}",
        "strato-agent scraped", agent_scraped.0, agent_scraped.1
    );
    match exporter {
        Some((idle, scraped)) => {
            println!(
                "  {:<24} {:>8.2} {:>10.1}",
                "node_exporter idle", idle.0, idle.1
            );
            println!(
                "  {:<24} {:>8.2} {:>10.1}",
                "node_exporter scraped", scraped.0, scraped.1
            );
        }
        None => println!("  (node_exporter could not be installed: absolute figures only)"),
    }
    remove_bench_cluster(control, &data_dir)
}

/// Release binaries, a control plane, and a cluster `bench` with one warm
/// (idle) node; returns the control plane, its data dir and gRPC address.
fn warm_bench_cluster(name: &str, extra: &[&str]) -> anyhow::Result<(Control, PathBuf, String)> {
    warm_bench_cluster_with(name, extra, &[], &[])
}

/// As `warm_bench_cluster`, with `env` for the control plane and its agents
/// and `cluster` added to the cluster's `compute create`.
pub(crate) fn warm_bench_cluster_with(
    name: &str,
    extra: &[&str],
    env: &[(&str, &str)],
    cluster: &[&str],
) -> anyhow::Result<(Control, PathBuf, String)> {
    setup()?;
    let _ = PROFILE.set("release");
    let mut build = cargo();
    build.args(["build", "--release", "--quiet", "--bins"]);
    run("cargo build --release --bins", build)?;
    let data_dir = root()
        .join(".data")
        .join(format!("bench-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&data_dir)?;
    let grpc = format!("127.0.0.1:{}", free_port()?);
    let http = format!("127.0.0.1:{}", free_port()?);
    let control = Control::start_with_env(&data_dir, &grpc, &http, extra, env)?;
    let mut create = vec![
        "compute",
        "create",
        "-n",
        "bench",
        "-s",
        "Standard_D2_v2",
        "--min-nodes",
        "1",
        "--max-nodes",
        "1",
    ];
    create.extend_from_slice(cluster);
    strato_output(&control, &create)?;
    println!("==> waiting for a warm node");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !node_states(&control, "bench")?
        .iter()
        .any(|(_, s)| s == "idle")
    {
        ensure!(Instant::now() < deadline, "no idle node within 60s");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok((control, data_dir, grpc))
}

/// Scales the bench cluster to zero, deletes it and stops the control plane.
pub(crate) fn remove_bench_cluster(mut control: Control, data_dir: &Path) -> anyhow::Result<()> {
    println!("==> removing the node");
    strato_output(
        &control,
        &[
            "compute",
            "update",
            "-n",
            "bench",
            "--min-nodes",
            "0",
            "--idle-seconds-before-scaledown",
            "0",
        ],
    )?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !node_states(&control, "bench")?.is_empty() {
        ensure!(Instant::now() < deadline, "the node did not leave");
        std::thread::sleep(Duration::from_millis(100));
    }
    strato_output(&control, &["compute", "delete", "-n", "bench", "--yes"])?;
    control.terminate()?;
    std::fs::remove_dir_all(data_dir).ok();
    Ok(())
}
