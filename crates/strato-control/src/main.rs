//! `strato-control`: parses and checks its configuration, then runs until
//! SIGTERM or SIGINT.

use std::process::ExitCode;

use clap::Parser;
use strato_control::config::Config;
use tracing_subscriber::EnvFilter;

/// Exit codes: 0 after a clean shutdown, 2 for a bad configuration (nothing
/// was started), 1 for a failure while running.
fn main() -> ExitCode {
    // One TLS crypto provider for every client in the process (object_store
    // and Entra ID federation): ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let settings = match Config::parse().validate() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("strato-control: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = EnvFilter::try_new(&settings.config.log).unwrap_or_else(|e| {
        eprintln!(
            "strato-control: --log {:?} is not a valid filter ({e}); using info",
            settings.config.log
        );
        EnvFilter::new("info")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a terminal: not into the journal or a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("strato-control: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(strato_control::run(
        settings,
        strato_control::shutdown_signal(),
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("strato-control: {e:#}");
            ExitCode::FAILURE
        }
    }
}
