//! `strato-rsh`: the launcher Strato mounts into every container of a
//! multi-node job, at `/mnt/strato/bin/strato-rsh`.
//!
//! - `strato-rsh HOST COMMAND...`: a remote shell without SSH, for
//!   `mpirun --mca plm_rsh_agent`. Asks the node's agent
//!   (`STRATO_EXEC_ENDPOINT`, with the attempt's `MSI_SECRET`) to run
//!   COMMAND in HOST's container of the same job attempt, copies its output
//!   to stdout and stderr and exits with its exit code (255 when it could
//!   not run, like ssh). Standard input is not forwarded.
//! - `strato-rsh --wait`: what the other nodes of an `mpi` job run while
//!   rank 0's `mpirun` starts processes in their containers; exits 143 on
//!   SIGTERM.
//! - `strato-rsh --spawn P -- COMMAND...`: starts P copies of COMMAND with
//!   `RANK` (NODE_RANK × P + i), `LOCAL_RANK` (i) and `LOCAL_WORLD_SIZE`,
//!   waits for all and exits with the first non-zero exit code.
//!
//! Only the standard library and the agent's own runtime: it runs in any
//! image with a C library as new as the node's.

#![allow(clippy::print_stdout, clippy::print_stderr)] // reason: a command-line tool; its output is the remote command's

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, ExitCode};

/// Why the launcher could not do its part; it exits 255 with this text.
#[derive(Debug, thiserror::Error)]
enum RshError {
    #[error("{0}")]
    Usage(&'static str),
    #[error("starting: {0}")]
    Runtime(std::io::Error),
    #[error("{0}")]
    Signal(std::io::Error),
    #[error("starting {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("waiting: {0}")]
    Wait(std::io::Error),
    /// A variable of the job's environment is missing (the whole message).
    #[error("{0}")]
    NotInJob(&'static str),
    #[error("STRATO_EXEC_ENDPOINT {0:?} is not http://host:port/path")]
    BadEndpoint(String),
    #[error("connecting to {authority}: {source}")]
    Connect {
        authority: String,
        source: std::io::Error,
    },
    #[error("sending the request: {0}")]
    Send(std::io::Error),
    #[error("reading the answer: {0}")]
    ReadAnswer(std::io::Error),
    #[error("the agent refused: {status} {body}")]
    Refused { status: String, body: String },
    #[error("the connection to {host} ended before the command did")]
    EndedEarly { host: String },
    #[error("reading output: {0}")]
    ReadOutput(std::io::Error),
    /// The command could not run on the remote rank.
    #[error("on {host}: {why}")]
    Remote { host: String, why: String },
    #[error("unknown frame {0} from the agent")]
    UnknownFrame(u8),
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("--wait") => wait(),
        Some("--spawn") => spawn(&args[1..]),
        Some("--help" | "-h") | None => {
            println!(
                "usage: strato-rsh HOST COMMAND... | strato-rsh --wait | strato-rsh --spawn P -- COMMAND...\n\
                 The launcher of Strato's multi-node jobs (see the module docs in strato-agent)."
            );
            Ok(0)
        }
        Some(_) => remote(&args),
    };
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code & 0xff).unwrap_or(255)),
        Err(why) => {
            eprintln!("strato-rsh: {why}");
            ExitCode::from(255)
        }
    }
}

fn wait() -> Result<i32, RshError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RshError::Runtime)?;
    runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(RshError::Signal)?;
        let mut int = signal(SignalKind::interrupt()).map_err(RshError::Signal)?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        Ok(143)
    })
}

fn spawn(args: &[String]) -> Result<i32, RshError> {
    let usage = || RshError::Usage("usage: strato-rsh --spawn P -- COMMAND...");
    let count: u32 = args
        .first()
        .and_then(|p| p.parse().ok())
        .filter(|p| *p > 0)
        .ok_or_else(usage)?;
    let command = match args.get(1).map(String::as_str) {
        Some("--") => &args[2..],
        _ => &args[1..],
    };
    let (program, rest) = command.split_first().ok_or_else(usage)?;
    let node_rank: u32 = std::env::var("STRATO_NODE_RANK")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let mut children = Vec::new();
    for local in 0..count {
        let child = Command::new(program)
            .args(rest)
            .env("RANK", (node_rank * count + local).to_string())
            .env("LOCAL_RANK", local.to_string())
            .env("LOCAL_WORLD_SIZE", count.to_string())
            .spawn()
            .map_err(|source| RshError::Spawn {
                program: program.clone(),
                source,
            })?;
        children.push(child);
    }
    // The first process to fail ends the others: one blocked in a
    // collective would otherwise wait for the dead one forever.
    let mut code = 0;
    let mut running = children;
    while !running.is_empty() {
        let mut still = Vec::with_capacity(running.len());
        for mut child in running {
            match child.try_wait().map_err(RshError::Wait)? {
                Some(status) => {
                    let c = status.code().unwrap_or(128 + 9);
                    if code == 0 && c != 0 {
                        code = c;
                    }
                }
                None => still.push(child),
            }
        }
        if code != 0 {
            for child in &mut still {
                let _ = child.kill();
                let _ = child.wait();
            }
            return Ok(code);
        }
        running = still;
        if !running.is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    Ok(code)
}

fn remote(args: &[String]) -> Result<i32, RshError> {
    // Skip ssh-style options a caller may add (`-x`, `-l user`).
    let mut rest = args;
    while let Some(first) = rest.first().filter(|a| a.starts_with('-')) {
        rest = if first == "-l" && rest.len() > 1 {
            &rest[2..]
        } else {
            &rest[1..]
        };
    }
    let (host, command) = rest
        .split_first()
        .ok_or(RshError::Usage("usage: strato-rsh HOST COMMAND..."))?;
    let endpoint = std::env::var("STRATO_EXEC_ENDPOINT").map_err(|_| {
        RshError::NotInJob("STRATO_EXEC_ENDPOINT is not set: run inside a Strato multi-node job")
    })?;
    let secret =
        std::env::var("MSI_SECRET").map_err(|_| RshError::NotInJob("MSI_SECRET is not set"))?;
    let (authority, path) = endpoint
        .strip_prefix("http://")
        .and_then(|r| r.split_once('/').map(|(a, p)| (a, format!("/{p}"))))
        .ok_or_else(|| RshError::BadEndpoint(endpoint.clone()))?;
    let body = format!(
        "{{\"host\":{},\"command\":{}}}",
        json_string(host),
        json_string(&command.join(" "))
    );
    let mut stream = TcpStream::connect(authority).map_err(|source| RshError::Connect {
        authority: authority.to_owned(),
        source,
    })?;
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n\
         secret: {secret}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(RshError::Send)?;
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader
        .read_line(&mut status)
        .map_err(RshError::ReadAnswer)?;
    let mut chunked = false;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).map_err(RshError::ReadAnswer)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("transfer-encoding")
            && v.trim().eq_ignore_ascii_case("chunked")
        {
            chunked = true;
        }
    }
    let mut body: Box<dyn Read> = if chunked {
        Box::new(Chunked {
            inner: reader,
            left: 0,
            done: false,
        })
    } else {
        Box::new(reader)
    };
    if status.split_whitespace().nth(1).is_none_or(|c| c != "200") {
        let mut text = String::new();
        let _ = body.read_to_string(&mut text);
        return Err(RshError::Refused {
            status: status.trim().to_owned(),
            body: text.trim().to_owned(),
        });
    }
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    loop {
        let mut head = [0u8; 5];
        if body.read_exact(&mut head).is_err() {
            return Err(RshError::EndedEarly { host: host.clone() });
        }
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut data = vec![0u8; len];
        body.read_exact(&mut data).map_err(RshError::ReadOutput)?;
        match head[0] {
            1 => {
                let mut out = stdout.lock();
                let _ = out.write_all(&data);
                let _ = out.flush();
            }
            2 => {
                let mut err = stderr.lock();
                let _ = err.write_all(&data);
                let _ = err.flush();
            }
            3 if len == 4 => return Ok(i32::from_be_bytes([data[0], data[1], data[2], data[3]])),
            4 => {
                return Err(RshError::Remote {
                    host: host.clone(),
                    why: String::from_utf8_lossy(&data).into_owned(),
                });
            }
            other => return Err(RshError::UnknownFrame(other)),
        }
    }
}

/// A JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// An HTTP/1.1 chunked body.
struct Chunked<R> {
    inner: R,
    left: usize,
    done: bool,
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        if self.left == 0 {
            let mut line = String::new();
            self.inner.read_line(&mut line)?;
            if line.trim().is_empty() {
                // The CRLF after the previous chunk.
                line.clear();
                self.inner.read_line(&mut line)?;
            }
            let size = line.trim().split(';').next().unwrap_or("");
            self.left = usize::from_str_radix(size, 16).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, "bad chunk size")
            })?;
            if self.left == 0 {
                self.done = true;
                return Ok(0);
            }
        }
        let n = buf.len().min(self.left);
        let read = self.inner.read(&mut buf[..n])?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.left -= read;
        Ok(read)
    }
}
