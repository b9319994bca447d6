//! A device worker that panics (a bug in a device model) breaks its device, not the process: the
//! panic is caught on the worker's thread, the device is marked DEVICE_NEEDS_RESET and the VMM
//! goes on answering and managing the VM. The panic is injected with the test-only
//! `TANDEM_TEST_WORKER_PANIC=<worker thread name>`, which makes that worker panic the first time
//! it wakes for work (here: the guest's first read of its disk).

use serde_json::json;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};
use tandem_tests::net::{Node, TestNet};
use tandem_tests::{require, Tandem};

#[test]
fn a_disk_worker_that_panics_leaves_the_vmm_up() {
    require!(kvm, netns);
    // Inherited by `ip netns exec` and tandem; nextest runs each test in its own process.
    std::env::set_var("TANDEM_TEST_WORKER_PANIC", "tandem_blk_disk0");
    let net = TestNet::up("wpanic");
    net.add_tap(Node::HostP, "tap0");
    let mut t = Tandem::start_in_netns("worker-panic", &net.ns(Node::HostP));
    let disk = t.dir.path("d0.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    // The counter reads its disk as it starts: that wakes the worker, which panics.
    let mut cfg = t.builtin_config(1, 128, "workload=counter ip=10.77.0.2/24");
    cfg["disks"] = json!([{"id": "disk0", "path": disk}]);
    cfg["net"] = json!([{"id": "nic0", "tap": "tap0"}]);
    t.put_ok("vm.create", Some(&cfg));
    t.put_ok("vm.boot", None);

    let start = Instant::now();
    while !t.log().contains("device worker panicked") {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the worker never panicked; log:\n{}",
            t.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = t.log();
    assert!(
        log.contains("tandem_blk_disk0: device worker panicked")
            && log.contains("the device needs a reset"),
        "{log}"
    );

    // The VMM is up and still manages the VM: it answers, pauses (finding no worker to park, the
    // device stays stopped) and resumes it, and shuts it down cleanly.
    // Operators see it in the metrics too.
    let metrics = get_metrics(&t.socket);
    assert!(
        metrics.contains("\ntandem_device_worker_panics_total 1\n"),
        "{metrics}"
    );
    let (status, info) = t.get("vm.info");
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["state"], "Running", "{info}");
    t.put_ok("vm.pause", None);
    t.put_ok("vm.resume", None);
    t.put_ok("vm.shutdown", None);
    t.put_ok("vmm.shutdown", None);
    let start = Instant::now();
    let code = loop {
        if let Some(s) = t.child.try_wait().expect("wait") {
            break s.code();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "tandem did not exit"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, Some(0));
}

/// `GET /api/v1/metrics` on the API socket: the whole HTTP answer, as text.
fn get_metrics(socket: &Path) -> String {
    let mut s = UnixStream::connect(socket).expect("connect to the API socket");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /api/v1/metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read the answer");
    out
}
