//! API tokens and role assignments.

use strato_core::access::{Grant, Role, Scope};

use crate::store::{ApiTokenRecord, RoleAssignmentRecord, Store, StoreError};

fn token(name: &str, hash: &str) -> ApiTokenRecord {
    ApiTokenRecord {
        name: name.into(),
        secret_hash: hash.into(),
        grant: Grant {
            role: Role::DataScientist,
            scope: Scope::Cluster("gpu-a".into()),
        },
        created_at: 5,
        expires_at: Some(100),
        created_by: "token:admin".into(),
        revoked_at: None,
    }
}

pub async fn tokens_are_found_by_hash_listed_and_revoked_once<S: Store>(store: S) {
    assert_eq!(
        store
            .create_api_token(token("ci", "h1"), false)
            .await
            .expect("create"),
        token("ci", "h1")
    );
    assert!(matches!(
        store.create_api_token(token("ci", "h2"), false).await,
        Err(StoreError::TokenExists(n)) if n == "ci"
    ));
    assert_eq!(
        store.api_token_by_hash("h1").await.expect("by hash"),
        Some(token("ci", "h1"))
    );
    assert_eq!(store.api_token_by_hash("h2").await.expect("by hash"), None);
    // Replacing (the bootstrap token made anew) drops the old secret.
    store
        .create_api_token(token("ci", "h3"), true)
        .await
        .expect("replace");
    assert_eq!(store.api_token_by_hash("h1").await.expect("old"), None);
    let revoked = store.revoke_api_token("ci", 7).await.expect("revoke");
    assert_eq!(revoked.revoked_at, Some(7));
    assert!(!revoked.is_valid_at(8));
    let again = store.revoke_api_token("ci", 9).await.expect("again");
    assert_eq!(again.revoked_at, Some(7), "the first revocation stands");
    assert!(matches!(
        store.revoke_api_token("nope", 9).await,
        Err(StoreError::TokenNotFound(_))
    ));
    assert_eq!(store.list_api_tokens().await.expect("list").len(), 1);
    assert!(token("x", "h").is_valid_at(99) && !token("x", "h").is_valid_at(100));
}

pub async fn role_assignments_are_unique_per_principal_role_and_scope<S: Store>(store: S) {
    let grant = Grant {
        role: Role::Reader,
        scope: Scope::All,
    };
    let a = |principal: &str| RoleAssignmentRecord {
        principal: principal.into(),
        grant: grant.clone(),
        created_at: 3,
    };
    store
        .create_role_assignment(a("oidc:alice"))
        .await
        .expect("create");
    store
        .create_role_assignment(a("token:ci"))
        .await
        .expect("create");
    assert!(matches!(
        store.create_role_assignment(a("oidc:alice")).await,
        Err(StoreError::AssignmentExists { .. })
    ));
    assert_eq!(
        store
            .list_role_assignments(Some("oidc:alice"))
            .await
            .expect("of one"),
        vec![a("oidc:alice")]
    );
    assert_eq!(
        store.list_role_assignments(None).await.expect("all").len(),
        2
    );
    store
        .delete_role_assignment("oidc:alice", &grant)
        .await
        .expect("delete");
    assert!(matches!(
        store.delete_role_assignment("oidc:alice", &grant).await,
        Err(StoreError::AssignmentNotFound { .. })
    ));
}
