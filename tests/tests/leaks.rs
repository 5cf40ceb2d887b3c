//! What Strato leaves on the machine: nothing of a control plane outlives
//! what it knows. At start it removes its own orphans (and only its own),
//! a cluster's gang network goes with the cluster, and local agents of a
//! control plane that is gone give up and remove their containers. Real
//! binaries, real Docker.

use std::process::Command;
use std::time::Duration;

use strato_e2e::{
    ControlPlane, containers_of, networks_labelled, require_docker, sandboxes_of, wait_for,
    wait_job_state,
};
use strato_proto::v1;

const LONG: Duration = Duration::from_secs(90);
const IMAGE: &str = "strato-test/busybox:latest";

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn exists(what: &str, name: &str) -> bool {
    Command::new("docker")
        .args([what, "inspect", name])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn control_plane_id(cp_dir: &std::path::Path) -> String {
    std::fs::read_to_string(cp_dir.join("control-plane-id"))
        .expect("the control plane's id")
        .trim()
        .to_owned()
}

async fn one_idle_node(cp: &ControlPlane, cluster: &str) -> String {
    let compute = cp.client().await;
    wait_for("one idle node", LONG, || {
        let mut compute = compute.clone();
        let cluster = cluster.to_owned();
        async move {
            let nodes = compute
                .list_nodes(v1::ListNodesRequest { cluster })
                .await
                .ok()?
                .into_inner()
                .nodes;
            (nodes.len() == 1 && nodes[0].state == v1::NodeState::Idle as i32)
                .then(|| nodes[0].node_id.clone())
        }
    })
    .await
}

/// Whether process `pid` runs (a zombie nobody reaped has exited).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
    })
}

/// Removes the named containers and networks when dropped, so a failing
/// test leaves none of what it made by hand.
struct Made(Vec<(&'static str, String)>);

impl Drop for Made {
    fn drop(&mut self) {
        for (what, name) in &self.0 {
            let args: Vec<&str> = match *what {
                "container" => vec!["rm", "-f", name],
                _ => vec!["network", "rm", name],
            };
            let _ = Command::new("docker").args(args).output();
        }
    }
}

#[tokio::test]
async fn a_restart_removes_only_its_own_orphans_and_keeps_known_nodes() {
    require_docker();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("cp");
    let mut cp = ControlPlane::start_fast(&data).await.expect("start");
    cp.cli_ok(&[
        "compute",
        "create",
        "-n",
        "keep",
        "--min-nodes",
        "1",
        "--max-nodes",
        "1",
    ]);
    let node = one_idle_node(&cp, "keep").await;
    let id = control_plane_id(&data);
    let short = &id[..8];

    // What a control plane that stopped before its nodes were gone leaves:
    // a container of a node it no longer knows, a network of a cluster it
    // no longer has. And the same of another control plane.
    let tag = std::process::id();
    let orphan = format!("strato-orphan-{tag}");
    let foreign = format!("strato-foreign-{tag}");
    let orphan_net = format!("strato-{short}-gone{tag}");
    let foreign_net = format!("strato-00000000-gone{tag}");
    let _made = Made(vec![
        ("container", orphan.clone()),
        ("container", foreign.clone()),
        ("network", orphan_net.clone()),
        ("network", foreign_net.clone()),
    ]);
    for (name, owner) in [(&orphan, id.as_str()), (&foreign, "someone-else")] {
        docker(&[
            "run",
            "-d",
            "--name",
            name,
            "--label",
            &format!("strato.control-plane={owner}"),
            "--label",
            "strato.node=gone-0f3c9e21",
            "--label",
            "strato.cluster=gone",
            IMAGE,
            "sleep",
            "300",
        ]);
    }
    for (name, owner) in [(&orphan_net, id.as_str()), (&foreign_net, "someone-else")] {
        docker(&[
            "network",
            "create",
            "--label",
            &format!("strato.control-plane={owner}"),
            "--label",
            "strato.network=gone",
            name,
        ]);
    }

    cp.kill9();
    cp.restart().await.expect("restart");
    wait_for("the orphans removed", LONG, || {
        let gone = !exists("container", &orphan) && !exists("network", &orphan_net);
        async move { gone.then_some(()) }
    })
    .await;
    assert!(
        exists("container", &foreign),
        "another control plane's container stays"
    );
    assert!(
        exists("network", &foreign_net),
        "another control plane's network stays"
    );
    let again = one_idle_node(&cp, "keep").await;
    assert_eq!(again, node, "the known node is kept across the restart");
    assert!(
        cp.agents().iter().any(|(_, n)| *n == node),
        "its agent still runs"
    );
}

#[tokio::test]
async fn a_gang_network_is_made_for_a_gang_and_goes_with_its_cluster() {
    require_docker();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("cp");
    let cp = ControlPlane::start_fast(&data).await.expect("start");
    let label = format!("strato.control-plane={}", control_plane_id(&data));
    cp.cli_ok(&["compute", "create", "-n", "solo", "--max-nodes", "2"]);
    cp.cli_ok(&["compute", "create", "-n", "pair", "--max-nodes", "2"]);

    let mut jobs = cp.jobs().await;
    let submit = |cluster: &str, nodes: u32| v1::SubmitJobRequest {
        spec: Some(v1::JobSpec {
            cluster: cluster.to_owned(),
            image: IMAGE.to_owned(),
            command: vec!["true".to_owned()],
            node_count: nodes,
            distribution: v1::Distribution::None as i32,
            ..Default::default()
        }),
    };
    let single = jobs
        .submit_job(submit("solo", 1))
        .await
        .expect("submit")
        .into_inner()
        .id;
    let gang = jobs
        .submit_job(submit("pair", 2))
        .await
        .expect("submit")
        .into_inner()
        .id;
    wait_job_state(&mut jobs, &single, v1::JobState::Completed, LONG).await;
    wait_job_state(&mut jobs, &gang, v1::JobState::Completed, LONG).await;

    let made = networks_labelled(&label);
    assert_eq!(
        made.len(),
        1,
        "one network, for the cluster that ran a gang: {made:?}"
    );
    assert!(made[0].ends_with("-pair"), "{made:?}");
    cp.cli_ok(&["compute", "delete", "-n", "pair", "--yes"]);
    assert!(
        networks_labelled(&label).is_empty(),
        "the network went with its cluster"
    );
}

#[tokio::test]
async fn local_agents_of_a_control_plane_gone_for_good_give_up() {
    require_docker();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("cp");
    let mut cp = ControlPlane::start(
        &data,
        &[
            "--reconcile-interval-ms",
            "200",
            "--local-agent-give-up-after",
            "2",
        ],
    )
    .await
    .expect("start");
    cp.cli_ok(&["compute", "create", "-n", "orphaned", "--max-nodes", "1"]);
    let mut jobs = cp.jobs().await;
    let id = jobs
        .submit_job(v1::SubmitJobRequest {
            spec: Some(v1::JobSpec {
                cluster: "orphaned".to_owned(),
                image: IMAGE.to_owned(),
                command: vec!["sleep".to_owned(), "300".to_owned()],
                ..Default::default()
            }),
        })
        .await
        .expect("submit")
        .into_inner()
        .id;
    let job = wait_job_state(&mut jobs, &id, v1::JobState::Running, LONG).await;
    assert_eq!(containers_of(&job.node_id).len(), 1);
    let agents = cp.agents();
    assert_eq!(agents.len(), 1);
    // It keeps a network ready for the next job.
    wait_for("a network sandbox made ready", LONG, || {
        let made = !sandboxes_of(&job.node_id).is_empty();
        async move { made.then_some(()) }
    })
    .await;

    // Gone for good: its data directory too.
    cp.kill9();
    std::fs::remove_dir_all(&data).expect("remove the data dir");
    wait_for(
        "the agent to give up and remove its container",
        LONG,
        || {
            let done = containers_of(&job.node_id).is_empty()
                && sandboxes_of(&job.node_id).is_empty()
                && !running(agents[0].0);
            async move { done.then_some(()) }
        },
    )
    .await;
}
