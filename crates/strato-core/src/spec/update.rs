//! Updates: which properties may change after creation, and applying a
//! masked update to a spec.

use super::{ClusterRequest, ClusterSpec, DEFAULT_IDLE_SECONDS, DEFAULT_MAX_NODES, check};
use crate::catalog::DEFAULT_VM_SIZE;
use crate::error::{FieldError, SpecError};

/// The spec fields an update may name, as request paths.
pub const MUTABLE_FIELDS: &[&str] = &[
    "min_nodes",
    "max_nodes",
    "idle_seconds_before_scaledown",
    "description",
    "tags",
];

/// Fields fixed at creation. Naming one in an update is accepted only when
/// the value is unchanged, so re-applying a cluster file is harmless.
pub const IMMUTABLE_FIELDS: &[&str] = &[
    "name",
    "type",
    "power",
    "vm_size",
    "vm_priority",
    "location",
    "ssh",
    "vnet",
    "identity",
    "inter_node_communication",
    "enable_node_public_ip",
];

/// Applies the fields named in `mask` from `desired` to `current`.
///
/// Mutable fields take the desired value (an unset one takes its default).
/// An immutable field whose desired value differs is refused, naming it.
/// The result is checked against every rule.
pub fn apply_update(
    current: &ClusterSpec,
    desired: &ClusterRequest,
    mask: &[String],
) -> Result<ClusterSpec, SpecError> {
    if mask.is_empty() {
        return Err(FieldError::new(
            "update_mask",
            format!(
                "name at least one field to change ({})",
                MUTABLE_FIELDS.join(", ")
            ),
        )
        .into());
    }
    let mut next = current.clone();
    for path in mask {
        match path.as_str() {
            "min_nodes" => next.min_nodes = desired.min_nodes.unwrap_or(0),
            "max_nodes" => next.max_nodes = desired.max_nodes.unwrap_or(DEFAULT_MAX_NODES),
            "idle_seconds_before_scaledown" => {
                next.idle_seconds_before_scaledown = desired
                    .idle_seconds_before_scaledown
                    .unwrap_or(DEFAULT_IDLE_SECONDS)
            }
            "description" => next.description = desired.description.clone(),
            "tags" => next.tags = desired.tags.clone(),
            immutable if IMMUTABLE_FIELDS.contains(&immutable) => {
                if let Some(hint) = immutable_change(current, desired, immutable)? {
                    return Err(SpecError::Immutable {
                        field: immutable.to_owned(),
                        hint,
                    });
                }
            }
            other => {
                return Err(FieldError::new(
                    "update_mask",
                    format!(
                        "unknown field {other:?}; fields that may change: {}",
                        MUTABLE_FIELDS.join(", ")
                    ),
                )
                .into());
            }
        }
    }
    check(&next)?;
    Ok(next)
}

/// `Some(hint)` when `desired` changes the immutable `field` of `current`.
fn immutable_change(
    current: &ClusterSpec,
    desired: &ClusterRequest,
    field: &str,
) -> Result<Option<String>, FieldError> {
    let changed = |was: &str, asked: &str| Some(format!(" (it is {was}; asked for {asked})"));
    Ok(match field {
        "name" => (!desired.name.eq_ignore_ascii_case(&current.name))
            .then(|| format!(" (it is {}; create a new cluster instead)", current.name)),
        "vm_size" => {
            let asked = desired.vm_size.as_deref().unwrap_or(DEFAULT_VM_SIZE);
            (!asked.eq_ignore_ascii_case(&current.vm_size))
                .then(|| changed(&current.vm_size, asked))
                .flatten()
        }
        "type" => {
            let asked = desired.compute_type.unwrap_or_default();
            (asked != current.compute_type)
                .then(|| changed(current.compute_type.as_str(), asked.as_str()))
                .flatten()
        }
        "power" => (desired.power != current.power)
            .then(|| " (change the commands' files in --power-commands-dir instead)".to_owned()),
        "vm_priority" => {
            let asked = desired.vm_priority.unwrap_or_default();
            (asked != current.vm_priority)
                .then(|| changed(current.vm_priority.as_str(), asked.as_str()))
                .flatten()
        }
        "location" => match desired.location.as_deref() {
            None | Some("") => None,
            Some(l) if l == current.location => None,
            Some(l) => changed(&current.location, l),
        },
        "ssh" => (!current.ssh.holds(&desired.ssh)).then(String::new),
        "vnet" => (desired.vnet != current.vnet).then(String::new),
        "identity" => (desired.identity != current.identity).then(|| {
            " through UpdateCluster; identities are added and removed with their own calls"
                .to_owned()
        }),
        "enable_node_public_ip" => {
            let asked = desired.enable_node_public_ip.unwrap_or(true);
            (asked != current.enable_node_public_ip)
                .then(|| {
                    changed(
                        &current.enable_node_public_ip.to_string(),
                        &asked.to_string(),
                    )
                })
                .flatten()
        }
        "inter_node_communication" => {
            let asked = desired.inter_node_communication.unwrap_or(true);
            (asked != current.inter_node_communication)
                .then(|| {
                    changed(
                        &current.inter_node_communication.to_string(),
                        &asked.to_string(),
                    )
                })
                .flatten()
        }
        _ => None,
    })
}
