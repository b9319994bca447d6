//! The FT bench's one table (FT beside standalone, every figure with its sample count) and its
//! JSON lines, one object per row.

use serde_json::{json, Value};

/// A figure and how many samples it is the median (or percentile) of.
#[derive(Clone, Copy, Debug)]
pub struct Stat {
    pub value: f64,
    pub n: usize,
}

impl Stat {
    pub fn new(value: f64, n: usize) -> Stat {
        Stat { value, n }
    }
}

/// How FT is set beside standalone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compare {
    /// Work: FT / standalone (1 is no loss).
    Ratio,
    /// Latency: FT − standalone.
    Added,
    /// FT only (no standalone counterpart).
    None,
}

/// Checkpoint figures over a measured FT window, from the difference of two metric scrapes.
#[derive(Clone, Debug, Default)]
pub struct Ckpt {
    /// Checkpoints committed in the window.
    pub n: u64,
    /// Checkpoints per second.
    pub per_s: f64,
    /// Pause percentiles (µs), interpolated within the pause histogram's buckets.
    pub p50_us: f64,
    pub p99_us: f64,
    /// Upper bound of the highest non-empty bucket (µs): the longest pause is at most this
    /// (infinite when it is the `+Inf` bucket).
    pub max_le_us: f64,
    /// The largest finite bucket bound (µs), for a longest pause beyond it.
    pub top_bound_us: f64,
    /// Stream bytes per checkpoint.
    pub bytes: f64,
    /// Dirty pages per checkpoint.
    pub pages: f64,
    /// Mean pause per step (µs), in `PauseSteps` order.
    pub steps_us: Vec<(String, f64)>,
    /// Mean throttle over status polls (per mille), and how many polls.
    pub throttle_permille: f64,
    pub throttle_polls: usize,
    /// Peak bytes captured but not acked since ft.enable, and the bound.
    pub peak_backlog: u64,
    pub max_backlog: u64,
    /// Link bytes per second (stream, TCP/IP and heartbeats).
    pub link_bytes_per_s: f64,
}

/// One row of the table.
pub struct Row {
    pub load: String,
    pub figure: &'static str,
    pub unit: &'static str,
    pub standalone: Option<Stat>,
    pub ft: Option<Stat>,
    pub compare: Compare,
    /// Per-round FT/standalone ratios (alternating rounds), when there were several.
    pub per_round: Vec<f64>,
    pub ckpt: Option<Ckpt>,
    pub note: String,
}

impl Row {
    pub fn new(load: impl Into<String>, figure: &'static str, unit: &'static str) -> Row {
        Row {
            load: load.into(),
            figure,
            unit,
            standalone: None,
            ft: None,
            compare: Compare::None,
            per_round: Vec::new(),
            ckpt: None,
            note: String::new(),
        }
    }

    fn versus(&self) -> String {
        let (Some(s), Some(f)) = (self.standalone, self.ft) else {
            return "–".into();
        };
        match self.compare {
            Compare::Ratio if s.value > 0.0 => {
                let mut out = format!("{:.2}", f.value / s.value);
                if self.per_round.len() > 1 {
                    let lo = self.per_round.iter().copied().fold(f64::INFINITY, f64::min);
                    let hi = self.per_round.iter().copied().fold(0.0, f64::max);
                    out.push_str(&format!(" ({lo:.2}–{hi:.2})"));
                }
                out
            }
            Compare::Added => format!("{:+.0} {}", f.value - s.value, self.unit),
            _ => "–".into(),
        }
    }

    fn cells(&self) -> Vec<String> {
        let stat = |s: Option<Stat>| match s {
            Some(s) => format!("{} {} (n={})", num(s.value), self.unit, s.n),
            None => "–".into(),
        };
        let (pause, per, throttle) = match &self.ckpt {
            Some(c) if c.n > 0 => (
                format!(
                    "{} / {} / {} µs (n={})",
                    num(c.p50_us),
                    num(c.p99_us),
                    max_le(c),
                    c.n
                ),
                format!(
                    "{:.0} pages, {} at {:.0}/s",
                    c.pages,
                    bytes(c.bytes),
                    c.per_s
                ),
                if c.throttle_polls > 0 {
                    format!(
                        "{:.0}% (n={}), backlog peak {} of {}",
                        c.throttle_permille / 10.0,
                        c.throttle_polls,
                        bytes(c.peak_backlog as f64),
                        bytes(c.max_backlog as f64)
                    )
                } else {
                    "–".into()
                },
            ),
            _ => ("–".into(), "–".into(), "–".into()),
        };
        vec![
            self.load.clone(),
            self.figure.to_string(),
            stat(self.standalone),
            stat(self.ft),
            self.versus(),
            pause,
            per,
            throttle,
            self.note.clone(),
        ]
    }

    /// The row as one JSON object.
    pub fn json(&self) -> Value {
        let stat = |s: Option<Stat>| s.map(|s| json!({"value": s.value, "n": s.n}));
        let ratio = match (self.compare, self.standalone, self.ft) {
            (Compare::Ratio, Some(s), Some(f)) if s.value > 0.0 => Some(f.value / s.value),
            _ => None,
        };
        let added = match (self.compare, self.standalone, self.ft) {
            (Compare::Added, Some(s), Some(f)) => Some(f.value - s.value),
            _ => None,
        };
        let ckpt = self.ckpt.as_ref().map(|c| {
            json!({
                "n": c.n,
                "per_s": c.per_s,
                "pause_p50_us": c.p50_us,
                "pause_p99_us": c.p99_us,
                "pause_max_le_us": if c.max_le_us.is_finite() { json!(c.max_le_us) } else { json!(null) },
                "pause_max_above_us": if c.max_le_us.is_finite() { json!(null) } else { json!(c.top_bound_us) },
                "bytes_per_checkpoint": c.bytes,
                "pages_per_checkpoint": c.pages,
                "steps_mean_us": c.steps_us.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
                "throttle_permille_mean": c.throttle_permille,
                "throttle_polls": c.throttle_polls,
                "peak_backlog_bytes": c.peak_backlog,
                "max_backlog_bytes": c.max_backlog,
                "link_bytes_per_s": c.link_bytes_per_s,
            })
        });
        json!({
            "bench": "ft",
            "load": self.load,
            "figure": self.figure,
            "unit": self.unit,
            "standalone": stat(self.standalone),
            "ft": stat(self.ft),
            "ratio": ratio,
            "added": added,
            "per_round_ratio": self.per_round,
            "checkpoints": ckpt,
            "note": self.note,
        })
    }
}

/// The longest pause as the histogram bounds it: `≤` its bucket's bound, or `>` the last bound
/// when it fell in the `+Inf` bucket.
fn max_le(c: &Ckpt) -> String {
    if c.max_le_us.is_finite() {
        format!("≤{}", num(c.max_le_us))
    } else {
        format!(">{}", num(c.top_bound_us))
    }
}

/// A number with as many digits as it deserves.
fn num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Bytes in KiB/MiB.
pub fn bytes(b: f64) -> String {
    if b >= (1u64 << 20) as f64 {
        format!("{:.1} MiB", b / (1u64 << 20) as f64)
    } else {
        format!("{:.1} KiB", b / 1024.0)
    }
}

/// Prints the rows as one markdown table, then each as a JSON line.
pub fn print(rows: &[Row]) {
    let head = [
        "load",
        "figure",
        "standalone",
        "FT",
        "FT vs standalone",
        "pause p50 / p99 / max",
        "per checkpoint",
        "throttle",
        "note",
    ];
    println!("| {} |", head.join(" | "));
    println!("|{}", " --- |".repeat(head.len()));
    for r in rows {
        println!("| {} |", r.cells().join(" | "));
    }
    for r in rows {
        println!("json: {}", r.json());
    }
}
