//! End-to-end: the `strato` CLI as a user types it, against a real control
//! plane.

use strato_e2e::ControlPlane;

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &std::process::Output) -> serde_json::Value {
    assert!(o.status.success(), "exit {}: {}", o.status, stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)))
}

#[tokio::test]
async fn compute_verbs_from_flags_and_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = ControlPlane::start(&dir.path().join("data"), &["--provider", "none"])
        .await
        .expect("start");

    let created = json(&cp.cli(&[
        "compute",
        "create",
        "-n",
        "cpu-a",
        "-s",
        "standard_d2_v2",
        "--min-nodes",
        "0",
        "--max-nodes",
        "3",
        "--idle-seconds-before-scaledown",
        "60",
        "--tag",
        "team=ml",
        "--description",
        "batch",
        "-o",
        "json",
    ]));
    assert_eq!(created["vm_size"], "Standard_D2_v2");

    let shown = json(&cp.cli(&["compute", "show", "-n", "cpu-a", "-o", "json"]));
    assert_eq!(shown["name"], "cpu-a");
    assert_eq!(shown["vm_priority"], "dedicated");
    assert_eq!(shown["min_nodes"], 0);
    assert_eq!(shown["max_nodes"], 3);
    assert_eq!(shown["idle_seconds_before_scaledown"], 60);
    assert_eq!(shown["location"], "local");
    assert_eq!(shown["allocation_state"], "steady");
    assert_eq!(shown["current_node_count"], 0);
    assert_eq!(shown["target_node_count"], 0);
    assert_eq!(shown["tags"]["team"], "ml");
    for key in [
        "idle",
        "running",
        "preparing",
        "unusable",
        "leaving",
        "preempted",
    ] {
        assert_eq!(shown["node_state_counts"][key], 0, "{key}");
    }
    assert_eq!(shown["errors"], serde_json::json!([]));

    // The AmlCompute YAML schema.
    let file = dir.path().join("gpu.yml");
    std::fs::write(
        &file,
        "$schema: https://azuremlschemas.azureedge.net/latest/amlCompute.schema.json\n\
         name: gpu-a1\ntype: amlcompute\nsize: Standard_NC6s_v3\ntier: low_priority\n\
         min_instances: 0\nmax_instances: 2\nidle_time_before_scale_down: 300\n\
         identity:\n  type: system_assigned\n",
    )
    .expect("write yaml");
    let file_arg = file.to_string_lossy().into_owned();
    let gpu = json(&cp.cli(&["compute", "create", "--file", &file_arg, "-o", "json"]));
    assert_eq!(gpu["vm_priority"], "lowpriority");
    assert_eq!(gpu["quota_family"], "lowPriority");
    assert_eq!(gpu["identity"]["type"], "system_assigned");
    // As az prints it: the system-assigned identity's principal id.
    assert!(
        gpu["identity"]["principal_id"]
            .as_str()
            .is_some_and(|p| !p.is_empty()),
        "{gpu}"
    );
    assert_eq!(gpu["idle_seconds_before_scaledown"], 300);
    // az's keys beside Strato's.
    assert_eq!(
        (
            &gpu["size"],
            &gpu["tier"],
            &gpu["max_instances"],
            &gpu["idle_time_before_scale_down"],
            &gpu["provisioning_state"],
        ),
        (
            &serde_json::json!("Standard_NC6s_v3"),
            &serde_json::json!("low_priority"),
            &serde_json::json!(2),
            &serde_json::json!(300),
            &serde_json::json!("Succeeded"),
        )
    );
    // --query as az takes it, and tsv as az prints it.
    let names = cp.cli(&[
        "compute",
        "list",
        "--query",
        "[?tier=='low_priority'].name",
        "-o",
        "tsv",
    ]);
    assert_eq!(stdout(&names), "gpu-a1\n");
    let bad = cp.cli(&["compute", "list", "--query", "[?"]);
    assert_eq!(bad.status.code(), Some(2), "a query that is not JMESPath");

    let yaml = cp.cli(&["compute", "show", "-n", "gpu-a1", "-o", "yaml"]);
    assert!(
        stdout(&yaml).contains("vm_size: Standard_NC6s_v3"),
        "{}",
        stdout(&yaml)
    );

    let listed = json(&cp.cli(&["compute", "list", "-o", "json"]));
    assert_eq!(listed.as_array().map(Vec::len), Some(2));
    let table = cp.cli(&["compute", "list"]);
    let text = stdout(&table);
    assert!(
        text.starts_with("NAME") && text.contains("cpu-a") && text.contains("gpu-a1"),
        "{text}"
    );

    // Raising min nodes waits for them; with --provider none they never
    // come, and the wait ends with the cluster's error (the change is kept).
    let waited = cp.cli(&[
        "compute",
        "update",
        "-n",
        "cpu-a",
        "--max-nodes",
        "5",
        "--min-nodes",
        "1",
    ]);
    assert_eq!(waited.status.code(), Some(1), "{}", stderr(&waited));
    assert!(
        stderr(&waited).contains("cannot bring up its 1 min nodes: no_node_provider"),
        "{}",
        stderr(&waited)
    );
    let updated = json(&cp.cli(&["compute", "show", "-n", "cpu-a", "-o", "json"]));
    assert_eq!(
        (updated["min_nodes"].clone(), updated["max_nodes"].clone()),
        (1.into(), 5.into())
    );
    // az's --set.
    let set = json(&cp.cli(&[
        "compute",
        "update",
        "-n",
        "cpu-a",
        "--set",
        "max_instances=6",
        "--set",
        "tags.owner=ml",
        "--no-wait",
        "-o",
        "json",
    ]));
    assert_eq!(
        (set["max_instances"].clone(), set["tags"]["owner"].clone()),
        (6.into(), "ml".into())
    );
    let bad = cp.cli(&["compute", "update", "-n", "cpu-a", "--set", "size=big"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("--set size"), "{}", stderr(&bad));
    // With --provider none, the reconcile loop records why the cluster
    // cannot reach its target instead of sitting in `resizing` silently.
    let shown = strato_e2e::wait_for(
        "the no_node_provider error",
        std::time::Duration::from_secs(20),
        || {
            let shown = json(&cp.cli(&["compute", "show", "-n", "cpu-a", "-o", "json"]));
            async move { (shown["errors"][0]["code"] == "no_node_provider").then_some(shown) }
        },
    )
    .await;
    assert_eq!(shown["allocation_state"], "resizing");
    assert_eq!(shown["target_node_count"], 1);
    assert!(
        shown["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("--provider none"))
    );

    // Re-applying the file is harmless; changing a fixed property is refused.
    let same = cp.cli(&["compute", "update", "--file", &file_arg]);
    assert!(same.status.success(), "{}", stderr(&same));
    std::fs::write(
        &file,
        "name: gpu-a1\nsize: Standard_NC24ads_A100_v4\nmax_instances: 3\n",
    )
    .expect("write");
    let changed = cp.cli(&["compute", "update", "--file", &file_arg]);
    assert_eq!(changed.status.code(), Some(1));
    assert!(stderr(&changed).contains("vm_size"), "{}", stderr(&changed));

    let nodes = json(&cp.cli(&["compute", "list-nodes", "-n", "cpu-a", "-o", "json"]));
    assert_eq!(nodes, serde_json::json!([]));
    let sizes = json(&cp.cli(&["compute", "list-sizes", "-o", "json"]));
    assert!(sizes.as_array().is_some_and(|s| {
        s.iter()
            .any(|z| z["name"] == "Standard_ND96isr_H100_v5" && z["gpus"] == 8)
    }));
    let usage = json(&cp.cli(&["compute", "list-usage", "-o", "json"]));
    let dv2 = usage
        .as_array()
        .and_then(|u| u.iter().find(|l| l["name"] == "standardDv2Family"))
        .expect("family line")
        .clone();
    assert_eq!(dv2["current"], 2, "min 1 node of 2 vCPUs");

    let deleted = cp.cli(&["compute", "delete", "-n", "cpu-a", "--yes"]);
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    let gone = cp.cli(&["compute", "show", "-n", "cpu-a"]);
    assert_eq!(gone.status.code(), Some(1));
    assert!(stderr(&gone).contains("not found"), "{}", stderr(&gone));
}

#[tokio::test]
async fn refusals_exit_non_zero_with_one_line_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = ControlPlane::start(&dir.path().join("data"), &["--provider", "none"])
        .await
        .expect("start");
    let cases: &[(&[&str], &str)] = &[
        (&["compute", "create", "-n", "gpu-2"], "name"),
        (
            &[
                "compute",
                "create",
                "-n",
                "cpu",
                "--min-nodes",
                "4",
                "--max-nodes",
                "2",
            ],
            "min_nodes",
        ),
        (
            &["compute", "create", "-n", "cpu", "-s", "Standard_NC6"],
            "Standard_NC6s_v3",
        ),
        (
            &[
                "compute",
                "create",
                "-n",
                "cpu",
                "--assign-identity",
                "[system]",
                "/subscriptions/s/u",
            ],
            "identity",
        ),
        (
            &[
                "compute",
                "create",
                "-n",
                "cpu",
                "--admin-username",
                "azureuser",
                "--admin-password",
                "short",
            ],
            "ssh.admin_password",
        ),
        (
            &["compute", "create", "-n", "cpu", "--vnet-name", "v"],
            "vnet.",
        ),
    ];
    for (args, needle) in cases {
        let out = cp.cli(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(
            !err.contains("short"),
            "the password must not be echoed: {err}"
        );
    }
    let listed = cp.cli(&["compute", "list", "-o", "json"]);
    assert_eq!(stdout(&listed).trim(), "[]", "nothing was stored");

    let unreachable = std::process::Command::new(strato_e2e::binary("strato"))
        .env_remove("STRATO_CONFIG")
        .args([
            "--endpoint",
            &format!("https://127.0.0.1:{}", strato_e2e::free_port()),
            "compute",
            "list",
        ])
        .output()
        .expect("run");
    assert_eq!(unreachable.status.code(), Some(3));
    assert!(stderr(&unreachable).contains("cannot reach the control plane"));
}
