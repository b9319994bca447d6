//! Wedges (issue 11 item 9): a vm.pause on a protected primary that times out must not pause
//! the guest later behind the caller's back; a guest that resets itself while its pair is
//! still syncing must reboot, not hang. Real `tandem` processes, real KVM, the test network.

use serde_json::json;
use std::time::{Duration, Instant};
use tandem_tests::ft::{ft_status, protected_pair_with, signal, wait_status, GUEST_IP, T};
use tandem_tests::net::{Node, TestNet, HOST_B_LINK_IP};
use tandem_tests::{require_kvm_and_netns, Tandem, TempDir};

#[test]
fn a_pause_that_times_out_is_withdrawn_and_the_guest_runs_on() {
    let name = "a_pause_that_times_out_is_withdrawn_and_the_guest_runs_on";
    require_kvm_and_netns!(name);
    // Longer than the pause's own limit (5 s), so that the stalled backup is not given up on
    // while the pause waits for room in the in-flight window.
    let pair = protected_pair_with("fwp", "shared", 20_000);
    signal(&pair.b, "STOP");
    // Every in-flight slot taken: the epoch thread now waits for room, and no checkpoint can
    // carry the pause.
    wait_status(&pair.p, "the in-flight window full", |s| {
        s["backlog_epochs"].as_u64() >= Some(2)
    });
    let t0 = Instant::now();
    let (code, v) = pair.p.put("vm.pause", None);
    let waited = t0.elapsed();
    signal(&pair.b, "CONT");
    assert_eq!(
        code, 500,
        "the stalled backup cannot take the pause's checkpoint: {v}"
    );
    assert!(
        v.to_string().contains("withdrawn"),
        "the error says the request is gone: {v}"
    );
    eprintln!("pause refused after {waited:?}");
    assert_eq!(pair.p.state(), "Running");
    // The backup catches up; the withdrawn pause must not happen now.
    wait_status(&pair.p, "checkpoints flowing again", |s| {
        s["state"] == "protected" && s["backlog_epochs"].as_u64() == Some(0)
    });
    std::thread::sleep(Duration::from_secs(1));
    let s = ft_status(&pair.p);
    assert_eq!(s["guest_paused"], false, "the guest paused later: {s}");
    assert_eq!(pair.p.state(), "Running");
    let inc = pair.net.run_in(Node::Client, || {
        let mut c = tandem_tests::client::CounterConn::connect(&format!("{GUEST_IP}:7000"), T)
            .expect("connect");
        c.inc()
    });
    inc.join()
        .expect("client")
        .expect("the guest answers: it was never paused");
    // And pause/resume work as usual afterwards.
    pair.p.put_ok("vm.pause", None);
    assert_eq!(pair.p.state(), "Paused");
    pair.p.put_ok("vm.resume", None);
    assert_eq!(pair.p.state(), "Running");
}

#[test]
fn a_guest_that_resets_while_its_pair_syncs_reboots_and_is_protected_again() {
    let name = "a_guest_that_resets_while_its_pair_syncs_reboots_and_is_protected_again";
    require_kvm_and_netns!(name);
    let tag = "fwr";
    let net = TestNet::up(tag);
    let p = Tandem::start_in_netns(&format!("{tag}-p"), &net.ns(Node::HostP));
    let b = Tandem::start_in_netns(&format!("{tag}-b"), &net.ns(Node::HostB));
    let store = TempDir::new(&format!("{tag}-store"));
    let arbiter = store.path("arbiter");
    std::fs::create_dir(&arbiter).unwrap();
    // A guest that resets itself as soon as it is ready: every reset lands in a sync.
    p.put_ok(
        "vm.create",
        Some(&p.builtin_config(1, 128, "workload=reboot")),
    );
    p.put_ok("vm.boot", None);
    p.serial().wait_for("tandem-guest: ready", T);
    b.put_ok(
        "ft.receive",
        Some(&json!({
            "listen": format!("tcp:{HOST_B_LINK_IP}:7600"),
            // The private test link.
            "insecure": true,
            "serial": {"mode": "File", "file": b.serial_path},
            "arbiter": {"path": arbiter},
        })),
    );
    // The guest may reset between calls: retry while the VMM is rebuilding it.
    let enable = json!({
        "peer": format!("tcp:{HOST_B_LINK_IP}:7600"),
        "disk_mode": "shared",
        "arbiter": {"path": arbiter},
    });
    let start = Instant::now();
    loop {
        let (code, v) = p.put("ft.enable", Some(&enable));
        if code == 204 {
            break;
        }
        assert!(start.elapsed() < T, "ft.enable: {code} {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let booted = p.serial().count("tandem-guest: ready");
    // Each reset waits for its sync, ends the pair for a re-sync, reboots and protects again:
    // the guest keeps booting instead of hanging in its first reset.
    let start = Instant::now();
    while p.serial().count("tandem-guest: ready") < booted + 3 {
        assert!(
            start.elapsed() < T,
            "the guest hung: {} boots; P {}\nlog:\n{}",
            p.serial().count("tandem-guest: ready"),
            ft_status(&p),
            p.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Every re-sync reached the backup, which never went live.
    assert_eq!(
        b.get("vm.info").0,
        404,
        "the backup went live: {}",
        ft_status(&b)
    );
    let s = ft_status(&b);
    assert_eq!(s["role"], "backup", "{s}");
}
