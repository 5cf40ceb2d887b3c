//! `strato registry create|show|list`: registries, never their passwords.

use serde::Serialize;
use strato_proto::v1;

use super::{Render, Table};

#[derive(Debug, Serialize)]
pub struct RegistryView {
    name: String,
    server: String,
    username: String,
}

impl From<v1::Registry> for RegistryView {
    fn from(r: v1::Registry) -> Self {
        RegistryView {
            name: r.name,
            server: r.server,
            username: r.username,
        }
    }
}

impl Render for Vec<RegistryView> {
    fn table(&self) -> Table {
        let mut t = Table::new(&["NAME", "SERVER", "USERNAME"]);
        for r in self {
            t.row(vec![r.name.clone(), r.server.clone(), r.username.clone()]);
        }
        t
    }
}
