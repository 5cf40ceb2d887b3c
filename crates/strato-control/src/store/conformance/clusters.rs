//! Clusters, quota, identities, allocation state and datastores.

use strato_core::identity::{Identity, IdentityKind};
use strato_core::node::{AllocationState, NodeState};
use strato_core::quota::{QuotaLimits, RegionQuota};
use strato_core::spec::{ClusterSpec, IdentitySpec, VmPriority};

use super::{JOIN_EXPIRES, REGION, cluster, gang, given_cluster, given_idle_nodes, job, limits};
use crate::store::{
    ClusterIssue, Conflict, DatastoreRecord, IdentityUpdate, JobPage, RegistryRecord, SpecUpdate,
    Store, StoreError,
};

const FAMILY: &str = "standardDv2Family";

fn set_min(min: u32) -> SpecUpdate {
    Box::new(move |s: &ClusterSpec| {
        let mut next = s.clone();
        next.min_nodes = min;
        Ok(next)
    })
}

pub async fn cluster_create_get_list_update_delete<S: Store>(store: S) {
    let l = limits(100);
    let b = store
        .create_cluster(cluster("west", "Standard_D2_v2", 0, 4), Vec::new(), &l, 1)
        .await
        .expect("create b");
    assert_eq!((b.created_at, b.updated_at), (1, 1));
    assert_eq!(b.allocation_state, AllocationState::Steady);
    store
        .create_cluster(cluster("east", "Standard_D2_v2", 0, 4), Vec::new(), &l, 2)
        .await
        .expect("create a");
    assert_eq!(store.get_cluster("west").await.expect("get"), b);
    let names: Vec<String> = store
        .list_clusters()
        .await
        .expect("list")
        .into_iter()
        .map(|c| c.spec.name)
        .collect();
    assert_eq!(names, ["east", "west"]);

    let describe: SpecUpdate = Box::new(|s: &ClusterSpec| {
        let mut next = s.clone();
        next.description = "for tests".into();
        Ok(next)
    });
    let updated = store
        .update_cluster("west", describe, &l, 3)
        .await
        .expect("update");
    assert_eq!(
        (updated.spec.description.as_str(), updated.updated_at),
        ("for tests", 3)
    );
    assert_eq!(updated.created_at, 1);
    // An update that changes nothing stores nothing.
    let same = store
        .update_cluster("west", Box::new(|s: &ClusterSpec| Ok(s.clone())), &l, 4)
        .await
        .expect("no-op update");
    assert_eq!(same, updated);
    // A refused update stores nothing either.
    let refused: SpecUpdate = Box::new(|_: &ClusterSpec| {
        Err(strato_core::SpecError::Invalid(
            strato_core::error::FieldError::new("max_nodes", "refused"),
        ))
    });
    assert!(matches!(
        store.update_cluster("west", refused, &l, 5).await,
        Err(StoreError::Spec(_))
    ));
    assert_eq!(store.get_cluster("west").await.expect("get"), updated);

    given_idle_nodes(&store, "west", &["west-n0"]).await;
    let removed = store.delete_cluster("west").await.expect("delete");
    assert_eq!(
        removed
            .iter()
            .map(|n| n.node_id.as_str())
            .collect::<Vec<_>>(),
        ["west-n0"]
    );
    assert!(matches!(
        store.get_cluster("west").await,
        Err(StoreError::ClusterNotFound(n)) if n == "west"
    ));
    assert!(matches!(
        store.list_nodes("west").await,
        Err(StoreError::ClusterNotFound(_))
    ));
    assert!(store.all_nodes().await.expect("nodes").is_empty());
    assert!(matches!(
        store.delete_cluster("west").await,
        Err(StoreError::ClusterNotFound(_))
    ));
    assert!(matches!(
        store.update_cluster("west", set_min(0), &l, 6).await,
        Err(StoreError::ClusterNotFound(_))
    ));
    store.ping().await.expect("ping");
}

pub async fn cluster_names_are_unique_regardless_of_case<S: Store>(store: S) {
    let l = limits(100);
    store
        .create_cluster(cluster("cpu", "Standard_D2_v2", 0, 4), Vec::new(), &l, 1)
        .await
        .expect("create");
    assert!(matches!(
        store.create_cluster(cluster("CPU", "Standard_D2_v2", 0, 1), Vec::new(), &l, 2).await,
        Err(StoreError::ClusterExists(n)) if n == "cpu"
    ));
    assert_eq!(
        store.get_cluster("Cpu").await.expect("any case").spec.name,
        "cpu"
    );
    assert_eq!(store.list_clusters().await.expect("list").len(), 1);
}

pub async fn cluster_create_over_quota_stores_nothing<S: Store>(store: S) {
    let l = limits(8);
    store
        .create_cluster(cluster("cpu", "Standard_D2_v2", 2, 4), Vec::new(), &l, 1)
        .await
        .expect("create");
    // 2 nodes x 2 vCPUs held; 3 more nodes would make 10 > 8.
    assert!(matches!(
        store
            .create_cluster(cluster("big", "Standard_D2_v2", 3, 4), Vec::new(), &l, 3)
            .await,
        Err(StoreError::Quota(_))
    ));
    assert!(matches!(
        store.get_cluster("big").await,
        Err(StoreError::ClusterNotFound(_))
    ));
    let usage = store.usage(REGION).await.expect("usage");
    assert_eq!((usage.family(FAMILY), usage.clusters), (4, 1));
}

pub async fn cluster_update_checks_quota_for_growth_only<S: Store>(store: S) {
    let l = limits(8);
    store
        .create_cluster(cluster("cpu", "Standard_D2_v2", 2, 10), Vec::new(), &l, 1)
        .await
        .expect("create");
    assert!(matches!(
        store.update_cluster("cpu", set_min(5), &l, 2).await,
        Err(StoreError::Quota(_))
    ));
    assert_eq!(
        store.get_cluster("cpu").await.expect("get").spec.min_nodes,
        2
    );
    // Lowering min_nodes works even over a lowered limit.
    let shrunk = store
        .update_cluster("cpu", set_min(1), &limits(0), 3)
        .await
        .expect("shrink always fits");
    assert_eq!((shrunk.spec.min_nodes, shrunk.updated_at), (1, 3));
    assert_eq!(store.get_cluster("cpu").await.expect("get"), shrunk);
}

pub async fn two_creates_cannot_both_take_the_last_cores<S: Store>(store: S) {
    // Room for one cluster of two D2 nodes (4 vCPUs), not two.
    let l = limits(6);
    let (a, b) = tokio::join!(
        store.create_cluster(cluster("east", "Standard_D2_v2", 2, 4), Vec::new(), &l, 1),
        store.create_cluster(cluster("west", "Standard_D2_v2", 2, 4), Vec::new(), &l, 1),
    );
    let admitted = [&a, &b].iter().filter(|r| r.is_ok()).count();
    let refused = [&a, &b]
        .iter()
        .filter(|r| matches!(r, Err(StoreError::Quota(_))))
        .count();
    assert_eq!((admitted, refused), (1, 1));
    assert_eq!(store.list_clusters().await.expect("list").len(), 1);
    assert_eq!(store.usage(REGION).await.expect("usage").family(FAMILY), 4);
}

pub async fn nodes_count_against_the_quota_beyond_min_nodes<S: Store>(store: S) {
    let l = limits(6);
    store
        .create_cluster(cluster("east", "Standard_D2_v2", 1, 4), Vec::new(), &l, 1)
        .await
        .expect("create a");
    // min 1 holds 2 vCPUs; the first node is within it, the second adds 2.
    for n in ["east-n0", "east-n1"] {
        store
            .create_node("east", n, &format!("join-{n}"), JOIN_EXPIRES, &l, 2)
            .await
            .expect("node fits");
    }
    assert_eq!(store.usage(REGION).await.expect("usage").family(FAMILY), 4);
    store
        .create_node("east", "east-n2", "join-east-n2", JOIN_EXPIRES, &l, 3)
        .await
        .expect("third fits: 6");
    assert!(matches!(
        store
            .create_node("east", "east-n3", "join-east-n3", JOIN_EXPIRES, &l, 4)
            .await,
        Err(StoreError::Quota(_))
    ));
    assert_eq!(store.list_nodes("east").await.expect("nodes").len(), 3);
    assert!(matches!(
        store
            .create_node("nope", "x", "join-x", JOIN_EXPIRES, &l, 4)
            .await,
        Err(StoreError::ClusterNotFound(_))
    ));
    store
        .create_cluster(
            cluster("west", "Standard_D2_v2", 0, 4),
            Vec::new(),
            &limits(100),
            5,
        )
        .await
        .expect("create b");
    assert_eq!(
        store
            .usage_of_others(REGION, "west")
            .await
            .expect("others")
            .family(FAMILY),
        6
    );
    assert_eq!(
        store
            .usage_of_others(REGION, "east")
            .await
            .expect("others")
            .family(FAMILY),
        0
    );
    assert_eq!(store.usage("elsewhere").await.expect("usage").clusters, 0);
}

pub async fn low_priority_and_dedicated_quotas_do_not_touch<S: Store>(store: S) {
    let l = QuotaLimits {
        default: RegionQuota {
            dedicated_cores_per_family: 4,
            low_priority_cores: 8,
            ..RegionQuota::default()
        },
        ..QuotaLimits::default()
    };
    let mut low = cluster("low", "Standard_D2_v2", 4, 4);
    low.vm_priority = VmPriority::LowPriority;
    store
        .create_cluster(low, Vec::new(), &l, 1)
        .await
        .expect("8 low-priority vCPUs fit");
    store
        .create_cluster(cluster("ded", "Standard_D2_v2", 2, 4), Vec::new(), &l, 2)
        .await
        .expect("4 dedicated vCPUs fit beside them");
    let usage = store.usage(REGION).await.expect("usage");
    assert_eq!((usage.low_priority, usage.family(FAMILY)), (8, 4));
}

pub async fn identities_are_replaced_in_one_update<S: Store>(store: S) {
    given_cluster(&store, "cpu").await;
    let identity = Identity {
        kind: IdentityKind::SystemAssigned,
        resource_id: "clusters/cpu".into(),
        client_id: "client".into(),
        principal_id: "principal".into(),
    };
    let given = identity.clone();
    let assign: IdentityUpdate = Box::new(move |_, current| {
        assert!(current.is_empty());
        Ok((
            IdentitySpec {
                system_assigned: true,
                user_assigned: Vec::new(),
            },
            vec![given],
        ))
    });
    let record = store
        .update_identities("cpu", assign, 7)
        .await
        .expect("assign");
    assert!(record.spec.identity.system_assigned);
    assert_eq!(
        (record.identities.clone(), record.updated_at),
        (vec![identity], 7)
    );
    assert_eq!(store.get_cluster("cpu").await.expect("get"), record);
    let refused: IdentityUpdate = Box::new(|_, _| {
        Err(strato_core::SpecError::Invalid(
            strato_core::error::FieldError::new("identity", "refused"),
        ))
    });
    assert!(matches!(
        store.update_identities("cpu", refused, 8).await,
        Err(StoreError::Spec(_))
    ));
    assert_eq!(store.get_cluster("cpu").await.expect("get"), record);
    let remove: IdentityUpdate = Box::new(|_, _| Ok((IdentitySpec::default(), Vec::new())));
    let removed = store
        .update_identities("cpu", remove, 9)
        .await
        .expect("remove");
    assert!(removed.identities.is_empty() && !removed.spec.identity.system_assigned);
    assert!(matches!(
        store
            .update_identities(
                "nope",
                Box::new(|_, _| Ok((IdentitySpec::default(), Vec::new()))),
                9
            )
            .await,
        Err(StoreError::ClusterNotFound(_))
    ));
}

pub async fn allocation_keeps_its_since_while_unchanged<S: Store>(store: S) {
    given_cluster(&store, "cpu").await;
    let issue = |since| ClusterIssue {
        code: "quota_exceeded".into(),
        message: "no room".into(),
        since,
    };
    store
        .set_allocation("cpu", AllocationState::Resizing, 2, vec![issue(10)], 10)
        .await
        .expect("set");
    let c = store.get_cluster("cpu").await.expect("get");
    assert_eq!(
        (
            c.allocation_state,
            c.allocation_since,
            c.target_nodes,
            c.errors
        ),
        (AllocationState::Resizing, 10, 2, vec![issue(10)])
    );
    // The same state and issue later: both keep their first time.
    store
        .set_allocation("cpu", AllocationState::Resizing, 3, vec![issue(20)], 20)
        .await
        .expect("set");
    let c = store.get_cluster("cpu").await.expect("get");
    assert_eq!(
        (c.allocation_since, c.target_nodes, c.errors),
        (10, 3, vec![issue(10)])
    );
    store
        .set_allocation("cpu", AllocationState::Steady, 3, Vec::new(), 30)
        .await
        .expect("set");
    let c = store.get_cluster("cpu").await.expect("get");
    assert_eq!(
        (c.allocation_state, c.allocation_since, c.errors.len()),
        (AllocationState::Steady, 30, 0)
    );
    // A cluster deleted meanwhile is no error for the loop.
    store
        .set_allocation("gone", AllocationState::Steady, 0, Vec::new(), 40)
        .await
        .expect("unknown cluster");
}

pub async fn max_nodes_cannot_drop_below_an_unfinished_gang<S: Store>(store: S) {
    given_cluster(&store, "mpi").await;
    store
        .submit_job("g", gang("mpi", 3, Default::default()), "", 3)
        .await
        .expect("submit");
    let max = |n: u32| -> SpecUpdate {
        Box::new(move |s: &ClusterSpec| {
            let mut next = s.clone();
            next.max_nodes = n;
            Ok(next)
        })
    };
    let e = store
        .update_cluster("mpi", max(2), &limits(100), 4)
        .await
        .expect_err("below the gang");
    assert!(matches!(
        &e,
        StoreError::Conflict(Conflict::MaxNodesBelowGang { job, needs: 3 }) if job == "g"
    ));
    assert_eq!(
        e.to_string(),
        "max_nodes: job g needs 3 nodes at once; cancel it or keep max_nodes at 3 or more"
    );
    store
        .update_cluster("mpi", max(3), &limits(100), 5)
        .await
        .expect("the gang still fits");
    store.cancel_job("g", 6).await.expect("cancel");
    store
        .update_cluster("mpi", max(1), &limits(100), 7)
        .await
        .expect("no gang waits");
}

pub async fn delete_is_refused_while_jobs_are_unfinished<S: Store>(store: S) {
    given_cluster(&store, "cpu").await;
    store
        .submit_job("j1", job("cpu"), "", 2)
        .await
        .expect("submit");
    store
        .submit_job("j2", job("cpu"), "", 2)
        .await
        .expect("submit");
    let e = store.delete_cluster("cpu").await.expect_err("refused");
    assert!(matches!(
        &e,
        StoreError::Conflict(Conflict::ClusterHasUnfinishedJobs { cluster, unfinished: 2 })
            if cluster == "cpu"
    ));
    assert_eq!(
        e.to_string(),
        "cluster cpu has 2 unfinished jobs; cancel them (`strato job cancel`) or wait for them first"
    );
    store.get_cluster("cpu").await.expect("still there");
    store.cancel_job("j1", 3).await.expect("cancel");
    store.cancel_job("j2", 3).await.expect("cancel");
    store.delete_cluster("CPU").await.expect("delete");
    // Its finished jobs go with it.
    assert!(matches!(
        store.get_job("j1").await,
        Err(StoreError::JobNotFound(_))
    ));
    assert!(
        store
            .list_jobs(None, JobPage::ALL)
            .await
            .expect("jobs")
            .0
            .is_empty()
    );
}

pub async fn datastores_create_get_list_delete<S: Store>(store: S) {
    let ds = |name: &str| DatastoreRecord {
        name: name.into(),
        account_url: format!("https://{name}.blob.core.windows.net"),
        container: "data".into(),
        created_at: 5,
    };
    assert_eq!(
        store.create_datastore(ds("zeta")).await.expect("create"),
        ds("zeta")
    );
    store.create_datastore(ds("alpha")).await.expect("create");
    assert!(matches!(
        store.create_datastore(ds("zeta")).await,
        Err(StoreError::DatastoreExists(n)) if n == "zeta"
    ));
    assert_eq!(store.get_datastore("zeta").await.expect("get"), ds("zeta"));
    assert_eq!(
        store.list_datastores().await.expect("list"),
        vec![ds("alpha"), ds("zeta")]
    );
    store.delete_datastore("zeta").await.expect("delete");
    assert!(matches!(
        store.get_datastore("zeta").await,
        Err(StoreError::DatastoreNotFound(n)) if n == "zeta"
    ));
    assert!(matches!(
        store.delete_datastore("zeta").await,
        Err(StoreError::DatastoreNotFound(_))
    ));
    assert_eq!(
        store.list_datastores().await.expect("list"),
        vec![ds("alpha")]
    );
}

pub async fn registries_take_a_name_and_a_server_once<S: Store>(store: S) {
    let reg = |name: &str, server: &str| RegistryRecord {
        name: name.into(),
        server: server.into(),
        username: "puller".into(),
        password_sealed: "c2VhbGVk".into(),
        identity: String::new(),
        clusters: vec!["cpu".into(), "gpu-a".into()],
        created_at: 7,
    };
    // Servers are kept lowercase: image references name hosts in any case.
    let made = store
        .create_registry(reg("acr", "MyACR.azurecr.io"))
        .await
        .expect("create");
    assert_eq!(made, reg("acr", "myacr.azurecr.io"));
    assert!(matches!(
        store.create_registry(reg("acr", "other.io")).await,
        Err(StoreError::RegistryExists(n)) if n == "acr"
    ));
    assert!(matches!(
        store.create_registry(reg("again", "myacr.azurecr.io")).await,
        Err(StoreError::RegistryServerTaken { name, .. }) if name == "acr"
    ));
    store
        .create_registry(reg("lab", "10.0.0.5:5000"))
        .await
        .expect("create");
    assert_eq!(
        store
            .registry_for_server("MYACR.azurecr.io")
            .await
            .expect("lookup"),
        Some(reg("acr", "myacr.azurecr.io"))
    );
    assert_eq!(
        store
            .registry_for_server("docker.io")
            .await
            .expect("lookup"),
        None
    );
    assert_eq!(
        store.list_registries().await.expect("list"),
        vec![reg("acr", "myacr.azurecr.io"), reg("lab", "10.0.0.5:5000")]
    );
    store.delete_registry("acr").await.expect("delete");
    assert!(matches!(
        store.get_registry("acr").await,
        Err(StoreError::RegistryNotFound(n)) if n == "acr"
    ));
    assert!(matches!(
        store.delete_registry("acr").await,
        Err(StoreError::RegistryNotFound(_))
    ));
    assert_eq!(
        store.get_registry("lab").await.expect("get"),
        reg("lab", "10.0.0.5:5000")
    );
}

pub async fn a_scale_ups_nodes_are_made_together_or_not_at_all<S: Store>(store: S) {
    let l = limits(6);
    store
        .create_cluster(cluster("east", "Standard_D2_v2", 0, 4), Vec::new(), &l, 1)
        .await
        .expect("create");
    let batch = |ids: &[&str]| -> Vec<(String, String)> {
        ids.iter()
            .map(|id| ((*id).to_owned(), format!("join-{id}")))
            .collect()
    };
    // 4 nodes of 2 vCPUs are 8 of the 6 allowed: none is made.
    assert!(matches!(
        store
            .create_nodes(
                "east",
                &batch(&["e0", "e1", "e2", "e3"]),
                JOIN_EXPIRES,
                &l,
                2
            )
            .await,
        Err(StoreError::Quota(_))
    ));
    assert!(store.list_nodes("east").await.expect("nodes").is_empty());
    let made = store
        .create_nodes("east", &batch(&["e0", "e1", "e2"]), JOIN_EXPIRES, &l, 3)
        .await
        .expect("3 fit");
    let ids: Vec<&str> = made.iter().map(|n| n.node_id.as_str()).collect();
    assert_eq!(ids, ["e0", "e1", "e2"]);
    assert!(
        made.iter()
            .all(|n| n.state == NodeState::Preparing && n.created_at == 3)
    );
    assert_eq!(store.usage(REGION).await.expect("usage").family(FAMILY), 6);
}
