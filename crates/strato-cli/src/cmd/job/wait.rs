//! `strato job wait`: follow a job to its end, through control-plane
//! restarts, and say how it ended.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use strato_proto::client::AuthedChannel;
use strato_proto::v1::{self, job_service_client::JobServiceClient};

use crate::Failure;
use crate::client::Retry;
use crate::view::job::{JobView, job_state};
use crate::view::{Format, print};

/// `job wait ID`: waits (polling and printing each state change when stderr
/// is a terminal), prints how the job ended and fails with exit 1 unless it
/// completed.
pub async fn run(
    client: &mut JobServiceClient<AuthedChannel>,
    format: Format,
    id: &str,
) -> Result<(), Failure> {
    let job = if std::io::stderr().is_terminal() {
        poll_until_final(client, id).await?
    } else {
        wait_job(client, id).await?
    };
    let view = JobView::from(job);
    let (code, summary) = wait_outcome(&view);
    if format == Format::Table {
        println!("{summary}");
    } else {
        print(format, &view)?;
    }
    if code != 0 {
        // The outcome is already printed: exit 1 without a message.
        return Err(Failure {
            code,
            message: String::new(),
        });
    }
    Ok(())
}

/// How `job wait` ends for a job in `view`'s state: its exit status and the
/// line it prints.
pub(super) fn wait_outcome(view: &JobView) -> (u8, String) {
    let id = &view.id;
    let state = view.state;
    if state == "completed" {
        return (0, format!("job {id} completed"));
    }
    let mut line = format!("job {id} {state}");
    if let Some(code) = view.exit_code {
        line.push_str(&format!(" (exit code {code})"));
    }
    if !view.reason.is_empty() {
        line.push_str(": ");
        crate::view::log::escape_controls(&view.reason, &mut line);
    }
    (1, line)
}

fn is_final(state: i32) -> bool {
    matches!(
        v1::JobState::try_from(state),
        Ok(v1::JobState::Completed | v1::JobState::Failed | v1::JobState::Canceled)
    )
}

/// What `job wait` prints on stderr when a job's state changes.
fn progress_line(job: &v1::Job) -> String {
    let mut line = job_state(job.state).to_owned();
    if !job.node_id.is_empty() {
        line.push_str(&format!(" on {}", job.node_id));
    }
    if job.attempt > 1 {
        line.push_str(&format!(" (attempt {})", job.attempt));
    }
    if job.state == v1::JobState::Preempted as i32 && !job.reason.is_empty() {
        line.push_str(": ");
        crate::view::log::escape_controls(&job.reason, &mut line);
    }
    line
}

const POLL_EVERY: Duration = Duration::from_millis(500);

/// Polls GetJob, printing each state change on stderr, until the job is final.
async fn poll_until_final(
    client: &mut JobServiceClient<AuthedChannel>,
    id: &str,
) -> Result<v1::Job, Failure> {
    let mut retry = Retry::default();
    let mut last = String::new();
    loop {
        let started = Instant::now();
        match client
            .get_job(v1::GetJobRequest { id: id.to_owned() })
            .await
        {
            Ok(response) => {
                retry.succeeded();
                let job = response.into_inner();
                if is_final(job.state) {
                    return Ok(job);
                }
                let line = progress_line(&job);
                if line != last {
                    eprintln!("{line}");
                    last = line;
                }
                tokio::time::sleep(POLL_EVERY).await;
            }
            Err(status) => retry.wait_or_give_up(status, started).await?,
        }
    }
}

/// Calls WaitJob until it answers, through control-plane restarts.
pub(super) async fn wait_job(
    client: &mut JobServiceClient<AuthedChannel>,
    id: &str,
) -> Result<v1::Job, Failure> {
    let mut retry = Retry::default();
    loop {
        let started = Instant::now();
        match client
            .wait_job(v1::WaitJobRequest { id: id.to_owned() })
            .await
        {
            Ok(response) => return Ok(response.into_inner()),
            Err(status) => retry.wait_or_give_up(status, started).await?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(state: v1::JobState, exit_code: Option<i32>, reason: &str) -> JobView {
        JobView::from(v1::Job {
            id: "j-1".into(),
            state: state as i32,
            exit_code,
            reason: reason.into(),
            ..Default::default()
        })
    }

    #[test]
    fn wait_exits_zero_only_when_completed() {
        assert_eq!(
            wait_outcome(&job(v1::JobState::Completed, Some(0), "exited 0")),
            (0, "job j-1 completed".into())
        );
        assert_eq!(
            wait_outcome(&job(v1::JobState::Failed, Some(3), "exited with 3")),
            (1, "job j-1 failed (exit code 3): exited with 3".into())
        );
        assert_eq!(
            wait_outcome(&job(v1::JobState::Failed, None, "image not found")),
            (1, "job j-1 failed: image not found".into())
        );
        assert_eq!(
            wait_outcome(&job(v1::JobState::Canceled, None, "")),
            (1, "job j-1 canceled".into())
        );
        // Not final (a server that answered early): not a success either.
        assert_eq!(wait_outcome(&job(v1::JobState::Running, None, "")).0, 1);
    }

    #[test]
    fn final_states() {
        use v1::JobState::*;
        for s in [Completed, Failed, Canceled] {
            assert!(is_final(s as i32), "{s:?}");
        }
        for s in [Unspecified, Queued, Preparing, Running, Preempted] {
            assert!(!is_final(s as i32), "{s:?}");
        }
    }

    #[test]
    fn progress_names_state_node_and_attempt() {
        let mut j = v1::Job {
            state: v1::JobState::Queued as i32,
            attempt: 1,
            ..Default::default()
        };
        assert_eq!(progress_line(&j), "queued");
        j.state = v1::JobState::Preparing as i32;
        j.node_id = "node-x".into();
        assert_eq!(progress_line(&j), "preparing on node-x");
        j.state = v1::JobState::Preempted as i32;
        j.attempt = 2;
        j.node_id.clear();
        j.reason = "node evicted".into();
        assert_eq!(progress_line(&j), "preempted (attempt 2): node evicted");
    }
}

/// `wait` against an in-process fake `JobService` on loopback: real gRPC,
/// real connection drops.
#[cfg(test)]
mod fake_server_tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use strato_proto::v1::job_service_server::{JobService, JobServiceServer};
    use tonic::codegen::tokio_stream;
    use tonic::{Request, Response, Status};

    use super::*;

    #[derive(Default)]
    struct Fake {
        /// WaitJob never answers (a control plane about to die).
        hang: bool,
        /// Told when a WaitJob call hangs.
        hung: std::sync::Arc<tokio::sync::Notify>,
        /// GetJob calls so far; each moves the job one state on.
        gets: AtomicU32,
    }

    fn job(state: v1::JobState) -> v1::Job {
        v1::Job {
            id: "j-1".into(),
            state: state as i32,
            attempt: 1,
            node_id: "node-x".into(),
            exit_code: (state == v1::JobState::Completed).then_some(0),
            ..Default::default()
        }
    }

    #[tonic::async_trait]
    impl JobService for Fake {
        async fn submit_job(
            &self,
            _: Request<v1::SubmitJobRequest>,
        ) -> Result<Response<v1::Job>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn get_job(
            &self,
            r: Request<v1::GetJobRequest>,
        ) -> Result<Response<v1::Job>, Status> {
            if r.get_ref().id != "j-1" {
                return Err(Status::not_found("no such job"));
            }
            let state = match self.gets.fetch_add(1, Ordering::SeqCst) {
                0 => v1::JobState::Queued,
                1 => v1::JobState::Running,
                _ => v1::JobState::Completed,
            };
            Ok(Response::new(job(state)))
        }
        async fn list_jobs(
            &self,
            _: Request<v1::ListJobsRequest>,
        ) -> Result<Response<v1::ListJobsResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn cancel_job(
            &self,
            _: Request<v1::CancelJobRequest>,
        ) -> Result<Response<v1::Job>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn delete_job(
            &self,
            _: Request<v1::DeleteJobRequest>,
        ) -> Result<Response<v1::DeleteJobResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }
        type StreamLogsStream = tokio_stream::Empty<Result<v1::LogLine, Status>>;
        async fn stream_logs(
            &self,
            _: Request<v1::StreamLogsRequest>,
        ) -> Result<Response<Self::StreamLogsStream>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn upload_code(
            &self,
            _: Request<tonic::Streaming<v1::CodeChunk>>,
        ) -> Result<Response<v1::CodeSnapshot>, Status> {
            Err(Status::unimplemented("fake"))
        }
        type DownloadOutputsStream = tokio_stream::Empty<Result<v1::OutputChunk, Status>>;
        async fn download_outputs(
            &self,
            _: Request<v1::DownloadOutputsRequest>,
        ) -> Result<Response<Self::DownloadOutputsStream>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn wait_job(
            &self,
            r: Request<v1::WaitJobRequest>,
        ) -> Result<Response<v1::Job>, Status> {
            if r.get_ref().id != "j-1" {
                return Err(Status::not_found("no such job"));
            }
            if self.hang {
                self.hung.notify_one();
                std::future::pending::<()>().await;
            }
            Ok(Response::new(job(v1::JobState::Completed)))
        }
    }

    /// Serves `fake` on `addr` in a runtime of its own, until the returned
    /// sender is dropped or fired; then the runtime is dropped, which closes
    /// the listener and every connection at once, like a killed process.
    fn serve(
        addr: std::net::SocketAddr,
        fake: Fake,
    ) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let (kill, killed) = tokio::sync::oneshot::channel::<()>();
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                // tokio sets SO_REUSEADDR, so a restart can take the port back.
                let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
                bound_tx
                    .send(listener.local_addr().expect("addr"))
                    .expect("send");
                let server = tonic::transport::Server::builder()
                    .add_service(JobServiceServer::new(fake))
                    .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
                tokio::select! {
                    _ = server => {}
                    _ = killed => {}
                }
            });
        });
        (bound_rx.recv().expect("bound"), kill)
    }

    fn loopback() -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], 0))
    }

    /// A `JobService` client connected to the fake at `addr`, in plaintext
    /// (under the https-only check of `client::connect`), without a token.
    async fn client(addr: std::net::SocketAddr) -> JobServiceClient<AuthedChannel> {
        let url = format!("http://{addr}");
        let endpoint = tonic::transport::Endpoint::from_shared(url.clone()).expect("a URL");
        let channel = crate::client::connect_channel(endpoint, &url)
            .await
            .expect("connects");
        JobServiceClient::new(strato_proto::client::authed(
            channel,
            strato_proto::client::Bearer::default(),
        ))
    }

    #[tokio::test]
    async fn wait_rides_out_a_control_plane_restart() {
        let hung = std::sync::Arc::new(tokio::sync::Notify::new());
        let (addr, kill) = serve(
            loopback(),
            Fake {
                hang: true,
                hung: hung.clone(),
                ..Default::default()
            },
        );
        let mut client = client(addr).await;
        let waiting = tokio::spawn(async move { wait_job(&mut client, "j-1").await });
        tokio::time::timeout(Duration::from_secs(20), hung.notified())
            .await
            .expect("the WaitJob call reached the control plane");
        // The control plane dies under the WaitJob call, and stays away for
        // an outage of 1.2 s (the length of the outage is the point: the
        // client retries through it)...
        drop(kill);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert!(!waiting.is_finished(), "gave up instead of retrying");
        // ...and comes back on the same port.
        let (_, _keep) = serve(addr, Fake::default());
        let job = tokio::time::timeout(Duration::from_secs(20), waiting)
            .await
            .expect("answered after the restart")
            .expect("joins")
            .expect("waits");
        assert_eq!(job.state, v1::JobState::Completed as i32);
    }

    /// Two replicas: the first dies under a WaitJob call and never comes
    /// back; the retries move to the second (`Failover`), and a refusal
    /// from the second (a gRPC status) does not move them back.
    #[tokio::test]
    async fn wait_goes_on_through_the_next_replica() {
        let hung = std::sync::Arc::new(tokio::sync::Notify::new());
        let (first, kill) = serve(
            loopback(),
            Fake {
                hang: true,
                hung: hung.clone(),
                ..Default::default()
            },
        );
        let (second, _keep) = serve(loopback(), Fake::default());
        let url = format!("http://{first}");
        let endpoint = tonic::transport::Endpoint::from_shared(url.clone()).expect("a URL");
        let connected = crate::client::connect_channel(endpoint, &url)
            .await
            .expect("connects");
        let lazy = tonic::transport::Endpoint::from_shared(format!("http://{second}"))
            .expect("a URL")
            .connect_lazy();
        let mut client = JobServiceClient::new(strato_proto::client::authed_failover(
            vec![connected, lazy],
            0,
            strato_proto::client::Bearer::default(),
        ));
        let waiting = {
            let mut client = client.clone();
            tokio::spawn(async move { wait_job(&mut client, "j-1").await })
        };
        tokio::time::timeout(Duration::from_secs(20), hung.notified())
            .await
            .expect("the WaitJob call reached the first replica");
        drop(kill);
        let job = tokio::time::timeout(Duration::from_secs(20), waiting)
            .await
            .expect("answered by the second replica")
            .expect("joins")
            .expect("waits");
        assert_eq!(job.state, v1::JobState::Completed as i32);
        let failure = wait_job(&mut client, "nope").await.expect_err("refused");
        assert_eq!(failure.message, "not found: no such job");
        let job = wait_job(&mut client, "j-1")
            .await
            .expect("still the second");
        assert_eq!(job.state, v1::JobState::Completed as i32);
    }

    #[tokio::test]
    async fn wait_does_not_retry_refusals() {
        let (addr, _keep) = serve(loopback(), Fake::default());
        let mut client = client(addr).await;
        let failure = wait_job(&mut client, "nope").await.expect_err("refused");
        assert_eq!(failure.code, 1);
        assert_eq!(failure.message, "not found: no such job");
    }

    #[tokio::test]
    async fn polling_follows_the_job_to_its_end() {
        let (addr, _keep) = serve(loopback(), Fake::default());
        let mut client = client(addr).await;
        let job = poll_until_final(&mut client, "j-1").await.expect("final");
        assert_eq!(job.state, v1::JobState::Completed as i32);
        let failure = poll_until_final(&mut client, "nope")
            .await
            .expect_err("refused");
        assert_eq!(failure.code, 1);
    }
}
