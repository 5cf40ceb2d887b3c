//! Heartbeats with the node's utilisation, and the usage of this node's job
//! containers sampled for `/metrics`, both every heartbeat interval.

use std::sync::Arc;
use std::time::Duration;

use strato_proto::v1::{self, agent_message::Body as Up};
use strato_runtime::{Clock, ContainerRuntime, LABEL_CLUSTER, LABEL_NODE};
use tokio::sync::mpsc;

use super::up;
use crate::telemetry::{self, AgentHealth, ContainerSample, GpuSource};

/// Every `interval`, a heartbeat with the CPU, memory and GPU utilisation;
/// `health` keeps when the last one was sent.
pub(super) async fn heartbeats(
    tx: mpsc::Sender<v1::AgentMessage>,
    health: Arc<AgentHealth>,
    gpus: Arc<dyn GpuSource>,
    clock: Arc<dyn Clock>,
    interval: Duration,
) {
    let mut cpu = CpuMeter::default();
    loop {
        tokio::time::sleep(interval).await;
        let (total, available) = telemetry::memory();
        let samples = gpus.sample();
        let gpu_percent = if samples.is_empty() {
            0.0
        } else {
            samples
                .iter()
                .map(|g| f64::from(g.utilization))
                .sum::<f64>()
                / samples.len() as f64
        };
        let beat = v1::Heartbeat {
            cpu_percent: cpu.busy_percent(),
            memory_used_bytes: total.saturating_sub(available),
            memory_total_bytes: total,
            gpu_percent,
        };
        if tx.send(up(Up::Heartbeat(beat))).await.is_err() {
            return;
        }
        let now = clock.now_ms().div_euclid(1000);
        health
            .last_heartbeat
            .store(now, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Busy CPU between two readings of `/proc/stat`.
#[derive(Debug, Default)]
struct CpuMeter {
    last: Option<(f64, f64)>,
}

impl CpuMeter {
    fn busy_percent(&mut self) -> f64 {
        let (mut total, mut idle) = (0.0, 0.0);
        for (_, mode, seconds) in telemetry::cpu_seconds() {
            total += seconds;
            if mode == "idle" || mode == "iowait" {
                idle += seconds;
            }
        }
        let percent = match self.last {
            Some((t0, i0)) if total > t0 => (1.0 - (idle - i0) / (total - t0)) * 100.0,
            _ => 0.0,
        };
        self.last = Some((total, idle));
        percent.clamp(0.0, 100.0)
    }
}

/// Every telemetry interval (the heartbeat interval the control plane set),
/// the usage of this node's running job containers, for
/// `/metrics`.
pub(super) async fn sample_containers<R: ContainerRuntime>(
    runtime: Arc<R>,
    node_id: String,
    health: Arc<AgentHealth>,
    interval: Duration,
) {
    loop {
        let mut samples = Vec::new();
        if let Ok(containers) = runtime.list(LABEL_NODE, &node_id).await {
            for c in containers.iter().filter(|c| c.running) {
                let Some((job, attempt)) = c.attempt() else {
                    continue;
                };
                if let Ok(usage) = runtime.stats(&c.id).await {
                    samples.push(ContainerSample {
                        cluster: c.labels.get(LABEL_CLUSTER).cloned().unwrap_or_default(),
                        job: job.to_owned(),
                        attempt,
                        cpu_seconds: usage.cpu_seconds,
                        memory_bytes: usage.memory_bytes,
                        memory_limit_bytes: usage.memory_limit_bytes,
                    });
                }
            }
        }
        if let Ok(mut c) = health.containers.lock() {
            *c = samples;
        }
        tokio::time::sleep(interval).await;
    }
}
