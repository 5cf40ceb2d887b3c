//! A real single-node Slurm for `bench dispatch`: Debian's `slurm-wlm`
//! (22.05 on bookworm) with MUNGE authentication, every daemon started by
//! hand (no systemd here) and all its state in `.data/slurm/`:
//!
//! - `slurm.conf`, written anew at each start, that every daemon and command
//!   finds through `SLURM_CONF` (nothing in /etc/slurm is read or written);
//! - `munge/`: the key (1024 random bytes, 0400, kept between runs),
//!   munged's socket (named to Slurm by `AuthInfo=socket=`) and seed file;
//! - `ctld/`, `spool/`, `run/`, `log/`: slurmctld's state, slurmd's spool,
//!   the daemons' pid files, their logs (and the watchdog's), wiped at each
//!   start.
//!
//! The daemons run in the foreground (`-D`, `-F`) as children of xtask,
//! each in a process group of its own. `Drop` cancels any job still there
//! (its slurmstepd would otherwise outlive slurmd, retrying forever), then
//! stops them (SIGTERM, then SIGKILL) when the benchmark ends or fails.
//! Where xtask dies without dropping (Ctrl-C, a kill), a watchdog shell
//! does the same: it holds the read end of a pipe from xtask and cleans up
//! when that closes without xtask's "done". Daemons of an earlier run that
//! escaped both are found by their pid files and stopped at the next start.
//! Runs as root (slurmd launches the jobs).

use std::io::Write as _;
use std::net::TcpListener;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};

use crate::command::have;
use crate::setup::apt_install;
use crate::workspace::root;

/// slurmctld's and slurmd's ports, off the 6817/6818 default so that a
/// system Slurm on this machine is left alone.
const CTLD_PORT: u16 = 16817;
const SLURMD_PORT: u16 = 16818;
/// The daemons, in start order; stopped in the reverse one.
const DAEMONS: [&str; 3] = ["munged", "slurmctld", "slurmd"];
/// How long a daemon gets to stop after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How long jobs get to leave after `scancel`.
const CANCEL_GRACE: Duration = Duration::from_secs(10);

/// Run by `sh -c` with the Slurm directory as `$1`: reads the pids of the
/// daemons xtask starts, one a line; at "done" exits, at EOF (xtask is gone
/// without stopping Slurm) cancels the jobs and stops the daemons, newest
/// first, each only while its command line still names `$1`.
const WATCHDOG: &str = r#"
pids=
while read -r line; do
  [ "$line" = done ] && exit 0
  pids="$line $pids"
done
echo "xtask went away: cancelling the jobs, stopping $pids"
export SLURM_CONF="$1/slurm.conf"
scancel --partition=bench
i=0
while [ -n "$(squeue -h -o %i 2>/dev/null)" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
for p in $pids; do
  grep -qaF -- "$1" /proc/$p/cmdline 2>/dev/null || continue
  kill -TERM $p
  i=0
  while grep -qaF -- "$1" /proc/$p/cmdline 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
  grep -qaF -- "$1" /proc/$p/cmdline 2>/dev/null && kill -KILL $p
done
"#;

/// A running single-node Slurm; dropping it stops its daemons.
pub(crate) struct Slurm {
    dir: PathBuf,
    /// Started daemons, in start order.
    daemons: Vec<(&'static str, Child)>,
    /// The watchdog, and the pipe it reads the daemons' pids from.
    watchdog: Option<(Child, ChildStdin)>,
}

/// Installs Slurm and MUNGE if missing, starts munged, slurmctld and slurmd
/// on this machine, and waits until its node is idle and `srun true` runs.
pub(crate) fn start() -> anyhow::Result<Slurm> {
    let started = Instant::now();
    ensure!(
        Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.trim_ascii() == b"0"),
        "the Slurm contender runs munged, slurmctld and slurmd as root: run as root"
    );
    if ["slurmctld", "slurmd", "srun", "sinfo", "munged", "munge"]
        .iter()
        .all(|p| have(p))
    {
        println!("==> slurm: slurm-wlm, munge: present");
    } else {
        apt_install(&["slurm-wlm", "munge"])?;
    }

    let dir = root().join(".data").join("slurm");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    stop_stale(&dir)?;
    // Fresh state each time: a crashed run leaves jobs, nodes and sockets
    // that the new daemons must not pick up.
    for sub in ["ctld", "spool", "run", "log"] {
        let path = dir.join(sub);
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("removing {}", path.display()))?;
        }
        std::fs::create_dir_all(&path)?;
    }
    let munge_dir = dir.join("munge");
    for stale in ["munge.socket", "munge.socket.lock"] {
        let _ = std::fs::remove_file(munge_dir.join(stale));
    }
    std::fs::create_dir_all(&munge_dir)?;
    // munged insists: the socket's directory open to all (to reach the
    // socket), the key readable by its owner alone.
    for d in [&dir, &munge_dir] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
    }
    let key = munge_dir.join("munge.key");
    if std::fs::metadata(&key).map(|m| m.len()).ok() != Some(1024) {
        let _ = std::fs::remove_file(&key);
        let random = read_urandom_1024()?;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(&key)
            .and_then(|mut f| f.write_all(&random))
            .with_context(|| format!("writing {}", key.display()))?;
    }
    let socket = munge_dir.join("munge.socket");
    // sun_path holds 108 bytes.
    ensure!(
        socket.as_os_str().len() < 100,
        "munged's socket path {} is too long for a Unix socket: move the workspace",
        socket.display()
    );
    for port in [CTLD_PORT, SLURMD_PORT] {
        ensure!(
            TcpListener::bind(("0.0.0.0", port)).is_ok(),
            "port {port} is in use (another Slurm?): the benchmark's Slurm needs \
             {CTLD_PORT} and {SLURMD_PORT}"
        );
    }

    let host = hostname()?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let conf = dir.join("slurm.conf");
    std::fs::write(&conf, slurm_conf(&dir, &host, cpus))
        .with_context(|| format!("writing {}", conf.display()))?;
    println!(
        "==> slurm: starting munged, slurmctld, slurmd (node {host}, {cpus} CPUs; state and logs in {})",
        dir.display()
    );

    let log_dir = dir.join("log");
    let watchdog_log = std::fs::File::create(log_dir.join("watchdog.log"))?;
    let mut watchdog = Command::new("sh")
        .args(["-c", WATCHDOG, "sh"])
        .arg(&dir)
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(watchdog_log.try_clone()?)
        .stderr(watchdog_log)
        // Out of the terminal's reach: Ctrl-C must leave it to clean up.
        .process_group(0)
        .spawn()
        .context("starting the watchdog (sh)")?;
    let pipe = watchdog.stdin.take().context("the watchdog's stdin")?;
    let mut slurm = Slurm {
        dir,
        daemons: Vec::new(),
        watchdog: Some((watchdog, pipe)),
    };
    let mut munged = Command::new("munged");
    munged
        .arg("--foreground")
        .arg(format!("--socket={}", socket.display()))
        .arg(format!("--key-file={}", key.display()))
        .arg(format!(
            "--pid-file={}",
            slurm.dir.join("run/munged.pid").display()
        ))
        .arg(format!(
            "--seed-file={}",
            munge_dir.join("munged.seed").display()
        ));
    // In the foreground munged logs to stderr only.
    slurm.spawn("munged", munged, &log_dir.join("munged.log"))?;
    slurm.wait_for(
        "munged to answer on its socket",
        Duration::from_secs(10),
        |_| {
            Ok(Command::new("munge")
                .arg("--no-input")
                .arg(format!("--socket={}", socket.display()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?
                .success())
        },
    )?;
    for daemon in ["slurmctld", "slurmd"] {
        let mut cmd = slurm.command(daemon);
        cmd.arg("-D").arg("-f").arg(&conf);
        if daemon == "slurmd" {
            cmd.args(["-N", &host]);
        }
        // They log to the files slurm.conf names; their stderr repeats
        // that, and holds what comes before the configuration is read.
        slurm.spawn(daemon, cmd, &log_dir.join(format!("{daemon}.stderr")))?;
    }
    slurm.wait_for(
        &format!("node {host} to be idle in sinfo"),
        Duration::from_secs(60),
        |slurm| {
            let out = slurm
                .command("sinfo")
                .args(["-h", "-o", "%t"])
                .stderr(Stdio::null())
                .output()?;
            Ok(String::from_utf8_lossy(&out.stdout).trim() == "idle")
        },
    )?;
    // A job end to end: credentials, slurmstepd, the step's output.
    let out = slurm
        .srun()
        .arg("true")
        .output()
        .context("srun (slurm-client)")?;
    ensure!(
        out.status.success(),
        "`srun true` failed ({}): {}; see the logs in {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim(),
        log_dir.display()
    );
    println!(
        "    slurm: node {host} idle, `srun true` ran; up in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(slurm)
}

impl Slurm {
    /// `program` (a Slurm command or daemon) pointed at this Slurm's
    /// configuration.
    pub(crate) fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("SLURM_CONF", self.dir.join("slurm.conf"));
        cmd
    }

    /// `srun --quiet`, pointed at this Slurm.
    pub(crate) fn srun(&self) -> Command {
        let mut cmd = self.command("srun");
        cmd.arg("--quiet");
        cmd
    }

    fn spawn(&mut self, name: &'static str, mut cmd: Command, log: &Path) -> anyhow::Result<()> {
        let out = std::fs::File::create(log)?;
        let child = cmd
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            // Ctrl-C reaches xtask, not the daemons: they must outlive it
            // long enough for the watchdog to cancel the jobs first.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let pid = child.id();
        self.daemons.push((name, child));
        if let Some((_, pipe)) = &mut self.watchdog {
            writeln!(pipe, "{pid}").context("telling the watchdog")?;
        }
        Ok(())
    }

    /// Cancels the jobs still pending or running and waits (a while) for
    /// every job to leave the queue, completing ones included, so that no
    /// slurmstepd or srun outlives the daemons.
    fn cancel_jobs(&self) {
        let any = |states: Option<&str>| {
            let mut squeue = self.command("squeue");
            squeue.args(["-h", "-o", "%i"]);
            if let Some(states) = states {
                squeue.arg(format!("--states={states}"));
            }
            squeue
                .stderr(Stdio::null())
                .output()
                .is_ok_and(|o| o.status.success() && !o.stdout.trim_ascii().is_empty())
        };
        if any(Some("PD,CF,R,S")) {
            println!("==> slurm: cancelling the jobs still running");
            let _ = self.command("scancel").arg("--partition=bench").status();
        }
        let deadline = Instant::now() + CANCEL_GRACE;
        while any(None) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls `ready` until it holds, failing at `timeout` or as soon as a
    /// daemon exits, with the logs to read.
    fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        mut ready: impl FnMut(&Slurm) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            for (name, child) in &mut self.daemons {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "{name} exited ({status}) while waiting for {what}; see the logs in {}",
                        self.dir.join("log").display()
                    );
                }
            }
            if ready(self)? {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "no {what} within {}s; see the logs in {}",
                    timeout.as_secs(),
                    self.dir.join("log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        println!("==> slurm: stopping slurmd, slurmctld, munged");
        if self
            .daemons
            .iter_mut()
            .any(|(name, child)| *name == "slurmctld" && matches!(child.try_wait(), Ok(None)))
        {
            self.cancel_jobs();
        }
        while let Some((name, mut child)) = self.daemons.pop() {
            if matches!(child.try_wait(), Ok(Some(_))) {
                continue;
            }
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + STOP_GRACE;
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if matches!(child.try_wait(), Ok(None)) {
                eprintln!(
                    "slurm: {name} (pid {}) ignored SIGTERM for {}s: killing it",
                    child.id(),
                    STOP_GRACE.as_secs()
                );
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if let Some((mut watchdog, mut pipe)) = self.watchdog.take() {
            let _ = writeln!(pipe, "done");
            drop(pipe);
            let _ = watchdog.wait();
        }
    }
}

/// Stops the daemons of an earlier run still named in `dir/run/*.pid`
/// (xtask killed before it could stop them): a pid counts only while its
/// command line names `dir`, so a reused pid is left alone.
fn stop_stale(dir: &Path) -> anyhow::Result<()> {
    let marker = dir.to_string_lossy().into_owned();
    for name in DAEMONS.iter().rev() {
        let pid_file = dir.join("run").join(format!("{name}.pid"));
        let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
        else {
            continue;
        };
        let ours = |pid: u32| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&marker) && !zombie(pid))
        };
        if !ours(pid) {
            continue;
        }
        println!("==> slurm: stopping {name} (pid {pid}) left by an earlier run");
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        let deadline = Instant::now() + STOP_GRACE;
        while ours(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if ours(pid) {
            Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()?;
            let deadline = Instant::now() + STOP_GRACE;
            while ours(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            ensure!(!ours(pid), "{name} (pid {pid}) survived SIGKILL");
        }
    }
    Ok(())
}

/// An exited process not yet reaped by its parent.
fn zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

fn read_urandom_1024() -> anyhow::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut buf = vec![0; 1024];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf)
}

/// This machine's short hostname, which slurmd registers its node as.
fn hostname() -> anyhow::Result<String> {
    let out = Command::new("hostname")
        .arg("-s")
        .output()
        .context("hostname -s")?;
    let host = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    ensure!(
        out.status.success() && !host.is_empty(),
        "`hostname -s` gave no name"
    );
    Ok(host)
}

fn slurm_conf(dir: &Path, host: &str, cpus: usize) -> String {
    let d = dir.display();
    format!(
        "# Written by `cargo xtask bench dispatch` (xtask/src/slurm.rs) at each start.
ClusterName=stratobench
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={CTLD_PORT}
SlurmdPort={SLURMD_PORT}
AuthType=auth/munge
AuthInfo=socket={d}/munge/munge.socket
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={d}/ctld
SlurmdSpoolDir={d}/spool
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
SlurmctldPidFile={d}/run/slurmctld.pid
SlurmdPidFile={d}/run/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=bench Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"
    )
}
