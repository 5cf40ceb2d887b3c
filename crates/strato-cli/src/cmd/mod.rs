//! One module per command group: its clap arguments and what it runs.

pub mod access;
pub mod compute;
pub mod datastore;
pub mod job;
pub mod login;
pub mod registry;

/// A flag's value that its parser refused; clap prints it after the flag's
/// name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgError {
    #[error("{0:?}: use NAME=azureml://datastores/<datastore>/paths/<path>")]
    DataUri(String),
    #[error("{0:?}: use NAME=MODE, e.g. raw=ro_mount")]
    DataMode(String),
    #[error("{0:?}: use PATH=VALUE, e.g. max_instances=4")]
    Set(String),
    #[error("{0:?}: the variable name before '=' must be non-empty, without spaces")]
    EnvName(String),
    #[error("{0:?}: an environment variable is KEY=VALUE")]
    EnvPair(String),
    #[error("{0:?}: a number of vCPUs above 0, e.g. 2 or 0.5")]
    Cpu(String),
    #[error("{0:?}: use dedicated or lowpriority")]
    Priority(String),
    #[error("{0:?}: a tag is KEY=VALUE")]
    Tag(String),
    /// A role or scope that `strato_core::access` refused: its rule.
    #[error("{0}")]
    Access(String),
    #[error("{0:?}: a duration like 90s, 30m, 12h or 30d (or plain seconds)")]
    Duration(String),
    #[error("{0:?}: a duration like 90s, 30m, 12h or 30d (or plain seconds), or `never`")]
    Expiry(String),
}

/// `90s`, `30m`, `12h`, `30d` or plain seconds, above 0, in seconds.
pub(crate) fn parse_duration(s: &str) -> Result<u64, ArgError> {
    let bad = || ArgError::Duration(s.to_owned());
    let text = s.trim();
    let (number, unit) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], c.to_ascii_lowercase()),
        _ => (text, 's'),
    };
    let per = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3_600,
        'd' => 86_400,
        _ => return Err(bad()),
    };
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match number.parse::<u64>().ok().and_then(|n| n.checked_mul(per)) {
        Some(0) | None => Err(bad()),
        Some(seconds) => Ok(seconds),
    }
}
