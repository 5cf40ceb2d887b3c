//! What a `cargo xtask ci` run leaves behind: Docker containers and networks
//! named `strato-*`, and `strato-agent` processes (and the studio tests'
//! `chromedriver` and `chromium`, marked by their `strato-e2e-browser-`
//! profile: a developer's own browser is never touched), and the tests'
//! `strato_test_*` schemas on the test PostgreSQL server, that are there
//! after the tests and were not there before them. Found by comparing two snapshots,
//! and removed so that the next run starts clean. Images (`strato-test/…`)
//! are not looked at: the tests use them, they do not leave them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail, ensure};

/// Strato's containers, networks and agents on this machine at one moment.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Snapshot {
    /// Names of `strato-*` containers, running or not.
    containers: BTreeSet<String>,
    /// Names of `strato-*` networks.
    networks: BTreeSet<String>,
    /// `strato-agent` processes: pid and command line.
    agents: BTreeMap<u32, String>,
    /// `strato_test_*` schemas on the test PostgreSQL server.
    schemas: BTreeSet<String>,
}

impl Snapshot {
    /// `docker ps -a` and `docker network ls` names, and /proc/*/cmdline.
    pub(crate) fn take() -> anyhow::Result<Self> {
        Ok(Snapshot {
            containers: strato_names(&docker(&["ps", "-a", "--format", "{{.Names}}"])?),
            networks: strato_names(&docker(&["network", "ls", "--format", "{{.Name}}"])?),
            agents: agent_processes()?,
            schemas: test_schemas()?,
        })
    }

    /// What this snapshot holds that `before` did not. A pid whose command
    /// line changed is a new process.
    fn new_since(&self, before: &Snapshot) -> Snapshot {
        Snapshot {
            containers: &self.containers - &before.containers,
            networks: &self.networks - &before.networks,
            agents: self
                .agents
                .iter()
                .filter(|(pid, cmdline)| before.agents.get(pid) != Some(cmdline))
                .map(|(pid, cmdline)| (*pid, cmdline.clone()))
                .collect(),
            schemas: &self.schemas - &before.schemas,
        }
    }

    fn is_empty(&self) -> bool {
        self.containers.is_empty()
            && self.networks.is_empty()
            && self.agents.is_empty()
            && self.schemas.is_empty()
    }

    /// Kills the agents first (so they start nothing more), then removes the
    /// containers, then the networks (no container is attached any more).
    fn remove(&self) -> anyhow::Result<()> {
        let pids: Vec<String> = self.agents.keys().map(u32::to_string).collect();
        let failures: Vec<String> = [
            run_on_all(&["kill", "-KILL"], &pids),
            run_on_all(&["docker", "rm", "-f"], &self.containers),
            run_on_all(&["docker", "network", "rm"], &self.networks),
            drop_schemas(&self.schemas),
        ]
        .into_iter()
        .flatten()
        .collect();
        ensure!(failures.is_empty(), "{}", failures.join("; "));
        Ok(())
    }
}

/// Runs `COMMAND NAMES…` unless there are no names; says how it failed, if
/// it did.
fn run_on_all<'a>(command: &[&str], names: impl IntoIterator<Item = &'a String>) -> Option<String> {
    let names: Vec<&str> = names.into_iter().map(String::as_str).collect();
    if names.is_empty() {
        return None;
    }
    let line = format!("{} {}", command.join(" "), names.join(" "));
    match Command::new(command[0])
        .args(&command[1..])
        .args(&names)
        .stdout(Stdio::null())
        .status()
    {
        Ok(status) if status.success() => None,
        Ok(status) => Some(format!("`{line}` failed ({status})")),
        Err(e) => Some(format!("`{line}` cannot start: {e}")),
    }
}

/// `container strato-…, network strato-…, process 1234 (…)`.
impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let containers = self.containers.iter().map(|c| format!("container {c}"));
        let networks = self.networks.iter().map(|n| format!("network {n}"));
        let agents = self
            .agents
            .iter()
            .map(|(pid, cmdline)| format!("process {pid} ({cmdline})"));
        let schemas = self.schemas.iter().map(|s| format!("schema {s}"));
        let items: Vec<String> = containers
            .chain(networks)
            .chain(agents)
            .chain(schemas)
            .collect();
        f.write_str(&items.join(", "))
    }
}

/// Takes the snapshot again after the tests, whether they passed or not.
/// Fails naming what is new since `before`, after removing it.
pub(crate) fn remove_new_since(before: &Snapshot) -> anyhow::Result<()> {
    let after = Snapshot::take().context("leftover check after the tests")?;
    let left = after.new_since(before);
    if left.is_empty() {
        println!("==> leftovers of the tests: none");
        return Ok(());
    }
    match left.remove() {
        Ok(()) => bail!("cargo xtask ci left behind: {left} (removed now)"),
        Err(e) => bail!("cargo xtask ci left behind: {left}; removing them: {e:#}"),
    }
}

/// The tests' schemas on the test PostgreSQL server.
fn test_schemas() -> anyhow::Result<BTreeSet<String>> {
    let list = crate::postgres::psql(
        "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'strato\\_test\\_%'",
    )
    .context("listing the test schemas")?;
    Ok(list
        .lines()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect())
}

/// Drops `schemas` with what is in them; says how it failed, if it did.
fn drop_schemas(schemas: &BTreeSet<String>) -> Option<String> {
    if schemas.is_empty() {
        return None;
    }
    let names: Vec<&str> = schemas.iter().map(String::as_str).collect();
    let sql = format!("DROP SCHEMA {} CASCADE", names.join(", "));
    crate::postgres::psql(&sql)
        .err()
        .map(|e| format!("`{sql}` failed: {e:#}"))
}

/// The stdout of `docker ARGS`.
fn docker(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .with_context(|| format!("`docker {}`: cannot start", args.join(" ")))?;
    ensure!(
        out.status.success(),
        "`docker {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The names, one a line, that start with `strato-`.
fn strato_names(list: &str) -> BTreeSet<String> {
    list.lines()
        .map(str::trim)
        .filter(|name| name.starts_with("strato-"))
        .map(str::to_owned)
        .collect()
}

/// Every process whose argv[0] ends in `strato-agent`.
fn agent_processes() -> anyhow::Result<BTreeMap<u32, String>> {
    let proc = std::fs::read_dir("/proc").context("reading /proc")?;
    Ok(proc
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            Some((pid, agent_command_line(&cmdline)?))
        })
        .collect())
}

/// The command line, arguments joined by spaces, of a /proc/PID/cmdline
/// (NUL-separated arguments) whose argv[0] ends in `strato-agent`.
fn agent_command_line(cmdline: &[u8]) -> Option<String> {
    let cmdline = String::from_utf8_lossy(cmdline);
    let mut args = cmdline.trim_end_matches('\0').split('\0');
    let argv0 = args.next()?;
    let ours = argv0.ends_with("strato-agent")
        || (["chromedriver", "chromium"]
            .iter()
            .any(|program| argv0.ends_with(program))
            && cmdline.contains("strato-e2e-browser-"));
    ours.then(|| {
        std::iter::once(argv0)
            .chain(args)
            .collect::<Vec<_>>()
            .join(" ")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(containers: &[&str], networks: &[&str], agents: &[(u32, &str)]) -> Snapshot {
        Snapshot {
            containers: containers.iter().map(|c| c.to_string()).collect(),
            networks: networks.iter().map(|n| n.to_string()).collect(),
            agents: agents.iter().map(|(p, c)| (*p, c.to_string())).collect(),
            schemas: BTreeSet::new(),
        }
    }

    #[test]
    fn only_strato_names_are_kept() {
        let docker_ps = "strato-j1-1\nsome-other\n  strato-test-x-1  \n\nstrato\nmy-strato-db\n";
        let names: Vec<String> = strato_names(docker_ps).into_iter().collect();
        assert_eq!(names, ["strato-j1-1", "strato-test-x-1"]);
        let networks = "bridge\nhost\nnone\nstrato-cpu-demo\n";
        assert_eq!(
            strato_names(networks).into_iter().collect::<Vec<_>>(),
            ["strato-cpu-demo"]
        );
    }

    #[test]
    fn an_agent_is_a_process_whose_argv0_ends_in_strato_agent() {
        assert_eq!(
            agent_command_line(b"/work/target/debug/strato-agent\0--work-dir\0/tmp/n 1\0")
                .as_deref(),
            Some("/work/target/debug/strato-agent --work-dir /tmp/n 1")
        );
        assert_eq!(
            agent_command_line(b"strato-agent\0").as_deref(),
            Some("strato-agent")
        );
        // Mentioning the agent in an argument is not being one.
        assert_eq!(agent_command_line(b"cargo\0test\0-p\0strato-agent\0"), None);
        assert_eq!(agent_command_line(b"/bin/strato-agent-old\0"), None);
        // Test executables are named with an underscore.
        assert_eq!(
            agent_command_line(b"target/debug/deps/strato_agent-1f2e\0"),
            None
        );
        // Kernel threads and zombies have an empty command line.
        assert_eq!(agent_command_line(b""), None);
    }

    #[test]
    fn what_was_there_before_is_not_a_leftover() {
        let before = snapshot(
            &["strato-old-1", "strato-kept-1"],
            &["strato-old"],
            &[(10, "/bin/strato-agent --a"), (20, "/bin/strato-agent --b")],
        );
        let after = snapshot(
            &["strato-kept-1", "strato-new-1"],
            &["strato-old", "strato-new"],
            &[
                (10, "/bin/strato-agent --a"),
                // The same pid, another process.
                (20, "/bin/strato-agent --c"),
                (30, "/bin/strato-agent --d"),
            ],
        );
        assert_eq!(
            after.new_since(&before),
            snapshot(
                &["strato-new-1"],
                &["strato-new"],
                &[(20, "/bin/strato-agent --c"), (30, "/bin/strato-agent --d")],
            )
        );
        assert!(after.new_since(&after).is_empty());
        // What went away during the run is no leftover either.
        assert!(snapshot(&[], &[], &[]).new_since(&after).is_empty());
    }

    #[test]
    fn a_removal_that_fails_says_which_command() {
        let names = BTreeSet::from(["strato-a".to_owned(), "strato-b".to_owned()]);
        assert_eq!(run_on_all(&["true"], &names), None);
        assert_eq!(run_on_all(&["false"], &BTreeSet::new()), None);
        let failure = run_on_all(&["false", "-x"], &names).unwrap_or_default();
        assert!(
            failure.starts_with("`false -x strato-a strato-b` failed ("),
            "{failure}"
        );
    }

    #[test]
    fn the_message_names_every_leftover() {
        let left = snapshot(
            &["strato-j1-1", "strato-j2-1"],
            &["strato-gangs"],
            &[(1234, "/t/strato-agent --node n1")],
        );
        assert_eq!(
            left.to_string(),
            "container strato-j1-1, container strato-j2-1, network strato-gangs, \
             process 1234 (/t/strato-agent --node n1)"
        );
        assert!(!left.is_empty());
        assert!(Snapshot::default().is_empty());
    }
}
