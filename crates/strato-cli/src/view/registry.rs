//! `strato registry create|show|list`: registries, never their passwords.

use serde::Serialize;
use strato_proto::v1;

use super::{Render, Table};

#[derive(Debug, Serialize)]
pub struct RegistryView {
    name: String,
    server: String,
    username: String,
    identity: String,
    clusters: Vec<String>,
}

impl From<v1::Registry> for RegistryView {
    fn from(r: v1::Registry) -> Self {
        RegistryView {
            name: r.name,
            server: r.server,
            username: r.username,
            identity: r.identity,
            clusters: r.clusters,
        }
    }
}

impl Render for Vec<RegistryView> {
    fn table(&self) -> Table {
        let mut t = Table::new(&["NAME", "SERVER", "LOGIN", "CLUSTERS"]);
        for r in self {
            let login = if r.identity.is_empty() {
                format!("user {}", r.username)
            } else {
                format!("identity {}", r.identity)
            };
            t.row(vec![
                r.name.clone(),
                r.server.clone(),
                login,
                r.clusters.join(","),
            ]);
        }
        t
    }
}
