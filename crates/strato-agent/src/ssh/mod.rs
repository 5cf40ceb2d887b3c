//! SSH to a node, for clusters that enable it (`ssh.public_access` with an
//! admin user): the agent serves SSH (russh, ring) on `--ssh-listen` once
//! its enrolment says so, and never otherwise, so a cluster without SSH
//! has nothing listening.
//!
//! Only the cluster's admin user logs in, with the cluster's public key or
//! its password (checked against the SHA-512 crypt hash the control plane
//! keeps; the password itself never reaches the node). A command (`ssh
//! NODE COMMAND`) runs in the node's running job container when there is
//! one (`docker exec`, as the container's user), otherwise in a shell on
//! the node (as the agent's user: the admin user is the node's admin, as
//! on Azure ML) when `--ssh-node-shell` allows it (the local provider's
//! nodes do not: their "node" is the control plane's own machine). If the
//! node's containers cannot be listed, nothing runs. A login (`ssh NODE`)
//! or a command with `-t` gets a terminal in the same place (see
//! `terminal`): the client's window size, its keys and resizes relayed.
//! A command without `-t` gets no input. Subsystems (sftp) and forwarding
//! are not offered. Output is streamed, the exit status passed on.
//!
//! The host key (ed25519) is made once and kept in
//! `WORK_DIR/credentials/ssh_host_ed25519_key` (0600). Bounds: at most
//! [`MAX_CONNECTIONS`] connections at once and [`MAX_PER_ADDRESS`] from one
//! address; a connection not logged in within [`LOGIN_DEADLINE`] is closed;
//! 6 login attempts per connection with a second's wait after each
//! refusal, and at most [`PASSWORD_BURST`] password attempts a node then one
//! every 6 s, whoever makes them; [`MAX_COMMANDS`] commands at once per
//! connection; a command whose client is gone (or does not read for a
//! minute) is stopped; an hour without traffic ends a connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::StreamExt as _;
use russh::keys::{PrivateKey, PublicKey};
use russh::server::{Auth, Msg, Server as _, Session};
use russh::{Channel, ChannelId, ChannelReadHalf, ChannelWriteHalf};
use strato_runtime::{ContainerRuntime, ExecEvent, JobContainer, LABEL_NODE, OutputStream};
use tokio::io::AsyncReadExt as _;

mod terminal;

use terminal::PtyRequest;

/// Where a channel's output, exit status and end go.
type Out = ChannelWriteHalf<Msg>;

/// Who may log in, as the control plane said at enrolment.
#[derive(Debug, Clone)]
pub struct Access {
    pub user: String,
    /// The cluster's key, if it has one.
    pub key: Option<PublicKey>,
    /// The SHA-512 crypt hash of the admin password, if it has one.
    pub password_hash: String,
}

impl Access {
    /// From the enrolment's answer; `None` if nobody could log in.
    pub fn from_wire(ssh: &strato_proto::v1::SshAccess) -> Option<Access> {
        let key = match ssh.admin_ssh_public_key.trim() {
            "" => None,
            line => match PublicKey::from_openssh(line) {
                Ok(key) => Some(key),
                Err(e) => {
                    tracing::warn!(error = %e, "the cluster's SSH key cannot be read; key logins refused");
                    None
                }
            },
        };
        (!ssh.admin_username.is_empty() && (key.is_some() || !ssh.admin_password_hash.is_empty()))
            .then(|| Access {
                user: ssh.admin_username.clone(),
                key,
                password_hash: ssh.admin_password_hash.clone(),
            })
    }
}

/// The node's SSH server: started once, the first time an enrolment says
/// the cluster enables SSH.
#[derive(Debug, Default)]
pub struct SshServer {
    started: OnceLock<SocketAddr>,
}

impl SshServer {
    /// Starts serving on `listen` for `node`, unless it serves already.
    /// Returns where it listens.
    pub async fn start<R: ContainerRuntime>(
        &self,
        listen: SocketAddr,
        access: Access,
        node: String,
        node_shell: bool,
        credentials: &Path,
        runtime: Arc<R>,
    ) -> std::io::Result<SocketAddr> {
        if let Some(at) = self.started.get() {
            return Ok(*at);
        }
        let key = host_key(credentials)?;
        let socket = tokio::net::TcpListener::bind(listen).await?;
        let at = socket.local_addr()?;
        let config = Arc::new(russh::server::Config {
            keys: vec![key],
            auth_rejection_time: Duration::from_secs(1),
            auth_rejection_time_initial: Some(Duration::from_millis(0)),
            max_auth_attempts: 6,
            inactivity_timeout: Some(Duration::from_secs(3600)),
            ..Default::default()
        });
        let mut server = Server {
            access: Arc::new(access),
            node,
            node_shell,
            runtime,
            passwords: Arc::new(std::sync::Mutex::new(strato_core::rate::TokenBucket::new(
                PASSWORD_RATE,
                PASSWORD_BURST,
                now_ms(),
            ))),
        };
        let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let per_address: Arc<std::sync::Mutex<HashMap<std::net::IpAddr, usize>>> = Arc::default();
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = match socket.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "SSH accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(permit) = connections.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, "SSH: {MAX_CONNECTIONS} connections already; closed");
                    continue;
                };
                {
                    let mut counts = per_address.lock().unwrap_or_else(|p| p.into_inner());
                    let n = counts.entry(peer.ip()).or_default();
                    if *n >= MAX_PER_ADDRESS {
                        tracing::warn!(%peer, "SSH: {MAX_PER_ADDRESS} connections from this address already; closed");
                        continue;
                    }
                    *n += 1;
                }
                let _ = tcp.set_nodelay(true);
                let handler = server.new_client(Some(peer));
                let logged_in = handler.logged_in.clone();
                let (config, per_address) = (config.clone(), per_address.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    serve_connection(config, tcp, handler, logged_in, peer).await;
                    let mut counts = per_address.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(n) = counts.get_mut(&peer.ip()) {
                        *n = n.saturating_sub(1);
                        if *n == 0 {
                            counts.remove(&peer.ip());
                        }
                    }
                });
            }
        });
        let _ = self.started.set(at);
        tracing::info!(%at, "serving SSH");
        Ok(at)
    }
}

/// One connection: closed if it has not logged in within the deadline.
async fn serve_connection<R: ContainerRuntime>(
    config: Arc<russh::server::Config>,
    tcp: tokio::net::TcpStream,
    handler: Connection<R>,
    logged_in: Arc<std::sync::atomic::AtomicBool>,
    peer: SocketAddr,
) {
    let session = match tokio::time::timeout(
        LOGIN_DEADLINE,
        russh::server::run_stream(config, tcp, handler),
    )
    .await
    {
        Ok(Ok(session)) => session,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "SSH handshake failed");
            return;
        }
        Err(_) => return,
    };
    tokio::pin!(session);
    tokio::select! {
        ended = &mut session => {
            if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "SSH session ended");
            }
            return;
        }
        () = tokio::time::sleep(LOGIN_DEADLINE) => {}
    }
    if !logged_in.load(std::sync::atomic::Ordering::SeqCst) {
        tracing::info!(%peer, "SSH: not logged in within {LOGIN_DEADLINE:?}; closed");
        return;
    }
    if let Err(e) = session.await {
        tracing::debug!(%peer, error = %e, "SSH session ended");
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// The host key's public half as an OpenSSH line, for the enrolment to
/// report (clients pin it); the key is made if there is none.
pub fn host_public_key(credentials: &Path) -> Option<String> {
    match host_key(credentials)
        .and_then(|k| k.public_key().to_openssh().map_err(std::io::Error::other))
    {
        Ok(line) => Some(line),
        Err(e) => {
            tracing::warn!(error = %e, "no SSH host key");
            None
        }
    }
}

/// The host key, made once.
fn host_key(credentials: &Path) -> std::io::Result<PrivateKey> {
    let path = credentials.join("ssh_host_ed25519_key");
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Ok(key) = PrivateKey::from_openssh(text)
    {
        return Ok(key);
    }
    let mut seed = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
    let key = PrivateKey::from(russh::keys::ssh_key::private::Ed25519Keypair::from_seed(
        &seed,
    ));
    let text = key
        .to_openssh(russh::keys::ssh_key::LineEnding::LF)
        .map_err(std::io::Error::other)?;
    strato_runtime::write_private(&path, text.as_bytes())?;
    Ok(key)
}

struct Server<R> {
    access: Arc<Access>,
    node: String,
    node_shell: bool,
    runtime: Arc<R>,
    /// Password attempts on this node, whoever makes them.
    passwords: Arc<std::sync::Mutex<strato_core::rate::TokenBucket>>,
}

impl<R: ContainerRuntime> russh::server::Server for Server<R> {
    type Handler = Connection<R>;

    fn new_client(&mut self, peer: Option<SocketAddr>) -> Connection<R> {
        Connection {
            access: self.access.clone(),
            node: self.node.clone(),
            node_shell: self.node_shell,
            runtime: self.runtime.clone(),
            passwords: self.passwords.clone(),
            channels: HashMap::new(),
            ptys: HashMap::new(),
            commands: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            logged_in: Arc::default(),
            peer,
        }
    }
}

/// One client's connection.
struct Connection<R> {
    access: Arc<Access>,
    node: String,
    node_shell: bool,
    runtime: Arc<R>,
    passwords: Arc<std::sync::Mutex<strato_core::rate::TokenBucket>>,
    /// Session channels opened, until a command takes them: what the
    /// client sends on each (russh queues it, up to 100 messages, and
    /// waits when the queue is full: whoever takes the channel reads it or
    /// drops it) and how to answer.
    channels: HashMap<ChannelId, (ChannelReadHalf, Out)>,
    /// The pseudo-terminals asked for on channels not yet running anything.
    ptys: HashMap<ChannelId, PtyRequest>,
    /// Commands of this connection still running.
    commands: Arc<std::sync::atomic::AtomicUsize>,
    logged_in: Arc<std::sync::atomic::AtomicBool>,
    peer: Option<SocketAddr>,
}

/// The most SSH connections a node serves at once; more are closed.
pub const MAX_CONNECTIONS: usize = 32;
/// The most from one address at once.
pub const MAX_PER_ADDRESS: usize = 8;
/// How long a connection may take to log in.
pub const LOGIN_DEADLINE: Duration = Duration::from_secs(30);
/// Password attempts a node takes at once, then one every 6 s.
pub const PASSWORD_BURST: u32 = 10;
const PASSWORD_RATE: f64 = 1.0 / 6.0;
/// The most commands and terminals one connection runs at once (and
/// session channels it holds open waiting for one).
pub const MAX_COMMANDS: usize = 8;
/// How long a command's output may wait for the client to read it.
const SEND_TIMEOUT: Duration = Duration::from_secs(60);

impl<R> Connection<R> {
    /// The answer to a login attempt, noting a success.
    fn answer(&self, ok: bool) -> Auth {
        if ok {
            self.logged_in
                .store(true, std::sync::atomic::Ordering::SeqCst);
            Auth::Accept
        } else {
            Auth::reject()
        }
    }
}

impl<R: ContainerRuntime> russh::server::Handler for Connection<R> {
    type Error = russh::Error;

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        let allowed = self
            .passwords
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(now_ms())
            .is_ok();
        let ok = allowed
            && user == self.access.user
            && !self.access.password_hash.is_empty()
            && strato_core::crypt::verify(password, &self.access.password_hash);
        tracing::info!(peer = ?self.peer, user, ok, allowed, "SSH password login");
        Ok(self.answer(ok))
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let ok = user == self.access.user
            && self
                .access
                .key
                .as_ref()
                .is_some_and(|k| k.key_data() == key.public_key.key_data());
        tracing::info!(peer = ?self.peer, user, ok, "SSH key login");
        Ok(self.answer(ok))
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let busy = self.commands.load(std::sync::atomic::Ordering::SeqCst);
        if self.channels.len() + busy >= MAX_COMMANDS {
            return Ok(());
        }
        let id = channel.id();
        self.channels.insert(id, channel.split());
        reply.accept().await;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some((input, open)) = self.channels.remove(&channel) else {
            session.channel_failure(channel)?;
            return Ok(());
        };
        session.channel_success(channel)?;
        let command = String::from_utf8_lossy(data).into_owned();
        if let Some(pty) = self.ptys.remove(&channel) {
            // `ssh -t NODE COMMAND`: the command on a terminal.
            self.start_terminal(input, open, Some(command), pty);
            return Ok(());
        }
        // A command without a terminal takes no input: what the client
        // sends is dropped, never queued.
        drop(input);
        let (runtime, node) = (self.runtime.clone(), self.node.clone());
        let (node_shell, commands) = (self.node_shell, self.commands.clone());
        tracing::info!(peer = ?self.peer, node = %node, "SSH command");
        commands.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tokio::spawn(async move {
            let code = run(runtime.as_ref(), &node, node_shell, &command, &open).await;
            let _ = open.exit_status(code).await;
            let _ = open.eof().await;
            let _ = open.close().await;
            commands.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        });
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.remove(&channel);
        self.ptys.remove(&channel);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        col_width: u32,
        row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if !self.channels.contains_key(&channel) {
            session.channel_failure(channel)?;
            return Ok(());
        }
        self.ptys.insert(
            channel,
            PtyRequest {
                term: terminal::term(term),
                size: terminal::size(col_width, row_height),
            },
        );
        session.channel_success(channel)?;
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        tracing::info!(peer = ?self.peer, subsystem = name, "SSH subsystem refused");
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some((input, open)) = self.channels.remove(&channel) else {
            session.channel_failure(channel)?;
            return Ok(());
        };
        session.channel_success(channel)?;
        // Without a pty request (`ssh -T`), a terminal all the same: a
        // shell needs one to prompt.
        let pty = self.ptys.remove(&channel).unwrap_or(PtyRequest {
            term: "dumb".to_owned(),
            size: strato_runtime::TerminalSize::default(),
        });
        self.start_terminal(input, open, None, pty);
        Ok(())
    }
}

impl<R: ContainerRuntime> Connection<R> {
    /// Runs `command`, or a login shell, on a terminal for `channel`: in the
    /// node's running job container, else on the node when it offers a
    /// shell. The client's keys and window sizes come from `input`.
    fn start_terminal(
        &mut self,
        input: ChannelReadHalf,
        open: Out,
        command: Option<String>,
        pty: PtyRequest,
    ) {
        let (runtime, node) = (self.runtime.clone(), self.node.clone());
        let (node_shell, commands) = (self.node_shell, self.commands.clone());
        tracing::info!(peer = ?self.peer, node = %node, command = command.is_some(), "SSH terminal");
        commands.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tokio::spawn(async move {
            let code = match running_job(runtime.as_ref(), &node, &open).await {
                Err(code) => code,
                Ok(Some(container)) => {
                    terminal::in_container(
                        &runtime,
                        &container.id,
                        command.as_deref(),
                        pty,
                        input,
                        &open,
                    )
                    .await
                }
                Ok(None) if node_shell => {
                    terminal::on_node(command.as_deref(), pty, input, &open).await
                }
                Ok(None) => {
                    say(&open, NO_SHELL).await;
                    1
                }
            };
            let _ = open.exit_status(code).await;
            let _ = open.eof().await;
            let _ = open.close().await;
            commands.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        });
    }
}

/// What a client is told when there is neither a job nor a node shell.
const NO_SHELL: &str =
    "strato: no job runs on this node now, and this node offers no shell of its own";

/// The node's running job container, if any; `Err` with the exit status
/// when the node's containers cannot be listed (the client is told).
async fn running_job<R: ContainerRuntime>(
    runtime: &R,
    node: &str,
    channel: &Out,
) -> Result<Option<JobContainer>, u32> {
    match runtime.list(LABEL_NODE, node).await {
        Ok(containers) => Ok(containers.into_iter().find(|c| c.running)),
        Err(e) => {
            tracing::warn!(error = %e, "SSH: cannot list the node's containers");
            say(
                channel,
                &format!("strato: cannot see this node's job ({e}); nothing was run"),
            )
            .await;
            Err(255)
        }
    }
}

/// Runs `command` in the node's running job container, else on the node
/// (when `node_shell`); streams its output to `channel` and returns its
/// exit status. If the node's containers cannot be listed, nothing runs.
async fn run<R: ContainerRuntime>(
    runtime: &R,
    node: &str,
    node_shell: bool,
    command: &str,
    channel: &Out,
) -> u32 {
    let running = match running_job(runtime, node, channel).await {
        Ok(running) => running,
        Err(code) => return code,
    };
    match running {
        Some(container) => {
            let mut events = runtime.exec(&container.id, command);
            while let Some(event) = events.next().await {
                let sent = match event {
                    Ok(ExecEvent::Output(OutputStream::Stdout, bytes)) => {
                        send(channel, None, &bytes).await
                    }
                    Ok(ExecEvent::Output(OutputStream::Stderr, bytes)) => {
                        send(channel, Some(1), &bytes).await
                    }
                    Ok(ExecEvent::Exit(code)) => return u32::try_from(code).unwrap_or(255),
                    Err(e) => {
                        say(channel, &format!("strato: {e}")).await;
                        return 255;
                    }
                };
                if !sent {
                    // The client is gone: stop reading its output.
                    return 255;
                }
            }
            255
        }
        None if node_shell => on_node(command, channel).await,
        None => {
            say(channel, NO_SHELL).await;
            1
        }
    }
}

/// Sends output to the client (standard error with `Some(1)`); false when
/// the client is gone or has not read it for [`SEND_TIMEOUT`].
async fn send(channel: &Out, ext: Option<u32>, bytes: &[u8]) -> bool {
    let sending = async {
        match ext {
            None => channel.data(bytes).await,
            Some(ext) => channel.extended_data(ext, bytes).await,
        }
    };
    matches!(
        tokio::time::timeout(SEND_TIMEOUT, sending).await,
        Ok(Ok(()))
    )
}

/// A line of Strato's own on standard error.
async fn say(channel: &Out, line: &str) {
    let _ = send(channel, Some(1), format!("{line}\r\n").as_bytes()).await;
}

/// Copies `pipe` to the client until it closes; false when the client is
/// gone.
async fn copy_to<R: tokio::io::AsyncRead + Unpin>(
    pipe: Option<&mut R>,
    channel: &Out,
    ext: Option<u32>,
) -> bool {
    let Some(pipe) = pipe else { return true };
    let mut buf = [0u8; 8192];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return true,
            Ok(n) => {
                if !send(channel, ext, &buf[..n]).await {
                    return false;
                }
            }
        }
    }
}

/// Runs `command` with `/bin/sh -c` on the node, no input; killed when
/// the client is gone.
async fn on_node(command: &str, channel: &Out) -> u32 {
    let child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            say(
                channel,
                &format!("strato: cannot start a shell on the node: {e}"),
            )
            .await;
            return 255;
        }
    };
    let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
    let (out_ok, err_ok) = tokio::join!(
        copy_to(out.as_mut(), channel, None),
        copy_to(err.as_mut(), channel, Some(1))
    );
    if !(out_ok && err_ok) {
        // The client is gone: so is the command.
        let _ = child.start_kill();
        let _ = child.wait().await;
        return 255;
    }
    child
        .wait()
        .await
        .ok()
        .and_then(|s| s.code())
        .and_then(|c| u32::try_from(c).ok())
        .unwrap_or(255)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl azureuser";

    fn wire(user: &str, key: &str, hash: &str) -> strato_proto::v1::SshAccess {
        strato_proto::v1::SshAccess {
            admin_username: user.into(),
            admin_ssh_public_key: key.into(),
            admin_password_hash: hash.into(),
        }
    }

    #[test]
    fn only_a_user_with_a_key_or_a_password_may_log_in() {
        let a = Access::from_wire(&wire("azureuser", KEY, "")).expect("a key");
        assert_eq!(a.user, "azureuser");
        assert!(a.key.is_some());
        let p = Access::from_wire(&wire("azureuser", "", "$6$salt$hash")).expect("a password");
        assert!(p.key.is_none());
        assert!(Access::from_wire(&wire("", KEY, "")).is_none(), "no user");
        assert!(
            Access::from_wire(&wire("azureuser", "", "")).is_none(),
            "no credential"
        );
        assert!(
            Access::from_wire(&wire("azureuser", "not a key", "")).is_none(),
            "an unreadable key lets nobody in"
        );
    }

    #[test]
    fn the_host_key_is_made_once_and_kept_private() {
        let dir = std::env::temp_dir().join(format!("strato-ssh-key-{}", std::process::id()));
        let first = host_key(&dir).expect("made");
        let again = host_key(&dir).expect("read");
        assert_eq!(first.public_key(), again.public_key());
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.join("ssh_host_ed25519_key"))
            .expect("written")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).ok();
    }
}
