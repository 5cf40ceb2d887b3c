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
//! on Azure ML). Interactive shells are not offered yet: the client is told
//! to run a command. Output is streamed, the exit status passed on.
//!
//! The host key (ed25519) is made once and kept in
//! `WORK_DIR/credentials/ssh_host_ed25519_key` (0600). Bounds: at most
//! [`MAX_CONNECTIONS`] connections at once, 8 session channels each, 6
//! login attempts per connection with a second's wait after each refusal,
//! an hour without traffic ends a connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::StreamExt as _;
use russh::keys::{PrivateKey, PublicKey};
use russh::server::{Auth, Msg, Server as _, Session};
use russh::{Channel, ChannelId};
use strato_runtime::{ContainerRuntime, ExecEvent, LABEL_NODE, OutputStream};
use tokio::io::AsyncReadExt as _;

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
            runtime,
        };
        let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
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
                let _ = tcp.set_nodelay(true);
                let handler = server.new_client(Some(peer));
                let config = config.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match russh::server::run_stream(config, tcp, handler).await {
                        Ok(session) => {
                            if let Err(e) = session.await {
                                tracing::debug!(%peer, error = %e, "SSH session ended");
                            }
                        }
                        Err(e) => tracing::debug!(%peer, error = %e, "SSH handshake failed"),
                    }
                });
            }
        });
        let _ = self.started.set(at);
        tracing::info!(%at, "serving SSH");
        Ok(at)
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
    runtime: Arc<R>,
}

impl<R: ContainerRuntime> russh::server::Server for Server<R> {
    type Handler = Connection<R>;

    fn new_client(&mut self, peer: Option<SocketAddr>) -> Connection<R> {
        Connection {
            access: self.access.clone(),
            node: self.node.clone(),
            runtime: self.runtime.clone(),
            channels: HashMap::new(),
            peer,
        }
    }
}

/// One client's connection.
struct Connection<R> {
    access: Arc<Access>,
    node: String,
    runtime: Arc<R>,
    /// Session channels opened, until a command takes them.
    channels: HashMap<ChannelId, Channel<Msg>>,
    peer: Option<SocketAddr>,
}

/// The most SSH connections a node serves at once; more are closed.
pub const MAX_CONNECTIONS: usize = 32;

/// The most session channels one connection may hold open at once.
const MAX_CHANNELS: usize = 8;

impl<R: ContainerRuntime> russh::server::Handler for Connection<R> {
    type Error = russh::Error;

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        let ok = user == self.access.user
            && !self.access.password_hash.is_empty()
            && strato_core::crypt::verify(password, &self.access.password_hash);
        tracing::info!(peer = ?self.peer, user, ok, "SSH password login");
        Ok(if ok { Auth::Accept } else { Auth::reject() })
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
        Ok(if ok { Auth::Accept } else { Auth::reject() })
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.channels.len() >= MAX_CHANNELS {
            return Ok(());
        }
        self.channels.insert(channel.id(), channel);
        reply.accept().await;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(open) = self.channels.remove(&channel) else {
            session.channel_failure(channel)?;
            return Ok(());
        };
        session.channel_success(channel)?;
        let command = String::from_utf8_lossy(data).into_owned();
        let (runtime, node) = (self.runtime.clone(), self.node.clone());
        tracing::info!(peer = ?self.peer, node = %node, "SSH command");
        tokio::spawn(async move {
            let code = run(runtime.as_ref(), &node, &command, &open).await;
            let _ = open.exit_status(code).await;
            let _ = open.eof().await;
            let _ = open.close().await;
        });
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(open) = self.channels.remove(&channel) else {
            session.channel_failure(channel)?;
            return Ok(());
        };
        session.channel_success(channel)?;
        tokio::spawn(async move {
            let said = &b"strato: interactive shells are not offered yet; run a command: ssh ... COMMAND\r\n"[..];
            let _ = open.extended_data(1, said).await;
            let _ = open.exit_status(1).await;
            let _ = open.eof().await;
            let _ = open.close().await;
        });
        Ok(())
    }
}

/// Runs `command` in the node's running job container, else on the node;
/// streams its output to `channel` and returns its exit status.
async fn run<R: ContainerRuntime>(
    runtime: &R,
    node: &str,
    command: &str,
    channel: &Channel<Msg>,
) -> u32 {
    let running = match runtime.list(LABEL_NODE, node).await {
        Ok(containers) => containers.into_iter().find(|c| c.running),
        Err(e) => {
            tracing::warn!(error = %e, "SSH: cannot list the node's containers");
            None
        }
    };
    match running {
        Some(container) => {
            let mut events = runtime.exec(&container.id, command);
            while let Some(event) = events.next().await {
                match event {
                    Ok(ExecEvent::Output(OutputStream::Stdout, bytes)) => {
                        let _ = channel.data(&bytes[..]).await;
                    }
                    Ok(ExecEvent::Output(OutputStream::Stderr, bytes)) => {
                        let _ = channel.extended_data(1, &bytes[..]).await;
                    }
                    Ok(ExecEvent::Exit(code)) => return u32::try_from(code).unwrap_or(255),
                    Err(e) => {
                        let said = format!("strato: {e}\r\n");
                        let _ = channel.extended_data(1, said.as_bytes()).await;
                        return 255;
                    }
                }
            }
            255
        }
        None => on_node(command, channel).await,
    }
}

/// Runs `command` with `/bin/sh -c` on the node, no input.
async fn on_node(command: &str, channel: &Channel<Msg>) -> u32 {
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
            let said = format!("strato: cannot start a shell on the node: {e}\r\n");
            let _ = channel.extended_data(1, said.as_bytes()).await;
            return 255;
        }
    };
    let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
    let copy_out = async {
        if let Some(out) = out.as_mut() {
            let mut buf = [0u8; 8192];
            while let Ok(n) = out.read(&mut buf).await {
                if n == 0 || channel.data(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    };
    let copy_err = async {
        if let Some(err) = err.as_mut() {
            let mut buf = [0u8; 8192];
            while let Ok(n) = err.read(&mut buf).await {
                if n == 0 || channel.extended_data(1, &buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    };
    let ((), (), status) = tokio::join!(copy_out, copy_err, child.wait());
    status
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
