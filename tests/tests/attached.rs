//! End-to-end: an attached cluster of machines that join by themselves.
//! A real control plane (no node provider), real `strato-agent` processes
//! started as a machine's systemd unit would start them (a join token in a
//! 0600 file, the control plane's CA, TLS), and the real Docker engine.
//! They join, run jobs, are refused once the token is used up or when too
//! small, become unusable when their agent stops (the job runs again
//! elsewhere) and come back with it, and leave when detached.

use std::process::Child;
use std::time::Duration;

use strato_e2e::machines::{ATTACHED_ARGS, join_token, nodes, wait_job, wait_state};
use strato_e2e::{ControlPlane, require_docker, wait_for};
use strato_proto::v1;

const LONG: Duration = Duration::from_secs(60);

async fn start(dir: &std::path::Path) -> ControlPlane {
    require_docker();
    ControlPlane::start(&dir.join("data"), ATTACHED_ARGS)
        .await
        .expect("start the control plane")
}

/// Waits for `child` to exit and returns its status code.
async fn exit_code(child: &mut Child) -> Option<i32> {
    wait_for("the agent to exit", LONG, || {
        let status = child.try_wait().ok().flatten();
        async move { status.map(|s| s.code()) }
    })
    .await
}

#[tokio::test]
async fn machines_join_run_jobs_come_back_and_leave() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = start(dir.path()).await;
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
        "2",
    ]);
    let shown = cp.cli_ok(&["compute", "show", "-n", "lab", "-o", "json"]);
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("json");
    assert_eq!(shown["type"], "attached");
    // An amlcompute cluster's nodes get no join token from a user.
    cp.cli_ok(&["compute", "create", "-n", "cloud", "-s", "Standard_D2_v2"]);
    let refused = cp.cli(&["compute", "join-token", "create", "-n", "cloud"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("type amlcompute"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // Two machines join with one token of two uses; a third is refused.
    let token = join_token(&cp, "lab", "2");
    let m1 = cp.start_machine("m1", &token).expect("m1");
    let m2 = cp.start_machine("m2", &token).expect("m2");
    let n1 = wait_state(&cp, "lab", "m1", "idle", LONG).await;
    let n2 = wait_state(&cp, "lab", "m2", "idle", LONG).await;
    let mut m3 = cp.start_machine("m3", &token).expect("m3");
    assert_eq!(
        exit_code(&mut m3).await,
        Some(2),
        "{}",
        cp.machine_log("m3")
    );
    assert!(
        cp.machine_log("m3").contains("no uses left"),
        "{}",
        cp.machine_log("m3")
    );
    assert_eq!(nodes(&cp, "lab").len(), 2);
    // A revoked token lets no one in.
    let spare = join_token(&cp, "lab", "1");
    let listed = cp.cli_ok(&["compute", "join-token", "list", "-n", "lab", "-o", "json"]);
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&listed.stdout).expect("json");
    assert_eq!(listed.len(), 2, "{listed:?}");
    let used = listed
        .iter()
        .find(|t| t["uses_left"] == 0)
        .expect("the used one");
    assert_eq!(used["created_by"], "token:admin");
    let fresh = listed
        .iter()
        .find(|t| t["uses_left"] == 1)
        .expect("the new one");
    let id = fresh["id"].as_str().expect("id");
    assert!(!spare.starts_with(id), "the id is not the token");
    cp.cli_ok(&["compute", "join-token", "revoke", "-n", "lab", "--id", id]);
    let mut m4 = cp.start_machine("m4", &spare).expect("m4");
    assert_eq!(exit_code(&mut m4).await, Some(2));
    assert!(
        cp.machine_log("m4").contains("not recognised"),
        "{}",
        cp.machine_log("m4")
    );

    // A job runs on a machine; detached with --requeue, the machine leaves
    // and the job runs again on the other one.
    let mut jobs = cp.jobs().await;
    let id = cp
        .submit(v1::JobSpec {
            cluster: "lab".into(),
            command: vec!["sh".into(), "-c".into(), "echo started; sleep 300".into()],
            // The detach does not use it up; the lost machine does.
            max_retries: 1,
            ..Default::default()
        })
        .await;
    let first = wait_job(&cp, &id, "the job running", LONG, |j| {
        j.state == v1::JobState::Running as i32
    })
    .await;
    let (on, other, mut on_agent, other_agent) = if first.node_id == n1 {
        (&n1, &n2, m1, m2)
    } else {
        (&n2, &n1, m2, m1)
    };
    let out = cp.cli_ok(&["compute", "detach", "-n", "lab", "--node", on, "--requeue"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("is leaving"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let second = wait_job(&cp, &id, "the job running again elsewhere", LONG, |j| {
        j.state == v1::JobState::Running as i32 && j.attempt == 2
    })
    .await;
    assert_eq!(&second.node_id, other);
    wait_for("the detached node gone", LONG, || {
        let gone = !nodes(&cp, "lab").iter().any(|n| n["node_id"] == **on);
        async move { gone.then_some(()) }
    })
    .await;
    // Its agent is refused from then on (its token is used up): exit 2.
    assert_eq!(exit_code(&mut on_agent).await, Some(2));

    // The other machine's agent stops: the node becomes unusable, the job
    // waits (saying why), and runs once the agent is back.
    let mut other_agent = other_agent;
    other_agent.kill().expect("SIGKILL the agent");
    other_agent.wait().expect("reaped");
    let other_name = if other == &n1 { "m1" } else { "m2" };
    wait_state(&cp, "lab", other_name, "unusable", LONG).await;
    let waiting = wait_job(&cp, &id, "the job queued again", LONG, |j| {
        j.state == v1::JobState::Queued as i32
    })
    .await;
    assert_eq!(waiting.attempt, 3);
    let issue = wait_for("the cluster says why", LONG, || {
        let out = cp.cli_ok(&["compute", "show", "-n", "lab", "-o", "json"]);
        let c: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        async move {
            c["errors"]
                .as_array()
                .and_then(|e| e.first())
                .filter(|e| e["code"] == "waiting_for_machines")
                .cloned()
        }
    })
    .await;
    assert!(
        issue["message"]
            .as_str()
            .is_some_and(|m| m.contains("1 unusable")),
        "{issue}"
    );
    // The same machine, restarted: back with its certificate, no token.
    let mut back = cp.start_machine(other_name, "a used token").expect("back");
    wait_job(
        &cp,
        &id,
        "the job running on the returned machine",
        LONG,
        |j| j.state == v1::JobState::Running as i32 && j.attempt == 3,
    )
    .await;
    jobs.cancel_job(v1::CancelJobRequest { id: id.clone() })
        .await
        .expect("cancel");
    wait_state(&cp, "lab", other_name, "idle", LONG).await;

    // A machine smaller than the size joins as unusable, saying what it
    // lacks, and its agent stops.
    cp.cli_ok(&[
        "compute",
        "create",
        "-n",
        "big",
        "--type",
        "attached",
        "-s",
        "Standard_DS3_v2",
        "--max-nodes",
        "1",
    ]);
    let big_token = join_token(&cp, "big", "1");
    let mut small = cp.start_machine("small", &big_token).expect("small");
    assert_eq!(
        exit_code(&mut small).await,
        Some(2),
        "{}",
        cp.machine_log("small")
    );
    let listed = nodes(&cp, "big");
    assert_eq!(listed[0]["state"], "unusable", "{listed:?}");
    let reason = listed[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("smaller than Standard_DS3_v2: ") && reason.contains("vCPUs of 4"),
        "{reason}"
    );

    let _ = back.kill();
    let _ = back.wait();
}

/// Writes an executable script `name` into `dir`.
fn script(dir: &std::path::Path, name: &str, body: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// Power commands as Slurm's power saving runs them: an idle machine is
/// suspended after the idle time (here: its agent stopped, as a powered-off
/// machine's would be), a job that waits resumes it (its agent started
/// again, as a booting machine's would be) and runs, and a failing resume
/// command shows as the cluster's error with its output.
#[tokio::test]
async fn power_commands_suspend_idle_machines_and_resume_them_for_jobs() {
    require_docker();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let power = dir.path().join("power");
    std::fs::create_dir_all(&power).expect("power dir");
    let machines = data.join("machines");
    // $1 is the node id, $2 the host name (the machine's name here).
    script(
        &power,
        "suspend",
        &format!(
            "kill -TERM \"$(cat '{}'/\"$2\"/agent.pid)\"",
            machines.display()
        ),
    );
    script(
        &power,
        "resume",
        &format!(
            "setsid sh '{}'/\"$2\"/start.sh >/dev/null 2>&1 < /dev/null &",
            machines.display()
        ),
    );
    script(&power, "fail", "echo \"no route to host $2\" >&2; exit 1");
    let power_dir = power.display().to_string();
    let mut args = ATTACHED_ARGS.to_vec();
    args.extend(["--power-commands-dir", &power_dir]);
    let cp = ControlPlane::start(&data, &args)
        .await
        .expect("start the control plane");
    let create = |name: &str, resume: &str| {
        cp.cli(&[
            "compute",
            "create",
            "-n",
            name,
            "--type",
            "attached",
            "-s",
            "Standard_D2_v2",
            "--max-nodes",
            "1",
            "--idle-seconds-before-scaledown",
            "1",
            "--resume-command",
            resume,
            "--suspend-command",
            "suspend",
        ])
    };
    let missing = create("nowhere", "no-such-command");
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("power.resume_command"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    assert!(create("lab", "resume").status.success());
    let shown = cp.cli_ok(&["compute", "show", "-n", "lab", "-o", "json"]);
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("json");
    assert_eq!(shown["power"]["resume_command"], "resume");

    let mut m1 = cp
        .start_machine("m1", &join_token(&cp, "lab", "1"))
        .expect("m1");
    wait_state(&cp, "lab", "m1", "idle", LONG).await;
    // Idle for a second: suspended, its agent stopped by the command.
    let node = wait_state(&cp, "lab", "m1", "suspended", LONG).await;
    assert_eq!(exit_code(&mut m1).await, Some(0), "SIGTERM stops the agent");
    let listed = nodes(&cp, "lab");
    assert_eq!(listed[0]["reason"], "suspended by suspend");

    // A job waits: the machine is resumed, its agent enrols again with its
    // certificate, and the job runs there.
    let id = cp
        .submit(v1::JobSpec {
            cluster: "lab".into(),
            command: vec!["echo".into(), "woken".into()],
            ..Default::default()
        })
        .await;
    let done = wait_job(&cp, &id, "the job done on the resumed machine", LONG, |j| {
        j.state == v1::JobState::Completed as i32
    })
    .await;
    assert_eq!(
        done.attempts.last().map(|a| a.node_id.as_str()),
        Some(node.as_str())
    );
    // And it goes back to sleep.
    wait_state(&cp, "lab", "m1", "suspended", LONG).await;

    // A resume command that fails: the cluster says so, with its output,
    // and the machine stays suspended.
    assert!(create("broken", "fail").status.success());
    let mut m2 = cp
        .start_machine("m2", &join_token(&cp, "broken", "1"))
        .expect("m2");
    wait_state(&cp, "broken", "m2", "suspended", LONG).await;
    assert_eq!(exit_code(&mut m2).await, Some(0));
    cp.submit(v1::JobSpec {
        cluster: "broken".into(),
        command: vec!["true".into()],
        ..Default::default()
    })
    .await;
    let issue = wait_for("the failed resume shown", LONG, || {
        let out = cp.cli_ok(&["compute", "show", "-n", "broken", "-o", "json"]);
        let c: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        async move {
            c["errors"].as_array().and_then(|errors| {
                errors
                    .iter()
                    .find(|e| e["code"] == "power_command_failed")
                    .cloned()
            })
        }
    })
    .await;
    let message = issue["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("resume command fail") && message.contains("no route to host m2"),
        "{message}"
    );
    wait_state(&cp, "broken", "m2", "suspended", LONG).await;
}
