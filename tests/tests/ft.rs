//! Fault tolerance between two real `tandem` processes in two host namespaces on one LAN: the
//! replication stream over the host-to-host link, a counter guest, a client in its own namespace
//! on one TCP connection, and the primary killed with SIGKILL.

use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_tests::client::CounterConn;
use tandem_tests::net::{netns_available, Node, TestNet, HOST_B_LINK_IP};
use tandem_tests::{require_kvm, Tandem, TempDir};

const T: Duration = Duration::from_secs(60);
const GUEST_IP: &str = "10.77.0.2";
const FT_PORT: u16 = 7600;

fn skip(name: &str) -> bool {
    !tandem_tests::kvm_available(name) || !netns_available(name)
}

fn ft_status(t: &Tandem) -> Value {
    let (code, v) = t.get("ft.status");
    assert_eq!(code, 200, "ft.status: {v}");
    v
}

fn wait_ft(t: &Tandem, role: &str, state: &str, other: &Tandem) -> Duration {
    let start = Instant::now();
    loop {
        let s = ft_status(t);
        if s["role"] == role && s["state"] == state {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < T,
            "ft.status never {role}/{state}: {s}\nlog:\n{}\npeer log:\n{}",
            t.log(),
            other.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn primary_killed_backup_takes_over_and_the_connection_survives() {
    let name = "primary_killed_backup_takes_over_and_the_connection_survives";
    require_kvm!(name);
    if skip(name) {
        return;
    }
    let net = TestNet::up("ft");
    net.add_tap(Node::HostP, "tap0");
    net.add_tap(Node::HostB, "tap0");
    let mut p = Tandem::start_in_netns("ft-p", &net.ns(Node::HostP));
    let b = Tandem::start_in_netns("ft-b", &net.ns(Node::HostB));
    // Storage both hosts see: the shared disk and the arbiter's directory.
    let store = TempDir::new("ft-store");
    let image = store.path("counter.img");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    let arbiter = store.path("arbiter");
    std::fs::create_dir(&arbiter).unwrap();

    let mut cfg = p.builtin_config(1, 128, &format!("workload=counter ip={GUEST_IP}/24"));
    cfg["disks"] = json!([{"id": "disk0", "path": image}]);
    cfg["net"] = json!([{"id": "nic0", "tap": "tap0"}]);
    p.put_ok("vm.create", Some(&cfg));
    p.put_ok("vm.boot", None);
    p.serial().wait_for("tandem-guest: ready", T);

    assert_eq!(ft_status(&b)["role"], "standalone");
    let url = format!("tcp:{HOST_B_LINK_IP}:{FT_PORT}");
    b.put_ok(
        "ft.receive",
        Some(&json!({
            "listen": url,
            "disks": [{"id": "disk0", "path": image}],
            "net": [{"id": "nic0", "tap": "tap0"}],
            "serial": {"mode": "File", "file": b.serial_path},
            "arbiter": {"path": arbiter},
            "disk_mode": "shared",
            "failure_timeout_ms": 1000,
        })),
    );
    let enable = json!({
        "peer": url,
        "disk_mode": "shared",
        "arbiter": {"path": arbiter},
        "failure_timeout_ms": 1000,
    });
    p.put_ok("ft.enable", Some(&enable));
    let synced = wait_ft(&p, "primary", "protected", &b);
    wait_ft(&b, "backup", "protected", &p);
    eprintln!("protected after {synced:?}");

    // Wrong calls: a clear 409, nothing changed.
    assert_eq!(p.put("ft.enable", Some(&enable)).0, 409);
    assert_eq!(p.put("ft.promote", None).0, 409);
    let (code, err) = p.put("vm.pause", None);
    assert_eq!(code, 409, "{err}");
    assert!(err.to_string().contains("ft.disable first"), "{err}");
    assert_eq!(ft_status(&p)["state"], "protected");

    // One connection, INC after INC, across the failover.
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let client = net.run_in(Node::Client, move || {
        let mut c = CounterConn::connect(&format!("{GUEST_IP}:7000"), T).expect("connect");
        let mut seen = Vec::new();
        let mut slowest = Duration::ZERO;
        while !flag.load(Ordering::Relaxed) {
            let t0 = Instant::now();
            seen.push(c.inc().expect("INC across the failover"));
            slowest = slowest.max(t0.elapsed());
        }
        (seen, slowest)
    });
    std::thread::sleep(Duration::from_millis(1500));
    let checkpoints = ft_status(&p)["checkpoint_count"].clone();

    p.child.kill().expect("SIGKILL the primary");
    let killed = Instant::now();
    p.wait_exit(T);
    let took_over = {
        let start = Instant::now();
        loop {
            let s = ft_status(&b);
            if s["role"] == "primary" && s["state"] == "unprotected" {
                break start.elapsed();
            }
            assert!(
                s["state"] != "halted" && start.elapsed() < T,
                "the backup did not take over: {s}\nlog:\n{}",
                b.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    b.wait_state("Running", T);
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let (seen, slowest) = client.join().expect("client thread");
    eprintln!(
        "{} INCs; primary had taken {checkpoints} checkpoints; backup live {took_over:?} after \
         SIGKILL ({:?} to here); slowest INC {slowest:?}",
        seen.len(),
        killed.elapsed()
    );
    assert_eq!(ft_status(&b)["failover_count"], 1);
    assert!(
        !b.serial().text().contains("tandem-guest: boot"),
        "the guest rebooted"
    );
    // Every INC answered once, in order, none lost, never going back.
    for (i, v) in seen.iter().enumerate() {
        assert_eq!(*v, i as u64 + 1, "INC #{i} answered {v}; all: {seen:?}");
    }
}
