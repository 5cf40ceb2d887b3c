//! The client configuration, like a kubeconfig: where the control plane
//! is, the CA certificate that proves it, and the bearer token to call it
//! with. The control plane writes one for its Owner at first start
//! (`DATA_DIR/admin.conf`); `strato login` writes the user's own.
//!
//! It is TOML:
//!
//! ```toml
//! endpoint = "https://127.0.0.1:7070"
//! token = "strato_…"
//! ca_certificate = '''
//! -----BEGIN CERTIFICATE-----
//! …
//! -----END CERTIFICATE-----
//! '''
//! ```

use serde::Deserialize;

/// A parsed client configuration. Every field may be absent: the CLI's
/// flags and environment fill in or override them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The control plane's gRPC endpoint, `https://HOST:PORT`.
    pub endpoint: Option<String>,
    /// PEM of the CA certificate(s) the endpoint's certificate chains to;
    /// absent: the system's roots.
    pub ca_certificate: Option<String>,
    /// The bearer token: a Strato API token or an OIDC JWT.
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
        let mut out = String::from(
            "# Strato client configuration: the control plane, its CA, and your token.\n# Keep it private (mode 0600): the token is a password.\n",
        );
        if let Some(e) = &self.endpoint {
            out.push_str(&format!("endpoint = {}\n", basic_string(e)));
        }
        if let Some(t) = &self.token {
            out.push_str(&format!("token = {}\n", basic_string(t)));
        }
        if let Some(ca) = &self.ca_certificate {
            // PEM is base64 and dashes: no ''' inside, so a literal string
            // holds it as it is.
            if ca.contains("'''") {
                out.push_str(&format!("ca_certificate = {}\n", basic_string(ca)));
            } else {
                let ca = ca.trim_end();
                out.push_str(&format!("ca_certificate = '''\n{ca}\n'''\n"));
            }
        }
        out
    }
}

/// A TOML basic string: quoted, with `"`, `\` and control characters
/// escaped.
fn basic_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
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
