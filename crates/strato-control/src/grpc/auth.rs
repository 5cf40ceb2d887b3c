//! Who may call which method: the one table of every RPC's rule, and the
//! layer that enforces it before any handler runs.
//!
//! A user method ([`Rule::User`]) needs a bearer token, authenticated here
//! into the [`Caller`] its handler finds in the request's extensions, and a
//! role that allows the method's action at some scope (so a caller without
//! it learns nothing, not even whether what it named exists); the use case
//! then checks the action at the scope it acts on. A method missing from the table is refused: a new RPC without a
//! rule cannot be called (and `every_method_has_a_rule` fails first).

use std::sync::Arc;

use tonic::Status;
use tonic::codegen::http;

use crate::app::{Access, Action, Caller, authorize_anywhere};
use crate::store::Store;

/// What a method needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Anyone: health checks and server reflection.
    Public,
    /// A node's agent: the agent-only services, which check the agent's
    /// own credentials (join token, client certificate, session token).
    Agent,
    /// A user with the role for this action.
    User(Action),
}

/// The rule of a method, by its gRPC path (`/package.Service/Method`).
pub fn rule(path: &str) -> Option<Rule> {
    use Action::*;
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    let user = |a| Some(Rule::User(a));
    match (service, method) {
        ("grpc.health.v1.Health", _)
        | ("grpc.reflection.v1.ServerReflection", _)
        | ("grpc.reflection.v1alpha.ServerReflection", _) => Some(Rule::Public),
        ("strato.v1.AgentService", "Enroll" | "Session" | "RenewCertificate")
        | ("strato.v1.IdentityService", "GetToken") => Some(Rule::Agent),
        ("strato.v1.ComputeService", m) => match m {
            "CreateCluster" => user(CreateCluster),
            "GetCluster" => user(GetCluster),
            "ListClusters" => user(ListClusters),
            "UpdateCluster" => user(UpdateCluster),
            "DeleteCluster" => user(DeleteCluster),
            "ListNodes" => user(ListNodes),
            "ListSizes" => user(ListSizes),
            "ListUsage" => user(ListUsage),
            "AssignIdentity" => user(AssignIdentity),
            "RemoveIdentity" => user(RemoveIdentity),
            "SimulateEviction" => user(SimulateEviction),
            "CreateJoinToken" => user(CreateJoinToken),
            "ListJoinTokens" => user(ListJoinTokens),
            "RevokeJoinToken" => user(RevokeJoinToken),
            "DetachNode" => user(DetachNode),
            _ => None,
        },
        ("strato.v1.JobService", m) => match m {
            "SubmitJob" => user(SubmitJob),
            "GetJob" => user(GetJob),
            "ListJobs" => user(ListJobs),
            "CancelJob" => user(CancelJob),
            "DeleteJob" => user(DeleteJob),
            "StreamLogs" => user(StreamLogs),
            "WaitJob" => user(WaitJob),
            // Checked again on the cluster the first chunk names.
            "UploadCode" => user(SubmitJob),
            "DownloadOutputs" => user(ReadOutputs),
            _ => None,
        },
        ("strato.v1.DatastoreService", m) => match m {
            "CreateDatastore" => user(CreateDatastore),
            "GetDatastore" => user(GetDatastore),
            "ListDatastores" => user(ListDatastores),
            "DeleteDatastore" => user(DeleteDatastore),
            _ => None,
        },
        ("strato.v1.RegistryService", m) => match m {
            "CreateRegistry" => user(CreateRegistry),
            "GetRegistry" => user(GetRegistry),
            "ListRegistries" => user(ListRegistries),
            "DeleteRegistry" => user(DeleteRegistry),
            _ => None,
        },
        ("strato.v1.AccessService", m) => match m {
            "CreateToken" => user(CreateToken),
            "ListTokens" => user(ListTokens),
            "RevokeToken" => user(RevokeToken),
            "CreateRoleAssignment" => user(CreateRoleAssignment),
            "ListRoleAssignments" => user(ListRoleAssignments),
            "DeleteRoleAssignment" => user(DeleteRoleAssignment),
            "WhoAmI" => user(WhoAmI),
            _ => None,
        },
        _ => None,
    }
}

/// The caller the layer authenticated, for a handler.
pub fn caller<T>(request: &tonic::Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("this call was not authenticated"))
}

/// The bearer token of a request, if it has one.
fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

/// Enforces [`rule`] on every request.
pub struct AuthLayer<S: Store> {
    pub access: Arc<Access<S>>,
}

impl<S: Store> Clone for AuthLayer<S> {
    fn clone(&self) -> Self {
        AuthLayer {
            access: self.access.clone(),
        }
    }
}

impl<S: Store, I> tower::Layer<I> for AuthLayer<S> {
    type Service = Authenticate<S, I>;

    fn layer(&self, inner: I) -> Self::Service {
        Authenticate {
            inner,
            access: self.access.clone(),
        }
    }
}

pub struct Authenticate<S: Store, I> {
    inner: I,
    access: Arc<Access<S>>,
}

impl<S: Store, I: Clone> Clone for Authenticate<S, I> {
    fn clone(&self) -> Self {
        Authenticate {
            inner: self.inner.clone(),
            access: self.access.clone(),
        }
    }
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, I, B, R> tower::Service<http::Request<B>> for Authenticate<S, I>
where
    S: Store,
    I: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    I::Future: Send + 'static,
    I::Error: 'static,
    B: Send + 'static,
    R: Default + 'static,
{
    type Response = I::Response;
    type Error = I::Error;
    type Future = BoxFuture<Result<I::Response, I::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The inner service was made ready for this call; a clone takes
        // its place for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let access = self.access.clone();
        Box::pin(async move {
            let path = request.uri().path().to_owned();
            match rule(&path) {
                Some(Rule::Public | Rule::Agent) => {}
                Some(Rule::User(action)) => {
                    // Who it is, and whether it may take this action at any
                    // scope; the use case checks the scope it acts on.
                    let caller = access
                        .authenticate(bearer(request.headers()))
                        .await
                        .and_then(|caller| {
                            authorize_anywhere(&caller, action)?;
                            Ok(caller)
                        });
                    match caller {
                        Ok(caller) => {
                            request.extensions_mut().insert(caller);
                        }
                        Err(e) => return Ok(super::status(e).into_http()),
                    }
                }
                None => {
                    let shown: String = path.chars().take(128).collect();
                    return Ok(Status::unimplemented(format!(
                        "{shown:?}: no such method on this control plane"
                    ))
                    .into_http());
                }
            }
            inner.call(request).await
        })
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    /// Walks every service this control plane serves, as its descriptors
    /// say, so a new method cannot ship without a rule.
    #[test]
    fn every_method_has_a_rule() {
        let set = prost_types::FileDescriptorSet::decode(strato_proto::FILE_DESCRIPTOR_SET)
            .expect("descriptor set");
        let mut methods = 0;
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                    let rule = rule(&path);
                    assert!(rule.is_some(), "{path} has no authorization rule");
                    let user_service =
                        !matches!(service.name(), "AgentService" | "IdentityService");
                    assert_eq!(
                        matches!(rule, Some(Rule::User(_))),
                        user_service,
                        "{path}: user services need a user's token, agent services an agent"
                    );
                    methods += 1;
                }
            }
        }
        assert!(methods >= 30, "walked {methods} methods");
        assert_eq!(rule("/strato.v1.ComputeService/DropTables"), None);
        assert_eq!(rule("/grpc.health.v1.Health/Check"), Some(Rule::Public));
    }

    #[test]
    fn bearer_tokens_are_read_from_the_authorization_header() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(
            http::header::AUTHORIZATION,
            "Bearer  strato_x ".parse().expect("value"),
        );
        assert_eq!(bearer(&headers), Some("strato_x"));
        headers.insert(
            http::header::AUTHORIZATION,
            "Basic dXNlcg==".parse().expect("value"),
        );
        assert_eq!(bearer(&headers), None);
    }
}
