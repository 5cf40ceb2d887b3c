//! `JobService` over `app::Jobs`.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::{Stream, StreamExt as _};
use strato_core::FieldError;
use strato_proto::v1::{self, job_service_server::JobService};
use tonic::{Request, Response, Status};

use super::auth;
use super::{convert, respond, status};
use crate::app::Jobs;
use crate::plane::Plane;
use crate::store::Store;

pub struct JobApi<S> {
    app: Jobs<S>,
}

impl<S: Store> JobApi<S> {
    pub fn new(plane: Arc<Plane<S>>) -> Self {
        JobApi {
            app: Jobs::new(plane),
        }
    }
}

type LogStreamBox = Pin<Box<dyn Stream<Item = Result<v1::LogLine, Status>> + Send>>;
type OutputStreamBox = Pin<Box<dyn Stream<Item = Result<v1::OutputChunk, Status>> + Send>>;

#[tonic::async_trait]
impl<S: Store> JobService for JobApi<S> {
    async fn submit_job(
        &self,
        request: Request<v1::SubmitJobRequest>,
    ) -> Result<Response<v1::Job>, Status> {
        let caller = auth::caller(&request)?;
        let wire = request
            .into_inner()
            .spec
            .ok_or_else(|| status(FieldError::new("spec", "is required").into()))?;
        let req = strato_proto::convert::job_request(wire).map_err(|e| status(e.into()))?;
        let job = self.app.submit_job(&caller, req).await;
        respond(job, |j| convert::job(&j))
    }

    async fn get_job(
        &self,
        request: Request<v1::GetJobRequest>,
    ) -> Result<Response<v1::Job>, Status> {
        let caller = auth::caller(&request)?;
        let id = request.into_inner().id;
        respond(self.app.get_job(&caller, &id).await, |j| convert::job(&j))
    }

    async fn list_jobs(
        &self,
        request: Request<v1::ListJobsRequest>,
    ) -> Result<Response<v1::ListJobsResponse>, Status> {
        let caller = auth::caller(&request)?;
        use prost::Message as _;
        let r = request.into_inner();
        let mut page =
            convert::job_page(r.page_size, &r.page_token).map_err(|e| status(e.into()))?;
        let cluster = (!r.cluster.is_empty()).then_some(r.cluster.as_str());
        loop {
            let (jobs, next) = self
                .app
                .list_jobs(&caller, cluster, page)
                .await
                .map_err(status)?;
            let wire: Vec<v1::Job> = jobs.iter().map(convert::job).collect();
            // A page is also bounded in bytes: large jobs make it shorter,
            // never a message the client refuses (at least one job each).
            let sizes: Vec<usize> = wire.iter().map(|j| j.encoded_len() + 8).collect();
            let fits =
                strato_core::limits::batch_lengths(&sizes, usize::MAX, convert::MAX_JOB_PAGE_BYTES)
                    .first()
                    .copied()
                    .unwrap_or(0);
            if fits < wire.len() {
                page.limit = u32::try_from(fits).unwrap_or(1);
                continue;
            }
            return Ok(Response::new(v1::ListJobsResponse {
                jobs: wire,
                next_page_token: next.map(convert::job_page_token).unwrap_or_default(),
            }));
        }
    }

    async fn cancel_job(
        &self,
        request: Request<v1::CancelJobRequest>,
    ) -> Result<Response<v1::Job>, Status> {
        let caller = auth::caller(&request)?;
        let id = request.into_inner().id;
        respond(self.app.cancel_job(&caller, &id).await, |j| {
            convert::job(&j)
        })
    }

    async fn delete_job(
        &self,
        request: Request<v1::DeleteJobRequest>,
    ) -> Result<Response<v1::DeleteJobResponse>, Status> {
        let caller = auth::caller(&request)?;
        let id = request.into_inner().id;
        respond(self.app.delete_job(&caller, &id).await, |()| {
            v1::DeleteJobResponse {}
        })
    }

    type StreamLogsStream = LogStreamBox;

    async fn stream_logs(
        &self,
        request: Request<v1::StreamLogsRequest>,
    ) -> Result<Response<Self::StreamLogsStream>, Status> {
        let caller = auth::caller(&request)?;
        let r = request.into_inner();
        let lines = self.app.stream_logs(&caller, r.id, r.follow, r.after).await;
        respond(lines, |lines| -> LogStreamBox {
            Box::pin(lines.map(|l| l.map(convert::log_line).map_err(status)))
        })
    }

    async fn wait_job(
        &self,
        request: Request<v1::WaitJobRequest>,
    ) -> Result<Response<v1::Job>, Status> {
        let caller = auth::caller(&request)?;
        let id = request.into_inner().id;
        respond(self.app.wait_job(&caller, &id).await, |j| convert::job(&j))
    }

    async fn upload_code(
        &self,
        request: Request<tonic::Streaming<v1::CodeChunk>>,
    ) -> Result<Response<v1::CodeSnapshot>, Status> {
        let caller = auth::caller(&request)?;
        let parts = request.into_inner().map(|chunk| {
            chunk
                .map(|c| crate::app::CodePart {
                    cluster: c.cluster,
                    path: c.path,
                    data: c.data,
                })
                .map_err(|e| {
                    crate::app::AppError::Unavailable(format!("the upload broke: {}", e.message()))
                })
        });
        let snapshot = self.app.upload_code(&caller, parts).await;
        respond(snapshot, |s| v1::CodeSnapshot {
            uri: s.uri,
            files: s.files,
            bytes: s.bytes,
            digest: s.digest,
        })
    }

    type DownloadOutputsStream = OutputStreamBox;

    async fn download_outputs(
        &self,
        request: Request<v1::DownloadOutputsRequest>,
    ) -> Result<Response<Self::DownloadOutputsStream>, Status> {
        let caller = auth::caller(&request)?;
        let r = request.into_inner();
        let parts = self
            .app
            .download_outputs(&caller, &r.job_id, &r.name, r.artifacts)
            .await;
        respond(parts, |parts| -> OutputStreamBox {
            Box::pin(parts.map(|p| {
                p.map(|p| v1::OutputChunk {
                    output: p.output,
                    path: p.path,
                    data: p.data,
                })
                .map_err(status)
            }))
        })
    }
}
