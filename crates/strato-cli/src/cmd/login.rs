//! `strato login`: save the control plane's endpoint, its CA and a token in
//! the client config file, once the control plane has accepted them
//! (AccessService.WhoAmI).

use std::io::BufRead;
use std::path::{Path, PathBuf};

use clap::Args;
use strato_core::client_config::ClientConfig;
use strato_proto::client::Bearer;
use strato_proto::v1::{self, access_service_client::AccessServiceClient};

use crate::Failure;
use crate::client::connect;
use crate::config::{self, Given, Settings};
use crate::view::access::{LoginView, WhoAmIView};
use crate::view::{Format, print};

/// `strato login --help`.
pub const LONG_ABOUT: &str = "\
Save the control plane's endpoint, its CA and your token in the config file.

Writes --config (or STRATO_CONFIG) if given, else the default config file,
with mode 0600 (its directory 0700), replacing the file whole. First it calls
the control plane with these settings (WhoAmI) and prints who you are; if
that fails, nothing is written. --endpoint and --token are required;
--ca-file is the control plane's CA (without it, the system's roots are
trusted).";

/// `strato login --help`, after the flags.
pub const AFTER_HELP: &str = "\
Example (the token from stdin, so it stays out of the shell's history and
`ps`):
  strato login --endpoint https://cp.example.com:7070 --ca-file ca.pem \\
      --token - < token.txt

strato-control's admin.conf (DATA_DIR/admin.conf) already is a config file:
use it with --config, or log in with its endpoint, CA and token.";

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The bearer token, or `-` to read it from stdin (its first line),
    /// which keeps it out of the shell's history and the process list.
    #[arg(
        long,
        env = "STRATO_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token: String,
    /// Write the config without checking it with the control plane first.
    #[arg(long)]
    no_verify: bool,
}

/// `strato login`: `given` holds `--endpoint` and the PEM of `--ca-file`.
pub async fn run(
    given: Given,
    config_flag: Option<PathBuf>,
    format: Format,
    args: LoginArgs,
) -> Result<(), Failure> {
    let endpoint = given
        .endpoint
        .filter(|e| !e.trim().is_empty())
        .ok_or_else(|| {
            Failure::usage(
                "strato login needs --endpoint URL (or STRATO_ENDPOINT): the control plane's https:// address",
            )
        })?;
    let token = read_token(&args.token, std::io::stdin().lock())?;
    let path = config::config_path_from_env(config_flag).ok_or_else(|| {
        Failure::usage("no config file to write: give --config PATH (HOME is not set)")
    })?;
    let settings = Settings {
        endpoint,
        token: Some(token),
        ca_pem: given.ca_pem,
    };
    let view = login(settings, &path.path, !args.no_verify).await?;
    print(format, &view)?;
    Ok(())
}

/// The token `--token` gives: itself, or for `-` the first line of `stdin`.
fn read_token(flag: &str, mut stdin: impl BufRead) -> Result<String, Failure> {
    let token = if flag == "-" {
        let mut line = String::new();
        stdin
            .read_line(&mut line)
            .map_err(|e| Failure::usage(format!("--token -: cannot read stdin: {e}")))?;
        line.trim().to_owned()
    } else {
        flag.trim().to_owned()
    };
    if token.is_empty() {
        return Err(Failure::usage(if flag == "-" {
            "--token -: stdin held no token"
        } else {
            "--token: empty"
        }));
    }
    Bearer::new(Some(&token)).map_err(|e| Failure::usage(format!("--token: {e}")))?;
    Ok(token)
}

/// Checks `settings` with the control plane (when `verify`), then writes
/// them to `path`. Nothing is written when the check fails.
async fn login(settings: Settings, path: &Path, verify: bool) -> Result<LoginView, Failure> {
    let shown = path.display().to_string();
    let not_written = |mut f: Failure| {
        f.message = format!("{}; nothing was written to {shown}", f.message);
        f
    };
    // An http:// or malformed endpoint is refused even unchecked.
    strato_proto::client::endpoint(&settings.endpoint, settings.ca_pem.as_deref())
        .map_err(|e| not_written(Failure::usage(format!("--endpoint {e}"))))?;
    let me = if verify {
        let channel = connect(&settings).await.map_err(not_written)?;
        let me = AccessServiceClient::new(channel)
            .who_am_i(v1::WhoAmIRequest {})
            .await
            .map_err(|status| {
                not_written(if status.code() == tonic::Code::Unauthenticated {
                    Failure::refused(format!(
                        "unauthenticated: {}; the control plane does not accept this token",
                        status.message()
                    ))
                } else {
                    status.into()
                })
            })?
            .into_inner();
        Some(WhoAmIView::from(me))
    } else {
        None
    };
    let file = ClientConfig {
        endpoint: Some(settings.endpoint.clone()),
        token: settings.token,
        ca_certificate: settings.ca_pem,
    };
    config::write_private(path, &file)
        .map_err(|e| Failure::refused(format!("cannot write the config file {shown}: {e}")))?;
    Ok(LoginView {
        endpoint: settings.endpoint,
        config: shown,
        verified: me.is_some(),
        principal: me.as_ref().map(|m| m.principal.clone()),
        roles: me.map(|m| m.roles).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use strato_proto::v1::access_service_server::{AccessService, AccessServiceServer};
    use tonic::{Request, Response, Status};

    use super::*;

    const CA: &str = include_str!("../../testdata/ca.pem");
    const OTHER_CA: &str = include_str!("../../testdata/other-ca.pem");
    const SERVER_CERT: &str = include_str!("../../testdata/server.pem");
    const SERVER_KEY: &str = include_str!("../../testdata/server.key");
    const TOKEN: &str = "strato_good";

    /// An AccessService that knows one token, as the admin.
    struct Fake;

    fn known(metadata: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        match metadata.get("authorization").and_then(|v| v.to_str().ok()) {
            Some(v) if v == format!("Bearer {TOKEN}") => Ok(()),
            Some(_) => Err(Status::unauthenticated("unknown or revoked token")),
            None => Err(Status::unauthenticated("no bearer token")),
        }
    }

    #[tonic::async_trait]
    impl AccessService for Fake {
        async fn create_token(
            &self,
            _: Request<v1::CreateTokenRequest>,
        ) -> Result<Response<v1::CreateTokenResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn list_tokens(
            &self,
            _: Request<v1::ListTokensRequest>,
        ) -> Result<Response<v1::ListTokensResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn revoke_token(
            &self,
            _: Request<v1::RevokeTokenRequest>,
        ) -> Result<Response<v1::RevokeTokenResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn create_role_assignment(
            &self,
            _: Request<v1::CreateRoleAssignmentRequest>,
        ) -> Result<Response<v1::RoleAssignment>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn list_role_assignments(
            &self,
            _: Request<v1::ListRoleAssignmentsRequest>,
        ) -> Result<Response<v1::ListRoleAssignmentsResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn delete_role_assignment(
            &self,
            _: Request<v1::DeleteRoleAssignmentRequest>,
        ) -> Result<Response<v1::DeleteRoleAssignmentResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn who_am_i(
            &self,
            r: Request<v1::WhoAmIRequest>,
        ) -> Result<Response<v1::WhoAmIResponse>, Status> {
            known(r.metadata())?;
            Ok(Response::new(v1::WhoAmIResponse {
                principal: "token:admin".into(),
                roles: vec![v1::RoleAssignment {
                    principal: "token:admin".into(),
                    role: "Owner".into(),
                    scope: "/".into(),
                    created_at: None,
                }],
            }))
        }
    }

    /// Serves the fake over TLS (the test CA's certificate for 127.0.0.1)
    /// on a loopback port, for as long as the test's runtime runs.
    async fn serve() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let tls = tonic::transport::ServerTlsConfig::new().identity(
            tonic::transport::Identity::from_pem(SERVER_CERT, SERVER_KEY),
        );
        let server = tonic::transport::Server::builder()
            .tls_config(tls)
            .expect("tls")
            .add_service(AccessServiceServer::new(Fake))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
        tokio::spawn(server);
        addr
    }

    fn settings(endpoint: String, token: &str, ca: &str) -> Settings {
        Settings {
            endpoint,
            token: Some(token.into()),
            ca_pem: Some(ca.into()),
        }
    }

    #[tokio::test]
    async fn login_checks_then_writes_a_private_config() {
        let addr = serve().await;
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let path = dir.join("strato").join("config");
        let url = format!("https://{addr}");

        // A token the control plane does not know: nothing written.
        let f = login(settings(url.clone(), "strato_bad", CA), &path, true)
            .await
            .expect_err("refused");
        assert_eq!(f.code, 1);
        assert!(
            f.message
                .starts_with("unauthenticated: unknown or revoked token"),
            "{}",
            f.message
        );
        assert!(
            f.message
                .ends_with(&format!("nothing was written to {}", path.display())),
            "{}",
            f.message
        );
        assert!(!path.exists());

        // A CA that did not sign the control plane's certificate: exit 3,
        // saying so, and nothing written.
        let f = login(settings(url.clone(), TOKEN, OTHER_CA), &path, true)
            .await
            .expect_err("untrusted");
        assert_eq!(f.code, 3);
        assert!(
            f.message.contains("certificate is not trusted"),
            "{}",
            f.message
        );
        assert!(f.message.contains("--ca-file"), "{}", f.message);
        assert!(!path.exists());

        // Plaintext is refused before anything is sent.
        let f = login(settings(format!("http://{addr}"), TOKEN, CA), &path, false)
            .await
            .expect_err("http");
        assert_eq!(f.code, 2);
        assert!(!path.exists());

        // The right CA and token: who we are, and the file.
        let view = login(settings(url.clone(), TOKEN, CA), &path, true)
            .await
            .expect("logs in");
        assert_eq!(view.principal.as_deref(), Some("token:admin"));
        assert_eq!(
            crate::view::rendered(&crate::view::Render::table(&view)),
            format!(
                "logged in to {url} as token:admin (roles: Owner at /)\nconfig written to {}\n",
                path.display()
            )
        );
        let written =
            ClientConfig::parse(&std::fs::read_to_string(&path).expect("reads")).expect("parses");
        assert_eq!(written.endpoint.as_deref(), Some(url.as_str()));
        assert_eq!(written.token.as_deref(), Some(TOKEN));
        assert_eq!(
            written.ca_certificate.as_deref().map(str::trim),
            Some(CA.trim())
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        // What was written is what the other commands connect with.
        let file = config::load(Some(&config::ConfigPath {
            path: path.clone(),
            explicit: true,
        }))
        .expect("loads");
        let again = config::resolve(Given::default(), file);
        let channel = connect(&again).await.expect("connects");
        AccessServiceClient::new(channel)
            .who_am_i(v1::WhoAmIRequest {})
            .await
            .expect("accepted");
    }

    #[tokio::test]
    async fn no_token_is_unauthenticated_with_the_login_hint() {
        let addr = serve().await;
        let s = Settings {
            endpoint: format!("https://{addr}"),
            token: None,
            ca_pem: Some(CA.into()),
        };
        let status = AccessServiceClient::new(connect(&s).await.expect("connects"))
            .who_am_i(v1::WhoAmIRequest {})
            .await
            .expect_err("no token");
        let f = Failure::from(status);
        assert_eq!(f.code, 1);
        assert!(
            f.message
                .starts_with("unauthenticated: no bearer token; log in with `strato login"),
            "{}",
            f.message
        );
    }

    #[test]
    fn the_token_comes_from_the_flag_or_the_first_line_of_stdin() {
        assert_eq!(read_token("strato_x", &b""[..]).expect("flag"), "strato_x");
        assert_eq!(
            read_token("-", &b"strato_y\nignored\n"[..]).expect("stdin"),
            "strato_y"
        );
        let f = read_token("-", &b""[..]).expect_err("empty stdin");
        assert_eq!(f.code, 2);
        assert!(f.message.contains("stdin"), "{}", f.message);
        assert_eq!(
            read_token("bad\u{7}token", &b""[..])
                .expect_err("bell")
                .code,
            2
        );
    }
}
