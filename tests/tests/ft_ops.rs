//! Synchronised VM operations on a protected primary and re-protection, with real `tandem`
//! processes in two host namespaces, a counter guest and a client on the LAN: pause and resume
//! keep the pair protected on one TCP connection (a primary killed while paused leaves a backup
//! that comes up paused); vm.shutdown and vmm.shutdown end the pair on purpose; a reboot re-syncs
//! the backup; after a failover or the loss of the backup, ft.enable to a fresh `tandem` protects
//! the guest again, and the new backup takes over when the re-protected primary is killed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::channel;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_tests::client::{wait_counter_on_disk, CounterConn};
use tandem_tests::ft::{
    assert_counts_up, client, ft_status, protected_pair, wait_ft, wait_status, wait_takeover, Pair,
    GUEST_IP, T,
};
use tandem_tests::net::{Node, HOST_B_LINK_IP, HOST_P_LINK_IP};
use tandem_tests::{require, Tandem};

/// What [`stepped_client`] gives the test: its "ready" (last value), its "go", its thread.
type Stepped = (
    std::sync::mpsc::Receiver<u64>,
    std::sync::mpsc::Sender<Instant>,
    std::thread::JoinHandle<(Vec<u64>, Duration)>,
);

/// A client that makes 10 INCs, says so with the last value, waits for the test's go (an
/// instant), makes one INC timed from that instant, then `more` INCs: (replies, the timed INC).
fn stepped_client(pair: &Pair, more: usize) -> Stepped {
    let (ready_tx, ready_rx) = channel::<u64>();
    let (go_tx, go_rx) = channel::<Instant>();
    let h = pair.net.run_in(Node::Client, move || {
        let mut c = CounterConn::connect(&format!("{GUEST_IP}:7000"), T).expect("connect");
        let mut seen: Vec<u64> = (0..10).map(|_| c.inc().expect("INC")).collect();
        ready_tx.send(seen[9]).expect("test gone");
        let from = go_rx.recv().expect("test gone");
        seen.push(c.inc().expect("the INC sent while paused"));
        let held = from.elapsed();
        for _ in 0..more {
            seen.push(c.inc().expect("INC after resume"));
        }
        (seen, held)
    });
    (ready_rx, go_tx, h)
}

#[test]
fn pause_and_resume_keep_the_pair_protected_on_one_connection() {
    require!(kvm, netns);
    let pair = protected_pair("fop", "shared");
    let (ready, go, client) = stepped_client(&pair, 20);
    ready.recv().expect("client ready");
    pair.p.put_ok("vm.pause", None);
    let paused = Instant::now();
    assert_eq!(pair.p.state(), "Paused");
    let ps = ft_status(&pair.p);
    assert_eq!(ps["state"], "protected", "{ps}");
    assert_eq!(ps["guest_paused"], true, "{ps}");
    // The backup learns it from the pause's checkpoint, with that checkpoint's figures.
    let bs = wait_status(&pair.b, "paused at the backup", |s| {
        s["guest_paused"] == true
    });
    assert_eq!(bs["state"], "protected", "{bs}");
    assert!(bs["checkpoint_count"].as_u64() > Some(0), "{bs}");
    assert!(bs["bytes_last_checkpoint"].as_u64() > Some(0), "{bs}");
    assert!(bs["pause"]["max_us"].as_u64() > Some(0), "{bs}");
    let (code, v) = pair.p.put("vm.pause", None);
    assert_eq!(code, 409, "paused twice: {v}");
    // Paused: an INC is not answered; no epochs, but the pair stays up.
    go.send(paused).expect("client gone");
    let count = ft_status(&pair.p)["checkpoint_count"].as_u64();
    std::thread::sleep(Duration::from_millis(1500));
    let ps = ft_status(&pair.p);
    assert_eq!(ps["state"], "protected", "{ps}");
    assert_eq!(
        ps["checkpoint_count"].as_u64(),
        count,
        "epochs while paused"
    );
    assert_eq!(ft_status(&pair.b)["state"], "protected");
    pair.p.put_ok("vm.resume", None);
    assert_eq!(pair.p.state(), "Running");
    let (seen, held) = client.join().expect("client thread");
    eprintln!(
        "[fop] INC sent while paused answered after {held:?}; backup: {} checkpoints, last {} \
         bytes, pause p50 {} us",
        bs["checkpoint_count"], bs["bytes_last_checkpoint"], bs["pause"]["p50_us"]
    );
    assert!(
        held >= Duration::from_millis(1400),
        "answered while paused: {held:?}"
    );
    assert_counts_up(&seen);
    assert_eq!(seen.len(), 31);
    let bs = wait_status(&pair.b, "running at the backup", |s| {
        s["guest_paused"] == false
    });
    assert_eq!(bs["state"], "protected", "{bs}");
    let ps = ft_status(&pair.p);
    assert_eq!(
        (&ps["state"], &ps["guest_paused"]),
        (&"protected".into(), &false.into())
    );
    assert!(
        ps["checkpoint_count"].as_u64() > count,
        "no epochs after resume: {ps}"
    );
    assert_eq!(pair.p.put("vm.resume", None).0, 409, "resumed twice");
    assert_eq!(
        wait_counter_on_disk(&pair.p_image, seen.last().copied()),
        seen.last().copied()
    );
    // Paused when the pair ends: the VM comes back paused, standalone, and resumes.
    pair.p.put_ok("vm.pause", None);
    pair.p.put_ok("ft.disable", None);
    let start = Instant::now();
    loop {
        assert_eq!(pair.p.state(), "Paused");
        let (code, v) = pair.p.put("vm.resume", None);
        if code == 204 {
            break;
        }
        assert_eq!(code, 409, "{v}");
        assert!(start.elapsed() < T, "the VM never came back: {v}");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(pair.p.state(), "Running");
    assert_eq!(ft_status(&pair.p)["role"], "standalone");
}

#[test]
fn primary_killed_while_paused_the_backup_takes_over_paused() {
    require!(kvm, netns);
    let mut pair = protected_pair("fok", "shared");
    let (ready, go, client) = stepped_client(&pair, 10);
    ready.recv().expect("client ready");
    pair.p.put_ok("vm.pause", None);
    wait_status(&pair.b, "paused at the backup", |s| {
        s["guest_paused"] == true
    });
    pair.p.child.kill().expect("SIGKILL the primary");
    pair.p.wait_exit(T);
    let took_over = wait_takeover(&pair.b);
    let b = &pair.b;
    assert_eq!(b.state(), "Paused", "the backup came up running");
    go.send(Instant::now()).expect("client gone");
    // Nothing runs until someone resumes it, as on the primary.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(b.state(), "Paused");
    let bs = ft_status(b);
    assert_eq!(bs["guest_paused"], true, "{bs}");
    assert_eq!(bs["failover_count"], 1, "{bs}");
    b.put_ok("vm.resume", None);
    let (seen, held) = client.join().expect("client thread");
    eprintln!("[fok] backup live (paused) {took_over:?} after SIGKILL; held INC {held:?}");
    assert!(
        held >= Duration::from_millis(1400),
        "answered while paused: {held:?}"
    );
    assert_counts_up(&seen);
    assert_eq!(ft_status(b)["guest_paused"], false);
    assert!(
        !b.serial().text().contains("tandem-guest: boot"),
        "the guest rebooted"
    );
    assert_eq!(
        wait_counter_on_disk(&pair.b_image, seen.last().copied()),
        seen.last().copied()
    );
}

/// Waits until the backup has left the pair with a reason containing `why`; checks that it
/// never builds a VM afterwards.
fn assert_backup_discarded(b: &Tandem, why: &str) {
    let s = wait_status(b, "standalone", |s| s["role"] == "standalone");
    let reason = s["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("ended the pair") && reason.contains(why),
        "{s}"
    );
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(b.get("vm.info").0, 404, "the backup went live");
    assert_eq!(ft_status(b)["failover_count"], 0);
}

#[test]
fn vm_shutdown_on_the_primary_ends_both() {
    require!(kvm, netns);
    let pair = protected_pair("fos", "shared");
    let seen: Vec<u64> = pair
        .net
        .run_in(Node::Client, || {
            let mut c = CounterConn::connect(&format!("{GUEST_IP}:7000"), T).expect("connect");
            (0..20).map(|_| c.inc().expect("INC")).collect()
        })
        .join()
        .expect("client thread");
    pair.p.put_ok("vm.shutdown", None);
    assert_eq!(pair.p.state(), "Shutdown");
    assert_eq!(ft_status(&pair.p)["role"], "standalone");
    assert_backup_discarded(&pair.b, "vm.shutdown");
    assert_counts_up(&seen);
    assert_eq!(
        wait_counter_on_disk(&pair.p_image, seen.last().copied()),
        seen.last().copied()
    );
    // Standalone again: it boots and takes VM calls.
    pair.p.put_ok("vm.boot", None);
    pair.p.put_ok("vm.pause", None);
}

#[test]
fn vmm_shutdown_on_the_primary_is_an_intended_end_not_a_crash() {
    require!(kvm, netns);
    let mut pair = protected_pair("fov", "shared");
    pair.p.put_ok("vmm.shutdown", None);
    pair.p.wait_exit(T);
    assert_backup_discarded(&pair.b, "vmm.shutdown");
}

#[test]
fn reboot_re_syncs_the_backup_which_then_takes_over() {
    require!(kvm, netns);
    let mut pair = protected_pair("fob", "shared");
    let generation = ft_status(&pair.p)["generation"].clone();
    let before: Vec<u64> = pair
        .net
        .run_in(Node::Client, || {
            let mut c = CounterConn::connect(&format!("{GUEST_IP}:7000"), T).expect("connect");
            (0..10).map(|_| c.inc().expect("INC")).collect()
        })
        .join()
        .expect("client thread");
    let t0 = Instant::now();
    pair.p.put_ok("vm.reboot", None);
    pair.p.serial().wait_count("tandem-guest: ready", 2, T);
    wait_ft(&pair.p, "primary", "protected", &pair.b);
    let bs = wait_ft(&pair.b, "backup", "protected", &pair.p);
    eprintln!(
        "[fob] rebooted and protected again after {:?}",
        t0.elapsed()
    );
    let (ps, bst) = (ft_status(&pair.p), ft_status(&pair.b));
    assert_eq!(ps["generation"], generation, "{ps}");
    assert_eq!(bst["failover_count"], 0, "{bst}");
    assert_eq!(pair.b.get("vm.info").0, 404, "the backup went live: {bs:?}");
    assert!(
        pair.b.log().contains("rebooted"),
        "the backup was not told of the reboot:\n{}",
        pair.b.log()
    );
    // A new connection to the rebooted guest, then the primary dies under it.
    let stop = Arc::new(AtomicBool::new(false));
    let c = client(&pair.net, stop.clone());
    std::thread::sleep(Duration::from_millis(1000));
    pair.p.child.kill().expect("SIGKILL the primary");
    pair.p.wait_exit(T);
    wait_takeover(&pair.b);
    pair.b.wait_state("Running", T);
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let (after, _) = c.join().expect("client thread");
    // The rebooted guest read the counter back from the disk, and none was lost since.
    let all: Vec<u64> = before.iter().chain(after.iter()).copied().collect();
    assert_counts_up(&all);
    assert_eq!(
        wait_counter_on_disk(&pair.b_image, all.last().copied()),
        all.last().copied()
    );
}

/// A fresh `tandem` on `node` waiting as the backup of `pair`'s guest, listening on `ip`.
fn new_backup(pair: &Pair, tag: &str, node: Node, ip: &str) -> Tandem {
    let b = Tandem::start_in_netns(tag, &pair.net.ns(node));
    b.put_ok(
        "ft.receive",
        Some(&pair.receive_body_on(&b, &pair.p_image, ip)),
    );
    b
}

/// `primary` (running unprotected, the client on it) is protected again by `ft.enable` to
/// `backup`; then SIGKILLed: `backup` takes over.
fn reprotect_then_fail_over(pair: &Pair, primary: &mut Tandem, backup: &Tandem, ip: &str) {
    let won = ft_status(primary)["generation"]
        .as_u64()
        .expect("generation");
    primary.put_ok("ft.enable", Some(&pair.enable_body_to(ip)));
    wait_ft(primary, "primary", "protected", backup);
    wait_ft(backup, "backup", "protected", primary);
    let ps = ft_status(primary);
    assert!(ps["generation"].as_u64() >= Some(won), "{ps}");
    let (code, v) = primary.put("ft.enable", Some(&pair.enable_body_to(ip)));
    assert_eq!(code, 409, "enabled twice: {v}");
    std::thread::sleep(Duration::from_millis(1000));
    primary
        .child
        .kill()
        .expect("SIGKILL the re-protected primary");
    primary.wait_exit(T);
    wait_takeover(backup);
    backup.wait_state("Running", T);
    let bs = ft_status(backup);
    assert!(bs["generation"].as_u64() > Some(won), "{bs}");
    eprintln!(
        "[reprotect] won generation {won}, re-protected in {}, new backup live in {}",
        ps["generation"], bs["generation"]
    );
}

#[test]
fn backup_killed_then_ft_enable_to_a_new_backup_protects_again() {
    require!(kvm, netns);
    let mut pair = protected_pair("fob2", "shared");
    let stop = Arc::new(AtomicBool::new(false));
    let c = client(&pair.net, stop.clone());
    std::thread::sleep(Duration::from_millis(500));
    pair.b.child.kill().expect("SIGKILL the backup");
    pair.b.wait_exit(T);
    wait_takeover(&pair.p);
    std::thread::sleep(Duration::from_millis(500));
    let b2 = new_backup(&pair, "fob2-b2", Node::HostB, HOST_B_LINK_IP);
    let mut p = std::mem::replace(&mut pair.p, Tandem::start("fob2-idle"));
    reprotect_then_fail_over(&pair, &mut p, &b2, HOST_B_LINK_IP);
    assert_eq!(ft_status(&b2)["failover_count"], 1);
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let (seen, slowest) = c.join().expect("client thread");
    eprintln!("[fob2] {} INCs, slowest {slowest:?}", seen.len());
    assert_counts_up(&seen);
    assert_eq!(
        wait_counter_on_disk(&pair.p_image, seen.last().copied()),
        seen.last().copied()
    );
}

#[test]
fn failover_then_ft_enable_to_a_new_backup_protects_again() {
    require!(kvm, netns);
    let mut pair = protected_pair("fof", "shared");
    let stop = Arc::new(AtomicBool::new(false));
    let c = client(&pair.net, stop.clone());
    std::thread::sleep(Duration::from_millis(500));
    pair.p.child.kill().expect("SIGKILL the primary");
    pair.p.wait_exit(T);
    wait_takeover(&pair.b);
    pair.b.wait_state("Running", T);
    std::thread::sleep(Duration::from_millis(500));
    // The new backup runs where the old primary was (its tap is free again).
    let p2 = new_backup(&pair, "fof-p2", Node::HostP, HOST_P_LINK_IP);
    let mut b = std::mem::replace(&mut pair.b, Tandem::start("fof-idle"));
    reprotect_then_fail_over(&pair, &mut b, &p2, HOST_P_LINK_IP);
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let (seen, slowest) = c.join().expect("client thread");
    eprintln!("[fof] {} INCs, slowest {slowest:?}", seen.len());
    assert_counts_up(&seen);
    assert_eq!(
        wait_counter_on_disk(&pair.p_image, seen.last().copied()),
        seen.last().copied()
    );
}

#[test]
fn primary_killed_during_the_reboot_re_sync_the_backup_never_goes_live() {
    require!(kvm, netns);
    let mut pair = protected_pair("fox", "shared");
    pair.p.put_ok("vm.reboot", None);
    // Slow the fresh sync down so that the primary dies in the middle of it.
    pair.net.throttle_link(Node::HostP, "1mbit");
    wait_status(&pair.b, "waiting for the fresh sync", |s| {
        s["role"] == "backup" && s["state"] == "syncing"
    });
    pair.p.child.kill().expect("SIGKILL the primary");
    pair.p.wait_exit(T);
    // Its old copy is discarded and the new one incomplete: nothing to go live from.
    let s = wait_status(&pair.b, "out of the pair", |s| {
        s["role"] == "standalone" || s["state"] == "halted"
    });
    eprintln!(
        "[fox] backup after the primary died mid re-sync: {}",
        s["reason"]
    );
    std::thread::sleep(Duration::from_millis(2000));
    assert_eq!(pair.b.get("vm.info").0, 404, "the backup went live");
    assert_eq!(ft_status(&pair.b)["failover_count"], 0);
}

#[test]
fn reboot_that_cannot_reprotect_says_unprotected_in_ft_status() {
    require!(kvm, netns);
    let mut pair = protected_pair("fou", "shared");
    // The backup dies, and the reboot comes before the primary's failure timeout notices: the
    // re-sync after the reboot finds nobody listening.
    pair.b.child.kill().expect("SIGKILL the backup");
    pair.b.wait_exit(T);
    pair.p.put_ok("vm.reboot", None);
    pair.p.serial().wait_count("tandem-guest: ready", 2, T);
    let s = wait_status(&pair.p, "UNPROTECTED in the reason", |s| {
        s["reason"].as_str().unwrap_or("").contains("UNPROTECTED")
    });
    assert_ne!(s["state"], "protected", "{s}");
    assert!(
        s["reason"]
            .as_str()
            .unwrap_or("")
            .contains("ft.enable failed"),
        "{s}"
    );
    // The rebooted guest serves, unprotected: its replies and disk writes are not held for a
    // checkpoint (none is taken: the count does not move), and the counter it read back from
    // the fresh disk starts at 1.
    let before = ft_status(&pair.p);
    let (seen, slowest) = pair
        .net
        .run_in(Node::Client, || {
            let mut c = CounterConn::connect(&format!("{GUEST_IP}:7000"), T).expect("connect");
            let mut slowest = Duration::ZERO;
            let seen: Vec<u64> = (0..20)
                .map(|_| {
                    let t = Instant::now();
                    let v = c.inc().expect("INC");
                    slowest = slowest.max(t.elapsed());
                    v
                })
                .collect();
            (seen, slowest)
        })
        .join()
        .expect("client thread");
    let after = ft_status(&pair.p);
    eprintln!(
        "[fou] 20 INCs unprotected, slowest {slowest:?}; checkpoints {} -> {}; {after}",
        before["checkpoint_count"], after["checkpoint_count"]
    );
    assert_eq!(seen, (1..=20).collect::<Vec<u64>>());
    assert_eq!(
        before["checkpoint_count"], after["checkpoint_count"],
        "replies waited for checkpoints: {before}\n{after}"
    );
    assert_eq!(wait_counter_on_disk(&pair.p_image, Some(20)), Some(20));
}
