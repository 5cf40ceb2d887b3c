//! One module per command group: its clap arguments and what it runs.

pub mod compute;
pub mod datastore;
pub mod job;
