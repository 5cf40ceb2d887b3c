//! `strato job`: submit a command to run in a Docker image on a cluster,
//! follow it, cancel it, wait for it. Talks to `JobService`.

mod data;
mod wait;

use std::io::Write;

use clap::{Args, Subcommand};
use strato_proto::client::AuthedChannel;
use strato_proto::v1::{self, job_service_client::JobServiceClient};

use crate::Failure;
use crate::client::Retry;
use crate::cmd::ArgError;
use crate::view::job::{JobView, job_state};
use crate::view::log::LogPrinter;
use crate::view::{Format, print};

const SUBMIT_AFTER_HELP: &str = "\
Example:
  id=$(strato job submit --compute cpu-cluster --image python:3.12 \\
         --env EPOCHS=3 --cpu 2 --memory-mb 4096 -- python train.py --lr 0.1)
  strato job wait \"$id\"

  # MPI on 2 nodes x 2 processes: Strato runs mpirun on rank 0 (no SSH).
  strato job submit --compute cpu-cluster --image my-mpi-image \\
         --node-count 2 --process-count-per-node 2 -- python3 hello_mpi.py";

const CREATE_AFTER_HELP: &str = "\
Example job.yml:
  $schema: https://azuremlschemas.azureedge.net/latest/commandJob.schema.json
  type: command
  command: python train.py --data ${{inputs.data}} --out ${{outputs.model}}
  environment:
    image: python:3.12
  compute: azureml:cpu-cluster
  inputs:
    data: {type: uri_folder, path: azureml://datastores/lake/paths/data, mode: ro_mount}
  outputs:
    model: {type: uri_folder, path: azureml://datastores/lake/paths/models/run1}
    report: {type: uri_folder}   # no path: workspaceblobstore, azureml/<job>/report
  code: ./src                    # uploaded to workspaceblobstore; the command runs in it

  strato job create --file job.yml --stream    # or: id=$(strato job create --file job.yml)

The default datastore (code, ./outputs as artifacts, outputs without a path)
is the one registered as workspaceblobstore:
  strato datastore create -n workspaceblobstore --account-url URL --container NAME";

const WAIT_AFTER_HELP: &str = "\
Exit status: 0 when the job completed, 1 when it failed or was canceled (or
the request was refused), 3 when the control plane cannot be reached or
stayed unavailable for a minute while waiting.";

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Submit a job: run a command in a Docker image on a cluster.
    ///
    /// The command (after `--`) runs without a shell on one node of the
    /// cluster. Prints the job id (the whole job with -o json/yaml).
    #[command(after_help = SUBMIT_AFTER_HELP)]
    Submit(Box<SubmitArgs>),
    /// Create a job from an Azure ML command job YAML file, as `az ml job
    /// create --file` does.
    ///
    /// Runs `command` in a shell in `environment.image` on `compute`, with
    /// `${{inputs.NAME}}` and `${{outputs.NAME}}` replaced by the data's
    /// paths (or a literal input's value); also `environment_variables`,
    /// `resources.instance_count`, `distribution` (mpi, pytorch) with
    /// `process_count_per_instance`, uri_folder/uri_file inputs and outputs
    /// on azureml://datastores paths with their `mode` (outputs without a
    /// path go to the default datastore), `code` (a local folder, uploaded
    /// first, where the command runs; its ./outputs are the job's
    /// artifacts), `limits.timeout`, `display_name`, `experiment_name`,
    /// `description`, `tags`. Keys Strato does not run are refused, naming
    /// the key. Prints the job id (the whole job with -o json/yaml).
    #[command(after_help = CREATE_AFTER_HELP)]
    Create {
        /// The job's YAML file.
        #[arg(short = 'f', long, value_name = "FILE")]
        file: std::path::PathBuf,
        /// Follow the job's output once submitted, as `az ml job create
        /// --stream` does: the id goes to stderr, the output to stdout, and
        /// the exit status says how the job ended (0 completed, 1 failed or
        /// canceled).
        #[arg(long)]
        stream: bool,
    },
    /// Show one job: spec, state, attempt, exit code and past attempts.
    Show(IdArg),
    /// List jobs, of every cluster or of one.
    List {
        /// Only the jobs of this cluster.
        #[arg(long, value_name = "NAME")]
        compute: Option<String>,
    },
    /// Print a job's output (stdout and stderr).
    ///
    /// Lines come in the order they were written, stderr ones on stdout too,
    /// with a `--- attempt N ---` line where another attempt's output starts.
    /// Lines from nodes other than rank 0 of a multi-node job start with
    /// `[rank N] `. -o json prints one object per line: attempt, rank,
    /// stream, line, seq, at.
    Logs {
        #[command(flatten)]
        id: IdArg,
        /// Keep printing new lines until the job ends.
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Follow a job's output until it ends, as `az ml job stream` does
    /// (`logs --follow`).
    Stream(IdArg),
    /// Download a job's files as `az ml job download` lays them out: its
    /// log to DIR/ID/artifacts/user_logs/std_log.txt, its artifacts (the
    /// `./outputs` of a job with `code:`) to DIR/ID/artifacts/outputs, and
    /// with --output-name or --all its named outputs to
    /// DIR/ID/named-outputs/NAME. Outputs are read from their datastores
    /// by the control plane, with the cluster's identity.
    Download {
        #[command(flatten)]
        id: IdArg,
        /// The directory to download into (default: the current one).
        #[arg(long, short = 'p', value_name = "DIR", default_value = ".")]
        download_path: std::path::PathBuf,
        /// Also download this named output.
        #[arg(long, value_name = "NAME", conflicts_with = "all")]
        output_name: Option<String>,
        /// Also download every named output.
        #[arg(long)]
        all: bool,
    },
    /// Cancel a job; prints its state.
    Cancel(IdArg),
    /// Delete an ended job with its logs (refused while it runs: cancel it
    /// first). The control plane also deletes ended jobs past its
    /// --job-retention (30 days by default).
    Delete(IdArg),
    /// Wait until a job ends; exit 0 if it completed, 1 if not.
    ///
    /// Prints how it ended (`job ID completed`, `job ID failed (exit code 3):
    /// REASON`). On a terminal, prints each state change on stderr while
    /// waiting. Rides out a control-plane restart of up to a minute.
    #[command(after_help = WAIT_AFTER_HELP)]
    Wait(IdArg),
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct IdArg {
    /// Job id, as printed by `strato job submit`.
    id: Option<String>,
    /// The same, as `az ml job` takes it.
    #[arg(short = 'n', long = "name", value_name = "ID")]
    name: Option<String>,
}

impl IdArg {
    fn into_id(self) -> String {
        self.id.or(self.name).unwrap_or_default()
    }
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Follow the job's output once submitted (as `az ml job create
    /// --stream`): the id goes to stderr, the output to stdout, and the exit
    /// status says how the job ended (0 completed, 1 failed or canceled).
    #[arg(long)]
    stream: bool,
    /// The cluster to run on.
    #[arg(long, value_name = "NAME")]
    compute: String,
    /// Docker image to run the command in.
    #[arg(long)]
    image: String,
    /// Display name of the job.
    #[arg(long)]
    name: Option<String>,
    /// An environment variable, KEY=VALUE; repeat for more.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// An input, found by the job at the path in AZURE_ML_INPUT_<NAME>:
    /// NAME=azureml://datastores/<datastore>/paths/<path>. Downloaded before
    /// the job starts, unless --input-mode says otherwise.
    #[arg(long = "input", value_name = "NAME=URI", value_parser = parse_data)]
    inputs: Vec<(String, String)>,
    /// How an input reaches the job, as Azure ML's `mode`: NAME=download
    /// (the default), NAME=ro_mount (read on demand through a read-only
    /// mount: for data larger than the node's disk) or NAME=rw_mount.
    #[arg(long = "input-mode", value_name = "NAME=MODE", value_parser = parse_mode)]
    input_modes: Vec<(String, String)>,
    /// An output, written by the job under the directory in
    /// AZURE_ML_OUTPUT_<NAME>: NAME=azureml://datastores/<datastore>/paths/<path>.
    /// Uploaded after the job ends (also when it fails), unless
    /// --output-mode says otherwise. (`--output` alone is the global output
    /// format.)
    #[arg(long = "output-data", value_name = "NAME=URI", value_parser = parse_data)]
    outputs: Vec<(String, String)>,
    /// How an output leaves the job: NAME=upload (the default) or
    /// NAME=rw_mount (written through a mount, each file uploaded as it is
    /// closed: for checkpoints that must survive the node).
    #[arg(long = "output-mode", value_name = "NAME=MODE", value_parser = parse_mode)]
    output_modes: Vec<(String, String)>,
    /// vCPUs the job needs (may be fractional, e.g. 0.5).
    #[arg(long, value_name = "N", value_parser = parse_cpu)]
    cpu: Option<f64>,
    /// Memory the job needs, in MiB.
    #[arg(long, value_name = "M", value_parser = clap::value_parser!(u64).range(1..))]
    memory_mb: Option<u64>,
    /// Attempts after a failure (non-zero exit or a lost node); default 0.
    #[arg(long, value_name = "R")]
    max_retries: Option<u32>,
    /// Re-queues after an eviction of a low-priority node, counted apart
    /// from failures; default 3.
    #[arg(long, value_name = "P")]
    max_preemptions: Option<u32>,
    /// Nodes started together for the job (at most the cluster's
    /// max_nodes; above 1 needs inter-node communication on).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    node_count: u32,
    /// Processes per node.
    #[arg(long, value_name = "P", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    process_count_per_node: u32,
    /// How the nodes are wired and the processes started: `mpi` (Strato
    /// runs `mpirun` with a hostfile on rank 0; no SSH needed), `pytorch`
    /// (MASTER_ADDR, MASTER_PORT, WORLD_SIZE, NODE_RANK, RANK, LOCAL_RANK)
    /// or `none`. Default: mpi when N > 1 or P > 1, else none.
    #[arg(long, value_enum)]
    distribution: Option<DistributionArg>,
    /// Run the command as this user in the container: NAME, UID,
    /// NAME:GROUP or UID:GID, as `docker run --user`. Default: the image's
    /// USER.
    #[arg(long, value_name = "USER[:GROUP]")]
    user: Option<String>,
    /// When nodes pull the image: `if-not-present` (only a node that lacks
    /// it) or `always` (before every attempt, for moving tags). A registry
    /// registered for the image's server (`strato registry create`) gives
    /// the credentials; other images are pulled anonymously.
    #[arg(long, value_enum, default_value = "if-not-present")]
    pull: PullArg,
    /// Cancel an attempt that has run this long (Azure ML's
    /// limits.timeout): 90s, 30m, 12h, 30d or plain seconds; at most 90
    /// days. The job ends canceled, saying so.
    #[arg(long, value_name = "DURATION", value_parser = crate::cmd::parse_duration)]
    timeout: Option<u64>,
    /// The experiment the job belongs to (letters, digits, '_', '-').
    #[arg(long, value_name = "NAME")]
    experiment_name: Option<String>,
    /// A description of the job.
    #[arg(long)]
    description: Option<String>,
    /// A tag, KEY=VALUE; repeat for more.
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = crate::cmd::compute::parse_tag)]
    tags: Vec<(String, String)>,
    /// The command and its arguments, after `--` (run without a shell).
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PullArg {
    IfNotPresent,
    Always,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DistributionArg {
    None,
    Mpi,
    Pytorch,
}

fn parse_data(s: &str) -> Result<(String, String), ArgError> {
    match s.split_once('=') {
        Some((name, uri)) if !name.is_empty() && uri.starts_with("azureml://") => {
            Ok((name.to_owned(), uri.to_owned()))
        }
        _ => Err(ArgError::DataUri(s.to_owned())),
    }
}

fn parse_mode(s: &str) -> Result<(String, String), ArgError> {
    match s.split_once('=') {
        Some((name, mode)) if !name.is_empty() && !mode.is_empty() => {
            Ok((name.to_owned(), mode.to_owned()))
        }
        _ => Err(ArgError::DataMode(s.to_owned())),
    }
}

fn parse_env(s: &str) -> Result<(String, String), ArgError> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !k.chars().any(char::is_whitespace) => {
            Ok((k.to_owned(), v.to_owned()))
        }
        Some(_) => Err(ArgError::EnvName(s.to_owned())),
        None => Err(ArgError::EnvPair(s.to_owned())),
    }
}

fn parse_cpu(s: &str) -> Result<f64, ArgError> {
    match s.parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 => Ok(n),
        _ => Err(ArgError::Cpu(s.to_owned())),
    }
}

/// The spec `job submit` sends; a mode for data not given is refused.
fn submit_spec(args: SubmitArgs) -> Result<v1::JobSpec, Failure> {
    let inputs = data(args.inputs, args.input_modes, ("--input", "--input-mode"))?;
    let outputs = data(
        args.outputs,
        args.output_modes,
        ("--output-data", "--output-mode"),
    )?;
    let resources = (args.cpu.is_some() || args.memory_mb.is_some()).then(|| v1::JobResources {
        cpu: args.cpu.unwrap_or_default(),
        memory_mb: args.memory_mb.unwrap_or_default(),
        gpus: 0,
    });
    Ok(v1::JobSpec {
        experiment_name: args.experiment_name.unwrap_or_default(),
        description: args.description.unwrap_or_default(),
        tags: args.tags.into_iter().collect(),
        timeout_seconds: args.timeout,
        cluster: args.compute,
        display_name: args.name.unwrap_or_default(),
        image: args.image,
        command: args.command,
        environment: args.env.into_iter().collect(),
        resources,
        node_count: args.node_count,
        process_count_per_node: args.process_count_per_node,
        distribution: match args.distribution {
            None => v1::Distribution::Unspecified,
            Some(DistributionArg::None) => v1::Distribution::None,
            Some(DistributionArg::Mpi) => v1::Distribution::Mpi,
            Some(DistributionArg::Pytorch) => v1::Distribution::Pytorch,
        } as i32,
        max_retries: args.max_retries.unwrap_or_default(),
        max_preemptions: args.max_preemptions,
        inputs,
        outputs,
        user: args.user.unwrap_or_default(),
        pull: match args.pull {
            PullArg::IfNotPresent => v1::PullPolicy::IfNotPresent,
            PullArg::Always => v1::PullPolicy::Always,
        } as i32,
        code: None,
        artifacts: None,
    })
}

/// Job data with their modes (empty: the control plane's default for the
/// side); the control plane checks the modes.
fn data(
    list: Vec<(String, String)>,
    modes: Vec<(String, String)>,
    (flag, mode_flag): (&str, &str),
) -> Result<Vec<v1::JobData>, Failure> {
    let mut data: Vec<v1::JobData> = list
        .into_iter()
        .map(|(name, uri)| v1::JobData {
            name,
            uri,
            ..Default::default()
        })
        .collect();
    for (name, mode) in modes {
        let Some(d) = data.iter_mut().find(|d| d.name == name) else {
            return Err(Failure::usage(format!(
                "{mode_flag} {name}={mode}: no {flag} named {name}"
            )));
        };
        d.mode = mode;
    }
    Ok(data)
}

/// Submits `spec` and prints the job's id (the whole job with -o json/yaml);
/// with `stream`, follows its output instead, on the same connection, and
/// ends as `job wait` does.
async fn submit(
    client: &mut JobServiceClient<AuthedChannel>,
    format: Format,
    spec: v1::JobSpec,
    stream: bool,
) -> Result<(), Failure> {
    let job = client
        .submit_job(v1::SubmitJobRequest { spec: Some(spec) })
        .await?
        .into_inner();
    if stream {
        eprintln!("job {} submitted; its output follows", job.id);
        if let Err(e) = logs(client, format, job.id.clone(), true).await {
            // The job goes on (a control plane restarting, say): its end
            // is still waited for, as `job wait` waits, through restarts.
            eprintln!(
                "the output stream ended early ({}); waiting for job {} to end (`strato job logs {}` prints it all)",
                e.message, job.id, job.id
            );
        }
        let ended = wait::wait_job(client, &job.id).await?;
        let (code, summary) = wait::wait_outcome(&JobView::from(ended));
        eprintln!("{summary}");
        if code != 0 {
            return Err(Failure {
                code,
                message: String::new(),
            });
        }
    } else if format == Format::Table {
        // Just the id, so `id=$(strato job submit ...)` works.
        println!("{}", job.id);
    } else {
        print(format, &JobView::from(job))?;
    }
    Ok(())
}

pub async fn run(
    channel: AuthedChannel,
    format: Format,
    command: JobCommand,
) -> Result<(), Failure> {
    let mut client = JobServiceClient::new(channel);
    match command {
        JobCommand::Submit(args) => {
            let stream = args.stream;
            submit(&mut client, format, submit_spec(*args)?, stream).await?
        }
        JobCommand::Create { file, stream } => {
            let job = crate::job_file::load(&file).map_err(|e| Failure::usage(format!("{e:#}")))?;
            let mut spec = job.spec;
            if let Some(code) = &job.code {
                spec.code = Some(data::upload_code(&mut client, &spec.cluster, code).await?);
            }
            submit(&mut client, format, spec, stream).await?;
        }
        JobCommand::Show(id) => {
            let id = id.into_id();
            let job = client.get_job(v1::GetJobRequest { id }).await?.into_inner();
            print(format, &JobView::from(job))?;
        }
        JobCommand::List { compute } => {
            // Page by page: a list of any length never exceeds a message.
            let mut jobs = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = client
                    .list_jobs(v1::ListJobsRequest {
                        cluster: compute.clone().unwrap_or_default(),
                        page_size: 1_000,
                        page_token,
                    })
                    .await?
                    .into_inner();
                jobs.extend(page.jobs);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            print(
                format,
                &jobs.into_iter().map(JobView::from).collect::<Vec<_>>(),
            )?;
        }
        JobCommand::Logs { id, follow } => logs(&mut client, format, id.into_id(), follow).await?,
        JobCommand::Stream(id) => logs(&mut client, format, id.into_id(), true).await?,
        JobCommand::Download {
            id,
            download_path,
            output_name,
            all,
        } => {
            let id = id.into_id();
            // A job that is not there (or not the caller's to see) writes
            // nothing.
            let job = client
                .get_job(v1::GetJobRequest { id: id.clone() })
                .await?
                .into_inner();
            download(&mut client, &id, &download_path).await?;
            let names: Vec<String> = if all {
                job.spec
                    .iter()
                    .flat_map(|s| s.outputs.iter().map(|o| o.name.clone()))
                    .collect()
            } else {
                output_name.into_iter().collect()
            };
            data::download_outputs(&mut client, &job, &download_path, &names).await?;
        }
        JobCommand::Cancel(id) => {
            let id = id.into_id();
            let job = client
                .cancel_job(v1::CancelJobRequest { id })
                .await?
                .into_inner();
            if format == Format::Table {
                println!("job {}: {}", job.id, job_state(job.state));
            } else {
                print(format, &JobView::from(job))?;
            }
        }
        JobCommand::Delete(id) => {
            let id = id.into_id();
            client
                .delete_job(v1::DeleteJobRequest { id: id.clone() })
                .await?;
            let done = serde_json::json!({ "id": id, "deleted": true });
            match format {
                Format::Table => println!("job {id}: deleted"),
                _ => print(format, &done)?,
            }
        }
        JobCommand::Wait(id) => wait::run(&mut client, format, &id.into_id()).await?,
    }
    Ok(())
}

/// Writes a job's output, every attempt, to
/// `DIR/ID/artifacts/user_logs/std_log.txt` (a new file is readable by its
/// owner only: a job's output may hold anything).
async fn download(
    client: &mut JobServiceClient<AuthedChannel>,
    id: &str,
    dir: &std::path::Path,
) -> Result<(), Failure> {
    let logs = dir.join(id).join("artifacts/user_logs");
    std::fs::create_dir_all(&logs)
        .map_err(|e| Failure::refused(format!("{}: {e}", logs.display())))?;
    let path = logs.join("std_log.txt");
    let mut file = std::io::BufWriter::new({
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Failure::refused(format!("{}: {e}", path.display())))?
    });
    let mut printer = LogPrinter::new(Format::Table);
    let mut lines = 0u64;
    let read = read_logs(client, id, false, |line| {
        let text = printer.render(line)?;
        file.write_all(text.as_bytes())
            .map_err(|e| Failure::refused(format!("{}: {e}", path.display())))?;
        lines += 1;
        Ok(true)
    })
    .await;
    file.flush()
        .map_err(|e| Failure::refused(format!("{}: {e}", path.display())))?;
    if read.is_err() {
        // What came is kept, and said to be incomplete.
        eprintln!(
            "{lines} lines written to {} before the output could no longer be read: the file is incomplete",
            path.display()
        );
        return read;
    }
    eprintln!("{lines} lines written to {}", path.display());
    Ok(())
}

/// Prints a job's output (with `follow`, until the job ends).
async fn logs(
    client: &mut JobServiceClient<AuthedChannel>,
    format: Format,
    id: String,
    follow: bool,
) -> Result<(), Failure> {
    let mut printer = LogPrinter::new(format);
    read_logs(client, &id, follow, |line| {
        let text = printer.render(line)?;
        let mut out = std::io::stdout().lock();
        match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            Ok(()) => Ok(true),
            // The reader went away (`strato job logs ID | head`): done.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
            Err(e) => Err(anyhow::Error::new(e).context("writing the logs").into()),
        }
    })
    .await
}

/// Hands each of a job's log lines to `take` (with `follow`, until the job
/// ends; `take` answers whether to go on). A stream that breaks (a control
/// plane restarting, a replica gone) is opened again, through whichever
/// endpoint answers, from the line after the last one taken: no line is
/// taken twice or left out. Gives up as other calls do, after the control
/// plane has been away for a minute.
async fn read_logs(
    client: &mut JobServiceClient<AuthedChannel>,
    id: &str,
    follow: bool,
    mut take: impl FnMut(v1::LogLine) -> Result<bool, Failure>,
) -> Result<(), Failure> {
    let mut retry = Retry::default();
    let mut after = None;
    loop {
        let started = std::time::Instant::now();
        let request = v1::StreamLogsRequest {
            id: id.to_owned(),
            follow,
            after,
        };
        let broken = match client.stream_logs(request).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    let line = match stream.message().await {
                        Ok(Some(line)) => line,
                        Ok(None) => return Ok(()),
                        Err(status) => break status,
                    };
                    // A line: the control plane is back, any outage over.
                    retry.succeeded();
                    after = Some(line.pos);
                    if !take(line)? {
                        return Ok(());
                    }
                }
            }
            Err(status) => status,
        };
        retry.wait_or_give_up(broken, started).await?;
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        job: JobCommand,
    }

    fn parse(args: &[&str]) -> Result<JobCommand, clap::Error> {
        Cli::try_parse_from(std::iter::once("strato-job").chain(args.iter().copied()))
            .map(|c| c.job)
    }

    fn submit(args: &[&str]) -> v1::JobSpec {
        match parse(args).expect("parses") {
            JobCommand::Submit(a) => submit_spec(*a).expect("a spec"),
            other => panic!("not a submit: {other:?}"),
        }
    }

    #[test]
    fn data_modes_go_with_the_data_they_name() {
        let base = [
            "submit",
            "--compute",
            "c",
            "--image",
            "i",
            "--input",
            "raw=azureml://datastores/lake/paths/in",
            "--input",
            "cfg=azureml://datastores/lake/paths/cfg",
            "--output-data",
            "ckpt=azureml://datastores/lake/paths/ckpt",
        ];
        let with = |extra: &[&str]| {
            let mut args = base.to_vec();
            args.extend_from_slice(extra);
            args.extend(["--", "true"]);
            match parse(&args).expect("parses") {
                JobCommand::Submit(a) => submit_spec(*a),
                other => panic!("not a submit: {other:?}"),
            }
        };
        let spec = with(&[
            "--input-mode",
            "raw=ro_mount",
            "--output-mode",
            "ckpt=rw_mount",
        ])
        .expect("spec");
        let modes: Vec<&str> = spec.inputs.iter().map(|d| d.mode.as_str()).collect();
        assert_eq!(
            modes,
            ["ro_mount", ""],
            "an input without a mode is the default"
        );
        assert_eq!(spec.outputs[0].mode, "rw_mount");
        let e = with(&["--output-mode", "raw=rw_mount"]).expect_err("no such output");
        assert_eq!(e.code, 2);
        assert!(
            e.message
                .contains("--output-mode raw=rw_mount: no --output-data named raw"),
            "{}",
            e.message
        );
        assert!(parse(&["submit", "--input-mode", "raw"]).is_err());
    }

    #[test]
    fn submit_takes_the_command_after_the_double_dash() {
        let spec = submit(&[
            "submit",
            "--compute",
            "cpu-cluster",
            "--image",
            "python:3.12",
            "--name",
            "train",
            "--env",
            "A=1",
            "--env",
            "B=x=y",
            "--env",
            "EMPTY=",
            "--cpu",
            "1.5",
            "--memory-mb",
            "2048",
            "--max-retries",
            "2",
            "--",
            "python",
            "train.py",
            "--env",
            "not-ours",
            "-x",
        ]);
        assert_eq!(spec.cluster, "cpu-cluster");
        assert_eq!(spec.image, "python:3.12");
        assert_eq!(spec.display_name, "train");
        assert_eq!(
            spec.command,
            ["python", "train.py", "--env", "not-ours", "-x"]
        );
        assert_eq!(spec.environment.len(), 3);
        assert_eq!(spec.environment["A"], "1");
        assert_eq!(spec.environment["B"], "x=y");
        assert_eq!(spec.environment["EMPTY"], "");
        let r = spec.resources.expect("resources");
        assert!((r.cpu - 1.5).abs() < f64::EPSILON);
        assert_eq!(r.memory_mb, 2048);
        assert_eq!(spec.node_count, 1);
        assert_eq!(spec.process_count_per_node, 1);
        assert_eq!(spec.max_retries, 2);
    }

    #[test]
    fn submit_defaults() {
        let spec = submit(&["submit", "--compute", "c", "--image", "i", "--", "true"]);
        assert_eq!(spec.command, ["true"]);
        assert_eq!(spec.display_name, "");
        assert!(spec.environment.is_empty());
        assert_eq!(spec.resources, None);
        assert_eq!(spec.max_retries, 0);
        assert_eq!((spec.node_count, spec.process_count_per_node), (1, 1));
    }

    #[test]
    fn submit_without_a_command_names_it() {
        let e = parse(&["submit", "--compute", "c", "--image", "i"]).expect_err("refused");
        assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert!(e.to_string().contains("COMMAND"), "{e}");
        let e = parse(&["submit", "--compute", "c", "--image", "i", "--"]).expect_err("refused");
        assert!(e.to_string().contains("COMMAND"), "{e}");
    }

    #[test]
    fn submit_command_must_follow_the_double_dash() {
        let e =
            parse(&["submit", "--compute", "c", "--image", "i", "python"]).expect_err("refused");
        assert_eq!(e.exit_code(), 2, "{e}");
    }

    #[test]
    fn env_errors_name_the_value() {
        for bad in ["NOVALUE", "=x", " A=1"] {
            let e = parse(&[
                "submit",
                "--compute",
                "c",
                "--image",
                "i",
                "--env",
                bad,
                "--",
                "true",
            ])
            .expect_err("refused");
            assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation);
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
        assert!(
            parse_env("NOVALUE")
                .expect_err("refused")
                .to_string()
                .contains("KEY=VALUE")
        );
    }

    #[test]
    fn cpu_must_be_positive() {
        for bad in ["0", "-1", "nan", "inf", "two"] {
            assert!(parse_cpu(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_cpu("0.5"), Ok(0.5));
    }

    #[test]
    fn other_verbs_parse() {
        assert!(matches!(
            parse(&["logs", "j1", "--follow"]).expect("parses"),
            JobCommand::Logs { id, follow: true } if id.id.as_deref() == Some("j1")
        ));
        assert!(matches!(
            parse(&["logs", "j1"]).expect("parses"),
            JobCommand::Logs { follow: false, .. }
        ));
        assert!(matches!(
            parse(&["list", "--compute", "gpu"]).expect("parses"),
            JobCommand::List { compute: Some(c) } if c == "gpu"
        ));
        assert!(matches!(
            parse(&["list"]).expect("parses"),
            JobCommand::List { compute: None }
        ));
        // az's spellings: -n for the id, stream, download.
        for args in [
            &["show", "-n", "j1"][..],
            &["cancel", "--name", "j1"],
            &["stream", "j1"],
            &["download", "-n", "j1", "--download-path", "/tmp/x"],
        ] {
            parse(args).expect("parses");
        }
        assert!(parse(&["show", "j1", "-n", "j2"]).is_err(), "one id");
        for verb in ["show", "cancel", "wait"] {
            parse(&[verb, "j1"]).expect("parses");
            assert!(parse(&[verb]).is_err(), "{verb} without an id");
        }
    }
}
