//! Nodes: creation under the quota, enrolment, heartbeats, and the ends of
//! a node (unusable, preempted, deleted) with what they mean for its ranks.

use std::collections::HashMap;

use sqlx::AnyConnection;
use sqlx::Row;
use sqlx::any::AnyRow;
use strato_core::lifecycle;
use strato_core::node::NodeState;
use strato_core::quota::{self, QuotaLimits, QuotaUsage};

use super::clusters::load_cluster;
use super::ranks::end_ranks_on;
use super::usage::{allocation, allocations, node_count};
use super::{Beat, SqlStore, corrupt, fetch_where_in, flag_col, select_one, u32_col, values_from};
use crate::store::{
    Conflict, EnrollReport, Enrolment, Join, JoinTokenRecord, NodeRecord, NodeSession, NodeUsage,
    StoreError,
};

pub(super) const NODE_COLUMNS: &str = "node_id, cluster, state, private_ip, port, run_id, reason, state_since, \
     created_at, idle_since, last_heartbeat, session_token_hash IS NOT NULL AS enrolled, hostname, pid, \
     metrics_url, gpus, cpu_percent, memory_used, memory_total, gpu_percent, evict_at, gpu_info, \
     ssh_host_key, session_replica";

pub(super) fn node_from_row(row: &AnyRow) -> Result<NodeRecord, StoreError> {
    let state: String = row.try_get("state")?;
    let port: i64 = row.try_get("port")?;
    let pid: Option<i64> = row.try_get("pid")?;
    Ok(NodeRecord {
        node_id: row.try_get("node_id")?,
        cluster: row.try_get("cluster")?,
        state: NodeState::parse(&state).ok_or_else(|| corrupt("node state", &state))?,
        private_ip: row.try_get("private_ip")?,
        port: u16::try_from(port).unwrap_or(0),
        run_id: row.try_get("run_id")?,
        reason: row.try_get("reason")?,
        state_since: row.try_get("state_since")?,
        created_at: row.try_get("created_at")?,
        idle_since: row.try_get("idle_since")?,
        last_heartbeat: row.try_get("last_heartbeat")?,
        enrolled: flag_col(row, "enrolled")?,
        hostname: row.try_get("hostname")?,
        pid: pid.and_then(|p| u32::try_from(p).ok()),
        metrics_url: row.try_get("metrics_url")?,
        gpus: u32_col(row, "gpus")?,
        gpu_info: serde_json::from_str(&row.try_get::<String, _>("gpu_info")?)
            .map_err(|e| corrupt("node gpu_info", e))?,
        usage: NodeUsage {
            cpu_percent: row.try_get("cpu_percent")?,
            memory_used: u64::try_from(row.try_get::<i64, _>("memory_used")?).unwrap_or(0),
            memory_total: u64::try_from(row.try_get::<i64, _>("memory_total")?).unwrap_or(0),
            gpu_percent: row.try_get("gpu_percent")?,
        },
        evict_at: row.try_get("evict_at")?,
        ssh_host_key: row.try_get("ssh_host_key")?,
        session_replica: row.try_get("session_replica")?,
    })
}

pub(super) async fn load_node(
    conn: &mut AnyConnection,
    node_id: &str,
) -> Result<NodeRecord, StoreError> {
    let row = select_one(conn, NODE_COLUMNS, "nodes", "node_id", node_id)
        .await?
        .ok_or_else(|| StoreError::NodeNotFound(node_id.to_owned()))?;
    node_from_row(&row)
}

/// Nodes read by id in one statement at most (a bind parameter each).
pub(super) const NODES_PER_STATEMENT: usize = 500;

/// The nodes of `ids` that exist, by id: one statement.
pub(super) async fn load_nodes(
    conn: &mut AnyConnection,
    ids: &[&str],
) -> Result<HashMap<String, NodeRecord>, StoreError> {
    let rows = fetch_where_in(
        conn,
        &format!("SELECT {NODE_COLUMNS} FROM nodes"),
        "node_id",
        ids,
        "",
    )
    .await?;
    rows.iter()
        .map(|row| node_from_row(row).map(|node| (node.node_id.clone(), node)))
        .collect()
}

/// Sets a node's state (and clears its job when it becomes idle).
pub(super) async fn set_node_state(
    conn: &mut AnyConnection,
    node_id: &str,
    state: NodeState,
    run_id: Option<&str>,
    reason: &str,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE nodes SET state = $1, run_id = $2, reason = $3, state_since = $4,
             idle_since = CASE WHEN $1 = 'idle' THEN $4 ELSE idle_since END
         WHERE node_id = $5",
    )
    .bind(state.as_str())
    .bind(run_id)
    .bind(reason)
    .bind(now)
    .bind(node_id)
    .execute(conn)
    .await?;
    Ok(())
}

pub(super) async fn list_nodes(
    db: &SqlStore,
    cluster: &str,
) -> Result<Vec<NodeRecord>, StoreError> {
    let mut conn = db.pool.acquire().await?;
    // Distinguish "no such cluster" from "no nodes".
    let cluster = load_cluster(&mut conn, cluster).await?.spec.name;
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {NODE_COLUMNS} FROM nodes WHERE cluster = $1 ORDER BY created_at, node_id"
    )))
    .bind(&cluster)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(node_from_row).collect()
}

pub(super) async fn node_sessions(db: &SqlStore) -> Result<Vec<NodeSession>, StoreError> {
    let rows = sqlx::query(
        "SELECT n.node_id, n.state, n.run_id, n.session_replica, j.attempt
         FROM nodes n LEFT JOIN jobs j ON j.id = n.run_id ORDER BY n.node_id",
    )
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|row| {
            let state: String = row.try_get(1)?;
            Ok(NodeSession {
                node_id: row.try_get(0)?,
                state: NodeState::parse(&state).ok_or_else(|| corrupt("node state", &state))?,
                run_id: row.try_get(2)?,
                attempt: row
                    .try_get::<Option<i64>, _>(4)?
                    .and_then(|a| u32::try_from(a).ok()),
                session_replica: row.try_get(3)?,
            })
        })
        .collect()
}

pub(super) async fn all_nodes(db: &SqlStore) -> Result<Vec<NodeRecord>, StoreError> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {NODE_COLUMNS} FROM nodes ORDER BY created_at, node_id"
    )))
    .fetch_all(&db.pool)
    .await?;
    rows.iter().map(node_from_row).collect()
}

pub(super) async fn node_counts(
    db: &SqlStore,
) -> Result<Vec<(String, NodeState, u64)>, StoreError> {
    super::counts_by_state(db, "nodes", |s| {
        NodeState::parse(s).ok_or_else(|| corrupt("node state", s))
    })
    .await
}

/// Whether one node more than the cluster's `nodes` fits the quota of its
/// location, beside what the other clusters there hold.
async fn more_fit(
    tx: &mut AnyConnection,
    spec: &strato_core::spec::ClusterSpec,
    nodes: u32,
    more: u32,
    limits: &QuotaLimits,
) -> Result<(), StoreError> {
    let others =
        QuotaUsage::from_allocations(&allocations(tx, &spec.location, Some(&spec.name)).await?);
    quota::check(
        &spec.location,
        limits.region(&spec.location),
        &others,
        &allocation(spec, nodes.saturating_add(more))?,
        false,
    )?;
    Ok(())
}

pub(super) async fn create_nodes(
    db: &SqlStore,
    cluster: &str,
    nodes: &[(String, String)],
    join_expires_at: i64,
    limits: &QuotaLimits,
    now: i64,
) -> Result<Vec<NodeRecord>, StoreError> {
    let mut tx = db.begin_write().await?;
    let spec = load_cluster(&mut tx, cluster).await?.spec;
    let held = node_count(&mut tx, &spec.name).await?;
    more_fit(
        &mut tx,
        &spec,
        held,
        u32::try_from(nodes.len()).unwrap_or(u32::MAX),
        limits,
    )
    .await?;
    for (node_id, join_token_hash) in nodes {
        sqlx::query(
            "INSERT INTO nodes (node_id, cluster, state, reason, state_since, created_at, idle_since, join_token_hash, join_expires_at)
             VALUES ($1, $2, 'preparing', 'starting: waiting for the agent to enrol', $3, $3, $3, $4, $5)",
        )
        .bind(node_id)
        .bind(&spec.name)
        .bind(now)
        .bind(join_token_hash)
        .bind(join_expires_at)
        .execute(&mut *tx)
        .await?;
    }
    let mut made = Vec::with_capacity(nodes.len());
    for (node_id, _) in nodes {
        made.push(load_node(&mut tx, node_id).await?);
    }
    tx.commit().await?;
    Ok(made)
}

pub(super) async fn set_node_pid(db: &SqlStore, node_id: &str, pid: u32) -> Result<(), StoreError> {
    let mut tx = db.begin_write().await?;
    sqlx::query("UPDATE nodes SET pid = $1 WHERE node_id = $2")
        .bind(i64::from(pid))
        .bind(node_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn enroll(
    db: &SqlStore,
    by: Enrolment<'_>,
    session_token_hash: &str,
    report: &EnrollReport,
    now: i64,
) -> Result<NodeRecord, StoreError> {
    let mut tx = db.begin_write().await?;
    let node_id = match by {
        Enrolment::JoinToken { token, key } => {
            type Row = (String, Option<i64>, Option<i64>, Option<String>);
            let (node_id, expires_at, used_at, used_key): Row = sqlx::query_as(
                "SELECT node_id, join_expires_at, join_used_at, join_key FROM nodes WHERE join_token_hash = $1",
            )
            .bind(token)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::BadToken)?;
            match lifecycle::join_token_takes(
                expires_at,
                used_at.is_some(),
                used_key.as_deref(),
                key,
                now,
            ) {
                Ok(()) => {}
                Err(lifecycle::JoinRefusal::Expired) => {
                    return Err(StoreError::JoinTokenExpired(node_id));
                }
                Err(
                    lifecycle::JoinRefusal::Used
                    | lifecycle::JoinRefusal::UsedUp
                    | lifecycle::JoinRefusal::ClusterFull { .. },
                ) => {
                    return Err(StoreError::JoinTokenUsed(node_id));
                }
            }
            sqlx::query(
                "UPDATE nodes SET join_used_at = COALESCE(join_used_at, $1), join_key = $2 WHERE node_id = $3",
            )
            .bind(now)
            .bind(key)
            .bind(&node_id)
            .execute(&mut *tx)
            .await?;
            node_id
        }
        Enrolment::Node(node_id) => node_id.to_owned(),
    };
    let node = enrol_node(&mut tx, &node_id, session_token_hash, report, now).await?;
    tx.commit().await?;
    Ok(node)
}

/// The rest of an enrolment once the node is known, in the caller's
/// transaction: refused for a node that may not enrol, else the session
/// and the agent's report are recorded.
async fn enrol_node(
    tx: &mut AnyConnection,
    node_id: &str,
    session_token_hash: &str,
    report: &EnrollReport,
    now: i64,
) -> Result<NodeRecord, StoreError> {
    let node = load_node(tx, node_id).await?;
    let spec = load_cluster(tx, &node.cluster).await?.spec;
    let attached = spec.compute_type == strato_core::spec::ComputeType::Attached;
    // Where it serves SSH, only if its cluster enables SSH.
    let (ssh_address, ssh_port, ssh_host_key) = if spec.ssh.serves_ssh() {
        (
            report.ssh_address.as_str(),
            report.ssh_port,
            report.ssh_host_key.as_str(),
        )
    } else {
        ("", 0, "")
    };
    if !lifecycle::may_enrol(node.state, attached) {
        return Err(Conflict::NodeRetired {
            node: node_id.to_owned(),
            state: node.state,
            reason: node.reason,
        }
        .into());
    }
    let makes_idle =
        lifecycle::enrolment_makes_idle(node.enrolled, node.state, node.run_id.is_some(), attached);
    // A node the enrolment makes idle (new, back, woken) counts its
    // silence from now.
    let back = makes_idle;
    sqlx::query(
        "UPDATE nodes SET session_token_hash = $1, hostname = $2,
             last_heartbeat = CASE WHEN $8 THEN $3 ELSE COALESCE(last_heartbeat, $3) END,
             metrics_url = $5, gpus = $6, gpu_info = $7, private_ip = $9, port = $10,
             ssh_host_key = $11
         WHERE node_id = $4",
    )
    .bind(session_token_hash)
    .bind(&report.hostname)
    .bind(now)
    .bind(node_id)
    .bind(&report.metrics_url)
    .bind(i64::from(report.gpus))
    .bind(serde_json::to_string(&report.gpu_info).map_err(|e| corrupt("node gpu_info", e))?)
    .bind(back)
    .bind(ssh_address)
    .bind(i64::from(ssh_port))
    .bind(ssh_host_key)
    .execute(&mut *tx)
    .await?;
    if makes_idle {
        set_node_state(tx, node_id, NodeState::Idle, None, "", now).await?;
    }
    load_node(tx, node_id).await
}

pub(super) async fn create_join_token(
    db: &SqlStore,
    cluster: &str,
    token_hash: &str,
    uses: u32,
    expires_at: i64,
    created_by: &str,
    now: i64,
) -> Result<(), StoreError> {
    let mut tx = db.begin_write().await?;
    let cluster = load_cluster(&mut tx, cluster).await?.spec.name;
    sqlx::query("DELETE FROM cluster_join_tokens WHERE cluster = $1 AND expires_at <= $2")
        .bind(&cluster)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    let live: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM cluster_join_tokens WHERE cluster = $1 AND uses_left > 0",
    )
    .bind(&cluster)
    .fetch_one(&mut *tx)
    .await?;
    if live >= i64::from(crate::store::MAX_JOIN_TOKENS) {
        return Err(StoreError::TooManyJoinTokens {
            cluster,
            limit: crate::store::MAX_JOIN_TOKENS,
        });
    }
    sqlx::query(
        "INSERT INTO cluster_join_tokens (token_hash, cluster, uses_left, expires_at, created_at, created_by)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(token_hash)
    .bind(&cluster)
    .bind(i64::from(uses))
    .bind(expires_at)
    .bind(now)
    .bind(created_by)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn list_join_tokens(
    db: &SqlStore,
    cluster: &str,
) -> Result<Vec<JoinTokenRecord>, StoreError> {
    let mut conn = db.pool.acquire().await?;
    let cluster = load_cluster(&mut conn, cluster).await?.spec.name;
    type Row = (String, i64, i64, i64, String);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT token_hash, uses_left, expires_at, created_at, created_by FROM cluster_join_tokens
         WHERE cluster = $1 ORDER BY created_at DESC, token_hash",
    )
    .bind(&cluster)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(hash, uses_left, expires_at, created_at, created_by)| JoinTokenRecord {
                id: lifecycle::join_token_id(&hash),
                cluster: cluster.clone(),
                uses_left: u32::try_from(uses_left).unwrap_or(0),
                expires_at,
                created_at,
                created_by,
            },
        )
        .collect())
}

pub(super) async fn revoke_join_token(
    db: &SqlStore,
    cluster: &str,
    id: &str,
) -> Result<(), StoreError> {
    let mut tx = db.begin_write().await?;
    let cluster = load_cluster(&mut tx, cluster).await?.spec.name;
    let not_found = || StoreError::JoinTokenNotFound {
        cluster: cluster.clone(),
        id: id.to_owned(),
    };
    if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(StoreError::Spec(strato_core::SpecError::Invalid(
            strato_core::error::FieldError::new(
                "id",
                format!("a join token id is 16 hex digits (see `join-token list`); got {id:?}"),
            ),
        )));
    }
    let deleted = sqlx::query(
        "DELETE FROM cluster_join_tokens WHERE cluster = $1 AND substr(token_hash, 1, 16) = $2",
    )
    .bind(&cluster)
    .bind(id.to_ascii_lowercase())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if deleted == 0 {
        return Err(not_found());
    }
    tx.commit().await?;
    Ok(())
}

pub(super) async fn join(
    db: &SqlStore,
    Join {
        token: token_hash,
        key,
        new_node,
    }: Join<'_>,
    session_token_hash: &str,
    report: &EnrollReport,
    limits: &QuotaLimits,
    now: i64,
) -> Result<NodeRecord, StoreError> {
    // Anyone can present a token: an unknown one costs no write lock.
    let known: Option<i64> =
        sqlx::query_scalar("SELECT 1 FROM cluster_join_tokens WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_optional(&db.pool)
            .await?;
    if known.is_none() {
        return Err(StoreError::BadToken);
    }
    let mut tx = db.begin_write().await?;
    type Row = (String, i64, i64);
    let (cluster, uses_left, expires_at): Row = sqlx::query_as(
        "SELECT cluster, uses_left, expires_at FROM cluster_join_tokens WHERE token_hash = $1",
    )
    .bind(token_hash)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(StoreError::BadToken)?;
    // The same agent again (its first answer was lost): its own node.
    let again: Option<String> = if key.is_empty() {
        None
    } else {
        sqlx::query_scalar("SELECT node_id FROM nodes WHERE join_source = $1 AND join_key = $2")
            .bind(token_hash)
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?
    };
    let spec = load_cluster(&mut tx, &cluster).await?.spec;
    if spec.compute_type != strato_core::spec::ComputeType::Attached {
        return Err(StoreError::BadToken);
    }
    let joined = node_count(&mut tx, &spec.name).await?;
    lifecycle::cluster_token_takes(
        expires_at,
        u32::try_from(uses_left).unwrap_or(0),
        joined,
        spec.max_nodes,
        again.is_some(),
        now,
    )
    .map_err(|why| StoreError::JoinRefused {
        cluster: spec.name.clone(),
        why,
    })?;
    let node_id = match again {
        Some(node_id) => node_id,
        None => {
            more_fit(&mut tx, &spec, joined, 1, limits).await?;
            sqlx::query(
                "INSERT INTO nodes (node_id, cluster, state, reason, state_since, created_at, idle_since,
                                    join_source, join_key, join_used_at)
                 VALUES ($1, $2, 'preparing', 'joining', $3, $3, $3, $4, $5, $3)",
            )
            .bind(new_node)
            .bind(&spec.name)
            .bind(now)
            .bind(token_hash)
            .bind(key)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE cluster_join_tokens SET uses_left = uses_left - 1 WHERE token_hash = $1",
            )
            .bind(token_hash)
            .execute(&mut *tx)
            .await?;
            new_node.to_owned()
        }
    };
    let node = enrol_node(&mut tx, &node_id, session_token_hash, report, now).await?;
    tx.commit().await?;
    Ok(node)
}

pub(super) async fn power_step(
    db: &SqlStore,
    node_id: &str,
    step: lifecycle::PowerStep,
    reason: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let (from, to) = step.transition();
    let mut tx = db.begin_write().await?;
    let node = load_node(&mut tx, node_id).await?;
    if node.state != from || node.run_id.is_some() {
        return Ok(false);
    }
    set_node_state(&mut tx, node_id, to, None, reason, now).await?;
    tx.commit().await?;
    Ok(true)
}

pub(super) async fn detach_node(
    db: &SqlStore,
    node_id: &str,
    requeue: bool,
    now: i64,
) -> Result<(NodeRecord, Vec<(String, u32)>), StoreError> {
    let mut tx = db.begin_write().await?;
    let node = load_node(&mut tx, node_id).await?;
    let mut ended = Vec::new();
    if node.state != NodeState::Leaving {
        let why = lifecycle::detach_reason(requeue);
        let job = node.run_id.as_deref();
        set_node_state(&mut tx, node_id, NodeState::Leaving, job, why, now).await?;
    }
    // Also for a node already leaving: a drain may turn into a requeue.
    if requeue {
        let attempts: Vec<(String, i64)> = sqlx::query_as(
            "SELECT job_id, attempt FROM job_ranks WHERE node_id = $1 AND ended_at IS NULL",
        )
        .bind(node_id)
        .fetch_all(&mut *tx)
        .await?;
        let (end, why) = lifecycle::node_detached(node_id);
        end_ranks_on(&mut tx, node_id, end, &why, now).await?;
        ended = attempts
            .into_iter()
            .map(|(job, attempt)| (job, u32::try_from(attempt).unwrap_or(0)))
            .collect();
    }
    let node = load_node(&mut tx, node_id).await?;
    tx.commit().await?;
    Ok((node, ended))
}

pub(super) async fn node_by_session(
    db: &SqlStore,
    session_token_hash: &str,
) -> Result<NodeRecord, StoreError> {
    let mut conn = db.pool.acquire().await?;
    let row = select_one(
        &mut conn,
        NODE_COLUMNS,
        "nodes",
        "session_token_hash",
        session_token_hash,
    )
    .await?
    .ok_or(StoreError::BadToken)?;
    node_from_row(&row)
}

/// `v`, or 0 where it is not a number (a buggy agent's report must not
/// fail the write of every node's heartbeat).
fn finite(v: f64) -> f64 {
    if v.is_finite() { v } else { 0.0 }
}

/// A node's session began at `now`: written at once.
pub(super) async fn session_began(
    db: &SqlStore,
    node_id: &str,
    now: i64,
) -> Result<(), StoreError> {
    // Not fenced (any replica's session begins), but in this process's
    // turn like every write.
    let mut tx = db.begin_write_unfenced(super::Lane::InOrder).await?;
    sqlx::query("UPDATE nodes SET last_heartbeat = $1 WHERE node_id = $2")
        .bind(now)
        .bind(node_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Heartbeats written by one statement: 7 parameters each, well within
/// both databases' limits on parameters.
const BEATS_PER_STATEMENT: usize = 500;

/// Writes `beats` in one transaction, one statement per 500; returns the
/// nodes that are gone.
pub(super) async fn persist_heartbeats(
    db: &SqlStore,
    beats: &[(String, Beat)],
) -> Result<Vec<String>, StoreError> {
    let mut tx = db.begin_write().await?;
    let mut gone = Vec::new();
    for chunk in beats.chunks(BEATS_PER_STATEMENT) {
        // Both databases name a VALUES list's columns column1, column2...:
        // node, time, whether utilisation came, cpu, memory used, memory
        // total, gpu.
        let rows = values_from(
            1,
            chunk.len(),
            &[
                "TEXT",
                "BIGINT",
                "BIGINT",
                "DOUBLE PRECISION",
                "BIGINT",
                "BIGINT",
                "DOUBLE PRECISION",
            ],
        );
        // The later of the stored time and the beat's (a session's start
        // is written at once, and may be later); the utilisation only where
        // one came.
        let sql = format!(
            "UPDATE nodes SET
                 last_heartbeat = CASE WHEN nodes.last_heartbeat > v.column2
                     THEN nodes.last_heartbeat ELSE v.column2 END,
                 cpu_percent = CASE WHEN v.column3 = 1 THEN v.column4 ELSE nodes.cpu_percent END,
                 memory_used = CASE WHEN v.column3 = 1 THEN v.column5 ELSE nodes.memory_used END,
                 memory_total = CASE WHEN v.column3 = 1 THEN v.column6 ELSE nodes.memory_total END,
                 gpu_percent = CASE WHEN v.column3 = 1 THEN v.column7 ELSE nodes.gpu_percent END
             FROM (VALUES {}) AS v
             WHERE nodes.node_id = v.column1",
            rows
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (node_id, beat) in chunk {
            let usage = beat.usage.unwrap_or_default();
            query = query
                .bind(node_id)
                .bind(beat.at)
                .bind(i64::from(beat.usage.is_some()))
                .bind(finite(usage.cpu_percent))
                .bind(i64::try_from(usage.memory_used).unwrap_or(i64::MAX))
                .bind(i64::try_from(usage.memory_total).unwrap_or(i64::MAX))
                .bind(finite(usage.gpu_percent));
        }
        let updated = query.execute(&mut *tx).await?.rows_affected();
        if usize::try_from(updated).unwrap_or(usize::MAX) < chunk.len() {
            // Some are gone (removed since they beat): which.
            let ids: Vec<&str> = chunk.iter().map(|(id, _)| id.as_str()).collect();
            let present: std::collections::HashSet<String> =
                fetch_where_in(&mut tx, "SELECT node_id FROM nodes", "node_id", &ids, "")
                    .await?
                    .iter()
                    .map(|r| r.try_get("node_id"))
                    .collect::<Result<_, _>>()?;
            gone.extend(
                chunk
                    .iter()
                    .filter(|(id, _)| !present.contains(id))
                    .map(|(id, _)| id.clone()),
            );
        }
    }
    tx.commit().await?;
    Ok(gone)
}

pub(super) async fn node_unusable(
    db: &SqlStore,
    node_id: &str,
    reason: &str,
    now: i64,
) -> Result<Vec<String>, StoreError> {
    let mut tx = db.begin_write().await?;
    let node = load_node(&mut tx, node_id).await?;
    let (end, why) = lifecycle::node_lost(node_id, reason);
    // A draining machine that died: its job ends, it keeps leaving (and
    // goes at the next pass).
    if node.state == NodeState::Leaving {
        let jobs = end_ranks_on(&mut tx, node_id, end, &why, now).await?;
        set_node_state(
            &mut tx,
            node_id,
            NodeState::Leaving,
            None,
            &node.reason,
            now,
        )
        .await?;
        tx.commit().await?;
        return Ok(jobs);
    }
    // Read again here: a node that stopped being live since the caller
    // looked (suspended, say) keeps its state.
    if !strato_core::scale::is_live(node.state) {
        return Ok(Vec::new());
    }
    let jobs = end_ranks_on(&mut tx, node_id, end, &why, now).await?;
    set_node_state(&mut tx, node_id, NodeState::Unusable, None, reason, now).await?;
    tx.commit().await?;
    Ok(jobs)
}

pub(super) async fn node_preempted(
    db: &SqlStore,
    node_id: &str,
    evict_at: i64,
    reason: &str,
    now: i64,
) -> Result<(), StoreError> {
    let mut tx = db.begin_write().await?;
    let node = load_node(&mut tx, node_id).await?;
    if node.state == NodeState::Preempted {
        return Ok(());
    }
    set_node_state(
        &mut tx,
        node_id,
        NodeState::Preempted,
        node.run_id.as_deref(),
        reason,
        now,
    )
    .await?;
    sqlx::query("UPDATE nodes SET evict_at = $1 WHERE node_id = $2")
        .bind(evict_at)
        .bind(node_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn delete_node(db: &SqlStore, node_id: &str, now: i64) -> Result<(), StoreError> {
    let mut tx = db.begin_write().await?;
    let state = load_node(&mut tx, node_id).await.ok().map(|n| n.state);
    let (end, why) = lifecycle::node_removed(node_id, state);
    end_ranks_on(&mut tx, node_id, end, &why, now).await?;
    sqlx::query("DELETE FROM nodes WHERE node_id = $1")
        .bind(node_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn session_opened(
    db: &SqlStore,
    node_id: &str,
    replica: &str,
) -> Result<(), StoreError> {
    let mut tx = db.begin_write().await?;
    sqlx::query("UPDATE nodes SET session_replica = $1 WHERE node_id = $2")
        .bind(replica)
        .bind(node_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn session_closed(
    db: &SqlStore,
    node_id: &str,
    replica: &str,
) -> Result<(), StoreError> {
    let mut tx = db.begin_write().await?;
    sqlx::query(
        "UPDATE nodes SET session_replica = NULL WHERE node_id = $1 AND session_replica = $2",
    )
    .bind(node_id)
    .bind(replica)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn sessions_ended(db: &SqlStore, prefix: &str) -> Result<(), StoreError> {
    let mut tx = db.begin_write().await?;
    sqlx::query(
        "UPDATE nodes SET session_replica = NULL WHERE substr(session_replica, 1, CAST($1 AS INTEGER)) = $2",
    )
    .bind(i64::try_from(prefix.len()).unwrap_or(i64::MAX))
    .bind(prefix)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}
