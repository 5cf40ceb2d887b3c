//! Jobs, their data and their logs on the wire, and the token request's
//! identity selector.

use strato_core::error::FieldError;
use strato_core::identity::IdentitySelector;
use strato_core::job::{DataBinding, DataSide, Distribution, JobSpec, JobState, PullPolicy};
use strato_core::job_request::{DataRequest, JobRequest};

use crate::v1;

pub fn job_state(s: JobState) -> v1::JobState {
    match s {
        JobState::Queued => v1::JobState::Queued,
        JobState::Preparing => v1::JobState::Preparing,
        JobState::Running => v1::JobState::Running,
        JobState::Completed => v1::JobState::Completed,
        JobState::Failed => v1::JobState::Failed,
        JobState::Canceled => v1::JobState::Canceled,
        JobState::Preempted => v1::JobState::Preempted,
    }
}

pub fn distribution(d: Distribution) -> v1::Distribution {
    match d {
        Distribution::None => v1::Distribution::None,
        Distribution::Mpi => v1::Distribution::Mpi,
        Distribution::Pytorch => v1::Distribution::Pytorch,
    }
}

/// A stored job spec on the wire, its data with the locations they were
/// resolved to.
pub fn job_spec(spec: &JobSpec) -> v1::JobSpec {
    v1::JobSpec {
        cluster: spec.cluster.clone(),
        display_name: spec.display_name.clone(),
        image: spec.image.clone(),
        command: spec.command.clone(),
        environment: spec
            .environment
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        resources: Some(v1::JobResources {
            cpu: spec.cpu,
            memory_mb: spec.memory_mb,
            gpus: 0,
        }),
        node_count: spec.node_count,
        process_count_per_node: spec.process_count_per_node,
        distribution: distribution(spec.distribution) as i32,
        max_retries: spec.max_retries,
        max_preemptions: Some(spec.max_preemptions),
        inputs: spec
            .inputs
            .iter()
            .map(|d| job_data(d, DataSide::Input))
            .collect(),
        outputs: spec
            .outputs
            .iter()
            .map(|d| job_data(d, DataSide::Output))
            .collect(),
        user: spec.user.clone(),
        pull: match spec.pull {
            PullPolicy::IfNotPresent => v1::PullPolicy::IfNotPresent,
            PullPolicy::Always => v1::PullPolicy::Always,
        } as i32,
        experiment_name: spec.experiment_name.clone(),
        description: spec.description.clone(),
        tags: spec
            .tags
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        timeout_seconds: spec.timeout_seconds,
        code: spec.code.as_ref().map(|d| job_data(d, DataSide::Input)),
        artifacts: spec
            .artifacts
            .as_ref()
            .map(|d| job_data(d, DataSide::Output)),
    }
}

fn job_data(d: &DataBinding, side: DataSide) -> v1::JobData {
    v1::JobData {
        name: d.name.clone(),
        uri: format!("azureml://datastores/{}/paths/{}", d.datastore, d.path),
        mode: d.mode.as_str(side).to_owned(),
        account_url: d.account_url.clone(),
        container: d.container.clone(),
        path: d.path.clone(),
        digest: d.digest.clone(),
    }
}

/// A submitted wire spec as a request. Fails only on an unknown enum value.
pub fn job_request(wire: v1::JobSpec) -> Result<JobRequest, FieldError> {
    let distribution = match v1::Distribution::try_from(wire.distribution) {
        Ok(v1::Distribution::Unspecified) => None,
        Ok(v1::Distribution::None) => Some(Distribution::None),
        Ok(v1::Distribution::Mpi) => Some(Distribution::Mpi),
        Ok(v1::Distribution::Pytorch) => Some(Distribution::Pytorch),
        Err(_) => {
            return Err(FieldError::new(
                "distribution",
                format!("{} is not one of none, mpi, pytorch", wire.distribution),
            ));
        }
    };
    let pull = match v1::PullPolicy::try_from(wire.pull) {
        Ok(v1::PullPolicy::Unspecified | v1::PullPolicy::IfNotPresent) => PullPolicy::IfNotPresent,
        Ok(v1::PullPolicy::Always) => PullPolicy::Always,
        Err(_) => {
            return Err(FieldError::new(
                "pull",
                format!("{} is not one of if-not-present, always", wire.pull),
            ));
        }
    };
    let resources = wire.resources.unwrap_or_default();
    let data = |list: Vec<v1::JobData>| {
        list.into_iter()
            .map(|d| DataRequest {
                name: d.name,
                uri: d.uri,
                mode: d.mode,
            })
            .collect()
    };
    Ok(JobRequest {
        cluster: wire.cluster,
        display_name: wire.display_name,
        image: wire.image,
        command: wire.command,
        environment: wire.environment.into_iter().collect(),
        cpu: resources.cpu,
        memory_mb: resources.memory_mb,
        gpus: resources.gpus,
        node_count: wire.node_count,
        process_count_per_node: wire.process_count_per_node,
        distribution,
        max_retries: wire.max_retries,
        max_preemptions: wire.max_preemptions,
        inputs: data(wire.inputs),
        outputs: data(wire.outputs),
        user: wire.user,
        pull,
        experiment_name: wire.experiment_name,
        description: wire.description,
        tags: wire.tags.into_iter().collect(),
        timeout_seconds: wire.timeout_seconds,
        code_digest: wire
            .code
            .as_ref()
            .map(|c| c.digest.clone())
            .unwrap_or_default(),
        code: wire.code.map(|c| c.uri).unwrap_or_default(),
    })
}

/// An exit code on the wire (out of range: `i32::MIN`).
pub fn exit_code(c: Option<i64>) -> Option<i32> {
    c.map(|c| i32::try_from(c).unwrap_or(i32::MIN))
}

/// Which identity a token request names: client id, else principal id, else
/// resource id, else the default.
pub fn identity_selector(r: &v1::GetTokenRequest) -> IdentitySelector {
    if !r.client_id.is_empty() {
        IdentitySelector::ClientId(r.client_id.clone())
    } else if !r.principal_id.is_empty() {
        IdentitySelector::PrincipalId(r.principal_id.clone())
    } else if !r.mi_res_id.is_empty() {
        IdentitySelector::ResourceId(r.mi_res_id.clone())
    } else {
        IdentitySelector::Default
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_distribution_names_the_field() {
        let wire = v1::JobSpec {
            distribution: 42,
            ..Default::default()
        };
        let e = job_request(wire).expect_err("bad enum");
        assert_eq!(e.field, "distribution");
    }

    #[test]
    fn unset_fields_stay_unset() {
        let r = job_request(v1::JobSpec::default()).expect("converts");
        assert_eq!((r.distribution, r.max_preemptions), (None, None));
    }

    #[test]
    fn exit_codes_out_of_range_are_marked() {
        assert_eq!(exit_code(Some(1 << 40)), Some(i32::MIN));
        assert_eq!(exit_code(Some(3)), Some(3));
    }
}
