//! Where the workspace and its build output are, and `cargo` run in it.

use std::path::{Path, PathBuf};
use std::process::Command;

pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_owned()
}

pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// `release` while benchmarking, `debug` otherwise.
pub(crate) static PROFILE: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

pub(crate) fn profile_dir() -> &'static str {
    PROFILE.get().copied().unwrap_or("debug")
}

pub(crate) fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}
