//! `strato`: the command line for Strato, shaped like `az ml compute`, plus
//! `strato job` for running jobs on clusters.
//!
//! `cmd/` holds one module per command group (its clap arguments and what it
//! runs), `view/` one module per kind of output, `config` the client
//! configuration (file, flags, environment), `client` the TLS connection to
//! the control plane. This file parses the command line, dispatches, and is
//! the one place where a failure becomes an exit status.

#![allow(clippy::print_stdout)] // reason: printing results is this binary's job

mod client;
mod cluster_file;
mod cmd;
mod config;
mod ignore_file;
mod job_file;
#[cfg(test)]
mod oracle;
mod view;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::view::Format;

const AFTER_HELP: &str = "\
Configuration: the control plane's endpoint, the CA that proves it and your
token come from a client config file (TOML: endpoint, token, ca_certificate),
by default $XDG_CONFIG_HOME/strato/config or ~/.config/strato/config, else
the one --config or STRATO_CONFIG names. `strato login` writes it (mode
0600); strato-control writes one for its Owner at first start,
DATA_DIR/admin.conf (use it with --config, or copy it to the default path).
Flags and variables override the file: --endpoint / STRATO_ENDPOINT,
--ca-file / STRATO_CA_FILE, and STRATO_TOKEN (there is no --token flag: a
command line is visible in `ps`). Default endpoint: https://127.0.0.1:7070.

Auth: the control plane speaks only TLS (https://; http:// is refused) and
every call carries the token as `authorization: Bearer TOKEN`. What a token
may do is its role at a scope (see `strato token create --help`);
`strato whoami` shows yours.

Exit status: 0 on success, 1 when the control plane refused or failed the
request (its reason is printed on stderr, naming the field; also when the
token is missing, invalid or lacks the role), 2 for bad usage (including an
http:// endpoint or an unreadable config or CA file), 3 when the control
plane cannot be reached (or its certificate is not trusted). `strato job
wait` also exits 1 when the job did not complete.";

/// The help heading of the flags every command takes.
const GLOBAL: &str = "Global options";

/// Strato: self-hosted compute clusters for machine-learning jobs.
///
/// Talks to a strato-control over gRPC and TLS, with a bearer token. Cluster
/// verbs follow `az ml compute`; job verbs submit a command to run in a
/// Docker image on a cluster, show, list, follow the logs of, cancel and
/// wait for jobs. `strato login` saves where the control plane is and your
/// token; `strato token` and `strato role assignment` manage who may do
/// what.
#[derive(Debug, Parser)]
#[command(name = "strato", version, about, long_about, after_help = AFTER_HELP)]
struct Cli {
    /// The control plane's gRPC endpoint, https://HOST:PORT; default: the
    /// config file's, else https://127.0.0.1:7070. With replicas, their
    /// endpoints separated by commas: the first that answers serves the
    /// command.
    #[arg(long, global = true, env = "STRATO_ENDPOINT", value_name = "URL[,URL...]", help_heading = GLOBAL)]
    endpoint: Option<String>,

    /// The client config file; default $XDG_CONFIG_HOME/strato/config or
    /// ~/.config/strato/config (a missing default file is no error).
    #[arg(long, global = true, env = "STRATO_CONFIG", value_name = "PATH", help_heading = GLOBAL)]
    config: Option<PathBuf>,

    /// A PEM file of the CA that the control plane's certificate chains to,
    /// instead of the config file's ca_certificate.
    #[arg(long, global = true, env = "STRATO_CA_FILE", value_name = "PATH", help_heading = GLOBAL)]
    ca_file: Option<PathBuf>,

    /// Output format: table (for people), json, yaml, or tsv (values only,
    /// tab-separated, one row per line, as `az -o tsv` prints them).
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table, help_heading = GLOBAL)]
    output: Format,

    /// A JMESPath query applied to the output before it is printed, as az
    /// takes it: `--query name`, `--query "[].{name:name, state:state}"`,
    /// `--query "[?state=='running'].id" -o tsv`.
    #[arg(long, global = true, value_name = "JMESPATH", help_heading = GLOBAL)]
    query: Option<String>,

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
    /// Register container registries that nodes pull job images from, with
    /// the credentials they log in with (Owner only).
    #[command(subcommand)]
    Registry(cmd::registry::RegistryCommand),
    /// Save the control plane's endpoint, CA and your token in the config
    /// file, after checking them with the control plane.
    #[command(long_about = cmd::login::LONG_ABOUT, after_help = cmd::login::AFTER_HELP)]
    Login(cmd::login::LoginArgs),
    /// Show who the control plane takes you for, and your roles.
    Whoami,
    /// Make, list and revoke API tokens (Owner only).
    #[command(subcommand, long_about = cmd::access::TOKEN_ABOUT, after_help = cmd::access::roles_and_scopes())]
    Token(cmd::access::TokenCommand),
    /// Give roles to principals (tokens, OIDC callers) at scopes (Owner
    /// only).
    #[command(subcommand, after_help = cmd::access::roles_and_scopes())]
    Role(cmd::access::RoleCommand),
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
        let mut message = format!("{}: {}", code_name(status.code()), status.message());
        if status.code() == tonic::Code::Unauthenticated {
            message.push_str(&format!("; {LOGIN_HINT}"));
        }
        Failure::refused(message)
    }
}

/// What to do when the control plane does not know the caller.
const LOGIN_HINT: &str = "log in with `strato login --endpoint URL --ca-file CA --token -` (the token on stdin) or set STRATO_TOKEN";

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
    let format = cli.output;
    if let Some(query) = &cli.query {
        view::set_query(query).map_err(|e| Failure::usage(format!("--query {query:?}: {e}")))?;
    }
    // Every command but login reads the config file (login writes it).
    let settings = || {
        settings(
            cli.endpoint.clone(),
            cli.config.clone(),
            cli.ca_file.as_deref(),
        )
    };
    match cli.command {
        Command::Login(args) => {
            let given = login_given(cli.endpoint.clone(), cli.ca_file.as_deref())?;
            cmd::login::run(given, cli.config.clone(), format, args).await
        }
        Command::Compute(command) => cmd::compute::run(&settings()?, format, command).await,
        Command::Job(command) => {
            cmd::job::run(client::connect(&settings()?).await?, format, command).await
        }
        Command::Datastore(command) => cmd::datastore::run(&settings()?, format, command).await,
        Command::Registry(command) => cmd::registry::run(&settings()?, format, command).await,
        Command::Whoami => cmd::access::whoami(&settings()?, format).await,
        Command::Token(command) => cmd::access::token(&settings()?, format, command).await,
        Command::Role(command) => cmd::access::role(&settings()?, format, command).await,
    }
}

/// The flags and variables a login was given (no config file, no token
/// from the environment: the login's own `--token` carries it).
fn login_given(
    endpoint: Option<String>,
    ca_file: Option<&std::path::Path>,
) -> Result<config::Given, Failure> {
    Ok(config::Given {
        endpoint,
        token: None,
        ca_pem: ca_file.map(config::read_ca_file).transpose()?,
    })
}

/// The settings a command connects with: flags and environment over the
/// config file over the defaults.
fn settings(
    endpoint: Option<String>,
    config_flag: Option<PathBuf>,
    ca_file: Option<&std::path::Path>,
) -> Result<config::Settings, Failure> {
    let file = config::load(config::config_path_from_env(config_flag).as_ref())?;
    let given = config::Given {
        endpoint,
        token: std::env::var(config::TOKEN_VAR).ok(),
        ca_pem: ca_file.map(config::read_ca_file).transpose()?,
    };
    Ok(config::resolve(given, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unauthenticated_says_how_to_log_in_and_denied_names_the_reason() {
        let f = Failure::from(tonic::Status::unauthenticated("no token"));
        assert_eq!(f.code, 1);
        assert_eq!(
            f.message,
            "unauthenticated: no token; log in with `strato login --endpoint URL --ca-file CA --token -` (the token on stdin) or set STRATO_TOKEN"
        );
        let f = Failure::from(tonic::Status::permission_denied(
            "token:ci (Reader at /) may not create clusters",
        ));
        assert_eq!(f.code, 1);
        assert_eq!(
            f.message,
            "permission denied: token:ci (Reader at /) may not create clusters"
        );
    }

    #[test]
    fn the_command_line_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["strato", "whoami", "--endpoint", "https://cp:7070"])
            .expect("parses");
        assert_eq!(cli.endpoint.as_deref(), Some("https://cp:7070"));
        // No --token outside login: tokens on command lines leak into `ps`.
        assert!(Cli::try_parse_from(["strato", "whoami", "--token", "t"]).is_err());
    }
}
