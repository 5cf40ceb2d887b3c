//! A throw-away PostgreSQL server for the tests: Debian's `postgresql`, one
//! cluster in `.data/postgres/cluster` owned by the `postgres` OS user,
//! listening on 127.0.0.1:55432 only, with a random password for the role
//! `strato`. Its URL is in `.data/postgres/url` (mode 0600).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};

use crate::command::{as_root, run};
use crate::setup::apt_install;
use crate::workspace::root;

const PORT: u16 = 55432;
const URL_PREFIX: &str = "postgres://strato:";
const URL_SUFFIX: &str = "@127.0.0.1:55432/postgres";

/// Installs PostgreSQL if missing, creates the cluster once, starts the
/// server unless it already runs, and checks that `strato` can log in and
/// that ICU collations are there. Safe to run again: the cluster and its
/// password are kept.
pub(crate) fn postgres() -> anyhow::Result<()> {
    let bin = match bin_dir() {
        Some(bin) => bin,
        None => {
            apt_install(&["postgresql"])?;
            bin_dir().context(
                "apt-get installed postgresql, but there is no /usr/lib/postgresql/*/bin/pg_ctl",
            )?
        }
    };
    let dir = root().join(".data/postgres");
    let cluster = dir.join("cluster");
    let log = dir.join("server.log");
    let url_file = dir.join("url");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // The server runs as `postgres`, which must reach the cluster and the log.
    for d in [dir.parent().unwrap_or(&dir), dir.as_path()] {
        let mut mode = std::fs::metadata(d)?.permissions().mode();
        if mode & 0o001 == 0 {
            mode |= 0o001;
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("chmod o+x {}", d.display()))?;
        }
    }
    ensure!(
        as_postgres(&["test", "-x", &path_str(&dir)?])
            .status()
            .is_ok_and(|s| s.success()),
        "the postgres OS user cannot reach {}: a directory above it is not \
         traversable by others (chmod o+x it)",
        dir.display()
    );

    let password = std::fs::read_to_string(&url_file)
        .ok()
        .and_then(|url| password_of(&url));
    let initialized = as_postgres(&["test", "-f", &path_str(&cluster.join("PG_VERSION"))?])
        .status()
        .is_ok_and(|s| s.success());
    let password = match password {
        Some(password) if initialized => {
            println!("==> postgresql cluster: present ({})", cluster.display());
            password
        }
        _ => init_cluster(&bin, &cluster, &url_file, initialized)?,
    };

    if running(&bin, &cluster)? {
        println!("==> postgresql: running");
    } else {
        ensure!(
            !port_answers(),
            "127.0.0.1:{PORT} already answers, but not from {}: stop that server and run \
             `cargo xtask setup` again",
            cluster.display()
        );
        start(&bin, &cluster, &log)?;
    }
    verify(&bin, &password, &log)
}

/// The highest installed version's bin directory, if it has `pg_ctl`.
fn bin_dir() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version: Vec<u32> = e
                .file_name()
                .to_str()?
                .split('.')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").is_file().then_some((version, bin))
        })
        .max()
        .map(|(_, bin)| bin)
}

/// A command run as the `postgres` OS user (through `runuser`, as root).
fn as_postgres(args: &[&str]) -> Command {
    let mut all = vec!["runuser", "-u", "postgres", "--"];
    all.extend_from_slice(args);
    as_root(&all)
}

fn path_str(p: &Path) -> anyhow::Result<String> {
    p.to_str()
        .map(str::to_owned)
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

/// The password in a URL this module wrote, if it is one.
fn password_of(url: &str) -> Option<String> {
    let password = url
        .trim()
        .strip_prefix(URL_PREFIX)?
        .strip_suffix(URL_SUFFIX)?;
    (password.len() == 32 && password.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| password.to_owned())
}

/// A fresh cluster with a new random password for `strato`, and its URL
/// written to `url_file`. An existing cluster (whose password is lost) is
/// stopped and removed first.
fn init_cluster(
    bin: &Path,
    cluster: &Path,
    url_file: &Path,
    existed: bool,
) -> anyhow::Result<String> {
    let cluster_s = path_str(cluster)?;
    if existed {
        println!(
            "==> postgresql: {} is missing, so the cluster's password is unknown: recreating it",
            url_file.display()
        );
        if running(bin, cluster)? {
            let pg_ctl = path_str(&bin.join("pg_ctl"))?;
            run(
                "pg_ctl stop (the old cluster)",
                as_postgres(&[&pg_ctl, "-D", &cluster_s, "-m", "fast", "-w", "stop"]),
            )?;
        }
    }
    // Also clears what a failed initdb left.
    let status = as_root(&["rm", "-rf", &cluster_s]).status()?;
    ensure!(status.success(), "rm -rf {cluster_s}: failed ({status})");
    let status = as_root(&[
        "install", "-d", "-o", "postgres", "-g", "postgres", "-m", "0700", &cluster_s,
    ])
    .status()?;
    ensure!(
        status.success(),
        "creating {cluster_s} owned by postgres: failed ({status})"
    );

    let mut random = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut random)?;
    let password: String = random.iter().map(|b| format!("{b:02x}")).collect();

    // initdb reads the password from a file only postgres can read, removed
    // right after.
    let pwfile = cluster
        .parent()
        .context("the cluster has a parent")?
        .join(".initdb-pwfile");
    let pwfile_s = path_str(&pwfile)?;
    let _ = std::fs::remove_file(&pwfile);
    let initdb = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&pwfile)?;
        writeln!(f, "{password}")?;
        drop(f);
        let status = as_root(&["chown", "postgres:postgres", &pwfile_s]).status()?;
        ensure!(
            status.success(),
            "chown postgres {pwfile_s}: failed ({status})"
        );
        let locale = if c_utf8_available() {
            "--locale=C.UTF-8"
        } else {
            "--locale=C"
        };
        let initdb = path_str(&bin.join("initdb"))?;
        let pwfile_arg = format!("--pwfile={pwfile_s}");
        let mut cmd = as_postgres(&[
            &initdb,
            "-D",
            &cluster_s,
            "-U",
            "strato",
            &pwfile_arg,
            "--auth-local=scram-sha-256",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            locale,
        ]);
        cmd.stdout(Stdio::null());
        run(&format!("initdb {cluster_s} (role strato, {locale})"), cmd)
    })();
    let _ = std::fs::remove_file(&pwfile);
    initdb?;

    let url = format!("{URL_PREFIX}{password}{URL_SUFFIX}\n");
    let tmp = url_file.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(url.as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, url_file).with_context(|| format!("writing {}", url_file.display()))?;
    println!("    postgresql URL: {} (mode 0600)", url_file.display());
    Ok(password)
}

fn c_utf8_available() -> bool {
    Command::new("locale").arg("-a").output().is_ok_and(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .any(|l| matches!(l.trim().to_ascii_lowercase().as_str(), "c.utf8" | "c.utf-8"))
    })
}

/// Whether `pg_ctl status` finds this cluster's server running.
fn running(bin: &Path, cluster: &Path) -> anyhow::Result<bool> {
    let pg_ctl = path_str(&bin.join("pg_ctl"))?;
    Ok(as_postgres(&[&pg_ctl, "status", "-D", &path_str(cluster)?])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success()))
}

fn port_answers() -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], PORT)),
        Duration::from_secs(1),
    )
    .is_ok()
}

/// Starts the server in its own session, so it outlives this command, and
/// waits until it accepts connections.
fn start(bin: &Path, cluster: &Path, log: &Path) -> anyhow::Result<()> {
    let cluster_s = path_str(cluster)?;
    let log_s = path_str(log)?;
    ensure!(
        !cluster_s.contains('\''),
        "{cluster_s}: a path with a single quote cannot be given to pg_ctl -o"
    );
    if !log.exists() {
        let status = as_root(&[
            "install",
            "-o",
            "postgres",
            "-g",
            "postgres",
            "-m",
            "0640",
            "/dev/null",
            &log_s,
        ])
        .status()?;
        ensure!(status.success(), "creating {log_s}: failed ({status})");
    }
    // A Unix socket's path is at most 107 bytes; past that, TCP only.
    let sockets = if cluster_s.len() + "/.s.PGSQL.55432".len() <= 107 {
        cluster_s.as_str()
    } else {
        ""
    };
    let options = format!(
        "-c listen_addresses=127.0.0.1 -c port={PORT} -c unix_socket_directories='{sockets}' \
         -c max_connections=300"
    );
    let pg_ctl = path_str(&bin.join("pg_ctl"))?;
    println!(
        "==> starting postgresql on 127.0.0.1:{PORT} (log: {})",
        log.display()
    );
    let status = as_postgres(&[
        "setsid", "-w", &pg_ctl, "-D", &cluster_s, "-l", &log_s, "-w", "-t", "60", "-o", &options,
        "start",
    ])
    .stdout(Stdio::null())
    .stdin(Stdio::null())
    .status()
    .context("starting pg_ctl")?;
    ensure!(
        status.success(),
        "postgresql did not start ({status}); see {}",
        log.display()
    );
    println!("    postgresql: running");
    Ok(())
}

/// `strato` logs in over TCP with the password, and ICU collations exist.
fn verify(bin: &Path, password: &str, log: &Path) -> anyhow::Result<()> {
    let query = |sql: &str| -> anyhow::Result<String> {
        // The password goes through the environment, not the command line.
        let out = Command::new(bin.join("psql"))
            .arg(format!("postgres://strato{URL_SUFFIX}"))
            .args(["-X", "-Atc", sql])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .output()
            .context("running psql")?;
        if !out.status.success() {
            bail!(
                "psql as strato on 127.0.0.1:{PORT} failed: {}; see {}",
                String::from_utf8_lossy(&out.stderr).trim(),
                log.display()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let one = query("select 1")?;
    ensure!(
        one == "1",
        "psql `select 1` answered {one:?}; see {}",
        log.display()
    );
    let icu = query("select count(*) from pg_collation where collprovider = 'i'")?;
    ensure!(
        icu.parse::<u64>().is_ok_and(|n| n > 0),
        "this PostgreSQL has no ICU collations (count {icu:?}): it must be built with ICU"
    );
    println!("==> postgresql: strato logs in on 127.0.0.1:{PORT}, {icu} ICU collations");
    Ok(())
}

/// Runs `sql` on the test server as `strato` (the password from the URL
/// file, through the environment); its output, one row a line.
pub(crate) fn psql(sql: &str) -> anyhow::Result<String> {
    let url_file = root().join(".data/postgres/url");
    let url = std::fs::read_to_string(&url_file)
        .with_context(|| format!("{}: run `cargo xtask setup`", url_file.display()))?;
    let password = password_of(&url).context("the test server's URL file is not ours")?;
    let bin = bin_dir().context("PostgreSQL is not installed: run `cargo xtask setup`")?;
    let out = Command::new(bin.join("psql"))
        .arg(format!("postgres://strato{URL_SUFFIX}"))
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-Atc", sql])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null())
        .output()
        .context("running psql")?;
    ensure!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
