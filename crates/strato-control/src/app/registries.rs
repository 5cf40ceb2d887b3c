//! Registries: servers job images are pulled from, with the credentials
//! nodes log in with. The password is sealed before it is stored and never
//! returned; nodes get it only in the assignment of a job whose image names
//! the registry's server, over their authenticated session.

use std::sync::Arc;

use super::{Action, AppError, Caller, authorize};
use crate::plane::Plane;
use crate::store::{RegistryRecord, Store};

/// A registry to create.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct NewRegistry {
    pub name: String,
    pub server: String,
    pub username: String,
    pub password: String,
    pub identity: String,
    pub clusters: Vec<String>,
}

impl std::fmt::Debug for NewRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewRegistry")
            .field("name", &self.name)
            .field("server", &self.server)
            .field("username", &self.username)
            .field("password", &"(redacted)")
            .field("identity", &self.identity)
            .field("clusters", &self.clusters)
            .finish()
    }
}

pub struct Registries<S> {
    plane: Arc<Plane<S>>,
}

impl<S: Store> Registries<S> {
    pub fn new(plane: Arc<Plane<S>>) -> Self {
        Registries { plane }
    }

    pub async fn create_registry(
        &self,
        caller: &Caller,
        new: NewRegistry,
    ) -> Result<RegistryRecord, AppError> {
        authorize(caller, Action::CreateRegistry, None)?;
        let login = strato_core::registry::login(&new.username, &new.password, &new.identity)?;
        strato_core::registry::validate(&new.name, &new.server, &login)?;
        strato_core::registry::check_clusters(&new.clusters)?;
        // An identity registry keeps no secret at all.
        let sealed = match login {
            strato_core::registry::Login::Basic { password, .. } => self
                .plane
                .secrets
                .seal(password, &crate::agents::registry_owner(&new.name)),
            strato_core::registry::Login::Identity(_) => String::new(),
        };
        let r = self
            .plane
            .store
            .create_registry(RegistryRecord {
                name: new.name,
                server: new.server,
                username: new.username,
                password_sealed: sealed,
                identity: new.identity,
                clusters: new.clusters,
                created_at: self.plane.clock.now_ms(),
            })
            .await?;
        tracing::info!(registry = %r.name, server = %r.server, username = %r.username, identity = %r.identity, "registry created");
        Ok(r)
    }

    pub async fn get_registry(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<RegistryRecord, AppError> {
        authorize(caller, Action::GetRegistry, None)?;
        Ok(self.plane.store.get_registry(name).await?)
    }

    pub async fn list_registries(&self, caller: &Caller) -> Result<Vec<RegistryRecord>, AppError> {
        authorize(caller, Action::ListRegistries, None)?;
        Ok(self.plane.store.list_registries().await?)
    }

    pub async fn delete_registry(&self, caller: &Caller, name: &str) -> Result<(), AppError> {
        authorize(caller, Action::DeleteRegistry, None)?;
        self.plane.store.delete_registry(name).await?;
        tracing::info!(registry = %name, "registry deleted");
        Ok(())
    }
}
