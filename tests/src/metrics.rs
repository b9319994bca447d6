//! Scraping a real `tandem`'s Prometheus exposition and reading values out of it, with a real
//! Prometheus text parser.

use std::io::{Read, Write};
use std::path::Path;

/// GET `path` with HTTP/1.0 over `s`; returns (status line, body).
pub(crate) fn http_get(mut s: impl Read + Write, path: &str) -> std::io::Result<(String, String)> {
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.lines().next().unwrap_or_default().to_string();
    Ok((status, body.to_string()))
}

/// A parsed scrape and its text (for failure messages).
pub struct Metrics {
    /// The parsed exposition.
    pub scrape: prometheus_parse::Scrape,
    /// The exposition as served, for failure messages.
    pub text: String,
}

impl Metrics {
    /// Parses an exposition; panics with the text if it is not valid.
    pub fn parse(text: String) -> Self {
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .unwrap_or_else(|e| panic!("invalid exposition ({e}):\n{text}"));
        Metrics { scrape, text }
    }

    /// `GET /api/v1/metrics` on the API socket.
    pub fn scrape_unix(socket: &Path) -> Self {
        let s = std::os::unix::net::UnixStream::connect(socket)
            .unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
        let (status, body) = http_get(s, "/api/v1/metrics").expect("metrics over the socket");
        assert!(status.contains("200"), "{status}: {body}");
        Self::parse(body)
    }

    /// `GET /metrics` on a `--metrics-listen` address.
    pub fn scrape_tcp(addr: &str) -> Self {
        let s =
            std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        let (status, body) = http_get(s, "/metrics").expect("metrics over TCP");
        assert!(status.contains("200"), "{status}: {body}");
        Self::parse(body)
    }

    /// Sum of the samples of `metric` (matching `label` if given); `None` if there are none.
    pub fn get(&self, metric: &str, label: Option<(&str, &str)>) -> Option<f64> {
        let mut found = None;
        for s in self.scrape.samples.iter().filter(|s| s.metric == metric) {
            if label.is_some_and(|(k, v)| s.labels.get(k) != Some(v)) {
                continue;
            }
            let v = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => continue,
            };
            *found.get_or_insert(0.0) += v;
        }
        found
    }

    /// Like [`Metrics::get`], panicking with the scrape when the series is missing.
    pub fn value(&self, metric: &str, label: Option<(&str, &str)>) -> f64 {
        self.get(metric, label)
            .unwrap_or_else(|| panic!("no {metric} {label:?} in:\n{}", self.text))
    }

    /// The observation count of histogram `metric` (its `_count` series).
    pub fn histogram_count(&self, metric: &str) -> f64 {
        self.value(&format!("{metric}_count"), None)
    }

    /// Panics on a series Tandem does not declare in [`crate::METRIC_FAMILIES`].
    pub fn assert_only_declared_families(&self) {
        for s in &self.scrape.samples {
            assert!(
                crate::is_exported_series(&s.metric),
                "{} is exported but not in METRIC_FAMILIES",
                s.metric
            );
        }
    }
}

/// A TCP port free right now on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
