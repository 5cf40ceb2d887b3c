//! Datastores: named blob containers for job inputs and outputs.

use std::sync::Arc;

use strato_core::job::validate_datastore;

use super::{Action, AppError, Caller, authorize};
use crate::plane::Plane;
use crate::store::{DatastoreRecord, Store};

/// A datastore to create.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewDatastore {
    pub name: String,
    pub account_url: String,
    pub container: String,
}

pub struct Datastores<S> {
    plane: Arc<Plane<S>>,
}

impl<S: Store> Datastores<S> {
    pub fn new(plane: Arc<Plane<S>>) -> Self {
        Datastores { plane }
    }

    pub async fn create_datastore(
        &self,
        caller: &Caller,
        new: NewDatastore,
    ) -> Result<DatastoreRecord, AppError> {
        authorize(caller, Action::CreateDatastore, None)?;
        let account_url = new.account_url.trim_end_matches('/').to_owned();
        validate_datastore(&new.name, &account_url, &new.container)?;
        let d = self
            .plane
            .store
            .create_datastore(DatastoreRecord {
                name: new.name,
                account_url,
                container: new.container,
                created_at: self.plane.clock.now_ms(),
            })
            .await?;
        tracing::info!(datastore = %d.name, account_url = %d.account_url, container = %d.container, "datastore created");
        Ok(d)
    }

    pub async fn get_datastore(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<DatastoreRecord, AppError> {
        authorize(caller, Action::GetDatastore, None)?;
        Ok(self.plane.store.get_datastore(name).await?)
    }

    pub async fn list_datastores(&self, caller: &Caller) -> Result<Vec<DatastoreRecord>, AppError> {
        authorize(caller, Action::ListDatastores, None)?;
        Ok(self.plane.store.list_datastores().await?)
    }

    pub async fn delete_datastore(&self, caller: &Caller, name: &str) -> Result<(), AppError> {
        authorize(caller, Action::DeleteDatastore, None)?;
        Ok(self.plane.store.delete_datastore(name).await?)
    }
}
