//! The authenticated replication channel between two real `tandem` processes: key files checked
//! like ssh keys; a primary with another key, or none, refused at the handshake on both sides
//! while its guest serves a client without a hiccup and the waiting backup never goes live; then
//! the right key protects the pair (authenticated stream and heartbeats) and survives SIGKILL of
//! the primary.

use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_tests::ft_pair::{assert_counts_up, client, ft_status, wait_ft, wait_status, Hosts, T};
use tandem_tests::metrics::Metrics;
use tandem_tests::net::{HOST_B_LAN_IP, HOST_P_LAN_IP};
use tandem_tests::require;

fn reason(s: &Value) -> &str {
    s["reason"].as_str().unwrap_or("")
}

/// ft.enable that must fail with 400 and `needle` in the error; P stays standalone and running.
fn refused(h: &Hosts, extra: Value, needle: &str) -> String {
    let (code, err) = h.p.put("ft.enable", Some(&h.enable_body(extra)));
    let err = err.to_string();
    assert_eq!(code, 400, "ft.enable: {err}");
    assert!(err.contains(needle), "expected {needle:?} in {err}");
    let s = ft_status(&h.p);
    assert_eq!(s["role"], "standalone", "{s}");
    assert_eq!(h.p.state(), "Running");
    err
}

#[test]
fn wrong_or_missing_key_is_refused_on_both_sides_and_the_right_key_survives_sigkill() {
    require!(kvm, netns);
    let mut h = Hosts::up("fta");
    let key = h.key_file("ft.key", 32, 0o600);
    let other = h.key_file("other.key", 48, 0o600);
    let open = h.key_file("open.key", 32, 0o644);
    let short = h.key_file("short.key", 31, 0o600);
    let stop = Arc::new(AtomicBool::new(false));
    let client = client(&h.net, stop.clone());

    // Key files that must not be used: a clear 400 on either side, nothing started.
    refused(&h, json!({"key": {"path": open}}), "chmod 600");
    refused(&h, json!({"key": {"path": short}}), "at least 32");
    let (code, err) = h.b.put(
        "ft.receive",
        Some(&h.receive_body(json!({"key": {"path": open}}))),
    );
    assert_eq!(code, 400, "{err}");
    assert_eq!(ft_status(&h.b)["role"], "standalone");

    let hb = |me: &str, peer: &str| {
        json!({
            "heartbeat_listen": format!("udp:{me}:7700"),
            "peer_heartbeat": format!("udp:{peer}:7700"),
        })
    };
    let mut receive = h.receive_body(json!({"key": {"path": key}}));
    if let (Some(r), Value::Object(e)) = (receive.as_object_mut(), hb(HOST_B_LAN_IP, HOST_P_LAN_IP))
    {
        r.extend(e);
    }
    h.b.put_ok("ft.receive", Some(&receive));
    let bs = ft_status(&h.b);
    assert_eq!(bs["authenticated"], true, "{bs}");

    // Another key: refused by both at the handshake.
    let t0 = Instant::now();
    let err = refused(&h, json!({"key": {"path": other}}), "authentication failed");
    let refused_in = t0.elapsed();
    let ps = ft_status(&h.p);
    assert!(reason(&ps).contains("authentication failed"), "{ps}");
    assert_eq!(ps["authenticated"], false, "{ps}");
    let bs = wait_status(&h.b, "noting the refusal", |s| {
        reason(s).contains("authentication failed")
    });
    assert_eq!(
        (bs["role"].as_str(), bs["state"].as_str()),
        (Some("backup"), Some("syncing"))
    );
    eprintln!(
        "[fta] other key: P got {err} after {refused_in:?}; B says {}",
        bs["reason"]
    );

    // No key at all: refused too, each side saying which has none.
    refused(&h, json!({}), "the peer requires a pair key");
    wait_status(&h.b, "noting the keyless primary", |s| {
        reason(s).contains("this side has a pair key but the peer has none")
    });
    // The backup never built or ran a VM from any of this.
    assert_eq!(h.b.get("vm.info").0, 404);

    // The right key: protected, authenticated, heartbeats flowing on the second path.
    let mut enable = h.enable_body(json!({"key": {"path": key}}));
    if let (Some(e), Value::Object(x)) = (enable.as_object_mut(), hb(HOST_P_LAN_IP, HOST_B_LAN_IP))
    {
        e.extend(x);
    }
    h.p.put_ok("ft.enable", Some(&enable));
    let synced = wait_ft(&h.p, "primary", "protected", &h.b);
    wait_ft(&h.b, "backup", "protected", &h.p);
    for t in [&h.p, &h.b] {
        let s = wait_status(t, "hearing UDP heartbeats", |s| {
            s["heartbeat_age"]["udp_ms"].is_u64()
        });
        assert_eq!(s["authenticated"], true, "{s}");
    }
    std::thread::sleep(Duration::from_millis(1500));
    let checkpoints = ft_status(&h.p)["checkpoint_count"].clone();
    // The second path's heartbeats are counted in the metrics while they run, both ways.
    for t in [&h.p, &h.b] {
        let m = Metrics::scrape_unix(&t.socket);
        let udp = Some(("path", "udp"));
        assert!(
            m.value("tandem_ft_heartbeats_sent_total", udp) > 0.0,
            "udp sent"
        );
        assert!(
            m.value("tandem_ft_heartbeats_received_total", udp) > 0.0,
            "udp received"
        );
    }

    h.p.child.kill().expect("SIGKILL the primary");
    let killed = Instant::now();
    h.p.wait_exit(T);
    wait_ft(&h.b, "primary", "unprotected", &h.p);
    let took_over = killed.elapsed();
    // ft.status turns only once the VMM thread holds the live VM: vm.info answers at once.
    let (code, info) = h.b.get("vm.info");
    assert_eq!(
        (code, &info["state"]),
        (200, &"Running".into()),
        "vm.info right after ft.status said live: {info}\n{}",
        h.b.log()
    );
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let (seen, slowest) = client.join().expect("client thread");
    eprintln!(
        "[fta] protected after {synced:?}; {checkpoints} checkpoints; backup live {took_over:?} \
         after SIGKILL; {} INCs across refusals and failover, slowest {slowest:?}",
        seen.len()
    );
    assert_eq!(ft_status(&h.b)["failover_count"], 1);
    assert!(
        !h.b.serial().text().contains("tandem-guest: boot"),
        "the guest rebooted"
    );
    assert_counts_up(&seen);
}
