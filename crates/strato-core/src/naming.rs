//! The naming contract between the control plane, the agents and the
//! container engine: what Strato calls the containers and networks it
//! creates, and the labels it puts on them. The agent names and labels what
//! it starts; the local provider and the control plane's start-up clean-up
//! find them again by these names alone, so both sides read them from here.

/// Label naming the node a container belongs to.
pub const LABEL_NODE: &str = "strato.node";
/// Label naming the cluster a container belongs to.
pub const LABEL_CLUSTER: &str = "strato.cluster";
/// Label naming the job a container runs.
pub const LABEL_JOB: &str = "strato.job";
/// Label naming the attempt of the job a container runs.
pub const LABEL_ATTEMPT: &str = "strato.attempt";
/// Label marking a network Strato created for a cluster's gangs; its value
/// is the cluster's name.
pub const LABEL_NETWORK: &str = "strato.network";
/// Label naming the control plane (its instance id) whose local provider
/// created a network or whose node started a container, so that a control
/// plane cleans up only what is its own when several share one engine.
pub const LABEL_CONTROL_PLANE: &str = "strato.control-plane";
/// Label naming the node whose agent started a mount helper (a container
/// that holds one FUSE mount of a job's data). Helpers carry no
/// [`LABEL_NODE`]: they are not jobs. Stop them (SIGTERM) rather than kill
/// them, so that they unmount.
pub const LABEL_MOUNT_NODE: &str = "strato.mount.node";
/// Label naming the job container a mount helper serves.
pub const LABEL_MOUNT_OF: &str = "strato.mount.of";
/// Label holding the host directory a mount helper mounts under.
pub const LABEL_MOUNT_DIR: &str = "strato.mount.dir";
/// Label saying whether a mount helper's mount is writable (`true`): its
/// writes are uploaded before it is stopped.
pub const LABEL_MOUNT_WRITABLE: &str = "strato.mount.writable";

/// Label naming the node whose agent keeps a network sandbox: a container
/// that does nothing but hold a network namespace on the default bridge,
/// made ready before a job comes so that the job's container joins it
/// instead of waiting for the engine to set a network up. Sandboxes carry
/// no [`LABEL_NODE`]: they are not jobs.
pub const LABEL_SANDBOX_NODE: &str = "strato.sandbox.node";
/// Label on a job's container holding the id of the sandbox whose network
/// it joined; the sandbox goes when the container is removed.
pub const LABEL_SANDBOX: &str = "strato.sandbox";

/// A network sandbox of a node: `strato-sandbox-<node>-<n>`.
pub fn sandbox_name(node_id: &str, n: u64) -> String {
    format!("strato-sandbox-{node_id}-{n}")
}

/// An attempt's container on a node: `strato-<job>-<attempt>-<node>`, so the
/// ranks of a gang on one engine (the local provider) never share a name,
/// and one attempt never runs twice on one node.
pub fn container_name(node_id: &str, job_id: &str, attempt: u32) -> String {
    format!("strato-{job_id}-{attempt}-{node_id}")
}

/// The Docker network on which the containers of a cluster's gangs meet
/// when every node shares one engine (the local provider):
/// `strato-<first 8 of the control plane's id>-<cluster>`, so that two
/// control planes on one engine never share one; `strato-<cluster>` for an
/// agent that belongs to no local provider.
pub fn network_name(control_plane: Option<&str>, cluster: &str) -> String {
    match control_plane {
        Some(id) => format!("strato-{}-{cluster}", short_id(id)),
        None => format!("strato-{cluster}"),
    }
}

/// The cluster a gang network of control plane `control_plane` belongs to.
pub fn cluster_of_network<'a>(control_plane: &str, network: &'a str) -> Option<&'a str> {
    network
        .strip_prefix("strato-")?
        .strip_prefix(short_id(control_plane))?
        .strip_prefix('-')
        .filter(|c| !c.is_empty())
}

fn short_id(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// An SSH public key line (`ALGORITHM BASE64 [COMMENT]`) reduced to its
/// algorithm and key, if it has that shape: what a node's reported host key
/// must be before it is stored or handed to `ssh` (only letters, digits and
/// `+/=@.-`, so it is safe in a known-hosts line or an ssh option).
pub fn ssh_key_line(line: &str) -> Option<String> {
    let mut words = line.split_whitespace();
    let (algorithm, key) = (words.next()?, words.next()?);
    let algorithm_ok = (1..=64).contains(&algorithm.len())
        && algorithm
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '@' | '.'));
    let key_ok = (16..=2048).contains(&key.len())
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '='));
    (algorithm_ok && key_ok).then(|| format!("{algorithm} {key}"))
}

/// Whether `name` is a host name as DNS spells it (letters, digits, `-`
/// and `.`, at most 253 characters, not starting with `-`): what an
/// agent's reported host name must be before the control plane hands it
/// to an operator's power command as an argument.
pub fn is_host_name(name: &str) -> bool {
    (1..=253).contains(&name.len())
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
}

/// The node id of a machine that joins an attached cluster: its host name
/// (lowercase; anything but letters and digits a `-`; at most 40
/// characters; `machine` if nothing is left, and `m-` before one that
/// does not start with a letter), `-`, and `suffix` (8 hex digits: two
/// machines may share a name). Always an [`is_node_id`].
pub fn machine_node_id(hostname: &str, suffix: &str) -> String {
    let mapped: String = hostname
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    let mut base = mapped.trim_matches('-').to_owned();
    if base.is_empty() {
        base = "machine".to_owned();
    } else if !base.starts_with(|c: char| c.is_ascii_alphabetic()) {
        base = format!("m-{base}");
    }
    format!("{base}-{suffix}")
}

/// Whether `id` has the shape of a node id the control plane makes:
/// `<cluster>-<8 lowercase hex digits>`, the cluster name of letters, digits
/// and '-' starting with a letter. What the control plane reads back from
/// processes, directories and labels must pass this before it is used as a
/// path or a filter.
pub fn is_node_id(id: &str) -> bool {
    let Some((cluster, suffix)) = id.rsplit_once('-') else {
        return false;
    };
    id.len() <= 64
        && suffix.len() == 8
        && suffix
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && cluster.starts_with(|c: char| c.is_ascii_alphabetic())
        && cluster
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

#[cfg(test)]
mod tests {

    #[test]
    fn ssh_key_lines_are_algorithm_and_base64_only() {
        let key = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
        assert_eq!(
            ssh_key_line(&format!("ssh-ed25519 {key} root@node")),
            Some(format!("ssh-ed25519 {key}"))
        );
        for bad in [
            "",
            "ssh-ed25519",
            &format!("ssh-ed25519 {key};rm"),
            &format!("ssh ed25519 $(id) {key}"),
            "ssh-ed25519 short",
        ] {
            assert_eq!(ssh_key_line(bad), None, "{bad}");
        }
    }

    #[test]
    fn host_names_are_dns_spellings_only() {
        for good in ["m1", "gpu-box-1.lab.example", "10.0.0.4"] {
            assert!(is_host_name(good), "{good}");
        }
        for bad in ["", "-rf", "a b", "a;rm -rf /", "$(id)", &"a".repeat(254)] {
            assert!(!is_host_name(bad), "{bad}");
        }
    }

    #[test]
    fn a_machines_node_id_comes_from_its_host_name() {
        for (host, id) in [
            ("gpu-box-1", "gpu-box-1-0123abcd"),
            ("Lab.Example.COM", "lab-example-com-0123abcd"),
            ("10.0.0.4", "m-10-0-0-4-0123abcd"),
            ("", "machine-0123abcd"),
            ("---", "machine-0123abcd"),
        ] {
            let made = machine_node_id(host, "0123abcd");
            assert_eq!(made, id);
            assert!(is_node_id(&made), "{made}");
        }
        let long = machine_node_id(&"x".repeat(300), "0123abcd");
        assert!(is_node_id(&long) && long.len() <= 64, "{long}");
    }

    use super::*;

    #[test]
    fn names_follow_the_contract() {
        assert_eq!(container_name("n1", "j1", 2), "strato-j1-2-n1");
        let id = "0123456789abcdef";
        assert_eq!(network_name(Some(id), "gpu-a"), "strato-01234567-gpu-a");
        assert_eq!(network_name(None, "gpu-a"), "strato-gpu-a");
        assert_eq!(
            cluster_of_network(id, "strato-01234567-gpu-a"),
            Some("gpu-a")
        );
        assert_eq!(
            cluster_of_network(id, "strato-89abcdef-gpu-a"),
            None,
            "another control plane's"
        );
        assert_eq!(cluster_of_network(id, "strato-01234567-"), None);
        assert_eq!(cluster_of_network(id, "bridge"), None);
    }

    #[test]
    fn node_ids_are_recognised_and_paths_are_not() {
        assert!(is_node_id("cpu-a-0f3c9e21"));
        assert!(is_node_id("GPU-0f3c9e21"));
        for bad in [
            "",
            "cpu",
            "cpu-0F3C9E21",
            "cpu-0f3c9e2",
            "../etc-0f3c9e21",
            "/tmp/x-0f3c9e21",
            "a/b-0f3c9e21",
            "-0f3c9e21",
            "1cpu-0f3c9e21",
        ] {
            assert!(!is_node_id(bad), "{bad:?}");
        }
    }
}
