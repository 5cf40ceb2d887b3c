//! Strato's pure domain: what a valid cluster is, which VM sizes exist,
//! whether a request fits the quota, and the lifecycle rules (scale
//! decision, placement, node health, backoff, what an event changes for a
//! job or a node).
//!
//! **Architecture invariant:** nothing in this crate does I/O, reads a clock,
//! spawns a task or draws a random number. Time and state are passed in, so
//! every decision here is a plain function that unit and property tests can
//! drive exhaustively.

pub mod access;
pub mod backoff;
pub mod catalog;
pub mod certificate;
pub mod client_config;
pub mod crypt;
pub mod error;
pub mod exposition;
pub mod identity;
pub mod image;
pub mod image_cache;
pub mod job;
pub mod job_request;
pub mod lifecycle;
pub mod limits;
pub mod name;
pub mod naming;
pub mod node;
pub mod quota;
pub mod rate;
pub mod registry;
pub mod scale;
pub mod spec;
pub mod time;

pub use catalog::VmSize;
pub use error::{FieldError, SpecError};
pub use node::{AllocationState, NodeState, NodeStateCounts};
pub use quota::{Allocation, QuotaError, QuotaLimits, QuotaUsage, RegionQuota};
pub use spec::{ClusterRequest, ClusterSpec, IdentitySpec, SshSettings, VmPriority, VnetSettings};
