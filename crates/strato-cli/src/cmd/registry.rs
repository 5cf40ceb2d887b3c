//! `strato registry`: the container registries nodes pull job images from,
//! with the credentials they log in with. Talks to `RegistryService`.

use clap::Subcommand;
use strato_proto::v1::{self, registry_service_client::RegistryServiceClient};

use crate::Failure;
use crate::client::connect;
use crate::config::Settings;
use crate::view::registry::RegistryView;
use crate::view::{Format, print};

#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Register a registry: jobs of the clusters it names whose image
    /// starts with its server (`SERVER/repo:tag`) are pulled with its
    /// credentials: a user name and a password (stored encrypted, never
    /// shown again), or the job's cluster identity through the registry's
    /// token exchange, as Azure Container Registry takes it. Only an Owner
    /// may do this.
    #[command(
        after_help = "Examples:\n  strato registry create -n lab --server registry.lab.example:5000 \\\n    --username puller --password-file ./registry-password --clusters train,gpu-a\n  strato registry create -n acr --server myacr.azurecr.io --identity default --all-clusters"
    )]
    Create {
        /// Lowercase letters, digits, '_' and '-'.
        #[arg(short = 'n', long)]
        name: String,
        /// HOST or HOST:PORT, as image names start with it
        /// (myacr.azurecr.io); one registry per server.
        #[arg(long)]
        server: String,
        #[arg(
            long,
            short = 'u',
            requires = "password_file",
            conflicts_with = "identity"
        )]
        username: Option<String>,
        /// A file holding the password or token (one line; `-` reads
        /// standard input). Never given on the command line, where other
        /// users could see it.
        #[arg(long, value_name = "PATH", requires = "username")]
        password_file: Option<std::path::PathBuf>,
        /// Log in with the job's cluster identity instead: `default`, or a
        /// user-assigned identity's resource id (the cluster must have it;
        /// it needs AcrPull on the registry).
        #[arg(
            long,
            value_name = "default|RESOURCE_ID",
            required_unless_present = "username"
        )]
        identity: Option<String>,
        /// The clusters whose jobs may pull with it (comma-separated): only
        /// their nodes ever receive its credentials.
        #[arg(
            long,
            value_delimiter = ',',
            value_name = "CLUSTER,...",
            required_unless_present = "all_clusters"
        )]
        clusters: Vec<String>,
        /// Every cluster's jobs may pull with it.
        #[arg(long, conflicts_with = "clusters")]
        all_clusters: bool,
    },
    Show {
        #[arg(short = 'n', long)]
        name: String,
    },
    List,
    Delete {
        #[arg(short = 'n', long)]
        name: String,
    },
}

/// The password in `path` (`-`: standard input), without its line end.
fn read_password(path: &std::path::Path) -> Result<String, Failure> {
    let text = if path == std::path::Path::new("-") {
        std::io::read_to_string(std::io::stdin())
            .map_err(|e| Failure::usage(format!("--password-file -: {e}")))?
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| Failure::usage(format!("--password-file {}: {e}", path.display())))?
    };
    Ok(text.trim_end_matches(['\r', '\n']).to_owned())
}

pub async fn run(
    settings: &Settings,
    format: Format,
    command: RegistryCommand,
) -> Result<(), Failure> {
    // Read before connecting: a bad file is a usage error either way.
    let password = match &command {
        RegistryCommand::Create {
            password_file: Some(path),
            ..
        } => Some(read_password(path)?),
        _ => None,
    };
    let mut client = RegistryServiceClient::new(connect(settings).await?);
    let list = match command {
        RegistryCommand::Create {
            name,
            server,
            username,
            identity,
            clusters,
            all_clusters,
            ..
        } => vec![RegistryView::from(
            client
                .create_registry(v1::CreateRegistryRequest {
                    name,
                    server,
                    username: username.unwrap_or_default(),
                    password: password.unwrap_or_default(),
                    identity: identity.unwrap_or_default(),
                    clusters: if all_clusters {
                        vec!["*".to_owned()]
                    } else {
                        clusters
                    },
                })
                .await?
                .into_inner(),
        )],
        RegistryCommand::Show { name } => vec![RegistryView::from(
            client
                .get_registry(v1::GetRegistryRequest { name })
                .await?
                .into_inner(),
        )],
        RegistryCommand::List => client
            .list_registries(v1::ListRegistriesRequest {})
            .await?
            .into_inner()
            .registries
            .into_iter()
            .map(RegistryView::from)
            .collect(),
        RegistryCommand::Delete { name } => {
            client
                .delete_registry(v1::DeleteRegistryRequest { name: name.clone() })
                .await?;
            if format == Format::Table {
                println!("registry {name} deleted");
            }
            return Ok(());
        }
    };
    print(format, &list)?;
    Ok(())
}
