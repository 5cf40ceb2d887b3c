//! `cargo xtask bench mounts`: a 1 GiB blob in Azurite read by a job
//! through `ro_mount` and through `download`, in one run on one warm node:
//! the time from submit until the job has its first byte, and until it has
//! read the whole blob.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};

use crate::bench::{remove_bench_cluster, warm_bench_cluster_with};
use crate::control::{Control, free_port, strato_output};
use crate::images::{MOUNT_IMAGE, TEST_IMAGE};
use crate::workspace::root;

const RUNS: usize = 3;
const BLOB_MIB: u64 = 1024;
const ISSUER: &str = "https://sts.windows.net/0d0c0b0a-0000-4000-8000-000000000001/";

/// Azurite over HTTPS with `--oauth basic`, as the tests run it.
struct Azurite {
    child: Child,
    port: u16,
}

impl Azurite {
    fn start(dir: &Path) -> anyhow::Result<Self> {
        let base = root().join(".data/azurite");
        let port = free_port()?;
        let child = Command::new(base.join("node_modules/.bin/azurite-blob"))
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .args(["--oauth", "basic", "--skipApiVersionCheck", "--loose"])
            .arg("--disableTelemetry")
            .arg("--cert")
            .arg(base.join("tls/cert.pem"))
            .arg("--key")
            .arg(base.join("tls/key.pem"))
            .arg("--location")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting Azurite (cargo xtask setup installs it)")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            ensure!(Instant::now() < deadline, "Azurite did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Azurite { child, port })
    }

    fn account_url(&self) -> String {
        format!("https://127.0.0.1:{}/devstoreaccount1", self.port)
    }

    /// `curl` with a bearer token Azurite accepts (it checks the claims,
    /// not the signature) and the blob headers.
    fn curl(&self) -> anyhow::Result<Command> {
        let token = Command::new("python3")
            .args([
                "-c",
                "import base64, json, sys, time\n\
                 b = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b'=').decode()\n\
                 now = int(time.time())\n\
                 print(b({'alg': 'HS256', 'typ': 'JWT'}) + '.' + b({'iss': sys.argv[1], \
                 'aud': 'https://storage.azure.com', 'iat': now, 'nbf': now - 60, \
                 'exp': now + 3600, 'oid': 'bench'}) + '.c2ln')",
                ISSUER,
            ])
            .output()
            .context("python3")?;
        let token = String::from_utf8_lossy(&token.stdout).trim().to_owned();
        let mut curl = Command::new("curl");
        curl.args(["-sf", "--cacert"])
            .arg(root().join(".data/azurite/tls/ca.pem"))
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .args(["-H", "x-ms-version: 2021-08-06"])
            .args(["-H", "x-ms-blob-type: BlockBlob"]);
        Ok(curl)
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One job's timings from submit: its first byte of the blob, the whole blob.
struct Read {
    first_byte: Duration,
    all: Duration,
}

fn read_blob(control: &Control, mode: &str) -> anyhow::Result<Read> {
    let started = Instant::now();
    let input = "big=azureml://datastores/lake/paths/big";
    let mode_arg = format!("big={mode}");
    let out = control
        .cli()
        .args(["job", "submit", "--compute", "bench", "--image", TEST_IMAGE])
        .args(["--input", input, "--input-mode", &mode_arg])
        .args([
            "--",
            "sh",
            "-c",
            "head -c 1 $AZURE_ML_INPUT_big/big.bin >/dev/null && echo first && \
             cat $AZURE_ML_INPUT_big/big.bin | wc -c",
        ])
        .output()?;
    ensure!(
        out.status.success(),
        "submit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let mut follow = control
        .cli()
        .args(["job", "logs", &id, "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut lines = BufReader::new(follow.stdout.take().context("stdout")?).lines();
    let first = lines.next().context("no first line")??;
    let first_byte = started.elapsed();
    ensure!(first.trim() == "first", "unexpected line {first:?}");
    let count = lines.next().context("no count")??;
    let all = started.elapsed();
    ensure!(
        count.trim() == (BLOB_MIB * 1024 * 1024).to_string(),
        "the job read {count} bytes"
    );
    follow.wait()?;
    let status = control
        .cli()
        .args(["job", "wait", &id])
        .stdout(Stdio::null())
        .status()?;
    ensure!(status.success(), "job {id} did not complete");
    Ok(Read { first_byte, all })
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub(crate) fn bench_mounts() -> anyhow::Result<()> {
    let scratch = root()
        .join(".data")
        .join(format!("bench-mounts-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let result = run(&scratch);
    std::fs::remove_dir_all(&scratch).ok();
    result
}

fn run(scratch: &Path) -> anyhow::Result<()> {
    crate::setup::setup()?;
    let azurite = Azurite::start(&scratch.join("azurite"))?;
    println!("==> a {BLOB_MIB} MiB blob in Azurite");
    let blob = scratch.join("big.bin");
    let status = Command::new("dd")
        .args([
            "if=/dev/zero",
            "bs=1M",
            &format!("count={BLOB_MIB}"),
            "status=none",
        ])
        .arg(format!("of={}", blob.display()))
        .status()?;
    ensure!(status.success(), "dd");
    let url = azurite.account_url();
    let created = azurite
        .curl()?
        .args(["-X", "PUT", &format!("{url}/bench?restype=container")])
        .status()?;
    ensure!(created.success(), "creating the storage container");
    let put = azurite
        .curl()?
        .args(["-X", "PUT", "-T"])
        .arg(&blob)
        .arg(format!("{url}/bench/big/big.bin"))
        .status()?;
    ensure!(put.success(), "uploading the blob");
    std::fs::remove_file(&blob)?;

    let ca = root()
        .join(".data/azurite/tls/ca.pem")
        .display()
        .to_string();
    let (control, data_dir, _grpc) = warm_bench_cluster_with(
        "mounts",
        &["--token-issuer", ISSUER, "--storage-ca-file", &ca],
        &[("STRATO_MOUNT_IMAGE", MOUNT_IMAGE)],
        &["--assign-identity", "[system]"],
    )?;
    strato_output(
        &control,
        &[
            "datastore",
            "create",
            "-n",
            "lake",
            "--account-url",
            &url,
            "--container",
            "bench",
        ],
    )?;
    let mut mounted = Vec::new();
    let mut downloaded = Vec::new();
    for run_no in 0..=RUNS {
        let m = read_blob(&control, "ro_mount")?;
        let d = read_blob(&control, "download")?;
        // The first pair warms the images and the node's page cache.
        if run_no > 0 {
            mounted.push(m);
            downloaded.push(d);
        }
    }
    let report = |name: &str, reads: &[Read]| {
        let first = median(reads.iter().map(|r| r.first_byte).collect());
        let all = median(reads.iter().map(|r| r.all).collect());
        let mib_s = BLOB_MIB as f64 / all.as_secs_f64();
        println!(
            "{name:<10} first byte {:>7.2} s   whole blob {:>7.2} s   {mib_s:>7.1} MiB/s from submit",
            first.as_secs_f64(),
            all.as_secs_f64()
        );
        (first, all)
    };
    println!("\n{BLOB_MIB} MiB blob on Azurite, median of {RUNS} runs each, one warm node:");
    let (m_first, m_all) = report("ro_mount", &mounted);
    let (d_first, d_all) = report("download", &downloaded);
    println!(
        "ro_mount / download: first byte {:.2}x, whole blob {:.2}x",
        m_first.as_secs_f64() / d_first.as_secs_f64(),
        m_all.as_secs_f64() / d_all.as_secs_f64()
    );
    remove_bench_cluster(control, &data_dir)?;
    drop(azurite);
    Ok(())
}
