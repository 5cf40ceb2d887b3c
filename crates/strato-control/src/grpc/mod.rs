//! The gRPC services, thin adapters over the use cases in `app`: each
//! handler converts the request (`strato_proto::convert`), calls its use
//! case and converts the answer back (`convert` here for store records).
//! [`status`] is the one mapping of errors to status codes.
//!
//! `AgentService` stays in `crate::agents` for now.

pub mod access;
pub mod auth;
pub mod compute;
pub mod convert;
pub mod datastores;
pub mod identity;
pub mod jobs;
pub mod registries;

use tonic::Status;

use crate::app::AppError;
use crate::store::StoreError;

pub use access::AccessApi;
pub use compute::ComputeApi;
pub use datastores::DatastoreApi;
pub use identity::IdentityApi;
pub use jobs::JobApi;
pub use registries::RegistryApi;

/// The status a caller sees for an error. Codes say whose fault it was:
/// only the server's own faults become INTERNAL, and those are logged.
pub fn status(e: AppError) -> Status {
    let message = e.to_string();
    match e {
        AppError::InvalidArgument(_) => Status::invalid_argument(message),
        AppError::NotFound(_) => Status::not_found(message),
        AppError::AlreadyExists(_) => Status::already_exists(message),
        AppError::FailedPrecondition(_) => Status::failed_precondition(message),
        AppError::ResourceExhausted(_) | AppError::TooManyFollowers { .. } => {
            Status::resource_exhausted(message)
        }
        AppError::RateLimited { retry_after_ms, .. } => {
            let mut status = Status::resource_exhausted(message);
            if let Ok(v) = retry_after_ms.to_string().parse() {
                status.metadata_mut().insert("retry-after-ms", v);
            }
            status
        }
        AppError::Unauthenticated(_) => Status::unauthenticated(message),
        AppError::PermissionDenied(_) => Status::permission_denied(message),
        AppError::Unavailable(_) => Status::unavailable(message),
        AppError::Internal(_) => {
            tracing::error!(error = %message, "internal failure");
            Status::internal(message)
        }
    }
}

/// A store error's status, through [`AppError`] (for the agent service,
/// which calls the store itself).
pub fn store_status(e: StoreError) -> Status {
    status(e.into())
}

/// A use case's answer as a response, its error as a status.
fn respond<T, U>(
    result: Result<T, AppError>,
    wire: impl FnOnce(T) -> U,
) -> Result<tonic::Response<U>, Status> {
    result
        .map(|t| tonic::Response::new(wire(t)))
        .map_err(status)
}

#[cfg(test)]
mod tests {
    use strato_core::quota::QuotaError;
    use strato_core::{FieldError, SpecError};
    use tonic::Code;

    use super::*;
    use crate::app::{NotFound, Precondition};
    use crate::federation::FederationError;
    use crate::store::Conflict;

    fn code_and_message(e: impl Into<AppError>) -> (Code, String) {
        let s = status(e.into());
        (s.code(), s.message().to_owned())
    }

    #[test]
    fn store_errors_keep_their_codes_and_messages() {
        let cases = [
            (
                StoreError::ClusterNotFound("c".into()),
                Code::NotFound,
                "cluster \"c\" not found",
            ),
            (
                StoreError::DatastoreExists("d".into()),
                Code::AlreadyExists,
                "a datastore named \"d\" already exists",
            ),
            (
                StoreError::BadToken,
                Code::Unauthenticated,
                "join or session token not recognised",
            ),
            (
                StoreError::Spec(SpecError::Invalid(FieldError::new("max_nodes", "too big"))),
                Code::InvalidArgument,
                "max_nodes: too big",
            ),
            (
                StoreError::Conflict(Conflict::MaxNodesBelowGang {
                    job: "j".into(),
                    needs: 3,
                }),
                Code::FailedPrecondition,
                "max_nodes: job j needs 3 nodes at once; cancel it or keep max_nodes at 3 or more",
            ),
            (
                StoreError::Quota(QuotaError::Clusters {
                    region: "local".into(),
                    limit: 1,
                    in_use: 1,
                }),
                Code::ResourceExhausted,
                "quota exceeded: region local allows 1 clusters and 1 exist; delete one or raise max_clusters",
            ),
            (
                StoreError::Corrupt("bad row".into()),
                Code::Internal,
                "store failure: stored record is unreadable: bad row",
            ),
        ];
        for (e, code, message) in cases {
            assert_eq!(code_and_message(e), (code, message.to_owned()));
        }
    }

    #[test]
    fn use_case_refusals_say_whose_fault() {
        assert_eq!(
            code_and_message(AppError::NotFound(NotFound::NodeOfCluster {
                node: "n1".into(),
                cluster: "c".into(),
            })),
            (Code::NotFound, "node \"n1\" is not in cluster c".to_owned())
        );
        assert_eq!(
            code_and_message(Precondition::NoScheduledEvents).0,
            Code::FailedPrecondition
        );
        assert_eq!(
            code_and_message(FederationError::Exchange("down".into())),
            (Code::Unavailable, "Entra ID: down".to_owned())
        );
        assert_eq!(
            code_and_message(FederationError::NotFederated("no".into())),
            (Code::FailedPrecondition, "no".to_owned())
        );
        assert_eq!(
            code_and_message(FederationError::Setup("key".into())),
            (Code::Internal, "key".to_owned())
        );
    }
}
