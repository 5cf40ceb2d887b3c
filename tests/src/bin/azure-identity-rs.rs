//! Azure's Rust SDK, unmodified: `azure_identity`'s
//! `ManagedIdentityCredential` asks whatever managed-identity endpoint its
//! environment names (App Service's `IDENTITY_ENDPOINT` +
//! `IDENTITY_HEADER`, as every Strato job has) for a token, and this prints
//! it. The end-to-end tests run it against an agent's identity endpoint.
//!
//! Usage: `azure-identity-rs [SCOPE]` (default
//! `https://storage.azure.com/.default`).

#![allow(clippy::print_stdout, clippy::print_stderr)] // reason: a probe; its output is the token

use std::process::ExitCode;

use azure_core::credentials::TokenCredential as _;
use azure_identity::ManagedIdentityCredential;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // The workspace builds reqwest 0.13 with rustls and no provider of its
    // own (see the root Cargo.toml): install the one it shares.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let scope = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "https://storage.azure.com/.default".to_owned());
    let credential = match ManagedIdentityCredential::new(None) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("azure-identity-rs: {e}");
            return ExitCode::FAILURE;
        }
    };
    match credential.get_token(&[scope.as_str()], None).await {
        Ok(token) => {
            println!("{}", token.token.secret());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("azure-identity-rs: {e}");
            ExitCode::FAILURE
        }
    }
}
