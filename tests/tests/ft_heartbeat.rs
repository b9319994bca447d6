//! UDP heartbeats on a second path (the LAN) next to the replication stream (the host-to-host
//! link): with the link cut while both hosts live, the heartbeats keep each member hearing the
//! other, and the rule decides instead of a race: the primary arbitrates and runs on
//! unprotected, the backup defers to it and halts once it sees the primary won. The client's
//! connection is served throughout.

use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_tests::ft_pair::{assert_counts_up, client, ft_status, wait_ft, wait_status, Hosts, T};
use tandem_tests::net::{Node, HOST_B_LAN_IP, HOST_P_LAN_IP};
use tandem_tests::require;

/// The backup's failure timeout (`tandem_tests::ft_pair::Hosts`' bodies).
const FAILURE_TIMEOUT_MS: u64 = 1000;
/// The primary's, longer: the backup's stream goes silent first, so without the second-path
/// rule it would race for the arbiter and win; with it, it defers (and says so) until the
/// primary has won, 1.5 s later. Equal timeouts let the primary win before the backup ever
/// deferred, and the test could not tell.
const PRIMARY_TIMEOUT_MS: u64 = 2500;

#[test]
fn link_cut_with_live_heartbeats_the_primary_wins_and_the_backup_defers_then_halts() {
    require!(kvm, netns);
    let h = Hosts::up("fhb");
    h.b.put_ok(
        "ft.receive",
        Some(&h.receive_body(json!({
            "heartbeat_listen": format!("udp:{HOST_B_LAN_IP}:7700"),
            "peer_heartbeat": format!("udp:{HOST_P_LAN_IP}:7700"),
        }))),
    );
    h.p.put_ok(
        "ft.enable",
        Some(&h.enable_body(json!({
            "heartbeat_listen": format!("udp:{HOST_P_LAN_IP}:7700"),
            "peer_heartbeat": format!("udp:{HOST_B_LAN_IP}:7700"),
            "failure_timeout_ms": PRIMARY_TIMEOUT_MS,
        }))),
    );
    wait_ft(&h.p, "primary", "protected", &h.b);
    wait_ft(&h.b, "backup", "protected", &h.p);
    for t in [&h.p, &h.b] {
        let s = wait_status(t, "hearing UDP heartbeats", |s| {
            s["heartbeat_age"]["udp_ms"].is_u64()
        });
        assert_eq!(s["authenticated"], false, "no key given: {s}");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let client = client(&h.net, stop.clone());
    std::thread::sleep(Duration::from_millis(1000));

    h.net.set_link(Node::HostP, false);
    let cut = Instant::now();
    let mut deferred = None;
    let (ps, bs) = loop {
        let (ps, bs) = (ft_status(&h.p), ft_status(&h.b));
        // The backup must never try to go live while the primary is heard.
        assert!(
            bs["state"] != "failing_over" && bs["role"] != "primary",
            "the backup raced for the arbiter: {bs}\nB log:\n{}",
            h.b.log()
        );
        if deferred.is_none() && bs["reason"].as_str().unwrap_or("").contains("deferring") {
            deferred = Some(cut.elapsed());
        }
        if ps["state"] == "unprotected" && bs["state"] == "halted" {
            break (ps, bs);
        }
        assert!(
            ps["state"] != "halted" && cut.elapsed() < T,
            "not decided for the primary: P {ps}\nB {bs}\nP log:\n{}\nB log:\n{}",
            h.p.log(),
            h.b.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let decided = cut.elapsed();
    // The backup deferred to the primary it still heard (said so in its reason) before it
    // halted: seen on one of the looks above.
    assert!(
        deferred.is_some(),
        "the backup never said it was deferring: B {bs}\nB log:\n{}",
        h.b.log()
    );
    // Both still hear each other on the LAN: a number (null would be never), recent.
    let hb = ft_status(&h.b)["heartbeat_age"].clone();
    eprintln!("[fhb] backup's heartbeat ages after the decision: {hb}");
    let udp = hb["udp_ms"].as_u64();
    assert!(
        udp.is_some_and(|ms| ms < FAILURE_TIMEOUT_MS),
        "B hears no UDP heartbeats: {hb}"
    );
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let (seen, slowest) = client.join().expect("client thread");
    eprintln!(
        "[fhb] link cut: decided after {decided:?} (backup deferring from {deferred:?}); \
         primary: {}; backup: {}; {} INCs, slowest {slowest:?}",
        ps["reason"],
        bs["reason"],
        seen.len()
    );
    assert_eq!(ps["role"], "primary");
    assert!(
        ps["reason"]
            .as_str()
            .unwrap_or("")
            .contains("won generation"),
        "{ps}"
    );
    let br = bs["reason"].as_str().unwrap_or("");
    assert!(br.contains("heartbeat path") && br.contains("won"), "{bs}");
    assert_eq!(ft_status(&h.b)["state"], "halted");
    assert_ne!(h.b.get("vm.info").1["state"], "Running");
    assert_eq!(h.p.state(), "Running");
    assert_counts_up(&seen);
}
