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

#[tokio::test]
async fn one_control_plane_holds_a_database_at_a_time() {
    let schema = Schema::new().await;
    let first = SqlStore::connect_postgres(&schema.url(), 2)
        .await
        .expect("connect");
    let second = SqlStore::connect_postgres(&schema.url(), 2)
        .await
        .expect("connect");
    let held = first
        .hold_instance_lock(std::time::Duration::ZERO)
        .await
        .expect("the first takes it");
    let refused = second
        .hold_instance_lock(std::time::Duration::from_millis(300))
        .await
        .expect_err("the second waits, then is refused");
    assert!(
        refused.to_string().contains("another control plane"),
        "{refused}"
    );
    drop(held);
    second
        .hold_instance_lock(std::time::Duration::from_secs(10))
        .await
        .expect("taken once the first let go");
}
