//! `SqlStore` on PostgreSQL against the conformance suite: each case on a
//! schema of its own, dropped when the case ends.

use super::SqlStore;
use crate::store::conformance::postgres::Schema;

crate::store_conformance_suite!(|| async {
    let schema = Schema::new().await;
    let store = SqlStore::connect_postgres(&schema.url(), 4)
        .await
        .expect("connect");
    (store, schema)
});
