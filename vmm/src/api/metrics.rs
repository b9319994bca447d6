//! Prometheus text exposition (format 0.0.4) of the VMM's state and counters, served at
//! `GET /api/v1/metrics` and, with `--metrics-listen`, over TCP.

use std::collections::BTreeMap;
use std::fmt::Write;

/// Content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Labels of one sample.
type Labels = Vec<(&'static str, String)>;

/// A metric family being built: its help, type and samples (name suffix such as a histogram's
/// `_bucket`, labels, value).
struct Family {
    help: &'static str,
    kind: &'static str,
    samples: Vec<(&'static str, Labels, f64)>,
}

/// Collects samples and renders them grouped by family, each with HELP and TYPE once.
#[derive(Default)]
pub struct Exposition {
    families: BTreeMap<String, Family>,
}

impl Exposition {
    /// Adds one sample of family `name`.
    pub fn add(
        &mut self,
        name: &str,
        kind: &'static str,
        help: &'static str,
        labels: Vec<(&'static str, String)>,
        value: f64,
    ) {
        self.add_series(name, "", kind, help, labels, value);
    }

    /// Adds one sample of family `name` named `name` + `suffix`.
    fn add_series(
        &mut self,
        name: &str,
        suffix: &'static str,
        kind: &'static str,
        help: &'static str,
        labels: Labels,
        value: f64,
    ) {
        self.families
            .entry(name.to_string())
            .or_insert_with(|| Family {
                help,
                kind,
                samples: Vec::new(),
            })
            .samples
            .push((suffix, labels, value));
    }

    /// A histogram: `buckets` are (upper bound, observations ≤ it) ascending, `None` for `+Inf`
    /// (which must come last); rendered as `_bucket{le}`, `_sum` and `_count`.
    pub fn histogram(
        &mut self,
        name: &str,
        help: &'static str,
        labels: Labels,
        buckets: &[(Option<f64>, u64)],
        sum: f64,
        count: u64,
    ) {
        for (le, n) in buckets {
            let mut l = labels.clone();
            l.push((
                "le",
                le.map_or_else(|| "+Inf".to_string(), |b| b.to_string()),
            ));
            self.add_series(name, "_bucket", "histogram", help, l, *n as f64);
        }
        self.add_series(name, "_sum", "histogram", help, labels.clone(), sum);
        self.add_series(name, "_count", "histogram", help, labels, count as f64);
    }

    /// A gauge sample.
    pub fn gauge(
        &mut self,
        name: &str,
        help: &'static str,
        labels: Vec<(&'static str, String)>,
        v: f64,
    ) {
        self.add(name, "gauge", help, labels, v);
    }

    /// A counter sample (`name` should end in `_total`).
    pub fn counter(
        &mut self,
        name: &str,
        help: &'static str,
        labels: Vec<(&'static str, String)>,
        v: f64,
    ) {
        self.add(name, "counter", help, labels, v);
    }

    /// Adds `vm.counters`' map: `vcpuN`, `net_<id>` and `serial` groups become
    /// `tandem_vcpu_<c>_total{vcpu}`, `tandem_net_<c>_total{nic}` and `tandem_serial_<c>_total`.
    pub fn add_vm_counters(&mut self, counters: &BTreeMap<String, BTreeMap<String, u64>>) {
        for (group, values) in counters {
            let (prefix, labels, help) = if let Some(id) = group.strip_prefix("vcpu") {
                (
                    "tandem_vcpu",
                    vec![("vcpu", id.to_string())],
                    "vCPU exits by kind",
                )
            } else if let Some(id) = group.strip_prefix("net_") {
                (
                    "tandem_net",
                    vec![("nic", id.to_string())],
                    "virtio-net traffic",
                )
            } else if group == "serial" {
                ("tandem_serial", vec![], "serial port output")
            } else {
                (
                    "tandem_device",
                    vec![("device", group.clone())],
                    "device counters",
                )
            };
            for (name, v) in values {
                let metric = format!("{prefix}_{}_total", sanitize(name));
                self.counter(&metric, help, labels.clone(), *v as f64);
            }
        }
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, f) in &self.families {
            let _ = writeln!(out, "# HELP {name} {}", f.help);
            let _ = writeln!(out, "# TYPE {name} {}", f.kind);
            for (suffix, labels, v) in &f.samples {
                out.push_str(name);
                out.push_str(suffix);
                if !labels.is_empty() {
                    out.push('{');
                    for (i, (k, val)) in labels.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let _ = write!(out, "{k}=\"{}\"", escape(val));
                    }
                    out.push('}');
                }
                let _ = writeln!(out, " {v}");
            }
        }
        out
    }
}

/// Metric names take `[a-zA-Z0-9_]` only.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Label values escape backslash, double quote and newline.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_families_once_and_parses_with_a_prometheus_parser() {
        let mut e = Exposition::default();
        let mut counters = BTreeMap::new();
        counters.insert(
            "vcpu0".to_string(),
            BTreeMap::from([("exits".to_string(), 7u64), ("io_exits".to_string(), 5)]),
        );
        counters.insert(
            "vcpu1".to_string(),
            BTreeMap::from([("exits".to_string(), 3u64)]),
        );
        counters.insert(
            "net_nic0".to_string(),
            BTreeMap::from([("rx-frames".to_string(), 2u64)]),
        );
        e.add_vm_counters(&counters);
        e.gauge(
            "tandem_vm_state",
            "VM state",
            vec![("state", "Running".into())],
            1.0,
        );
        let text = e.render();
        assert_eq!(
            text.matches("# TYPE tandem_vcpu_exits_total counter")
                .count(),
            1
        );
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("valid exposition");
        let exits: f64 = scrape
            .samples
            .iter()
            .filter(|s| s.metric == "tandem_vcpu_exits_total")
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) => v,
                _ => panic!("not a counter"),
            })
            .sum();
        assert_eq!(exits, 10.0);
        let nic = scrape
            .samples
            .iter()
            .find(|s| s.metric == "tandem_net_rx_frames_total")
            .expect("net counter");
        assert_eq!(nic.labels.get("nic"), Some("nic0"));
    }

    #[test]
    fn histograms_render_buckets_sum_and_count_under_one_type() {
        let mut e = Exposition::default();
        e.histogram(
            "x_seconds",
            "pauses",
            vec![],
            &[(Some(0.001), 2), (Some(0.01), 5), (None, 6)],
            0.5,
            6,
        );
        let text = e.render();
        assert_eq!(text.matches("# TYPE").count(), 1, "{text}");
        assert!(text.contains("x_seconds_bucket{le=\"+Inf\"} 6\n"), "{text}");
        assert!(text.contains("x_seconds_sum 0.5\n"), "{text}");
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("valid exposition");
        let h = scrape
            .samples
            .iter()
            .find(|s| s.metric == "x_seconds")
            .expect("histogram sample");
        let prometheus_parse::Value::Histogram(b) = &h.value else {
            panic!("not a histogram: {:?}", h.value)
        };
        assert_eq!(b.len(), 3);
        assert_eq!((b[0].less_than, b[0].count), (0.001, 2.0));
        assert!(b[2].less_than.is_infinite());
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
        assert_eq!(sanitize("rx-frames.x"), "rx_frames_x");
    }
}
