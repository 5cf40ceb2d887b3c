//! `cargo xtask demo`: a control plane and a cluster of 0..2 nodes running
//! three jobs, growing to 2 nodes and shrinking back to 0.

use std::time::{Duration, Instant};

use anyhow::ensure;

use crate::command::run;
use crate::control::{Control, free_port, node_states, strato, strato_output};
use crate::images::TEST_IMAGE;
use crate::setup::setup;
use crate::workspace::{cargo, root};

pub(crate) fn demo() -> anyhow::Result<()> {
    setup()?;
    let mut build = cargo();
    build.args(["build", "--quiet", "--bins"]);
    run("cargo build --bins", build)?;

    let data_dir = root()
        .join(".data")
        .join(format!("demo-{}", std::process::id()));
    std::fs::create_dir_all(&data_dir)?;
    let grpc = format!("127.0.0.1:{}", free_port()?);
    let http = format!("127.0.0.1:{}", free_port()?);
    println!(
        "==> strato-control on {grpc} (HTTP {http}), local provider, data in {}",
        data_dir.display()
    );
    let mut control = Control::start(&data_dir, &grpc, &http)?;

    strato(
        &control,
        &[
            "compute",
            "create",
            "-n",
            "cpu-demo",
            "-s",
            "Standard_D2_v2",
            "--min-nodes",
            "0",
            "--max-nodes",
            "2",
            "--idle-seconds-before-scaledown",
            "5",
        ],
        true,
    )?;
    println!("\n# bad input is refused, naming the field, and changes nothing:");
    strato(
        &control,
        &["compute", "create", "-n", "gpu-2", "-s", "Standard_NC6"],
        false,
    )?;
    strato(
        &control,
        &[
            "compute",
            "create",
            "-n",
            "h100-demo",
            "-s",
            "Standard_ND96isr_H100_v5",
            "--min-nodes",
            "2",
            "--max-nodes",
            "2",
        ],
        false,
    )?;

    println!("\n# three jobs on a cluster of at most two nodes, starting from zero:");
    let mut ids = Vec::new();
    for i in 1..=3 {
        let script = format!("echo job {i} on node $STRATO_NODE_ID; sleep 2; echo job {i} done");
        let args = [
            "job",
            "submit",
            "--compute",
            "cpu-demo",
            "--image",
            TEST_IMAGE,
            "--",
            "sh",
            "-c",
            &script,
        ];
        println!("$ strato {}", args.join(" "));
        let id = strato_output(&control, &args)?.trim().to_owned();
        println!("{id}");
        ids.push(id);
    }

    // Watch the cluster grow while the jobs run, then shrink back to zero.
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut grew_to = 0;
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut jobs_done = false;
    loop {
        let nodes = node_states(&control, "cpu-demo")?;
        if nodes != seen {
            let states: Vec<String> = nodes.iter().map(|(id, s)| format!("{id}={s}")).collect();
            println!("  [nodes: {}] {}", nodes.len(), states.join(" "));
            grew_to = grew_to.max(nodes.len());
            seen = nodes;
        }
        if !jobs_done {
            let list = strato_output(&control, &["job", "list", "--compute", "cpu-demo"])?;
            jobs_done = list
                .lines()
                .skip(1)
                .all(|l| l.contains("completed") || l.contains("failed") || l.contains("canceled"));
            if jobs_done {
                println!("  all jobs ended; the idle nodes leave after 5s");
            }
        }
        if jobs_done && seen.is_empty() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the demo did not finish within 3 minutes"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    println!("  the cluster grew to {grew_to} nodes (max 2) and returned to 0");
    for id in &ids {
        strato(&control, &["job", "logs", id], true)?;
    }
    strato(&control, &["job", "list"], true)?;
    strato(&control, &["job", "show", &ids[0]], true)?;
    strato(&control, &["compute", "show", "-n", "cpu-demo"], true)?;
    strato(
        &control,
        &["compute", "delete", "-n", "cpu-demo", "--yes"],
        true,
    )?;
    control.terminate()?;
    std::fs::remove_dir_all(&data_dir).ok();
    println!("\ndemo: done");
    Ok(())
}
