//! Fault tolerance between two real `tandem` processes in two host namespaces on one LAN: the
//! replication stream over the host-to-host link, a counter guest, a client in its own namespace
//! on one TCP connection, and the primary killed with SIGKILL; a stopped backup (output held until
//! the primary wins arbitration) and a cut host-to-host link (exactly one member stays live).

use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_tests::client::{wait_counter_on_disk, CounterConn};
use tandem_tests::ft::{
    assert_counts_up, client, ft_status, protected_pair, protected_pair_with, signal, wait_halted,
    wait_status, wait_takeover, GUEST_IP, T,
};
use tandem_tests::net::Node;
use tandem_tests::{require, Tandem, TempDir};

fn primary_killed(tag: &str, disk_mode: &str) {
    let mut pair = protected_pair(tag, disk_mode);
    let stop = Arc::new(AtomicBool::new(false));
    let client = client(&pair.net, stop.clone());
    std::thread::sleep(Duration::from_millis(1500));
    let checkpoints = ft_status(&pair.p)["checkpoint_count"].clone();

    pair.p.child.kill().expect("SIGKILL the primary");
    let killed = Instant::now();
    pair.p.wait_exit(T);
    let took_over = wait_takeover(&pair.b);
    let b = &pair.b;
    b.wait_state("Running", T);
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let (seen, slowest) = client.join().expect("client thread");
    eprintln!(
        "[{tag}] {} INCs; primary had taken {checkpoints} checkpoints; backup live {took_over:?} \
         after SIGKILL ({:?} to here); slowest INC {slowest:?}",
        seen.len(),
        killed.elapsed()
    );
    assert_eq!(ft_status(b)["failover_count"], 1);
    assert!(
        !b.serial().text().contains("tandem-guest: boot"),
        "the guest rebooted"
    );
    assert_counts_up(&seen);
    // Every acknowledged INC is on the disk the guest now runs from (invariant 4).
    assert_eq!(
        wait_counter_on_disk(&pair.b_image, seen.last().copied()),
        seen.last().copied()
    );
}

#[test]
fn primary_killed_backup_takes_over_and_the_connection_survives() {
    require!(kvm, netns);
    primary_killed("ft", "shared");
}

#[test]
fn primary_killed_with_replicated_disks() {
    require!(kvm, netns);
    primary_killed("ftr", "replicated");
}

#[test]
fn backup_killed_primary_runs_on_unprotected_and_the_client_never_notices() {
    require!(kvm, netns);
    let mut pair = protected_pair("ftb", "shared");
    let stop = Arc::new(AtomicBool::new(false));
    let client = client(&pair.net, stop.clone());
    std::thread::sleep(Duration::from_millis(1000));
    pair.b.child.kill().expect("SIGKILL the backup");
    let killed = Instant::now();
    pair.b.wait_exit(T);
    let alone = wait_takeover(&pair.p);
    pair.p.wait_state("Running", T);
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    let (seen, slowest) = client.join().expect("client thread");
    eprintln!(
        "[ftb] {} INCs; primary unprotected {alone:?} after the backup's SIGKILL ({:?} to \
         here); slowest INC {slowest:?}",
        seen.len(),
        killed.elapsed()
    );
    assert_eq!(ft_status(&pair.p)["failover_count"], 0);
    assert_counts_up(&seen);
    // Held writes were released once the primary ran alone.
    assert_eq!(
        wait_counter_on_disk(&pair.p_image, seen.last().copied()),
        seen.last().copied()
    );
    // Running alone, the VM takes API calls again once the pair is reset.
    pair.p.put_ok("ft.disable", None);
    assert_eq!(ft_status(&pair.p)["role"], "standalone");
    pair.p.put_ok("vm.pause", None);
    pair.p.put_ok("vm.resume", None);
}

#[test]
fn disable_ends_the_pair_the_primary_runs_standalone_and_the_backup_discards() {
    require!(kvm, netns);
    let pair = protected_pair("ftd", "shared");
    let stop = Arc::new(AtomicBool::new(false));
    let client = client(&pair.net, stop.clone());
    std::thread::sleep(Duration::from_millis(500));
    pair.p.put_ok("ft.disable", None);
    // The VM comes back to the VMM thread: calls refused while FT ran work again.
    let start = Instant::now();
    loop {
        let (code, v) = pair.p.put("vm.pause", None);
        if code == 204 {
            break;
        }
        assert_eq!(code, 409, "{v}");
        assert!(start.elapsed() < T, "the primary never came back: {v}");
        std::thread::sleep(Duration::from_millis(10));
    }
    pair.p.put_ok("vm.resume", None);
    let s = ft_status(&pair.p);
    assert_eq!(s["role"], "standalone", "{s}");
    // The backup was told and discarded its copy: it never goes live.
    let s = wait_status(&pair.b, "standalone", |s| s["role"] == "standalone");
    assert!(
        s["reason"]
            .as_str()
            .unwrap_or("")
            .contains("ended the pair"),
        "{s}"
    );
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(pair.b.get("vm.info").0, 404, "the backup built a VM");
    assert_eq!(ft_status(&pair.b)["failover_count"], 0);
    stop.store(true, Ordering::Relaxed);
    let (seen, _) = client.join().expect("client thread");
    assert_counts_up(&seen);
}

#[test]
fn promoted_backup_wins_and_the_old_primary_halts() {
    require!(kvm, netns);
    let pair = protected_pair("ftp", "shared");
    let stop = Arc::new(AtomicBool::new(false));
    let client = client(&pair.net, stop.clone());
    std::thread::sleep(Duration::from_millis(500));
    pair.b.put_ok("ft.promote", None);
    let took_over = wait_takeover(&pair.b);
    // The old primary, its stream gone, claims the next generation too and loses it.
    let s = wait_halted(&pair.p);
    eprintln!(
        "[ftp] backup live after {took_over:?}; old primary: {}",
        s["reason"]
    );
    assert!(s["reason"].as_str().unwrap_or("").contains("lost"), "{s}");
    pair.p.wait_state("Shutdown", T);
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    let (seen, _) = client.join().expect("client thread");
    assert_counts_up(&seen);
    assert_eq!(
        wait_counter_on_disk(&pair.b_image, seen.last().copied()),
        seen.last().copied()
    );
}

#[test]
fn guest_power_off_on_the_primary_ends_both() {
    require!(kvm, netns);
    let pair = protected_pair("fto", "shared");
    let seen = pair
        .net
        .run_in(Node::Client, || {
            let mut c = CounterConn::connect(&format!("{GUEST_IP}:7000"), T).expect("connect");
            let seen: Vec<u64> = (0..20).map(|_| c.inc().expect("INC")).collect();
            let mut off =
                std::net::TcpStream::connect(format!("{GUEST_IP}:7000")).expect("connect");
            std::io::Write::write_all(&mut off, b"OFF\n").expect("send OFF");
            seen
        })
        .join()
        .expect("client thread");
    assert_counts_up(&seen);
    pair.p.wait_state("Shutdown", T);
    pair.p.serial().wait_for("tandem-guest: poweroff", T);
    let s = ft_status(&pair.p);
    assert_eq!(s["role"], "standalone", "{s}");
    // The backup was told the pair ended: it discards its copy instead of going live.
    let s = wait_status(&pair.b, "standalone", |s| s["role"] == "standalone");
    assert!(
        s["reason"]
            .as_str()
            .unwrap_or("")
            .contains("guest powered off"),
        "{s}\nprimary log:\n{}",
        pair.p.log()
    );
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(pair.b.get("vm.info").0, 404, "the backup went live");
}

#[test]
fn wrong_ft_calls_are_refused_and_change_nothing() {
    require!(kvm);
    let b = Tandem::start("ftw-b");
    let store = TempDir::new("ftw-store");
    let arbiter = store.path("arbiter");
    std::fs::create_dir(&arbiter).unwrap();
    let receive =
        |listen: &str, arb: &std::path::Path| json!({"listen": listen, "arbiter": {"path": arb}});
    // Not a directory we can write: 400, still standalone.
    let (code, v) = b.put(
        "ft.receive",
        Some(&receive("tcp:127.0.0.1:0", &store.path("missing"))),
    );
    assert_eq!(code, 400, "{v}");
    assert_eq!(ft_status(&b)["role"], "standalone");
    assert_eq!(b.put("ft.promote", None).0, 409);
    assert_eq!(b.put("ft.disable", None).0, 409);
    b.put_ok("ft.receive", Some(&receive("tcp:127.0.0.1:0", &arbiter)));
    let s = ft_status(&b);
    assert_eq!(
        (s["role"].as_str(), s["state"].as_str()),
        (Some("backup"), Some("syncing"))
    );
    assert_eq!(
        b.put("ft.receive", Some(&receive("tcp:127.0.0.1:0", &arbiter)))
            .0,
        409
    );
    let (code, v) = b.put("ft.promote", None);
    assert_eq!(code, 409, "nothing to go live from yet: {v}");
    let cfg = b.builtin_config(1, 64, "workload=idle");
    assert_eq!(b.put("vm.create", Some(&cfg)).0, 409);
    // ft.disable ends the wait at once.
    b.put_ok("ft.disable", None);
    let start = Instant::now();
    while ft_status(&b)["role"] != "standalone" {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{}",
            ft_status(&b)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // A standalone VMM again: it can run a VM, which cannot reach a peer that is not there.
    let start = Instant::now();
    while b.put("vm.create", Some(&cfg)).0 != 204 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "vm.create still refused"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    b.put_ok("vm.boot", None);
    let enable = |peer: &str, arb: &std::path::Path| json!({"peer": peer, "disk_mode": "shared", "arbiter": {"path": arb}});
    let (code, v) = b.put("ft.enable", Some(&enable("tcp:127.0.0.1:1", &arbiter)));
    assert_eq!(code, 400, "unreachable peer: {v}");
    let (code, v) = b.put(
        "ft.enable",
        Some(&enable("tcp:127.0.0.1:1", &store.path("missing"))),
    );
    assert_eq!(code, 400, "bad arbiter: {v}");
    assert_eq!(ft_status(&b)["role"], "standalone");
    assert_eq!(b.state(), "Running");
}

#[test]
fn backup_stopped_output_is_held_until_the_primary_wins_arbitration() {
    require!(kvm, netns);
    const FAILURE_TIMEOUT: Duration = Duration::from_millis(1500);
    let pair = protected_pair_with("fth", "shared", FAILURE_TIMEOUT.as_millis() as u64);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<u64>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<Instant>();
    let (after_tx, after_rx) = std::sync::mpsc::channel::<()>();
    let client = pair.net.run_in(Node::Client, move || {
        let mut c = CounterConn::connect(&format!("{GUEST_IP}:7000"), T).expect("connect");
        let mut seen: Vec<u64> = (0..10).map(|_| c.inc().expect("INC")).collect();
        ready_tx.send(*seen.last().unwrap()).unwrap();
        let stopped = go_rx.recv().unwrap();
        let v = c.inc().expect("the held INC");
        let held = stopped.elapsed();
        seen.push(v);
        // Further INCs, until the test has resumed the backup and checked it.
        while after_rx.try_recv().is_err() {
            seen.push(c.inc().expect("INC after the takeover"));
        }
        for _ in 0..20 {
            seen.push(c.inc().expect("INC after the backup resumed"));
        }
        (seen, held)
    });
    let before = ready_rx.recv().expect("client ready");
    signal(&pair.b, "STOP");
    let stopped = Instant::now();
    go_tx.send(stopped).unwrap();
    // The primary keeps its output until it has won the next generation.
    let alone = wait_takeover(&pair.p);
    let s = ft_status(&pair.p);
    assert!(
        s["reason"]
            .as_str()
            .unwrap_or("")
            .contains("won generation"),
        "{s}"
    );
    std::thread::sleep(Duration::from_millis(1000));
    // The stopped backup comes back: it must not go live.
    signal(&pair.b, "CONT");
    let bs = wait_halted(&pair.b);
    std::thread::sleep(Duration::from_millis(2000));
    assert_eq!(ft_status(&pair.b)["state"], "halted");
    let (code, info) = pair.b.get("vm.info");
    assert!(
        code != 200 || info["state"] != "Running",
        "the resumed backup runs a VM: {info}"
    );
    after_tx.send(()).unwrap();
    let (seen, held) = client.join().expect("client thread");
    eprintln!(
        "[fth] held INC answered {held:?} after SIGSTOP (failure timeout {FAILURE_TIMEOUT:?}); \
         primary unprotected {alone:?} after it: {}; resumed backup: {}; {} INCs",
        s["reason"],
        bs["reason"],
        seen.len()
    );
    assert!(
        held >= FAILURE_TIMEOUT.mul_f64(0.8),
        "output released {held:?} after the backup stopped, before the failure timeout"
    );
    assert!(held <= Duration::from_secs(15), "held INC took {held:?}");
    assert_eq!(seen[10], before + 1);
    assert_counts_up(&seen);
    assert!(bs["reason"].as_str().unwrap_or("").contains("lost"), "{bs}");
    assert_eq!(ft_status(&pair.p)["state"], "unprotected");
    assert_eq!(ft_status(&pair.b)["failover_count"], 0);
}

#[test]
fn link_partition_exactly_one_member_stays_live() {
    require!(kvm, netns);
    let pair = protected_pair("ftn", "shared");
    let stop = Arc::new(AtomicBool::new(false));
    let client = client(&pair.net, stop.clone());
    std::thread::sleep(Duration::from_millis(1000));
    pair.net.set_link(Node::HostP, false);
    let cut = Instant::now();
    let (ps, bs) = loop {
        let (ps, bs) = (ft_status(&pair.p), ft_status(&pair.b));
        let live = |s: &Value| s["role"] == "primary" && s["state"] == "unprotected";
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
    let decided = cut.elapsed();
    let p_won = ps["state"] == "unprotected";
    let (winner, loser, ws, ls) = if p_won {
        (&pair.p, &pair.b, &ps, &bs)
    } else {
        (&pair.b, &pair.p, &bs, &ps)
    };
    winner.wait_state("Running", T);
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let (seen, slowest) = client.join().expect("client thread");
    eprintln!(
        "[ftn] link cut: {} won after {decided:?} ({}); loser: {}; {} INCs, slowest {slowest:?}",
        if p_won { "primary" } else { "backup" },
        ws["reason"],
        ls["reason"],
        seen.len()
    );
    let wr = ws["reason"].as_str().unwrap_or("");
    assert!(wr.contains("generation"), "winner: {ws}");
    assert!(
        ls["reason"].as_str().unwrap_or("").contains("lost"),
        "loser: {ls}"
    );
    // Still exactly one live.
    assert_eq!(ft_status(winner)["state"], "unprotected");
    assert_eq!(ft_status(loser)["state"], "halted");
    if !p_won {
        assert_eq!(ft_status(winner)["failover_count"], 1);
        pair.p.wait_state("Shutdown", T);
    }
    assert_counts_up(&seen);
    // Every acknowledged INC is on the shared disk (held writes released by the winner).
    assert_eq!(
        wait_counter_on_disk(&pair.p_image, seen.last().copied()),
        seen.last().copied()
    );
}
