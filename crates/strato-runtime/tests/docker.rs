//! `DockerRuntime` against the real Docker engine on this machine, with the
//! test image that `cargo xtask setup` builds. A missing engine or image fails
//! these tests (it does not skip them).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use strato_runtime::{
    ContainerRuntime, ContainerSpec, DockerRuntime, LABEL_ATTEMPT, LABEL_JOB, LABEL_NODE,
    LABEL_SANDBOX, LABEL_SANDBOX_NODE, OutputLine, OutputStream, RuntimeError,
};

const TEST_IMAGE: &str = "strato-test/busybox:latest";
/// A label only these tests set; its value is unique per test.
const LABEL_TEST: &str = "strato.test";
/// Upper bound on anything a test waits for; never reached when all is well.
const PATIENCE: Duration = Duration::from_secs(60);

/// A name unique to this process and call: `<tag>-<pid>-<nanos>-<n>`.
fn unique(tag: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .subsec_nanos();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("strato-test-{tag}-{}-{nanos}-{n}", std::process::id())
}

/// The runtime on the default socket, with the test image present.
async fn runtime() -> DockerRuntime {
    let runtime = DockerRuntime::connect(None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    match runtime.ensure_image(TEST_IMAGE).await {
        Ok(()) => runtime,
        Err(e) => panic!(
            "the test image {TEST_IMAGE} is missing: run `cargo xtask setup` to build it ({e})"
        ),
    }
}

fn spec(name: &str, test_label: &str, command: &[&str]) -> ContainerSpec {
    ContainerSpec {
        name: name.to_owned(),
        image: TEST_IMAGE.to_owned(),
        command: command.iter().map(|s| (*s).to_owned()).collect(),
        env: Vec::new(),
        cpus: None,
        memory_bytes: None,
        mounts: Vec::new(),
        network: None,
        hostname: None,
        pids_limit: Some(strato_runtime::PIDS_LIMIT),
        new_privileges: false,
        user: None,
        gpus: Vec::new(),
        entrypoint: None,
        fuse_mounts_at: None,
        working_dir: None,
        attach_output: false,
        prepared_network: false,
        labels: BTreeMap::from([
            (LABEL_TEST.to_owned(), test_label.to_owned()),
            (LABEL_JOB.to_owned(), name.to_owned()),
            (LABEL_ATTEMPT.to_owned(), "1".to_owned()),
        ]),
    }
}

/// Removes every container carrying the test's label when dropped, also when
/// the test panics (from a thread of its own, as drop cannot await).
struct Cleanup {
    label: String,
}

impl Cleanup {
    fn new(label: &str) -> Self {
        Self {
            label: label.to_owned(),
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let label = self.label.clone();
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for cleanup");
            rt.block_on(async {
                let runtime = DockerRuntime::connect(None).await?;
                for container in runtime.list(LABEL_TEST, &label).await? {
                    runtime.remove(&container.id).await?;
                }
                Ok::<_, RuntimeError>(())
            })
        })
        .join();
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("cleanup of containers labelled {}: {e}", self.label),
            Err(_) => eprintln!("cleanup of containers labelled {} panicked", self.label),
        }
    }
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {PATIENCE:?}"))
}

async fn collect_logs(runtime: &DockerRuntime, id: &str) -> Vec<OutputLine> {
    let lines: Vec<_> = within("reading the logs", runtime.logs(id).collect()).await;
    lines
        .into_iter()
        .map(|line| line.expect("a log line"))
        .collect()
}

fn of(lines: &[OutputLine], stream: OutputStream) -> Vec<&str> {
    lines
        .iter()
        .filter(|l| l.stream == stream)
        .map(|l| l.line.as_str())
        .collect()
}

/// Several rounds, as the engine's follow loses the end of the output now and
/// then (moby/moby#43860), which the runtime must make up for.
#[tokio::test]
async fn output_lines_arrive_in_order_on_their_streams() {
    let runtime = runtime().await;
    runtime.ping().await.expect("ping");
    let label = unique("logs");
    let _cleanup = Cleanup::new(&label);

    let mut stdout = vec!["first".to_owned()];
    stdout.extend((1..=3000).map(|n| n.to_string()));
    stdout.extend(["hello  there", "héllo wörld", "no newline"].map(str::to_owned));
    let mut stderr = vec!["oops".to_owned()];
    stderr.extend((1..=700).map(|n| n.to_string()));
    stderr.push("err tail".to_owned());

    for round in 0..4 {
        let mut spec = spec(
            &unique("logs"),
            &label,
            &[
                "sh",
                "-c",
                "echo first; echo oops >&2; seq 1 3000; seq 1 700 >&2; \
                 echo \"$GREETING\"; printf 'héllo wörld\\n'; printf 'no newline'; printf 'err tail' >&2",
            ],
        );
        spec.env = vec![("GREETING".to_owned(), "hello  there".to_owned())];
        // Half the rounds attach before the start: the first lines come
        // from the attachment, the rest from the engine's log, none twice.
        spec.attach_output = round % 2 == 1;

        let id = runtime.create_and_start(&spec).await.expect("create");
        let lines = collect_logs(&runtime, &id).await;
        assert_eq!(within("wait", runtime.wait(&id)).await.expect("wait"), 0);
        assert_eq!(of(&lines, OutputStream::Stdout), stdout, "round {round}");
        assert_eq!(of(&lines, OutputStream::Stderr), stderr, "round {round}");
        runtime.remove(&id).await.expect("remove");
    }
}

#[tokio::test]
async fn logs_follow_a_running_container_until_it_ends() {
    let runtime = runtime().await;
    let label = unique("follow");
    let _cleanup = Cleanup::new(&label);
    let id = runtime
        .create_and_start(&spec(
            &unique("follow"),
            &label,
            &["sh", "-c", "echo ready; sleep 300"],
        ))
        .await
        .expect("create");
    let mut logs = runtime.logs(&id);
    // The first line arrives while the container still runs.
    let first = within("the first line", logs.next())
        .await
        .expect("a line before the end")
        .expect("a log line");
    assert_eq!(first.line, "ready");
    let listed = runtime.list(LABEL_TEST, &label).await.expect("list");
    assert!(listed[0].running, "{listed:?}");
    // Stopping the container ends the stream.
    runtime.stop(&id, Duration::ZERO).await.expect("stop");
    let rest: Vec<_> = within("the end of the logs", logs.collect()).await;
    assert!(rest.is_empty(), "{rest:?}");
    runtime.remove(&id).await.expect("remove");
}

#[tokio::test]
async fn the_command_runs_without_a_shell() {
    let runtime = runtime().await;
    let label = unique("noshell");
    let _cleanup = Cleanup::new(&label);
    let id = runtime
        .create_and_start(&spec(
            &unique("noshell"),
            &label,
            &["echo", "a  b", "$HOME", "*"],
        ))
        .await
        .expect("create");
    assert_eq!(within("wait", runtime.wait(&id)).await.expect("wait"), 0);
    let lines = collect_logs(&runtime, &id).await;
    assert_eq!(
        lines,
        vec![OutputLine {
            stream: OutputStream::Stdout,
            line: "a  b $HOME *".to_owned()
        }]
    );
    runtime.remove(&id).await.expect("remove");
}

#[tokio::test]
async fn resource_limits_reach_the_container() {
    let runtime = runtime().await;
    let label = unique("limits");
    let _cleanup = Cleanup::new(&label);
    // cgroup v2 files first, then v1; prints the memory limit in bytes and
    // the CPU quota as "<quota> <period>".
    let mut spec = spec(
        &unique("limits"),
        &label,
        &[
            "sh",
            "-c",
            "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes; \
             if [ -e /sys/fs/cgroup/cpu.max ]; then cat /sys/fs/cgroup/cpu.max; \
             else echo $(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us) $(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us); fi",
        ],
    );
    spec.cpus = Some(0.5);
    spec.memory_bytes = Some(64 * 1024 * 1024);
    let id = runtime.create_and_start(&spec).await.expect("create");
    assert_eq!(within("wait", runtime.wait(&id)).await.expect("wait"), 0);
    let lines = collect_logs(&runtime, &id).await;
    assert_eq!(
        of(&lines, OutputStream::Stdout),
        vec!["67108864", "50000 100000"],
        "{lines:?}"
    );
    runtime.remove(&id).await.expect("remove");
}

#[tokio::test]
async fn containers_get_no_new_privileges_a_pids_limit_and_a_cpu_limit_that_holds() {
    let runtime = runtime().await;
    let label = unique("hardening");
    let _cleanup = Cleanup::new(&label);
    // NoNewPrivs as the kernel reports it for the job's process, and the
    // pids limit of its cgroup (v2, then v1).
    let mut hardened = spec(
        &unique("hardening"),
        &label,
        &[
            "sh",
            "-c",
            "grep NoNewPrivs /proc/self/status | tr -s ' \t' ' ';              cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max;              if [ -e /sys/fs/cgroup/cpu.max ]; then cat /sys/fs/cgroup/cpu.max;              else echo $(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us) $(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us); fi",
        ],
    );
    // Far below Docker's smallest limit: still a limit, not "unlimited".
    hardened.cpus = Some(1e-12);
    let id = runtime.create_and_start(&hardened).await.expect("create");
    assert_eq!(within("wait", runtime.wait(&id)).await.expect("wait"), 0);
    let lines = collect_logs(&runtime, &id).await;
    let out = of(&lines, OutputStream::Stdout);
    assert_eq!(out[0], "NoNewPrivs: 1", "{lines:?}");
    assert_eq!(out[1], strato_runtime::PIDS_LIMIT.to_string(), "{lines:?}");
    assert_eq!(out[2], "1000 100000", "0.01 CPU: {lines:?}");
    runtime.remove(&id).await.expect("remove");

    // What an agent started with --allow-new-privileges and
    // --job-pids-limit 0 asks for.
    let mut open = spec(
        &unique("hardening"),
        &label,
        &[
            "sh",
            "-c",
            "grep NoNewPrivs /proc/self/status | tr -s ' \t' ' '",
        ],
    );
    open.pids_limit = None;
    open.new_privileges = true;
    let id = runtime.create_and_start(&open).await.expect("create");
    assert_eq!(within("wait", runtime.wait(&id)).await.expect("wait"), 0);
    let lines = collect_logs(&runtime, &id).await;
    assert_eq!(
        of(&lines, OutputStream::Stdout),
        vec!["NoNewPrivs: 0"],
        "{lines:?}"
    );
    runtime.remove(&id).await.expect("remove");
}

#[tokio::test]
async fn exit_codes_are_exact() {
    let runtime = runtime().await;
    let label = unique("exit");
    let _cleanup = Cleanup::new(&label);
    let three = runtime
        .create_and_start(&spec(&unique("exit3"), &label, &["sh", "-c", "exit 3"]))
        .await
        .expect("create");
    let zero = runtime
        .create_and_start(&spec(&unique("exit0"), &label, &["true"]))
        .await
        .expect("create");
    assert_eq!(within("wait", runtime.wait(&three)).await.expect("wait"), 3);
    assert_eq!(within("wait", runtime.wait(&zero)).await.expect("wait"), 0);
    // Waiting again on an exited container gives the same code at once.
    assert_eq!(within("wait", runtime.wait(&three)).await.expect("wait"), 3);
    runtime.remove(&three).await.expect("remove");
    runtime.remove(&zero).await.expect("remove");
}

#[tokio::test]
async fn create_and_start_is_idempotent() {
    let runtime = runtime().await;
    let label = unique("idem");
    let _cleanup = Cleanup::new(&label);

    // A running container is found again, not started twice.
    let sleeper = spec(&unique("idem-sleep"), &label, &["sleep", "300"]);
    let first = runtime.create_and_start(&sleeper).await.expect("create");
    let second = runtime.create_and_start(&sleeper).await.expect("retry");
    assert_eq!(first, second);
    let listed = runtime.list(LABEL_TEST, &label).await.expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(listed[0].running);

    // An exited container is found again and not run a second time.
    let once = spec(&unique("idem-once"), &label, &["echo", "once"]);
    let id = runtime.create_and_start(&once).await.expect("create");
    assert_eq!(within("wait", runtime.wait(&id)).await.expect("wait"), 0);
    assert_eq!(runtime.create_and_start(&once).await.expect("retry"), id);
    assert_eq!(within("wait", runtime.wait(&id)).await.expect("wait"), 0);
    let lines = collect_logs(&runtime, &id).await;
    assert_eq!(of(&lines, OutputStream::Stdout), vec!["once"]);
    assert_eq!(
        runtime.list(LABEL_TEST, &label).await.expect("list").len(),
        2
    );

    runtime.stop(&first, Duration::ZERO).await.expect("stop");
    runtime.remove(&first).await.expect("remove");
    runtime.remove(&id).await.expect("remove");
}

#[tokio::test]
async fn stop_kills_after_the_grace_period() {
    let runtime = runtime().await;
    let label = unique("stop");
    let _cleanup = Cleanup::new(&label);
    // `sleep` as pid 1 ignores SIGTERM, so only the SIGKILL after the grace
    // period ends it.
    let id = runtime
        .create_and_start(&spec(&unique("stop"), &label, &["sleep", "300"]))
        .await
        .expect("create");
    let started = Instant::now();
    within("stop", runtime.stop(&id, Duration::from_secs(1)))
        .await
        .expect("stop");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(20), "stop took {took:?}");
    assert_eq!(
        within("wait", runtime.wait(&id)).await.expect("wait"),
        137,
        "killed by SIGKILL"
    );
    let listed = runtime.list(LABEL_TEST, &label).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert!(!listed[0].running);
    assert_eq!(listed[0].exit_code, Some(137));

    // Stopping a stopped container, and anything on a removed one, is fine.
    runtime
        .stop(&id, Duration::from_secs(1))
        .await
        .expect("stop again");
    runtime.remove(&id).await.expect("remove");
    runtime.remove(&id).await.expect("remove again");
    runtime
        .stop(&id, Duration::from_secs(1))
        .await
        .expect("stop after remove");
    assert!(
        runtime
            .list(LABEL_TEST, &label)
            .await
            .expect("list")
            .is_empty()
    );
}

#[tokio::test]
async fn list_finds_exactly_the_labelled_containers() {
    let runtime = runtime().await;
    let label = unique("list");
    let other = unique("list-other");
    let _cleanup = Cleanup::new(&label);
    let _cleanup_other = Cleanup::new(&other);

    let running_name = unique("list-running");
    let exited_name = unique("list-exited");
    let running = runtime
        .create_and_start(&spec(&running_name, &label, &["sleep", "300"]))
        .await
        .expect("create");
    let exited = runtime
        .create_and_start(&spec(&exited_name, &label, &["sh", "-c", "exit 5"]))
        .await
        .expect("create");
    let unrelated = runtime
        .create_and_start(&spec(&unique("list-other"), &other, &["true"]))
        .await
        .expect("create");
    assert_eq!(
        within("wait", runtime.wait(&exited)).await.expect("wait"),
        5
    );

    let mut listed = runtime.list(LABEL_TEST, &label).await.expect("list");
    listed.sort_by(|a, b| a.name.cmp(&b.name));
    let mut expected = vec![
        (exited.clone(), exited_name.clone(), false, Some(5)),
        (running.clone(), running_name.clone(), true, None),
    ];
    expected.sort_by(|a, b| a.1.cmp(&b.1));
    let got: Vec<_> = listed
        .iter()
        .map(|c| (c.id.clone(), c.name.clone(), c.running, c.exit_code))
        .collect();
    assert_eq!(got, expected);
    for container in &listed {
        assert_eq!(container.labels.get(LABEL_TEST), Some(&label));
        assert_eq!(container.labels.get(LABEL_JOB), Some(&container.name));
    }

    // By another label, the same container shows up alone.
    let by_job = runtime.list(LABEL_JOB, &exited_name).await.expect("list");
    assert_eq!(by_job.len(), 1);
    assert_eq!(by_job[0].id, exited);

    for id in [&running, &exited, &unrelated] {
        runtime.remove(id).await.expect("remove");
    }
}

#[tokio::test]
async fn a_missing_image_is_reported_as_such() {
    let runtime = runtime().await;
    let missing = format!("{}:absent", unique("no-such-image"));
    match runtime.ensure_image(&missing).await {
        Err(RuntimeError::ImageNotFound(image)) => assert_eq!(image, missing),
        other => panic!("expected ImageNotFound, got {other:?}"),
    }
    let label = unique("noimage");
    let _cleanup = Cleanup::new(&label);
    let mut spec = spec(&unique("noimage"), &label, &["true"]);
    spec.image = missing.clone();
    match runtime.create_and_start(&spec).await {
        Err(RuntimeError::ImageNotFound(image)) => assert_eq!(image, missing),
        other => panic!("expected ImageNotFound, got {other:?}"),
    }
}

#[tokio::test]
async fn a_missing_socket_is_unreachable_and_named() {
    let socket = format!("/tmp/{}.sock", unique("no-such-socket"));
    match DockerRuntime::connect(Some(&socket)).await {
        Err(e @ RuntimeError::Unreachable { .. }) => {
            let message = e.to_string();
            assert!(message.contains(&socket), "{message}");
            assert!(message.contains("cargo xtask setup"), "{message}");
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
}

/// The node's sandboxes (`LABEL_SANDBOX_NODE`), by id.
async fn sandboxes_of(runtime: &DockerRuntime, node: &str) -> Vec<String> {
    let mut ids: Vec<String> = runtime
        .list(LABEL_SANDBOX_NODE, node)
        .await
        .expect("list sandboxes")
        .into_iter()
        .map(|c| c.id)
        .collect();
    ids.sort();
    ids
}

/// A node of the test's own (named as its label) and the labels its
/// sandboxes carry (the test's, so that `Cleanup` removes them).
fn sandbox_node(label: &str) -> (String, BTreeMap<String, String>) {
    let labels = BTreeMap::from([
        (LABEL_SANDBOX_NODE.to_owned(), label.to_owned()),
        (LABEL_TEST.to_owned(), label.to_owned()),
    ]);
    (label.to_owned(), labels)
}

/// Keeps a sandbox ready for `node` and waits for it: its id.
async fn prepared(runtime: &DockerRuntime, node: &str, labels: BTreeMap<String, String>) -> String {
    runtime
        .prepare_networks(node, labels, true)
        .await
        .expect("prepare");
    spare_of(runtime, node, &[]).await
}

/// Waits until the node has a running sandbox besides `besides`; its id.
async fn spare_of(runtime: &DockerRuntime, node: &str, besides: &[String]) -> String {
    within("a sandbox made ready", async {
        loop {
            let running = runtime
                .list(LABEL_SANDBOX_NODE, node)
                .await
                .expect("list sandboxes")
                .into_iter()
                .find(|c| c.running && !besides.contains(&c.id));
            if let Some(spare) = running {
                return spare.id;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[tokio::test]
async fn a_job_joins_the_sandbox_made_ready_for_it_which_goes_with_it() {
    let runtime = runtime().await;
    let label = unique("sandbox");
    let _cleanup = Cleanup::new(&label);
    let (node, labels) = sandbox_node(&label);
    // One an agent before this one left, that no container holds.
    let mut left = spec(&unique("left"), &label, &["sleep", "300"]);
    left.labels = labels.clone();
    runtime.create_and_start(&left).await.expect("start");

    // An agent without sandboxes removes what one before it left.
    runtime
        .prepare_networks(&node, labels.clone(), false)
        .await
        .expect("prepare");
    assert!(
        sandboxes_of(&runtime, &node).await.is_empty(),
        "a sandbox nobody holds is removed, and none is made"
    );

    let spare = prepared(&runtime, &node, labels.clone()).await;

    let mut job = spec(
        &unique("job"),
        &label,
        &["sh", "-c", "echo ready; sleep 300"],
    );
    job.prepared_network = true;
    job.labels.insert(LABEL_NODE.to_owned(), node.clone());
    let id = runtime.create_and_start(&job).await.expect("start");
    let listed = runtime.list(LABEL_TEST, &label).await.expect("list");
    let joined = listed.iter().find(|c| c.id == id).expect("the job");
    assert_eq!(joined.labels.get(LABEL_SANDBOX), Some(&spare));
    let spare_address = runtime.details(&spare).await.expect("details").ip;
    assert!(spare_address.is_some(), "the sandbox has an address");
    assert_eq!(
        runtime.details(&id).await.expect("details").ip,
        spare_address,
        "the job has its sandbox's address"
    );
    let lines = within("the first line", runtime.logs(&id).next())
        .await
        .expect("a line")
        .expect("a line");
    assert_eq!(lines.line, "ready");

    // The next is made ready at once.
    let next = spare_of(&runtime, &node, std::slice::from_ref(&spare)).await;

    // A restarted agent keeps the sandbox its running job holds and
    // replaces the spare nobody holds with one of its own.
    let restarted = DockerRuntime::connect(None).await.expect("connect");
    restarted
        .prepare_networks(&node, labels.clone(), true)
        .await
        .expect("prepare");
    let held = sandboxes_of(&restarted, &node).await;
    assert!(held.contains(&spare), "the job's sandbox stays");
    assert!(!held.contains(&next), "the old spare went");
    let own = spare_of(&restarted, &node, std::slice::from_ref(&spare)).await;

    restarted.remove(&id).await.expect("remove");
    assert_eq!(
        sandboxes_of(&restarted, &node).await,
        vec![own],
        "the job's sandbox went with it"
    );
    restarted.release_networks().await;
    assert!(sandboxes_of(&restarted, &node).await.is_empty());
}

#[tokio::test]
async fn a_job_whose_sandbox_went_starts_on_a_network_of_its_own() {
    let runtime = runtime().await;
    let label = unique("sandbox-gone");
    let _cleanup = Cleanup::new(&label);
    let (node, labels) = sandbox_node(&label);
    let spare = prepared(&runtime, &node, labels).await;
    // Removed behind the runtime's back (an engine restarted, a person).
    let other = DockerRuntime::connect(None).await.expect("connect");
    other.remove(&spare).await.expect("remove");

    let mut job = spec(
        &unique("job"),
        &label,
        &["sh", "-c", "echo ready; sleep 300"],
    );
    job.prepared_network = true;
    let id = runtime.create_and_start(&job).await.expect("start");
    let listed = runtime.list(LABEL_TEST, &label).await.expect("list");
    let started = listed.iter().find(|c| c.id == id).expect("the job");
    assert!(started.running);
    assert!(!started.labels.contains_key(LABEL_SANDBOX));
    assert!(runtime.details(&id).await.expect("details").ip.is_some());
    runtime.remove(&id).await.expect("remove");
    runtime.release_networks().await;
    within("the sandboxes gone", async {
        // One may still have been in the making when released: it goes
        // once made.
        while !sandboxes_of(&runtime, &node).await.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// `docker ARGS`' output, trimmed; fails the test when it fails.
fn docker_cli(args: &[&str]) -> String {
    let out = std::process::Command::new("docker")
        .args(args)
        .output()
        .expect("docker");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test]
async fn sandboxes_run_the_runtimes_own_pause_image_whatever_its_name_holds() {
    let runtime = runtime().await;
    let label = unique("sandbox-image");
    let _cleanup = Cleanup::new(&label);
    let (node, labels) = sandbox_node(&label);
    // A job's pull of the same name (from a registry of someone else's)
    // put another image under the pause image's tag.
    docker_cli(&["tag", TEST_IMAGE, strato_runtime::PAUSE_IMAGE]);
    let spare = prepared(&runtime, &node, labels).await;
    let image = docker_cli(&["inspect", "-f", "{{.Image}}", &spare]);
    let test_image = docker_cli(&["image", "inspect", "-f", "{{.Id}}", TEST_IMAGE]);
    assert_ne!(
        image, test_image,
        "the sandbox does not run what the tag held"
    );
    assert_eq!(
        docker_cli(&[
            "image",
            "inspect",
            "-f",
            "{{.Id}}",
            strato_runtime::PAUSE_IMAGE
        ]),
        image,
        "the tag names the runtime's own image again"
    );
    assert_eq!(
        docker_cli(&["image", "inspect", "-f", "{{.Size}}", &image]),
        "129",
        "the pause program alone"
    );
    runtime.release_networks().await;
    assert!(sandboxes_of(&runtime, &node).await.is_empty());
}

#[tokio::test]
async fn a_start_cut_short_leaves_its_sandbox_to_no_one() {
    let runtime = runtime().await;
    let label = unique("sandbox-cut");
    let _cleanup = Cleanup::new(&label);
    let (node, labels) = sandbox_node(&label);
    let spare = prepared(&runtime, &node, labels).await;
    let mut job = spec(&unique("job"), &label, &["sleep", "300"]);
    job.prepared_network = true;
    // Polled once (the sandbox taken, the create asked for), then dropped,
    // as an attempt's task is aborted.
    let cut = tokio::time::timeout(Duration::ZERO, runtime.create_and_start(&job)).await;
    assert!(cut.is_err(), "the start was cut short");
    within("the taken sandbox removed", async {
        while sandboxes_of(&runtime, &node).await.contains(&spare) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // The next one is made ready all the same.
    spare_of(&runtime, &node, std::slice::from_ref(&spare)).await;
    runtime.release_networks().await;
}
