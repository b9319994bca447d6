//! Flow control between real `tandem` processes: the host-to-host veth slowed with `tc tbf`
//! makes the primary throttle its guest — visible in ft.status — instead of letting the backlog
//! grow or the guest freeze, and the throttle lifts once the link runs at full speed again.
//! (Without flow control ft.status has no throttle to show, and the guest dirties at full speed
//! behind a full window: see ft/tests/checkpoint.rs for that contrast on the engine itself.)

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tandem_tests::ft::{ft_status, wait_ft, wait_status, FT_PORT, T};
use tandem_tests::guest::parse_dirty;
use tandem_tests::metrics::Metrics;
use tandem_tests::net::{Node, TestNet, HOST_B_LINK_IP};
use tandem_tests::{require_kvm_and_netns, Tandem, TempDir};

/// A slow link's rate: well under what the guest's checkpoints need at full speed (a 1 MiB
/// working set rewritten 80 times a second: every checkpoint carries all of it, ~20 KB with
/// deltas and state; flow control lets epochs grow to a second while the set fits the pause, so
/// the link must carry less than ~20 KB/s for the backlog to bind).
const SLOW: &str = "64kbit";

/// Upper bound (µs) of the highest pause bucket that gained observations between two scrapes.
fn longest_pause_le_us(before: &Metrics, after: &Metrics) -> f64 {
    let buckets = |m: &Metrics| -> Vec<(f64, f64)> {
        m.scrape
            .samples
            .iter()
            .find(|s| s.metric == "tandem_ft_checkpoint_pause_seconds")
            .and_then(|s| match &s.value {
                prometheus_parse::Value::Histogram(h) => {
                    Some(h.iter().map(|b| (b.less_than * 1e6, b.count)).collect())
                }
                _ => None,
            })
            .unwrap_or_default()
    };
    let (a, b) = (buckets(before), buckets(after));
    let mut longest = 0.0;
    let mut prev = 0.0;
    for ((le, cb), (_, ca)) in b.iter().zip(&a) {
        let n = cb - ca;
        if n > prev {
            longest = *le;
        }
        prev = n;
    }
    longest
}

/// The guest's dirty samples so far.
fn samples(t: &Tandem) -> Vec<u64> {
    t.serial()
        .lines()
        .iter()
        .filter_map(|l| parse_dirty(l))
        .map(|(_, n)| n)
        .collect()
}

// What a slow link does to a guest that rewrites a small working set: every checkpoint carries
// that set however long its epoch, so the window fills and epochs wait for it; while they wait the
// guest may run only its run budget and is then stopped (ft.status says `backlog` and a throttle),
// and it runs at full speed again in the first epoch that does not wait. Measured here on four
// runs: throttled 4-12 s after the link slowed, longest pause <= 7.5 ms, peak backlog 2.1 MB of a
// 64 MiB bound.
#[test]
fn slow_link_makes_the_primary_throttle_and_the_throttle_lifts_when_it_recovers() {
    let name = "slow_link_makes_the_primary_throttle_and_the_throttle_lifts_when_it_recovers";
    require_kvm_and_netns!(name);
    let net = TestNet::up("ffl");
    let p = Tandem::start_in_netns("ffl-p", &net.ns(Node::HostP));
    let b = Tandem::start_in_netns("ffl-b", &net.ns(Node::HostB));
    let store = TempDir::new("ffl-store");
    std::fs::create_dir(store.path("arbiter")).expect("arbiter folder");
    p.boot_builtin(1, 128, "workload=dirty:1:20000");
    let url = format!("tcp:{HOST_B_LINK_IP}:{FT_PORT}");
    // A slow link needs a failure timeout that a checkpoint on it cannot reach.
    b.put_ok(
        "ft.receive",
        Some(&json!({
            "listen": url,
            // The private test link.
            "insecure": true,
            "serial": {"mode": "Null"},
            "arbiter": {"path": store.path("arbiter")},
            "failure_timeout_ms": 5000,
        })),
    );
    p.put_ok(
        "ft.enable",
        Some(&json!({
            "peer": url,
            "disk_mode": "shared",
            "arbiter": {"path": store.path("arbiter")},
            "failure_timeout_ms": 5000,
        })),
    );
    wait_ft(&p, "primary", "protected", &b);
    wait_ft(&b, "backup", "protected", &p);
    // Every page of the working set goes once, whole, at full speed; later checkpoints carry
    // deltas, and the guest runs unthrottled.
    let s = wait_status(&p, "unthrottled at full link speed", |s| {
        s["checkpoint_count"].as_u64().unwrap_or(0) >= 40
            && s["flow"]["limited_by"] != "backlog"
            && s["flow"]["throttle_permille"] == 0
    });

    net.throttle_link(Node::HostP, SLOW);
    let slowed = Instant::now();
    let before = Metrics::scrape_unix(&p.socket);
    let seen = samples(&p).len();
    let bound = s["flow"]["max_backlog_bytes"]
        .as_u64()
        .expect("backlog bound");
    let check = |s: &Value| {
        assert_eq!(
            s["state"],
            "protected",
            "the pair broke on a slow link: {s}\nprimary log:\n{}\nbackup log:\n{}",
            p.log(),
            b.log()
        );
        let backlog = s["backlog_bytes"].as_u64().unwrap_or(u64::MAX);
        assert!(
            backlog <= bound,
            "backlog {backlog} above its bound {bound}: {s}"
        );
    };
    let throttled = wait_status(&p, "throttled by the slow link", |s| {
        check(s);
        s["flow"]["throttle_permille"].as_u64().unwrap_or(0) > 0
            && s["flow"]["limited_by"] == "backlog"
    });
    eprintln!(
        "[ffl] throttled {:?} after the link slowed: {}",
        slowed.elapsed(),
        throttled["flow"]
    );
    // Throttled, not frozen: the guest keeps working, checkpoints keep being acked, no long
    // pause, the backlog stays bounded.
    let acked = throttled["last_committed_epoch"].as_u64().unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        check(&ft_status(&p));
        std::thread::sleep(Duration::from_millis(100));
    }
    let s = ft_status(&p);
    check(&s);
    assert!(
        s["last_committed_epoch"].as_u64().unwrap_or(0) > acked,
        "no checkpoint acked while throttled: {s}"
    );
    // "Not seconds", with room for a loaded CI host's scheduling.
    let longest = longest_pause_le_us(&before, &Metrics::scrape_unix(&p.socket));
    assert!(longest <= 1_000_000.0, "a pause of up to {longest} µs");
    assert!(
        s["flow"]["peak_backlog_bytes"].as_u64().unwrap_or(u64::MAX) <= bound,
        "{s}"
    );
    eprintln!(
        "[ffl] while slow: longest pause ≤ {longest} µs, {}",
        s["flow"]
    );

    net.unthrottle_link(Node::HostP);
    let recovered = Instant::now();
    // The guest prints a sample each second it runs, but its console is held until the
    // checkpoint that wrote it is acked, which on the slow link takes seconds: count the
    // samples of the slow stretch once the link has drained them, not while it is slow.
    let slow_secs = recovered.duration_since(slowed).as_secs() as usize;
    let drained = Instant::now() + T;
    while samples(&p).len() < seen + slow_secs && Instant::now() < drained {
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut work = samples(&p).split_off(seen);
    work.truncate(slow_secs);
    // One sample may straddle the moment the link slowed; every other second did work.
    assert!(
        work.len() + 1 >= slow_secs && work.iter().skip(1).all(|&n| n > 0),
        "the guest stopped working in the {slow_secs} s the link was slow: {work:?} pages/s"
    );
    eprintln!("[ffl] guest while slow: {work:?} pages/s");
    let s = wait_status(&p, "throttle lifted", |s| {
        check(s);
        s["flow"]["limited_by"] != "backlog" && s["flow"]["throttle_permille"] == 0
    });
    eprintln!(
        "[ffl] lifted {:?} after the link recovered: {}",
        recovered.elapsed(),
        s["flow"]
    );
    assert!(recovered.elapsed() < T);
}
