//! The exec relay: both ends of a gang's remote commands. The launcher's
//! request (`POST /strato/exec` beside the identity endpoint, with the
//! attempt's secret) goes up the session and its output comes back as
//! frames; another rank's request is run here with `docker exec`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures_util::StreamExt as _;
use strato_proto::v1::{self, agent_message::Body as Up};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::identity::Vending;
use strato_runtime::{ContainerRuntime, ExecEvent, OutputStream};

/// How long an exec waits for this rank's container to run.
const START_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

/// Frame kinds of the exec answer (see [`frame`]).
pub const FRAME_STDOUT: u8 = 1;
pub const FRAME_STDERR: u8 = 2;
/// Data: the exit code, 4 bytes big-endian.
pub const FRAME_EXIT: u8 = 3;
/// Data: why the command could not run (UTF-8); the launcher exits 255.
pub const FRAME_ERROR: u8 = 4;

/// One frame of the exec answer: kind, length (4 bytes big-endian), data.
pub fn frame(kind: u8, data: &[u8]) -> Bytes {
    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(5 + data.len());
    out.push(kind);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&data[..len as usize]);
    Bytes::from(out)
}

type Waiting = mpsc::Sender<Result<Bytes, Infallible>>;

/// The agent's side of the exec relay: execs this node asked for, waiting
/// for their output, and the way up to the control plane.
#[derive(Default)]
pub struct ExecRelay {
    vending: Arc<Vending>,
    up: Mutex<Option<mpsc::Sender<v1::AgentMessage>>>,
    waiting: Mutex<HashMap<String, Waiting>>,
}

impl ExecRelay {
    pub fn new(vending: Arc<Vending>) -> Self {
        ExecRelay {
            vending,
            ..ExecRelay::default()
        }
    }

    /// A session opened (`Some`) or closed (`None`); execs waiting on a
    /// closed session end with an error.
    pub fn connected(&self, up: Option<mpsc::Sender<v1::AgentMessage>>) {
        if let Ok(mut u) = self.up.lock() {
            *u = up.clone();
        }
        if up.is_none() {
            let waiting: Vec<Waiting> = self
                .waiting
                .lock()
                .map(|mut w| w.drain().map(|(_, tx)| tx).collect())
                .unwrap_or_default();
            for tx in waiting {
                let _ = tx.try_send(Ok(frame(
                    FRAME_ERROR,
                    b"the agent lost its session with the control plane",
                )));
            }
        }
    }

    /// Output of an exec this node asked for.
    pub fn output(&self, o: &v1::ExecOutput) {
        let tx = self
            .waiting
            .lock()
            .ok()
            .and_then(|w| w.get(&o.exec_id).cloned());
        if let Some(tx) = tx {
            let kind = if o.stream == v1::LogStream::Stderr as i32 {
                FRAME_STDERR
            } else {
                FRAME_STDOUT
            };
            // Back-pressure would stall the whole session: a launcher that
            // does not read loses output rather than the node its session.
            let _ = tx.try_send(Ok(frame(kind, &o.data)));
        }
    }

    /// The end of an exec this node asked for.
    pub fn exit(&self, x: &v1::ExecExit) {
        let tx = self
            .waiting
            .lock()
            .ok()
            .and_then(|mut w| w.remove(&x.exec_id));
        if let Some(tx) = tx {
            let f = if x.error.is_empty() {
                frame(FRAME_EXIT, &x.exit_code.to_be_bytes())
            } else {
                frame(FRAME_ERROR, x.error.as_bytes())
            };
            // The end must arrive even behind a full queue of output.
            tokio::spawn(async move {
                let _ = tx.send(Ok(f)).await;
            });
        }
    }
}

#[derive(Debug, serde::Deserialize)]
struct ExecRequest {
    host: String,
    command: String,
}

fn refuse(status: StatusCode, why: String) -> Response {
    // Never the secret: `why` names no header values.
    tracing::warn!(%status, %why, "exec request refused");
    (status, why).into_response()
}

/// `POST /strato/exec` from a launcher: `{"host": H, "command": C}` with the
/// attempt's secret in the `secret` header. Answers a stream of frames.
async fn exec_request(
    State(relay): State<Arc<ExecRelay>>,
    headers: HeaderMap,
    axum::Json(request): axum::Json<ExecRequest>,
) -> Response {
    let Some(secret) = headers.get("secret").and_then(|v| v.to_str().ok()) else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "the secret header is required (the attempt's MSI_SECRET)".into(),
        );
    };
    let Some(attempt) = relay.vending.attempt_for_secret(secret) else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "the secret is not a running attempt's".into(),
        );
    };
    let Some(gang) = relay.vending.gang_hosts(&attempt) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("job {} is not a multi-node job", attempt.job_id),
        );
    };
    let Some(rank) = gang.iter().position(|h| *h == request.host) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!(
                "{:?} is not a node of the gang ({})",
                request.host,
                gang.join(", ")
            ),
        );
    };
    let Some(up) = relay.up.lock().ok().and_then(|u| u.clone()) else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "no session with the control plane".into(),
        );
    };
    let exec_id = uuid::Uuid::new_v4().simple().to_string();
    let (tx, rx) = mpsc::channel(1024);
    if let Ok(mut w) = relay.waiting.lock() {
        w.insert(exec_id.clone(), tx);
    }
    let start = v1::AgentMessage {
        body: Some(Up::ExecStart(v1::ExecStart {
            exec_id: exec_id.clone(),
            job_id: attempt.job_id.clone(),
            attempt: attempt.attempt,
            rank: u32::try_from(rank).unwrap_or(u32::MAX),
            command: request.command,
        })),
    };
    if up.send(start).await.is_err() {
        if let Ok(mut w) = relay.waiting.lock() {
            w.remove(&exec_id);
        }
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "no session with the control plane".into(),
        );
    }
    tracing::info!(job = %attempt.job_id, attempt = attempt.attempt, rank, "exec sent to the gang");
    Response::new(Body::from_stream(ReceiverStream::new(rx)))
}

/// The exec route, served beside the identity endpoint.
pub fn routes(relay: Arc<ExecRelay>) -> Router {
    Router::new()
        .route("/strato/exec", post(exec_request))
        .with_state(relay)
}

/// Runs an exec the control plane relayed from another rank in this node's
/// container of the attempt, and sends its output and exit code up.
pub async fn run_exec<R: ContainerRuntime>(
    runtime: Arc<R>,
    container: String,
    x: v1::ExecStart,
    tx: mpsc::Sender<v1::AgentMessage>,
) {
    let up = |body| v1::AgentMessage { body: Some(body) };
    // Rank 0 may start before this rank's container does (an image check,
    // inputs to download): wait for it rather than fail the launch.
    let deadline = tokio::time::Instant::now() + START_WAIT;
    loop {
        let running = runtime
            .list(strato_runtime::LABEL_JOB, &x.job_id)
            .await
            .map(|cs| cs.iter().any(|c| c.running && c.name == container))
            .unwrap_or(false);
        if running {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            let exit = v1::ExecExit {
                exec_id: x.exec_id.clone(),
                exit_code: 255,
                error: format!(
                    "the container of rank {} did not run within {}s",
                    x.rank,
                    START_WAIT.as_secs()
                ),
            };
            let _ = tx.send(up(Up::ExecExit(exit))).await;
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let mut events = runtime.exec(&container, &x.command);
    let mut exit = v1::ExecExit {
        exec_id: x.exec_id.clone(),
        exit_code: 255,
        error: "the exec ended without an exit code".to_owned(),
    };
    while let Some(event) = events.next().await {
        match event {
            Ok(ExecEvent::Output(stream, data)) => {
                let output = v1::ExecOutput {
                    exec_id: x.exec_id.clone(),
                    stream: match stream {
                        OutputStream::Stdout => v1::LogStream::Stdout,
                        OutputStream::Stderr => v1::LogStream::Stderr,
                    } as i32,
                    data,
                };
                if tx.send(up(Up::ExecOutput(output))).await.is_err() {
                    return;
                }
            }
            Ok(ExecEvent::Exit(code)) => {
                exit.exit_code = i32::try_from(code).unwrap_or(255);
                exit.error.clear();
            }
            Err(e) => {
                exit.error = format!("exec in {container}: {e}");
            }
        }
    }
    tracing::info!(job = %x.job_id, attempt = x.attempt, exit_code = exit.exit_code, error = %exit.error, "exec for another rank ended");
    let _ = tx.send(up(Up::ExecExit(exit))).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_kind_length_and_data() {
        assert_eq!(
            &frame(FRAME_EXIT, &7i32.to_be_bytes())[..],
            [3, 0, 0, 0, 4, 0, 0, 0, 7]
        );
    }
}
