//! The client configuration, like a kubeconfig: where the control plane
//! is, the CA certificate that proves it, and the bearer token to call it
//! with. The control plane writes one for its Owner at first start
//! (`DATA_DIR/admin.conf`); `strato login` writes the user's own.
//!
//! It is TOML:
//!
//! ```toml
//! endpoint = "https://127.0.0.1:7070"
//! ca_certificate = """
//! -----BEGIN CERTIFICATE-----
//! …
//! -----END CERTIFICATE-----
//! """
//! token = "strato_…"
//! ```

use serde::{Deserialize, Serialize};

/// A parsed client configuration. Every field may be absent: the CLI's
/// flags and environment fill in or override them.
#[derive(Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The control plane's gRPC endpoint, `https://HOST:PORT`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// PEM of the CA certificate(s) the endpoint's certificate chains to;
    /// absent: the system's roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_certificate: Option<String>,
    /// The bearer token: a Strato API token or an OIDC JWT.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// Why a client configuration cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.to_string().trim_end().replace('\n', " "))]
pub struct ConfigTextError(#[from] toml::de::Error);

impl ClientConfig {
    pub fn parse(text: &str) -> Result<ClientConfig, ConfigTextError> {
        Ok(toml::from_str(text)?)
    }

    /// The file's text; [`ClientConfig::parse`] reads it back the same.
    pub fn render(&self) -> String {
        let body = toml::to_string(self).unwrap_or_default();
        format!(
            "# Strato client configuration: the control plane, its CA, and your token.\n# Keep it private (mode 0600): the token is a password.\n{body}"
        )
    }
}

/// Never the token: a `?` in a log line must not print it.
impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("endpoint", &self.endpoint)
            .field(
                "ca_certificate",
                &self.ca_certificate.as_ref().map(|_| "<PEM>"),
            )
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rendered_config_reads_back_the_same() {
        let config = ClientConfig {
            endpoint: Some("https://cp.example.com:7070".into()),
            ca_certificate: Some(
                "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
            ),
            token: Some("strato_a\"b\\c".into()),
        };
        let back = ClientConfig::parse(&config.render()).expect("parses");
        assert_eq!(back.endpoint, config.endpoint);
        assert_eq!(back.token, config.token);
        assert_eq!(
            back.ca_certificate.as_deref().map(str::trim_end),
            config.ca_certificate.as_deref().map(str::trim_end)
        );
        assert_eq!(
            ClientConfig::parse("").expect("empty"),
            ClientConfig::default()
        );
    }

    #[test]
    fn an_unknown_key_is_an_error_naming_it() {
        let e = ClientConfig::parse("endpont = \"https://x\"\n").expect_err("typo");
        assert!(e.to_string().contains("endpont"), "{e}");
    }
}
