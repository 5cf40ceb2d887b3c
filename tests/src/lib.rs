//! The end-to-end harness: starts the real `strato-control` binary on
//! loopback ports with its own data directory, and runs the real `strato`
//! CLI against it.
//!
//! The binaries are the ones `cargo build --workspace --bins` put beside this
//! test executable; `cargo xtask ci` builds them first.

pub mod acr;
pub mod browser;
pub mod fleet;
pub mod in_process;
pub mod machines;
pub mod registry;
pub mod sim;
pub mod ssh_client;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use strato_proto::v1;
use strato_proto::v1::compute_service_client::ComputeServiceClient;
use strato_proto::v1::job_service_client::JobServiceClient;

/// A channel to a control plane: TLS with its CA, and the Owner's token
/// from its admin.conf on every call.
pub type Channel = strato_proto::client::AuthedChannel;

/// What `ControlPlane::start_fast` passes: reconcile every 200 ms,
/// heartbeats every second, a node silent for 5 s is unusable.
const FAST_ARGS: &[&str] = &[
    "--reconcile-interval-ms",
    "200",
    "--heartbeat-interval",
    "1",
    "--node-heartbeat-timeout",
    "5",
];

/// How long a control plane may take to answer after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The path of a workspace binary, built beside this test executable.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/<test> -> target/debug/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (`cargo xtask ci` does)",
        path.display()
    );
    path
}

/// The path of a workspace binary beside the running one (a tool in
/// target/<profile>/ starting another).
pub fn binary_beside(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("this executable's path")?;
    let path = exe.with_file_name(name);
    anyhow::ensure!(
        path.exists(),
        "{} is missing: build the workspace's bins (`cargo build --release --bins`)",
        path.display()
    );
    Ok(path)
}

/// The client configuration a control plane wrote at first start.
pub fn admin_config(path: &Path) -> anyhow::Result<strato_core::client_config::ClientConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(strato_core::client_config::ClientConfig::parse(&text)?)
}

/// A TLS channel to the endpoint of a client configuration, trusting its
/// CA, with `token` on every call.
pub async fn connect_tls(
    config: &strato_core::client_config::ClientConfig,
    token: Option<&str>,
) -> anyhow::Result<Channel> {
    let endpoint = config.endpoint.as_deref().context("no endpoint")?;
    let channel = strato_proto::client::endpoint(endpoint, config.ca_certificate.as_deref())?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await?;
    Ok(strato_proto::client::authed(
        channel,
        strato_proto::client::Bearer::new(token)?,
    ))
}

/// Whether an executable `program` is on PATH.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// A free loopback port. Another process could take it before it is used;
/// on loopback in a test run that does not happen in practice.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A running `strato-control` process.
pub struct ControlPlane {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    extra_args: Vec<String>,
    /// Set in its environment (and so in its local agents').
    env: Vec<(String, String)>,
    log: PathBuf,
    /// Its admin.conf, read once it was written.
    admin: Option<strato_core::client_config::ClientConfig>,
}

impl ControlPlane {
    /// Starts a control plane on `data_dir` with fresh ports and waits until
    /// its gRPC API answers.
    pub async fn start(data_dir: &Path, extra_args: &[&str]) -> anyhow::Result<Self> {
        Self::start_on(data_dir, [127, 0, 0, 1].into(), extra_args).await
    }

    /// Starts a control plane whose gRPC API listens on `ip` (its server
    /// certificate names it), for machines that reach it from elsewhere;
    /// the HTTP side stays on loopback.
    pub async fn start_on(
        data_dir: &Path,
        ip: std::net::IpAddr,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_full(data_dir, ip, extra_args, &[]).await
    }

    /// Starts a control plane as `start` does, with `env` set for it and
    /// for the agents it starts.
    pub async fn start_with_env(
        data_dir: &Path,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        Self::start_full(data_dir, [127, 0, 0, 1].into(), extra_args, env).await
    }

    /// Starts a control plane as `start_fast` does, with `env` set for it
    /// and for the agents it starts (`STRATO_*` settings of theirs).
    pub async fn start_fast_with_env(
        data_dir: &Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        Self::start_full(data_dir, [127, 0, 0, 1].into(), FAST_ARGS, env).await
    }

    /// Starts one of several replicas on one database (`env` names it) and
    /// one data directory (the CA, the signing and secrets keys they
    /// share), on the given loopback ports, logging to `DATA_DIR/../NAME.log`.
    pub async fn start_replica(
        data_dir: &Path,
        name: &str,
        (grpc_port, http_port): (u16, u16),
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut cp = ControlPlane {
            child: None,
            data_dir: data_dir.to_owned(),
            grpc: SocketAddr::from(([127, 0, 0, 1], grpc_port)),
            http: SocketAddr::from(([127, 0, 0, 1], http_port)),
            extra_args: extra_args.iter().map(|s| (*s).to_owned()).collect(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            log: data_dir.with_file_name(format!("{name}.log")),
            admin: None,
        };
        cp.spawn().await?;
        Ok(cp)
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    async fn start_full(
        data_dir: &Path,
        ip: std::net::IpAddr,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        // Two free ports, never the same one twice (the kernel may hand
        // back a port just released).
        let grpc_port = free_port();
        let http_port = std::iter::repeat_with(free_port)
            .find(|p| *p != grpc_port)
            .expect("a second free port");
        let mut cp = ControlPlane {
            child: None,
            data_dir: data_dir.to_owned(),
            grpc: SocketAddr::new(ip, grpc_port),
            http: SocketAddr::from(([127, 0, 0, 1], http_port)),
            extra_args: extra_args
                .iter()
                .map(|s| (*s).to_owned())
                .chain((!ip.is_loopback()).then(|| format!("--tls-san={ip}")))
                .collect(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            log: data_dir.with_extension("log"),
            admin: None,
        };
        cp.spawn().await?;
        Ok(cp)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(binary("strato-control"))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--grpc-listen")
            .arg(self.grpc.to_string())
            .arg("--http-listen")
            .arg(self.http.to_string())
            .args(&self.extra_args)
            .env_remove("STRATO_QUOTA_FILE")
            .env_remove("STRATO_REGION")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting strato-control")?;
        self.child = Some(child);
        self.wait_ready().await
    }

    /// Polls until the gRPC API answers, or fails with the process's log.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "strato-control exited with {status} while starting:\n{}",
                    self.log_text()
                );
            }
            if self.admin.is_none() && self.admin_conf().exists() {
                self.admin = Some(admin_config(&self.admin_conf())?);
            }
            if let Ok(mut client) = self.try_client().await
                && client
                    .list_sizes(strato_proto::v1::ListSizesRequest::default())
                    .await
                    .is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "strato-control did not answer within {START_TIMEOUT:?}:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What the process wrote to stdout and stderr so far.
    /// Starts a control plane that notices quickly: reconcile every 200 ms,
    /// heartbeats every second, a node silent for 5 s is unusable.
    pub async fn start_fast(data_dir: &Path) -> anyhow::Result<Self> {
        Self::start(data_dir, FAST_ARGS).await
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn endpoint(&self) -> String {
        format!("https://{}", self.grpc)
    }

    /// The control plane's admin.conf: its CA and the bootstrap Owner
    /// token.
    pub fn admin_conf(&self) -> PathBuf {
        strato_control::data_dir::admin_conf(&self.data_dir)
    }

    /// What its admin.conf holds: the endpoint, the CA and the bootstrap
    /// Owner token.
    pub fn admin(&self) -> &strato_core::client_config::ClientConfig {
        self.admin
            .as_ref()
            .expect("admin.conf is read once the control plane answers")
    }

    /// A channel with `token` (`None`: no token) to this control plane.
    pub async fn channel_with(&self, token: Option<&str>) -> anyhow::Result<Channel> {
        let admin = self.admin.as_ref().context("admin.conf not written yet")?;
        // This process's own address (replicas share one admin.conf).
        let own = strato_core::client_config::ClientConfig {
            endpoint: Some(self.endpoint()),
            ..admin.clone()
        };
        connect_tls(&own, token).await
    }

    async fn try_client(&self) -> anyhow::Result<ComputeServiceClient<Channel>> {
        let token = self.admin.as_ref().and_then(|a| a.token.clone());
        Ok(ComputeServiceClient::new(
            self.channel_with(token.as_deref()).await?,
        ))
    }

    pub async fn client(&self) -> ComputeServiceClient<Channel> {
        self.try_client().await.expect("connect to strato-control")
    }

    /// `GET path` on the side port as the admin: the body of a 200 answer.
    pub fn http_get(&self, path: &str) -> String {
        https_get(self.http, self.admin(), path)
    }

    pub async fn channel(&self) -> Channel {
        self.channel_with(self.admin().token.as_deref())
            .await
            .expect("connect to strato-control")
    }

    pub async fn jobs(&self) -> JobServiceClient<Channel> {
        JobServiceClient::new(self.channel().await)
    }

    /// Submits `spec`, with the test image when it names none; its id.
    pub async fn submit(&self, mut spec: strato_proto::v1::JobSpec) -> String {
        if spec.image.is_empty() {
            spec.image = TEST_IMAGE.into();
        }
        self.jobs()
            .await
            .submit_job(strato_proto::v1::SubmitJobRequest { spec: Some(spec) })
            .await
            .expect("submit")
            .into_inner()
            .id
    }

    /// The agent processes this control plane's local provider started
    /// (found by the endpoint or, when `--agent-endpoint` sends them
    /// elsewhere, the work directory under this data dir, in their
    /// environment), as (pid, node id).
    pub fn agents(&self) -> Vec<(u32, String)> {
        let endpoint = format!("STRATO_CONTROL_PLANE={}", self.endpoint());
        let work_dirs = format!("STRATO_WORK_DIR={}/", self.data_dir.join("nodes").display());
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return out;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
            let ours = environ
                .split(|b| *b == 0)
                .any(|v| v == endpoint.as_bytes() || v.starts_with(work_dirs.as_bytes()));
            if !ours {
                continue;
            }
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if let Some(i) = args.iter().position(|a| a == "--node-name")
                && let Some(node) = args.get(i + 1)
            {
                out.push((pid, node.clone()));
            }
        }
        out
    }

    /// SIGKILLs a node's agent process; its containers keep running.
    pub fn kill_agent(&self, node_id: &str) {
        for (pid, node) in self.agents() {
            if node == node_id {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }

    /// Starts a node's agent again as the provider did, from the node's
    /// `agent.env` (like systemd restarting it).
    pub fn restart_agent(&self, node_id: &str) -> anyhow::Result<Child> {
        let dir = self.data_dir.join("nodes").join(node_id);
        let env = std::fs::read_to_string(dir.join("agent.env"))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("agent.log"))?;
        let mut cmd = Command::new(binary("strato-agent"));
        for line in env.lines() {
            if let Some((k, v)) = line.split_once('=') {
                cmd.env(k, v);
            }
        }
        Ok(cmd
            .arg("--node-name")
            .arg(node_id)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?)
    }

    /// Starts `strato-agent` as a machine of an attached cluster would run
    /// it: joining with `join_token` (from a 0600 file), the control
    /// plane's CA, its own work directory (`DATA_DIR/machines/NAME`), its
    /// metrics and SSH on free loopback ports. The machine's node id is made from
    /// `name`. It runs `DATA_DIR/machines/NAME/start.sh` (which a power
    /// command can run again to "boot" the machine; it writes the agent's
    /// pid to `agent.pid` and appends to `agent.log`). Its containers carry
    /// this control plane's id, so dropping the control plane removes them;
    /// the agent is found by its endpoint.
    pub fn start_machine(&self, name: &str, join_token: &str) -> anyhow::Result<Child> {
        let dir = self.data_dir.join("machines").join(name);
        std::fs::create_dir_all(&dir)?;
        let token = dir.join("join-token");
        strato_runtime::write_private(&token, join_token.as_bytes())?;
        let id = std::fs::read_to_string(self.data_dir.join("control-plane-id"))?;
        let metrics = free_port();
        let ssh = std::iter::repeat_with(free_port)
            .find(|p| *p != metrics)
            .expect("a second free port");
        let quote = |p: &Path| format!("'{}'", p.display());
        let script = format!(
            "#!/bin/sh\n\
             echo $$ > {pid}\n\
             exec env -i PATH=\"$PATH\" STRATO_CONTROL_PLANE={endpoint} STRATO_CONTROL_PLANE_ID={id} \\\n  \
             STRATO_LOG=info {agent} --ca-file {ca} --join-token-file {token} \\\n  \
             --work-dir {work} --metrics-listen 127.0.0.1:{metrics} --ssh-listen 127.0.0.1:{ssh} \\\n  \
             --node-name {name} \\\n  \
             >> {log} 2>&1 < /dev/null\n",
            pid = quote(&dir.join("agent.pid")),
            endpoint = self.endpoint(),
            id = id.trim(),
            agent = quote(&binary("strato-agent")),
            ca = quote(&strato_control::tls::Tls::ca_path(&self.data_dir)),
            token = quote(&token),
            work = quote(&dir.join("work")),
            log = quote(&dir.join("agent.log")),
        );
        let start = dir.join("start.sh");
        std::fs::write(&start, script)?;
        Ok(Command::new("sh")
            .arg(&start)
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .spawn()?)
    }

    /// What machine `name`'s agent logged.
    pub fn machine_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.data_dir.join("machines").join(name).join("agent.log"))
            .unwrap_or_default()
    }

    /// SIGKILL: the process gets no chance to flush or clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL strato-control");
            child.wait().expect("reap strato-control");
        }
    }

    /// SIGTERM, then waits for the process to exit, up to `timeout`.
    pub async fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let mut child = self.child.take().context("not running")?;
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("strato-control did not exit within {timeout:?} of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the process again on the same data directory and ports.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "still running");
        self.spawn().await
    }

    /// The `strato` CLI, pointed at this control plane as its Owner (the
    /// admin.conf's CA and token), ready for arguments.
    pub fn cli_command(&self) -> Command {
        // The endpoint, CA and token all come from admin.conf, as the
        // README tells users.
        let mut cmd = Command::new(binary("strato"));
        cmd.arg("--config")
            .arg(self.admin_conf())
            .env_remove("STRATO_ENDPOINT")
            .env_remove("STRATO_TOKEN")
            .env_remove("STRATO_CONFIG")
            .env_remove("STRATO_CA_FILE")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs the `strato` CLI against this control plane.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_command().args(args).output().expect("run strato")
    }

    /// Runs the `strato` CLI and fails the test, with its stderr, unless it
    /// succeeded.
    pub fn cli_ok(&self, args: &[&str]) -> Output {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "strato {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

impl Drop for ControlPlane {
    /// Stops the control plane, its agents and their containers.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for (pid, node) in self.agents() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            remove_containers(&node);
        }
        // Mount helpers are stopped (rclone unmounts on SIGTERM), and what
        // is still mounted under the data directory is unmounted, before
        // anything is removed.
        if let Ok(id) = std::fs::read_to_string(self.data_dir.join("control-plane-id")) {
            let helpers = docker_ids(&[
                "ps",
                "-q",
                "--filter",
                &format!("label=strato.control-plane={}", id.trim()),
                "--filter",
                "label=strato.mount.of",
            ]);
            if !helpers.is_empty() {
                let mut args = vec!["stop", "-t", "10"];
                args.extend(helpers.iter().map(String::as_str));
                quiet_docker(&args);
            }
        }
        unmount_under(&self.data_dir);
        if let Ok(entries) = std::fs::read_dir(self.data_dir.join("nodes")) {
            for e in entries.flatten() {
                remove_containers(&e.file_name().to_string_lossy());
            }
        }
        // Everything else its local provider and agents made (gang
        // networks, containers of nodes it had forgotten) carries its id.
        if let Ok(id) = std::fs::read_to_string(self.data_dir.join("control-plane-id")) {
            let label = format!("strato.control-plane={}", id.trim());
            remove_labelled(&label);
            for network in networks_labelled(&label) {
                quiet_docker(&["network", "rm", &network]);
            }
        }
    }
}

/// The mount points under `dir`, deepest first, as this process sees them.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = format!("{}/", dir.display());
    let mut found: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|point| point.starts_with(&prefix))
        .map(str::to_owned)
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.len()));
    found
}

/// Lazily unmounts everything mounted under `dir` (what a killed mount
/// helper left).
pub fn unmount_under(dir: &Path) {
    for point in mounts_under(dir) {
        let _ = Command::new("umount")
            .args(["-l", &point])
            .stderr(Stdio::null())
            .status();
    }
}

/// What a TLS-only port answers a plaintext `GET path` (lossily; a TLS
/// alert is not text): it must not contain an HTTP answer.
pub fn plaintext_answer(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let Ok(mut plain) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = plain.set_read_timeout(Some(Duration::from_secs(10)));
    // One write: the server may reset the connection after the first bytes.
    let _ = plain.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes());
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// One HTTP/1.0 exchange with an HTTPS server at `addr` (the control
/// plane's side port, the OIDC issuer), trusting `ca_pem`, presenting
/// `client` (a certificate and its key, PEM) if given, with `headers`
/// added: (status code, body).
pub fn https_request(
    addr: SocketAddr,
    ca_pem: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    client: Option<(&str, &str)>,
) -> anyhow::Result<(u16, String)> {
    https_exchange(addr, ca_pem, method, path, headers, client, "")
}

fn https_exchange(
    addr: SocketAddr,
    ca_pem: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    client: Option<(&str, &str)>,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use std::io::{Read as _, Write as _};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder.with_client_auth_cert(
            CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<Vec<_>, _>>()?,
            PrivateKeyDer::from_pem_slice(key.as_bytes())?,
        )?,
    };
    let name = ServerName::from(addr.ip());
    let tls = rustls::ClientConnection::new(std::sync::Arc::new(config), name)?;
    let tcp = std::net::TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut stream = rustls::StreamOwned::new(tls, tcp);
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes())?;
    let mut out = Vec::new();
    match stream.read_to_end(&mut out) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => {}
        Err(e) => return Err(e.into()),
    }
    let text = String::from_utf8_lossy(&out);
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP response")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status code")?;
    Ok((code, body.to_owned()))
}

/// `GET path` on a control plane's side port at `http` with its admin
/// config's CA and token; the body of a 200 answer.
pub fn https_get(
    http: SocketAddr,
    admin: &strato_core::client_config::ClientConfig,
    path: &str,
) -> String {
    let ca = admin
        .ca_certificate
        .as_deref()
        .expect("admin.conf has the CA");
    let auth = format!("Bearer {}", admin.token.as_deref().unwrap_or_default());
    let (code, body) = https_request(http, ca, "GET", path, &[("Authorization", &auth)], None)
        .unwrap_or_else(|e| panic!("GET {path}: {e:#}"));
    assert_eq!(code, 200, "GET {path}: {body}");
    body
}

/// Runs `docker ARGS`, ignoring what it says (clean-up).
fn quiet_docker(args: &[&str]) {
    let _ = Command::new("docker")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Removes every container with the label `KEY=VALUE`.
fn remove_labelled(label: &str) {
    for id in docker_ids(&["ps", "-aq", "--filter", &format!("label={label}")]) {
        quiet_docker(&["rm", "-f", &id]);
    }
}

/// The names of the Docker networks with the label `KEY=VALUE`.
pub fn networks_labelled(label: &str) -> Vec<String> {
    docker_ids(&[
        "network",
        "ls",
        "--filter",
        &format!("label={label}"),
        "--format",
        "{{.Name}}",
    ])
}

/// What `docker ARGS` prints, a word each.
fn docker_ids(args: &[&str]) -> Vec<String> {
    Command::new("docker")
        .args(args)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Removes every container labelled with the node, and the network
/// sandbox its agent kept ready.
pub fn remove_containers(node_id: &str) {
    remove_labelled(&format!("strato.node={node_id}"));
    remove_labelled(&format!("strato.sandbox.node={node_id}"));
}

/// Ids of the containers (running or not) labelled with the node.
pub fn containers_of(node_id: &str) -> Vec<String> {
    containers_labelled("strato.node", node_id)
}

/// Ids of the network sandboxes (running or not) the node's agent keeps.
pub fn sandboxes_of(node_id: &str) -> Vec<String> {
    containers_labelled("strato.sandbox.node", node_id)
}

/// Ids of the node's network sandboxes that are running: ready for a job.
pub fn running_sandboxes_of(node_id: &str) -> Vec<String> {
    docker_ids(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=strato.sandbox.node={node_id}"),
    ])
}

/// Ids of the containers (running or not) of a job.
pub fn containers_of_job(job_id: &str) -> Vec<String> {
    containers_labelled("strato.job", job_id)
}

fn containers_labelled(key: &str, value: &str) -> Vec<String> {
    docker_ids(&["ps", "-aq", "--filter", &format!("label={key}={value}")])
}

/// The Python with Azure's `azure-identity` that `cargo xtask setup`
/// installs in `.data/venv`.
pub fn python_with_azure_identity() -> PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.data/venv/bin/python");
    let ok = Command::new(&python)
        .args(["-c", "import azure.identity"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{} has no azure-identity: run `cargo xtask setup`",
        python.display()
    );
    python
}

/// The job image the tests use; `cargo xtask setup` builds it.
pub const TEST_IMAGE: &str = "strato-test/busybox:latest";

/// Fails (never skips) when the Docker engine or the test image is missing.
pub fn require_docker() {
    let engine = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        engine,
        "the Docker engine is not running: run `cargo xtask setup`"
    );
    let image = Command::new("docker")
        .args(["image", "inspect", TEST_IMAGE])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        image,
        "the test image {TEST_IMAGE} is missing: run `cargo xtask setup`"
    );
}

/// The MPI job image (Debian with Open MPI and mpi4py); `cargo xtask setup`
/// builds it.
pub const MPI_IMAGE: &str = "strato-test/mpi:latest";

/// Fails (never skips) when the Docker engine or the MPI image is missing.
pub fn require_mpi_image() {
    require_docker();
    let image = Command::new("docker")
        .args(["image", "inspect", MPI_IMAGE])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        image,
        "the MPI test image {MPI_IMAGE} is missing: run `cargo xtask setup`"
    );
}

/// Every stored log line of a job (no follow).
pub async fn job_log_lines(jobs: &mut JobServiceClient<Channel>, id: &str) -> Vec<v1::LogLine> {
    let mut stream = jobs
        .stream_logs(v1::StreamLogsRequest {
            id: id.into(),
            follow: false,
            after: None,
        })
        .await
        .expect("logs")
        .into_inner();
    let mut out = Vec::new();
    while let Some(l) = stream.message().await.expect("log line") {
        out.push(l);
    }
    out
}

/// The text of every stored log line of a job, in order.
pub async fn job_output(jobs: &mut JobServiceClient<Channel>, id: &str) -> Vec<String> {
    job_log_lines(jobs, id)
        .await
        .into_iter()
        .map(|l| l.line)
        .collect()
}

/// Waits until the job is in `state`; fails with the job's reason when it
/// reaches another final state first.
pub async fn wait_job_state(
    jobs: &mut JobServiceClient<Channel>,
    id: &str,
    state: v1::JobState,
    timeout: Duration,
) -> v1::Job {
    let what = format!("job {id} to be {state:?}");
    wait_for(&what, timeout, || {
        let mut jobs = jobs.clone();
        let id = id.to_owned();
        async move {
            let job = jobs
                .get_job(v1::GetJobRequest { id })
                .await
                .expect("get job")
                .into_inner();
            let now = v1::JobState::try_from(job.state).unwrap_or_default();
            let is_final = matches!(
                now,
                v1::JobState::Completed | v1::JobState::Failed | v1::JobState::Canceled
            );
            assert!(
                now == state || !is_final,
                "job {} ended {now:?} ({}) while waiting for {state:?}",
                job.id,
                job.reason
            );
            (now == state).then_some(job)
        }
    })
    .await
}

/// Polls `check` every 100 ms until it returns `Some`, or fails after
/// `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A real OpenID Provider (panva's certified `oidc-provider`, from npm)
/// over HTTPS with the test CA, on a free loopback port: it issues JWT
/// access tokens by the client-credentials grant to clients `ml-team` and
/// `other-team` (`sub` = the client id), and signs with a new key at every
/// start, so [`OidcIssuer::restart`] rotates its key.
pub struct OidcIssuer {
    child: Child,
    pub port: u16,
    log: PathBuf,
}

impl OidcIssuer {
    fn paths() -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.data");
        let package = data.join("oidc/node_modules/oidc-provider");
        let tls = data.join("azurite/tls");
        anyhow::ensure!(
            package.join("package.json").exists() && tls.join("cert.pem").exists(),
            "oidc-provider or the test CA is missing under {}: run `cargo xtask setup`",
            data.display()
        );
        Ok((
            package,
            tls,
            Path::new(env!("CARGO_MANIFEST_DIR")).join("oidc/issuer.mjs"),
        ))
    }

    /// The test CA that its certificate chains to (PEM file).
    pub fn ca_file() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../.data/azurite/tls/ca.pem")
    }

    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Self::start_on(free_port(), dir.join("issuer.log")).await
    }

    /// Starts it on `port` with the studio's public client, whose redirect
    /// URI is `redirect_uri`, and its development login pages.
    pub async fn start_for_studio(
        dir: &Path,
        port: u16,
        redirect_uri: &str,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Self::start_with(port, dir.join("issuer.log"), Some(redirect_uri)).await
    }

    async fn start_on(port: u16, log: PathBuf) -> anyhow::Result<Self> {
        Self::start_with(port, log, None).await
    }

    async fn start_with(port: u16, log: PathBuf, studio: Option<&str>) -> anyhow::Result<Self> {
        let (package, tls, script) = Self::paths()?;
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = Command::new("node")
            .arg(&script)
            .env("PORT", port.to_string())
            .env("TLS_CERT", tls.join("cert.pem"))
            .env("TLS_KEY", tls.join("key.pem"))
            .env("OIDC_PROVIDER", &package)
            .env("STUDIO_REDIRECT_URI", studio.unwrap_or_default())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("node is missing: run `cargo xtask setup`")?;
        let mut issuer = OidcIssuer { child, port, log };
        let deadline = Instant::now() + START_TIMEOUT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = issuer.child.try_wait()? {
                bail!(
                    "the OIDC issuer exited with {status}: {}",
                    std::fs::read_to_string(&issuer.log).unwrap_or_default()
                );
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the OIDC issuer did not listen within {START_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(issuer)
    }

    /// Its issuer URL, as its tokens' `iss` says.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Stops it and starts it again on the same port: a new signing key.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let fresh = Self::start_on(self.port, self.log.clone()).await?;
        *self = fresh;
        Ok(())
    }

    /// An access token for `client` with audience `resource`.
    pub fn token(&self, client: &str, resource: &str) -> anyhow::Result<String> {
        let ca = std::fs::read_to_string(Self::ca_file())?;
        let form = format!(
            "grant_type=client_credentials&client_id={client}&client_secret={client}-secret&scope=api&resource={resource}"
        );
        let (code, body) = https_exchange(
            ([127, 0, 0, 1], self.port).into(),
            &ca,
            "POST",
            "/token",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            None,
            &form,
        )?;
        anyhow::ensure!(code == 200, "the issuer refused a token: {code} {body}");
        let answer: serde_json::Value = serde_json::from_str(&body)?;
        answer["access_token"]
            .as_str()
            .map(str::to_owned)
            .context("no access_token")
    }
}

impl Drop for OidcIssuer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real Azurite blob service over HTTPS with `--oauth basic`, on a free
/// loopback port, with its data in its own directory.
pub struct Azurite {
    child: Child,
    pub port: u16,
    dir: PathBuf,
    tls: PathBuf,
}

/// A tenant whose issuer Azurite accepts.
pub const AZURITE_ISSUER: &str = "https://sts.windows.net/0d0c0b0a-0000-4000-8000-000000000001/";

impl Azurite {
    /// Starts Azurite and waits until it listens; fails with the command that
    /// installs it when it is missing.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.data/azurite");
        let bin = base.join("node_modules/.bin/azurite-blob");
        let tls = base.join("tls");
        anyhow::ensure!(
            bin.exists() && tls.join("cert.pem").exists(),
            "Azurite or its TLS certificate is missing under {}: run `cargo xtask setup`",
            base.display()
        );
        std::fs::create_dir_all(dir)?;
        let port = free_port();
        let log = std::fs::File::create(dir.join("azurite.out"))?;
        let child = Command::new(bin)
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .args([
                "--oauth",
                "basic",
                "--skipApiVersionCheck",
                "--loose",
                "--disableTelemetry",
            ])
            .arg("--cert")
            .arg(tls.join("cert.pem"))
            .arg("--key")
            .arg(tls.join("key.pem"))
            .arg("--location")
            .arg(dir)
            .arg("--debug")
            .arg(dir.join("debug.log"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let mut azurite = Azurite {
            child,
            port,
            dir: dir.to_owned(),
            tls,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = azurite.child.try_wait()? {
                bail!("azurite exited with {status}");
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "azurite did not listen within {START_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(azurite)
    }

    pub fn account_url(&self) -> String {
        format!("https://127.0.0.1:{}/devstoreaccount1", self.port)
    }

    /// The CA that signed Azurite's certificate.
    pub fn ca(&self) -> PathBuf {
        self.tls.join("ca.pem")
    }

    /// Every request Azurite logged (with how it was authorised).
    pub fn debug_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("debug.log")).unwrap_or_default()
    }

    /// A bearer token of the test's own (Azurite checks the claims, not the
    /// signature).
    fn token(&self) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = serde_json::json!({
            "iss": AZURITE_ISSUER, "aud": "https://storage.azure.com",
            "iat": now, "nbf": now - 60, "exp": now + 3600, "oid": "test",
        });
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(b"the test's own"),
        )
        .expect("test token")
    }

    /// curl with the test's token, Azurite's CA and the blob headers.
    fn curl(&self) -> Command {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "--no-progress-meter", "--cacert"])
            .arg(self.ca())
            .args(["-H", &format!("Authorization: Bearer {}", self.token())])
            .args([
                "-H",
                "x-ms-version: 2021-08-06",
                "-H",
                "x-ms-blob-type: BlockBlob",
            ]);
        cmd
    }

    /// Uploads the file at `from` as the blob at `path` (streamed from
    /// disk, one request).
    pub fn put_file(&self, path: &str, from: &Path) -> u16 {
        let out = self
            .curl()
            .args(["-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT", "-T"])
            .arg(from)
            .arg(format!("{}/{path}", self.account_url()))
            .output()
            .expect("curl (apt-get install curl)");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }

    /// Uploads `count` small blobs `{prefix}/fNNNNN.txt` over a few kept
    /// connections; returns how many Azurite stored.
    pub fn put_many(&self, prefix: &str, count: usize, scratch: &Path) -> usize {
        use std::fmt::Write as _;
        let body = scratch.join("small.txt");
        std::fs::write(&body, "small\n").expect("small file");
        let mut config = String::new();
        for i in 0..count {
            let _ = writeln!(
                config,
                "upload-file = \"{}\"\nurl = \"{}/{prefix}/f{i:05}.txt\"\noutput = \"/dev/null\"",
                body.display(),
                self.account_url()
            );
        }
        let list = scratch.join("many.curl");
        std::fs::write(&list, config).expect("curl config");
        let out = self
            .curl()
            .args([
                "--parallel",
                "--parallel-max",
                "8",
                "-w",
                "%{http_code}\n",
                "-K",
            ])
            .arg(&list)
            .output()
            .expect("curl (apt-get install curl)");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.trim() == "201")
            .count()
    }

    /// A request to the account with a bearer token of the test's own:
    /// (HTTP status, body).
    pub fn request(&self, method: &str, path: &str, body: Option<&[u8]>) -> (u16, String) {
        let mut cmd = self.curl();
        cmd.args(["-X", method]).args(["-w", "\n%{http_code}"]);
        if let Some(b) = body {
            cmd.arg("--data-binary")
                .arg(String::from_utf8_lossy(b).into_owned());
        }
        let out = cmd
            .arg(format!("{}/{path}", self.account_url()))
            .output()
            .expect("curl (apt-get install curl)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real Prometheus (Debian's package) on a free loopback port, scraping a
/// control plane's `/metrics` and, through the file-based discovery file the
/// control plane writes, its agents.
pub struct Prometheus {
    child: Child,
    pub port: u16,
}

impl Prometheus {
    pub async fn start(dir: &Path, control: &ControlPlane) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        // The control plane's side port: TLS with its CA, and a Reader's
        // bearer token (the admin's here), as a deployment scrapes it.
        let admin = control.admin();
        strato_runtime::write_private(
            &dir.join("ca.crt"),
            admin
                .ca_certificate
                .as_deref()
                .unwrap_or_default()
                .as_bytes(),
        )?;
        strato_runtime::write_private(
            &dir.join("token"),
            admin.token.as_deref().unwrap_or_default().as_bytes(),
        )?;
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             scrape_configs:\n\
             - job_name: strato-control\n  scheme: https\n  \
               tls_config: {{ca_file: \"{ca}\"}}\n  \
               authorization: {{type: Bearer, credentials_file: \"{token}\"}}\n  \
               static_configs: [{{targets: [\"{http}\"]}}]\n\
             - job_name: strato-agents\n  \
               tls_config: {{ca_file: \"{tls}/node-serving-ca.crt\", cert_file: \"{tls}/scraper.crt\", key_file: \"{tls}/scraper.key\"}}\n  \
               file_sd_configs: [{{files: [\"{targets}\"], refresh_interval: 1s}}]\n",
            tls = control.data_dir.join("tls").display(),
            http = control.http,
            ca = dir.join("ca.crt").display(),
            token = dir.join("token").display(),
            targets = control.data_dir.join("prometheus/agents.json").display(),
        );
        std::fs::write(dir.join("prometheus.yml"), config)?;
        let port = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context(
                "prometheus is missing: run `cargo xtask setup` (it installs Debian's prometheus)",
            )?;
        let mut p = Prometheus { child, port };
        let deadline = Instant::now() + START_TIMEOUT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = p.child.try_wait()? {
                bail!("prometheus exited with {status}");
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "prometheus did not listen within {START_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(p)
    }

    /// The result vector of an instant query.
    pub fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        use std::io::{Read, Write};
        let mut s = match std::net::TcpStream::connect(("127.0.0.1", self.port)) {
            Ok(s) => s,
            Err(_) => return Vec::new(),
        };
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let _ = write!(
            s,
            "GET /api/v1/query?query={encoded} HTTP/1.0\r\nHost: x\r\n\r\n"
        );
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        let body = out.split("\r\n\r\n").nth(1).unwrap_or_default();
        serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["data"]["result"].as_array().cloned())
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
