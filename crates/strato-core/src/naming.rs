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

/// An attempt's container on a node: `strato-<job>-<attempt>-<node>`, so the
/// ranks of a gang on one engine (the local provider) never share a name,
/// and one attempt never runs twice on one node.
pub fn container_name(node_id: &str, job_id: &str, attempt: u32) -> String {
    format!("strato-{job_id}-{attempt}-{node_id}")
}

/// The Docker network on which the containers of a cluster's gangs meet
/// when every node shares one engine (the local provider).
pub fn network_name(cluster: &str) -> String {
    format!("strato-{cluster}")
}

/// The cluster a gang network of [`network_name`] belongs to.
pub fn cluster_of_network(network: &str) -> Option<&str> {
    network.strip_prefix("strato-").filter(|c| !c.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_contract() {
        assert_eq!(container_name("n1", "j1", 2), "strato-j1-2-n1");
        assert_eq!(network_name("gpu-a"), "strato-gpu-a");
        assert_eq!(cluster_of_network("strato-gpu-a"), Some("gpu-a"));
        assert_eq!(cluster_of_network("strato-"), None);
        assert_eq!(cluster_of_network("bridge"), None);
    }
}
