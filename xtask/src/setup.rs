//! `cargo xtask setup`: install and start what the build and the tests need.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};

use crate::command::{as_root, have, run};
use crate::images::{build_busybox_image, build_machine_image, build_mount_image, build_mpi_image};
use crate::postgres::postgres;
use crate::workspace::root;

/// Everything the build and tests need, installed and started if missing:
/// the Rust toolchain's rustfmt and clippy, the Docker engine (Debian's
/// docker.io, dockerd in the background), and the test images (no registry
/// is reachable: they are built with `docker import`), and a throw-away
/// PostgreSQL server (Debian's postgresql) on 127.0.0.1:55432 with its
/// cluster in `.data/postgres` and its URL in `.data/postgres/url`. Safe to
/// run again.
pub(crate) fn setup() -> anyhow::Result<()> {
    ensure!(
        have("cargo"),
        "cargo is not on PATH: install Rust with rustup (https://rustup.rs)"
    );
    for (component, probe) in [("rustfmt", "rustfmt"), ("clippy", "cargo-clippy")] {
        if have(probe) {
            println!("==> {component}: present");
        } else {
            let mut c = Command::new("rustup");
            c.args(["component", "add", component]);
            run(&format!("rustup component add {component}"), c)?;
        }
    }
    let missing: Vec<&str> = [
        ("dockerd", "docker.io"),
        ("busybox", "busybox-static"),
        ("prometheus", "prometheus"),
        ("curl", "curl"),
        ("systemd-analyze", "systemd"),
        ("ssh", "openssh-client"),
        ("docker-registry", "docker-registry"),
        ("htpasswd", "apache2-utils"),
        ("openssl", "openssl"),
        ("fusermount3", "fuse3"),
        // The studio's browser tests: headless Chromium through WebDriver.
        ("chromium", "chromium"),
        ("chromedriver", "chromium-driver"),
    ]
    .into_iter()
    .filter(|(program, _)| !have(program) && !Path::new(&format!("/bin/{program}")).exists())
    .map(|(_, package)| package)
    .collect();
    if missing.is_empty() {
        println!(
            "==> docker.io, busybox-static, prometheus, curl, systemd, openssh-client, docker-registry, apache2-utils, openssl, fuse3, chromium, chromium-driver: present"
        );
    } else {
        apt_install(&missing)?;
    }
    shared_root_mount()?;
    start_docker()?;
    build_busybox_image()?;
    build_mpi_image()?;
    build_machine_image()?;
    python_clients()?;
    build_mount_image()?;
    azurite()?;
    oidc_provider()?;
    postgres()?;
    Ok(())
}

/// Mount helpers make their FUSE mounts appear on the host through a bind
/// with `rshared` propagation, which Docker allows only on a shared mount.
/// systemd makes `/` shared at boot; a machine booted otherwise (a CI
/// container, this VM) gets the same here.
fn shared_root_mount() -> anyhow::Result<()> {
    let shared = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            fields.get(4) == Some(&"/")
                && fields[6..]
                    .iter()
                    .take_while(|f| **f != "-")
                    .any(|f| f.starts_with("shared:"))
        });
    if shared {
        println!("==> / is a shared mount: yes");
        return Ok(());
    }
    run(
        "mount --make-rshared / (as systemd does at boot)",
        as_root(&["mount", "--make-rshared", "/"]),
    )
}

/// A real OpenID Provider for the OIDC tests: panva's certified
/// `oidc-provider` (from npm) in `.data/oidc`, run by
/// `tests/oidc/issuer.mjs` with the test CA's certificate.
fn oidc_provider() -> anyhow::Result<()> {
    let dir = root().join(".data/oidc");
    if dir.join("node_modules/oidc-provider/package.json").exists() {
        println!("==> oidc-provider: present");
        return Ok(());
    }
    if !have("npm") {
        apt_install(&["nodejs", "npm"])?;
    }
    std::fs::create_dir_all(&dir)?;
    let mut npm = Command::new("npm");
    npm.args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
        .arg(&dir)
        .arg("oidc-provider@9");
    run("npm install oidc-provider", npm)
}

/// Azurite (the Azure Storage emulator, from npm) in `.data/azurite`, and a
/// test CA with a certificate for 127.0.0.1 in `.data/azurite/tls`, so the
/// storage tests run it over HTTPS with `--oauth basic`.
fn azurite() -> anyhow::Result<()> {
    let dir = root().join(".data/azurite");
    if dir.join("node_modules/.bin/azurite-blob").exists() {
        println!("==> azurite: present");
    } else {
        if !have("npm") {
            apt_install(&["nodejs", "npm"])?;
        }
        std::fs::create_dir_all(&dir)?;
        let mut npm = Command::new("npm");
        npm.args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
            .arg(&dir)
            .arg("azurite@3");
        run("npm install azurite", npm)?;
    }
    let tls = dir.join("tls");
    if tls.join("cert.pem").exists() && tls.join("ca.pem").exists() {
        println!("==> azurite TLS certificate: present");
        return Ok(());
    }
    if !have("openssl") {
        apt_install(&["openssl"])?;
    }
    std::fs::create_dir_all(&tls)?;
    let script = "set -e
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 3650 -subj '/CN=Strato test CA' 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout key.pem -out leaf.csr -subj '/CN=127.0.0.1' 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > leaf.ext
openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out cert.pem -days 3650 -extfile leaf.ext 2>/dev/null";
    let mut certs = Command::new("sh");
    certs.args(["-c", script]).current_dir(&tls);
    run("openssl: test CA and certificate for 127.0.0.1", certs)
}

/// A Python virtual environment with Azure's own `azure-identity` (from
/// PyPI), which the identity tests run unmodified against the agent's
/// endpoint, and `azure-ai-ml`, whose `load_compute` is the compute YAML
/// tests' oracle.
fn python_clients() -> anyhow::Result<()> {
    let venv = root().join(".data/venv");
    let python = venv.join("bin/python");
    let ready = Command::new(&python)
        .args(["-c", "import azure.identity, azure.ai.ml"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ready {
        println!("==> python azure-identity, azure-ai-ml: present");
        return Ok(());
    }
    if !python.exists() {
        let mut create = Command::new("python3");
        create.args(["-m", "venv"]).arg(&venv);
        run("python3 -m venv .data/venv", create)?;
    }
    let mut install = Command::new(venv.join("bin/pip"));
    install.args(["install", "--quiet", "azure-identity", "azure-ai-ml"]);
    run("pip install azure-identity azure-ai-ml", install)
}

pub(crate) fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    let mut update = as_root(&["apt-get", "update", "-q"]);
    update
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null());
    run("apt-get update", update)?;
    let mut args = vec!["apt-get", "install", "-y", "-q", "--no-install-recommends"];
    args.extend_from_slice(packages);
    let mut install = as_root(&args);
    install
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null());
    run(&format!("apt-get install {}", packages.join(" ")), install)
}

fn docker_answers() -> bool {
    Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts dockerd in the background (in its own session, so it outlives
/// this command) unless an engine already answers, and waits for it.
fn start_docker() -> anyhow::Result<()> {
    if docker_answers() {
        println!("==> docker engine: running");
        return Ok(());
    }
    println!("==> starting dockerd (log: /var/log/strato-dockerd.log)");
    as_root(&[
        "sh",
        "-c",
        "setsid dockerd >>/var/log/strato-dockerd.log 2>&1 < /dev/null &",
    ])
    .status()
    .context("starting dockerd")?;
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        if docker_answers() {
            println!("    docker engine: running");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    bail!("dockerd did not answer within 90s; see /var/log/strato-dockerd.log")
}
