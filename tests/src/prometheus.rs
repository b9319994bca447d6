//! A real Prometheus server (Debian's `prometheus` package) for the tests: started on loopback
//! with a configuration the test writes, and asked through its HTTP API.

use crate::metrics::{free_port, http_get};
use crate::TempDir;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The alert rules Tandem ships.
pub fn alert_rules_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../resources/prometheus/alerts.yml")
}

/// Whether `prometheus` and `promtool` run here (`require!(prometheus)`, see
/// [`crate::require`]: skipped and reported, or failed where declared).
pub fn available(test: &str) -> bool {
    crate::require::named_for(
        &crate::caller(test),
        "prometheus",
        crate::require::probe::prometheus,
    )
}

/// Skips the calling test (returning early) unless `prometheus` and `promtool` run here.
#[macro_export]
macro_rules! require_prometheus {
    ($name:expr) => {
        if !$crate::prometheus::available($name) {
            return;
        }
    };
}

/// Labels of one series.
pub type Labels = BTreeMap<String, String>;

/// A running Prometheus, killed when dropped.
pub struct Prometheus {
    child: Child,
    /// `127.0.0.1:PORT` of its web server and API.
    pub addr: String,
    /// Its configuration, rule files (written by the caller), storage and log.
    pub dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus on a free loopback port with `dir/prometheus.yml` (rule files in it are
    /// read relative to `dir`) and waits until it is ready.
    pub fn start(dir: TempDir) -> Self {
        let addr = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.path("prometheus.log")).expect("create log");
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let mut p = Prometheus { child, addr, dir };
        let start = Instant::now();
        loop {
            if let Ok((status, _)) = p.raw_get("/-/ready") {
                if status.contains("200") {
                    break;
                }
            }
            if let Ok(Some(s)) = p.child.try_wait() {
                panic!("prometheus exited ({s}); log:\n{}", p.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "prometheus not ready; log:\n{}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        p
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path("prometheus.log")).unwrap_or_default()
    }

    fn raw_get(&self, path: &str) -> std::io::Result<(String, String)> {
        let s = std::net::TcpStream::connect(&self.addr)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        http_get(s, path)
    }

    /// `GET /api/v1/<endpoint>?<params>` (values URL-encoded here); returns the answer's `data`.
    /// Panics on anything but `"status": "success"`.
    pub fn api(&self, endpoint: &str, params: &[(&str, &str)]) -> Value {
        use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
        let query: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{k}={}", utf8_percent_encode(v, NON_ALPHANUMERIC)))
            .collect();
        let path = format!("/api/v1/{endpoint}?{}", query.join("&"));
        let (status, body) = self
            .raw_get(&path)
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let v: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("GET {path}: {status}: not JSON ({e}): {body}"));
        assert_eq!(v["status"], "success", "GET {path}: {status}: {v}");
        v["data"].clone()
    }

    /// An instant query; returns its result vector (empty: no data).
    pub fn query(&self, promql: &str) -> Vec<Value> {
        let data = self.api("query", &[("query", promql)]);
        assert_eq!(data["resultType"], "vector", "{promql}: {data}");
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// The label sets of every alert that fired in the last `window` (e.g. "10m"), read from
    /// the `ALERTS` series Prometheus records, so that an alert that fired and resolved between
    /// two looks still counts.
    pub fn fired(&self, window: &str) -> Vec<Labels> {
        self.query(&format!(
            "max_over_time(ALERTS{{alertstate=\"firing\"}}[{window}])"
        ))
        .iter()
        .map(|r| {
            r["metric"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default()
        })
        .collect()
    }

    /// Alerts active now (`/api/v1/alerts`), pending or firing.
    pub fn active_alerts(&self) -> Vec<Value> {
        self.api("alerts", &[])["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Every rule Prometheus loaded, as `/api/v1/rules` lists them.
    pub fn rules(&self) -> Vec<Value> {
        self.api("rules", &[])["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
