//! `strato job`: submit a command to run in a Docker image on a cluster,
//! follow it, cancel it, wait for it. Talks to `JobService`.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use strato_proto::v1::{self, job_service_client::JobServiceClient};
use tonic::transport::Channel;

use crate::Failure;
use crate::output::{Format, JobView, LogPrinter, job_state, print};

const SUBMIT_AFTER_HELP: &str = "\
Example:
  id=$(strato job submit --compute cpu-cluster --image python:3.12 \\
         --env EPOCHS=3 --cpu 2 --memory-mb 4096 -- python train.py --lr 0.1)
  strato job wait \"$id\"

  # MPI on 2 nodes x 2 processes: Strato runs mpirun on rank 0 (no SSH).
  strato job submit --compute cpu-cluster --image my-mpi-image \\
         --node-count 2 --process-count-per-node 2 -- python3 hello_mpi.py";

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
    /// Cancel a job; prints its state.
    Cancel(IdArg),
    /// Wait until a job ends; exit 0 if it completed, 1 if not.
    ///
    /// Prints how it ended (`job ID completed`, `job ID failed (exit code 3):
    /// REASON`). On a terminal, prints each state change on stderr while
    /// waiting. Rides out a control-plane restart of up to a minute.
    #[command(after_help = WAIT_AFTER_HELP)]
    Wait(IdArg),
}

#[derive(Debug, Args)]
pub struct IdArg {
    /// Job id, as printed by `strato job submit`.
    id: String,
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
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
    /// An input, downloaded before the job starts to the path in
    /// AZURE_ML_INPUT_<NAME>: NAME=azureml://datastores/<datastore>/paths/<path>.
    #[arg(long = "input", value_name = "NAME=URI", value_parser = parse_data)]
    inputs: Vec<(String, String)>,
    /// An output, uploaded after the job ends (also when it fails) from the
    /// directory in AZURE_ML_OUTPUT_<NAME>: NAME=azureml://datastores/<datastore>/paths/<path>.
    /// (`--output` alone is the global output format.)
    #[arg(long = "output-data", value_name = "NAME=URI", value_parser = parse_data)]
    outputs: Vec<(String, String)>,
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
    /// The command and its arguments, after `--` (run without a shell).
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DistributionArg {
    None,
    Mpi,
    Pytorch,
}

fn parse_data(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, uri)) if !name.is_empty() && uri.starts_with("azureml://") => {
            Ok((name.to_owned(), uri.to_owned()))
        }
        _ => Err(format!(
            "{s:?}: use NAME=azureml://datastores/<datastore>/paths/<path>"
        )),
    }
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !k.chars().any(char::is_whitespace) => {
            Ok((k.to_owned(), v.to_owned()))
        }
        Some(_) => Err(format!(
            "{s:?}: the variable name before '=' must be non-empty, without spaces"
        )),
        None => Err(format!("{s:?}: an environment variable is KEY=VALUE")),
    }
}

fn parse_cpu(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 => Ok(n),
        _ => Err(format!("{s:?}: a number of vCPUs above 0, e.g. 2 or 0.5")),
    }
}

/// The spec `job submit` sends.
fn submit_spec(args: SubmitArgs) -> v1::JobSpec {
    let resources = (args.cpu.is_some() || args.memory_mb.is_some()).then(|| v1::JobResources {
        cpu: args.cpu.unwrap_or_default(),
        memory_mb: args.memory_mb.unwrap_or_default(),
        gpus: 0,
    });
    v1::JobSpec {
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
        inputs: data(args.inputs, "download"),
        outputs: data(args.outputs, "upload"),
    }
}

fn data(list: Vec<(String, String)>, mode: &str) -> Vec<v1::JobData> {
    list.into_iter()
        .map(|(name, uri)| v1::JobData {
            name,
            uri,
            mode: mode.to_owned(),
            ..Default::default()
        })
        .collect()
}

pub async fn run(channel: Channel, format: Format, command: JobCommand) -> Result<(), Failure> {
    let mut client = JobServiceClient::new(channel);
    match command {
        JobCommand::Submit(args) => {
            let job = client
                .submit_job(v1::SubmitJobRequest {
                    spec: Some(submit_spec(*args)),
                })
                .await?
                .into_inner();
            if format == Format::Table {
                // Just the id, so `id=$(strato job submit ...)` works.
                println!("{}", job.id);
            } else {
                print(format, &JobView::from(job))?;
            }
        }
        JobCommand::Show(IdArg { id }) => {
            let job = client.get_job(v1::GetJobRequest { id }).await?.into_inner();
            print(format, &JobView::from(job))?;
        }
        JobCommand::List { compute } => {
            let jobs = client
                .list_jobs(v1::ListJobsRequest {
                    cluster: compute.unwrap_or_default(),
                })
                .await?
                .into_inner()
                .jobs;
            print(
                format,
                &jobs.into_iter().map(JobView::from).collect::<Vec<_>>(),
            )?;
        }
        JobCommand::Logs {
            id: IdArg { id },
            follow,
        } => logs(&mut client, format, id, follow).await?,
        JobCommand::Cancel(IdArg { id }) => {
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
        JobCommand::Wait(IdArg { id }) => {
            let job = if std::io::stderr().is_terminal() {
                poll_until_final(&mut client, &id).await?
            } else {
                wait_job(&mut client, &id).await?
            };
            let view = JobView::from(job);
            let (code, summary) = wait_outcome(&view);
            if format == Format::Table {
                println!("{summary}");
            } else {
                print(format, &view)?;
            }
            if code != 0 {
                // The outcome is already printed: exit 1 without a message.
                return Err(Failure {
                    code,
                    message: String::new(),
                });
            }
        }
    }
    Ok(())
}

async fn logs(
    client: &mut JobServiceClient<Channel>,
    format: Format,
    id: String,
    follow: bool,
) -> Result<(), Failure> {
    let mut stream = client
        .stream_logs(v1::StreamLogsRequest { id, follow })
        .await?
        .into_inner();
    let mut printer = LogPrinter::new(format);
    while let Some(line) = stream.message().await? {
        let text = printer.render(line)?;
        let mut out = std::io::stdout().lock();
        match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            Ok(()) => {}
            // The reader went away (`strato job logs ID | head`): done.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(anyhow::Error::new(e).context("writing the logs").into()),
        }
    }
    Ok(())
}

/// How `job wait` ends for a job in `view`'s state: its exit status and the
/// line it prints.
fn wait_outcome(view: &JobView) -> (u8, String) {
    let id = &view.id;
    let state = view.state;
    if state == "completed" {
        return (0, format!("job {id} completed"));
    }
    let mut line = format!("job {id} {state}");
    if let Some(code) = view.exit_code {
        line.push_str(&format!(" (exit code {code})"));
    }
    if !view.reason.is_empty() {
        line.push_str(&format!(": {}", view.reason));
    }
    (1, line)
}

fn is_final(state: i32) -> bool {
    matches!(
        v1::JobState::try_from(state),
        Ok(v1::JobState::Completed | v1::JobState::Failed | v1::JobState::Canceled)
    )
}

/// What `job wait` prints on stderr when a job's state changes.
fn progress_line(job: &v1::Job) -> String {
    let mut line = job_state(job.state).to_owned();
    if !job.node_id.is_empty() {
        line.push_str(&format!(" on {}", job.node_id));
    }
    if job.attempt > 1 {
        line.push_str(&format!(" (attempt {})", job.attempt));
    }
    if job.state == v1::JobState::Preempted as i32 && !job.reason.is_empty() {
        line.push_str(&format!(": {}", job.reason));
    }
    line
}

const POLL_EVERY: Duration = Duration::from_millis(500);

/// Polls GetJob, printing each state change on stderr, until the job is final.
async fn poll_until_final(
    client: &mut JobServiceClient<Channel>,
    id: &str,
) -> Result<v1::Job, Failure> {
    let mut retry = Retry::default();
    let mut last = String::new();
    loop {
        let started = Instant::now();
        match client
            .get_job(v1::GetJobRequest { id: id.to_owned() })
            .await
        {
            Ok(response) => {
                retry.succeeded();
                let job = response.into_inner();
                if is_final(job.state) {
                    return Ok(job);
                }
                let line = progress_line(&job);
                if line != last {
                    eprintln!("{line}");
                    last = line;
                }
                tokio::time::sleep(POLL_EVERY).await;
            }
            Err(status) => retry.wait_or_give_up(status, started).await?,
        }
    }
}

/// Calls WaitJob until it answers, through control-plane restarts.
async fn wait_job(client: &mut JobServiceClient<Channel>, id: &str) -> Result<v1::Job, Failure> {
    let mut retry = Retry::default();
    loop {
        let started = Instant::now();
        match client
            .wait_job(v1::WaitJobRequest { id: id.to_owned() })
            .await
        {
            Ok(response) => return Ok(response.into_inner()),
            Err(status) => retry.wait_or_give_up(status, started).await?,
        }
    }
}

/// How long `job wait` keeps retrying while the control plane is unavailable.
const RETRY_FOR: Duration = Duration::from_secs(60);
const FIRST_DELAY: Duration = Duration::from_millis(250);
const MAX_DELAY: Duration = Duration::from_secs(5);
/// A call that failed after being in flight this long had been connected
/// (connecting gives up after 5 s): its failure starts a new outage.
const CONNECTED_CALL: Duration = Duration::from_secs(10);

/// Whether a failed call may be retried: the control plane is unavailable
/// (restarting, not listening) or the connection dropped under the call.
/// Statuses the server sent itself (NOT_FOUND, INVALID_ARGUMENT, ...) are
/// answers, not retried.
fn retriable(status: &tonic::Status) -> bool {
    use tonic::Code;
    match status.code() {
        Code::Unavailable => true,
        // A status built by the client from a transport error (hyper, h2, an
        // I/O error) carries that error as its source; one from the server
        // does not.
        Code::Unknown | Code::Internal | Code::Cancelled => {
            std::error::Error::source(status).is_some()
        }
        _ => false,
    }
}

/// A status's message and the errors under it (for transport errors, whose
/// message alone says only "transport error").
fn describe(status: &tonic::Status) -> String {
    let mut text = status.message().to_owned();
    let mut source = std::error::Error::source(status);
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = s.source();
    }
    text.replace('\n', " ")
}

/// Backoff for calls that fail while the control plane is away: retried with
/// growing delays until it has been away for [`RETRY_FOR`].
#[derive(Debug)]
struct Retry {
    outage_since: Option<Instant>,
    delay: Duration,
    announced: bool,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            outage_since: None,
            delay: FIRST_DELAY,
            announced: false,
        }
    }
}

impl Retry {
    fn succeeded(&mut self) {
        *self = Retry::default();
    }

    /// After a call that took `call_took` failed with `status` at `now`: how
    /// long to wait before calling again, or `None` to give up.
    fn after_failure(
        &mut self,
        status: &tonic::Status,
        call_took: Duration,
        now: Instant,
    ) -> Option<Duration> {
        if !retriable(status) {
            return None;
        }
        if call_took >= CONNECTED_CALL {
            // It was connected until now: a new outage.
            self.outage_since = None;
            self.delay = FIRST_DELAY;
        }
        let since = *self.outage_since.get_or_insert(now);
        let away = now.saturating_duration_since(since);
        if away >= RETRY_FOR {
            return None;
        }
        let delay = self.delay.min(RETRY_FOR - away);
        self.delay = (self.delay * 2).min(MAX_DELAY);
        Some(delay)
    }

    /// Sleeps before the next try, or returns the failure to report.
    async fn wait_or_give_up(
        &mut self,
        status: tonic::Status,
        started: Instant,
    ) -> Result<(), Failure> {
        let now = Instant::now();
        match self.after_failure(&status, now.saturating_duration_since(started), now) {
            Some(delay) => {
                if !self.announced {
                    eprintln!(
                        "strato: the control plane is unavailable ({}); retrying for up to {} s",
                        describe(&status),
                        RETRY_FOR.as_secs()
                    );
                    self.announced = true;
                }
                tokio::time::sleep(delay).await;
                Ok(())
            }
            None if retriable(&status) => Err(Failure {
                code: 3,
                message: format!(
                    "the control plane stayed unavailable for {} s: {}",
                    RETRY_FOR.as_secs(),
                    describe(&status)
                ),
            }),
            None => Err(status.into()),
        }
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
            JobCommand::Submit(a) => submit_spec(*a),
            other => panic!("not a submit: {other:?}"),
        }
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
            JobCommand::Logs { id: IdArg { id }, follow: true } if id == "j1"
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
        for verb in ["show", "cancel", "wait"] {
            parse(&[verb, "j1"]).expect("parses");
            assert!(parse(&[verb]).is_err(), "{verb} without an id");
        }
    }

    fn job(state: v1::JobState, exit_code: Option<i32>, reason: &str) -> JobView {
        JobView::from(v1::Job {
            id: "j-1".into(),
            state: state as i32,
            exit_code,
            reason: reason.into(),
            ..Default::default()
        })
    }

    #[test]
    fn wait_exits_zero_only_when_completed() {
        assert_eq!(
            wait_outcome(&job(v1::JobState::Completed, Some(0), "exited 0")),
            (0, "job j-1 completed".into())
        );
        assert_eq!(
            wait_outcome(&job(v1::JobState::Failed, Some(3), "exited with 3")),
            (1, "job j-1 failed (exit code 3): exited with 3".into())
        );
        assert_eq!(
            wait_outcome(&job(v1::JobState::Failed, None, "image not found")),
            (1, "job j-1 failed: image not found".into())
        );
        assert_eq!(
            wait_outcome(&job(v1::JobState::Canceled, None, "")),
            (1, "job j-1 canceled".into())
        );
        // Not final (a server that answered early): not a success either.
        assert_eq!(wait_outcome(&job(v1::JobState::Running, None, "")).0, 1);
    }

    #[test]
    fn final_states() {
        use v1::JobState::*;
        for s in [Completed, Failed, Canceled] {
            assert!(is_final(s as i32), "{s:?}");
        }
        for s in [Unspecified, Queued, Preparing, Running, Preempted] {
            assert!(!is_final(s as i32), "{s:?}");
        }
    }

    #[test]
    fn progress_names_state_node_and_attempt() {
        let mut j = v1::Job {
            state: v1::JobState::Queued as i32,
            attempt: 1,
            ..Default::default()
        };
        assert_eq!(progress_line(&j), "queued");
        j.state = v1::JobState::Preparing as i32;
        j.node_id = "node-x".into();
        assert_eq!(progress_line(&j), "preparing on node-x");
        j.state = v1::JobState::Preempted as i32;
        j.attempt = 2;
        j.node_id.clear();
        j.reason = "node evicted".into();
        assert_eq!(progress_line(&j), "preempted (attempt 2): node evicted");
    }

    #[test]
    fn only_unavailable_and_dropped_connections_are_retried() {
        assert!(retriable(&tonic::Status::unavailable("restarting")));
        let dropped = tonic::Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset",
        )));
        assert!(retriable(&dropped), "{dropped:?}");
        for answer in [
            tonic::Status::not_found("no job j-1"),
            tonic::Status::invalid_argument("id: empty"),
            tonic::Status::internal("store failed"),
            tonic::Status::unknown("?"),
        ] {
            assert!(!retriable(&answer), "{answer:?}");
        }
    }

    #[test]
    fn retries_back_off_for_up_to_a_minute() {
        let unavailable = tonic::Status::unavailable("down");
        let quick = Duration::from_millis(5);
        let t0 = Instant::now();
        let mut r = Retry::default();
        assert_eq!(r.after_failure(&unavailable, quick, t0), Some(FIRST_DELAY));
        assert_eq!(
            r.after_failure(&unavailable, quick, t0 + FIRST_DELAY),
            Some(FIRST_DELAY * 2)
        );
        // Delays grow to MAX_DELAY and the last one stops at the minute.
        let mut at = t0 + Duration::from_secs(1);
        let mut delays = Vec::new();
        while let Some(d) = r.after_failure(&unavailable, quick, at) {
            delays.push(d);
            at += d;
        }
        assert!(delays.iter().all(|d| *d <= MAX_DELAY));
        assert!(delays.contains(&MAX_DELAY));
        assert_eq!(at, t0 + RETRY_FOR);
        // Refusals are not retried.
        let mut r = Retry::default();
        assert_eq!(
            r.after_failure(&tonic::Status::not_found("no"), quick, t0),
            None
        );
    }

    #[test]
    fn a_long_connected_call_starts_a_new_outage() {
        let unavailable = tonic::Status::unavailable("down");
        let t0 = Instant::now();
        let mut r = Retry::default();
        r.after_failure(&unavailable, Duration::ZERO, t0);
        // Long after the first outage's minute, a WaitJob that had been
        // connected for an hour drops: retried again.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(
            r.after_failure(&unavailable, Duration::from_secs(3000), later),
            Some(FIRST_DELAY)
        );
        // A success also resets.
        r.succeeded();
        assert_eq!(
            r.after_failure(&unavailable, Duration::ZERO, later + RETRY_FOR * 2),
            Some(FIRST_DELAY)
        );
    }
}

/// `wait` against an in-process fake `JobService` on loopback: real gRPC,
/// real connection drops.
#[cfg(test)]
mod fake_server_tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use strato_proto::v1::job_service_server::{JobService, JobServiceServer};
    use tonic::codegen::tokio_stream;
    use tonic::{Request, Response, Status};

    use super::*;

    #[derive(Default)]
    struct Fake {
        /// WaitJob never answers (a control plane about to die).
        hang: bool,
        /// GetJob calls so far; each moves the job one state on.
        gets: AtomicU32,
    }

    fn job(state: v1::JobState) -> v1::Job {
        v1::Job {
            id: "j-1".into(),
            state: state as i32,
            attempt: 1,
            node_id: "node-x".into(),
            exit_code: (state == v1::JobState::Completed).then_some(0),
            ..Default::default()
        }
    }

    #[tonic::async_trait]
    impl JobService for Fake {
        async fn submit_job(
            &self,
            _: Request<v1::SubmitJobRequest>,
        ) -> Result<Response<v1::Job>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn get_job(
            &self,
            r: Request<v1::GetJobRequest>,
        ) -> Result<Response<v1::Job>, Status> {
            if r.get_ref().id != "j-1" {
                return Err(Status::not_found("no such job"));
            }
            let state = match self.gets.fetch_add(1, Ordering::SeqCst) {
                0 => v1::JobState::Queued,
                1 => v1::JobState::Running,
                _ => v1::JobState::Completed,
            };
            Ok(Response::new(job(state)))
        }
        async fn list_jobs(
            &self,
            _: Request<v1::ListJobsRequest>,
        ) -> Result<Response<v1::ListJobsResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn cancel_job(
            &self,
            _: Request<v1::CancelJobRequest>,
        ) -> Result<Response<v1::Job>, Status> {
            Err(Status::unimplemented("fake"))
        }
        type StreamLogsStream = tokio_stream::Empty<Result<v1::LogLine, Status>>;
        async fn stream_logs(
            &self,
            _: Request<v1::StreamLogsRequest>,
        ) -> Result<Response<Self::StreamLogsStream>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn wait_job(
            &self,
            r: Request<v1::WaitJobRequest>,
        ) -> Result<Response<v1::Job>, Status> {
            if r.get_ref().id != "j-1" {
                return Err(Status::not_found("no such job"));
            }
            if self.hang {
                std::future::pending::<()>().await;
            }
            Ok(Response::new(job(v1::JobState::Completed)))
        }
    }

    /// Serves `fake` on `addr` in a runtime of its own, until the returned
    /// sender is dropped or fired; then the runtime is dropped, which closes
    /// the listener and every connection at once, like a killed process.
    fn serve(
        addr: std::net::SocketAddr,
        fake: Fake,
    ) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let (kill, killed) = tokio::sync::oneshot::channel::<()>();
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                // tokio sets SO_REUSEADDR, so a restart can take the port back.
                let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
                bound_tx
                    .send(listener.local_addr().expect("addr"))
                    .expect("send");
                let server = tonic::transport::Server::builder()
                    .add_service(JobServiceServer::new(fake))
                    .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
                tokio::select! {
                    _ = server => {}
                    _ = killed => {}
                }
            });
        });
        (bound_rx.recv().expect("bound"), kill)
    }

    fn loopback() -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], 0))
    }

    #[tokio::test]
    async fn wait_rides_out_a_control_plane_restart() {
        let (addr, kill) = serve(
            loopback(),
            Fake {
                hang: true,
                ..Default::default()
            },
        );
        let channel = crate::connect(&format!("http://{addr}"))
            .await
            .expect("connects");
        let mut client = JobServiceClient::new(channel);
        let waiting = tokio::spawn(async move { wait_job(&mut client, "j-1").await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The control plane dies under the WaitJob call...
        drop(kill);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert!(!waiting.is_finished(), "gave up instead of retrying");
        // ...and comes back on the same port.
        let (_, _keep) = serve(addr, Fake::default());
        let job = tokio::time::timeout(Duration::from_secs(20), waiting)
            .await
            .expect("answered after the restart")
            .expect("joins")
            .expect("waits");
        assert_eq!(job.state, v1::JobState::Completed as i32);
    }

    #[tokio::test]
    async fn wait_does_not_retry_refusals() {
        let (addr, _keep) = serve(loopback(), Fake::default());
        let channel = crate::connect(&format!("http://{addr}"))
            .await
            .expect("connects");
        let mut client = JobServiceClient::new(channel);
        let failure = wait_job(&mut client, "nope").await.expect_err("refused");
        assert_eq!(failure.code, 1);
        assert_eq!(failure.message, "not found: no such job");
    }

    #[tokio::test]
    async fn polling_follows_the_job_to_its_end() {
        let (addr, _keep) = serve(loopback(), Fake::default());
        let channel = crate::connect(&format!("http://{addr}"))
            .await
            .expect("connects");
        let mut client = JobServiceClient::new(channel);
        let job = poll_until_final(&mut client, "j-1").await.expect("final");
        assert_eq!(job.state, v1::JobState::Completed as i32);
        let failure = poll_until_final(&mut client, "nope")
            .await
            .expect_err("refused");
        assert_eq!(failure.code, 1);
    }
}
