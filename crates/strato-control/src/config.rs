//! The control plane's configuration: flags and `STRATO_*` variables, parsed
//! and checked once, before any port is bound.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Parser, ValueEnum};
use strato_core::quota::{QuotaLimits, RegionQuota};

/// Strato control plane: the gRPC API for clusters, quotas and jobs.
///
/// State lives in one SQLite file under --data-dir, or in PostgreSQL
/// (--database-url). Every flag can also be
/// set through the environment variable shown beside it.
#[derive(Debug, Clone, Parser)]
#[command(name = "strato-control", version, about, long_about)]
pub struct Config {
    /// Directory for the SQLite database (created if missing).
    #[arg(long, env = "STRATO_DATA_DIR", default_value = ".data/control")]
    pub data_dir: PathBuf,

    /// Keep state in this PostgreSQL database instead of the SQLite file
    /// under --data-dir: postgres://USER:PASSWORD@HOST[:PORT]/DATABASE. Off
    /// loopback the URL must ask for TLS that checks the server
    /// (sslmode=verify-full or verify-ca; sslrootcert=FILE for a private
    /// CA). Give it through the environment (a systemd EnvironmentFile
    /// readable by root only): a command line is visible to every user of
    /// the machine. --data-dir still holds the TLS CA and the secrets key.
    #[arg(
        long,
        env = "STRATO_DATABASE_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub database_url: Option<DatabaseUrl>,

    /// The most connections to --database-url this control plane opens.
    #[arg(
        long,
        env = "STRATO_DATABASE_MAX_CONNECTIONS",
        default_value_t = 16,
        value_parser = clap::value_parser!(u32).range(2..=1000)
    )]
    pub database_max_connections: u32,

    /// Address the gRPC API listens on.
    #[arg(long, env = "STRATO_GRPC_LISTEN", default_value = "127.0.0.1:7070")]
    pub grpc_listen: SocketAddr,

    /// Address the HTTP side port listens on (/healthz, /readyz).
    #[arg(long, env = "STRATO_HTTP_LISTEN", default_value = "127.0.0.1:7080")]
    pub http_listen: SocketAddr,

    /// A PEM certificate (chain) to serve instead of one issued by this
    /// control plane's own CA (in DATA_DIR/tls/); needs --tls-key. Clients
    /// then trust it through their system's roots or --ca-file.
    #[arg(long, env = "STRATO_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "STRATO_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// More names (DNS names or IP addresses) for the server certificate
    /// the own CA issues, beyond localhost, 127.0.0.1, ::1, the host name
    /// and the listen addresses; repeat for more (the variable takes them
    /// comma-separated).
    #[arg(
        long = "tls-san",
        env = "STRATO_TLS_SANS",
        value_delimiter = ',',
        value_name = "NAME"
    )]
    pub tls_sans: Vec<String>,

    /// Serve gRPC without TLS. Refused unless --grpc-listen is a loopback
    /// address; for a TLS-terminating proxy on the same machine. Tokens
    /// then cross the loopback in clear, and the CLI (https:// only) must
    /// go through that proxy.
    #[arg(long, env = "STRATO_INSECURE_PLAINTEXT")]
    pub insecure_plaintext: bool,

    /// Accept JWTs from this OpenID Connect issuer as users (principals
    /// oidc:SUBJECT, with the roles their role assignments give): exactly
    /// the `iss` its tokens carry; https:// (http:// only on loopback). Its
    /// keys come from its discovery document's jwks_uri.
    #[arg(long, env = "STRATO_OIDC_ISSUER", value_name = "URL")]
    pub oidc_issuer: Option<String>,

    /// The audience (`aud`) an OIDC token for Strato must carry; required
    /// with --oidc-issuer.
    #[arg(long, env = "STRATO_OIDC_AUDIENCE")]
    pub oidc_audience: Option<String>,

    /// A PEM file of CA certificates to trust for the OIDC issuer, besides
    /// the system's roots.
    #[arg(long, env = "STRATO_OIDC_CA_FILE")]
    pub oidc_ca_file: Option<PathBuf>,

    /// The studio's client id at the OIDC issuer: with it, the studio's
    /// sign-in page offers signing in there (authorization code with PKCE,
    /// a public client; its redirect URI is
    /// https://HOST:PORT/studio/login/callback). Needs --oidc-issuer.
    #[arg(long, env = "STRATO_STUDIO_OIDC_CLIENT_ID", requires = "oidc_issuer")]
    pub studio_oidc_client_id: Option<String>,

    /// The scopes the studio asks the OIDC issuer for.
    #[arg(long, env = "STRATO_STUDIO_OIDC_SCOPE", default_value = "openid")]
    pub studio_oidc_scope: String,

    /// Seconds a node's client certificate is valid (10 s to 30 days;
    /// default 7 days). Its agent renews it when two thirds of that have
    /// passed, and at every re-enrolment; a node cut off from the control
    /// plane for longer (the control plane down that long, too) needs a new
    /// join token. A removed node is refused at once, whatever its
    /// certificate says.
    #[arg(
        long,
        env = "STRATO_NODE_CERTIFICATE_LIFETIME",
        default_value_t = 7 * 86_400,
        value_name = "SECONDS"
    )]
    pub node_certificate_lifetime: u64,

    /// The region this control plane runs in: the default location of new
    /// clusters. Clusters elsewhere are accepted with a warning.
    #[arg(long, env = "STRATO_REGION", default_value = "local")]
    pub region: String,

    /// A TOML file of quota limits (see deploy/quota.toml). Without one the
    /// documented defaults apply: 200 dedicated vCPUs per region, 100 per VM
    /// family, 100 low-priority vCPUs, 500 clusters.
    #[arg(long, env = "STRATO_QUOTA_FILE")]
    pub quota_file: Option<PathBuf>,

    /// A TOML file of VM sizes of the operator's own, beside the built-in
    /// Azure catalog: `[[size]]` tables with name, vcpus, memory_gib, gpus,
    /// gpu_model and family (the quota family they count against); see
    /// deploy/vm-sizes.toml. A cluster records its size when it is created.
    #[arg(long, env = "STRATO_VM_SIZES_FILE")]
    pub vm_sizes_file: Option<PathBuf>,

    /// The directory of the power commands attached clusters may name
    /// (`--resume-command`, `--suspend-command`): executables the operator
    /// put there (Wake-on-LAN, IPMI, a cloud CLI), run by the control plane
    /// as `DIR/NAME NODE_ID HOST_NAME` with STRATO_CLUSTER, STRATO_NODE and
    /// STRATO_POWER_ACTION set, and nothing else of its environment but
    /// PATH. Without it, clusters with power commands are refused.
    #[arg(long, env = "STRATO_POWER_COMMANDS_DIR")]
    pub power_commands_dir: Option<PathBuf>,

    /// Where nodes come from. `local`: each node is a strato-agent process
    /// on this machine, running jobs in the local Docker engine. `none`:
    /// clusters and quotas only; no node is ever created, and clusters that
    /// want nodes say so.
    #[arg(long, env = "STRATO_PROVIDER", value_enum, default_value_t = ProviderKind::Local)]
    pub provider: ProviderKind,

    /// The strato-agent binary the local provider starts. Default: the one
    /// beside this binary.
    #[arg(long, env = "STRATO_AGENT_BINARY")]
    pub agent_binary: Option<PathBuf>,

    /// The gRPC address agents dial. Default: https:// (http:// under
    /// --insecure-plaintext) + --grpc-listen (with 127.0.0.1 for an
    /// unspecified address). With replicas: every replica's, separated by
    /// commas (the agents move to the next when one stops answering).
    #[arg(long, env = "STRATO_AGENT_ENDPOINT")]
    pub agent_endpoint: Option<String>,

    /// The Docker engine socket of the local provider's nodes.
    #[arg(
        long,
        env = "STRATO_DOCKER_SOCKET",
        default_value = "/var/run/docker.sock"
    )]
    pub docker_socket: String,

    /// A PEM file of extra CA certificates trusted for storage endpoints
    /// (e.g. Azurite's self-signed certificate): by the control plane, which
    /// writes code folders (`code:`) and reads outputs (`job download`) with
    /// the cluster's identity, and by the local provider's agents.
    #[arg(long, env = "STRATO_STORAGE_CA_FILE")]
    pub storage_ca_file: Option<PathBuf>,

    /// Seconds a local agent keeps trying to reach this control plane
    /// before it stops and removes its node's containers and exits (so the
    /// agents of a control plane that is gone for good do not linger). An
    /// outage longer than this ends the local nodes' jobs: they are retried
    /// as lost when the control plane is back. 0: agents never give up.
    #[arg(
        long,
        env = "STRATO_LOCAL_AGENT_GIVE_UP_AFTER",
        default_value_t = 300,
        value_name = "SECONDS"
    )]
    pub local_agent_give_up_after: u64,

    /// Seconds a new node may take to enrol before it is marked unusable
    /// and replaced.
    #[arg(long, env = "STRATO_NODE_START_TIMEOUT", default_value_t = 60)]
    pub node_start_timeout: u64,

    /// Seconds without a heartbeat after which a node is marked unusable,
    /// its jobs retried or failed, and the node removed.
    #[arg(long, env = "STRATO_NODE_HEARTBEAT_TIMEOUT", default_value_t = 15)]
    pub node_heartbeat_timeout: u64,

    /// Seconds between heartbeats that agents are told to keep.
    #[arg(long, env = "STRATO_HEARTBEAT_INTERVAL", default_value_t = 2)]
    pub heartbeat_interval: u32,

    /// Job submits each caller may make per second, refilled continuously;
    /// over it, submits are refused with RESOURCE_EXHAUSTED and a retry
    /// hint.
    #[arg(
        long,
        env = "STRATO_SUBMIT_RATE",
        default_value_t = 100.0,
        value_name = "PER_SECOND"
    )]
    pub submit_rate: f64,

    /// Job submits a caller may make at once before the rate applies.
    #[arg(long, env = "STRATO_SUBMIT_BURST", default_value_t = 1_000)]
    pub submit_burst: u32,

    /// Lines of output kept of one attempt on one node; past them one
    /// `[strato] output truncated` line says so and the rest is dropped.
    #[arg(
        long,
        env = "STRATO_MAX_LOG_LINES_PER_ATTEMPT",
        default_value_t = strato_core::limits::MAX_STORED_LINES_PER_RANK
    )]
    pub max_log_lines_per_attempt: u64,

    /// Bytes of output kept of one attempt on one node (default 100 MiB);
    /// past them one `[strato] output truncated` line says so.
    #[arg(
        long,
        env = "STRATO_MAX_LOG_BYTES_PER_ATTEMPT",
        default_value_t = strato_core::limits::MAX_STORED_BYTES_PER_RANK
    )]
    pub max_log_bytes_per_attempt: u64,

    /// Seconds an ended job (with its logs) is kept before it is deleted;
    /// 0 keeps jobs until `strato job delete`. Default: 30 days.
    #[arg(
        long,
        env = "STRATO_JOB_RETENTION",
        default_value_t = 30 * 86_400,
        value_name = "SECONDS"
    )]
    pub job_retention: u64,

    /// Long-lived calls one caller may keep open at once: log streams
    /// followed (`strato job logs --follow`) and jobs waited on (`strato
    /// job wait`); past it, a new one is refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "STRATO_MAX_FOLLOWERS_PER_CALLER", default_value_t = 100)]
    pub max_followers_per_caller: u32,

    /// Milliseconds between reconcile passes when nothing happens (events
    /// such as a submitted job trigger one at once, but no sooner after
    /// the last pass than that pass took).
    #[arg(long, env = "STRATO_RECONCILE_INTERVAL_MS", default_value_t = 1000)]
    pub reconcile_interval_ms: u64,

    /// Seconds a canceled job's container gets between SIGTERM and SIGKILL.
    #[arg(long, env = "STRATO_CANCEL_GRACE", default_value_t = 10)]
    pub cancel_grace: u32,

    /// The `iss` of the access tokens this control plane issues for
    /// clusters' identities. Default: https:// (http:// under
    /// --insecure-plaintext) + --http-listen + /, where the
    /// OIDC discovery document and JWKS are served. A value of the form
    /// https://sts.windows.net/<tenant>/ makes Azure Storage's emulator
    /// (Azurite) accept the tokens.
    #[arg(long, env = "STRATO_TOKEN_ISSUER")]
    pub token_issuer: Option<String>,

    /// Seconds the access tokens this control plane issues are valid (60 to
    /// 86400). Clients refresh them before they expire; a short lifetime
    /// shows that long jobs (and their mounts) keep working.
    #[arg(
        long,
        env = "STRATO_TOKEN_LIFETIME",
        value_name = "SECONDS",
        default_value_t = 3600,
        value_parser = clap::value_parser!(u32).range(i64::from(crate::tokens::MIN_LIFETIME_SECONDS)..=i64::from(crate::tokens::MAX_LIFETIME_SECONDS))
    )]
    pub token_lifetime: u32,

    /// The `tid` of issued tokens. Default: the tenant in an
    /// https://sts.windows.net/<tenant>/ issuer, else
    /// 00000000-0000-0000-0000-000000000000.
    #[arg(long, env = "STRATO_TENANT_ID")]
    pub tenant_id: Option<String>,

    /// Federation to Entra ID: the tenant whose tokens jobs get. When set,
    /// the control plane no longer issues its own tokens: it exchanges an
    /// assertion it signs (iss = --token-issuer, sub =
    /// strato:cluster:<name>, aud = api://AzureADTokenExchange) for a real
    /// token of the cluster's user-assigned identity.
    #[arg(long, env = "STRATO_FEDERATION_TENANT_ID")]
    pub federation_tenant_id: Option<String>,

    /// A user-assigned identity's Entra client id, as
    /// RESOURCE_ID=CLIENT_ID; repeat for more (the variable takes them
    /// comma-separated). Needed for every identity used with federation.
    #[arg(
        long = "federated-identity",
        env = "STRATO_FEDERATED_IDENTITIES",
        value_delimiter = ',',
        value_name = "RESOURCE_ID=CLIENT_ID"
    )]
    pub federated_identities: Vec<String>,

    /// Entra ID's authority host for federation.
    #[arg(
        long,
        env = "STRATO_FEDERATION_AUTHORITY_HOST",
        default_value = crate::federation::PUBLIC_AUTHORITY
    )]
    pub federation_authority_host: String,

    /// A PEM file of extra CA certificates trusted for the authority host.
    #[arg(long, env = "STRATO_FEDERATION_CA_FILE")]
    pub federation_ca_file: Option<PathBuf>,

    /// Log filter, in tracing's EnvFilter syntax.
    #[arg(long, env = "STRATO_LOG", default_value = "info")]
    pub log: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProviderKind {
    /// Nodes are strato-agent processes on this machine.
    Local,
    /// No node provider: clusters are stored, nodes are never created.
    None,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--region {0:?}: must be 1 to 64 lowercase letters and digits, starting with a letter")]
    Region(String),
    #[error("--quota-file {path}: {source}")]
    QuotaRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--quota-file {path}: {source}")]
    QuotaParse {
        path: PathBuf,
        #[source]
        source: QuotaFileError,
    },
    #[error("--vm-sizes-file {}: {why}", path.display())]
    VmSizes { path: PathBuf, why: String },
    #[error("--submit-rate {rate} and --submit-burst {burst} must both be above 0")]
    SubmitRate { rate: f64, burst: u32 },
    #[error("--max-followers-per-caller must be above 0")]
    Followers,
    #[error(
        "--max-log-lines-per-attempt must be above 0 and --max-log-bytes-per-attempt at least 16384 (one line)"
    )]
    LogBudget,
    #[error(
        "--oidc-issuer and --oidc-audience go together: the issuer whose tokens are accepted, and the audience they must carry"
    )]
    Oidc,
    #[error("--node-certificate-lifetime {0}: must be 10 to 2592000 seconds (30 days)")]
    NodeCertificateLifetime(u64),
    #[error("--grpc-listen and --http-listen are both {0}; give them different ports")]
    SameAddress(SocketAddr),
    #[error(
        "--node-heartbeat-timeout {timeout}s must be more than twice --heartbeat-interval {interval}s"
    )]
    Heartbeat { timeout: u64, interval: u32 },
    #[error(
        "--insecure-plaintext is only for loopback addresses; {0} is not one (serve TLS, the default)"
    )]
    PlaintextNotLoopback(SocketAddr),
    #[error("--tls-san {0:?}: must be a DNS name or an IP address")]
    TlsSan(String),
    #[error("--database-url: {0}")]
    DatabaseUrl(String),
    #[error("--reconcile-interval-ms must be between 50 and 60000")]
    ReconcileInterval,
    #[error("--token-issuer {0:?}: must be an http:// or https:// URL ending in /")]
    TokenIssuer(String),
    #[error("--federated-identity {0:?}: must be RESOURCE_ID=CLIENT_ID")]
    FederatedIdentity(String),
    #[error("--federation-tenant-id {0:?}: must be a tenant id (letters, digits, '-' and '.')")]
    FederationTenant(String),
    #[error(
        "--federation-tenant-id needs --token-issuer: an https:// URL where Entra ID reads this control plane's OIDC discovery document and JWKS"
    )]
    FederationIssuer,
}

/// A PostgreSQL URL, checked when parsed; its `Debug` hides it (it holds
/// a password).
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// The URL itself, for connecting; never for logs.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DatabaseUrl(..)")
    }
}

impl std::str::FromStr for DatabaseUrl {
    type Err = std::convert::Infallible;

    /// Taken as given: [`DatabaseUrl::check`] judges it (clap would echo
    /// the password in its own error).
    fn from_str(url: &str) -> Result<Self, Self::Err> {
        Ok(DatabaseUrl(url.to_owned()))
    }
}

impl DatabaseUrl {
    /// Accepts `postgres://` and `postgresql://` URLs; off loopback only
    /// with `sslmode=verify-full` or `verify-ca`. The error never repeats
    /// the URL.
    pub fn check(&self) -> Result<(), String> {
        use sqlx::postgres::{PgConnectOptions, PgSslMode};
        let url = self.0.as_str();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(
                "must be a postgres:// or postgresql:// URL (SQLite is the default without one)"
                    .into(),
            );
        }
        // Judged as the driver will connect: `?host=` and `?sslmode=` in the
        // query override what the URL's authority says.
        let options: PgConnectOptions = url.parse().map_err(|_| {
            "is not a PostgreSQL URL (postgres://USER:PASSWORD@HOST:PORT/DATABASE)".to_owned()
        })?;
        let host = options.get_host();
        let local = options.get_socket().is_some()
            || host.starts_with('/')
            || host == "localhost"
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        let mode = options.get_ssl_mode();
        if !local && !matches!(mode, PgSslMode::VerifyFull | PgSslMode::VerifyCa) {
            return Err(format!(
                "host {host} is not a loopback address: add sslmode=verify-full (the server's \
                 certificate checked against the system's roots or sslrootcert=FILE); \
                 sslmode={} would let anyone on the path read or change the state",
                ssl_mode_name(mode)
            ));
        }
        Ok(())
    }
}

fn ssl_mode_name(mode: sqlx::postgres::PgSslMode) -> &'static str {
    use sqlx::postgres::PgSslMode;
    match mode {
        PgSslMode::Disable => "disable",
        PgSslMode::Allow => "allow",
        PgSslMode::Prefer => "prefer",
        PgSslMode::Require => "require",
        PgSslMode::VerifyCa => "verify-ca",
        PgSslMode::VerifyFull => "verify-full",
    }
}

/// Where a client on this machine reaches a listener bound at `addr`:
/// 127.0.0.1 for an unspecified address.
pub fn dialable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}

/// The configuration after its checks, with the quota file read.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config: Config,
    pub quota: QuotaLimits,
    /// The built-in sizes and those of `--vm-sizes-file`.
    pub catalog: strato_core::catalog::Catalog,
}

impl Config {
    /// The token issuer URL, defaulted from the HTTP address.
    pub fn issuer(&self, http: SocketAddr) -> String {
        self.token_issuer
            .clone()
            .unwrap_or_else(|| format!("{}/", self.http_url(http)))
    }

    fn scheme(&self) -> &'static str {
        if self.insecure_plaintext {
            "http"
        } else {
            "https"
        }
    }

    /// The URL that reaches the gRPC port bound at `grpc` from this
    /// machine: https://, or http:// with --insecure-plaintext.
    pub fn grpc_url(&self, grpc: SocketAddr) -> String {
        format!("{}://{}", self.scheme(), dialable(grpc))
    }

    /// The URL that reaches the HTTP side port bound at `http` from this
    /// machine: https://, or http:// with --insecure-plaintext.
    pub fn http_url(&self, http: SocketAddr) -> String {
        format!("{}://{}", self.scheme(), dialable(http))
    }

    /// The federation settings, when --federation-tenant-id is set.
    pub fn federation(&self) -> Result<Option<crate::federation::FederationConfig>, ConfigError> {
        let Some(tenant) = &self.federation_tenant_id else {
            return Ok(None);
        };
        let tenant_ok = !tenant.is_empty()
            && tenant
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if !tenant_ok {
            return Err(ConfigError::FederationTenant(tenant.clone()));
        }
        if !self
            .token_issuer
            .as_deref()
            .is_some_and(|i| i.starts_with("https://"))
        {
            return Err(ConfigError::FederationIssuer);
        }
        let mut client_ids = std::collections::HashMap::new();
        for pair in &self.federated_identities {
            match pair.rsplit_once('=') {
                Some((id, client)) if !id.trim().is_empty() && !client.trim().is_empty() => {
                    client_ids.insert(id.trim().to_ascii_lowercase(), client.trim().to_owned());
                }
                _ => return Err(ConfigError::FederatedIdentity(pair.clone())),
            }
        }
        Ok(Some(crate::federation::FederationConfig {
            tenant_id: tenant.clone(),
            authority_host: self.federation_authority_host.clone(),
            client_ids,
            ca_file: self.federation_ca_file.clone(),
        }))
    }

    /// The tenant of issued tokens.
    pub fn tenant(&self, issuer: &str) -> String {
        if let Some(t) = &self.tenant_id {
            return t.clone();
        }
        issuer
            .strip_prefix("https://sts.windows.net/")
            .map(|rest| rest.trim_end_matches('/').to_owned())
            .filter(|t| !t.is_empty() && !t.contains('/'))
            .unwrap_or_else(|| "00000000-0000-0000-0000-000000000000".to_owned())
    }

    pub fn validate(self) -> Result<Settings, ConfigError> {
        if !(self.submit_rate.is_finite() && self.submit_rate > 0.0) || self.submit_burst == 0 {
            return Err(ConfigError::SubmitRate {
                rate: self.submit_rate,
                burst: self.submit_burst,
            });
        }
        let region_ok = (1..=64).contains(&self.region.len())
            && self.region.starts_with(|c: char| c.is_ascii_lowercase())
            && self
                .region
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if !region_ok {
            return Err(ConfigError::Region(self.region));
        }
        if self.grpc_listen == self.http_listen && self.grpc_listen.port() != 0 {
            return Err(ConfigError::SameAddress(self.grpc_listen));
        }
        if self.node_heartbeat_timeout <= 2 * u64::from(self.heartbeat_interval)
            || self.heartbeat_interval == 0
        {
            return Err(ConfigError::Heartbeat {
                timeout: self.node_heartbeat_timeout,
                interval: self.heartbeat_interval,
            });
        }
        if self.max_followers_per_caller == 0 {
            return Err(ConfigError::Followers);
        }
        if self.max_log_lines_per_attempt == 0
            || self.max_log_bytes_per_attempt < strato_core::limits::MAX_LOG_LINE_BYTES as u64
        {
            return Err(ConfigError::LogBudget);
        }
        if self.oidc_issuer.is_some() != self.oidc_audience.is_some() {
            return Err(ConfigError::Oidc);
        }
        if !(10..=30 * 86_400).contains(&self.node_certificate_lifetime) {
            return Err(ConfigError::NodeCertificateLifetime(
                self.node_certificate_lifetime,
            ));
        }
        if self.insecure_plaintext && !self.grpc_listen.ip().is_loopback() {
            return Err(ConfigError::PlaintextNotLoopback(self.grpc_listen));
        }
        for san in &self.tls_sans {
            let ok = !san.is_empty()
                && san.len() <= 253
                && (san.parse::<std::net::IpAddr>().is_ok()
                    || san
                        .strip_prefix("*.")
                        .unwrap_or(san)
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'));
            if !ok {
                return Err(ConfigError::TlsSan(san.clone()));
            }
        }
        if let Some(url) = &self.database_url {
            url.check().map_err(ConfigError::DatabaseUrl)?;
        }
        if !(50..=60_000).contains(&self.reconcile_interval_ms) {
            return Err(ConfigError::ReconcileInterval);
        }
        if let Some(issuer) = &self.token_issuer
            && !((issuer.starts_with("https://") || issuer.starts_with("http://"))
                && issuer.ends_with('/'))
        {
            return Err(ConfigError::TokenIssuer(issuer.clone()));
        }
        self.federation()?;
        let quota = match &self.quota_file {
            None => QuotaLimits::default(),
            Some(path) => load_quota(path)?,
        };
        let catalog = match &self.vm_sizes_file {
            None => strato_core::catalog::Catalog::builtin(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::VmSizes {
                    path: path.clone(),
                    why: e.to_string(),
                })?;
                strato_core::catalog::Catalog::with_sizes_file(&text).map_err(|e| {
                    ConfigError::VmSizes {
                        path: path.clone(),
                        why: e.to_string(),
                    }
                })?
            }
        };
        Ok(Settings {
            config: self,
            quota,
            catalog,
        })
    }
}

/// Reads a quota file. Unknown keys are errors, so a typo cannot silently
/// leave a default in force.
pub fn load_quota(path: &Path) -> Result<QuotaLimits, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::QuotaRead {
        path: path.to_owned(),
        source,
    })?;
    parse_quota(&text).map_err(|source| ConfigError::QuotaParse {
        path: path.to_owned(),
        source,
    })
}

/// A region's limits as written in the quota file: keys left out inherit.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RegionOverrides {
    dedicated_cores_total: Option<u64>,
    dedicated_cores_per_family: Option<u64>,
    low_priority_cores: Option<u64>,
    max_clusters: Option<u64>,
    #[serde(default)]
    families: BTreeMap<String, u64>,
}

impl RegionOverrides {
    fn apply(self, base: &RegionQuota) -> RegionQuota {
        let mut families = base.families.clone();
        families.extend(self.families);
        RegionQuota {
            dedicated_cores_total: self
                .dedicated_cores_total
                .unwrap_or(base.dedicated_cores_total),
            dedicated_cores_per_family: self
                .dedicated_cores_per_family
                .unwrap_or(base.dedicated_cores_per_family),
            low_priority_cores: self.low_priority_cores.unwrap_or(base.low_priority_cores),
            max_clusters: self.max_clusters.unwrap_or(base.max_clusters),
            families,
        }
    }
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaFile {
    #[serde(default)]
    default: RegionOverrides,
    #[serde(default)]
    regions: BTreeMap<String, RegionOverrides>,
}

/// A quota file that is not valid TOML of the quota file's schema.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.to_string().trim_end().replace('\n', " "))]
pub struct QuotaFileError(#[from] toml::de::Error);

/// Parses a quota file: `[default]` overrides the built-in defaults, and
/// each `[regions.NAME]` overrides `[default]`.
pub fn parse_quota(text: &str) -> Result<QuotaLimits, QuotaFileError> {
    let file: QuotaFile = toml::from_str(text)?;
    let default = file.default.apply(&RegionQuota::default());
    let regions = file
        .regions
        .into_iter()
        .map(|(name, o)| (name, o.apply(&default)))
        .collect();
    Ok(QuotaLimits { default, regions })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_file_overrides_defaults_per_region_and_family() {
        let q = parse_quota(
            r#"
            [default]
            dedicated_cores_total = 64

            [regions.westeurope]
            low_priority_cores = 8
            [regions.westeurope.families]
            standardNCSv3Family = 12
            "#,
        )
        .expect("parses");
        assert_eq!(q.region("local").dedicated_cores_total, 64);
        assert_eq!(q.region("local").dedicated_cores_per_family, 100);
        let we = q.region("westeurope");
        assert_eq!(
            (
                we.low_priority_cores,
                we.family_limit("standardNCSv3Family")
            ),
            (8, 12)
        );
        assert_eq!(we.family_limit("standardDv2Family"), 100);
        // Unlisted keys of a region inherit from [default].
        assert_eq!(we.dedicated_cores_total, 64);
    }

    #[test]
    fn quota_file_typo_is_an_error_naming_the_key() {
        let e = parse_quota("[default]\ndedicated_core_total = 1\n")
            .expect_err("typo")
            .to_string();
        assert!(e.contains("dedicated_core_total"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }

    #[test]
    fn the_shipped_example_quota_file_parses() {
        let text = include_str!("../../../deploy/quota.toml");
        parse_quota(text).expect("deploy/quota.toml parses");
    }

    #[test]
    fn the_shipped_example_sizes_file_parses() {
        let text = include_str!("../../../deploy/vm-sizes.toml");
        let catalog =
            strato_core::catalog::Catalog::with_sizes_file(text).expect("deploy/vm-sizes.toml");
        assert!(catalog.sizes().len() > strato_core::catalog::builtin().len());
    }

    #[test]
    fn federation_settings_are_checked_before_start() {
        let parse = |extra: &[&str]| {
            let mut args = vec!["strato-control", "--federation-tenant-id", "tenant-1"];
            args.extend_from_slice(extra);
            Config::parse_from(args).validate()
        };
        assert!(matches!(parse(&[]), Err(ConfigError::FederationIssuer)));
        let issuer = ["--token-issuer", "https://strato.example.com/"];
        assert!(matches!(
            parse(&[&issuer[..], &["--federated-identity", "no-client-id"]].concat()),
            Err(ConfigError::FederatedIdentity(_))
        ));
        let settings = parse(
            &[
                &issuer[..],
                &[
                    "--federated-identity",
                    "/subscriptions/S/x/Trainer=abc,/subscriptions/s/y=def",
                ],
            ]
            .concat(),
        )
        .expect("valid");
        let federation = settings.config.federation().expect("ok").expect("on");
        assert_eq!(federation.client_ids["/subscriptions/s/x/trainer"], "abc");
        assert_eq!(federation.client_ids.len(), 2);
        assert_eq!(
            federation.authority_host,
            "https://login.microsoftonline.com"
        );
    }

    #[test]
    fn plaintext_is_refused_off_loopback() {
        let parse = |extra: &[&str]| {
            let mut args = vec!["strato-control", "--insecure-plaintext"];
            args.extend_from_slice(extra);
            Config::parse_from(args).validate()
        };
        assert!(parse(&[]).is_ok(), "the default addresses are loopback");
        let e = parse(&["--grpc-listen", "0.0.0.0:7070"]).expect_err("not loopback");
        assert!(e.to_string().contains("0.0.0.0:7070"), "{e}");
        let bad_san = Config::parse_from(["strato-control", "--tls-san", "a b"]).validate();
        assert!(matches!(bad_san, Err(ConfigError::TlsSan(_))));
    }

    #[test]
    fn a_database_url_off_loopback_must_check_the_servers_certificate() {
        let parse = |url: &str| {
            Config::parse_from(["strato-control", "--database-url", url])
                .validate()
                .map(|s| s.config.database_url.map(|u| u.expose().to_owned()))
        };
        let local = "postgres://strato:pw@127.0.0.1:5432/strato";
        assert_eq!(parse(local).expect("loopback").as_deref(), Some(local));
        assert!(parse("postgresql://u@localhost/db").is_ok());
        assert!(parse("postgres://u:pw@[::1]:5432/db").is_ok());
        let e = parse("postgres://u:pw@db.example.com/strato").expect_err("no TLS");
        assert!(e.to_string().contains("sslmode=verify-full"), "{e}");
        assert!(
            !e.to_string().contains("pw@"),
            "the password is not echoed: {e}"
        );
        let e = parse("postgres://u:pw@10.0.0.5/strato?sslmode=require").expect_err("unchecked");
        assert!(e.to_string().contains("sslmode=require"), "{e}");
        assert!(parse("postgres://u:pw@db.example.com/strato?sslmode=verify-full").is_ok());
        // Judged as the driver connects: the query's host and sslmode win.
        let e = parse("postgres://u:pw@localhost/db?host=db.example.com").expect_err("remote");
        assert!(e.to_string().contains("db.example.com"), "{e}");
        let e = parse("postgres://u:pw@db.example.com/db?sslmode=verify-full&sslmode=disable")
            .expect_err("the last sslmode wins");
        assert!(e.to_string().contains("sslmode=disable"), "{e}");
        let e = parse("mysql://u@localhost/db").expect_err("not postgres");
        assert!(e.to_string().contains("postgres://"), "{e}");
        let c = Config::parse_from(["strato-control", "--database-url", local]);
        assert!(!format!("{c:?}").contains("pw"), "Debug hides the password");
    }

    #[test]
    fn bad_region_is_refused_before_start() {
        let c = Config::parse_from(["strato-control", "--region", "West Europe"]);
        assert!(matches!(c.validate(), Err(ConfigError::Region(_))));
    }
}
