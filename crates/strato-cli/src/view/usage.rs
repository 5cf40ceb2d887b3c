//! `strato compute list-usage`: quota usage and limits of a location.

use serde::Serialize;

use super::{Render, Table};

#[derive(Debug, Serialize)]
pub struct UsageView {
    pub location: String,
    pub name: String,
    pub unit: String,
    pub current: u64,
    pub limit: u64,
}

impl Render for Vec<UsageView> {
    fn table(&self) -> Table {
        let mut t = Table::new(&["LOCATION", "QUOTA", "CURRENT", "LIMIT", "UNIT"]);
        for u in self {
            t.row(vec![
                u.location.clone(),
                u.name.clone(),
                u.current.to_string(),
                u.limit.to_string(),
                u.unit.clone(),
            ]);
        }
        t
    }
}
