//! Load for `cargo xtask bench scale`: the store alone (no gRPC, no
//! agents), on SQLite or on the test PostgreSQL server, with NODES idle
//! nodes (clusters of at most 1,000) and JOBS queued single-node jobs:
//! how fast nodes enrol and jobs are submitted (a transaction each, as the
//! API does them), how fast a reconcile pass's placements are stored (one
//! transaction for the pass, `assign_jobs`) against one transaction per
//! job (`assign_job`), how fast the agents' reports of those jobs are
//! stored (each running, then each ended with exit code 0, in the report
//! writer's batches of `REPORT_BATCH`), what one heartbeat of every
//! node costs (kept in memory, then written in one transaction), and how
//! long a read of every node takes (whole records, as a reconcile pass
//! reads them, and `node_sessions`, as the courier does; the mean of
//! `READS`). Prints one line of figures.
//!
//! Usage: `strato-store-bench sqlite|postgres NODES JOBS`

#![allow(clippy::print_stdout, clippy::print_stderr)] // reason: a load tool; it reports on stdout

use std::process::ExitCode;
use std::time::Instant;

use strato_control::reports::REPORT_BATCH;
use strato_control::store::conformance::postgres::Schema;
use strato_control::store::conformance::{AGENT_KEY, REGION, job};
use strato_control::store::{
    AttemptReport, EnrollReport, Enrolment, NodeReport, NodeUsage, ReportOutcome, SqlStore, Store,
};
use strato_core::job::AttemptEnd;
use strato_core::quota::{QuotaLimits, RegionQuota};
use strato_core::spec::{ClusterRequest, validate};

/// Nodes per cluster (the most a cluster without inter-node
/// communication may have).
const PER_CLUSTER: usize = 1_000;
/// Jobs placed one transaction each, for the comparison.
const ONE_BY_ONE: usize = 200;
/// Reads of every node timed (their mean is printed).
const READS: usize = 20;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(backend), Some(nodes), Some(jobs)) = (
        args.get(1).map(String::as_str),
        args.get(2).and_then(|n| n.parse::<usize>().ok()),
        args.get(3).and_then(|n| n.parse::<usize>().ok()),
    ) else {
        eprintln!("usage: strato-store-bench sqlite|postgres NODES JOBS");
        return ExitCode::from(2);
    };
    let result = match backend {
        "sqlite" => {
            let dir = match tempfile::tempdir() {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("strato-store-bench: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match SqlStore::open(dir.path()).await {
                Ok(store) => run(&store, nodes, jobs).await,
                Err(e) => Err(e.to_string()),
            }
        }
        "postgres" => {
            let schema = Schema::new().await;
            match SqlStore::connect_postgres(&schema.url(), 8).await {
                Ok(store) => {
                    let r = run(&store, nodes, jobs).await;
                    store.close().await;
                    r
                }
                Err(e) => Err(e.to_string()),
            }
        }
        other => Err(format!("unknown backend {other:?}")),
    };
    match result {
        Ok(line) => {
            println!("{backend} {line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("strato-store-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Per second, `n` things in `since`'s time.
fn rate(n: usize, since: Instant) -> f64 {
    n as f64 / since.elapsed().as_secs_f64().max(1e-9)
}

async fn run(store: &SqlStore, nodes: usize, jobs: usize) -> Result<String, String> {
    let e = |e: strato_control::store::StoreError| e.to_string();
    let big = QuotaLimits {
        default: RegionQuota {
            dedicated_cores_total: u64::MAX / 4,
            dedicated_cores_per_family: u64::MAX / 4,
            max_clusters: 10_000,
            ..RegionQuota::default()
        },
        ..QuotaLimits::default()
    };
    let clusters = nodes.div_ceil(PER_CLUSTER).max(1);
    for c in 0..clusters {
        let spec = validate(
            &ClusterRequest {
                name: format!("bench-n{c}"),
                vm_size: Some("Standard_D2_v2".into()),
                min_nodes: Some(0),
                max_nodes: Some(u32::try_from(PER_CLUSTER).unwrap_or(u32::MAX)),
                inter_node_communication: Some(false),
                ..Default::default()
            },
            REGION,
        )
        .map_err(|e| e.to_string())?;
        store
            .create_cluster(spec, Vec::new(), &big, 1)
            .await
            .map_err(e)?;
    }
    let cluster_of = |i: usize| format!("bench-n{}", i / PER_CLUSTER);
    let started = Instant::now();
    let mut ids = Vec::with_capacity(nodes);
    for i in 0..nodes {
        let id = format!("node-{i}");
        let token = format!("join-{i}");
        store
            .create_node(&cluster_of(i), &id, &token, i64::MAX, &big, 2)
            .await
            .map_err(e)?;
        store
            .enroll(
                Enrolment::JoinToken {
                    token: &token,
                    key: AGENT_KEY,
                },
                &format!("session-{i}"),
                &EnrollReport::default(),
                2,
            )
            .await
            .map_err(e)?;
        ids.push(id);
    }
    let enrolled = rate(nodes, started);
    let started = Instant::now();
    for j in 0..jobs {
        let id = format!("job-{j}");
        store
            .submit_job(&id, job(&cluster_of(j % nodes.max(1))), "bench", 3)
            .await
            .map_err(e)?;
    }
    let submitted = rate(jobs, started);
    // One pass: every node but the last ONE_BY_ONE gets a job, in one
    // transaction; then those, a transaction each.
    let batch = nodes.saturating_sub(ONE_BY_ONE);
    let placements: Vec<(String, Vec<String>)> = (0..batch)
        .map(|i| (format!("job-{i}"), vec![ids[i].clone()]))
        .collect();
    let started = Instant::now();
    let placed = store.assign_jobs(&placements, 4).await.map_err(e)?;
    let batched = rate(batch, started);
    if let Some(refused) = placed.iter().find_map(|r| r.as_ref().err()) {
        return Err(format!("a placement was refused: {refused}"));
    }
    let started = Instant::now();
    for (i, id) in ids.iter().enumerate().skip(batch) {
        store
            .assign_job(&format!("job-{i}"), std::slice::from_ref(id), 4)
            .await
            .map_err(e)?;
    }
    let one_by_one = rate(nodes - batch, started);
    // The placed jobs' reports, as the report writer stores them: every
    // job running, then every job ended.
    let started = Instant::now();
    for report in [
        AttemptReport::Running,
        AttemptReport::Ended(AttemptEnd::Exited(0), String::new()),
    ] {
        let reports: Vec<NodeReport> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| NodeReport {
                node_id: id.clone(),
                job_id: format!("job-{i}"),
                attempt: 1,
                report: report.clone(),
            })
            .collect();
        for batch in reports.chunks(REPORT_BATCH) {
            let outcomes = store.report_attempts(batch, 6).await.map_err(e)?;
            if let Some(wrong) = outcomes
                .iter()
                .find(|o| !matches!(o, Ok(ReportOutcome::Recorded | ReportOutcome::Release)))
            {
                return Err(format!("a report was not stored: {wrong:?}"));
            }
        }
    }
    let reported = rate(2 * nodes, started);
    // A heartbeat from every node, then the write of them all.
    let started = Instant::now();
    for id in &ids {
        let usage = NodeUsage {
            cpu_percent: 50.0,
            ..NodeUsage::default()
        };
        store.heartbeat(id, Some(usage), 5).await.map_err(e)?;
    }
    let beats_ms = started.elapsed().as_secs_f64() * 1000.0;
    let started = Instant::now();
    let written = store.persist_heartbeats().await.map_err(e)?;
    let persist_ms = started.elapsed().as_secs_f64() * 1000.0;
    if written != nodes {
        return Err(format!("{written} heartbeats written, not {nodes}"));
    }
    // What a reconcile pass reads of every node, and the courier.
    let started = Instant::now();
    for _ in 0..READS {
        let read = store.all_nodes().await.map_err(e)?;
        if read.len() != nodes {
            return Err(format!("{} nodes read, not {nodes}", read.len()));
        }
    }
    let read_ms = started.elapsed().as_secs_f64() * 1000.0 / READS as f64;
    let started = Instant::now();
    for _ in 0..READS {
        store.node_sessions().await.map_err(e)?;
    }
    let sessions_ms = started.elapsed().as_secs_f64() * 1000.0 / READS as f64;
    Ok(format!(
        "nodes={nodes} jobs={jobs} enrol/s={enrolled:.0} submit/s={submitted:.0} \
         placements/s(one transaction a pass)={batched:.0} \
         placements/s(one transaction a job)={one_by_one:.0} \
         reports/s(batches of {REPORT_BATCH})={reported:.0} \
         heartbeats-in-memory-ms={beats_ms:.1} heartbeats-write-ms={persist_ms:.1} \
         all-nodes-read-ms={read_ms:.1} node-sessions-read-ms={sessions_ms:.1}"
    ))
}
