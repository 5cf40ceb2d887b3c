//! `RegistryService` over `app::Registries`.

use std::sync::Arc;

use strato_proto::v1::{self, registry_service_server::RegistryService};
use tonic::{Request, Response, Status};

use super::auth;
use super::{convert, respond};
use crate::app::{NewRegistry, Registries};
use crate::plane::Plane;
use crate::store::Store;

pub struct RegistryApi<S> {
    app: Registries<S>,
}

impl<S: Store> RegistryApi<S> {
    pub fn new(plane: Arc<Plane<S>>) -> Self {
        RegistryApi {
            app: Registries::new(plane),
        }
    }
}

#[tonic::async_trait]
impl<S: Store> RegistryService for RegistryApi<S> {
    async fn create_registry(
        &self,
        request: Request<v1::CreateRegistryRequest>,
    ) -> Result<Response<v1::Registry>, Status> {
        let caller = auth::caller(&request)?;
        let r = request.into_inner();
        let new = NewRegistry {
            name: r.name,
            server: r.server,
            username: r.username,
            password: r.password,
            identity: r.identity,
            clusters: r.clusters,
        };
        respond(
            self.app.create_registry(&caller, new).await,
            convert::registry,
        )
    }

    async fn get_registry(
        &self,
        request: Request<v1::GetRegistryRequest>,
    ) -> Result<Response<v1::Registry>, Status> {
        let caller = auth::caller(&request)?;
        let name = request.into_inner().name;
        respond(
            self.app.get_registry(&caller, &name).await,
            convert::registry,
        )
    }

    async fn list_registries(
        &self,
        request: Request<v1::ListRegistriesRequest>,
    ) -> Result<Response<v1::ListRegistriesResponse>, Status> {
        let caller = auth::caller(&request)?;
        respond(self.app.list_registries(&caller).await, |list| {
            v1::ListRegistriesResponse {
                registries: list.into_iter().map(convert::registry).collect(),
            }
        })
    }

    async fn delete_registry(
        &self,
        request: Request<v1::DeleteRegistryRequest>,
    ) -> Result<Response<v1::DeleteRegistryResponse>, Status> {
        let caller = auth::caller(&request)?;
        let name = request.into_inner().name;
        respond(self.app.delete_registry(&caller, &name).await, |()| {
            v1::DeleteRegistryResponse {}
        })
    }
}
