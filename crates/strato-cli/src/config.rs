//! Where the CLI finds the control plane and what it proves itself with:
//! the client configuration file (`--config`, else
//! `$XDG_CONFIG_HOME/strato/config` or `~/.config/strato/config`), merged
//! with the flags and the environment, and the private, atomic writer of
//! that file for `strato login`.
//!
//! Precedence: the endpoint is `--endpoint`/`STRATO_ENDPOINT`, else the
//! file's, else [`DEFAULT_ENDPOINT`]; the token is `STRATO_TOKEN`, else the
//! file's (there is no `--token` flag outside `login`: a command line is
//! visible to every user in `ps`); the CA is `--ca-file`/`STRATO_CA_FILE`,
//! else the file's `ca_certificate`, else the system's roots.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use strato_core::client_config::ClientConfig;

use crate::Failure;

/// The endpoint when neither a flag, the environment nor the file names one.
pub const DEFAULT_ENDPOINT: &str = "https://127.0.0.1:7070";

/// The variable that holds the bearer token.
pub const TOKEN_VAR: &str = "STRATO_TOKEN";

/// What the CLI connects with, after precedence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub endpoint: String,
    /// The bearer token; `None`: calls go without one (and are refused).
    pub token: Option<String>,
    /// PEM of the CA to trust; `None`: the system's roots.
    pub ca_pem: Option<String>,
}

/// The values that flags and the environment gave, before precedence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Given {
    /// `--endpoint` or `STRATO_ENDPOINT`.
    pub endpoint: Option<String>,
    /// `STRATO_TOKEN`.
    pub token: Option<String>,
    /// The PEM read from `--ca-file` or `STRATO_CA_FILE`.
    pub ca_pem: Option<String>,
}

/// Flags and environment over the file over the defaults. Empty values
/// count as absent.
pub fn resolve(given: Given, file: ClientConfig) -> Settings {
    let pick = |a: Option<String>, b: Option<String>| {
        a.filter(|s| !s.trim().is_empty())
            .or(b.filter(|s| !s.trim().is_empty()))
    };
    Settings {
        endpoint: pick(given.endpoint, file.endpoint).unwrap_or_else(|| DEFAULT_ENDPOINT.into()),
        token: pick(given.token, file.token).map(|t| t.trim().to_owned()),
        ca_pem: pick(given.ca_pem, file.ca_certificate),
    }
}

/// The configuration file to read or write, and whether it was asked for
/// (`--config`/`STRATO_CONFIG`) rather than the default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigPath {
    pub path: PathBuf,
    pub explicit: bool,
}

/// `flag` (`--config`/`STRATO_CONFIG`), else `$XDG_CONFIG_HOME/strato/config`
/// (when set to an absolute path), else `$HOME/.config/strato/config`;
/// `None` when there is no home to find it in.
pub fn config_path(
    flag: Option<PathBuf>,
    home: Option<PathBuf>,
    xdg_config_home: Option<PathBuf>,
) -> Option<ConfigPath> {
    if let Some(path) = flag.filter(|p| !p.as_os_str().is_empty()) {
        return Some(ConfigPath {
            path,
            explicit: true,
        });
    }
    let base = xdg_config_home.filter(|p| p.is_absolute()).or_else(|| {
        home.filter(|p| !p.as_os_str().is_empty())
            .map(|h| h.join(".config"))
    })?;
    Some(ConfigPath {
        path: base.join("strato").join("config"),
        explicit: false,
    })
}

/// [`config_path`] from this process's environment.
pub fn config_path_from_env(flag: Option<PathBuf>) -> Option<ConfigPath> {
    let var = |name| std::env::var_os(name).map(PathBuf::from);
    config_path(flag, var("HOME"), var("XDG_CONFIG_HOME"))
}

/// The file at `at`: empty when it is the default and does not exist; a
/// usage error (exit 2) naming the path when an explicitly given one does
/// not exist or any file cannot be read or parsed.
pub fn load(at: Option<&ConfigPath>) -> Result<ClientConfig, Failure> {
    let Some(at) = at else {
        return Ok(ClientConfig::default());
    };
    let path = at.path.display();
    let text = match std::fs::read_to_string(&at.path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !at.explicit => {
            return Ok(ClientConfig::default());
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Failure::usage(format!(
                "--config {path}: no such file (given by --config or STRATO_CONFIG); `strato login` writes one"
            )));
        }
        Err(e) => {
            return Err(Failure::usage(format!(
                "config file {path}: cannot be read: {e}"
            )));
        }
    };
    ClientConfig::parse(&text).map_err(|e| Failure::usage(format!("config file {path}: {e}")))
}

/// The PEM of the CA file given by `--ca-file`/`STRATO_CA_FILE` (exit 2
/// when it cannot be read or holds no certificate).
pub fn read_ca_file(path: &Path) -> Result<String, Failure> {
    let shown = path.display();
    let pem = std::fs::read_to_string(path)
        .map_err(|e| Failure::usage(format!("--ca-file {shown}: cannot be read: {e}")))?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(Failure::usage(format!(
            "--ca-file {shown}: holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        )));
    }
    Ok(pem)
}

/// Writes `config` to `path`, private from the first byte: missing parent
/// directories are made with mode 0700, the file is written with mode 0600
/// to a temporary file in the same directory, flushed to disk, then renamed
/// over `path`, so a crash leaves the old file or the new, never half of one.
pub fn write_private(path: &Path, config: &ClientConfig) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(&dir)?;

    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the path names no file"))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{nanos}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = (|| {
        let mut file = options.open(&tmp)?;
        file.write_all(config.render().as_bytes())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        // Best effort: the temporary file may not exist.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // The rename is durable once the directory is; best effort (not every
    // platform can open a directory).
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system's temporary one; removed by the
    /// test.
    fn file(endpoint: &str, token: &str, ca: &str) -> ClientConfig {
        ClientConfig {
            endpoint: Some(endpoint.into()),
            token: Some(token.into()),
            ca_certificate: Some(ca.into()),
        }
    }

    #[test]
    fn flags_and_environment_win_over_the_file_which_wins_over_defaults() {
        let from_file = file("https://file:7070", "file-token", "FILE CA");
        assert_eq!(
            resolve(Given::default(), from_file.clone()),
            Settings {
                endpoint: "https://file:7070".into(),
                token: Some("file-token".into()),
                ca_pem: Some("FILE CA".into()),
            }
        );
        let given = Given {
            endpoint: Some("https://flag:7070".into()),
            token: Some("env-token\n".into()),
            ca_pem: Some("FLAG CA".into()),
        };
        assert_eq!(
            resolve(given, from_file.clone()),
            Settings {
                endpoint: "https://flag:7070".into(),
                token: Some("env-token".into()),
                ca_pem: Some("FLAG CA".into()),
            }
        );
        // Each one on its own.
        let only_token = Given {
            token: Some("env-token".into()),
            ..Default::default()
        };
        let s = resolve(only_token, from_file);
        assert_eq!(s.endpoint, "https://file:7070");
        assert_eq!(s.token.as_deref(), Some("env-token"));
        assert_eq!(s.ca_pem.as_deref(), Some("FILE CA"));
        // Nothing anywhere: the default endpoint, no token, system roots.
        assert_eq!(
            resolve(Given::default(), ClientConfig::default()),
            Settings {
                endpoint: DEFAULT_ENDPOINT.into(),
                token: None,
                ca_pem: None,
            }
        );
        // An empty STRATO_TOKEN= is no token.
        let empty = Given {
            token: Some(String::new()),
            ..Default::default()
        };
        assert_eq!(
            resolve(empty, file("https://f", "file-token", "CA"))
                .token
                .as_deref(),
            Some("file-token")
        );
    }

    #[test]
    fn the_config_path_is_the_flag_else_xdg_else_home() {
        let p = PathBuf::from;
        assert_eq!(
            config_path(Some(p("/x/c")), Some(p("/home/u")), Some(p("/xdg"))),
            Some(ConfigPath {
                path: p("/x/c"),
                explicit: true
            })
        );
        assert_eq!(
            config_path(None, Some(p("/home/u")), Some(p("/xdg"))),
            Some(ConfigPath {
                path: p("/xdg/strato/config"),
                explicit: false
            })
        );
        assert_eq!(
            config_path(None, Some(p("/home/u")), None),
            Some(ConfigPath {
                path: p("/home/u/.config/strato/config"),
                explicit: false
            })
        );
        // A relative XDG_CONFIG_HOME is ignored, as the spec says.
        assert_eq!(
            config_path(None, Some(p("/home/u")), Some(p("rel"))).map(|c| c.path),
            Some(p("/home/u/.config/strato/config"))
        );
        assert_eq!(config_path(None, None, None), None);
    }

    #[test]
    fn a_missing_default_file_is_empty_but_a_missing_given_one_is_an_error() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let missing = dir.join("config");
        let default = ConfigPath {
            path: missing.clone(),
            explicit: false,
        };
        assert_eq!(
            load(Some(&default)).expect("empty"),
            ClientConfig::default()
        );
        let given = ConfigPath {
            path: missing.clone(),
            explicit: true,
        };
        let f = load(Some(&given)).expect_err("missing");
        assert_eq!(f.code, 2);
        assert!(
            f.message.contains(&missing.display().to_string()),
            "{}",
            f.message
        );
        assert!(f.message.contains("--config"), "{}", f.message);
        // A file that does not parse names its path and the bad key.
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(&missing, "endpont = \"https://x\"\n").expect("write");
        let f = load(Some(&default)).expect_err("typo");
        assert_eq!(f.code, 2);
        assert!(f.message.contains("endpont"), "{}", f.message);
    }

    #[cfg(unix)]
    #[test]
    fn the_config_is_written_private_and_whole() {
        use std::os::unix::fs::PermissionsExt;

        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let path = dir.join("strato").join("config");
        let config = file(
            "https://cp:7070",
            "strato_secret",
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        );
        write_private(&path, &config).expect("writes");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().expect("parent")), 0o700);
        let back =
            ClientConfig::parse(&std::fs::read_to_string(&path).expect("reads")).expect("parses");
        assert_eq!(back.endpoint, config.endpoint);
        assert_eq!(back.token, config.token);

        // Over an existing, too-open file: replaced by a private one, and no
        // temporary file is left behind.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let newer = ClientConfig {
            token: Some("strato_newer".into()),
            ..config
        };
        write_private(&path, &newer).expect("rewrites");
        assert_eq!(mode(&path), 0o600);
        let entries: Vec<_> = std::fs::read_dir(path.parent().expect("parent"))
            .expect("lists")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(entries, vec![std::ffi::OsString::from("config")]);
        assert!(
            std::fs::read_to_string(&path)
                .expect("reads")
                .contains("strato_newer")
        );
    }

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("ca.pem");
        std::fs::write(&path, "not a pem").expect("write");
        let f = read_ca_file(&path).expect_err("not pem");
        assert_eq!(f.code, 2);
        assert!(f.message.starts_with("--ca-file "), "{}", f.message);
        let f = read_ca_file(&dir.join("absent.pem")).expect_err("absent");
        assert_eq!(f.code, 2);
        std::fs::write(&path, include_str!("../testdata/ca.pem")).expect("write");
        assert!(read_ca_file(&path).is_ok());
    }
}
