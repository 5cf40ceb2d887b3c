//! The control plane's `/metrics`, and the Prometheus file-based discovery
//! file listing the agents to scrape.

use std::collections::BTreeMap;
use std::sync::Mutex;

use strato_core::exposition::Exposition;
use strato_core::node::NodeState;
use strato_core::quota;

use crate::plane::Plane;
use crate::store::Store;

/// Counters kept in memory since the process started.
#[derive(Debug, Default)]
pub struct Counters {
    /// (cluster, direction, reason) -> events.
    scale: Mutex<BTreeMap<(String, &'static str, String), u64>>,
    /// result -> tokens.
    tokens: Mutex<BTreeMap<String, u64>>,
    pub grpc: std::sync::Arc<GrpcStats>,
    /// Reconcile passes that completed without an error.
    pub reconcile_passes: std::sync::atomic::AtomicU64,
}

impl Counters {
    pub fn scaled(&self, cluster: &str, direction: &'static str, reason: &str) {
        if let Ok(mut m) = self.scale.lock() {
            *m.entry((cluster.to_owned(), direction, reason.to_owned()))
                .or_default() += 1;
        }
    }

    pub fn token(&self, result: &str) {
        if let Ok(mut m) = self.tokens.lock() {
            *m.entry(result.to_owned()).or_default() += 1;
        }
    }
}

/// Renders the control plane's metrics from the store and the counters.
pub async fn render<S: Store>(plane: &Plane<S>) -> Result<String, crate::store::StoreError> {
    let mut e = Exposition::default();
    let clusters = plane.store.list_clusters().await?;
    // Counts only: a scrape never loads the nodes or jobs themselves.
    let node_counts = plane.store.node_counts().await?;
    let job_counts = plane.store.job_counts().await?;
    let nodes_in = |cluster: &str, state| counted(&node_counts, cluster, state);
    let count = |cluster: &str, state| counted(&job_counts, cluster, state);

    let mut by_state = Vec::new();
    let mut target = Vec::new();
    let mut current = Vec::new();
    let mut queued = Vec::new();
    let mut jobs_by_state = Vec::new();
    let mut resizing = Vec::new();
    for c in &clusters {
        let name = &c.spec.name;
        for state in NodeState::ALL {
            let n = nodes_in(name, state);
            by_state.push((
                vec![
                    ("cluster", name.clone()),
                    ("state", state.as_str().to_owned()),
                ],
                n as f64,
            ));
        }
        target.push((vec![("cluster", name.clone())], f64::from(c.target_nodes)));
        let live: u64 = NodeState::ALL
            .into_iter()
            .filter(|s| strato_core::scale::is_live(*s))
            .map(|s| nodes_in(name, s))
            .sum();
        current.push((vec![("cluster", name.clone())], live as f64));
        let q = count(name, strato_core::job::JobState::Queued);
        queued.push((vec![("cluster", name.clone())], q as f64));
        for state in strato_core::job::JobState::ALL {
            let n = count(name, state);
            jobs_by_state.push((
                vec![
                    ("cluster", name.clone()),
                    ("state", state.as_str().to_owned()),
                ],
                n as f64,
            ));
        }
        let since = if c.allocation_state == strato_core::node::AllocationState::Resizing {
            (plane.clock.now_ms() - c.allocation_since) as f64 / 1000.0
        } else {
            0.0
        };
        resizing.push((vec![("cluster", name.clone())], since));
    }
    e.family(
        "strato_cluster_nodes",
        "Nodes of a cluster, by state.",
        "gauge",
        by_state,
    );
    e.family(
        "strato_cluster_target_nodes",
        "The node count a cluster aims for.",
        "gauge",
        target,
    );
    e.family(
        "strato_cluster_current_nodes",
        "Nodes holding capacity (idle, preparing, running).",
        "gauge",
        current,
    );
    e.family(
        "strato_cluster_resizing_seconds",
        "Seconds a cluster has been resizing (0 when steady).",
        "gauge",
        resizing,
    );
    e.family(
        "strato_cluster_queued_jobs",
        "Jobs waiting for a node.",
        "gauge",
        queued,
    );
    e.family(
        "strato_jobs",
        "Jobs by cluster and state.",
        "gauge",
        jobs_by_state,
    );

    let scale = plane
        .counters
        .scale
        .lock()
        .map(|m| m.clone())
        .unwrap_or_default();
    e.family(
        "strato_scale_events_total",
        "Nodes added (up) and removed (down), by reason.",
        "counter",
        scale.into_iter().map(|((cluster, direction, reason), n)| {
            (
                vec![
                    ("cluster", cluster),
                    ("direction", direction.to_owned()),
                    ("reason", reason),
                ],
                n as f64,
            )
        }),
    );
    let tokens = plane
        .counters
        .tokens
        .lock()
        .map(|m| m.clone())
        .unwrap_or_default();
    e.family(
        "strato_tokens_issued_total",
        "Token requests from agents, by result.",
        "counter",
        tokens
            .into_iter()
            .map(|(result, n)| (vec![("result", result)], n as f64)),
    );

    e.family(
        "strato_agent_sessions",
        "Agents with an open session stream.",
        "gauge",
        [(Vec::<(&str, String)>::new(), plane.sessions.count() as f64)],
    );
    e.family(
        "strato_reconcile_passes_total",
        "Passes of the reconcile loop over every cluster that completed without an error.",
        "counter",
        [(
            Vec::<(&str, String)>::new(),
            plane
                .counters
                .reconcile_passes
                .load(std::sync::atomic::Ordering::Relaxed) as f64,
        )],
    );
    plane.counters.grpc.render(&mut e);

    // Quota per location in use.
    let mut used = Vec::new();
    let mut limit = Vec::new();
    let mut locations: Vec<String> = clusters.iter().map(|c| c.spec.location.clone()).collect();
    locations.push(plane.settings.config.region.clone());
    locations.sort();
    locations.dedup();
    for location in locations {
        let usage = plane.store.usage(&location).await?;
        for line in quota::report(
            plane.settings.quota.region(&location),
            &usage,
            &plane.settings.catalog,
        ) {
            let labels = vec![
                ("location", location.clone()),
                ("quota", line.name.clone()),
                ("unit", line.unit.to_owned()),
            ];
            used.push((labels.clone(), line.current as f64));
            limit.push((labels, line.limit as f64));
        }
    }
    e.family(
        "strato_quota_used",
        "Quota in use (vCPUs, or clusters).",
        "gauge",
        used,
    );
    e.family(
        "strato_quota_limit",
        "Quota limit (vCPUs, or clusters).",
        "gauge",
        limit,
    );
    Ok(e.finish())
}

/// Of (cluster, state, count) rows, the count of `cluster` (its name in any
/// case, as the store compares them) in `state`.
fn counted<S: PartialEq>(counts: &[(String, S, u64)], cluster: &str, state: S) -> u64 {
    counts
        .iter()
        .filter(|(c, s, _)| c.eq_ignore_ascii_case(cluster) && *s == state)
        .map(|(_, _, n)| *n)
        .sum()
}

/// The Prometheus file-based discovery document for the agents: each
/// node's `HOST:PORT` with its scheme (`https` where the agent serves TLS,
/// with its serving certificate of the node serving CA).
pub fn agent_targets(nodes: &[crate::store::NodeRecord]) -> String {
    let groups: Vec<serde_json::Value> = nodes
        .iter()
        .filter_map(|n| {
            // Only host:port/metrics: an agent cannot point Prometheus
            // anywhere else.
            let endpoint =
                strato_core::certificate::metrics_endpoint("metrics_url", &n.metrics_url).ok()?;
            Some(serde_json::json!({
                "targets": [endpoint.target],
                "labels": {
                    "cluster": n.cluster,
                    "node": n.node_id,
                    "__scheme__": endpoint.scheme(),
                    "__metrics_path__": "/metrics",
                },
            }))
        })
        .collect();
    serde_json::to_string_pretty(&groups).unwrap_or_else(|_| "[]".to_owned())
}

/// Upper bounds of the gRPC latency histogram, in seconds.
pub const LATENCY_BOUNDS: [f64; 10] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// Latencies of one (method, code): bucket counts, sum of seconds, count.
type Latencies = (Vec<u64>, f64, u64);

/// gRPC requests by method and status code, with latencies.
#[derive(Debug, Default)]
pub struct GrpcStats {
    requests: Mutex<BTreeMap<(String, String), Latencies>>,
}

impl GrpcStats {
    pub fn record(&self, method: &str, code: &str, seconds: f64) {
        if let Ok(mut m) = self.requests.lock() {
            let entry = m
                .entry((method.to_owned(), code.to_owned()))
                .or_insert_with(|| (vec![0; LATENCY_BOUNDS.len()], 0.0, 0));
            for (bound, n) in LATENCY_BOUNDS.iter().zip(entry.0.iter_mut()) {
                if seconds <= *bound {
                    *n += 1;
                }
            }
            entry.1 += seconds;
            entry.2 += 1;
        }
    }

    fn render(&self, e: &mut Exposition) {
        let requests = self.requests.lock().map(|m| m.clone()).unwrap_or_default();
        e.family(
            "strato_grpc_requests_total",
            "gRPC requests handled, by method and status code.",
            "counter",
            requests.iter().map(|((method, code), (_, _, n))| {
                (
                    vec![("method", method.clone()), ("code", code.clone())],
                    *n as f64,
                )
            }),
        );
        e.histogram(
            "strato_grpc_request_duration_seconds",
            "Time to answer gRPC requests (to the response headers for streams).",
            &LATENCY_BOUNDS,
            requests
                .into_iter()
                .map(|((method, code), (buckets, sum, n))| {
                    (vec![("method", method), ("code", code)], buckets, sum, n)
                }),
        );
    }
}

/// A tower layer that records every gRPC request in `GrpcStats`.
#[derive(Clone, Debug)]
pub struct GrpcMetricsLayer {
    pub stats: std::sync::Arc<GrpcStats>,
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics {
            inner,
            stats: self.stats.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct GrpcMetrics<S> {
    inner: S,
    stats: std::sync::Arc<GrpcStats>,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B, R> tower::Service<tonic::codegen::http::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<
            tonic::codegen::http::Request<B>,
            Response = tonic::codegen::http::Response<R>,
        >,
    S::Future: Send + 'static,
    S::Error: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: tonic::codegen::http::Request<B>) -> Self::Future {
        // Only served services' methods become labels: anyone can send any
        // path, and labels must stay bounded.
        let path = request.uri().path();
        let method = if ["/strato.v1.", "/grpc.health.", "/grpc.reflection."]
            .iter()
            .any(|p| path.starts_with(p))
            && path.len() <= 128
        {
            path.to_owned()
        } else {
            "unknown".to_owned()
        };
        let started = std::time::Instant::now();
        let stats = self.stats.clone();
        let fut = self.inner.call(request);
        Box::pin(async move {
            let result = fut.await;
            // Errors come as trailers-only responses with the status in the
            // headers; a success's status follows in the trailers.
            let code = match &result {
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or_else(
                        || "Ok".to_owned(),
                        |c| format!("{:?}", tonic::Code::from(c)),
                    ),
                Err(_) => "Unknown".to_owned(),
            };
            stats.record(&method, &code, started.elapsed().as_secs_f64());
            result
        })
    }
}
