//! FT pairs of real `tandem` processes whose arbiter is a real etcd server, started by the test
//! on the test network's LAN (both hosts reach it there, not over their host-to-host link): a
//! failover through etcd while the backup cannot reach it at first, a partition where only the
//! backup reaches etcd (the primary must stay held, then halt), and a partition where both
//! reach it and race (exactly one wins).

use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_tests::client::counter_on_disk;
use tandem_tests::etcd::{cut_off, free_port, Etcd};
use tandem_tests::ft::{
    assert_counts_up, client, ft_status, protected_pair_using, wait_halted, wait_status,
    wait_takeover, Pair, T,
};
use tandem_tests::net::Node;
use tandem_tests::{require_etcd, require_kvm_and_netns, Tandem, TempDir};

/// A protected pair (shared disk, 1 s failure timeout) arbitrated by an etcd on its LAN, under
/// pair key `/tandem/pairs/<tag>`.
fn etcd_pair(tag: &str) -> (Pair, Etcd) {
    let mut etcd = None;
    let pair = protected_pair_using(tag, "shared", 1000, |net, _| {
        let e = Etcd::start_on_lan(net, tag);
        let config = e.arbiter(&key(tag, ""));
        etcd = Some(e);
        config
    });
    let etcd = etcd.expect("etcd started");
    // ft.enable/ft.receive checked the cluster up front and created the store's identity.
    let id = etcd.get(&key(tag, "/identity")).expect("identity created");
    assert_eq!(id.len(), 32, "{id}");
    (pair, etcd)
}

/// The pair key of `tag`, with `suffix`.
fn key(tag: &str, suffix: &str) -> String {
    format!("/tandem/pairs/{tag}{suffix}")
}

/// The record of generation `g` of pair `tag`, if any.
fn record(etcd: &Etcd, tag: &str, g: u64) -> Option<String> {
    etcd.get(&key(tag, &format!("/gen/{g:020}")))
}

fn live(s: &Value) -> bool {
    s["role"] == "primary" && s["state"] == "unprotected"
}

/// Fails if `t` runs the guest as a primary at any moment during `d`.
fn never_live_for(t: &Tandem, d: Duration, why: &str) {
    let start = Instant::now();
    while start.elapsed() < d {
        let s = ft_status(t);
        assert!(!live(&s), "{why}: {s}\nlog:\n{}", t.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The client stops; every INC it saw counts up and the last is on the shared disk.
fn client_counted_up(
    pair: &Pair,
    stop: &AtomicBool,
    client: std::thread::JoinHandle<(Vec<u64>, Duration)>,
) -> Vec<u64> {
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let (seen, _) = client.join().expect("client thread");
    assert_counts_up(&seen);
    let start = Instant::now();
    while counter_on_disk(&pair.p_image) != seen.last().copied() && start.elapsed() < T {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(counter_on_disk(&pair.p_image), seen.last().copied());
    seen
}

#[test]
fn primary_killed_failover_through_etcd_waits_until_the_backup_reaches_it() {
    let name = "primary_killed_failover_through_etcd_waits_until_the_backup_reaches_it";
    require_kvm_and_netns!(name);
    require_etcd!(name);
    let tag = "fe1";
    let (mut pair, etcd) = etcd_pair(tag);
    let stop = Arc::new(AtomicBool::new(false));
    let client = client(&pair.net, stop.clone());
    std::thread::sleep(Duration::from_millis(1000));

    cut_off(&pair.net, Node::HostB, true);
    pair.p.child.kill().expect("SIGKILL the primary");
    pair.p.wait_exit(T);
    // The backup claims, cannot reach etcd, and stays a backup: retrying, not live.
    let cut = wait_status(&pair.b, "an arbiter error", |s| {
        !s["arbiter_error"].is_null()
    });
    assert_eq!(cut["role"], "backup", "{cut}");
    let why = cut["arbiter_error"].as_str().unwrap_or("");
    assert!(why.contains("etcd: no endpoint answered"), "{cut}");
    never_live_for(&pair.b, Duration::from_secs(3), "live without etcd");
    let (code, info) = pair.b.get("vm.info");
    assert!(code != 200 || info["state"] != "Running", "{info}");
    assert_eq!(record(&etcd, tag, 1), None);

    // etcd reachable again: the next retry wins generation 1 and the backup goes live.
    cut_off(&pair.net, Node::HostB, false);
    let took = wait_takeover(&pair.b);
    pair.b.wait_state("Running", T);
    let seen = client_counted_up(&pair, &stop, client);
    let s = ft_status(&pair.b);
    eprintln!(
        "[{tag}] arbiter error while cut off: {why}; live {took:?} after etcd came back ({}); \
         {} INCs",
        s["reason"],
        seen.len()
    );
    assert!(s["arbiter_error"].is_null(), "{s}");
    assert_eq!(s["failover_count"], 1);
    assert!(
        s["reason"]
            .as_str()
            .unwrap_or("")
            .contains("live as primary in generation 1"),
        "{s}"
    );
    let rec = record(&etcd, tag, 1).expect("generation 1 recorded in etcd");
    assert!(rec.contains("\"role\": \"backup\""), "{rec}");
}

#[test]
fn partition_where_only_the_backup_reaches_etcd_the_primary_stays_held_then_halts() {
    let name = "partition_where_only_the_backup_reaches_etcd_the_primary_stays_held_then_halts";
    require_kvm_and_netns!(name);
    require_etcd!(name);
    let tag = "fe2";
    let (pair, etcd) = etcd_pair(tag);
    let stop = Arc::new(AtomicBool::new(false));
    let client = client(&pair.net, stop.clone());
    std::thread::sleep(Duration::from_millis(1000));

    cut_off(&pair.net, Node::HostP, true);
    pair.net.set_link(Node::HostP, false);
    let cut = Instant::now();
    // The backup wins and goes live; the primary, which cannot reach etcd, keeps its output
    // held and never runs the guest alone.
    loop {
        let (ps, bs) = (ft_status(&pair.p), ft_status(&pair.b));
        assert!(!live(&ps), "the primary went live without etcd: {ps}");
        if live(&bs) && !ps["arbiter_error"].is_null() {
            break;
        }
        assert!(
            cut.elapsed() < T,
            "P {ps}\nB {bs}\nP log:\n{}\nB log:\n{}",
            pair.p.log(),
            pair.b.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    pair.b.wait_state("Running", T);
    never_live_for(&pair.p, Duration::from_secs(3), "live without etcd");

    // The primary reaches etcd again: generation 1 is the backup's, so it halts.
    cut_off(&pair.net, Node::HostP, false);
    let ps = wait_halted(&pair.p);
    let reason = ps["reason"].as_str().unwrap_or("");
    assert!(reason.contains("lost arbitration for generation 1"), "{ps}");
    assert!(reason.contains("Backup on"), "the winner is named: {ps}");
    assert!(live(&ft_status(&pair.b)));
    let seen = client_counted_up(&pair, &stop, client);
    eprintln!(
        "[{tag}] primary: {}; {} INCs through the backup",
        ps["reason"],
        seen.len()
    );
    let rec = record(&etcd, tag, 1).expect("generation 1 recorded");
    assert!(rec.contains("\"role\": \"backup\""), "{rec}");
    assert_eq!(record(&etcd, tag, 2), None);
}

#[test]
fn partition_where_both_reach_etcd_exactly_one_wins_the_race() {
    let name = "partition_where_both_reach_etcd_exactly_one_wins_the_race";
    require_kvm_and_netns!(name);
    require_etcd!(name);
    let tag = "fe3";
    let (pair, etcd) = etcd_pair(tag);
    let stop = Arc::new(AtomicBool::new(false));
    let client = client(&pair.net, stop.clone());
    std::thread::sleep(Duration::from_millis(1000));

    // Both members lose each other and both claim generation 1 at etcd.
    pair.net.set_link(Node::HostP, false);
    let cut = Instant::now();
    let (ps, bs) = loop {
        let (ps, bs) = (ft_status(&pair.p), ft_status(&pair.b));
        assert!(!(live(&ps) && live(&bs)), "both live: P {ps}\nB {bs}");
        if (live(&ps) && bs["state"] == "halted") || (live(&bs) && ps["state"] == "halted") {
            break (ps, bs);
        }
        assert!(
            cut.elapsed() < T,
            "no single winner: P {ps}\nB {bs}\nP log:\n{}\nB log:\n{}",
            pair.p.log(),
            pair.b.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let p_won = live(&ps);
    let (winner, loser, ls) = if p_won {
        (&pair.p, &pair.b, &bs)
    } else {
        (&pair.b, &pair.p, &ps)
    };
    winner.wait_state("Running", T);
    let seen = client_counted_up(&pair, &stop, client);
    eprintln!(
        "[{tag}] {} won after {:?}; loser: {}; {} INCs",
        if p_won { "primary" } else { "backup" },
        cut.elapsed(),
        ls["reason"],
        seen.len()
    );
    assert!(
        ls["reason"]
            .as_str()
            .unwrap_or("")
            .contains("lost arbitration for generation 1"),
        "{ls}"
    );
    assert!(live(&ft_status(winner)));
    assert_eq!(ft_status(loser)["state"], "halted");
    // etcd holds one record, the winner's.
    let rec = record(&etcd, tag, 1).expect("generation 1 recorded");
    let role = if p_won { "primary" } else { "backup" };
    assert!(rec.contains(&format!("\"role\": \"{role}\"")), "{rec}");
    assert_eq!(record(&etcd, tag, 2), None);
}

#[test]
fn ft_receive_checks_the_etcd_arbiter_up_front() {
    let name = "ft_receive_checks_the_etcd_arbiter_up_front";
    require_etcd!(name);
    let etcd = Etcd::start("fer");
    let b = Tandem::start("fer-b");
    let receive = |arbiter: Value| json!({"listen": "tcp:127.0.0.1:0", "arbiter": arbiter});
    let dead = format!("http://127.0.0.1:{}", free_port());
    let dir = TempDir::new("fer");
    let pw = dir.path("pw");
    std::fs::write(&pw, "x\n").unwrap();
    // Each a 400 with the reason, nothing changed.
    for (arbiter, why) in [
        (
            json!({"etcd": {"endpoints": [dead], "key": "/k"}}),
            "no endpoint answered",
        ),
        (
            json!({"etcd": {"endpoints": [], "key": "/k"}}),
            "endpoints is empty",
        ),
        (
            json!({"etcd": {"endpoints": ["2379"], "key": "/k"}}),
            "scheme must be http",
        ),
        (
            json!({"etcd": {"endpoints": [etcd.url], "key": "/k/"}}),
            "must not end with '/'",
        ),
        (
            json!({"etcd": {"endpoints": [etcd.url], "key": "/k", "ca_file": "/ca.pem"}}),
            "the endpoint is http",
        ),
        (
            json!({"etcd": {"endpoints": [etcd.url], "key": "/k", "user": "u", "password_file": pw}}),
            "chmod 600",
        ),
        (
            json!({"etcd": {"endpoints": [etcd.url], "key": "/k", "pasword": "x"}}),
            "pasword",
        ),
        (
            json!({"path": "/a", "etcd": {"endpoints": [etcd.url], "key": "/k"}}),
            "",
        ),
    ] {
        let (code, v) = b.put("ft.receive", Some(&receive(arbiter.clone())));
        assert_eq!(code, 400, "{arbiter}: {v}");
        assert!(v.to_string().contains(why), "{arbiter}: {v}");
        assert_eq!(ft_status(&b)["role"], "standalone");
    }
    // A host name (resolved on the VMM thread, under its seccomp filter) that reaches etcd.
    let by_name = etcd.url.replace("127.0.0.1", "localhost");
    b.put_ok(
        "ft.receive",
        Some(&receive(
            json!({"etcd": {"endpoints": [dead, by_name], "key": "/tandem/pairs/fer"}}),
        )),
    );
    assert_eq!(ft_status(&b)["role"], "backup");
    assert!(etcd.get("/tandem/pairs/fer/identity").is_some());
    b.put_ok("ft.disable", None);
    assert!(b.client().get("vmm.ping").is_ok(), "log:\n{}", b.log());
}
