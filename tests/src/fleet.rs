//! Machines for the fleet tests: containers of `strato-test/machine` (Debian
//! with systemd as PID 1 and its own Docker engine, built by `cargo xtask
//! setup`), each with its own address on a Docker network of the test's,
//! with the control plane outside them on this machine. Their agents start
//! from the project's own systemd unit (`deploy/systemd/strato-agent.service`,
//! mounted read-only with the agent and launcher binaries under test), read
//! their settings from `/etc/strato` as an installed machine does, join over
//! TLS with a join token and run jobs in their own engine.
//!
//! How a machine runs (found on this kind of host; `--privileged` fails here
//! because the bounding set lacks CAP_SYS_RESOURCE): all capabilities but
//! that one, no seccomp or AppArmor profile, the host's cgroup (v1) tree
//! mounted read-write for systemd, tmpfs on /run, /run/lock and /tmp, and an
//! anonymous volume for /var/lib/docker so the inner engine's overlay2 sits
//! on a real file system. The inner engine uses the systemd cgroup driver, so
//! its containers' cgroups sit inside the machine's (with cgroupfs they would
//! land in this host's `/docker` and outlive the machine). Job images reach a machine by `docker save | docker
//! load` (no registry here).
//!
//! A [`Fleet`] removes its machines (with their volumes) and its network when
//! dropped, also when a test fails.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};

use crate::{ControlPlane, binary};

/// The machines' image; `cargo xtask setup` builds it.
pub const MACHINE_IMAGE: &str = "strato-test/machine:2";

/// How long a machine may take to boot (systemd and its Docker engine up).
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

/// The flags a machine container runs with (see the module's documentation).
const MACHINE_FLAGS: &[&str] = &[
    "--cap-add=ALL",
    "--cap-drop=SYS_RESOURCE",
    "--security-opt=seccomp=unconfined",
    "--security-opt=apparmor=unconfined",
    "--volume=/sys/fs/cgroup:/sys/fs/cgroup:rw",
    "--tmpfs=/run",
    "--tmpfs=/run/lock",
    "--tmpfs=/tmp",
    "--volume=/var/lib/docker",
];

/// Fails (never skips) when the Docker engine or the machine image is
/// missing.
pub fn require_machine_image() {
    crate::require_docker();
    let image = docker(&["image", "inspect", MACHINE_IMAGE]).is_ok();
    assert!(
        image,
        "the machine image {MACHINE_IMAGE} is missing: run `cargo xtask setup`"
    );
}

/// Runs `docker ARGS`, failing with its stderr unless it succeeded.
fn docker(args: &[&str]) -> anyhow::Result<Output> {
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running docker")?;
    ensure!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out)
}

/// A Docker network of machines; removed with them when dropped.
pub struct Fleet {
    /// The network's name, also the prefix of its machines' container names.
    name: String,
    /// This host's address on the network: where the machines reach the
    /// control plane.
    pub gateway: IpAddr,
    /// Each machine's `/etc/strato`, under here.
    dir: PathBuf,
    /// Container names of the machines booted (or being booted).
    machines: Vec<String>,
}

impl Fleet {
    /// Creates the network (`strato-fleet-PID-N`, labelled `strato.test`),
    /// after removing what fleets of test processes no longer running left
    /// (a test killed before it could clean up).
    pub fn create(dir: &Path) -> anyhow::Result<Fleet> {
        require_machine_image();
        sweep();
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("strato-fleet-{}-{n}", std::process::id());
        docker(&["network", "create", "--label", "strato.test=fleet", &name])?;
        let mut fleet = Fleet {
            name,
            gateway: [127, 0, 0, 1].into(),
            dir: dir.to_owned(),
            machines: Vec::new(),
        };
        let out = docker(&[
            "network",
            "inspect",
            "--format",
            "{{range .IPAM.Config}}{{.Gateway}}{{end}}",
            &fleet.name,
        ])?;
        fleet.gateway = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .context("the network's gateway")?;
        Ok(fleet)
    }

    /// The container of machine `host`.
    pub fn container(&self, host: &str) -> String {
        format!("{}-{host}", self.name)
    }

    /// Machine `host`'s `/etc/strato`, on this side.
    pub fn etc(&self, host: &str) -> PathBuf {
        self.dir.join(host).join("etc")
    }

    /// Boots machine `host` (its host name, also its name on the network)
    /// with the agent installed but not started, and loads `images` into
    /// its engine. Its `/etc/strato` holds the control plane's CA, `token`
    /// as its join token (0600) and an `agent.env` pointing at `cp`.
    pub fn boot(
        &mut self,
        host: &str,
        cp: &ControlPlane,
        token: &str,
        images: &[&str],
    ) -> anyhow::Result<()> {
        let etc = self.etc(host);
        std::fs::create_dir_all(&etc)?;
        std::fs::copy(
            strato_control::tls::Tls::ca_path(&cp.data_dir),
            etc.join("control-plane-ca.crt"),
        )?;
        self.set_join_token(host, token)?;
        let container = self.container(host);
        let unit = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/systemd/strato-agent.service")
            .canonicalize()
            .context("the agent's unit file")?;
        let bind = |from: &Path, to: &str| format!("--volume={}:{to}:ro", from.display());
        let mut args: Vec<String> = vec![
            "run".into(),
            "--detach".into(),
            format!("--name={container}"),
            format!("--hostname={host}"),
            format!("--network={}", self.name),
            format!("--network-alias={host}"),
            "--label=strato.test=fleet".into(),
        ];
        args.extend(MACHINE_FLAGS.iter().map(|f| (*f).to_owned()));
        args.extend([
            format!("--volume={}:/etc/strato", etc.display()),
            bind(&binary("strato-agent"), "/usr/local/bin/strato-agent"),
            bind(&binary("strato-rsh"), "/usr/local/bin/strato-rsh"),
            bind(&unit, "/etc/systemd/system/strato-agent.service"),
            MACHINE_IMAGE.into(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // Known before it exists: a container created but not started is
        // removed too.
        self.machines.push(container.clone());
        docker(&args)?;
        self.wait_booted(host)?;
        let ip = self.ip(host)?;
        std::fs::write(
            etc.join("agent.env"),
            format!(
                "STRATO_CONTROL_PLANE={}\nSTRATO_METRICS_URL=https://{ip}:9110/metrics\n\
                 STRATO_LOG=info\n",
                cp.endpoint()
            ),
        )?;
        for image in images {
            let load = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "docker save '{image}' | docker exec -i '{container}' docker load"
                ))
                .stdin(Stdio::null())
                .output()?;
            ensure!(
                load.status.success(),
                "loading {image} into {host}: {}",
                String::from_utf8_lossy(&load.stderr)
            );
        }
        Ok(())
    }

    /// Writes `token` as machine `host`'s join token (0600).
    pub fn set_join_token(&self, host: &str, token: &str) -> anyhow::Result<()> {
        strato_runtime::write_private(&self.etc(host).join("join-token"), token.as_bytes())?;
        Ok(())
    }

    /// Waits until systemd reached its target and the engine answers.
    fn wait_booted(&self, host: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            let state = self.exec(host, &["systemctl", "is-system-running"]);
            let booted = state.as_ref().is_ok_and(|o| {
                matches!(
                    String::from_utf8_lossy(&o.stdout).trim(),
                    "running" | "degraded"
                )
            });
            if booted
                && self
                    .exec(host, &["docker", "info"])
                    .is_ok_and(|o| o.status.success())
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "machine {host} did not boot within {BOOT_TIMEOUT:?}: {}",
                    self.exec(host, &["systemctl", "--failed", "--no-pager"])
                        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                        .unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Machine `host`'s address on the network.
    pub fn ip(&self, host: &str) -> anyhow::Result<String> {
        let out = docker(&[
            "inspect",
            "--format",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &self.container(host),
        ])?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Runs `args` on machine `host` (`docker exec`).
    pub fn exec(&self, host: &str, args: &[&str]) -> anyhow::Result<Output> {
        Ok(Command::new("docker")
            .arg("exec")
            .arg(self.container(host))
            .args(args)
            .stdin(Stdio::null())
            .output()?)
    }

    /// `systemctl ARGS` on machine `host`, failing unless it succeeded.
    pub fn systemctl(&self, host: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["systemctl"];
        all.extend_from_slice(args);
        let out = self.exec(host, &all)?;
        ensure!(
            out.status.success(),
            "systemctl {} on {host}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A property of the agent's unit on `host` (`systemctl show -p`).
    pub fn agent_property(&self, host: &str, property: &str) -> String {
        self.systemctl(host, &["show", "--value", "-p", property, "strato-agent"])
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    }

    /// What the agent's unit logged on `host` (its journal).
    pub fn agent_journal(&self, host: &str) -> String {
        self.exec(
            host,
            &[
                "journalctl",
                "-u",
                "strato-agent",
                "--no-pager",
                "-o",
                "cat",
            ],
        )
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
    }

    /// Whether machine `host`'s container runs (a powered-off machine's
    /// does not).
    pub fn running(&self, host: &str) -> bool {
        docker(&[
            "inspect",
            "--format",
            "{{.State.Running}}",
            &self.container(host),
        ])
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "true")
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for machine in &self.machines {
            remove_machine(machine);
        }
        let _ = Command::new("docker")
            .args(["network", "rm", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Removes machine container `name` with its volumes and cgroups.
fn remove_machine(name: &str) {
    let id = docker(&["inspect", "--format", "{{.Id}}", name])
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let _ = Command::new("docker")
        .args(["rm", "--force", "--volumes", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    remove_cgroups(&id);
}

/// Removes the machines and networks of fleets whose test process is gone
/// (`strato-fleet-PID-...`, PID not running).
fn sweep() {
    let gone = |name: &str| {
        name.strip_prefix("strato-fleet-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    };
    let names = |args: &[&str]| -> Vec<String> {
        docker(args)
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let filter = "--filter=label=strato.test=fleet";
    for machine in names(&["ps", "-a", filter, "--format", "{{.Names}}"]) {
        if gone(&machine) {
            remove_machine(&machine);
        }
    }
    for network in names(&["network", "ls", filter, "--format", "{{.Name}}"]) {
        if gone(&network) {
            let _ = docker(&["network", "rm", &network]);
        }
    }
}

/// Removes what a machine's systemd left of its cgroups (v1): the engine
/// removes the container's own cgroup only when it is empty, and systemd
/// made slices inside it. Deepest first, until none is left (the last
/// processes may still be exiting) or five seconds passed.
fn remove_cgroups(id: &str) {
    fn remove(dir: &Path) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    remove(&entry.path());
                }
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
    if id.is_empty() {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
            .map(|controller| controller.path().join("docker").join(id))
            .filter(|dir| dir.is_dir())
            .collect();
        if left.is_empty() || Instant::now() > deadline {
            return;
        }
        for dir in &left {
            remove(dir);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
