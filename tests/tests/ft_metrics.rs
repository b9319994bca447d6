//! The FT metric families of a real protected pair (two `tandem` processes), parsed with a real
//! Prometheus parser: they follow the pair as it checkpoints, and after a SIGKILL of the primary
//! the survivor reports the failover.

use serde_json::json;
use std::time::{Duration, Instant};
use tandem_tests::metrics::{free_port, Metrics};
use tandem_tests::pair::{ft_status, LocalPair, PAIR_TIMEOUT};
use tandem_tests::require;

const PAUSE: &str = "tandem_ft_checkpoint_pause_seconds";

fn role(m: &Metrics) -> Vec<String> {
    ["standalone", "primary", "backup"]
        .into_iter()
        .filter(|r| m.value("tandem_ft_role", Some(("role", r))) == 1.0)
        .map(str::to_string)
        .collect()
}

fn state(m: &Metrics) -> Vec<String> {
    [
        "syncing",
        "protected",
        "unprotected",
        "failing_over",
        "halted",
    ]
    .into_iter()
    .filter(|s| m.value("tandem_ft_state", Some(("state", s))) == 1.0)
    .map(str::to_string)
    .collect()
}

/// Scrapes `socket` until `done` holds for the scrape; panics with the last one after a while.
fn scrape_until(socket: &std::path::Path, what: &str, done: impl Fn(&Metrics) -> bool) -> Metrics {
    let start = Instant::now();
    loop {
        let m = Metrics::scrape_unix(socket);
        if done(&m) {
            return m;
        }
        assert!(
            start.elapsed() < PAIR_TIMEOUT,
            "never {what}; last scrape:\n{}",
            m.text
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ft_metrics_follow_a_real_pair_through_a_failover() {
    require!(kvm);
    let tcp = format!("127.0.0.1:{}", free_port());
    let mut pair = LocalPair::start("ftm", &["--metrics-listen", &tcp]);

    // Standalone: the families are there, saying so.
    let m = Metrics::scrape_unix(&pair.b.socket);
    assert_eq!(role(&m), ["standalone"], "{}", m.text);
    assert_eq!(m.value("tandem_ft_failovers_total", None), 0.0);
    assert_eq!(m.histogram_count(PAUSE), 0.0);

    // Checkpoints every 200 ms with 50 ms heartbeats: heartbeats flow between checkpoints.
    pair.protect(json!({"checkpoint_interval_ms": 200, "heartbeat_interval_ms": 50}));
    let generation = ft_status(&pair.p)["generation"].as_f64().unwrap();
    let p1 = Metrics::scrape_unix(&pair.p.socket);
    let b1 = Metrics::scrape_unix(&pair.b.socket);
    for m in [&p1, &b1] {
        m.assert_only_declared_families();
        assert_eq!(m.value("tandem_ft_generation", None), generation);
    }
    assert_eq!(role(&p1), ["primary"]);
    assert_eq!(state(&p1), ["protected"]);
    assert_eq!(role(&b1), ["backup"]);
    assert_eq!(state(&b1), ["protected"]);

    // The figures move: more checkpoints, acks, bytes and pauses on the primary; more applied
    // checkpoints on the backup; heartbeats both ways.
    let p2 = scrape_until(&pair.p.socket, "more primary checkpoints", |m| {
        m.value("tandem_ft_checkpoints_total", None)
            >= p1.value("tandem_ft_checkpoints_total", None) + 3.0
            && m.value("tandem_ft_heartbeats_sent_total", Some(("path", "channel"))) > 0.0
    });
    let b2 = scrape_until(&pair.b.socket, "more backup checkpoints", |m| {
        m.value("tandem_ft_checkpoints_total", None)
            >= b1.value("tandem_ft_checkpoints_total", None) + 3.0
            && m.value(
                "tandem_ft_heartbeats_received_total",
                Some(("path", "channel")),
            ) > 0.0
    });
    for (name, more) in [
        ("tandem_ft_acks_total", true),
        ("tandem_ft_replicated_bytes_total", true),
        ("tandem_ft_last_committed_epoch", true),
        ("tandem_ft_failovers_total", false),
    ] {
        // Absent (no ack yet when protected was first seen) counts as below any value.
        let (a, b) = (p1.get(name, None).unwrap_or(-1.0), p2.value(name, None));
        assert!(if more { b > a } else { b == a }, "{name}: {a} -> {b}");
    }
    assert!(p2.histogram_count(PAUSE) > p1.histogram_count(PAUSE));
    assert!(p2.value(&format!("{PAUSE}_sum"), None) > 0.0);
    assert!(p2.value("tandem_ft_checkpoint_bytes", None) > 0.0);
    assert!(b2.value("tandem_ft_acks_total", None) > b1.value("tandem_ft_acks_total", None));
    assert!(
        b2.value("tandem_ft_last_committed_epoch", None)
            > b1.get("tandem_ft_last_committed_epoch", None)
                .unwrap_or(-1.0)
    );
    for m in [&p2, &b2] {
        // In seconds, recent: a unit slip (ms as s) would read hundreds. Loose bounds: a loaded
        // host may starve a thread for a while without the pair failing.
        let age = m.value("tandem_ft_heartbeat_age_seconds", Some(("path", "channel")));
        assert!((0.0..10.0).contains(&age), "heartbeat age {age}");
        let backlog = m.value("tandem_ft_backlog_checkpoints", None);
        assert!(backlog <= 2.0, "backlog {backlog} above the window");
    }
    let ack_age = p2.value("tandem_ft_ack_age_seconds", None);
    assert!((0.0..10.0).contains(&ack_age), "ack age {ack_age}");
    let (p_cp, b_cp) = (
        p2.value("tandem_ft_checkpoints_total", None),
        b2.value("tandem_ft_checkpoints_total", None),
    );
    eprintln!(
        "[ftm] primary: {p_cp} checkpoints, pause mean {:.0} µs, {} bytes replicated; backup: \
         {b_cp} checkpoints",
        p2.value(&format!("{PAUSE}_sum"), None) / p2.histogram_count(PAUSE) * 1e6,
        p2.value("tandem_ft_replicated_bytes_total", None)
    );

    // The primary's checkpoint pages, by encoding: an idle guest dirties the same pages again
    // and again (timer, stacks), so once cached they go as deltas.
    let pages = |enc| p2.value("tandem_ft_checkpoint_pages_total", Some(("encoding", enc)));
    assert!(pages("delta") > 0.0, "no delta pages:\n{}", p2.text);
    assert!(pages("whole") > 0.0, "no whole pages:\n{}", p2.text);

    // Over TCP too.
    let t = Metrics::scrape_tcp(&tcp);
    assert_eq!(role(&t), ["primary"], "{}", t.text);

    // SIGKILL the primary: the survivor counts one failover and is the primary now, in a higher
    // generation; its counters do not go back.
    pair.p.child.kill().expect("SIGKILL the primary");
    pair.p.wait_exit(PAIR_TIMEOUT);
    let b3 = scrape_until(&pair.b.socket, "a failover", |m| {
        m.value("tandem_ft_failovers_total", None) >= 1.0
    });
    b3.assert_only_declared_families();
    assert_eq!(b3.value("tandem_ft_failovers_total", None), 1.0);
    assert_eq!(role(&b3), ["primary"], "{}", b3.text);
    assert_eq!(state(&b3), ["unprotected"], "{}", b3.text);
    assert!(b3.value("tandem_ft_generation", None) > generation);
    assert!(b3.value("tandem_ft_checkpoints_total", None) >= b_cp);
    assert_eq!(ft_status(&pair.b)["failover_count"], 1);
    pair.b.wait_state("Running", PAIR_TIMEOUT);
}
