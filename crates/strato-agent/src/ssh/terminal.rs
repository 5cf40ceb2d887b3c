//! Interactive SSH sessions (`ssh NODE`, `ssh -t NODE COMMAND`): a terminal
//! in the node's running job container (a Docker exec with a TTY), else on
//! the node itself (a pseudo-terminal whose other side is a login shell's
//! controlling terminal), relayed both ways with the client's window size.
//!
//! The node's pseudo-terminal comes from rustix (no unsafe code); the shell
//! gets it as its controlling terminal through util-linux's `setsid --ctty`,
//! so Ctrl-C and job control work as on any login.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use russh::{ChannelMsg, ChannelReadHalf};
use strato_runtime::{ContainerRuntime, TerminalSize};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;

use super::{Out, say, send};

/// The pseudo-terminal a client asked for.
#[derive(Debug, Clone)]
pub struct PtyRequest {
    /// `TERM`, as the client's terminal names itself (`xterm-256color`).
    pub term: String,
    pub size: TerminalSize,
}

/// The size a client asked for, within what a terminal takes (1 to 1000
/// columns and rows; 0 means "as you like": 80 by 24).
pub fn size(columns: u32, rows: u32) -> TerminalSize {
    let fit = |v: u32, default: u16| match v {
        0 => default,
        v => u16::try_from(v.min(1000)).unwrap_or(default),
    };
    TerminalSize {
        columns: fit(columns, 80),
        rows: fit(rows, 24),
    }
}

/// `TERM` for a session: the client's, when it is a plain name.
pub fn term(requested: &str) -> String {
    let plain = !requested.is_empty()
        && requested.len() <= 64
        && requested
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.+".contains(&b));
    if plain {
        requested.to_owned()
    } else {
        "xterm".to_owned()
    }
}

/// What the client's side of a terminal asks of it.
enum Typed {
    Keys(Vec<u8>),
    Resize(TerminalSize),
    /// The end of the client's input: a terminal's end of file (^D).
    /// Closing the terminal's input would hang it up before it read what
    /// came first.
    Eof,
}

/// Reads what the client sends on its channel and hands it to `apply`,
/// one at a time (while `apply` waits, russh's queue and then the client
/// wait: backpressure, nothing dropped). Returns when the client is gone.
async fn pump_input<F, Fut>(mut input: ChannelReadHalf, mut apply: F)
where
    F: FnMut(Typed) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    while let Some(msg) = input.wait().await {
        let typed = match msg {
            ChannelMsg::Data { data } => Typed::Keys(data.to_vec()),
            ChannelMsg::WindowChange {
                col_width,
                row_height,
                ..
            } => Typed::Resize(size(col_width, row_height)),
            ChannelMsg::Eof => Typed::Eof,
            _ => continue,
        };
        apply(typed).await;
    }
}

/// How long a command that ended may take to report its exit code.
const EXIT_CODE_WAIT: Duration = Duration::from_secs(10);

/// Runs an interactive session in `container` (the node's running job
/// container) until its command ends; returns its exit status. A client
/// that leaves hangs the terminal up: its processes get SIGHUP (and
/// SIGKILL after a grace), so nothing it started outlives it.
pub async fn in_container<R: ContainerRuntime>(
    runtime: &Arc<R>,
    container: &str,
    command: Option<&str>,
    pty: PtyRequest,
    input: ChannelReadHalf,
    channel: &Out,
) -> u32 {
    let env = vec![format!("TERM={}", pty.term)];
    let terminal = match runtime.terminal(container, command, env, pty.size).await {
        Ok(terminal) => terminal,
        Err(e) => {
            say(channel, &format!("strato: cannot open a terminal: {e}")).await;
            return 255;
        }
    };
    let strato_runtime::Terminal {
        id,
        mut output,
        input: writer,
    } = terminal;
    let writer = Arc::new(tokio::sync::Mutex::new(writer));
    let typing = {
        let (runtime, id, writer) = (runtime.clone(), id.clone(), writer.clone());
        tokio::spawn(pump_input(input, move |typed| {
            let (runtime, id, writer) = (runtime.clone(), id.clone(), writer.clone());
            async move {
                match typed {
                    Typed::Keys(bytes) => {
                        let _ = writer.lock().await.write_all(&bytes).await;
                    }
                    Typed::Eof => {
                        let _ = writer.lock().await.write_all(&[4]).await;
                    }
                    Typed::Resize(size) => {
                        let _ = runtime.resize_terminal(&id, size).await;
                    }
                }
            }
        }))
    };
    let mut typing = std::pin::pin!(typing);
    let mut client_here = true;
    loop {
        tokio::select! {
            shown = output.next() => match shown {
                Some(Ok(bytes)) => {
                    if client_here && !send(channel, None, &bytes).await {
                        client_here = false;
                        let _ = runtime.end_terminal(&id).await;
                    }
                }
                Some(Err(e)) => {
                    say(channel, &format!("strato: {e}")).await;
                    break;
                }
                None => break,
            },
            _ = &mut typing, if client_here => {
                // The client is gone: hang up, then read on until the
                // terminal's output ends.
                client_here = false;
                let _ = runtime.end_terminal(&id).await;
            }
        }
    }
    typing.abort();
    // The output ended with the command; its exit code follows shortly.
    let deadline = tokio::time::Instant::now() + EXIT_CODE_WAIT;
    while tokio::time::Instant::now() < deadline {
        match runtime.terminal_exit(&id).await {
            Ok(Some(code)) => return u32::try_from(code).unwrap_or(255),
            Ok(None) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(_) => break,
        }
    }
    255
}

/// Runs an interactive session on the node: a login shell (bash where the
/// node has it), or `command`, on a pseudo-terminal; returns its exit
/// status. The shell runs as the agent's user, in the agent's sandbox. A
/// client that leaves hangs the terminal up: the shell's session gets
/// SIGHUP, and SIGKILL after a grace.
pub async fn on_node(
    command: Option<&str>,
    pty: PtyRequest,
    input: ChannelReadHalf,
    channel: &Out,
) -> u32 {
    let (master, mut child) = match spawn(command, &pty) {
        Ok(started) => started,
        Err(e) => {
            say(
                channel,
                &format!("strato: cannot start a shell on the node: {e}"),
            )
            .await;
            return 255;
        }
    };
    let session = child
        .id()
        .and_then(|pid| rustix::process::Pid::from_raw(i32::try_from(pid).ok()?));
    let hang_up = move || {
        if let Some(session) = session {
            let _ = rustix::process::kill_process_group(session, rustix::process::Signal::HUP);
        }
    };
    let master = Arc::new(master);
    let typing = {
        let master = master.clone();
        tokio::spawn(pump_input(input, move |typed| {
            let master = master.clone();
            async move {
                let _ = tokio::task::spawn_blocking(move || {
                    use std::io::Write as _;
                    match typed {
                        Typed::Keys(bytes) => (&*master).write_all(&bytes),
                        Typed::Eof => (&*master).write_all(&[4]),
                        Typed::Resize(size) => {
                            rustix::termios::tcsetwinsize(&*master, winsize(size))
                                .map_err(std::io::Error::from)
                        }
                    }
                })
                .await;
            }
        }))
    };
    // The terminal's side is read on a thread of its own: it ends (EIO)
    // once the shell and everything it started closed the terminal.
    let (shown_tx, mut shown) = mpsc::channel::<Vec<u8>>(16);
    let reader = {
        let master = master.clone();
        std::thread::Builder::new()
            .name("ssh-pty".into())
            .spawn(move || {
                use std::io::Read as _;
                let mut buf = vec![0u8; 8192];
                loop {
                    match (&*master).read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if shown_tx.blocking_send(buf[..n].to_vec()).is_err() {
                                return;
                            }
                        }
                    }
                }
            })
    };
    if let Err(e) = reader {
        say(channel, &format!("strato: cannot read the terminal: {e}")).await;
        hang_up();
        let _ = child.kill().await;
        typing.abort();
        return 255;
    }
    let mut typing = std::pin::pin!(typing);
    let mut client_here = true;
    let mut status = None;
    loop {
        tokio::select! {
            bytes = shown.recv() => match bytes {
                Some(bytes) => {
                    if client_here && !send(channel, None, &bytes).await {
                        client_here = false;
                        hang_up();
                    }
                }
                None => break,
            },
            _ = &mut typing, if client_here => {
                client_here = false;
                hang_up();
            }
            ended = child.wait(), if status.is_none() => {
                status = Some(ended);
                // What the shell left running on its terminal goes with it.
                hang_up();
            }
            _ = tokio::time::sleep(Duration::from_secs(5)), if !client_here || status.is_some() => {
                // Hung up and still there: killed.
                if let Some(session) = session {
                    let _ = rustix::process::kill_process_group(
                        session,
                        rustix::process::Signal::KILL,
                    );
                }
            }
        }
    }
    typing.abort();
    let status = match status {
        Some(status) => status,
        None => child.wait().await,
    };
    status
        .ok()
        .and_then(|s| s.code())
        .and_then(|c| u32::try_from(c).ok())
        .unwrap_or(255)
}

fn winsize(size: TerminalSize) -> rustix::termios::Winsize {
    rustix::termios::Winsize {
        ws_row: size.rows,
        ws_col: size.columns,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// Opens a pseudo-terminal of the requested size and starts the shell on
/// its other side, in a session of its own with it as the controlling
/// terminal. Returns the terminal's side and the shell.
fn spawn(
    command: Option<&str>,
    pty: &PtyRequest,
) -> std::io::Result<(std::fs::File, tokio::process::Child)> {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    rustix::termios::tcsetwinsize(&master, winsize(pty.size))?;
    let name = ptsname(&master, Vec::new())?;
    let path = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name.as_bytes());
    // Not the agent's controlling terminal (under systemd the agent leads
    // a session of its own): only the shell's, through setsid --ctty.
    let terminal = {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(rustix::fs::OFlags::NOCTTY.bits() as i32)
            .open(Path::new(path))?
    };
    let shell = if Path::new("/bin/bash").exists() {
        "/bin/bash"
    } else {
        "/bin/sh"
    };
    let mut cmd = tokio::process::Command::new("setsid");
    cmd.arg("--ctty").arg(shell);
    match command {
        Some(command) => cmd.arg("-c").arg(command),
        None => cmd.arg("-l"),
    };
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    let child = cmd
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("TERM", &pty.term)
        .env("HOME", home)
        .env("SHELL", shell)
        .stdin(terminal.try_clone()?)
        .stdout(terminal.try_clone()?)
        .stderr(terminal)
        .kill_on_drop(true)
        .spawn()?;
    Ok((std::fs::File::from(master), child))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_terms_are_kept_within_bounds() {
        assert_eq!(
            size(120, 40),
            TerminalSize {
                columns: 120,
                rows: 40
            }
        );
        assert_eq!(size(0, 0), TerminalSize::default());
        assert_eq!(
            size(u32::MAX, 5),
            TerminalSize {
                columns: 1000,
                rows: 5
            }
        );
        assert_eq!(term("xterm-256color"), "xterm-256color");
        assert_eq!(term(""), "xterm");
        assert_eq!(term("x; rm -rf /"), "xterm");
        assert_eq!(term(&"a".repeat(65)), "xterm");
    }
}
