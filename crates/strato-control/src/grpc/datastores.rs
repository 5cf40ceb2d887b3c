//! `DatastoreService` over `app::Datastores`.

use std::sync::Arc;

use strato_proto::v1::{self, datastore_service_server::DatastoreService};
use tonic::{Request, Response, Status};

use super::auth;
use super::{convert, respond};
use crate::app::{Datastores, NewDatastore};
use crate::plane::Plane;
use crate::store::Store;

pub struct DatastoreApi<S> {
    app: Datastores<S>,
}

impl<S: Store> DatastoreApi<S> {
    pub fn new(plane: Arc<Plane<S>>) -> Self {
        DatastoreApi {
            app: Datastores::new(plane),
        }
    }
}

#[tonic::async_trait]
impl<S: Store> DatastoreService for DatastoreApi<S> {
    async fn create_datastore(
        &self,
        request: Request<v1::CreateDatastoreRequest>,
    ) -> Result<Response<v1::Datastore>, Status> {
        let caller = auth::caller(&request)?;
        let r = request.into_inner();
        let new = NewDatastore {
            name: r.name,
            account_url: r.account_url,
            container: r.container,
        };
        respond(
            self.app.create_datastore(&caller, new).await,
            convert::datastore,
        )
    }

    async fn get_datastore(
        &self,
        request: Request<v1::GetDatastoreRequest>,
    ) -> Result<Response<v1::Datastore>, Status> {
        let caller = auth::caller(&request)?;
        let name = request.into_inner().name;
        respond(
            self.app.get_datastore(&caller, &name).await,
            convert::datastore,
        )
    }

    async fn list_datastores(
        &self,
        request: Request<v1::ListDatastoresRequest>,
    ) -> Result<Response<v1::ListDatastoresResponse>, Status> {
        let caller = auth::caller(&request)?;
        respond(self.app.list_datastores(&caller).await, |list| {
            v1::ListDatastoresResponse {
                datastores: list.into_iter().map(convert::datastore).collect(),
            }
        })
    }

    async fn delete_datastore(
        &self,
        request: Request<v1::DeleteDatastoreRequest>,
    ) -> Result<Response<v1::DeleteDatastoreResponse>, Status> {
        let caller = auth::caller(&request)?;
        let name = request.into_inner().name;
        respond(self.app.delete_datastore(&caller, &name).await, |()| {
            v1::DeleteDatastoreResponse {}
        })
    }
}
