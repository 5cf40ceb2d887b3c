//! A real container registry for the pull tests: Debian's `docker-registry`
//! (distribution 2.8) on a free port of the Docker bridge's gateway address
//! (not loopback: the engine treats 127.0.0.0/8 as an insecure registry and
//! falls back to plain HTTP, which would hide TLS and auth errors), over
//! TLS with a CA of the test's own (openssl), with htpasswd (bcrypt) basic
//! auth. The engine trusts the CA through `/etc/docker/certs.d/HOST:PORT/`,
//! removed with the registry, as are the images the test pulled from it.
//! Images are pushed with a Docker client configuration of the registry's
//! own, so nothing is written to the user's `~/.docker`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};

use crate::free_port;

/// A running registry; stopped and cleaned up when dropped.
pub struct Registry {
    child: Child,
    /// `HOST:PORT` (the bridge's gateway), as image references start with it.
    pub server: String,
    dir: PathBuf,
    certs_d: PathBuf,
    /// References pushed or pulled through it, removed from the engine.
    references: Vec<String>,
}

pub(crate) fn run(what: &str, cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{what}: cannot start (run `cargo xtask setup`)"))?;
    ensure!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A CA of the test's own (openssl, P-256, valid a day) that issues server
/// certificates for IP addresses.
pub struct TestCa {
    dir: PathBuf,
}

impl TestCa {
    pub fn new(dir: &Path) -> anyhow::Result<TestCa> {
        let dir = dir.join("ca");
        std::fs::create_dir_all(&dir)?;
        self_signed(&dir.join("ca.key"), &dir.join("ca.crt"), "strato test CA")?;
        Ok(TestCa { dir })
    }

    /// The CA's certificate (PEM).
    pub fn certificate(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// A key and a certificate for IP `host`, as `name.crt` and `name.key`.
    pub fn issue(&self, host: &str, name: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        let path = |file: String| self.dir.join(file).display().to_string();
        let (key, csr, crt, ext) = (
            path(format!("{name}.key")),
            path(format!("{name}.csr")),
            path(format!("{name}.crt")),
            path(format!("{name}.ext")),
        );
        run(
            "openssl (a key)",
            Command::new("openssl").args([
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                &format!("/CN={host}"),
                "-keyout",
                &key,
                "-out",
                &csr,
            ]),
        )?;
        std::fs::write(&ext, format!("subjectAltName=IP:{host}\n"))?;
        run(
            "openssl (a certificate)",
            Command::new("openssl").args([
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &path("ca.crt".into()),
                "-CAkey",
                &path("ca.key".into()),
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                &ext,
                "-out",
                &crt,
            ]),
        )?;
        Ok((PathBuf::from(crt), PathBuf::from(key)))
    }
}

/// A P-256 key at `key` and a self-signed certificate for it at `crt`
/// (valid a day) naming `common_name`.
pub fn self_signed(key: &Path, crt: &Path, common_name: &str) -> anyhow::Result<()> {
    run(
        "openssl (a self-signed certificate)",
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "1",
                "-subj",
            ])
            .arg(format!("/CN={common_name}"))
            .arg("-keyout")
            .arg(key)
            .arg("-out")
            .arg(crt),
    )?;
    Ok(())
}

/// The Docker bridge's gateway: an address of this machine the engine does
/// not take for an insecure registry.
pub fn bridge_gateway() -> anyhow::Result<String> {
    let host = bridge("{{range .IPAM.Config}}{{.Gateway}}{{end}}")?;
    if !host.is_empty() {
        return Ok(host);
    }
    // An engine started again over a bridge it made before may leave the
    // gateway out of IPAM: the bridge's interface has it.
    let interface = bridge("{{index .Options \"com.docker.network.bridge.name\"}}")?;
    let interface = match interface.as_str() {
        "" => "docker0",
        name => name,
    };
    let addresses = run(
        "ip -4 -o addr show",
        Command::new("ip").args(["-4", "-o", "addr", "show", "dev", interface]),
    )?;
    // "5: docker0    inet 172.17.0.1/16 brd ..."
    let host = addresses
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .unwrap_or_default()
        .to_owned();
    ensure!(
        !host.is_empty(),
        "the Docker bridge has no gateway address (neither in `docker network inspect bridge` nor on {interface})"
    );
    Ok(host)
}

/// `docker network inspect bridge` with `format`, trimmed.
fn bridge(format: &str) -> anyhow::Result<String> {
    let out = run(
        "docker network inspect bridge",
        Command::new("docker").args(["network", "inspect", "bridge", "--format", format]),
    )?;
    Ok(out.trim().to_owned())
}

/// How a registry checks who pulls.
pub enum RegistryAuth<'a> {
    /// htpasswd: one user.
    Basic { user: &'a str, password: &'a str },
    /// Bearer tokens from a token service (`crate::acr::AcrTokens`), which
    /// the test's own pushes log in to as `admin`.
    Token(&'a crate::acr::AcrTokens),
}

impl Registry {
    /// Starts a registry whose only user is `user` with `password`.
    pub fn start(dir: &Path, user: &str, password: &str) -> anyhow::Result<Registry> {
        let ca = TestCa::new(dir)?;
        Self::start_with(dir, &ca, RegistryAuth::Basic { user, password })
    }

    /// Starts a registry that checks pulls as `auth` says, its certificate
    /// from `ca` (which a token service may share).
    pub fn start_with(dir: &Path, ca: &TestCa, auth: RegistryAuth<'_>) -> anyhow::Result<Registry> {
        let dir = dir.join("registry");
        std::fs::create_dir_all(dir.join("data"))?;
        let port = free_port();
        let host = bridge_gateway()?;
        let server = format!("{host}:{port}");
        let path = |name: &str| dir.join(name).display().to_string();
        let (crt, key) = ca.issue(&host, "registry")?;
        let (auth_yaml, login) = match auth {
            RegistryAuth::Basic { user, password } => {
                let htpasswd = run(
                    "htpasswd (apt-get install apache2-utils)",
                    Command::new("htpasswd").args(["-Bbn", user, password]),
                )?;
                std::fs::write(dir.join("htpasswd"), htpasswd)?;
                (
                    format!(
                        "  htpasswd:\n    realm: strato-test\n    path: {}\n",
                        path("htpasswd")
                    ),
                    (user.to_owned(), password.to_owned()),
                )
            }
            RegistryAuth::Token(tokens) => (
                format!(
                    "  token:\n    realm: {realm}\n    service: {server}\n    issuer: {issuer}\n    rootcertbundle: {bundle}\n",
                    realm = tokens.realm(),
                    issuer = crate::acr::ISSUER,
                    bundle = tokens.signing_certificate().display(),
                ),
                (
                    crate::acr::ADMIN.to_owned(),
                    crate::acr::ADMIN_PASSWORD.to_owned(),
                ),
            ),
        };
        std::fs::write(
            dir.join("config.yml"),
            format!(
                "version: 0.1\n\
                 log:\n  level: info\n\
                 storage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\n\
                 http:\n  addr: {server}\n  tls:\n    certificate: {crt}\n    key: {key}\n\
                 auth:\n{auth_yaml}",
                data = path("data"),
                crt = crt.display(),
                key = key.display(),
            ),
        )?;
        let log = std::fs::File::create(dir.join("registry.log"))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("docker-registry is missing: run `cargo xtask setup`")?;
        // The engine trusts the registry's CA for this address only.
        let certs_d = Path::new("/etc/docker/certs.d").join(&server);
        let mut registry = Registry {
            child,
            server,
            dir,
            certs_d,
            references: Vec::new(),
        };
        std::fs::create_dir_all(&registry.certs_d)?;
        std::fs::copy(ca.certificate(), registry.certs_d.join("ca.crt"))?;
        registry.wait_ready()?;
        run(
            "docker login",
            Command::new("docker")
                .arg("--config")
                .arg(registry.dir.join("docker"))
                .args(["login", "-u", &login.0, "-p", &login.1, &registry.server]),
        )?;
        Ok(registry)
    }

    /// Waits until the registry answers over TLS (401 without a login).
    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("docker-registry exited with {status}:\n{}", self.log());
            }
            let code = Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
                .arg(self.certs_d.join("ca.crt"))
                .arg(format!("https://{}/v2/", self.server))
                .output()?;
            if String::from_utf8_lossy(&code.stdout) == "401" {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("docker-registry did not answer:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What the registry logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }

    /// Pushes local image `local` as `REGISTRY/repository` and removes that
    /// name from the engine again, so a node must pull it; returns the
    /// reference.
    pub fn push(&mut self, local: &str, repository: &str) -> anyhow::Result<String> {
        let reference = format!("{}/{repository}", self.server);
        self.references.push(reference.clone());
        run(
            "docker tag",
            Command::new("docker").args(["tag", local, &reference]),
        )?;
        run(
            "docker push",
            Command::new("docker")
                .arg("--config")
                .arg(self.dir.join("docker"))
                .args(["push", &reference]),
        )?;
        run(
            "docker rmi",
            Command::new("docker").args(["rmi", &reference]),
        )?;
        Ok(reference)
    }
}

/// A local image of `base` with a layer of `megabytes` of random bytes on
/// top (`/blob`), named `name`: what a pull must really download.
pub fn image_with_random_layer(base: &str, name: &str, megabytes: u32) -> anyhow::Result<()> {
    let container = run(
        "docker create",
        Command::new("docker").args(["create", base, "true"]),
    )?
    .trim()
    .to_owned();
    let made = (|| {
        let blob =
            std::env::temp_dir().join(format!("strato-blob-{}-{megabytes}", std::process::id()));
        run(
            "head -c",
            Command::new("sh").arg("-c").arg(format!(
                "head -c {megabytes}M /dev/urandom > '{}'",
                blob.display()
            )),
        )?;
        let copied = run(
            "docker cp",
            Command::new("docker")
                .arg("cp")
                .arg(&blob)
                .arg(format!("{container}:/blob")),
        );
        std::fs::remove_file(&blob).ok();
        copied?;
        run(
            "docker commit",
            Command::new("docker").args(["commit", &container, name]),
        )
    })();
    let _ = Command::new("docker")
        .args(["rm", "-f", &container])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    made.map(|_| ())
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for reference in &self.references {
            let _ = Command::new("docker")
                .args(["rmi", "-f", reference])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.certs_d);
    }
}
