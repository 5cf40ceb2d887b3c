//! Logging in to a registry with the job's cluster identity, as Azure
//! Container Registry takes it (REFERENCE.md, "ACR token exchange"): an
//! Entra token of the identity for the registry's resource is exchanged at
//! the registry's `/oauth2/exchange` for a refresh token, which the Docker
//! engine then uses as the password of the user
//! `00000000-0000-0000-0000-000000000000`: with it the engine gets its
//! short-lived access tokens from the registry's token endpoint, for each
//! pull. The exchange endpoint sits beside the token endpoint the registry's
//! Bearer challenge names (on ACR both are the registry's own host).
//!
//! The agent trusts the public roots and, like the engine, the registry's
//! CA in `/etc/docker/certs.d/SERVER/`.

use std::time::Duration;

use strato_runtime::RegistryLogin;

/// The resource an identity's token is asked for.
pub const ACR_RESOURCE: &str = "https://containerregistry.azure.net";
/// The user a refresh token logs in as.
pub const REFRESH_TOKEN_USER: &str = "00000000-0000-0000-0000-000000000000";
/// How long one step of the exchange may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// A registry's Bearer challenge (`WWW-Authenticate` on `/v2/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Its token endpoint.
    pub realm: String,
    /// The service tokens are asked for.
    pub service: String,
}

/// Reads `Bearer realm="…",service="…",…`; `None` for any other scheme.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let params = header.trim().strip_prefix("Bearer ")?;
    let mut realm = None;
    let mut service = None;
    let mut rest = params.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        match key.trim() {
            "realm" => realm = Some(value.to_owned()),
            "service" => service = Some(value.to_owned()),
            _ => {}
        }
        rest = next.trim_start_matches([',', ' ']);
    }
    Some(Challenge {
        realm: realm?,
        service: service.unwrap_or_default(),
    })
}

/// The exchange endpoint beside a token endpoint: the realm's scheme and
/// authority with `/oauth2/exchange`; only on `server`'s own host (any
/// port), so a registry cannot send the identity's token elsewhere (the
/// token is good for every registry the identity may pull from).
pub fn exchange_url(realm: &str, server: &str) -> Option<String> {
    let (scheme, rest) = realm.split_once("://")?;
    let authority = rest.split('/').next().filter(|a| !a.is_empty())?;
    let host = |a: &str| -> String {
        let h = match a.rsplit_once(':') {
            Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
            _ => a,
        };
        h.to_ascii_lowercase()
    };
    (scheme == "https" && host(authority) == host(server))
        .then(|| format!("https://{authority}/oauth2/exchange"))
}

/// The most bytes read of an answer of the token exchange.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// An answer's body, at most [`MAX_ANSWER_BYTES`].
async fn body(mut answer: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(chunk) = answer
        .chunk()
        .await
        .map_err(|e| format!("reading the token exchange's answer: {e}"))?
    {
        if out.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(format!(
                "the token exchange's answer is over {MAX_ANSWER_BYTES} bytes"
            ));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The tenant an Entra token was issued in (its `tid` claim), or empty.
pub fn tenant_of(token: &str) -> String {
    use base64::Engine as _;
    token
        .split('.')
        .nth(1)
        .and_then(|payload| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload.trim_end_matches('='))
                .ok()
        })
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|claims| claims.get("tid")?.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// An HTTP client that trusts what the engine trusts for `server`.
fn client(server: &str) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .timeout(STEP_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none());
    let dir = std::path::Path::new("/etc/docker/certs.d").join(server);
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "crt") {
                let pem = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                for cert in certs {
                    builder = builder.add_root_certificate(cert);
                }
            }
        }
    }
    builder.build().map_err(|e| format!("HTTP client: {e}"))
}

/// Exchanges `aad_token` at `server`'s registry for a refresh token and
/// returns the login the engine pulls with. The error says which step
/// failed, in the registry's words.
pub async fn exchange(server: &str, aad_token: &str) -> Result<RegistryLogin, String> {
    let http = client(server)?;
    let probe = http
        .get(format!("https://{server}/v2/"))
        .send()
        .await
        .map_err(|e| format!("unreachable: {e}"))?;
    let challenge = probe
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|h| h.to_str().ok())
        .and_then(parse_challenge)
        .ok_or_else(|| {
            format!(
                "the registry answered {} without a Bearer challenge: it takes no identity tokens",
                probe.status()
            )
        })?;
    let url = exchange_url(&challenge.realm, server).ok_or_else(|| {
        format!(
            "the registry's token realm {:?} is not https on the registry's own host: the identity's token is not sent there",
            challenge.realm
        )
    })?;
    let service = if challenge.service.is_empty() {
        server.to_owned()
    } else {
        challenge.service
    };
    let tenant = tenant_of(aad_token);
    let answer = http
        .post(&url)
        .form(&[
            ("grant_type", "access_token"),
            ("service", service.as_str()),
            ("tenant", tenant.as_str()),
            ("access_token", aad_token),
        ])
        .send()
        .await
        .map_err(|e| format!("unreachable: {url}: {e}"))?;
    let status = answer.status();
    let bytes = body(answer).await?;
    if !status.is_success() {
        let text: String = String::from_utf8_lossy(&bytes).chars().take(300).collect();
        return Err(format!(
            "unauthorized: the token exchange at {url} answered {status}: {text}"
        ));
    }
    let body: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| format!("the token exchange's answer is not JSON: {e}"))?;
    let refresh = body
        .get("refresh_token")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .ok_or("the token exchange's answer has no refresh_token")?;
    Ok(RegistryLogin {
        server: server.to_owned(),
        username: REFRESH_TOKEN_USER.to_owned(),
        password: refresh.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bearer_challenge_gives_the_realm_and_service() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://myacr.azurecr.io/oauth2/token",service="myacr.azurecr.io",scope="repository:x:pull""#
            ),
            Some(Challenge {
                realm: "https://myacr.azurecr.io/oauth2/token".into(),
                service: "myacr.azurecr.io".into()
            })
        );
        assert_eq!(parse_challenge(r#"Basic realm="registry""#), None);
        assert_eq!(parse_challenge("Bearer service=x"), None, "no realm");
        assert_eq!(
            exchange_url("https://myacr.azurecr.io/oauth2/token", "MyACR.azurecr.io").as_deref(),
            Some("https://myacr.azurecr.io/oauth2/exchange")
        );
        assert_eq!(
            exchange_url("https://10.0.0.5:8443/oauth2/token", "10.0.0.5:5000").as_deref(),
            Some("https://10.0.0.5:8443/oauth2/exchange"),
            "the same host on another port"
        );
        assert_eq!(
            exchange_url("http://myacr.azurecr.io/oauth2/token", "myacr.azurecr.io"),
            None
        );
        assert_eq!(
            exchange_url("https://evil.example/oauth2/token", "myacr.azurecr.io"),
            None,
            "never another host"
        );
    }

    #[test]
    fn the_tenant_comes_from_the_tokens_tid_claim() {
        use base64::Engine as _;
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"tid":"72f988bf-0000","aud":"x"}"#);
        assert_eq!(tenant_of(&format!("h.{payload}.s")), "72f988bf-0000");
        assert_eq!(tenant_of("not a token"), "");
    }
}
