//! `strato whoami`, `strato token` and `strato role assignment`: who the
//! caller is, API tokens, and the roles principals hold at scopes. Talks to
//! `AccessService`.

use clap::{Args, Subcommand};
use strato_core::access::{Role, Scope};
use strato_proto::v1::{self, access_service_client::AccessServiceClient};

use crate::Failure;
use crate::client::connect;
use crate::cmd::ArgError;
use crate::config::Settings;
use crate::view::access::{NewTokenView, RoleAssignmentView, TokenView, WhoAmIView};
use crate::view::{Format, print};

/// The roles and scopes, for the help of the commands that take them.
pub fn roles_and_scopes() -> String {
    let mut text = String::from("Roles:\n");
    for role in strato_core::access::Role::ALL {
        text.push_str(&format!("  {:<16} {}\n", role.as_str(), role.describe()));
    }
    text.push_str(
        "
Scopes (where a role holds):
  /                                    the whole control plane
  /clusters/NAME                       one cluster, its nodes and its jobs
  /subscriptions/.../userAssignedIdentities/NAME
                                       a user-assigned identity's resource id:
                                       the right to assign that identity

A principal is who a call acts as: token:NAME for an API token, oidc:SUBJECT
for a caller with an OIDC token. Its roles are its token's, if any, and every
role assignment it has.",
    );
    text
}

/// `strato token --help`.
pub const TOKEN_ABOUT: &str = "\
Make, list and revoke API tokens (Owner only).

A token is a bearer secret with one role at one scope; calls made with it act
as the principal token:NAME, which role assignments can give more roles. The
secret is shown once, by `token create`; the control plane keeps only a hash.";

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token and print its secret (shown this once).
    ///
    /// Give the secret to whoever will use it, e.g. `strato login --token -`
    /// reading it from stdin, or STRATO_TOKEN.
    #[command(after_help = roles_and_scopes())]
    Create(CreateTokenArgs),
    /// List the tokens (never their secrets), revoked ones too.
    List,
    /// Revoke a token at once: calls with it are refused from then on.
    Revoke {
        /// The token's name.
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct CreateTokenArgs {
    /// 1 to 63 lowercase letters, digits and '-', unique among tokens; calls
    /// with the token act as principal token:NAME.
    #[arg(short = 'n', long)]
    name: String,
    /// Reader, DataScientist, ComputeOperator or Owner (see below).
    #[arg(long, value_parser = parse_role)]
    role: Role,
    /// Where the role holds: /, /clusters/NAME or an identity's resource id.
    #[arg(long, default_value = "/", value_parser = parse_scope)]
    scope: String,
    /// How long until the token expires: 90s, 30m, 12h, 30d or plain
    /// seconds. A token that never expires must be asked for: `never`.
    #[arg(long, value_name = "DURATION", default_value = "90d", value_parser = parse_expiry)]
    expires_in: Expiry,
}

#[derive(Debug, Subcommand)]
pub enum RoleCommand {
    /// Give, list and take back roles of principals at scopes.
    #[command(subcommand)]
    Assignment(AssignmentCommand),
}

#[derive(Debug, Subcommand)]
pub enum AssignmentCommand {
    /// Give PRINCIPAL the role ROLE at SCOPE.
    #[command(after_help = roles_and_scopes())]
    Create(AssignmentArgs),
    /// List role assignments, of every principal or of one.
    List {
        /// Only this principal's (token:NAME or oidc:SUBJECT).
        #[arg(long, value_parser = parse_principal)]
        principal: Option<String>,
    },
    /// Take back one role assignment (the same flags as create).
    #[command(after_help = roles_and_scopes())]
    Delete(AssignmentArgs),
}

#[derive(Debug, Args)]
pub struct AssignmentArgs {
    /// Who: token:NAME for an API token, oidc:SUBJECT for an OIDC caller.
    #[arg(long, value_parser = parse_principal)]
    principal: String,
    /// Reader, DataScientist, ComputeOperator or Owner (see below).
    #[arg(long, value_parser = parse_role)]
    role: Role,
    /// Where the role holds: /, /clusters/NAME or an identity's resource id.
    #[arg(long, default_value = "/", value_parser = parse_scope)]
    scope: String,
}

fn parse_role(s: &str) -> Result<Role, ArgError> {
    Role::parse("role", s).map_err(|e| ArgError::Access(e.rule))
}

/// The principal as given, once `strato_core::access::Principal` accepts
/// it.
fn parse_principal(s: &str) -> Result<String, ArgError> {
    strato_core::access::Principal::parse("principal", s)
        .map(|p| p.to_string())
        .map_err(|e| ArgError::Access(e.rule))
}

/// The scope as given (the server keeps its own spelling), once
/// `strato_core::access::Scope` accepts it.
fn parse_scope(s: &str) -> Result<String, ArgError> {
    Scope::parse("scope", s)
        .map(|_| s.to_owned())
        .map_err(|e| ArgError::Access(e.rule))
}

/// When a new token expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    Never,
    /// After this many seconds (above 0).
    After(u64),
}

impl Expiry {
    /// `expires_in_seconds` of CreateToken: 0 is never.
    fn seconds(self) -> u64 {
        match self {
            Expiry::Never => 0,
            Expiry::After(s) => s,
        }
    }
}

/// `90s`, `30m`, `12h`, `30d`, plain seconds, or `never`.
fn parse_expiry(s: &str) -> Result<Expiry, ArgError> {
    if s.trim().eq_ignore_ascii_case("never") {
        return Ok(Expiry::Never);
    }
    super::parse_duration(s)
        .map(Expiry::After)
        .map_err(|_| ArgError::Expiry(s.to_owned()))
}

fn client(
    channel: strato_proto::client::AuthedChannel,
) -> AccessServiceClient<strato_proto::client::AuthedChannel> {
    AccessServiceClient::new(channel)
}

/// `strato whoami`.
pub async fn whoami(settings: &Settings, format: Format) -> Result<(), Failure> {
    let me = client(connect(settings).await?)
        .who_am_i(v1::WhoAmIRequest {})
        .await?
        .into_inner();
    print(format, &WhoAmIView::from(me))?;
    Ok(())
}

/// `strato token ...`.
pub async fn token(
    settings: &Settings,
    format: Format,
    command: TokenCommand,
) -> Result<(), Failure> {
    let mut client = client(connect(settings).await?);
    match command {
        TokenCommand::Create(args) => {
            let made = client
                .create_token(v1::CreateTokenRequest {
                    name: args.name,
                    role: args.role.as_str().to_owned(),
                    scope: args.scope,
                    expires_in_seconds: args.expires_in.seconds(),
                })
                .await?
                .into_inner();
            let token = made
                .token
                .ok_or_else(|| Failure::refused("the control plane returned no token"))?;
            print(
                format,
                &NewTokenView {
                    token: TokenView::from(token),
                    secret: made.secret,
                },
            )?;
        }
        TokenCommand::List => {
            let tokens = client
                .list_tokens(v1::ListTokensRequest {})
                .await?
                .into_inner()
                .tokens;
            print(
                format,
                &tokens.into_iter().map(TokenView::from).collect::<Vec<_>>(),
            )?;
        }
        TokenCommand::Revoke { name } => {
            client
                .revoke_token(v1::RevokeTokenRequest { name: name.clone() })
                .await?;
            if format == Format::Table {
                println!("token {name} revoked");
            } else {
                print(
                    format,
                    &serde_json::json!({ "name": name, "revoked": true }),
                )?;
            }
        }
    }
    Ok(())
}

/// `strato role assignment ...`.
pub async fn role(
    settings: &Settings,
    format: Format,
    command: RoleCommand,
) -> Result<(), Failure> {
    let RoleCommand::Assignment(command) = command;
    let mut client = client(connect(settings).await?);
    match command {
        AssignmentCommand::Create(a) => {
            let made = client
                .create_role_assignment(v1::CreateRoleAssignmentRequest {
                    principal: a.principal,
                    role: a.role.as_str().to_owned(),
                    scope: a.scope,
                })
                .await?
                .into_inner();
            print(format, &vec![RoleAssignmentView::from(made)])?;
        }
        AssignmentCommand::List { principal } => {
            let assignments = client
                .list_role_assignments(v1::ListRoleAssignmentsRequest {
                    principal: principal.unwrap_or_default(),
                })
                .await?
                .into_inner()
                .assignments;
            print(
                format,
                &assignments
                    .into_iter()
                    .map(RoleAssignmentView::from)
                    .collect::<Vec<_>>(),
            )?;
        }
        AssignmentCommand::Delete(a) => {
            let role = a.role.as_str();
            client
                .delete_role_assignment(v1::DeleteRoleAssignmentRequest {
                    principal: a.principal.clone(),
                    role: role.to_owned(),
                    scope: a.scope.clone(),
                })
                .await?;
            if format == Format::Table {
                println!(
                    "role assignment deleted: {} {role} at {}",
                    a.principal, a.scope
                );
            } else {
                print(
                    format,
                    &serde_json::json!({
                        "principal": a.principal,
                        "role": role,
                        "scope": a.scope,
                        "deleted": true,
                    }),
                )?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Top,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Top {
        #[command(subcommand)]
        Token(TokenCommand),
        #[command(subcommand)]
        Role(RoleCommand),
    }

    fn parse(args: &[&str]) -> Result<Top, clap::Error> {
        Cli::try_parse_from(std::iter::once("strato").chain(args.iter().copied()))
            .map(|c| c.command)
    }

    #[test]
    fn durations_take_a_unit_or_plain_seconds() {
        for (text, seconds) in [
            ("90s", 90),
            ("30m", 1_800),
            ("12h", 43_200),
            ("30d", 2_592_000),
            ("3600", 3_600),
            ("7D", 604_800),
        ] {
            assert_eq!(parse_expiry(text), Ok(Expiry::After(seconds)), "{text}");
        }
        assert_eq!(parse_expiry("never"), Ok(Expiry::Never));
        assert_eq!(Expiry::Never.seconds(), 0);
        for bad in [
            "",
            "0",
            "0d",
            "d",
            "-5m",
            "1.5h",
            "10w",
            "1 d",
            "99999999999999999999d",
        ] {
            let e = parse_expiry(bad).expect_err(bad);
            assert!(e.to_string().contains("never"), "{e}");
        }
    }

    #[test]
    fn token_create_defaults_to_ninety_days_at_the_root() {
        let Top::Token(TokenCommand::Create(args)) =
            parse(&["token", "create", "--name", "ci", "--role", "datascientist"]).expect("parses")
        else {
            panic!("not token create");
        };
        assert_eq!(args.role, Role::DataScientist);
        assert_eq!(args.scope, "/");
        assert_eq!(args.expires_in, Expiry::After(90 * 86_400));
        let e = parse(&["token", "create", "--name", "ci", "--role", "Admin"])
            .expect_err("no such role");
        assert!(e.to_string().contains("ComputeOperator"), "{e}");
        let e = parse(&[
            "token",
            "create",
            "--name",
            "ci",
            "--role",
            "Reader",
            "--scope",
            "clusters/x",
        ])
        .expect_err("bad scope");
        assert!(e.to_string().contains("/clusters/NAME"), "{e}");
    }

    #[test]
    fn role_assignments_parse() {
        let Top::Role(RoleCommand::Assignment(AssignmentCommand::Delete(a))) = parse(&[
            "role",
            "assignment",
            "delete",
            "--principal",
            "token:ci",
            "--role",
            "Owner",
            "--scope",
            "/clusters/gpu",
        ])
        .expect("parses") else {
            panic!("not delete");
        };
        assert_eq!(
            (a.principal.as_str(), a.role, a.scope.as_str()),
            ("token:ci", Role::Owner, "/clusters/gpu")
        );
        assert!(matches!(
            parse(&["role", "assignment", "list"]).expect("parses"),
            Top::Role(RoleCommand::Assignment(AssignmentCommand::List {
                principal: None
            }))
        ));
        assert!(
            parse(&["role", "assignment", "create", "--role", "Reader"]).is_err(),
            "no principal"
        );
    }
}
