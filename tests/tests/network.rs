//! The built-in guest's services over real virtio devices, real taps and network namespaces:
//! a client in its own namespace talks to a guest whose VMM runs in host P's namespace.

use serde_json::{json, Value};
use std::time::Duration;
use tandem_tests::client::{counter_on_disk, CounterConn};
use tandem_tests::net::{Node, TestNet};
use tandem_tests::{require, Tandem, TempDir};

const T: Duration = Duration::from_secs(60);
const GUEST_IP: &str = "10.77.0.2";
const GUEST_IP2: &str = "10.77.0.3";

fn disk(dir: &TempDir, name: &str) -> std::path::PathBuf {
    let p = dir.path(name);
    std::fs::write(&p, vec![0u8; 1 << 20]).unwrap();
    p
}

fn counter_config(t: &Tandem, disks: &[&std::path::Path], taps: &[&str], ips: &str) -> Value {
    let mut cfg = t.builtin_config(1, 128, &format!("workload=counter ip={ips}"));
    cfg["disks"] = disks
        .iter()
        .enumerate()
        .map(|(i, p)| json!({"id": format!("disk{i}"), "path": p}))
        .collect();
    cfg["net"] = taps
        .iter()
        .enumerate()
        .map(|(i, tap)| json!({"id": format!("nic{i}"), "tap": tap}))
        .collect();
    cfg
}

/// Runs `f` with a counter connection from the client namespace.
fn with_counter<R: Send + 'static>(
    net: &TestNet,
    ip: &str,
    f: impl FnOnce(&mut CounterConn) -> R + Send + 'static,
) -> R {
    let addr = format!("{ip}:7000");
    net.run_in(Node::Client, move || {
        let mut c = CounterConn::connect(&addr, T).expect("connect to the counter");
        f(&mut c)
    })
    .join()
    .expect("client thread")
}

#[test]
fn thousand_incs_over_one_connection_persist_across_restarts() {
    require!(kvm, netns);
    let net = TestNet::up("cnt");
    net.add_tap(Node::HostP, "tap0");
    let hp = net.ns(Node::HostP);
    let store = TempDir::new("counter-disk");
    let image = disk(&store, "counter.img");
    {
        let t = Tandem::start_in_netns("counter", &hp);
        let cfg = counter_config(&t, &[&image], &["tap0"], &format!("{GUEST_IP}/24"));
        t.put_ok("vm.create", Some(&cfg));
        t.put_ok("vm.boot", None);
        t.serial().wait_for("tandem-guest: ready", T);

        let replies = with_counter(&net, GUEST_IP, |c| {
            (0..1000).map(|_| c.inc().expect("INC")).collect::<Vec<_>>()
        });
        assert_eq!(replies, (1..=1000).collect::<Vec<u64>>());
        assert_eq!(
            counter_on_disk(&image),
            Some(1000),
            "disk image after 1000 INC"
        );

        // A VM restart (rebuilt from its config) reads the value back from disk.
        t.put_ok("vm.reboot", None);
        t.serial().wait_count("tandem-guest: ready", 2, T);
        assert_eq!(
            with_counter(&net, GUEST_IP, |c| c.get().expect("GET")),
            1000
        );
        t.put_ok("vmm.shutdown", None);
    }
    // So does a new VMM process on the same disk.
    let t = Tandem::start_in_netns("counter2", &hp);
    let cfg = counter_config(&t, &[&image], &["tap0"], &format!("{GUEST_IP}/24"));
    t.put_ok("vm.create", Some(&cfg));
    t.put_ok("vm.boot", None);
    t.serial().wait_for("tandem-guest: ready", T);
    let (get, inc) = with_counter(&net, GUEST_IP, |c| (c.get().unwrap(), c.inc().unwrap()));
    assert_eq!((get, inc), (1000, 1001));
}

#[test]
fn two_nics_and_two_disks_work_at_once() {
    require!(kvm, netns);
    let net = TestNet::up("two");
    net.add_tap(Node::HostP, "tap0");
    net.add_tap(Node::HostP, "tap1");
    let t = Tandem::start_in_netns("two", &net.ns(Node::HostP));
    let (d0, d1) = (disk(&t.dir, "d0.img"), disk(&t.dir, "d1.img"));
    let cfg = counter_config(
        &t,
        &[&d0, &d1],
        &["tap0", "tap1"],
        &format!("{GUEST_IP}/24,{GUEST_IP2}/24"),
    );
    t.put_ok("vm.create", Some(&cfg));
    t.put_ok("vm.boot", None);
    t.serial().wait_for("tandem-guest: ready", T);
    let (_, info) = t.get("vm.info");
    assert_eq!(info["config"]["net"].as_array().unwrap().len(), 2);
    assert_eq!(info["config"]["disks"].as_array().unwrap().len(), 2);

    // One counter, reachable through either NIC; every INC lands on both disks.
    let (a, b) = net
        .run_in(Node::Client, move || {
            let mut a = CounterConn::connect(&format!("{GUEST_IP}:7000"), T).unwrap();
            let mut b = CounterConn::connect(&format!("{GUEST_IP2}:7000"), T).unwrap();
            let mut seen = (vec![], vec![]);
            for _ in 0..50 {
                seen.0.push(a.inc().unwrap());
                seen.1.push(b.inc().unwrap());
            }
            seen
        })
        .join()
        .unwrap();
    let mut all: Vec<u64> = a.into_iter().chain(b).collect();
    all.sort_unstable();
    assert_eq!(all, (1..=100).collect::<Vec<u64>>());
    assert_eq!(counter_on_disk(&d0), Some(100));
    assert_eq!(counter_on_disk(&d1), Some(100));
    let (_, c) = t.get("vm.counters");
    eprintln!("counters: {c}");
}
