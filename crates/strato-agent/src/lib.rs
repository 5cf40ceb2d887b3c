//! The Strato node agent: enrols with the control plane, holds one session
//! stream, and runs the jobs it is assigned in Docker containers.

pub mod gang;
pub mod identity;
pub mod image_cache;
pub mod registry;
pub mod session;
pub mod ssh;
pub use strato_storage as storage;
pub mod telemetry;
