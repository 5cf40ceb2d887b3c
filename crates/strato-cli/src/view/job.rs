//! `strato job submit|show|list|cancel|wait`: one job as KEY/VALUE rows with
//! a section for its attempts, or a list with a row per job.

use std::collections::BTreeMap;

use serde::Serialize;
use strato_proto::v1;

use super::{Render, Table, or_dash, ts};

/// A job state as printed: lowercase, as in `queued`.
pub fn job_state(state: i32) -> &'static str {
    match v1::JobState::try_from(state) {
        Ok(v1::JobState::Queued) => "queued",
        Ok(v1::JobState::Preparing) => "preparing",
        Ok(v1::JobState::Running) => "running",
        Ok(v1::JobState::Completed) => "completed",
        Ok(v1::JobState::Failed) => "failed",
        Ok(v1::JobState::Canceled) => "canceled",
        Ok(v1::JobState::Preempted) => "preempted",
        _ => "unknown",
    }
}

/// A command line as a person would type it: arguments with spaces, quotes
/// or shell characters in single quotes.
pub fn shell_join(args: &[String]) -> String {
    let plain = |a: &str| {
        !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+%^".contains(c))
    };
    args.iter()
        .map(|a| {
            if plain(a) {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn exit_cell(code: Option<i32>) -> String {
    code.map_or_else(|| "-".into(), |c| c.to_string())
}

#[derive(Debug, Serialize)]
pub struct JobTransitionView {
    pub state: &'static str,
    pub reason: String,
    pub at: String,
}

#[derive(Debug, Serialize)]
pub struct JobAttemptView {
    pub attempt: u32,
    pub node_id: String,
    /// Every node of the attempt by rank (rank 0 is `node_id`).
    pub node_ids: Vec<String>,
    pub started_at: String,
    pub ended_at: String,
    pub reason: String,
    pub exit_code: Option<i32>,
}

/// A job's input or output, as `az ml job show` keys it: its datastore
/// path and how the node gives it to the job.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct DataView {
    pub path: String,
    pub mode: String,
}

fn data_views(list: Vec<v1::JobData>) -> BTreeMap<String, DataView> {
    list.into_iter()
        .map(|d| {
            (
                d.name,
                DataView {
                    path: d.uri,
                    mode: d.mode,
                },
            )
        })
        .collect()
}

fn data_cell(list: &BTreeMap<String, DataView>) -> String {
    list.iter()
        .map(|(name, d)| format!("{name}={} ({})", d.path, d.mode))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `job show -o json`: one object per job.
#[derive(Debug, Serialize)]
pub struct JobView {
    pub id: String,
    pub name: String,
    pub cluster: String,
    pub image: String,
    pub command: Vec<String>,
    pub environment: BTreeMap<String, String>,
    pub state: &'static str,
    pub reason: String,
    pub attempt: u32,
    pub node_id: String,
    pub exit_code: Option<i32>,
    pub max_retries: u32,
    pub node_count: u32,
    pub process_count_per_node: u32,
    pub distribution: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub experiment_name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// `limits.timeout`, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, DataView>,
    /// Where each output is written, paths without one in the default
    /// datastore included.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, DataView>,
    /// The uploaded code folder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Where the code folder's `./outputs` go after the job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<String>,
    pub created_at: String,
    /// Who submitted it.
    pub submitted_by: String,
    pub transitions: Vec<JobTransitionView>,
    pub attempts: Vec<JobAttemptView>,
}

impl From<v1::Job> for JobView {
    fn from(j: v1::Job) -> Self {
        let s = j.spec.unwrap_or_default();
        JobView {
            id: j.id,
            name: s.display_name,
            experiment_name: s.experiment_name,
            description: s.description,
            tags: s.tags.into_iter().collect(),
            timeout_seconds: s.timeout_seconds,
            inputs: data_views(s.inputs),
            outputs: data_views(s.outputs),
            code: s.code.map(|c| c.uri),
            artifacts: s.artifacts.map(|a| a.uri),
            cluster: s.cluster,
            image: s.image,
            command: s.command,
            environment: s.environment.into_iter().collect(),
            state: job_state(j.state),
            reason: j.reason,
            attempt: j.attempt,
            node_id: j.node_id,
            submitted_by: j.submitted_by,
            exit_code: j.exit_code,
            max_retries: s.max_retries,
            node_count: s.node_count.max(1),
            process_count_per_node: s.process_count_per_node.max(1),
            distribution: match v1::Distribution::try_from(s.distribution) {
                Ok(v1::Distribution::Mpi) => "mpi",
                Ok(v1::Distribution::Pytorch) => "pytorch",
                _ => "none",
            },
            created_at: ts(j.created_at.as_ref()),
            transitions: j
                .transitions
                .into_iter()
                .map(|t| JobTransitionView {
                    state: job_state(t.state),
                    reason: t.reason,
                    at: ts(t.at.as_ref()),
                })
                .collect(),
            attempts: j
                .attempts
                .into_iter()
                .map(|a| JobAttemptView {
                    attempt: a.attempt,
                    node_id: a.node_id,
                    node_ids: a.node_ids,
                    started_at: ts(a.started_at.as_ref()),
                    ended_at: ts(a.ended_at.as_ref()),
                    reason: a.reason,
                    exit_code: a.exit_code,
                })
                .collect(),
        }
    }
}

impl Render for JobView {
    fn table(&self) -> Table {
        let mut pairs = vec![
            ("id", self.id.clone()),
            ("name", or_dash(&self.name)),
            ("cluster", self.cluster.clone()),
            ("image", self.image.clone()),
            ("command", shell_join(&self.command)),
        ];
        if !self.environment.is_empty() {
            let env: Vec<String> = self
                .environment
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            pairs.push(("environment", env.join(", ")));
        }
        pairs.extend([
            ("state", self.state.to_owned()),
            ("reason", or_dash(&self.reason)),
            ("attempt", self.attempt.to_string()),
            ("max_retries", self.max_retries.to_string()),
        ]);
        if self.node_count > 1 || self.distribution != "none" {
            pairs.push((
                "nodes",
                format!(
                    "{} x {} process(es), {}",
                    self.node_count, self.process_count_per_node, self.distribution
                ),
            ));
        }
        if let Some(code) = &self.code {
            pairs.push(("code", code.clone()));
        }
        if !self.inputs.is_empty() {
            pairs.push(("inputs", data_cell(&self.inputs)));
        }
        if !self.outputs.is_empty() {
            pairs.push(("outputs", data_cell(&self.outputs)));
        }
        if let Some(artifacts) = &self.artifacts {
            pairs.push(("artifacts", artifacts.clone()));
        }
        pairs.extend([
            ("node", or_dash(&self.node_id)),
            ("exit_code", exit_cell(self.exit_code)),
            ("created_at", self.created_at.clone()),
            ("submitter", or_dash(&self.submitted_by)),
        ]);
        let mut t = Table::properties(pairs);
        if !self.attempts.is_empty() {
            let mut attempts = Table::new(&[
                "ATTEMPT",
                "NODE_ID",
                "STARTED_AT",
                "ENDED_AT",
                "EXIT_CODE",
                "REASON",
            ]);
            for a in &self.attempts {
                attempts.row(vec![
                    a.attempt.to_string(),
                    if a.node_ids.len() > 1 {
                        a.node_ids.join(",")
                    } else {
                        or_dash(&a.node_id)
                    },
                    or_dash(&a.started_at),
                    or_dash(&a.ended_at),
                    exit_cell(a.exit_code),
                    or_dash(&a.reason),
                ]);
            }
            t.section(attempts);
        }
        t
    }
}

impl Render for Vec<JobView> {
    fn table(&self) -> Table {
        let mut t = Table::new(&[
            "ID", "NAME", "CLUSTER", "STATE", "ATTEMPT", "NODE", "EXIT", "CREATED",
        ]);
        for j in self {
            t.row(vec![
                j.id.clone(),
                or_dash(&j.name),
                j.cluster.clone(),
                j.state.to_owned(),
                j.attempt.to_string(),
                or_dash(&j.node_id),
                exit_cell(j.exit_code),
                j.created_at.clone(),
            ]);
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_job() -> v1::Job {
        let t = |seconds| Some(prost_types::Timestamp { seconds, nanos: 0 });
        v1::Job {
            id: "j-1".into(),
            submitted_by: "token:alice".into(),
            spec: Some(v1::JobSpec {
                cluster: "cpu".into(),
                display_name: "train".into(),
                image: "python:3.12".into(),
                command: vec!["python".into(), "-c".into(), "print('hi there')".into()],
                environment: [("A".to_owned(), "1".to_owned())].into(),
                max_retries: 1,
                ..Default::default()
            }),
            state: v1::JobState::Failed as i32,
            attempt: 2,
            exit_code: Some(3),
            transitions: vec![v1::JobTransition {
                state: v1::JobState::Queued as i32,
                reason: "submitted".into(),
                at: t(0),
            }],
            created_at: t(0),
            node_id: "node-a".into(),
            reason: "exited with 3".into(),
            attempts: vec![
                v1::JobAttempt {
                    attempt: 1,
                    node_id: "node-b".into(),
                    started_at: t(1),
                    ended_at: t(2),
                    reason: "node lost".into(),
                    exit_code: None,
                    node_ids: vec!["node-b".into()],
                },
                v1::JobAttempt {
                    attempt: 2,
                    node_id: "node-a".into(),
                    started_at: t(3),
                    ended_at: t(4),
                    reason: "exited with 3".into(),
                    exit_code: Some(3),
                    node_ids: vec!["node-a".into()],
                },
            ],
        }
    }

    #[test]
    fn job_json_has_the_documented_keys() {
        let json = serde_json::to_value(JobView::from(sample_job())).expect("serialises");
        let keys: Vec<&str> = json
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        let mut expected = vec![
            "id",
            "name",
            "cluster",
            "image",
            "command",
            "environment",
            "state",
            "reason",
            "attempt",
            "node_id",
            "exit_code",
            "max_retries",
            "node_count",
            "process_count_per_node",
            "distribution",
            "created_at",
            "submitted_by",
            "transitions",
            "attempts",
        ];
        expected.sort_unstable();
        assert_eq!(keys, expected);
        assert_eq!(json["state"], "failed");
        assert_eq!(json["name"], "train");
        assert_eq!(json["exit_code"], 3);
        assert_eq!(json["created_at"], "1970-01-01T00:00:00Z");
        assert_eq!(json["environment"]["A"], "1");
        assert_eq!(json["command"][2], "print('hi there')");
        let transition = &json["transitions"][0];
        for key in ["state", "reason", "at"] {
            assert!(transition.get(key).is_some(), "transitions.{key} missing");
        }
        assert_eq!(transition["state"], "queued");
        let attempt = &json["attempts"][0];
        for key in [
            "attempt",
            "node_id",
            "node_ids",
            "started_at",
            "ended_at",
            "reason",
            "exit_code",
        ] {
            assert!(attempt.get(key).is_some(), "attempts.{key} missing");
        }
        assert!(attempt["exit_code"].is_null());
        assert_eq!(json["attempts"][1]["exit_code"], 3);

        let empty = serde_json::to_value(JobView::from(v1::Job::default())).expect("serialises");
        assert!(empty["exit_code"].is_null());
    }

    #[test]
    fn job_states_print_lowercase() {
        use v1::JobState::*;
        let names: Vec<&str> = [
            Queued, Preparing, Running, Completed, Failed, Canceled, Preempted,
        ]
        .into_iter()
        .map(|s| job_state(s as i32))
        .collect();
        assert_eq!(
            names,
            [
                "queued",
                "preparing",
                "running",
                "completed",
                "failed",
                "canceled",
                "preempted"
            ]
        );
    }

    fn table_text(value: &impl Render) -> String {
        let mut out = Vec::new();
        value.table().write(&mut out).expect("writes");
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn job_show_table_lists_the_attempts() {
        let text = table_text(&JobView::from(sample_job()));
        for line in [
            "id           j-1",
            "command      python -c 'print('\\''hi there'\\'')'",
            "state        failed",
            "reason       exited with 3",
            "attempt      2",
            "node         node-a",
            "exit_code    3",
            "created_at   1970-01-01T00:00:00Z",
            "",
            "ATTEMPT  NODE_ID  STARTED_AT            ENDED_AT              EXIT_CODE  REASON",
            "1        node-b   1970-01-01T00:00:01Z  1970-01-01T00:00:02Z  -          node lost",
            "2        node-a   1970-01-01T00:00:03Z  1970-01-01T00:00:04Z  3          exited with 3",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in\n{text}");
        }
    }

    #[test]
    fn job_list_table_columns() {
        let text = table_text(&vec![JobView::from(sample_job())]);
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("ID   NAME   CLUSTER  STATE   ATTEMPT  NODE    EXIT  CREATED")
        );
        assert_eq!(
            lines.next(),
            Some("j-1  train  cpu      failed  2        node-a  3     1970-01-01T00:00:00Z")
        );
    }
}
