//! Clusters, their nodes and identities, sizes and quota.

use std::sync::Arc;

use strato_core::catalog::VmSize;
use strato_core::identity::{self, IdentityKind};
use strato_core::quota::{self, UsageLine};
use strato_core::spec::{self, ClusterRequest, ComputeType, VmPriority};

use super::{
    Action, AppError, Caller, NotFound, Precondition, authorize, authorize_anywhere, authorize_at,
    required, visible_clusters,
};
use crate::plane::Plane;
use crate::store::{ClusterRecord, IdentityUpdate, NodeRecord, SpecUpdate, Store};

/// Client and principal ids for a new identity. A user-assigned identity
/// gets ids derived from its resource id, so every cluster that uses it sees
/// the same identity; a system-assigned one gets fresh random ids.
pub fn new_identity_ids(resource_id: &str, kind: IdentityKind) -> (String, String) {
    const CLIENT: uuid::Uuid = uuid::Uuid::from_u128(0x5f2a_9c1e_4b7d_4e21_9a0c_3d8b_6e4f_1a01);
    const PRINCIPAL: uuid::Uuid = uuid::Uuid::from_u128(0x5f2a_9c1e_4b7d_4e21_9a0c_3d8b_6e4f_1a02);
    match kind {
        IdentityKind::SystemAssigned => (
            uuid::Uuid::new_v4().to_string(),
            uuid::Uuid::new_v4().to_string(),
        ),
        IdentityKind::UserAssigned => {
            let id = resource_id.to_ascii_lowercase();
            (
                uuid::Uuid::new_v5(&CLIENT, id.as_bytes()).to_string(),
                uuid::Uuid::new_v5(&PRINCIPAL, id.as_bytes()).to_string(),
            )
        }
    }
}

/// A stored cluster with its nodes: what a cluster's view is made from.
#[derive(Debug, Clone)]
pub struct ClusterView {
    pub record: ClusterRecord,
    pub nodes: Vec<NodeRecord>,
}

/// A created cluster, and what the caller should know about it.
#[derive(Debug, Clone)]
pub struct CreatedCluster {
    pub cluster: ClusterView,
    pub warnings: Vec<String>,
}

/// A join token as made: the secret, shown once.
#[derive(Debug, Clone)]
pub struct NewJoinToken {
    pub token: String,
    /// What names it in listings (not a secret).
    pub id: String,
    pub uses: u32,
    /// Milliseconds since the epoch.
    pub expires_at: i64,
}

/// A region's quota lines.
#[derive(Debug, Clone)]
pub struct Usage {
    pub location: String,
    pub lines: Vec<UsageLine>,
}

/// A change to a cluster's managed identities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdentityChange {
    Assign,
    Remove,
}

pub struct Compute<S> {
    plane: Arc<Plane<S>>,
}

impl<S: Store> Compute<S> {
    pub fn new(plane: Arc<Plane<S>>) -> Self {
        Compute { plane }
    }

    async fn view(&self, record: ClusterRecord) -> Result<ClusterView, AppError> {
        let nodes = self.plane.store.list_nodes(&record.spec.name).await?;
        Ok(ClusterView { record, nodes })
    }

    pub async fn create_cluster(
        &self,
        caller: &Caller,
        req: ClusterRequest,
    ) -> Result<CreatedCluster, AppError> {
        authorize(caller, Action::CreateCluster, Some(&req.name))?;
        may_use_identities(caller, &req.identity.user_assigned)?;
        let region = &self.plane.settings.config.region;
        let mut spec = spec::validate_in(&req, region, &self.plane.settings.catalog)?;
        if let Some(power) = &spec.power {
            self.check_power_commands(power)?;
        }
        // The password is kept only as its SHA-512 crypt hash.
        spec.ssh.seal(&crate::plane::new_salt());
        let mut warnings = Vec::new();
        if spec.location != *region {
            warnings.push(format!(
                "location {} differs from the control plane's region {}: expect more latency and egress cost",
                spec.location, region
            ));
        }
        let record = self
            .plane
            .store
            .create_cluster(
                spec.clone(),
                identity::reconcile_identities(&spec.name, &spec.identity, &[], new_identity_ids),
                &self.plane.settings.quota,
                self.plane.clock.now_ms(),
            )
            .await?;
        tracing::info!(
            cluster = %record.spec.name,
            vm_size = %record.spec.vm_size,
            min_nodes = record.spec.min_nodes,
            max_nodes = record.spec.max_nodes,
            "cluster created"
        );
        self.plane.events.changed();
        Ok(CreatedCluster {
            cluster: self.view(record).await?,
            warnings,
        })
    }

    pub async fn get_cluster(&self, caller: &Caller, name: &str) -> Result<ClusterView, AppError> {
        required("name", name)?;
        authorize(caller, Action::GetCluster, Some(name))?;
        let record = self.plane.store.get_cluster(name).await?;
        self.view(record).await
    }

    pub async fn list_clusters(&self, caller: &Caller) -> Result<Vec<ClusterView>, AppError> {
        let visible = visible_clusters(caller, Action::ListClusters)?;
        let mut records = self.plane.store.list_clusters().await?;
        if let Some(only) = visible {
            records.retain(|r| only.contains(&r.spec.name.to_ascii_lowercase()));
        }
        let mut clusters = Vec::with_capacity(records.len());
        for r in records {
            clusters.push(self.view(r).await?);
        }
        Ok(clusters)
    }

    /// Applies the `mask`ed fields of `desired` to the cluster `name`.
    pub async fn update_cluster(
        &self,
        caller: &Caller,
        name: &str,
        desired: ClusterRequest,
        mask: Vec<String>,
    ) -> Result<ClusterView, AppError> {
        required("name", name)?;
        authorize(caller, Action::UpdateCluster, Some(name))?;
        let update: SpecUpdate =
            Box::new(move |current| spec::apply_update(current, &desired, &mask));
        let record = self
            .plane
            .store
            .update_cluster(
                name,
                update,
                &self.plane.settings.quota,
                self.plane.clock.now_ms(),
            )
            .await?;
        tracing::info!(
            cluster = %record.spec.name,
            min_nodes = record.spec.min_nodes,
            max_nodes = record.spec.max_nodes,
            idle_seconds = record.spec.idle_seconds_before_scaledown,
            "cluster updated"
        );
        self.plane.events.changed();
        self.view(record).await
    }

    /// Deletes the cluster, then removes its nodes and what the provider
    /// held for it (best effort: failures are logged).
    pub async fn delete_cluster(&self, caller: &Caller, name: &str) -> Result<(), AppError> {
        required("name", name)?;
        authorize(caller, Action::DeleteCluster, Some(name))?;
        // Its name as stored (a request may spell it in another case): what
        // the provider made for it carries that spelling.
        let spec = self.plane.store.get_cluster(name).await?.spec;
        let stored = spec.name;
        // An attached cluster's machines are the team's: only their records
        // go (their agents are refused from now on).
        let provided = spec.compute_type != ComputeType::Attached;
        let nodes = self.plane.store.delete_cluster(&stored).await?;
        for node in &nodes {
            self.plane.sessions.drop_node(&node.node_id);
            if !provided {
                continue;
            }
            if let Err(e) = self.plane.provider.delete_node(&node.into()).await {
                tracing::warn!(cluster = %name, node = %node.node_id, error = %e, "could not remove a node of a deleted cluster");
            }
        }
        // Its gang network (an attached cluster has none of the provider's).
        if provided && let Err(e) = self.plane.provider.delete_cluster(&stored).await {
            tracing::warn!(cluster = %name, error = %e, "could not remove what the deleted cluster held");
        }
        tracing::info!(cluster = %name, nodes = nodes.len(), "cluster deleted");
        self.plane.scale_events.forget(&stored);
        Ok(())
    }

    pub async fn list_nodes(
        &self,
        caller: &Caller,
        cluster: &str,
    ) -> Result<Vec<NodeRecord>, AppError> {
        required("cluster", cluster)?;
        authorize(caller, Action::ListNodes, Some(cluster))?;
        Ok(self.plane.store.list_nodes(cluster).await?)
    }

    /// Adds the system-assigned identity and/or user-assigned ones.
    pub async fn assign_identity(
        &self,
        caller: &Caller,
        name: &str,
        system_assigned: bool,
        user_assigned: Vec<String>,
    ) -> Result<ClusterView, AppError> {
        required("name", name)?;
        if !system_assigned && user_assigned.is_empty() {
            return Err(strato_core::FieldError::new(
                "identity",
                "name '[system]' or at least one user-assigned identity id",
            )
            .into());
        }
        authorize(caller, Action::AssignIdentity, Some(name))?;
        may_use_identities(caller, &user_assigned)?;
        self.change_identities(name, IdentityChange::Assign, system_assigned, user_assigned)
            .await
    }

    /// Removes user-assigned identities (none named: every identity).
    pub async fn remove_identity(
        &self,
        caller: &Caller,
        name: &str,
        user_assigned: Vec<String>,
    ) -> Result<ClusterView, AppError> {
        required("name", name)?;
        authorize(caller, Action::RemoveIdentity, Some(name))?;
        self.change_identities(name, IdentityChange::Remove, false, user_assigned)
            .await
    }

    async fn change_identities(
        &self,
        name: &str,
        change: IdentityChange,
        system_assigned: bool,
        user_assigned: Vec<String>,
    ) -> Result<ClusterView, AppError> {
        let update: IdentityUpdate = Box::new(move |spec, existing| {
            let next = match change {
                IdentityChange::Assign => {
                    identity::assign(&spec.identity, system_assigned, &user_assigned)?
                }
                IdentityChange::Remove => identity::remove(&spec.identity, &user_assigned)?,
            };
            let ids = identity::reconcile_identities(&spec.name, &next, existing, new_identity_ids);
            Ok((next, ids))
        });
        let record = self
            .plane
            .store
            .update_identities(name, update, self.plane.clock.now_ms())
            .await?;
        let what = match change {
            IdentityChange::Assign => "identity assigned",
            IdentityChange::Remove => "identity removed",
        };
        tracing::info!(cluster = %record.spec.name, identities = record.identities.len(), "{what}");
        self.view(record).await
    }

    /// Schedules a `Preempt` event for a live node of a low-priority
    /// cluster, `notice_seconds` (1 to 3600, default 30) from now.
    pub async fn simulate_eviction(
        &self,
        caller: &Caller,
        cluster: &str,
        node_id: &str,
        notice_seconds: Option<u32>,
    ) -> Result<NodeRecord, AppError> {
        required("name", cluster)?;
        required("node_id", node_id)?;
        authorize(caller, Action::SimulateEviction, Some(cluster))?;
        let cluster = self.plane.store.get_cluster(cluster).await?;
        let name = cluster.spec.name;
        if cluster.spec.vm_priority != VmPriority::LowPriority {
            return Err(Precondition::DedicatedCluster { cluster: name }.into());
        }
        if !self.plane.provider.capabilities().simulated_evictions {
            return Err(Precondition::NoScheduledEvents.into());
        }
        let nodes = self.plane.store.list_nodes(&name).await?;
        let Some(node) = nodes.into_iter().find(|n| n.node_id == node_id) else {
            return Err(AppError::NotFound(NotFound::NodeOfCluster {
                node: node_id.to_owned(),
                cluster: name,
            }));
        };
        if !strato_core::scale::is_live(node.state) {
            return Err(Precondition::NodeNotLive {
                node: node.node_id,
                state: node.state,
            }
            .into());
        }
        let notice = i64::from(notice_seconds.unwrap_or(30).clamp(1, 3600));
        let not_before = strato_core::time::rfc1123(self.plane.clock.now_ms() / 1000 + notice);
        let event = self
            .plane
            .scheduled_events
            .preempt(&node.node_id, &not_before);
        tracing::warn!(cluster = %name, node = %node.node_id, %event, %not_before, "simulated eviction scheduled");
        Ok(node)
    }

    /// A cluster's power commands must be executables in this control
    /// plane's `--power-commands-dir`.
    fn check_power_commands(&self, power: &spec::PowerCommands) -> Result<(), AppError> {
        let Some(dir) = &self.plane.settings.config.power_commands_dir else {
            return Err(Precondition::NoPowerCommands.into());
        };
        for (field, name) in [
            ("power.resume_command", &power.resume_command),
            ("power.suspend_command", &power.suspend_command),
        ] {
            use std::os::unix::fs::PermissionsExt as _;
            let path = dir.join(name);
            let executable = std::fs::metadata(&path)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
            if !executable {
                return Err(AppError::InvalidArgument(
                    strato_core::error::FieldError::new(
                        field,
                        format!("no executable {name:?} in the power commands directory"),
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Makes a join token for an attached cluster: its secret once, and
    /// how many machines it admits until when.
    pub async fn create_join_token(
        &self,
        caller: &Caller,
        cluster: &str,
        uses: Option<u32>,
        expires_in_seconds: Option<u64>,
    ) -> Result<NewJoinToken, AppError> {
        required("name", cluster)?;
        authorize(caller, Action::CreateJoinToken, Some(cluster))?;
        let (uses, seconds) = strato_core::lifecycle::join_token_terms(uses, expires_in_seconds)?;
        let record = self.plane.store.get_cluster(cluster).await?;
        let name = record.spec.name;
        if record.spec.compute_type != ComputeType::Attached {
            return Err(Precondition::NotAttached { cluster: name }.into());
        }
        let token = crate::plane::new_token();
        let hash = crate::plane::hash_token(&token);
        let now = self.plane.clock.now_ms();
        let expires_at = now.saturating_add(i64::try_from(seconds * 1000).unwrap_or(i64::MAX));
        self.plane
            .store
            .create_join_token(&name, &hash, uses, expires_at, caller.principal(), now)
            .await?;
        tracing::info!(cluster = %name, uses, expires_at, by = caller.principal(), "join token created");
        Ok(NewJoinToken {
            token,
            id: strato_core::lifecycle::join_token_id(&hash),
            uses,
            expires_at,
        })
    }

    /// An attached cluster's stored join tokens (never their secrets).
    pub async fn list_join_tokens(
        &self,
        caller: &Caller,
        cluster: &str,
    ) -> Result<Vec<crate::store::JoinTokenRecord>, AppError> {
        required("name", cluster)?;
        authorize(caller, Action::ListJoinTokens, Some(cluster))?;
        Ok(self.plane.store.list_join_tokens(cluster).await?)
    }

    /// Revokes one at once: no machine joins with it any more.
    pub async fn revoke_join_token(
        &self,
        caller: &Caller,
        cluster: &str,
        id: &str,
    ) -> Result<(), AppError> {
        required("name", cluster)?;
        required("id", id)?;
        authorize(caller, Action::RevokeJoinToken, Some(cluster))?;
        self.plane.store.revoke_join_token(cluster, id).await?;
        tracing::info!(cluster, id, by = caller.principal(), "join token revoked");
        Ok(())
    }

    /// Drains a machine out of an attached cluster (see
    /// `Store::detach_node`); a requeued job's container is released on
    /// the machine at once.
    pub async fn detach_node(
        &self,
        caller: &Caller,
        cluster: &str,
        node_id: &str,
        requeue: bool,
    ) -> Result<NodeRecord, AppError> {
        required("name", cluster)?;
        required("node_id", node_id)?;
        authorize(caller, Action::DetachNode, Some(cluster))?;
        let record = self.plane.store.get_cluster(cluster).await?;
        let name = record.spec.name;
        if record.spec.compute_type != ComputeType::Attached {
            return Err(Precondition::NotAttached { cluster: name }.into());
        }
        let nodes = self.plane.store.list_nodes(&name).await?;
        if !nodes.iter().any(|n| n.node_id == node_id) {
            return Err(AppError::NotFound(NotFound::NodeOfCluster {
                node: node_id.to_owned(),
                cluster: name,
            }));
        }
        let (node, ended) = self
            .plane
            .store
            .detach_node(node_id, requeue, self.plane.clock.now_ms())
            .await?;
        for (job_id, attempt) in ended {
            tracing::info!(job = %job_id, attempt, node = %node_id, "attempt ended by detach; queued again");
            self.plane.sessions.send(
                node_id,
                strato_proto::v1::control_message::Body::Release(strato_proto::v1::JobRelease {
                    job_id,
                    attempt,
                }),
            );
        }
        tracing::info!(cluster = %name, node = %node_id, requeue, "node detaching");
        self.plane.events.changed();
        Ok(node)
    }

    /// The built-in sizes and the operator's.
    /// The catalog's sizes; with a location, those a node of can be had
    /// there under its quota.
    pub fn list_sizes(&self, caller: &Caller, location: &str) -> Result<Vec<VmSize>, AppError> {
        authorize_anywhere(caller, Action::ListSizes)?;
        let sizes = self.plane.settings.catalog.sizes();
        if location.is_empty() {
            return Ok(sizes.to_vec());
        }
        strato_core::spec::check_location(location)?;
        let quota = self.plane.settings.quota.region(location);
        Ok(sizes.iter().filter(|s| quota.offers(s)).cloned().collect())
    }

    /// The quota lines of `location` (empty: this control plane's region).
    pub async fn list_usage(&self, caller: &Caller, location: String) -> Result<Usage, AppError> {
        authorize_anywhere(caller, Action::ListUsage)?;
        let location = match location {
            l if l.is_empty() => self.plane.settings.config.region.clone(),
            l => l,
        };
        let usage = self.plane.store.usage(&location).await?;
        let limits = self.plane.settings.quota.region(&location);
        Ok(Usage {
            lines: quota::report(limits, &usage, &self.plane.settings.catalog),
            location,
        })
    }
}

/// Assigning a user-assigned identity needs the right to assign that
/// identity, at its own scope (as Azure asks for
/// `userAssignedIdentities/*/assign/action`): a cluster's operator cannot
/// take another team's identity and its tokens.
fn may_use_identities(caller: &Caller, resource_ids: &[String]) -> Result<(), AppError> {
    for id in resource_ids {
        authorize_at(
            caller,
            Action::UseIdentity,
            &strato_core::access::Scope::identity(id),
        )?;
    }
    Ok(())
}
