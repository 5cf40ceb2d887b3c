//! `cargo xtask`: the project's automation, as a plain Rust binary.
//!
//! - `setup`: install what builds and tests need on this machine (idempotent).
//! - `demo`:  run the main flow end to end with the real binaries.
//! - `ci`:    setup, then format check, clippy, build, and every test tier.

#![allow(clippy::print_stdout)] // reason: xtask reports progress to the person running it

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  setup   install what the build and the tests need (idempotent)
  demo    start a control plane and walk a cluster through its lifecycle
  ci      setup, then cargo fmt --check, clippy -D warnings, build, and all tests
  bench dispatch
          on a warm node, time from `strato job submit` to the job's first output
          line, against plain `docker run` of the same image and command (release
          build, median of 15 runs each, printed as a ratio)
  bench agent
          the agent's resident memory and CPU while idle (1-second telemetry) and
          while scraped 10 times a second, next to node_exporter's in the same run";

fn main() -> std::process::ExitCode {
    match dispatch() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn dispatch() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("setup") => setup(),
        Some("demo") => demo(),
        Some("ci") => ci(),
        Some("bench") => match args.get(1).map(String::as_str) {
            Some("dispatch") => bench_dispatch(),
            Some("agent") => bench_agent(),
            other => bail!("unknown benchmark {other:?}; available: dispatch, agent\n\n{USAGE}"),
        },
        Some("-h" | "--help" | "help") | None => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown command {other:?}\n\n{USAGE}"),
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_owned()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// `release` while benchmarking, `debug` otherwise.
static PROFILE: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

fn profile_dir() -> &'static str {
    PROFILE.get().copied().unwrap_or("debug")
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// Runs a command, echoing it, and fails if it fails.
fn run(what: &str, mut cmd: Command) -> anyhow::Result<()> {
    let started = Instant::now();
    println!("==> {what}");
    let status = cmd
        .status()
        .with_context(|| format!("{what}: cannot start"))?;
    ensure!(status.success(), "{what}: failed ({status})");
    println!("    {what}: ok in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The job image the tests and the demo use: busybox, built locally.
pub const TEST_IMAGE: &str = "strato-test/busybox:latest";

/// The job image the MPI tests use: Debian (debootstrap) with Open MPI and
/// mpi4py, built locally.
pub const MPI_IMAGE: &str = "strato-test/mpi:latest";

/// Everything the build and tests need, installed and started if missing:
/// the Rust toolchain's rustfmt and clippy, the Docker engine (Debian's
/// docker.io, dockerd in the background), and the test images (no registry
/// is reachable: they are built with `docker import`). Safe to run again.
fn setup() -> anyhow::Result<()> {
    ensure!(
        have("cargo"),
        "cargo is not on PATH: install Rust with rustup (https://rustup.rs)"
    );
    for (component, probe) in [("rustfmt", "rustfmt"), ("clippy", "cargo-clippy")] {
        if have(probe) {
            println!("==> {component}: present");
        } else {
            let mut c = Command::new("rustup");
            c.args(["component", "add", component]);
            run(&format!("rustup component add {component}"), c)?;
        }
    }
    let missing: Vec<&str> = [
        ("dockerd", "docker.io"),
        ("busybox", "busybox-static"),
        ("prometheus", "prometheus"),
        ("curl", "curl"),
    ]
    .into_iter()
    .filter(|(program, _)| !have(program) && !Path::new(&format!("/bin/{program}")).exists())
    .map(|(_, package)| package)
    .collect();
    if missing.is_empty() {
        println!("==> docker.io, busybox-static, prometheus, curl: present");
    } else {
        apt_install(&missing)?;
    }
    start_docker()?;
    build_busybox_image()?;
    build_mpi_image()?;
    python_clients()?;
    azurite()?;
    Ok(())
}

/// Azurite (the Azure Storage emulator, from npm) in `.data/azurite`, and a
/// test CA with a certificate for 127.0.0.1 in `.data/azurite/tls`, so the
/// storage tests run it over HTTPS with `--oauth basic`.
fn azurite() -> anyhow::Result<()> {
    let dir = root().join(".data/azurite");
    if dir.join("node_modules/.bin/azurite-blob").exists() {
        println!("==> azurite: present");
    } else {
        if !have("npm") {
            apt_install(&["nodejs", "npm"])?;
        }
        std::fs::create_dir_all(&dir)?;
        let mut npm = Command::new("npm");
        npm.args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
            .arg(&dir)
            .arg("azurite@3");
        run("npm install azurite", npm)?;
    }
    let tls = dir.join("tls");
    if tls.join("cert.pem").exists() && tls.join("ca.pem").exists() {
        println!("==> azurite TLS certificate: present");
        return Ok(());
    }
    if !have("openssl") {
        apt_install(&["openssl"])?;
    }
    std::fs::create_dir_all(&tls)?;
    let script = "set -e
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 3650 -subj '/CN=Strato test CA' 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout key.pem -out leaf.csr -subj '/CN=127.0.0.1' 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > leaf.ext
openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out cert.pem -days 3650 -extfile leaf.ext 2>/dev/null";
    let mut certs = Command::new("sh");
    certs.args(["-c", script]).current_dir(&tls);
    run("openssl: test CA and certificate for 127.0.0.1", certs)
}

/// A Python virtual environment with Azure's own `azure-identity` (from
/// PyPI), which the identity tests run unmodified against the agent's
/// endpoint.
fn python_clients() -> anyhow::Result<()> {
    let venv = root().join(".data/venv");
    let python = venv.join("bin/python");
    let ready = Command::new(&python)
        .args(["-c", "import azure.identity"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ready {
        println!("==> python azure-identity: present");
        return Ok(());
    }
    let mut create = Command::new("python3");
    create.args(["-m", "venv"]).arg(&venv);
    run("python3 -m venv .data/venv", create)?;
    let mut install = Command::new(venv.join("bin/pip"));
    install.args(["install", "--quiet", "azure-identity"]);
    run("pip install azure-identity", install)
}

/// A command run as root: directly when this is root, else through sudo.
fn as_root(args: &[&str]) -> Command {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.trim_ascii() == b"0")
        .unwrap_or(false);
    if root {
        let mut c = Command::new(args[0]);
        c.args(&args[1..]);
        c
    } else {
        let mut c = Command::new("sudo");
        c.args(args);
        c
    }
}

fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    let mut update = as_root(&["apt-get", "update", "-q"]);
    update
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null());
    run("apt-get update", update)?;
    let mut args = vec!["apt-get", "install", "-y", "-q", "--no-install-recommends"];
    args.extend_from_slice(packages);
    let mut install = as_root(&args);
    install
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null());
    run(&format!("apt-get install {}", packages.join(" ")), install)
}

fn docker_answers() -> bool {
    Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts dockerd in the background (in its own session, so it outlives
/// this command) unless an engine already answers, and waits for it.
fn start_docker() -> anyhow::Result<()> {
    if docker_answers() {
        println!("==> docker engine: running");
        return Ok(());
    }
    println!("==> starting dockerd (log: /var/log/strato-dockerd.log)");
    as_root(&[
        "sh",
        "-c",
        "setsid dockerd >>/var/log/strato-dockerd.log 2>&1 < /dev/null &",
    ])
    .status()
    .context("starting dockerd")?;
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        if docker_answers() {
            println!("    docker engine: running");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    bail!("dockerd did not answer within 90s; see /var/log/strato-dockerd.log")
}

fn image_exists(image: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", image])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A busybox image from Debian's static busybox: /bin/busybox plus a link
/// per applet, imported as TEST_IMAGE.
fn build_busybox_image() -> anyhow::Result<()> {
    if image_exists(TEST_IMAGE) {
        println!("==> image {TEST_IMAGE}: present");
        return Ok(());
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("busybox not found; install busybox-static")?;
    let rootfs = std::env::temp_dir().join(format!("strato-busybox-{}", std::process::id()));
    let bin = rootfs.join("bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::create_dir_all(rootfs.join("tmp"))?;
    std::fs::copy(busybox, bin.join("busybox"))?;
    let list = Command::new(busybox)
        .arg("--list")
        .output()
        .context("busybox --list")?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" && !applet.is_empty() {
            std::os::unix::fs::symlink("busybox", bin.join(applet))?;
        }
    }
    let mut import = Command::new("sh");
    import.args([
        "-c",
        &format!(
            "tar -C '{}' -c . | docker import - {TEST_IMAGE} >/dev/null",
            rootfs.display()
        ),
    ]);
    let result = run(&format!("docker import {TEST_IMAGE}"), import);
    std::fs::remove_dir_all(&rootfs).ok();
    result
}

/// The Debian mirror this machine's apt uses: the first `URIs:` of
/// /etc/apt/sources.list.d/debian.sources, else the first `deb` line of
/// /etc/apt/sources.list, else deb.debian.org.
fn debian_mirror() -> String {
    let deb822 = std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("URIs:"))
        .find_map(|uris| uris.split_whitespace().next().map(str::to_owned));
    let one_line = || {
        std::fs::read_to_string("/etc/apt/sources.list")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().strip_prefix("deb "))
            .find_map(|rest| {
                // Skip options such as `[arch=amd64 signed-by=…]`.
                let rest = match rest.trim_start().strip_prefix('[') {
                    Some(opts) => opts.split_once(']')?.1,
                    None => rest,
                };
                rest.split_whitespace().next().map(str::to_owned)
            })
    };
    deb822
        .or_else(one_line)
        .unwrap_or_else(|| "http://deb.debian.org/debian".to_owned())
}

/// This machine's Debian codename (VERSION_CODENAME in /etc/os-release).
fn debian_suite() -> String {
    std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "bookworm".to_owned())
}

/// A Debian image with Open MPI and mpi4py (debootstrap minbase, from this
/// machine's mirror), imported as MPI_IMAGE. `libopenmpi-dev` is left out:
/// it breaks debootstrap's dependency resolution.
fn build_mpi_image() -> anyhow::Result<()> {
    if image_exists(MPI_IMAGE) {
        println!("==> image {MPI_IMAGE}: present");
        return Ok(());
    }
    if !have("debootstrap") && !Path::new("/usr/sbin/debootstrap").exists() {
        apt_install(&["debootstrap"])?;
    }
    let mirror = debian_mirror();
    let suite = debian_suite();
    let rootfs = std::env::temp_dir().join(format!("strato-mpi-{}", std::process::id()));
    let dir = rootfs
        .to_str()
        .context("temporary directory is not UTF-8")?;
    println!("==> building {MPI_IMAGE} with debootstrap ({suite}, {mirror}; about a minute)");
    let mut bootstrap = as_root(&[
        "debootstrap",
        "--variant=minbase",
        "--include=openmpi-bin,python3-mpi4py",
        &suite,
        dir,
        &mirror,
    ]);
    bootstrap.stdout(Stdio::null());
    let mut result = run(&format!("debootstrap {suite}"), bootstrap);
    if result.is_ok() {
        let mut import = as_root(&[
            "sh",
            "-c",
            &format!("tar -C '{dir}' -c . | docker import - {MPI_IMAGE} >/dev/null"),
        ]);
        import.stdin(Stdio::null());
        result = run(&format!("docker import {MPI_IMAGE}"), import);
    }
    // The tree is root's: remove it as root.
    as_root(&["rm", "-rf", dir]).status().ok();
    result
}

fn ci() -> anyhow::Result<()> {
    let started = Instant::now();
    setup()?;
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--check"]);
    run("cargo fmt --check", fmt)?;
    let mut clippy = cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    run("cargo clippy -D warnings", clippy)?;
    // The end-to-end tests start these binaries.
    let mut build = cargo();
    build.args(["build", "--workspace", "--bins"]);
    run("cargo build --bins", build)?;
    let mut test = cargo();
    test.args(["test", "--workspace", "--all-targets"]);
    let (passed, failed) = run_tests("cargo test (unit, property, integration, end-to-end)", test)?;
    println!("ci: all green in {:.0}s", started.elapsed().as_secs_f64());
    println!("tests: {passed} passed, {failed} failed");
    Ok(())
}

/// Runs `cargo test`, echoing its output, and adds up its `test result:`
/// lines so the run ends with one summary line.
fn run_tests(what: &str, mut cmd: Command) -> anyhow::Result<(u64, u64)> {
    use std::io::{BufRead, BufReader};
    let started = Instant::now();
    println!("==> {what}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("{what}: cannot start"))?;
    let stdout = child.stdout.take().context("test output")?;
    let (mut passed, mut failed) = (0, 0);
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            passed += count(rest, "passed");
            failed += count(rest, "failed");
        }
    }
    let status = child.wait()?;
    ensure!(
        status.success(),
        "{what}: failed ({status}); {passed} passed, {failed} failed"
    );
    ensure!(passed > 0, "{what}: no test ran");
    println!("    {what}: ok in {:.1}s", started.elapsed().as_secs_f64());
    Ok((passed, failed))
}

/// The number before `word` in `ok. 7 passed; 0 failed; ...`.
fn count(summary: &str, word: &str) -> u64 {
    summary
        .split(';')
        .filter_map(|part| {
            part.trim()
                .trim_start_matches("ok. ")
                .trim_start_matches("FAILED. ")
                .strip_suffix(word)
        })
        .filter_map(|n| n.trim().parse::<u64>().ok())
        .sum()
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A control plane started by the demo.
struct Control {
    child: Option<Child>,
    grpc: String,
    http: String,
}

impl Control {
    fn start(data_dir: &Path, grpc: &str, http: &str) -> anyhow::Result<Self> {
        Self::start_with(data_dir, grpc, http, &[])
    }

    fn start_with(data_dir: &Path, grpc: &str, http: &str, extra: &[&str]) -> anyhow::Result<Self> {
        let child = Command::new(target_dir().join(profile_dir()).join("strato-control"))
            .args(["--data-dir"])
            .arg(data_dir)
            .args([
                "--grpc-listen",
                grpc,
                "--http-listen",
                http,
                "--log",
                "warn",
            ])
            .args(["--reconcile-interval-ms", "250"])
            .args(extra)
            .spawn()
            .context("starting strato-control")?;
        let mut c = Control {
            child: Some(child),
            grpc: grpc.to_owned(),
            http: http.to_owned(),
        };
        c.wait_ready()?;
        Ok(c)
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("strato-control exited while starting: {status}");
            }
            if TcpStream::connect(&self.grpc).is_ok() && TcpStream::connect(&self.http).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("strato-control did not listen on {} within 30s", self.grpc)
    }

    fn terminate(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            let status = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()?;
            ensure!(status.success(), "kill -TERM failed");
            let status = child.wait()?;
            ensure!(
                status.success(),
                "strato-control exited with {status} after SIGTERM"
            );
        }
        Ok(())
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `strato ARGS` against the demo's control plane, printing the command
/// and its output. `expect_ok` false means the step shows a refusal.
fn strato(control: &Control, args: &[&str], expect_ok: bool) -> anyhow::Result<()> {
    println!("\n$ strato {}", args.join(" "));
    let status = Command::new(target_dir().join(profile_dir()).join("strato"))
        .arg("--endpoint")
        .arg(format!("http://{}", control.grpc))
        .args(args)
        .env_remove("STRATO_ENDPOINT")
        .status()
        .context("running strato")?;
    ensure!(
        status.success() == expect_ok,
        "`strato {}` {}",
        args.join(" "),
        if expect_ok {
            "failed"
        } else {
            "was expected to be refused"
        }
    );
    Ok(())
}

/// Runs `strato ARGS` and returns its stdout (for the demo's own checks).
fn strato_output(control: &Control, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(target_dir().join(profile_dir()).join("strato"))
        .arg("--endpoint")
        .arg(format!("http://{}", control.grpc))
        .args(args)
        .env_remove("STRATO_ENDPOINT")
        .output()
        .context("running strato")?;
    ensure!(
        out.status.success(),
        "`strato {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The nodes of a cluster as (node id, state) pairs, from the table output.
fn node_states(control: &Control, cluster: &str) -> anyhow::Result<Vec<(String, String)>> {
    let table = strato_output(control, &["compute", "list-nodes", "-n", cluster])?;
    Ok(table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut cells = l.split_whitespace();
            Some((cells.next()?.to_owned(), cells.next()?.to_owned()))
        })
        .collect())
}

fn demo() -> anyhow::Result<()> {
    setup()?;
    let mut build = cargo();
    build.args(["build", "--quiet", "--bins"]);
    run("cargo build --bins", build)?;

    let data_dir = root()
        .join(".data")
        .join(format!("demo-{}", std::process::id()));
    std::fs::create_dir_all(&data_dir)?;
    let grpc = format!("127.0.0.1:{}", free_port()?);
    let http = format!("127.0.0.1:{}", free_port()?);
    println!(
        "==> strato-control on {grpc} (HTTP {http}), local provider, data in {}",
        data_dir.display()
    );
    let mut control = Control::start(&data_dir, &grpc, &http)?;

    strato(
        &control,
        &[
            "compute",
            "create",
            "-n",
            "cpu-demo",
            "-s",
            "Standard_D2_v2",
            "--min-nodes",
            "0",
            "--max-nodes",
            "2",
            "--idle-seconds-before-scaledown",
            "5",
        ],
        true,
    )?;
    println!("\n# bad input is refused, naming the field, and changes nothing:");
    strato(
        &control,
        &["compute", "create", "-n", "gpu-2", "-s", "Standard_NC6"],
        false,
    )?;
    strato(
        &control,
        &[
            "compute",
            "create",
            "-n",
            "h100-demo",
            "-s",
            "Standard_ND96isr_H100_v5",
            "--min-nodes",
            "2",
            "--max-nodes",
            "2",
        ],
        false,
    )?;

    println!("\n# three jobs on a cluster of at most two nodes, starting from zero:");
    let mut ids = Vec::new();
    for i in 1..=3 {
        let script = format!("echo job {i} on node $STRATO_NODE_ID; sleep 2; echo job {i} done");
        let args = [
            "job",
            "submit",
            "--compute",
            "cpu-demo",
            "--image",
            TEST_IMAGE,
            "--",
            "sh",
            "-c",
            &script,
        ];
        println!("$ strato {}", args.join(" "));
        let id = strato_output(&control, &args)?.trim().to_owned();
        println!("{id}");
        ids.push(id);
    }

    // Watch the cluster grow while the jobs run, then shrink back to zero.
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut grew_to = 0;
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut jobs_done = false;
    loop {
        let nodes = node_states(&control, "cpu-demo")?;
        if nodes != seen {
            let states: Vec<String> = nodes.iter().map(|(id, s)| format!("{id}={s}")).collect();
            println!("  [nodes: {}] {}", nodes.len(), states.join(" "));
            grew_to = grew_to.max(nodes.len());
            seen = nodes;
        }
        if !jobs_done {
            let list = strato_output(&control, &["job", "list", "--compute", "cpu-demo"])?;
            jobs_done = list
                .lines()
                .skip(1)
                .all(|l| l.contains("completed") || l.contains("failed") || l.contains("canceled"));
            if jobs_done {
                println!("  all jobs ended; the idle nodes leave after 5s");
            }
        }
        if jobs_done && seen.is_empty() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the demo did not finish within 3 minutes"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    println!("  the cluster grew to {grew_to} nodes (max 2) and returned to 0");
    for id in &ids {
        strato(&control, &["job", "logs", id], true)?;
    }
    strato(&control, &["job", "list"], true)?;
    strato(&control, &["job", "show", &ids[0]], true)?;
    strato(&control, &["compute", "show", "-n", "cpu-demo"], true)?;
    strato(
        &control,
        &["compute", "delete", "-n", "cpu-demo", "--yes"],
        true,
    )?;
    control.terminate()?;
    std::fs::remove_dir_all(&data_dir).ok();
    println!("\ndemo: done");
    Ok(())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Spawns `cmd` and returns how long it took until its first stdout line,
/// then waits for it to exit.
fn time_to_first_line(mut cmd: Command, started: Instant) -> anyhow::Result<Duration> {
    use std::io::{BufRead, BufReader};
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut first = String::new();
    BufReader::new(stdout).read_line(&mut first)?;
    let elapsed = started.elapsed();
    ensure!(first.trim() == "ready", "unexpected first line {first:?}");
    child.wait()?;
    Ok(elapsed)
}

fn bench_dispatch() -> anyhow::Result<()> {
    const RUNS: usize = 15;
    let (control, data_dir, grpc) = warm_bench_cluster("dispatch", &[])?;
    let command = ["sh", "-c", "echo ready"];
    let strato_bin = target_dir().join(profile_dir()).join("strato");
    let endpoint = format!("http://{grpc}");
    let mut strato_times = Vec::new();
    let mut docker_times = Vec::new();
    for run_no in 0..=RUNS {
        // Strato: submit, then follow the job's output until its first line.
        let started = Instant::now();
        let mut args = vec![
            "job",
            "submit",
            "--compute",
            "bench",
            "--image",
            TEST_IMAGE,
            "--",
        ];
        args.extend_from_slice(&command);
        let out = Command::new(&strato_bin)
            .arg("--endpoint")
            .arg(&endpoint)
            .args(&args)
            .output()?;
        ensure!(
            out.status.success(),
            "submit failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let mut follow = Command::new(&strato_bin);
        follow
            .arg("--endpoint")
            .arg(&endpoint)
            .args(["job", "logs", &id, "--follow"]);
        let strato_time = time_to_first_line(follow, started)?;
        // Let the node become idle again before the next job.
        let mut wait = Command::new(&strato_bin);
        wait.arg("--endpoint")
            .arg(&endpoint)
            .args(["job", "wait", &id])
            .stdout(Stdio::null());
        ensure!(wait.status()?.success(), "job {id} did not complete");
        while !node_states(&control, "bench")?
            .iter()
            .any(|(_, s)| s == "idle")
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        // Baseline: plain docker run of the same image and command.
        let started = Instant::now();
        let mut docker = Command::new("docker");
        docker.args(["run", "--rm", TEST_IMAGE]).args(command);
        let docker_time = time_to_first_line(docker, started)?;
        if run_no > 0 {
            // The first round warms caches and is not counted.
            strato_times.push(strato_time);
            docker_times.push(docker_time);
        }
    }
    let (s, d) = (median(strato_times), median(docker_times));
    println!("dispatch: submit -> first output line, warm node, median of {RUNS} runs");
    println!(
        "  strato job submit + logs --follow: {:>7.1} ms",
        s.as_secs_f64() * 1000.0
    );
    println!(
        "  docker run (same image, command):  {:>7.1} ms",
        d.as_secs_f64() * 1000.0
    );
    println!(
        "  ratio strato / docker run:          {:>7.2}",
        s.as_secs_f64() / d.as_secs_f64()
    );
    remove_bench_cluster(control, &data_dir)
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

/// CPU % and resident MiB of `pid` over `window`, scraping `scrape`
/// (address, path) ten times a second meanwhile if given.
fn measure(pid: u32, window: Duration, scrape: Option<(&str, &str)>) -> anyhow::Result<(f64, f64)> {
    use std::io::{Read, Write};
    let started = Instant::now();
    let cpu0 = cpu_seconds(pid)?;
    while started.elapsed() < window {
        if let Some((addr, path)) = scrape
            && let Ok(mut s) = TcpStream::connect(addr)
        {
            let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n");
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let cpu = (cpu_seconds(pid)? - cpu0) / started.elapsed().as_secs_f64() * 100.0;
    Ok((cpu, rss_mib(pid)?))
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

fn bench_agent() -> anyhow::Result<()> {
    const WINDOW: Duration = Duration::from_secs(10);
    // Heartbeats and container sampling every second.
    let (control, data_dir, grpc) = warm_bench_cluster(
        "agent",
        &["--heartbeat-interval", "1", "--node-heartbeat-timeout", "5"],
    )?;
    let pid = find_agent(&format!("http://{grpc}")).context("the agent process")?;
    let nodes = strato_output(
        &control,
        &["compute", "list-nodes", "-n", "bench", "-o", "json"],
    )?;
    let url = nodes
        .split("\"metrics_url\": \"http://")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .context("metrics_url")?
        .to_owned();
    let (addr, path) = url
        .split_once('/')
        .map(|(a, p)| (a.to_owned(), format!("/{p}")))
        .context("metrics url")?;
    println!(
        "==> measuring strato-agent (pid {pid}): {}s idle, then {}s scraped",
        WINDOW.as_secs(),
        WINDOW.as_secs()
    );
    let agent_idle = measure(pid, WINDOW, None)?;
    let agent_scraped = measure(pid, WINDOW, Some((&addr, &path)))?;

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
            let scraped = measure(child.id(), WINDOW, Some((&addr, "/metrics")));
            let _ = child.kill();
            let _ = child.wait();
            Some((idle?, scraped?))
        } else {
            None
        };
    println!(
        "agent: CPU and resident memory, {}s windows, scrapes every 100 ms",
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
    let control = Control::start_with(&data_dir, &grpc, &http, extra)?;
    strato_output(
        &control,
        &[
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
        ],
    )?;
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
fn remove_bench_cluster(mut control: Control, data_dir: &Path) -> anyhow::Result<()> {
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
