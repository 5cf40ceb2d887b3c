//! Reaching the control plane: the gRPC channel every service's client is
//! built on (exit 3 when it cannot be reached, 2 when `--endpoint` is not a
//! URL), and the backoff for calls made while it is away (`job wait` rides
//! out a restart).

use std::time::{Duration, Instant};

use tonic::transport::Channel;

use crate::Failure;

/// A channel to the control plane, connected (exit 3 when it cannot be);
/// every service's client is built on it.
pub async fn connect(endpoint: &str) -> Result<Channel, Failure> {
    let unreachable = |why: String| {
        Failure::unreachable(format!(
            "cannot reach the control plane at {endpoint}: {why}; is strato-control running? (set --endpoint or STRATO_ENDPOINT to its gRPC address)"
        ))
    };
    let channel = Channel::from_shared(endpoint.to_owned())
        .map_err(|e| {
            Failure::usage(format!(
                "--endpoint {endpoint:?}: not a URL ({e}); e.g. http://127.0.0.1:7070"
            ))
        })?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| unreachable(with_sources(e.to_string(), std::error::Error::source(&e))))?;
    Ok(channel)
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
