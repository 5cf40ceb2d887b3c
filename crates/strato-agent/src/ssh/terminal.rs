//! Interactive SSH sessions (`ssh NODE`, `ssh -t NODE COMMAND`): a terminal
//! in the node's running job container (a Docker exec with a TTY), else on
//! the node itself (a pseudo-terminal whose other side is a login shell's
//! controlling terminal), relayed both ways with the client's window size.
//!
//! The node's pseudo-terminal comes from rustix (no unsafe code); the shell
//! gets it as its controlling terminal through util-linux's `setsid --ctty`,
//! so Ctrl-C and job control work as on any login.

use std::path::Path;

use futures_util::StreamExt as _;
use russh::Channel;
use russh::server::Msg;
use strato_runtime::{ContainerRuntime, TerminalSize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

use super::{say, send};

/// What the client sends a terminal: keys, a new window size, or the end of
/// its input.
#[derive(Debug)]
pub enum Input {
    Data(Vec<u8>),
    Resize(TerminalSize),
    Eof,
}

/// How many inputs may wait for a terminal to take them; the client waits
/// when they are full.
pub const INPUT_QUEUE: usize = 64;

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

/// Runs an interactive session in `container` (the node's running job
/// container) until its command ends; returns its exit status.
pub async fn in_container<R: ContainerRuntime>(
    runtime: &R,
    container: &str,
    command: Option<&str>,
    pty: PtyRequest,
    mut inputs: mpsc::Receiver<Input>,
    channel: &Channel<Msg>,
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
        input,
    } = terminal;
    let mut input = Some(input);
    let mut open = true;
    loop {
        tokio::select! {
            shown = output.next() => match shown {
                Some(Ok(bytes)) => {
                    if !send(channel, None, &bytes).await {
                        // The client is gone: so is its shell.
                        return 255;
                    }
                }
                Some(Err(e)) => {
                    say(channel, &format!("strato: {e}")).await;
                    break;
                }
                None => break,
            },
            typed = inputs.recv(), if open => match typed {
                Some(Input::Data(bytes)) => {
                    if let Some(writer) = input.as_mut()
                        && writer.write_all(&bytes).await.is_err()
                    {
                        input = None;
                    }
                }
                Some(Input::Resize(size)) => {
                    let _ = runtime.resize_terminal(&id, size).await;
                }
                // The end of the client's input is a terminal's end of file
                // (^D); closing the terminal's input would hang it up before
                // it read what came first.
                Some(Input::Eof) => {
                    if let Some(writer) = input.as_mut() {
                        let _ = writer.write_all(&[4]).await;
                    }
                }
                None => open = false,
            },
        }
    }
    // The output ended with the command; its exit code follows shortly.
    for _ in 0..50 {
        match runtime.terminal_exit(&id).await {
            Ok(Some(code)) => return u32::try_from(code).unwrap_or(255),
            Ok(None) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            Err(_) => break,
        }
    }
    255
}

/// Runs an interactive session on the node: a login shell (bash where the
/// node has it), or `command`, on a pseudo-terminal; returns its exit
/// status. The shell runs as the agent's user, in the agent's sandbox.
pub async fn on_node(
    command: Option<&str>,
    pty: PtyRequest,
    mut inputs: mpsc::Receiver<Input>,
    channel: &Channel<Msg>,
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
    let (mut reader, mut writer) = match (master.try_clone(), master.try_clone()) {
        (Ok(r), Ok(w)) => (tokio::fs::File::from_std(r), tokio::fs::File::from_std(w)),
        _ => {
            let _ = child.start_kill();
            return 255;
        }
    };
    let mut buf = vec![0u8; 8192];
    let mut open = true;
    loop {
        tokio::select! {
            // The terminal's side ends (EIO) once the shell and everything
            // it started closed it.
            read = reader.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if !send(channel, None, &buf[..n]).await {
                        let _ = child.start_kill();
                        let _ = child.wait().await;
                        return 255;
                    }
                }
            },
            typed = inputs.recv(), if open => match typed {
                Some(Input::Data(bytes)) => {
                    let _ = writer.write_all(&bytes).await;
                    let _ = writer.flush().await;
                }
                Some(Input::Resize(size)) => {
                    let _ = rustix::termios::tcsetwinsize(&master, winsize(size));
                }
                // The end of the client's input: the terminal's end of file.
                Some(Input::Eof) => {
                    let _ = writer.write_all(&[4]).await;
                    let _ = writer.flush().await;
                }
                None => open = false,
            },
            _ = child.wait() => {
                // The shell is done; what it wrote last is still to be read.
                while let Ok(Ok(n)) =
                    tokio::time::timeout(std::time::Duration::from_millis(100), reader.read(&mut buf)).await
                {
                    if n == 0 || !send(channel, None, &buf[..n]).await {
                        break;
                    }
                }
                break;
            }
        }
    }
    let status = child.wait().await;
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
    let terminal = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(Path::new(path))?;
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
