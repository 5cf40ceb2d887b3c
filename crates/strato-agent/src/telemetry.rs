//! The agent's telemetry: host metrics with node_exporter's names and units,
//! GPU metrics with dcgm-exporter's names and labels, per-job container
//! metrics and the agent's own health, rendered for `/metrics`; and the
//! utilisation summary that heartbeats carry.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use strato_core::exposition::{Exposition, Labels};

/// One GPU's sample, in dcgm-exporter's units.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuSample {
    pub index: u32,
    pub uuid: String,
    pub model: String,
    /// Percent.
    pub utilization: u32,
    /// Percent.
    pub memory_copy_utilization: u32,
    /// MiB.
    pub framebuffer_used: u64,
    /// MiB.
    pub framebuffer_free: u64,
    /// Celsius.
    pub temperature: u32,
    /// Watts.
    pub power: f64,
    /// Millijoules since the driver loaded.
    pub total_energy: u64,
    /// MHz.
    pub sm_clock: u32,
    /// MHz.
    pub memory_clock: u32,
    /// XID errors seen, by XID code.
    pub xid_errors: Vec<(u64, u64)>,
    /// Why the GPU cannot be used; `None` when it is healthy.
    pub problem: Option<String>,
}

impl GpuSample {
    /// What the agent reports of the GPU at enrolment.
    pub fn info(&self) -> strato_proto::v1::GpuInfo {
        strato_proto::v1::GpuInfo {
            index: self.index,
            uuid: self.uuid.clone(),
            model: self.model.clone(),
            memory_mib: self.framebuffer_used + self.framebuffer_free,
            problem: self.problem.clone().unwrap_or_default(),
        }
    }
}

/// Where GPU samples come from: NVML where an NVIDIA driver is installed, or
/// a fake in tests.
pub trait GpuSource: Send + Sync + 'static {
    fn sample(&self) -> Vec<GpuSample>;
}

/// No GPUs: no NVIDIA library on this machine.
#[derive(Debug, Default)]
pub struct NoGpus;

impl GpuSource for NoGpus {
    fn sample(&self) -> Vec<GpuSample> {
        Vec::new()
    }
}

/// A fake GPU source for tests on machines without GPUs; never part of the
/// agent binary.
#[cfg(any(test, feature = "fake-gpu"))]
#[derive(Debug, Default)]
pub struct FakeGpus(pub Vec<GpuSample>);

#[cfg(any(test, feature = "fake-gpu"))]
impl GpuSource for FakeGpus {
    fn sample(&self) -> Vec<GpuSample> {
        self.0.clone()
    }
}

/// XID errors counted so far: by GPU index and XID code.
type XidCounts = Arc<Mutex<std::collections::BTreeMap<(u32, u64), u64>>>;

/// NVML, loaded at run time through nvml-wrapper.
pub struct NvmlGpus {
    nvml: nvml_wrapper::Nvml,
    /// Filled by one thread per GPU waiting on NVML's critical-XID events.
    xids: XidCounts,
}

impl NvmlGpus {
    /// The real GPUs, or `NoGpus` with one log line when the NVIDIA library
    /// cannot be loaded (a machine without GPUs).
    pub fn detect() -> Box<dyn GpuSource> {
        match nvml_wrapper::Nvml::init() {
            Ok(nvml) => {
                let count = nvml.device_count().unwrap_or(0);
                tracing::info!(gpus = count, "NVML loaded");
                let xids = XidCounts::default();
                for index in 0..count {
                    let xids = xids.clone();
                    let spawned = std::thread::Builder::new()
                        .name(format!("xid-gpu{index}"))
                        .spawn(move || watch_xids(index, &xids));
                    if let Err(e) = spawned {
                        tracing::warn!(gpu = index, error = %e, "cannot watch XID errors");
                    }
                }
                Box::new(NvmlGpus { nvml, xids })
            }
            Err(e) => {
                tracing::info!(reason = %e, "no NVIDIA library: this node reports zero GPUs");
                Box::new(NoGpus)
            }
        }
    }
}

impl GpuSource for NvmlGpus {
    fn sample(&self) -> Vec<GpuSample> {
        use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
        let count = self.nvml.device_count().unwrap_or(0);
        (0..count)
            .filter_map(|i| {
                let d = self.nvml.device_by_index(i).ok()?;
                let util = d.utilization_rates().ok();
                let mem = d.memory_info();
                // Unhealthy: NVML cannot read its memory (a GPU fallen off
                // the bus answers nothing), or ECC errors left memory pages
                // waiting for retirement until the GPU is reset.
                let problem = match (&mem, d.are_pages_pending_retired()) {
                    (Err(e), _) => Some(format!("NVML cannot read its memory: {e}")),
                    (_, Ok(true)) => {
                        Some("memory pages are pending retirement (reset the GPU)".to_owned())
                    }
                    _ => None,
                };
                let mem = mem.ok();
                Some(GpuSample {
                    index: i,
                    uuid: d.uuid().unwrap_or_default(),
                    model: d.name().unwrap_or_default(),
                    utilization: util.as_ref().map_or(0, |u| u.gpu),
                    memory_copy_utilization: util.as_ref().map_or(0, |u| u.memory),
                    framebuffer_used: mem.as_ref().map_or(0, |m| m.used / (1 << 20)),
                    framebuffer_free: mem.as_ref().map_or(0, |m| m.free / (1 << 20)),
                    temperature: d.temperature(TemperatureSensor::Gpu).unwrap_or(0),
                    // NVML reports milliwatts.
                    power: f64::from(d.power_usage().unwrap_or(0)) / 1000.0,
                    total_energy: d.total_energy_consumption().unwrap_or(0),
                    sm_clock: d.clock_info(Clock::SM).unwrap_or(0),
                    memory_clock: d.clock_info(Clock::Memory).unwrap_or(0),
                    xid_errors: self
                        .xids
                        .lock()
                        .map(|counts| {
                            counts
                                .iter()
                                .filter(|((gpu, _), _)| *gpu == i)
                                .map(|((_, code), n)| (*code, *n))
                                .collect()
                        })
                        .unwrap_or_default(),
                    problem,
                })
            })
            .collect()
    }
}

/// Counts GPU `index`'s critical XID errors from NVML's event set, for as
/// long as the agent runs (a wait of five seconds at a time). A GPU whose
/// events NVML does not offer (some virtual GPUs) is left alone, once said.
fn watch_xids(index: u32, xids: &XidCounts) {
    use nvml_wrapper::bitmasks::event::EventTypes;
    use nvml_wrapper::enums::event::XidError;
    use nvml_wrapper::error::NvmlError;
    let watched = nvml_wrapper::Nvml::init().and_then(|nvml| -> Result<(), NvmlError> {
        let device = nvml.device_by_index(index)?;
        let set = nvml.create_event_set()?;
        let set = device
            .register_events(EventTypes::CRITICAL_XID_ERROR, set)
            .map_err(|e| e.error)?;
        // The set borrows NVML for as long as it is waited on.
        loop {
            match set.wait(5_000) {
                Ok(event) => {
                    if let Some(XidError::Value(code)) = event.event_data {
                        tracing::warn!(gpu = index, xid = code, "GPU XID error");
                        if let Ok(mut counts) = xids.lock() {
                            *counts.entry((index, code)).or_default() += 1;
                        }
                    }
                }
                Err(NvmlError::Timeout) => {}
                Err(e) => return Err(e),
            }
        }
    });
    if let Err(e) = watched {
        tracing::info!(gpu = index, reason = %e, "no XID events from NVML for this GPU");
    }
}

/// One job container's usage.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSample {
    pub cluster: String,
    pub job: String,
    pub attempt: u32,
    pub cpu_seconds: f64,
    pub memory_bytes: u64,
    /// 0 when the container has no memory limit.
    pub memory_limit_bytes: u64,
}

/// The agent's own state, kept up to date by the session and the container
/// sampler.
#[derive(Debug, Default)]
pub struct AgentHealth {
    pub connected: AtomicBool,
    /// Unix seconds of the last heartbeat sent; 0 before the first.
    pub last_heartbeat: AtomicI64,
    pub containers: Mutex<Vec<ContainerSample>>,
}

/// `/proc/stat`'s CPU times in seconds, per cpu and mode.
pub fn cpu_seconds() -> Vec<(String, &'static str, f64)> {
    const MODES: [&str; 8] = [
        "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
    ];
    // USER_HZ is 100 on the Linux architectures Strato runs on.
    const TICKS: f64 = 100.0;
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let mut out = Vec::new();
    for line in stat.lines() {
        let mut fields = line.split_whitespace();
        let Some(cpu) = fields
            .next()
            .and_then(|n| n.strip_prefix("cpu"))
            .filter(|n| !n.is_empty())
        else {
            continue;
        };
        for (mode, value) in MODES.iter().zip(fields) {
            if let Ok(ticks) = value.parse::<f64>() {
                out.push((cpu.to_owned(), *mode, ticks / TICKS));
            }
        }
    }
    out
}

/// Total memory and available memory, in bytes.
pub fn memory() -> (u64, u64) {
    match sysinfo::System::new() {
        Ok(mut s) => {
            s.refresh_memory();
            (s.total_memory(), s.available_memory())
        }
        Err(_) => (0, 0),
    }
}

/// Renders every metric now, in Prometheus text format; ages are read on
/// `clock`.
pub fn render(
    hostname: &str,
    work_dir: &std::path::Path,
    gpus: &dyn GpuSource,
    health: &AgentHealth,
    clock: &dyn strato_runtime::Clock,
) -> String {
    let mut e = Exposition::default();
    let l = |pairs: &[(&'static str, String)]| -> Labels<'static> { pairs.to_vec() };

    e.family(
        "node_cpu_seconds_total",
        "Seconds the CPUs spent in each mode.",
        "counter",
        cpu_seconds()
            .into_iter()
            .map(|(cpu, mode, s)| (l(&[("cpu", cpu), ("mode", mode.to_owned())]), s)),
    );
    let (total, available) = memory();
    e.single(
        "node_memory_MemTotal_bytes",
        "Memory information field MemTotal_bytes.",
        "gauge",
        total as f64,
    );
    e.single(
        "node_memory_MemAvailable_bytes",
        "Memory information field MemAvailable_bytes.",
        "gauge",
        available as f64,
    );

    // The filesystem holding the work directory (the data disk).
    let work = std::fs::canonicalize(work_dir).unwrap_or_else(|_| work_dir.to_owned());
    let disks = sysinfo::Disks::new_with_refreshed_list().ok();
    let disk = disks
        .iter()
        .flat_map(|d| d.iter())
        .filter(|d| work.starts_with(d.mount_point()))
        .max_by_key(|d| d.mount_point().as_os_str().len());
    if let Some(d) = disk {
        let labels = l(&[
            ("device", d.name().to_string_lossy().into_owned()),
            ("fstype", d.file_system().to_string_lossy().into_owned()),
            ("mountpoint", d.mount_point().display().to_string()),
        ]);
        e.family(
            "node_filesystem_size_bytes",
            "Filesystem size in bytes.",
            "gauge",
            [(labels.clone(), d.total_space() as f64)],
        );
        e.family(
            "node_filesystem_avail_bytes",
            "Filesystem space available to non-root users in bytes.",
            "gauge",
            [(labels, d.available_space() as f64)],
        );
    }
    let networks = sysinfo::Networks::new_with_refreshed_list().ok();
    let nets: Vec<(String, u64, u64)> = networks
        .iter()
        .flat_map(|n| n.iter())
        .map(|(name, data)| {
            (
                name.to_string_lossy().into_owned(),
                data.total_received(),
                data.total_transmitted(),
            )
        })
        .collect();
    e.family(
        "node_network_receive_bytes_total",
        "Network device statistic receive_bytes.",
        "counter",
        nets.iter()
            .map(|(n, rx, _)| (l(&[("device", n.clone())]), *rx as f64)),
    );
    e.family(
        "node_network_transmit_bytes_total",
        "Network device statistic transmit_bytes.",
        "counter",
        nets.iter()
            .map(|(n, _, tx)| (l(&[("device", n.clone())]), *tx as f64)),
    );

    // GPUs, with dcgm-exporter's names and labels.
    let samples = gpus.sample();
    let gpu_labels = |g: &GpuSample| {
        l(&[
            ("gpu", g.index.to_string()),
            ("UUID", g.uuid.clone()),
            ("modelName", g.model.clone()),
            ("Hostname", hostname.to_owned()),
        ])
    };
    type Field = fn(&GpuSample) -> f64;
    let gauges: [(&str, &str, Field); 9] = [
        ("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", |g| {
            f64::from(g.utilization)
        }),
        (
            "DCGM_FI_DEV_MEM_COPY_UTIL",
            "Memory utilization (in %).",
            |g| f64::from(g.memory_copy_utilization),
        ),
        (
            "DCGM_FI_DEV_FB_USED",
            "Framebuffer memory used (in MiB).",
            |g| g.framebuffer_used as f64,
        ),
        (
            "DCGM_FI_DEV_FB_FREE",
            "Framebuffer memory free (in MiB).",
            |g| g.framebuffer_free as f64,
        ),
        ("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).", |g| {
            f64::from(g.temperature)
        }),
        ("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", |g| g.power),
        (
            "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
            "Total energy consumption since boot (in mJ).",
            |g| g.total_energy as f64,
        ),
        (
            "DCGM_FI_DEV_SM_CLOCK",
            "SM clock frequency (in MHz).",
            |g| f64::from(g.sm_clock),
        ),
        (
            "DCGM_FI_DEV_MEM_CLOCK",
            "Memory clock frequency (in MHz).",
            |g| f64::from(g.memory_clock),
        ),
    ];
    for (name, help, value) in gauges {
        e.family(
            name,
            help,
            "gauge",
            samples.iter().map(|g| (gpu_labels(g), value(g))),
        );
    }
    e.family(
        "strato_gpu_xid_errors_total",
        "XID errors seen since the agent started, per XID code (a counter, unlike DCGM_FI_DEV_XID_ERRORS).",
        "counter",
        samples.iter().flat_map(|g| {
            g.xid_errors.iter().map(move |(code, n)| {
                let mut labels = gpu_labels(g);
                labels.push(("xid", code.to_string()));
                (labels, *n as f64)
            })
        }),
    );

    // Job containers.
    let containers = health
        .containers
        .lock()
        .map(|c| c.clone())
        .unwrap_or_default();
    let job_labels = |c: &ContainerSample| {
        l(&[
            ("cluster", c.cluster.clone()),
            ("job_id", c.job.clone()),
            ("attempt", c.attempt.to_string()),
        ])
    };
    e.family(
        "strato_job_cpu_seconds_total",
        "CPU time a job's container used.",
        "counter",
        containers.iter().map(|c| (job_labels(c), c.cpu_seconds)),
    );
    e.family(
        "strato_job_memory_usage_bytes",
        "Memory a job's container uses.",
        "gauge",
        containers
            .iter()
            .map(|c| (job_labels(c), c.memory_bytes as f64)),
    );
    e.family(
        "strato_job_memory_limit_bytes",
        "Memory limit of a job's container (0 for none).",
        "gauge",
        containers
            .iter()
            .map(|c| (job_labels(c), c.memory_limit_bytes as f64)),
    );

    // The agent itself.
    e.single(
        "strato_agent_session_connected",
        "1 while the session with the control plane is open.",
        "gauge",
        if health.connected.load(Ordering::Relaxed) {
            1.0
        } else {
            0.0
        },
    );
    let last = health.last_heartbeat.load(Ordering::Relaxed);
    if last > 0 {
        let now = clock.now_ms() as f64 / 1000.0;
        e.single(
            "strato_agent_last_heartbeat_age_seconds",
            "Seconds since the last heartbeat was sent.",
            "gauge",
            (now - last as f64).max(0.0),
        );
    }
    e.single(
        "strato_agent_running_containers",
        "Job containers running on this node.",
        "gauge",
        containers.len() as f64,
    );
    e.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use strato_runtime::{ManualClock, SystemClock};

    fn gpu() -> GpuSample {
        GpuSample {
            index: 0,
            uuid: "GPU-0000".into(),
            model: "NVIDIA H100 80GB HBM3".into(),
            utilization: 87,
            memory_copy_utilization: 40,
            framebuffer_used: 1000,
            framebuffer_free: 80000,
            temperature: 61,
            power: 350.5,
            total_energy: 123_456,
            sm_clock: 1980,
            memory_clock: 2619,
            xid_errors: vec![(79, 2)],
            problem: None,
        }
    }

    #[test]
    fn enrolment_reports_each_gpu_with_its_memory_and_health() {
        let mut sick = gpu();
        sick.problem = Some("memory pages are pending retirement (reset the GPU)".into());
        let info = sick.info();
        assert_eq!(
            (info.index, info.uuid.as_str(), info.memory_mib),
            (0, "GPU-0000", 81000)
        );
        assert!(info.model.contains("H100"));
        assert!(info.problem.contains("pending retirement"));
        assert!(gpu().info().problem.is_empty());
    }

    fn health() -> AgentHealth {
        let health = AgentHealth::default();
        if let Ok(mut c) = health.containers.lock() {
            c.push(ContainerSample {
                cluster: "cpu".into(),
                job: "job-1".into(),
                attempt: 1,
                cpu_seconds: 1.5,
                memory_bytes: 1 << 20,
                memory_limit_bytes: 1 << 30,
            });
        }
        health
    }

    #[test]
    fn host_metrics_have_node_exporter_names_and_no_gpu_series_without_gpus() {
        let text = render(
            "node-a",
            std::path::Path::new("/"),
            &NoGpus,
            &health(),
            &SystemClock,
        );
        for name in [
            "node_cpu_seconds_total{cpu=\"0\",mode=\"user\"}",
            "node_memory_MemTotal_bytes ",
            "node_memory_MemAvailable_bytes ",
            "node_filesystem_avail_bytes{",
            "node_network_receive_bytes_total{",
            "strato_job_memory_usage_bytes{cluster=\"cpu\",job_id=\"job-1\",attempt=\"1\"} 1048576",
            "strato_agent_session_connected 0",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
        assert!(!text.contains("DCGM_"), "no GPU series without GPUs");
    }

    #[test]
    fn fake_gpus_give_dcgm_names_and_labels() {
        let text = render(
            "node-a",
            std::path::Path::new("/"),
            &FakeGpus(vec![gpu()]),
            &AgentHealth::default(),
            &SystemClock,
        );
        let labels =
            r#"gpu="0",UUID="GPU-0000",modelName="NVIDIA H100 80GB HBM3",Hostname="node-a""#;
        for line in [
            format!("DCGM_FI_DEV_GPU_UTIL{{{labels}}} 87"),
            format!("DCGM_FI_DEV_POWER_USAGE{{{labels}}} 350.5"),
            format!("DCGM_FI_DEV_FB_FREE{{{labels}}} 80000"),
            format!("strato_gpu_xid_errors_total{{{labels},xid=\"79\"}} 2"),
        ] {
            assert!(text.contains(&line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn the_heartbeat_age_is_read_on_the_clock() {
        let health = AgentHealth::default();
        let at = |clock: &ManualClock| {
            render("node-a", std::path::Path::new("/"), &NoGpus, &health, clock)
        };
        let clock = ManualClock::starting_at(130_000);
        assert!(
            !at(&clock).contains("strato_agent_last_heartbeat_age_seconds"),
            "no age before the first heartbeat"
        );
        health.last_heartbeat.store(100, Ordering::Relaxed);
        assert!(at(&clock).contains("strato_agent_last_heartbeat_age_seconds 30\n"));
        clock.advance(std::time::Duration::from_millis(2_500));
        assert!(at(&clock).contains("strato_agent_last_heartbeat_age_seconds 32.5\n"));
    }

    /// What `promtool check metrics` says of a metrics text.
    fn promtool(text: &str) -> String {
        use std::io::Write as _;
        let mut child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect(
                "promtool is missing: run `cargo xtask setup` (it installs Debian's prometheus)",
            );
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write");
        let out = child.wait_with_output().expect("promtool");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// promtool's only remarks are on the names that existing dashboards need
    /// verbatim: node_exporter's `MemTotal`/`MemAvailable` and
    /// dcgm-exporter's `UUID`, `modelName`, `Hostname` labels (the real
    /// exporters draw the same remarks).
    #[test]
    fn promtool_finds_nothing_but_the_compatible_names() {
        let text = render(
            "node-a",
            std::path::Path::new("/"),
            &FakeGpus(vec![gpu()]),
            &health(),
            &SystemClock,
        );
        for remark in promtool(&text).lines().filter(|l| !l.trim().is_empty()) {
            let compatible = remark.starts_with("node_memory_Mem")
                && remark
                    .ends_with("metric names should be written in 'snake_case' not 'camelCase'")
                || (remark.starts_with("DCGM_FI_DEV_")
                    || remark.starts_with("strato_gpu_xid_errors_total"))
                    && remark
                        .ends_with("label names should be written in 'snake_case' not 'camelCase'");
            assert!(compatible, "promtool: {remark}\n{text}");
        }
    }
}
