//! Store records on the wire. The records are the control plane's own
//! types, so these stay here; every conversion of a `strato-core` type they
//! hold is in `strato_proto::convert`.

use strato_core::FieldError;
use strato_core::node::NodeStateCounts;
use strato_core::quota::LOW_PRIORITY;
use strato_core::spec::VmPriority;
use strato_proto::convert::{self, timestamp};
use strato_proto::v1;

use crate::app::ClusterView;
use crate::store::{DatastoreRecord, JobCursor, JobPage, JobRecord, LogRecord, NodeRecord};
use crate::tokens::IssuedToken;

/// A stored cluster with what its nodes say about it.
pub fn cluster(view: &ClusterView) -> v1::Cluster {
    let record = &view.record;
    let s = &record.spec;
    let counts = NodeStateCounts::from_states(view.nodes.iter().map(|n| n.state));
    let size = s.size().ok();
    v1::Cluster {
        spec: Some(convert::cluster_spec(s)),
        allocation_state: convert::allocation_state(record.allocation_state) as i32,
        allocation_state_transition_time: Some(timestamp(record.allocation_since)),
        current_node_count: counts.idle + counts.preparing + counts.running,
        target_node_count: record.target_nodes,
        node_state_counts: Some(convert::node_state_counts(counts)),
        errors: record
            .errors
            .iter()
            .map(|e| v1::ClusterError {
                code: e.code.clone(),
                message: e.message.clone(),
                since: Some(timestamp(e.since)),
            })
            .collect(),
        quota_family: match s.vm_priority {
            VmPriority::Dedicated => size.as_ref().map(|z| z.family.clone()).unwrap_or_default(),
            VmPriority::LowPriority => LOW_PRIORITY.to_owned(),
        },
        vcpus_per_node: size.map_or(0, |z| z.vcpus),
        admin_password_set: s.ssh.has_password(),
        created_at: Some(timestamp(record.created_at)),
        updated_at: Some(timestamp(record.updated_at)),
        identities: convert::managed_identities(&record.identities),
    }
}

/// A stored node on the wire.
pub fn node(n: NodeRecord) -> v1::Node {
    v1::Node {
        node_id: n.node_id,
        cluster: n.cluster,
        state: convert::node_state(n.state) as i32,
        private_ip: n.private_ip,
        port: u32::from(n.port),
        run_id: n.run_id.unwrap_or_default(),
        reason: n.reason,
        state_since: Some(timestamp(n.state_since)),
        created_at: Some(timestamp(n.created_at)),
        metrics_url: n.metrics_url,
        cpu_percent: n.usage.cpu_percent,
        memory_used_bytes: n.usage.memory_used,
        memory_total_bytes: n.usage.memory_total,
        gpu_percent: n.usage.gpu_percent,
        gpus: n.gpus,
        gpu_info: n.gpu_info.into_iter().map(convert::gpu_info).collect(),
        ssh_host_key: n.ssh_host_key,
    }
}

pub fn job(j: &JobRecord) -> v1::Job {
    v1::Job {
        id: j.id.clone(),
        spec: Some(convert::job_spec(&j.spec)),
        state: convert::job_state(j.state) as i32,
        attempt: j.attempt,
        exit_code: convert::exit_code(j.exit_code),
        transitions: j
            .transitions
            .iter()
            .map(|t| v1::JobTransition {
                state: convert::job_state(t.state) as i32,
                reason: t.reason.clone(),
                at: Some(timestamp(t.at)),
            })
            .collect(),
        created_at: Some(timestamp(j.created_at)),
        node_id: j.node_id.clone().unwrap_or_default(),
        reason: j.reason.clone(),
        submitted_by: j.submitted_by.clone(),
        attempts: j
            .attempts
            .iter()
            .map(|a| v1::JobAttempt {
                attempt: a.attempt,
                node_id: a.node_id.clone(),
                started_at: Some(timestamp(a.started_at)),
                ended_at: a.ended_at.map(timestamp),
                reason: a.reason.clone(),
                exit_code: convert::exit_code(a.exit_code),
                node_ids: a.node_ids.clone(),
            })
            .collect(),
    }
}

pub fn log_line(l: LogRecord) -> v1::LogLine {
    v1::LogLine {
        attempt: l.attempt,
        stream: if l.stream == 2 {
            v1::LogStream::Stderr
        } else {
            v1::LogStream::Stdout
        } as i32,
        line: l.line,
        at: Some(timestamp(l.at)),
        seq: l.seq,
        rank: l.rank,
        pos: u64::try_from(l.pos).unwrap_or(0),
    }
}

/// A registry as callers see it: never its password.
pub fn registry(r: crate::store::RegistryRecord) -> v1::Registry {
    v1::Registry {
        name: r.name,
        server: r.server,
        username: r.username,
        created_at: Some(timestamp(r.created_at)),
        identity: r.identity,
        clusters: r.clusters,
    }
}

pub fn datastore(d: DatastoreRecord) -> v1::Datastore {
    v1::Datastore {
        name: d.name,
        account_url: d.account_url,
        container: d.container,
        created_at: Some(timestamp(d.created_at)),
    }
}

pub fn access_token(t: IssuedToken) -> v1::AccessToken {
    v1::AccessToken {
        access_token: t.access_token,
        expires_on: t.expires_on,
        not_before: t.not_before,
        resource: t.resource,
        token_type: "Bearer".into(),
        client_id: t.client_id,
    }
}

/// Jobs per page when the caller names no page size, and the most a caller
/// may ask for.
pub const DEFAULT_JOB_PAGE: u32 = 100;
pub const MAX_JOB_PAGE: u32 = 1_000;
/// The most bytes of jobs in one page, well below gRPC's 4 MiB.
pub const MAX_JOB_PAGE_BYTES: usize = 3 * 1024 * 1024;

/// The page a `ListJobs` request asks for.
pub fn job_page(page_size: u32, page_token: &str) -> Result<JobPage, FieldError> {
    if page_size > MAX_JOB_PAGE {
        return Err(FieldError::new(
            "page_size",
            format!("must be at most {MAX_JOB_PAGE}"),
        ));
    }
    let limit = if page_size == 0 {
        DEFAULT_JOB_PAGE
    } else {
        page_size
    };
    let after = if page_token.is_empty() {
        None
    } else {
        let parsed = page_token
            .strip_prefix("j1.")
            .and_then(|t| t.split_once('.'))
            .and_then(|(c, p)| Some((c.parse().ok()?, p.parse().ok()?)));
        match parsed {
            Some((created_at, position)) => Some(JobCursor {
                created_at,
                position,
            }),
            None => {
                return Err(FieldError::new(
                    "page_token",
                    "is not a next_page_token from a ListJobs response",
                ));
            }
        }
    };
    Ok(JobPage { after, limit })
}

/// The token for the page after `cursor`.
pub fn job_page_token(cursor: JobCursor) -> String {
    format!("j1.{}.{}", cursor.created_at, cursor.position)
}
