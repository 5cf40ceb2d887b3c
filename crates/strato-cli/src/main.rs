//! `strato`: the command line for Strato, shaped like `az ml compute`, plus
//! `strato job` for running jobs on clusters.
//!
//! `cmd/` holds one module per command group (its clap arguments and what it
//! runs), `view/` one module per kind of output, `client` the connection to
//! the control plane. This file parses the command line, dispatches, and is
//! the one place where a failure becomes an exit status.

#![allow(clippy::print_stdout)] // reason: printing results is this binary's job

mod client;
mod cluster_file;
mod cmd;
mod view;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::view::Format;

const AFTER_HELP: &str = "\
Exit status: 0 on success, 1 when the control plane refused or failed the
request (its reason is printed on stderr, naming the field), 2 for bad usage,
3 when the control plane cannot be reached. `strato job wait` also exits 1
when the job did not complete.";

/// Strato: self-hosted compute clusters for machine-learning jobs.
///
/// Talks to a strato-control over gRPC. Cluster verbs follow `az ml compute`;
/// job verbs submit a command to run in a Docker image on a cluster, show,
/// list, follow the logs of, cancel and wait for jobs.
#[derive(Debug, Parser)]
#[command(name = "strato", version, about, long_about, after_help = AFTER_HELP)]
struct Cli {
    /// The control plane's gRPC address.
    #[arg(
        long,
        global = true,
        env = "STRATO_ENDPOINT",
        default_value = "http://127.0.0.1:7070"
    )]
    endpoint: String,

    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage compute clusters: create, update, show, list, delete, and see
    /// their nodes, the VM sizes and the quota.
    #[command(subcommand)]
    Compute(cmd::compute::ComputeCommand),
    /// Run jobs on clusters: submit, show, list, logs, cancel, wait.
    #[command(subcommand)]
    Job(cmd::job::JobCommand),
    /// Register blob containers that jobs read inputs from and write outputs
    /// to, with their cluster's identity.
    #[command(subcommand)]
    Datastore(cmd::datastore::DatastoreCommand),
}

/// An error that carries its exit status.
#[derive(Debug)]
struct Failure {
    code: u8,
    message: String,
}

/// The exit statuses of `AFTER_HELP` (clap exits 2 itself for the usage
/// errors it finds).
impl Failure {
    /// Exit 1: the control plane refused or failed the request, or the CLI
    /// could not carry it out.
    fn refused(message: impl Into<String>) -> Self {
        Failure {
            code: 1,
            message: message.into(),
        }
    }

    /// Exit 2: bad usage that only the CLI's own checks find.
    fn usage(message: impl Into<String>) -> Self {
        Failure {
            code: 2,
            message: message.into(),
        }
    }

    /// Exit 3: the control plane cannot be reached.
    fn unreachable(message: impl Into<String>) -> Self {
        Failure {
            code: 3,
            message: message.into(),
        }
    }
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        Failure::refused(format!(
            "{}: {}",
            code_name(status.code()),
            status.message()
        ))
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::refused(format!("{e:#}"))
    }
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        InvalidArgument => "invalid argument",
        NotFound => "not found",
        AlreadyExists => "already exists",
        FailedPrecondition => "failed precondition",
        ResourceExhausted => "resource exhausted",
        PermissionDenied => "permission denied",
        Unauthenticated => "unauthenticated",
        Unavailable => "unavailable",
        Unimplemented => "not implemented by this control plane",
        DeadlineExceeded => "timed out",
        _ => "error",
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("strato: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            // One line, so scripts can read the reason. An empty message
            // means the outcome was already printed (`job wait`).
            if !f.message.is_empty() {
                eprintln!("strato: {}", f.message.replace('\n', " "));
            }
            ExitCode::from(f.code)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Compute(command) => cmd::compute::run(&cli.endpoint, cli.output, command).await,
        Command::Job(command) => {
            cmd::job::run(client::connect(&cli.endpoint).await?, cli.output, command).await
        }
        Command::Datastore(command) => {
            cmd::datastore::run(&cli.endpoint, cli.output, command).await
        }
    }
}
