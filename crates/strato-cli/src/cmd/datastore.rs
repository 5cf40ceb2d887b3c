//! `strato datastore`: register the blob containers that jobs read inputs
//! from and write outputs to. Talks to `DatastoreService`.

use clap::Subcommand;
use strato_proto::v1::{self, datastore_service_client::DatastoreServiceClient};

use crate::Failure;
use crate::client::connect;
use crate::config::Settings;
use crate::view::datastore::DatastoreView;
use crate::view::{Format, print};

#[derive(Debug, Subcommand)]
pub enum DatastoreCommand {
    /// Register a datastore: an Azure Blob container.
    Create {
        /// Lowercase letters, digits and '_'.
        #[arg(short = 'n', long)]
        name: String,
        /// The account's blob endpoint (https), e.g.
        /// https://acct.blob.core.windows.net.
        #[arg(long)]
        account_url: String,
        /// The container.
        #[arg(long)]
        container: String,
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

pub async fn run(
    settings: &Settings,
    format: Format,
    command: DatastoreCommand,
) -> Result<(), Failure> {
    let mut client = DatastoreServiceClient::new(connect(settings).await?);
    let list = match command {
        DatastoreCommand::Create {
            name,
            account_url,
            container,
        } => vec![DatastoreView::from(
            client
                .create_datastore(v1::CreateDatastoreRequest {
                    name,
                    account_url,
                    container,
                })
                .await?
                .into_inner(),
        )],
        DatastoreCommand::Show { name } => {
            vec![DatastoreView::from(
                client
                    .get_datastore(v1::GetDatastoreRequest { name })
                    .await?
                    .into_inner(),
            )]
        }
        DatastoreCommand::List => client
            .list_datastores(v1::ListDatastoresRequest {})
            .await?
            .into_inner()
            .datastores
            .into_iter()
            .map(DatastoreView::from)
            .collect(),
        DatastoreCommand::Delete { name } => {
            client
                .delete_datastore(v1::DeleteDatastoreRequest { name: name.clone() })
                .await?;
            if format == Format::Table {
                println!("datastore {name} deleted");
            }
            return Ok(());
        }
    };
    print(format, &list)?;
    Ok(())
}
