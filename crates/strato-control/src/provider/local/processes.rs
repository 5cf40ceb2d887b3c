//! The local provider's agent processes: which processes on this machine
//! are agents it started, and taking one down. A process counts as one
//! only when everything agrees: it runs the agent binary, in this control
//! plane's mount and pid namespaces and as its user, and its environment
//! names this control plane and a well-formed node id. So a job container
//! (other namespaces) or another user's process that copies the variables,
//! a reused pid, or a `tail -f` of a node's log is never taken for one.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use strato_core::naming;

/// What identifies this control plane's agents.
#[derive(Debug, Clone)]
pub struct AgentMatch {
    /// The agent binary's canonical path, as `/proc/PID/exe` shows it.
    agent_binary: PathBuf,
    control_plane_id: String,
}

impl AgentMatch {
    pub fn new(agent_binary: &Path, control_plane_id: String) -> Self {
        AgentMatch {
            agent_binary: std::fs::canonicalize(agent_binary)
                .unwrap_or_else(|_| agent_binary.to_owned()),
            control_plane_id,
        }
    }

    /// The node whose agent process `pid` is, if it is one of ours.
    pub fn node_of(&self, pid: u32) -> Option<String> {
        let proc = PathBuf::from(format!("/proc/{pid}"));
        let same = |link: &str| {
            let theirs = std::fs::read_link(proc.join(link)).ok()?;
            let ours = std::fs::read_link(Path::new("/proc/self").join(link)).ok()?;
            (theirs == ours).then_some(())
        };
        same("ns/mnt")?;
        same("ns/pid")?;
        let uid = std::fs::metadata(&proc).ok()?.uid();
        (uid == std::fs::metadata("/proc/self").ok()?.uid()).then_some(())?;
        let exe = std::fs::read_link(proc.join("exe")).ok()?;
        // A binary rebuilt since the agent started shows as "… (deleted)".
        let deleted = PathBuf::from(format!("{} (deleted)", self.agent_binary.display()));
        (exe == self.agent_binary || exe == deleted).then_some(())?;
        let environ = std::fs::read(proc.join("environ")).ok()?;
        let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
        let mine = format!("STRATO_CONTROL_PLANE_ID={}", self.control_plane_id);
        vars.contains(&mine.as_bytes()).then_some(())?;
        let node = vars
            .iter()
            .find_map(|v| v.strip_prefix(b"STRATO_NODE_NAME=".as_slice()))?;
        let node = std::str::from_utf8(node).ok()?;
        naming::is_node_id(node).then(|| node.to_owned())
    }

    /// Every agent process of this control plane, as (pid, node id).
    pub fn all(&self) -> Vec<(u32, String)> {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(|pid| Some((pid, self.node_of(pid)?)))
            .collect()
    }

    /// SIGKILLs `pid` if it is the agent of `node_id`, and waits (up to 5 s)
    /// until it has exited, so nothing it had in flight lands afterwards.
    pub async fn kill(&self, pid: u32, node_id: &str) {
        if self.node_of(pid).as_deref() != Some(node_id) {
            return;
        }
        match std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
        {
            Ok(s) if s.success() => tracing::info!(node = %node_id, pid, "agent process killed"),
            Ok(s) => tracing::warn!(node = %node_id, pid, %s, "kill failed"),
            Err(e) => tracing::warn!(node = %node_id, pid, error = %e, "kill failed"),
        }
        for _ in 0..250 {
            if !alive(pid) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::warn!(node = %node_id, pid, "the agent process is still there 5 s after SIGKILL");
    }
}

/// Whether `pid` runs (a zombie has exited).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_no_agent_and_a_gone_pid_is_not_alive() {
        let me = std::process::id();
        let matcher = AgentMatch::new(&std::env::current_exe().expect("exe"), "not-mine".into());
        // Same binary, namespaces and user, but no such variable.
        assert_eq!(matcher.node_of(me), None);
        assert!(alive(me));
        assert!(!alive(u32::MAX));
    }
}
