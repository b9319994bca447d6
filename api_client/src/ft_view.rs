//! Plain-text views of an `ft.status` answer for `tandem-remote ft-status --watch`: a screen for a
//! terminal and one line per refresh for pipes and logs. Fields that are missing (an older or
//! newer VMM) show as `-` rather than failing.

use serde_json::Value;
use std::time::{SystemTime, UNIX_EPOCH};

fn u(v: &Value, path: &[&str]) -> Option<u64> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_u64()
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("-")
}

/// `1.2 ms`, `850 µs`, `3.4 s` (microseconds in).
pub fn duration_us(us: u64) -> String {
    match us {
        0..=999 => format!("{us} µs"),
        1_000..=999_999 => format!("{:.1} ms", us as f64 / 1e3),
        _ => format!("{:.1} s", us as f64 / 1e6),
    }
}

/// Milliseconds in, `-` for none.
fn age_ms(ms: Option<u64>) -> String {
    match ms {
        None => "-".to_string(),
        Some(ms @ 0..=999) => format!("{ms} ms"),
        Some(ms) => format!("{:.1} s", ms as f64 / 1e3),
    }
}

/// `512 B`, `4.0 KiB`, `1.5 MiB`, `2.0 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn opt(n: Option<u64>) -> String {
    n.map_or_else(|| "-".to_string(), |n| n.to_string())
}

/// `HH:MM:SS` UTC of now (no time zone database needed).
pub fn clock_utc() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let day = secs % 86_400;
    format!("{:02}:{:02}:{:02}", day / 3600, (day % 3600) / 60, day % 60)
}

/// One line per refresh, `key=value` separated by spaces, for pipes and logs.
pub fn line(v: &Value) -> String {
    format!(
        "{} role={} state={} generation={} epoch={} checkpoints={} pause_p50={} pause_p99={} \
         bytes_per_checkpoint={} backlog={}/{} ack_age={} heartbeat_age=channel:{},udp:{} \
         failovers={} reason={:?}",
        clock_utc(),
        s(v, "role"),
        s(v, "state"),
        opt(u(v, &["generation"])),
        opt(u(v, &["last_committed_epoch"])),
        opt(u(v, &["checkpoint_count"])),
        u(v, &["pause", "p50_us"]).map_or("-".into(), duration_us),
        u(v, &["pause", "p99_us"]).map_or("-".into(), duration_us),
        u(v, &["bytes_per_checkpoint"]).map_or("-".into(), bytes),
        opt(u(v, &["backlog_epochs"])),
        u(v, &["backlog_bytes"]).map_or("-".into(), bytes),
        age_ms(u(v, &["ack_age_ms"])),
        age_ms(u(v, &["heartbeat_age", "channel_ms"])),
        age_ms(u(v, &["heartbeat_age", "udp_ms"])),
        opt(u(v, &["failover_count"])),
        s(v, "reason"),
    )
}

/// A full screen for a terminal (the caller clears it first); `title` is the first line.
pub fn screen(v: &Value, title: &str) -> String {
    let rows: Vec<(&str, String)> = vec![
        ("role", s(v, "role").to_string()),
        (
            "state",
            format!(
                "{} (for {})",
                s(v, "state"),
                age_ms(u(v, &["state_age_ms"]))
            ),
        ),
        ("generation", opt(u(v, &["generation"]))),
        ("peer", s(v, "peer").to_string()),
        (
            "committed",
            format!(
                "epoch {}, {} checkpoints",
                opt(u(v, &["last_committed_epoch"])),
                opt(u(v, &["checkpoint_count"]))
            ),
        ),
        (
            "pause",
            format!(
                "p50 {}   p99 {}   max {}",
                u(v, &["pause", "p50_us"]).map_or("-".into(), duration_us),
                u(v, &["pause", "p99_us"]).map_or("-".into(), duration_us),
                u(v, &["pause", "max_us"]).map_or("-".into(), duration_us),
            ),
        ),
        (
            "bytes",
            format!(
                "last {}   mean {} per checkpoint",
                u(v, &["bytes_last_checkpoint"]).map_or("-".into(), bytes),
                u(v, &["bytes_per_checkpoint"]).map_or("-".into(), bytes),
            ),
        ),
        (
            "backlog",
            format!(
                "{} checkpoints, {}",
                opt(u(v, &["backlog_epochs"])),
                u(v, &["backlog_bytes"]).map_or("-".into(), bytes)
            ),
        ),
        (
            "flow",
            format!(
                "throttle {}‰ (limited by {})   epoch {}",
                opt(u(v, &["flow", "throttle_permille"])),
                v["flow"]["limited_by"].as_str().unwrap_or("-"),
                u(v, &["flow", "epoch_us"]).map_or("-".into(), duration_us),
            ),
        ),
        ("ack age", age_ms(u(v, &["ack_age_ms"]))),
        (
            "peer heard",
            format!(
                "channel {}   udp {}",
                age_ms(u(v, &["heartbeat_age", "channel_ms"])),
                age_ms(u(v, &["heartbeat_age", "udp_ms"]))
            ),
        ),
        ("failovers", opt(u(v, &["failover_count"]))),
        ("reason", s(v, "reason").to_string()),
    ];
    let mut out = format!("{title}\n\n");
    for (k, val) in rows {
        out.push_str(&format!("{k:<12}{val}\n"));
    }
    if let Some(e) = v.get("arbiter_error").and_then(Value::as_str) {
        out.push_str(&format!("{:<12}{e}\n", "arbiter"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn status() -> Value {
        json!({
            "role": "primary", "state": "protected", "generation": 3, "peer": "tcp:10.0.0.2:7600",
            "last_committed_epoch": 120, "checkpoint_count": 120,
            "pause": {"p50_us": 850, "p99_us": 3400, "max_us": 2_500_000},
            "bytes_last_checkpoint": 40960, "bytes_per_checkpoint": 20480,
            "backlog_bytes": 4096, "backlog_epochs": 1, "ack_age_ms": 12,
            "heartbeat_age": {"channel_ms": 3, "udp_ms": null}, "failover_count": 0,
            "reason": "initial sync complete", "reason_at_unix_ms": 0, "state_age_ms": 61_000,
            "arbiter_error": null
        })
    }

    #[test]
    fn one_line_has_every_figure_and_no_newline() {
        let l = line(&status());
        assert!(!l.contains('\n'));
        for want in [
            "role=primary",
            "state=protected",
            "generation=3",
            "epoch=120",
            "pause_p50=850 µs",
            "pause_p99=3.4 ms",
            "bytes_per_checkpoint=20.0 KiB",
            "backlog=1/4.0 KiB",
            "ack_age=12 ms",
            "heartbeat_age=channel:3 ms,udp:-",
            "failovers=0",
            "reason=\"initial sync complete\"",
        ] {
            assert!(l.contains(want), "{want} not in {l}");
        }
    }

    #[test]
    fn screen_and_missing_fields() {
        let sc = screen(&status(), "title");
        assert!(sc.starts_with("title\n\n"));
        assert!(sc.contains("state       protected (for 61.0 s)"), "{sc}");
        assert!(sc.contains("max 2.5 s"), "{sc}");
        assert!(!sc.contains("arbiter "), "{sc}");
        let empty = line(&json!({}));
        assert!(empty.contains("role=- state=- generation=-"), "{empty}");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
    }
}
