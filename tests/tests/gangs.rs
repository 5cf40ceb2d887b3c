//! End-to-end: multi-node jobs (gangs) with real Docker and real Open MPI.
//! The local provider runs every node's agent on this machine; a gang's
//! containers meet on the cluster's Docker network, and `mpirun` starts its
//! remote daemons through the agents (`strato-rsh`), with no SSH anywhere.

use std::collections::BTreeSet;
use std::time::Duration;

use strato_e2e::{
    ControlPlane, MPI_IMAGE, TEST_IMAGE, containers_of_job, job_log_lines, require_mpi_image,
    wait_for, wait_job_state,
};
use strato_proto::v1;

const LONG: Duration = Duration::from_secs(120);

async fn start(dir: &std::path::Path) -> ControlPlane {
    ControlPlane::start(
        &dir.join("data"),
        &[
            "--reconcile-interval-ms",
            "200",
            "--heartbeat-interval",
            "1",
        ],
    )
    .await
    .expect("start")
}

fn create_cluster(cp: &ControlPlane, name: &str, max: &str, extra: &[&str]) {
    let mut args = vec![
        "compute",
        "create",
        "-n",
        name,
        "-s",
        "Standard_D2_v2",
        "--max-nodes",
        max,
        "--idle-seconds-before-scaledown",
        "60",
    ];
    args.extend_from_slice(extra);
    let out = cp.cli(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn gang_spec(
    cluster: &str,
    image: &str,
    nodes: u32,
    per_node: u32,
    distribution: v1::Distribution,
    command: &[&str],
) -> v1::JobSpec {
    v1::JobSpec {
        cluster: cluster.into(),
        image: image.into(),
        command: command.iter().map(|s| (*s).to_owned()).collect(),
        node_count: nodes,
        process_count_per_node: per_node,
        distribution: distribution as i32,
        ..Default::default()
    }
}

async fn submit(cp: &ControlPlane, spec: v1::JobSpec) -> String {
    cp.jobs()
        .await
        .submit_job(v1::SubmitJobRequest { spec: Some(spec) })
        .await
        .expect("submit")
        .into_inner()
        .id
}

const MPI_HELLO: &str = "\
from mpi4py import MPI
import socket
c = MPI.COMM_WORLD
total = c.allreduce(c.Get_rank())
print(f'rank {c.Get_rank()} size {c.Get_size()} host {socket.gethostname()} sum {total}', flush=True)
";

#[tokio::test]
async fn mpi_hello_world_runs_on_two_nodes_by_two_processes_without_ssh() {
    require_mpi_image();
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = start(dir.path()).await;
    create_cluster(&cp, "mpi", "2", &[]);
    let id = submit(
        &cp,
        gang_spec(
            "mpi",
            MPI_IMAGE,
            2,
            2,
            v1::Distribution::Unspecified,
            &["python3", "-c", MPI_HELLO],
        ),
    )
    .await;
    let mut jobs = cp.jobs().await;
    let job = wait_job_state(&mut jobs, &id, v1::JobState::Completed, LONG).await;
    let spec = job.spec.clone().expect("spec");
    assert_eq!(
        spec.distribution,
        v1::Distribution::Mpi as i32,
        "mpi is the default beyond one process"
    );
    let attempt = job.attempts.last().expect("an attempt");
    assert_eq!(attempt.node_ids.len(), 2, "{attempt:?}");

    let lines: Vec<String> = job_log_lines(&mut jobs, &id)
        .await
        .into_iter()
        .map(|l| l.line)
        .filter(|l| l.starts_with("rank "))
        .collect();
    assert_eq!(lines.len(), 4, "four ranks: {lines:#?}");
    let ranks: BTreeSet<&str> = lines
        .iter()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(ranks, BTreeSet::from(["0", "1", "2", "3"]), "{lines:#?}");
    let hosts: BTreeSet<&str> = lines
        .iter()
        .filter_map(|l| l.split_whitespace().nth(5))
        .collect();
    assert_eq!(
        hosts,
        attempt.node_ids.iter().map(String::as_str).collect(),
        "two distinct hosts, the gang's nodes: {lines:#?}"
    );
    for l in &lines {
        assert!(l.contains("size 4") && l.ends_with("sum 6"), "{l}");
    }
    // No SSH: the gang's containers run no sshd and the launcher is Strato's.
    assert!(
        cp.log_text().contains("exec relayed"),
        "remote daemons went through the control plane"
    );
}

#[tokio::test]
async fn a_pytorch_job_sees_one_master_and_distinct_node_ranks() {
    require_mpi_image();
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = start(dir.path()).await;
    create_cluster(&cp, "torch", "2", &["--assign-identity", "[system]"]);
    let id = submit(
        &cp,
        gang_spec(
            "torch",
            TEST_IMAGE,
            2,
            1,
            v1::Distribution::Pytorch,
            &[
                "sh",
                "-c",
                "echo \"env MASTER_ADDR=$MASTER_ADDR MASTER_PORT=$MASTER_PORT WORLD_SIZE=$WORLD_SIZE NODE_RANK=$NODE_RANK RANK=$RANK LOCAL_RANK=$LOCAL_RANK HOSTS=$AZ_BATCH_HOST_LIST\"; \
                 if wget -q -O - --header \"secret: $MSI_SECRET\" \"$MSI_ENDPOINT?api-version=2017-09-01&resource=https://storage.azure.com\" | grep -q access_token; \
                 then echo \"token ok on rank $NODE_RANK\"; else echo \"no token on rank $NODE_RANK\"; fi",
            ],
        ),
    )
    .await;
    let mut jobs = cp.jobs().await;
    let job = wait_job_state(&mut jobs, &id, v1::JobState::Completed, LONG).await;
    let gang = &job.attempts.last().expect("an attempt").node_ids;
    let lines = job_log_lines(&mut jobs, &id).await;
    let envs: Vec<(u32, String)> = lines
        .iter()
        .filter(|l| l.line.starts_with("env "))
        .map(|l| (l.rank, l.line.clone()))
        .collect();
    assert_eq!(envs.len(), 2, "one line per node: {envs:#?}");
    let field = |line: &str, key: &str| {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(str::to_owned))
            .unwrap_or_default()
    };
    let masters: BTreeSet<String> = envs.iter().map(|(_, l)| field(l, "MASTER_ADDR")).collect();
    assert_eq!(masters, BTreeSet::from([gang[0].clone()]), "{envs:#?}");
    let node_ranks: BTreeSet<String> = envs.iter().map(|(_, l)| field(l, "NODE_RANK")).collect();
    assert_eq!(node_ranks, BTreeSet::from(["0".into(), "1".into()]));
    // Every node of the gang gets tokens for the cluster's identity.
    let tokens: BTreeSet<String> = lines
        .iter()
        .filter(|l| l.line.contains("token"))
        .map(|l| l.line.clone())
        .collect();
    assert_eq!(
        tokens,
        BTreeSet::from(["token ok on rank 0".into(), "token ok on rank 1".into()]),
        "{lines:#?}"
    );
    for (rank, line) in &envs {
        assert_eq!(field(line, "WORLD_SIZE"), "2", "{line}");
        assert_eq!(field(line, "MASTER_PORT"), "6105", "{line}");
        assert_eq!(
            field(line, "NODE_RANK"),
            rank.to_string(),
            "the log line's rank: {line}"
        );
        assert_eq!(field(line, "RANK"), rank.to_string(), "{line}");
        assert_eq!(field(line, "HOSTS"), gang.join(","), "{line}");
    }

    // With 2 processes per node Strato starts them, each with its RANK and
    // LOCAL_RANK (the launcher needs a C library: the Debian image).
    let id = submit(
        &cp,
        gang_spec(
            "torch",
            MPI_IMAGE,
            2,
            2,
            v1::Distribution::Pytorch,
            &[
                "sh",
                "-c",
                "echo \"proc NODE_RANK=$NODE_RANK RANK=$RANK LOCAL_RANK=$LOCAL_RANK WORLD_SIZE=$WORLD_SIZE\"",
            ],
        ),
    )
    .await;
    wait_job_state(&mut jobs, &id, v1::JobState::Completed, LONG).await;
    let mut procs: Vec<(String, String, String)> = job_log_lines(&mut jobs, &id)
        .await
        .iter()
        .filter(|l| l.line.starts_with("proc "))
        .map(|l| {
            (
                field(&l.line, "RANK"),
                field(&l.line, "NODE_RANK"),
                field(&l.line, "LOCAL_RANK"),
            )
        })
        .collect();
    procs.sort();
    let expected: Vec<(String, String, String)> = [
        ("0", "0", "0"),
        ("1", "0", "1"),
        ("2", "1", "0"),
        ("3", "1", "1"),
    ]
    .iter()
    .map(|(r, n, l)| ((*r).into(), (*n).into(), (*l).into()))
    .collect();
    assert_eq!(procs, expected, "RANK = NODE_RANK x 2 + LOCAL_RANK");

    // The same from an Azure ML job file: 2 instances, PyTorch.
    let file = dir.path().join("torch.yml");
    std::fs::write(
        &file,
        format!(
            "$schema: https://azuremlschemas.azureedge.net/latest/commandJob.schema.json\n\
             type: command\n\
             command: echo \"yaml NODE_RANK=$NODE_RANK WORLD_SIZE=$WORLD_SIZE\"\n\
             environment:\n  image: {TEST_IMAGE}\n\
             compute: azureml:torch\n\
             resources:\n  instance_count: 2\n\
             distribution:\n  type: pytorch\n  process_count_per_instance: 1\n"
        ),
    )
    .expect("torch.yml");
    let out = cp.cli(&["job", "create", "--file", &file.to_string_lossy()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    wait_job_state(&mut jobs, &id, v1::JobState::Completed, LONG).await;
    let mut from_yaml: Vec<String> = job_log_lines(&mut jobs, &id)
        .await
        .iter()
        .filter(|l| l.line.starts_with("yaml "))
        .map(|l| l.line.clone())
        .collect();
    from_yaml.sort();
    assert_eq!(
        from_yaml,
        [
            "yaml NODE_RANK=0 WORLD_SIZE=2",
            "yaml NODE_RANK=1 WORLD_SIZE=2"
        ]
    );
}

#[tokio::test]
async fn killing_one_node_container_ends_the_whole_gang_with_a_reason() {
    require_mpi_image();
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = start(dir.path()).await;
    create_cluster(&cp, "fragile", "2", &[]);
    let id = submit(
        &cp,
        gang_spec(
            "fragile",
            MPI_IMAGE,
            2,
            1,
            v1::Distribution::Mpi,
            &[
                "python3",
                "-c",
                "from mpi4py import MPI\nimport time\nprint('up', MPI.COMM_WORLD.Get_rank(), flush=True)\ntime.sleep(600)",
            ],
        ),
    )
    .await;
    let mut jobs = cp.jobs().await;
    let job = wait_job_state(&mut jobs, &id, v1::JobState::Running, LONG).await;
    let gang = job.attempts.last().expect("an attempt").node_ids.clone();
    // Both ranks are up inside MPI.
    wait_for("both ranks to print", LONG, || {
        let mut jobs = jobs.clone();
        let id = id.clone();
        async move {
            let up = job_log_lines(&mut jobs, &id)
                .await
                .iter()
                .filter(|l| l.line.starts_with("up "))
                .count();
            (up == 2).then_some(())
        }
    })
    .await;
    let worker = format!("strato-{id}-1-{}", gang[1]);
    let out = std::process::Command::new("docker")
        .args(["kill", &worker])
        .output()
        .expect("docker kill");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let job = wait_job_state(
        &mut jobs,
        &id,
        v1::JobState::Failed,
        Duration::from_secs(60),
    )
    .await;
    assert!(
        job.reason.contains("rank 1") && job.reason.contains(&gang[1]),
        "the reason names the rank and its node: {}",
        job.reason
    );
    // Nothing keeps running: rank 0's container is stopped too.
    wait_for(
        "the gang's containers to stop",
        Duration::from_secs(60),
        || {
            let id = id.clone();
            async move {
                let running = std::process::Command::new("docker")
                    .args(["ps", "-q", "--filter", &format!("label=strato.job={id}")])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                    .unwrap_or_default();
                running.is_empty().then_some(())
            }
        },
    )
    .await;
    let _ = containers_of_job(&id);
}

#[tokio::test]
async fn two_gangs_on_three_nodes_take_turns_without_deadlock() {
    require_mpi_image();
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = start(dir.path()).await;
    create_cluster(&cp, "turns", "3", &[]);
    let mut ids = Vec::new();
    for _ in 0..2 {
        ids.push(
            submit(
                &cp,
                gang_spec(
                    "turns",
                    TEST_IMAGE,
                    2,
                    1,
                    v1::Distribution::None,
                    &["sh", "-c", "echo on $STRATO_NODE_ID; sleep 2"],
                ),
            )
            .await,
        );
    }
    let mut jobs = cp.jobs().await;
    let mut gangs = Vec::new();
    for id in &ids {
        let job = wait_job_state(&mut jobs, id, v1::JobState::Completed, LONG).await;
        let nodes: BTreeSet<String> = job
            .attempts
            .last()
            .expect("attempt")
            .node_ids
            .iter()
            .cloned()
            .collect();
        assert_eq!(nodes.len(), 2, "a gang of 2 on 2 distinct nodes");
        gangs.push(nodes);
    }
    // Three nodes cannot hold both gangs at once: the second ran on a node
    // the first had given back, never on part of a gang that still held it.
    assert!(
        !gangs[0].is_disjoint(&gangs[1]),
        "with max 3 nodes the gangs must have taken turns: {gangs:?}"
    );
    let nodes = cp.cli(&["compute", "list-nodes", "-n", "turns", "-o", "json"]);
    let listed: serde_json::Value = serde_json::from_slice(&nodes.stdout).expect("json");
    assert!(
        listed.as_array().is_some_and(|n| n.len() <= 3),
        "never above max_nodes: {listed}"
    );
}

#[tokio::test]
async fn gang_shapes_are_checked_against_the_cluster() {
    require_mpi_image();
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = start(dir.path()).await;
    create_cluster(&cp, "small", "2", &[]);
    create_cluster(&cp, "isolated", "4", &["--no-inter-node-communication"]);
    let mut jobs = cp.jobs().await;
    for (cluster, nodes, field) in [("small", 3, "node_count"), ("isolated", 2, "node_count")] {
        let e = jobs
            .submit_job(v1::SubmitJobRequest {
                spec: Some(gang_spec(
                    cluster,
                    TEST_IMAGE,
                    nodes,
                    1,
                    v1::Distribution::Mpi,
                    &["true"],
                )),
            })
            .await
            .expect_err("refused");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(field), "{}", e.message());
    }
    // The CLI says the same, and nothing was stored.
    let out = cp.cli(&[
        "job",
        "submit",
        "--compute",
        "small",
        "--image",
        TEST_IMAGE,
        "--node-count",
        "3",
        "--",
        "true",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("max_nodes"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = jobs
        .list_jobs(v1::ListJobsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(listed.jobs.is_empty());
}
