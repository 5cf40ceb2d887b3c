//! Reaching the control plane: the TLS channel every service's client is
//! built on, carrying the bearer token (exit 3 when the control plane
//! cannot be reached, 2 when the endpoint is not an `https://` URL), and the
//! backoff for calls made while it is away (`job wait` rides out a
//! restart).

use std::time::{Duration, Instant};

use strato_proto::client::{AuthedChannel, Bearer, authed, authed_failover};
use tonic::transport::{Channel, Endpoint};

use crate::Failure;
use crate::config::Settings;

/// How long connecting may take before the control plane counts as
/// unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A TLS channel to `settings.endpoint`, trusting `settings.ca_pem`,
/// connected (exit 3 when it cannot be; 2 for an `http://` or malformed
/// endpoint or a token no header can carry), every call carrying the token.
pub async fn connect(settings: &Settings) -> Result<AuthedChannel, Failure> {
    let bearer = Bearer::new(settings.token.as_deref()).map_err(|e| {
        Failure::usage(format!(
            "the token (from {} or the config file): {e}",
            crate::config::TOKEN_VAR
        ))
    })?;
    // Replicas: their addresses separated by commas, tried in order; the
    // first that answers serves this command until a call to it fails
    // below gRPC (it went away), then the next (`Failover`).
    let urls: Vec<&str> = settings
        .endpoint
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    if urls.is_empty() || urls.len() > MAX_ENDPOINTS {
        return Err(Failure::usage(format!(
            "--endpoint: give 1 to {MAX_ENDPOINTS} addresses, separated by commas"
        )));
    }
    let mut endpoints = Vec::with_capacity(urls.len());
    for url in &urls {
        endpoints.push(
            strato_proto::client::endpoint(url, settings.ca_pem.as_deref())
                .map_err(|e| Failure::usage(format!("--endpoint {e}")))?,
        );
    }
    let last = urls.len() - 1;
    for (i, url) in urls.iter().enumerate() {
        match connect_channel(endpoints[i].clone(), url).await {
            Ok(channel) => {
                if last == 0 {
                    return Ok(authed(channel, bearer));
                }
                // The others are connected when a failover first needs them.
                let channels = endpoints
                    .iter()
                    .enumerate()
                    .map(|(j, e)| match j == i {
                        true => channel.clone(),
                        false => e.clone().connect_timeout(CONNECT_TIMEOUT).connect_lazy(),
                    })
                    .collect();
                return Ok(authed_failover(channels, i, bearer));
            }
            Err(e) if i < last => {
                eprintln!("strato: {}; trying the next endpoint", e.message);
            }
            Err(e) => return Err(e),
        }
    }
    Err(Failure::usage("--endpoint: no address"))
}

/// The most addresses `--endpoint` takes.
const MAX_ENDPOINTS: usize = 16;

/// Connects `endpoint` (shown as `url`), or says why not (exit 3). The
/// https-only check is [`connect`]'s: tests come in here with a plaintext
/// endpoint to a fake control plane.
pub(crate) async fn connect_channel(endpoint: Endpoint, url: &str) -> Result<Channel, Failure> {
    endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .connect()
        .await
        .map_err(|e| {
            let why = with_sources(e.to_string(), std::error::Error::source(&e));
            Failure::unreachable(format!(
                "cannot reach the control plane at {url}: {why}; {}",
                connect_hint(&why)
            ))
        })
}

/// What to do about a failed connection whose errors read `why`.
fn connect_hint(why: &str) -> &'static str {
    if why.contains("UnknownIssuer") {
        "the control plane's certificate is not trusted: pass its CA with --ca-file CA.pem (or STRATO_CA_FILE), or save it in the config with `strato login --ca-file CA.pem`"
    } else if why.contains("not valid for name") || why.contains("NotValidForName") {
        "the control plane's certificate does not name this host: use an endpoint host it names (as in the control plane's admin.conf)"
    } else if why.contains("invalid peer certificate") {
        "the control plane's certificate was refused; check --ca-file / the config's ca_certificate"
    } else if why.contains("corrupt message") || why.contains("InvalidContentType") {
        "the server at this address does not speak TLS; is it strato-control?"
    } else {
        "is strato-control running? set --endpoint, or --config / `strato login`"
    }
}

/// `text` followed by each error under it that it does not already say (a
/// transport error's own message says little more than "transport error").
fn with_sources(
    mut text: String,
    mut source: Option<&(dyn std::error::Error + 'static)>,
) -> String {
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = s.source();
    }
    text
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
    with_sources(
        status.message().to_owned(),
        std::error::Error::source(status),
    )
    .replace('\n', " ")
}

/// Backoff for calls that fail while the control plane is away: retried with
/// growing delays until it has been away for [`RETRY_FOR`].
#[derive(Debug)]
pub struct Retry {
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
    pub fn succeeded(&mut self) {
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
    pub async fn wait_or_give_up(
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
            None if retriable(&status) => Err(Failure::unreachable(format!(
                "the control plane stayed unavailable for {} s: {}",
                RETRY_FOR.as_secs(),
                describe(&status)
            ))),
            None => Err(status.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn plaintext_endpoints_are_bad_usage() {
        let settings = Settings {
            endpoint: "http://127.0.0.1:7070".into(),
            token: Some("strato_x".into()),
            ca_pem: None,
        };
        let f = connect(&settings).await.expect_err("http://");
        assert_eq!(f.code, 2);
        assert!(
            f.message
                .starts_with("--endpoint \"http://127.0.0.1:7070\""),
            "{}",
            f.message
        );
        assert!(f.message.contains("https://"), "{}", f.message);
        let f = connect(&Settings {
            endpoint: "127.0.0.1:7070".into(),
            ..settings
        })
        .await
        .expect_err("no scheme");
        assert_eq!(f.code, 2);
    }

    #[tokio::test]
    async fn an_unreachable_control_plane_is_exit_3_with_a_hint() {
        // A port nothing listens on: bound, then closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let f = connect(&Settings {
            endpoint: format!("https://127.0.0.1:{port}"),
            token: None,
            ca_pem: None,
        })
        .await
        .expect_err("nothing there");
        assert_eq!(f.code, 3);
        assert!(
            f.message.contains("is strato-control running?"),
            "{}",
            f.message
        );
    }

    #[test]
    fn certificate_failures_get_their_own_hints() {
        assert!(connect_hint("invalid peer certificate: UnknownIssuer").contains("--ca-file"));
        assert!(
            connect_hint("invalid peer certificate: certificate not valid for name \"cp\"")
                .contains("does not name this host")
        );
        assert!(connect_hint("Connection refused").contains("strato login"));
    }

    #[test]
    fn sources_are_added_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let status = tonic::Status::from_error(Box::new(io));
        assert_eq!(
            with_sources("transport error".into(), std::error::Error::source(&status)),
            "transport error: refused"
        );
        assert_eq!(
            with_sources("refused".into(), std::error::Error::source(&status)),
            "refused"
        );
        assert_eq!(with_sources("alone".into(), None), "alone");
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
