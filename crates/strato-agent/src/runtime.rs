//! The container runtime (being written).
