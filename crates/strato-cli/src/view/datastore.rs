//! `strato datastore create|show|list`: the registered blob containers.

use serde::Serialize;
use strato_proto::v1;

use super::{Render, Table};

#[derive(Debug, Serialize)]
pub struct DatastoreView {
    name: String,
    account_url: String,
    container: String,
}

impl From<v1::Datastore> for DatastoreView {
    fn from(d: v1::Datastore) -> Self {
        DatastoreView {
            name: d.name,
            account_url: d.account_url,
            container: d.container,
        }
    }
}

impl Render for Vec<DatastoreView> {
    fn table(&self) -> Table {
        let mut t = Table::new(&["NAME", "ACCOUNT_URL", "CONTAINER"]);
        for d in self {
            t.row(vec![
                d.name.clone(),
                d.account_url.clone(),
                d.container.clone(),
            ]);
        }
        t
    }
}
