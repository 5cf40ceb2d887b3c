//! What the control plane's certificates say and who they let in: the
//! organisation that marks each kind of client certificate the control
//! plane's CA signs, the rule for an agent's `/metrics`, and the metrics
//! address an agent reports (which its serving certificate names).
//!
//! Pure: the TLS code in `strato-control`, `strato-runtime` and the agent
//! reads the certificates and asks here what they mean.

use crate::error::FieldError;

/// The organisation of every node's client certificate (its CN is the
/// node id).
pub const NODE_ORGANISATION: &str = "Strato nodes";

/// The organisation of the scraper certificate the control plane writes
/// for Prometheus (`DATA_DIR/tls/scraper.crt`): what agents let read their
/// `/metrics`.
pub const SCRAPER_ORGANISATION: &str = "Strato scrapers";

/// Who a verified client certificate of the control plane's CA is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// A node's agent, by node id.
    Node(String),
    /// Prometheus (or another scraper the operator gave the certificate).
    Scraper,
    /// Signed by the CA, but for neither (a server certificate, say).
    Other,
}

impl Holder {
    /// What a certificate with this subject is.
    pub fn of(organisation: Option<&str>, common_name: Option<&str>) -> Holder {
        match (organisation, common_name) {
            (Some(NODE_ORGANISATION), Some(node)) if !node.is_empty() => {
                Holder::Node(node.to_owned())
            }
            (Some(SCRAPER_ORGANISATION), _) => Holder::Scraper,
            _ => Holder::Other,
        }
    }
}

/// Why an agent does not answer `/metrics` (HTTP 401 or 403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScrapeRefusal {
    #[error(
        "a client certificate is required: the control plane's DATA_DIR/tls/scraper.crt and scraper.key (Prometheus tls_config cert_file/key_file)"
    )]
    NoCertificate,
    #[error(
        "this certificate may not read an agent's metrics; use the control plane's DATA_DIR/tls/scraper.crt"
    )]
    NotAScraper,
}

/// Who may read an agent's `/metrics` over TLS: the holder of a scraper
/// certificate (verified against the control plane's CA by the
/// handshake), nobody else; not a node, so one node cannot read another's.
pub fn may_scrape_agent(holder: Option<&Holder>) -> Result<(), ScrapeRefusal> {
    match holder {
        None => Err(ScrapeRefusal::NoCertificate),
        Some(Holder::Scraper) => Ok(()),
        Some(_) => Err(ScrapeRefusal::NotAScraper),
    }
}

/// Where Prometheus reaches an agent's metrics, read from the URL the
/// agent reports: `http(s)://HOST:PORT/metrics`, nothing else, so an
/// agent cannot point Prometheus at another path or server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsEndpoint<'a> {
    pub https: bool,
    /// `HOST:PORT` as written (`[::1]:9110` for IPv6): Prometheus's target.
    pub target: &'a str,
    /// The host alone, without brackets: what the agent's serving
    /// certificate names.
    pub host: &'a str,
}

impl MetricsEndpoint<'_> {
    /// `http` or `https`: Prometheus's `__scheme__`.
    pub fn scheme(&self) -> &'static str {
        if self.https { "https" } else { "http" }
    }
}

/// The longest metrics URL an agent may report.
pub const MAX_METRICS_URL: usize = 512;

/// Reads a metrics URL; `field` names it in the error.
pub fn metrics_endpoint<'a>(field: &str, url: &'a str) -> Result<MetricsEndpoint<'a>, FieldError> {
    let bad =
        |rule: &str| FieldError::new(field, format!("{rule}, e.g. https://10.0.0.4:9110/metrics"));
    if url.len() > MAX_METRICS_URL {
        return Err(bad(&format!("must be at most {MAX_METRICS_URL} bytes")));
    }
    let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(bad("must start with https:// (or http:// without TLS)"));
    };
    let Some((target, "metrics")) = rest.split_once('/') else {
        return Err(bad("must be HOST:PORT/metrics after the scheme"));
    };
    let (host, port) = match target.strip_prefix('[') {
        Some(v6) => {
            let (host, port) = v6
                .split_once("]:")
                .ok_or_else(|| bad("an IPv6 host must be [ADDRESS]:PORT"))?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad("the host in [] must be an IPv6 address"));
            }
            (host, port)
        }
        None => {
            let (host, port) = target
                .rsplit_once(':')
                .ok_or_else(|| bad("must name the port (HOST:PORT)"))?;
            if host.contains(':') {
                return Err(bad("an IPv6 host must be [ADDRESS]:PORT"));
            }
            (host, port)
        }
    };
    if port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(bad("the port must be a number from 1 to 65535"));
    }
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'));
    if !host_ok {
        return Err(bad("the host must be a DNS name or an IP address"));
    }
    Ok(MetricsEndpoint {
        https,
        target,
        host,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_urls_are_host_port_and_the_metrics_path_only() {
        let e = metrics_endpoint("metrics_url", "https://10.0.0.4:9110/metrics").expect("ok");
        assert_eq!(
            (e.https, e.target, e.host, e.scheme()),
            (true, "10.0.0.4:9110", "10.0.0.4", "https")
        );
        let e = metrics_endpoint("metrics_url", "http://node-1.lab:9110/metrics").expect("ok");
        assert_eq!((e.https, e.host), (false, "node-1.lab"));
        let e = metrics_endpoint("metrics_url", "https://[::1]:9110/metrics").expect("ok");
        assert_eq!((e.target, e.host), ("[::1]:9110", "::1"));
        for bad in [
            "ftp://h:1/metrics",
            "https://h:1/other",
            "https://h:1/metrics/more",
            "https://h/metrics",
            "https://h:0/metrics",
            "https://h:99999/metrics",
            "https://user@h:1/metrics",
            "https://h h:1/metrics",
            "https://[zz]:1/metrics",
            "https://:1/metrics",
            "https://a:b:1/metrics",
            "https://::1:9110/metrics",
        ] {
            let e = metrics_endpoint("metrics_url", bad).expect_err(bad);
            assert!(e.to_string().starts_with("metrics_url: "), "{e}");
        }
        let long = format!("https://{}:1/metrics", "a".repeat(600));
        assert!(metrics_endpoint("metrics_url", &long).is_err());
    }

    #[test]
    fn only_a_scraper_certificate_reads_an_agents_metrics() {
        let node = Holder::of(Some(NODE_ORGANISATION), Some("node-a"));
        assert_eq!(node, Holder::Node("node-a".into()));
        let scraper = Holder::of(Some(SCRAPER_ORGANISATION), Some("strato-scraper"));
        assert_eq!(scraper, Holder::Scraper);
        assert_eq!(
            Holder::of(Some("Strato"), Some("strato-control")),
            Holder::Other
        );
        assert_eq!(Holder::of(Some(NODE_ORGANISATION), None), Holder::Other);
        assert_eq!(may_scrape_agent(Some(&scraper)), Ok(()));
        assert_eq!(
            may_scrape_agent(Some(&node)),
            Err(ScrapeRefusal::NotAScraper)
        );
        assert_eq!(
            may_scrape_agent(Some(&Holder::Other)),
            Err(ScrapeRefusal::NotAScraper)
        );
        assert_eq!(may_scrape_agent(None), Err(ScrapeRefusal::NoCertificate));
    }
}
