//! End-to-end: SSH to nodes with the real OpenSSH client. A cluster with an
//! admin user and remote login has its nodes' agents serve SSH (the local
//! provider gives each a loopback port); the cluster's key logs in and a
//! command lands in the running job's container; a wrong key is refused;
//! a cluster without SSH has nothing listening.

use std::process::Output;
use std::time::Duration;

use strato_e2e::machines::nodes;
use strato_e2e::ssh_client::{self, keypair};
use strato_e2e::{ControlPlane, require_docker, wait_for};
use strato_proto::v1;

const LONG: Duration = Duration::from_secs(60);

/// `ssh -p PORT -i KEY azureuser@127.0.0.1 COMMAND`, non-interactive.
fn ssh(port: u64, key: &std::path::Path, command: &str) -> Output {
    ssh_client::command("127.0.0.1", port, key, command)
}

/// `ssh -tt` to 127.0.0.1:PORT, typing `keys`.
fn ssh_terminal(port: u64, key: &std::path::Path, keys: &str) -> Output {
    ssh_client::terminal("127.0.0.1", port, key, keys)
}

/// The first idle node of `cluster` with an SSH port.
async fn serving_ssh(cp: &ControlPlane, cluster: &str) -> serde_json::Value {
    wait_for(&format!("a node of {cluster} serving SSH"), LONG, || {
        let listed = nodes(cp, cluster);
        async move {
            listed
                .into_iter()
                .find(|n| n["state"] == "idle" && n["port"].as_u64().unwrap_or(0) > 0)
        }
    })
    .await
}

#[tokio::test]
async fn the_clusters_key_logs_in_to_the_running_jobs_container() {
    require_docker();
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = ControlPlane::start_fast(&dir.path().join("data"))
        .await
        .expect("start");
    let (key, public) = keypair(dir.path(), "cluster-key");
    let (stranger, _) = keypair(dir.path(), "stranger-key");
    cp.cli_ok(&[
        "compute",
        "create",
        "-n",
        "ssh-on",
        "-s",
        "Standard_D2_v2",
        "--min-nodes",
        "1",
        "--max-nodes",
        "1",
        "--admin-username",
        "azureuser",
        "--ssh-key-value",
        &public,
        "--ssh-public-access",
    ]);
    let node = serving_ssh(&cp, "ssh-on").await;
    let port = node["port"].as_u64().expect("port");
    assert_eq!(
        node["ssh"],
        format!("ssh -p {port} azureuser@127.0.0.1"),
        "{node}"
    );

    // No job: a local node offers no shell of its own (its machine is the
    // control plane's), and says so once the agent, just enrolled, serves.
    let out = wait_for("SSH served", LONG, || {
        let out = ssh(port, &key, "echo on-the-node");
        async move {
            String::from_utf8_lossy(&out.stderr)
                .contains("no job runs on this node")
                .then_some(out)
        }
    })
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "nothing ran");

    // A running job: the command lands in its container, exit status too.
    let id = cp
        .submit(v1::JobSpec {
            cluster: "ssh-on".into(),
            command: vec![
                "sh".into(),
                "-c".into(),
                "echo marker > /tmp/in-job; sleep 300".into(),
            ],
            ..Default::default()
        })
        .await;
    let inside = wait_for("the command in the job's container", LONG, || {
        let out = ssh(port, &key, "cat /tmp/in-job");
        async move {
            (out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "marker")
                .then_some(out)
        }
    })
    .await;
    assert!(inside.status.success());
    let failed = ssh(port, &key, "exit 7");
    assert_eq!(failed.status.code(), Some(7));
    // An interactive login lands in the job's container too, on a terminal.
    let out = ssh_terminal(port, &key, "echo in=$(cat /tmp/in-job) $(tty)\nexit 3\n");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("in=marker /dev/pts/"),
        "{shown}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(3), "{shown}");
    // A client that leaves hangs its terminal up: what it ran there ends.
    let mut left = ssh_client::start_terminal("127.0.0.1", port, &key);
    {
        use std::io::Write as _;
        let mut keys = left.stdin.take().expect("stdin");
        keys.write_all(b"sleep 4242\n").expect("type");
        wait_for("the sleep running", LONG, || {
            let ps = ssh(port, &key, "ps");
            async move {
                String::from_utf8_lossy(&ps.stdout)
                    .contains("sleep 4242")
                    .then_some(())
            }
        })
        .await;
        left.kill().expect("the client leaves");
        let _ = left.wait();
    }
    wait_for("the left terminal's sleep gone", LONG, || {
        let ps = ssh(port, &key, "ps");
        async move {
            (ps.status.success() && !String::from_utf8_lossy(&ps.stdout).contains("sleep 4242"))
                .then_some(())
        }
    })
    .await;

    // Another key is refused.
    let refused = ssh(port, &stranger, "true");
    assert_eq!(refused.status.code(), Some(255));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // connect-ssh runs the same ssh for the user, with the host key the
    // agent reported pinned (strict checking, no trust on first use).
    let host_key = nodes(&cp, "ssh-on")[0]["ssh_host_key"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(host_key.starts_with("ssh-ed25519 "), "{host_key}");
    let connect = |extra: &[&str]| {
        cp.cli_command()
            .args(["compute", "connect-ssh", "-n", "ssh-on", "--node"])
            .arg(node["node_id"].as_str().expect("node id"))
            .args(["--", "-o", "BatchMode=yes"])
            .args(extra)
            .arg("-i")
            .arg(&key)
            .arg("cat /tmp/in-job")
            .output()
            .expect("strato")
    };
    let out = connect(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "marker");

    cp.jobs()
        .await
        .cancel_job(v1::CancelJobRequest { id })
        .await
        .expect("cancel");

    // A cluster without SSH: no connection string, nothing listens on the
    // port its agent was given.
    cp.cli_ok(&[
        "compute",
        "create",
        "-n",
        "ssh-off",
        "-s",
        "Standard_D2_v2",
        "--min-nodes",
        "1",
        "--max-nodes",
        "1",
    ]);
    let off = wait_for("the other cluster's node idle", LONG, || {
        let listed = nodes(&cp, "ssh-off");
        async move { listed.into_iter().find(|n| n["state"] == "idle") }
    })
    .await;
    assert_eq!(off["port"], 0, "{off}");
    assert!(off.get("ssh").is_none(), "{off}");
    let env = std::fs::read_to_string(
        cp.data_dir
            .join("nodes")
            .join(off["node_id"].as_str().expect("id"))
            .join("agent.env"),
    )
    .expect("agent.env");
    let listen = env
        .lines()
        .find_map(|l| l.strip_prefix("STRATO_SSH_LISTEN="))
        .expect("the agent was given a port");
    assert!(
        std::net::TcpStream::connect(listen).is_err(),
        "nothing listens on {listen}"
    );
    let out = cp.cli(&[
        "compute",
        "connect-ssh",
        "-n",
        "ssh-off",
        "--node",
        off["node_id"].as_str().expect("id"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("serves no SSH"));

    // An attached machine (its own machine, unlike a local node) runs a
    // command on itself when no job runs there.
    cp.cli_ok(&[
        "compute",
        "create",
        "-n",
        "lab-ssh",
        "--type",
        "attached",
        "-s",
        "Standard_D2_v2",
        "--max-nodes",
        "1",
        "--admin-username",
        "azureuser",
        "--ssh-key-value",
        &public,
        "--ssh-public-access",
    ]);
    let token = cp.cli_ok(&["compute", "join-token", "create", "-n", "lab-ssh"]);
    let token = String::from_utf8_lossy(&token.stdout).trim().to_owned();
    let mut machine = cp.start_machine("m-ssh", &token).expect("machine");
    let joined = serving_ssh(&cp, "lab-ssh").await;
    let port = joined["port"].as_u64().expect("port");
    let work = cp.data_dir.join("machines/m-ssh/work");
    let probe = format!("test -d '{}' && echo on-the-machine", work.display());
    let out = wait_for("a command on the machine", LONG, || {
        let out = ssh(port, &key, &probe);
        async move { out.status.success().then_some(out) }
    })
    .await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "on-the-machine"
    );

    // An interactive login there: a shell on a terminal of its own, the
    // default size, and its exit status passed on.
    let out = ssh_terminal(
        port,
        &key,
        "echo node-$((6*7)) size $(stty size) $(tty)\nexit 4\n",
    );
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("node-42 size 24 80 /dev/pts/"), "{shown}");
    assert_eq!(out.status.code(), Some(4), "{shown}");
    // A client that leaves hangs the shell up, and what runs in it.
    let mut left = ssh_client::start_terminal("127.0.0.1", port, &key);
    let sleeping = || {
        std::process::Command::new("pgrep")
            .args(["-f", "sleep 4343"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    {
        use std::io::Write as _;
        let mut keys = left.stdin.take().expect("stdin");
        keys.write_all(b"sleep 4343\n").expect("type");
        wait_for("the sleep running", LONG, || {
            let running = sleeping();
            async move { running.then_some(()) }
        })
        .await;
        left.kill().expect("the client leaves");
        let _ = left.wait();
    }
    wait_for("the left shell's sleep gone", LONG, || {
        let gone = !sleeping();
        async move { gone.then_some(()) }
    })
    .await;
    let _ = machine.kill();
    let _ = machine.wait();
}
