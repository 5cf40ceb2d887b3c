//! End-to-end with a fleet that is a fleet: machines booting systemd as PID 1,
//! each with its own Docker engine and address (see `strato_e2e::fleet`),
//! the control plane outside them. Agents start from the project's hardened
//! systemd unit, join an attached cluster over TLS with a join token, and run
//! jobs in their own machine's engine; a 2-machine MPI job runs its ranks on
//! both machines over their own network; a machine whose agent stops is lost
//! and its job runs again elsewhere; detach drains one; a used-up token is
//! refused (the unit fails with status 2 and is not restarted); the
//! cluster's key logs in to a machine over SSH and gets a shell there, under
//! the unit's sandbox; and power commands power a machine off when idle and
//! boot it for a waiting job.

use std::collections::BTreeSet;
use std::time::Duration;

use strato_e2e::fleet::Fleet;
use strato_e2e::machines::{ATTACHED_ARGS, join_token, node_of, nodes, wait_job, wait_state};
use strato_e2e::ssh_client::{self, keypair};
use strato_e2e::{ControlPlane, MPI_IMAGE, TEST_IMAGE, job_log_lines, wait_for};
use strato_proto::v1;

const LONG: Duration = Duration::from_secs(120);

const MPI_HELLO: &str = "\
from mpi4py import MPI
import socket
c = MPI.COMM_WORLD
total = c.allreduce(c.Get_rank())
print(f'rank {c.Get_rank()} size {c.Get_size()} host {socket.gethostname()} sum {total}', flush=True)
";

#[tokio::test]
async fn machines_join_from_their_units_run_jobs_and_mpi_across_two_of_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut fleet = Fleet::create(dir.path()).expect("the fleet's network");
    let cp = ControlPlane::start_on(&dir.path().join("data"), fleet.gateway, ATTACHED_ARGS)
        .await
        .expect("start the control plane");
    let (key, public) = keypair(dir.path(), "admin-key");
    cp.cli_ok(&[
        "compute",
        "create",
        "-n",
        "lab",
        "--type",
        "attached",
        "-s",
        "Standard_D2_v2",
        "--max-nodes",
        "3",
        "--admin-username",
        "azureuser",
        "--ssh-key-value",
        &public,
        "--ssh-public-access",
    ]);
    let token = join_token(&cp, "lab", "3");

    // Three machines boot; their agents start from the unit and join.
    for host in ["m1", "m2", "m3"] {
        fleet
            .boot(host, &cp, &token, &[TEST_IMAGE, MPI_IMAGE])
            .expect("boot");
        fleet
            .systemctl(host, &["enable", "--now", "strato-agent"])
            .expect("start the agent");
    }
    let mut ids = Vec::new();
    for host in ["m1", "m2", "m3"] {
        ids.push(wait_state(&cp, "lab", host, "idle", LONG).await);
        // The hardened unit runs (its sandbox works on a real systemd).
        assert_eq!(fleet.agent_property(host, "ActiveState"), "active");
        assert!(
            fleet.agent_journal(host).contains("enrolled"),
            "{}",
            fleet.agent_journal(host)
        );
    }

    // SSH to a machine with no job: a login shell on the machine itself,
    // inside the unit's sandbox, where the agent leads a session of its own
    // (the terminal must become the shell's, not the agent's).
    let m1 = &nodes(&cp, "lab")
        .into_iter()
        .find(|n| n["node_id"] == ids[0])
        .expect("m1 listed");
    let port = m1["port"].as_u64().expect("an SSH port");
    let ip = fleet.ip("m1").expect("m1's address");
    assert_eq!(m1["ssh"], format!("ssh -p {port} azureuser@{ip}"), "{m1}");
    let login = wait_for("a login on m1", LONG, || {
        let out = ssh_client::terminal(
            &ip,
            port,
            &key,
            "echo node-$((6*7)) on $(hostname)\nexit 5\n",
        );
        async move { (out.status.code() == Some(5)).then_some(out) }
    })
    .await;
    let shown = String::from_utf8_lossy(&login.stdout);
    assert!(shown.contains("node-42 on m1"), "{shown}");
    assert_eq!(
        fleet.agent_property("m1", "ActiveState"),
        "active",
        "the agent lives on"
    );

    // The token is used up: a fourth machine is refused, and its unit
    // fails without restarting (exit status 2, RestartPreventExitStatus).
    fleet.boot("m4", &cp, &token, &[]).expect("boot m4");
    let _ = fleet.systemctl("m4", &["start", "strato-agent"]);
    wait_for("m4's agent refused", LONG, || {
        let state = fleet.agent_property("m4", "ActiveState");
        let status = fleet.agent_property("m4", "ExecMainStatus");
        async move { (state == "failed" && status == "2").then_some(()) }
    })
    .await;
    let journal = fleet.agent_journal("m4");
    assert!(journal.contains("refused this agent"), "{journal}");
    assert_eq!(fleet.agent_property("m4", "NRestarts"), "0");
    assert!(node_of(&nodes(&cp, "lab"), "m4").is_none());

    // A job runs in a machine's own engine.
    let id = cp
        .submit(v1::JobSpec {
            cluster: "lab".into(),
            command: vec!["sh".into(), "-c".into(), "echo on $(hostname)".into()],
            ..Default::default()
        })
        .await;
    let done = wait_job(&cp, &id, "the job done", LONG, |j| {
        j.state == v1::JobState::Completed as i32
    })
    .await;
    let ran_on = &done.attempts.last().expect("an attempt").node_id;
    assert!(ids.contains(ran_on), "{done:?}");

    // MPI: 2 machines x 2 ranks over the machines' network, each machine's
    // docker0 (the same 172.17.0.1 on every one) left alone.
    let id = cp
        .submit(v1::JobSpec {
            cluster: "lab".into(),
            image: MPI_IMAGE.into(),
            command: vec!["python3".into(), "-c".into(), MPI_HELLO.into()],
            node_count: 2,
            process_count_per_node: 2,
            ..Default::default()
        })
        .await;
    let job = wait_job(&cp, &id, "the MPI job done", LONG, |j| {
        j.state == v1::JobState::Completed as i32 || j.state == v1::JobState::Failed as i32
    })
    .await;
    let mut jobs = cp.jobs().await;
    let lines: Vec<String> = job_log_lines(&mut jobs, &id)
        .await
        .into_iter()
        .map(|l| l.line)
        .collect();
    assert_eq!(job.state, v1::JobState::Completed as i32, "{lines:#?}");
    let ranks: Vec<&String> = lines.iter().filter(|l| l.starts_with("rank ")).collect();
    assert_eq!(ranks.len(), 4, "four ranks: {lines:#?}");
    for l in &ranks {
        assert!(l.contains("size 4") && l.ends_with("sum 6"), "{l}");
    }
    let hosts: BTreeSet<&str> = ranks
        .iter()
        .filter_map(|l| l.split_whitespace().nth(5))
        .collect();
    let gang = &job.attempts.last().expect("an attempt").node_ids;
    let expected: BTreeSet<&str> = gang.iter().filter_map(|n| n.split('-').next()).collect();
    assert_eq!(hosts.len(), 2, "ranks on two machines: {lines:#?}");
    assert_eq!(hosts, expected, "the gang's machines: {lines:#?}");

    // A machine whose agent stops is lost; its job runs again on another.
    let id = cp
        .submit(v1::JobSpec {
            cluster: "lab".into(),
            command: vec!["sh".into(), "-c".into(), "echo started; sleep 300".into()],
            max_retries: 1,
            ..Default::default()
        })
        .await;
    let first = wait_job(&cp, &id, "the long job running", LONG, |j| {
        j.state == v1::JobState::Running as i32
    })
    .await;
    let lost_host = first.node_id.split('-').next().expect("host").to_owned();
    fleet
        .systemctl(&lost_host, &["stop", "strato-agent"])
        .expect("stop the agent");
    wait_state(&cp, "lab", &lost_host, "unusable", LONG).await;
    let second = wait_job(&cp, &id, "the job running again elsewhere", LONG, |j| {
        j.state == v1::JobState::Running as i32 && j.attempt == 2
    })
    .await;
    assert_ne!(second.node_id, first.node_id);

    // Detach drains the third machine, idle: it leaves at once.
    let spare = ids
        .iter()
        .find(|n| **n != first.node_id && **n != second.node_id)
        .expect("a third node")
        .clone();
    let out = cp.cli_ok(&["compute", "detach", "-n", "lab", "--node", &spare]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("is leaving"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    wait_for("the detached node gone", LONG, || {
        let gone = !nodes(&cp, "lab").iter().any(|n| n["node_id"] == *spare);
        async move { gone.then_some(()) }
    })
    .await;
    cp.cli_ok(&["job", "cancel", &id]);
}

/// Slurm-style power saving with machines that really power off: the
/// suspend command shuts the machine down (`systemctl poweroff`, the
/// container stops), the resume command boots it (`docker start`), and the
/// agent comes back from its enabled unit with the credentials it kept.
#[tokio::test]
async fn power_commands_power_a_machine_off_when_idle_and_boot_it_for_a_job() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut fleet = Fleet::create(dir.path()).expect("the fleet's network");
    let power = dir.path().join("power");
    std::fs::create_dir_all(&power).expect("power dir");
    // $2 is the machine's host name.
    let prefix = fleet.container("");
    for (name, body) in [
        (
            "poweroff",
            format!(
                "docker exec \"{prefix}$2\" systemctl poweroff >/dev/null 2>&1\n\
                 exec docker wait \"{prefix}$2\""
            ),
        ),
        ("boot", format!("exec docker start \"{prefix}$2\"")),
    ] {
        let path = power.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let power_dir = power.display().to_string();
    let mut args = ATTACHED_ARGS.to_vec();
    args.extend(["--power-commands-dir", &power_dir]);
    let cp = ControlPlane::start_on(&dir.path().join("data"), fleet.gateway, &args)
        .await
        .expect("start the control plane");
    cp.cli_ok(&[
        "compute",
        "create",
        "-n",
        "sleepy",
        "--type",
        "attached",
        "-s",
        "Standard_D2_v2",
        "--max-nodes",
        "1",
        "--idle-seconds-before-scaledown",
        "2",
        "--resume-command",
        "boot",
        "--suspend-command",
        "poweroff",
        "--power-timeout",
        "60",
    ]);
    let token = join_token(&cp, "sleepy", "1");
    fleet.boot("s1", &cp, &token, &[TEST_IMAGE]).expect("boot");
    fleet
        .systemctl("s1", &["enable", "--now", "strato-agent"])
        .expect("start the agent");
    wait_state(&cp, "sleepy", "s1", "idle", LONG).await;

    // Idle past the idle time: powered off.
    wait_state(&cp, "sleepy", "s1", "suspended", LONG).await;
    wait_for("s1 powered off", LONG, || {
        let off = !fleet.running("s1");
        async move { off.then_some(()) }
    })
    .await;

    // A job waits: the machine boots, the agent enrols again, the job runs.
    let id = cp
        .submit(v1::JobSpec {
            cluster: "sleepy".into(),
            command: vec!["echo".into(), "woke up".into()],
            ..Default::default()
        })
        .await;
    wait_job(&cp, &id, "the job done on the booted machine", LONG, |j| {
        j.state == v1::JobState::Completed as i32
    })
    .await;
    assert!(fleet.running("s1"));
    let mut jobs = cp.jobs().await;
    let lines = job_log_lines(&mut jobs, &id).await;
    assert!(lines.iter().any(|l| l.line == "woke up"), "{lines:?}");
    assert!(
        fleet.agent_journal("s1").contains("again=true"),
        "enrolled again with its certificate: {}",
        fleet.agent_journal("s1")
    );

    // And off again once idle.
    wait_state(&cp, "sleepy", "s1", "suspended", LONG).await;
    wait_for("s1 powered off again", LONG, || {
        let off = !fleet.running("s1");
        async move { off.then_some(()) }
    })
    .await;
}
