//! `strato-agent`: the node agent. This build has its command line and
//! configuration only; enrolment, the session with the control plane and the
//! Docker job runtime arrive with the jobs work (see ARCHITECTURE.md).

use std::process::ExitCode;

use clap::Parser;

/// Strato node agent: enrols with the control plane and runs its jobs in
/// Docker containers.
///
/// Not functional in this build: it checks its configuration and exits with
/// status 2, saying so, so that a systemd unit using it fails visibly rather
/// than pretending to serve.
#[derive(Debug, Parser)]
#[command(name = "strato-agent", version, about, long_about)]
struct Config {
    /// The control plane's gRPC address.
    #[arg(
        long,
        env = "STRATO_CONTROL_PLANE",
        default_value = "http://127.0.0.1:7070"
    )]
    control_plane: String,

    /// The one-time join token the control plane handed out for this node.
    #[arg(long, env = "STRATO_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
}

fn main() -> ExitCode {
    let config = Config::parse();
    eprintln!(
        "strato-agent: this build cannot run jobs yet (control plane {}): the agent's enrolment and runtime are not implemented",
        config.control_plane
    );
    ExitCode::from(2)
}
