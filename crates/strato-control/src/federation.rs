//! Federation to Entra ID (optional): instead of issuing its own tokens, the
//! control plane exchanges an assertion it signs itself (workload identity
//! federation) for a real Entra ID token of a user-assigned identity, with
//! `azure_identity`'s `ClientAssertionCredential`, so jobs get real Azure
//! tokens through the same identity endpoint.
//!
//! The assertion: an ES256 JWT from the token issuer's key with `iss` the
//! issuer URL (`--token-issuer`, whose `/.well-known/openid-configuration`
//! and `/jwks` Entra must reach over HTTPS), `sub` = `strato:cluster:<name>`,
//! `aud` = `api://AzureADTokenExchange`, valid ten minutes. On the identity,
//! a federated credential names that issuer, subject and audience.
//!
//! **Architecture invariant:** the checks of `vending` come first (an agent,
//! a job attempt on its node, an identity of that job's cluster); only then
//! is an assertion signed, naming that cluster.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::TokenCredential as _;
use azure_core::http::{ClientMethodOptions, ClientOptions, Transport};
use azure_identity::{
    ClientAssertion, ClientAssertionCredential, ClientAssertionCredentialOptions,
};
use strato_core::identity::{Identity, IdentityKind};

use crate::tokens::{IssuedToken, TokenIssuer};

/// The audience Entra ID expects in a federated assertion.
pub const ASSERTION_AUDIENCE: &str = "api://AzureADTokenExchange";

/// Where Entra ID is by default.
pub const PUBLIC_AUTHORITY: &str = "https://login.microsoftonline.com";

/// How the control plane federates.
#[derive(Debug, Clone)]
pub struct FederationConfig {
    pub tenant_id: String,
    /// Entra's authority host (`https://…`).
    pub authority_host: String,
    /// A user-assigned identity's resource id (lowercase) → its Entra
    /// client id.
    pub client_ids: HashMap<String, String>,
    /// Extra CA certificates (PEM) trusted for the authority host.
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    /// The identity cannot be federated (not configured, or system-assigned).
    #[error("{0}")]
    NotFederated(String),
    /// Entra ID refused or could not be reached.
    #[error("Entra ID: {0}")]
    Exchange(String),
    #[error("{0}")]
    Setup(String),
}

/// Exchanges the control plane's assertions for Entra ID tokens.
pub struct Federation {
    config: FederationConfig,
    client: reqwest::Client,
}

impl std::fmt::Debug for Federation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Federation")
            .field("tenant_id", &self.config.tenant_id)
            .field("authority_host", &self.config.authority_host)
            .finish_non_exhaustive()
    }
}

/// The assertion `ClientAssertionCredential` sends, signed beforehand.
struct SignedAssertion(String);

impl std::fmt::Debug for SignedAssertion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SignedAssertion(<redacted>)")
    }
}

#[tonic::async_trait]
impl ClientAssertion for SignedAssertion {
    async fn secret(&self, _: Option<ClientMethodOptions<'_>>) -> azure_core::Result<String> {
        Ok(self.0.clone())
    }
}

impl Federation {
    pub fn new(config: FederationConfig) -> Result<Self, FederationError> {
        if !config.authority_host.starts_with("https://") {
            return Err(FederationError::Setup(format!(
                "--federation-authority-host {:?}: must be https://",
                config.authority_host
            )));
        }
        let mut builder = reqwest::Client::builder();
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                FederationError::Setup(format!("--federation-ca-file {}: {e}", path.display()))
            })?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                FederationError::Setup(format!("--federation-ca-file {}: {e}", path.display()))
            })? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder
            .build()
            .map_err(|e| FederationError::Setup(format!("HTTP client: {e}")))?;
        Ok(Federation { config, client })
    }

    /// The subject of a cluster's assertions: what its identities'
    /// federated credentials name.
    pub fn subject(cluster: &str) -> String {
        format!("strato:cluster:{cluster}")
    }

    /// A real Entra ID token for `identity` of `cluster`, for `resource`.
    pub async fn token(
        &self,
        issuer: &TokenIssuer,
        cluster: &str,
        identity: &Identity,
        resource: &str,
        now: i64,
    ) -> Result<IssuedToken, FederationError> {
        if identity.kind == IdentityKind::SystemAssigned {
            return Err(FederationError::NotFederated(format!(
                "cluster {cluster} has a system-assigned identity, which Entra ID cannot federate; assign a user-assigned identity"
            )));
        }
        let client_id = self
            .config
            .client_ids
            .get(&identity.resource_id.to_ascii_lowercase())
            .ok_or_else(|| {
                FederationError::NotFederated(format!(
                    "identity {} has no Entra client id: add --federated-identity {}=<client id>",
                    identity.resource_id, identity.resource_id
                ))
            })?;
        let assertion = issuer
            .assertion(&Self::subject(cluster), ASSERTION_AUDIENCE, now)
            .map_err(|e| FederationError::Setup(e.to_string()))?;
        let mut cloud = CustomConfiguration::default();
        cloud.authority_host = self.config.authority_host.clone();
        let options = ClientAssertionCredentialOptions {
            client_options: ClientOptions {
                transport: Some(Transport::new(Arc::new(self.client.clone()))),
                cloud: Some(Arc::new(CloudConfiguration::from(cloud))),
                ..ClientOptions::default()
            },
        };
        let credential = ClientAssertionCredential::new(
            self.config.tenant_id.clone(),
            client_id.clone(),
            SignedAssertion(assertion),
            Some(options),
        )
        .map_err(|e| FederationError::Setup(e.to_string()))?;
        let scope = format!("{}/.default", resource.trim_end_matches('/'));
        let token = credential
            .get_token(&[scope.as_str()], None)
            .await
            .map_err(|e| FederationError::Exchange(e.to_string()))?;
        Ok(IssuedToken {
            access_token: token.token.secret().to_owned(),
            not_before: now,
            expires_on: token.expires_on.unix_timestamp(),
            resource: resource.to_owned(),
            client_id: client_id.clone(),
        })
    }
}
