//! Running the commands the tasks are made of: echoed, timed, and failing
//! when they fail; as root where they need it.

use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, ensure};

/// Runs a command, echoing it, and fails if it fails.
pub(crate) fn run(what: &str, mut cmd: Command) -> anyhow::Result<()> {
    let started = Instant::now();
    println!("==> {what}");
    let status = cmd
        .status()
        .with_context(|| format!("{what}: cannot start"))?;
    ensure!(status.success(), "{what}: failed ({status})");
    println!("    {what}: ok in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

pub(crate) fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A command run as root: directly when this is root, else through sudo.
pub(crate) fn as_root(args: &[&str]) -> Command {
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
