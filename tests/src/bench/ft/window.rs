//! A measured FT window: the primary's metrics scraped at its start and end, so that pause
//! percentiles, per-step means and bytes cover exactly the window (not `ft.status`'s rolling
//! window of the last 1024 checkpoints, which starts right after the initial sync), plus
//! `ft.status` polled during it for the throttle.

use super::pair::{ft_status, link_tx_bytes, Vm};
use super::table::Ckpt;
use crate::metrics::Metrics;
use crate::net::TestNet;
use crate::Tandem;
use std::time::{Duration, Instant};

const PAUSE: &str = "tandem_ft_checkpoint_pause_seconds";
const STEPS: [&str; 8] = [
    "stop",
    "dirty_log",
    "backlog_wait",
    "copy",
    "vcpu_state",
    "devices",
    "gates",
    "resume",
];
/// How often [`Poll::tick`] reads `ft.status`.
const POLL_EVERY: Duration = Duration::from_millis(200);

/// `ft.status` read now and then during a window.
pub struct Poll {
    last: Option<Instant>,
    throttle: Vec<f64>,
}

impl Default for Poll {
    fn default() -> Self {
        Self::new()
    }
}

impl Poll {
    pub fn new() -> Poll {
        Poll {
            last: None,
            throttle: Vec::new(),
        }
    }

    /// Reads `p`'s `ft.status` if the last read is [`POLL_EVERY`] old.
    pub fn tick(&mut self, p: &Tandem) {
        if self.last.is_some_and(|l| l.elapsed() < POLL_EVERY) {
            return;
        }
        self.last = Some(Instant::now());
        let s = ft_status(p);
        if let Some(t) = s["flow"]["throttle_permille"].as_f64() {
            self.throttle.push(t);
        }
    }

    /// Polls `p` until `d` has passed.
    pub fn sleep(&mut self, p: &Tandem, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            self.tick(p);
            std::thread::sleep(Duration::from_millis(20).min(end - Instant::now()));
        }
    }
}

/// Start of a window on a protected VM.
pub struct Mark {
    at: Instant,
    metrics: Metrics,
    tx: u64,
}

/// Cumulative (upper bound µs, count) buckets of the pause histogram.
fn buckets(m: &Metrics) -> Vec<(f64, f64)> {
    m.scrape
        .samples
        .iter()
        .find(|s| s.metric == PAUSE)
        .and_then(|s| match &s.value {
            prometheus_parse::Value::Histogram(h) => Some(
                h.iter()
                    .map(|b| (b.less_than * 1e6, b.count))
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no {PAUSE} histogram in:\n{}", m.text))
}

/// The `q` quantile of cumulative buckets, interpolated within its bucket as Prometheus'
/// `histogram_quantile` does; a quantile in the `+Inf` bucket is that bucket's lower bound.
fn quantile(cum: &[(f64, f64)], q: f64) -> f64 {
    let total = cum.last().map_or(0.0, |b| b.1);
    if total <= 0.0 {
        return 0.0;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, c) in cum {
        if c >= rank {
            if le.is_infinite() {
                return prev.0;
            }
            let inside = c - prev.1;
            let frac = if inside > 0.0 {
                (rank - prev.1) / inside
            } else {
                0.0
            };
            return prev.0 + (le - prev.0) * frac;
        }
        prev = (le, c);
    }
    prev.0
}

impl Mark {
    /// Marks now on `vm`'s primary.
    pub fn now(vm: &Vm, net: &TestNet) -> Mark {
        Mark {
            at: Instant::now(),
            metrics: Metrics::scrape_unix(&vm.p.socket),
            tx: link_tx_bytes(net),
        }
    }

    /// What changed from the mark to now.
    pub fn since(&self, vm: &Vm, net: &TestNet, poll: &Poll) -> Delta {
        let now = Metrics::scrape_unix(&vm.p.socket);
        let (a, b) = (buckets(&self.metrics), buckets(&now));
        let diff = |name: &str, label: Option<(&str, &str)>| {
            now.get(name, label).unwrap_or(0.0) - self.metrics.get(name, label).unwrap_or(0.0)
        };
        let status = ft_status(&vm.p);
        Delta {
            secs: self.at.elapsed().as_secs_f64(),
            buckets: b
                .iter()
                .zip(&a)
                .map(|(&(le, cb), &(_, ca))| (le, (cb - ca).max(0.0)))
                .collect(),
            steps: STEPS
                .iter()
                .map(|s| diff("tandem_ft_pause_step_seconds_total", Some(("step", s))))
                .collect(),
            bytes: diff("tandem_ft_replicated_bytes_total", None),
            pages: diff("tandem_ft_checkpoint_pages_total", None),
            link: link_tx_bytes(net).saturating_sub(self.tx) as f64,
            throttle: poll.throttle.clone(),
            peak_backlog: status["flow"]["peak_backlog_bytes"].as_u64().unwrap_or(0),
            max_backlog: status["flow"]["max_backlog_bytes"].as_u64().unwrap_or(0),
        }
    }
}

/// Checkpoint figures over one or more windows, before they are summarised.
#[derive(Clone, Debug, Default)]
pub struct Delta {
    secs: f64,
    /// Cumulative (upper bound µs, count) over the window.
    buckets: Vec<(f64, f64)>,
    /// Seconds per step, in [`STEPS`] order.
    steps: Vec<f64>,
    bytes: f64,
    pages: f64,
    link: f64,
    throttle: Vec<f64>,
    peak_backlog: u64,
    max_backlog: u64,
}

impl Delta {
    /// Adds `o`'s window to this one.
    pub fn merge(&mut self, o: &Delta) {
        if self.buckets.is_empty() {
            *self = o.clone();
            return;
        }
        self.secs += o.secs;
        for (a, b) in self.buckets.iter_mut().zip(&o.buckets) {
            a.1 += b.1;
        }
        for (a, b) in self.steps.iter_mut().zip(&o.steps) {
            *a += b;
        }
        self.bytes += o.bytes;
        self.pages += o.pages;
        self.link += o.link;
        self.throttle.extend(&o.throttle);
        self.peak_backlog = self.peak_backlog.max(o.peak_backlog);
        self.max_backlog = self.max_backlog.max(o.max_backlog);
    }

    /// The summary the table prints.
    pub fn ckpt(&self) -> Ckpt {
        let n = self.buckets.last().map_or(0.0, |d| d.1);
        let mut max_le = 0.0;
        let mut prev = 0.0;
        for &(le, c) in &self.buckets {
            if c > prev {
                max_le = le;
            }
            prev = c;
        }
        let per = |v: f64| if n > 0.0 { v / n } else { 0.0 };
        let secs = self.secs.max(1e-3);
        Ckpt {
            n: n as u64,
            per_s: n / secs,
            p50_us: quantile(&self.buckets, 0.5),
            p99_us: quantile(&self.buckets, 0.99),
            max_le_us: max_le,
            top_bound_us: self
                .buckets
                .iter()
                .map(|b| b.0)
                .filter(|le| le.is_finite())
                .fold(0.0, f64::max),
            bytes: per(self.bytes),
            pages: per(self.pages),
            steps_us: STEPS
                .iter()
                .zip(&self.steps)
                .map(|(s, v)| (s.to_string(), per(*v) * 1e6))
                .collect(),
            throttle_permille: if self.throttle.is_empty() {
                0.0
            } else {
                self.throttle.iter().sum::<f64>() / self.throttle.len() as f64
            },
            throttle_polls: self.throttle.len(),
            peak_backlog: self.peak_backlog,
            max_backlog: self.max_backlog,
            link_bytes_per_s: self.link / secs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let cum = [
            (100.0, 0.0),
            (200.0, 50.0),
            (400.0, 100.0),
            (f64::INFINITY, 100.0),
        ];
        assert_eq!(quantile(&cum, 0.5), 200.0);
        assert_eq!(quantile(&cum, 0.25), 150.0);
        assert_eq!(quantile(&cum, 0.99), 396.0);
        let tail = [(100.0, 1.0), (f64::INFINITY, 2.0)];
        assert_eq!(quantile(&tail, 0.99), 100.0);
        assert_eq!(quantile(&[(100.0, 0.0)], 0.5), 0.0);
    }
}
