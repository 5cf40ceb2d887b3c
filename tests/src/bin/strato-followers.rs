//! Load for `cargo xtask bench followers`: holds COUNT idle `logs
//! --follow` streams (`StreamLogs` with `follow`) on one job, spread over
//! connections of 50 streams each, prints `ready COUNT` once every stream
//! has its response headers, and keeps them open until killed.
//!
//! Usage: `strato-followers CONFIG JOB COUNT` (CONFIG: a client
//! configuration such as DATA_DIR/admin.conf).

#![allow(clippy::print_stdout, clippy::print_stderr)] // reason: a load tool; it reports on stdout

use std::process::ExitCode;

use strato_proto::v1;
use strato_proto::v1::job_service_client::JobServiceClient;

/// Streams per connection (below HTTP/2's usual 100 concurrent streams).
const PER_CONNECTION: usize = 50;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(config), Some(job), Some(count)) = (
        args.get(1),
        args.get(2),
        args.get(3).and_then(|c| c.parse::<usize>().ok()),
    ) else {
        eprintln!("usage: strato-followers CONFIG JOB COUNT");
        return ExitCode::from(2);
    };
    let config = match strato_e2e::admin_config(std::path::Path::new(config)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("strato-followers: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut streams = Vec::with_capacity(count);
    let mut client = None;
    for i in 0..count {
        if i % PER_CONNECTION == 0 {
            match strato_e2e::connect_tls(&config, config.token.as_deref()).await {
                Ok(c) => client = Some(JobServiceClient::new(c)),
                Err(e) => {
                    eprintln!("strato-followers: connecting: {e:#}");
                    return ExitCode::FAILURE;
                }
            }
        }
        let Some(client) = client.as_mut() else {
            return ExitCode::FAILURE;
        };
        match client
            .stream_logs(v1::StreamLogsRequest {
                id: job.clone(),
                follow: true,
                after: None,
            })
            .await
        {
            Ok(stream) => streams.push(stream.into_inner()),
            Err(e) => {
                eprintln!("strato-followers: stream {i}: {}", e.message());
                return ExitCode::FAILURE;
            }
        }
    }
    println!("ready {}", streams.len());
    // Idle until killed; the streams stay open.
    std::future::pending::<()>().await;
    ExitCode::SUCCESS
}
