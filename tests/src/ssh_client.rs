//! The real OpenSSH client, as the SSH tests run it: a key pair from
//! `ssh-keygen`, a command, or a login on a terminal (`ssh -tt`) fed with
//! keys. Host keys are not checked (each test's nodes are new); the user
//! is the clusters' admin user, `azureuser`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const MISSING: &str = "ssh is missing: run `cargo xtask setup` (it installs openssh-client)";

/// A new ed25519 key pair in `dir`: (private key path, public key line).
pub fn keypair(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key)
        .output()
        .expect("ssh-keygen is missing: run `cargo xtask setup` (it installs openssh-client)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = std::fs::read_to_string(key.with_extension("pub")).expect("public key");
    (key, public.trim().to_owned())
}

/// `ssh OPTIONS` to `azureuser@HOST:PORT` with `key` only, in batch mode.
fn ssh(host: &str, port: u64, key: &Path, options: &[&str]) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.args(options)
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "ConnectTimeout=10",
            "-p",
            &port.to_string(),
            "-i",
        ])
        .arg(key)
        .arg(format!("azureuser@{host}"));
    cmd
}

/// `ssh ... COMMAND`, non-interactive.
pub fn command(host: &str, port: u64, key: &Path, command: &str) -> Output {
    ssh(host, port, key, &[])
        .arg(command)
        .stdin(Stdio::null())
        .output()
        .expect(MISSING)
}

/// `ssh -tt ...` (a terminal and a login shell), typing `keys` and then
/// closing its input.
pub fn terminal(host: &str, port: u64, key: &Path, keys: &str) -> Output {
    use std::io::Write as _;
    let mut child = start_terminal(host, port, key);
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(keys.as_bytes())
        .expect("type into ssh");
    child.wait_with_output().expect("ssh ends")
}

/// `ssh -tt ...` started, its input, output and errors piped.
pub fn start_terminal(host: &str, port: u64, key: &Path) -> std::process::Child {
    ssh(host, port, key, &["-tt"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect(MISSING)
}
