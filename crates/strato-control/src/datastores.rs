//! `DatastoreService`: named blob containers for job inputs and outputs.

use std::sync::Arc;

use strato_core::job::validate_datastore;
use strato_proto::convert::timestamp;
use strato_proto::v1::{self, datastore_service_server::DatastoreService};
use tonic::{Request, Response, Status};

use crate::api::status;
use crate::plane::Plane;
use crate::store::{DatastoreRecord, Store};

pub struct DatastoreApi<S> {
    plane: Arc<Plane<S>>,
}

impl<S: Store> DatastoreApi<S> {
    pub fn new(plane: Arc<Plane<S>>) -> Self {
        DatastoreApi { plane }
    }
}

fn wire(d: DatastoreRecord) -> v1::Datastore {
    v1::Datastore {
        name: d.name,
        account_url: d.account_url,
        container: d.container,
        created_at: Some(timestamp(d.created_at)),
    }
}

#[tonic::async_trait]
impl<S: Store> DatastoreService for DatastoreApi<S> {
    async fn create_datastore(
        &self,
        request: Request<v1::CreateDatastoreRequest>,
    ) -> Result<Response<v1::Datastore>, Status> {
        let r = request.into_inner();
        let account_url = r.account_url.trim_end_matches('/').to_owned();
        validate_datastore(&r.name, &account_url, &r.container)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let d = self
            .plane
            .store
            .create_datastore(DatastoreRecord {
                name: r.name,
                account_url,
                container: r.container,
                created_at: self.plane.clock.now_ms(),
            })
            .await
            .map_err(status)?;
        tracing::info!(datastore = %d.name, account_url = %d.account_url, container = %d.container, "datastore created");
        Ok(Response::new(wire(d)))
    }

    async fn get_datastore(
        &self,
        request: Request<v1::GetDatastoreRequest>,
    ) -> Result<Response<v1::Datastore>, Status> {
        let d = self
            .plane
            .store
            .get_datastore(&request.into_inner().name)
            .await
            .map_err(status)?;
        Ok(Response::new(wire(d)))
    }

    async fn list_datastores(
        &self,
        _request: Request<v1::ListDatastoresRequest>,
    ) -> Result<Response<v1::ListDatastoresResponse>, Status> {
        let list = self.plane.store.list_datastores().await.map_err(status)?;
        Ok(Response::new(v1::ListDatastoresResponse {
            datastores: list.into_iter().map(wire).collect(),
        }))
    }

    async fn delete_datastore(
        &self,
        request: Request<v1::DeleteDatastoreRequest>,
    ) -> Result<Response<v1::DeleteDatastoreResponse>, Status> {
        self.plane
            .store
            .delete_datastore(&request.into_inner().name)
            .await
            .map_err(status)?;
        Ok(Response::new(v1::DeleteDatastoreResponse {}))
    }
}
