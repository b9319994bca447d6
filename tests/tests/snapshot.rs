//! Snapshot and restore through the API of real `tandem` processes with the built-in guest:
//! the guest goes on in a new process where it stopped, and bad calls get clear 4xx errors.

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tandem_tests::client::CounterConn;
use tandem_tests::guest::compute_samples;
use tandem_tests::net::{Node, TestNet};
use tandem_tests::{require, Tandem, TempDir};

const T: Duration = Duration::from_secs(60);

fn url(dir: &TempDir) -> String {
    format!("file://{}", dir.0.display())
}

/// Pauses `t`'s VM and snapshots it into `dir`; returns how long the snapshot call took.
fn pause_and_snapshot(t: &Tandem, dir: &TempDir) -> Duration {
    t.put_ok("vm.pause", None);
    let start = Instant::now();
    t.put_ok("vm.snapshot", Some(&json!({"destination_url": url(dir)})));
    start.elapsed()
}

/// A restore body that sends the console to `t`'s own serial file.
fn restore_body(t: &Tandem, dir: &TempDir, resume: bool) -> Value {
    json!({
        "source_url": url(dir),
        "resume": resume,
        "serial": {"mode": "File", "file": t.serial_path},
    })
}

#[test]
fn compute_on_two_vcpus_continues_in_a_new_process() {
    require!(kvm);
    let snap = TempDir::new("snap-compute");
    {
        let t = Tandem::start("snap-src");
        t.boot_builtin(2, 128, "workload=compute");
        t.serial().wait_count("tandem-guest: compute", 4, T);
        let took = pause_and_snapshot(&t, &snap);
        eprintln!("snapshot of a 128 MiB, 2-vCPU guest: {took:?}");
        t.put_ok("vmm.shutdown", None);
    }
    for f in ["config.json", "state.bin", "memory.bin"] {
        assert!(snap.path(f).exists(), "{f} missing");
    }
    let t = Tandem::start("snap-dst");
    let start = Instant::now();
    t.put_ok("vm.restore", Some(&restore_body(&t, &snap, true)));
    eprintln!("restore with resume: {:?}", start.elapsed());
    assert_eq!(t.state(), "Running");
    // New lines from both vCPUs in the new process's console; no second boot.
    let serial = t.serial();
    serial.wait_count("tandem-guest: compute", 6, T);
    let samples = compute_samples(&serial.text());
    for cpu in [0, 1] {
        assert!(
            samples.iter().any(|&(c, n)| c == cpu && n > 0),
            "no compute from cpu {cpu} after restore: {samples:?}"
        );
    }
    assert!(
        !serial.text().contains("tandem-guest: boot"),
        "the guest booted again instead of continuing:\n{}",
        serial.text()
    );
    // The restored VM behaves like any other: pause, resume, shut down.
    t.put_ok("vm.pause", None);
    t.put_ok("vm.resume", None);
    t.put_ok("vm.shutdown", None);
}

#[test]
fn dirty_workload_restores_paused_and_runs_on_resume() {
    require!(kvm);
    let snap = TempDir::new("snap-dirty");
    {
        let t = Tandem::start("snap-dirty-src");
        t.boot_builtin(1, 128, "workload=dirty:16:5000");
        t.serial().wait_count("tandem-guest: dirty", 2, T);
        pause_and_snapshot(&t, &snap);
    }
    let t = Tandem::start("snap-dirty-dst");
    t.put_ok("vm.restore", Some(&restore_body(&t, &snap, false)));
    assert_eq!(t.state(), "Paused");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        t.serial().count("tandem-guest: dirty"),
        0,
        "ran while paused"
    );
    t.put_ok("vm.resume", None);
    assert_eq!(t.state(), "Running");
    t.serial().wait_count("tandem-guest: dirty", 2, T);
    let (s, c) = t.get("vm.counters");
    assert_eq!(s, 200, "{c}");
}

/// How many snapshots the port I/O test takes: each lands mid-access with some chance, and
/// every one restored must come out whole.
const IO_SNAPSHOTS: u64 = 40;

/// A pause often finds vCPU 0 between a port access's exit and the KVM_RUN that completes it
/// (the `loopback` workload does little else). KVM finishes such an access, and moves the guest
/// past the instruction, only on the next KVM_RUN, so state saved before it points at the
/// instruction again: unless the VMM completes it before saving, the restored guest reads a
/// byte the device has already handed over (an IN) or writes one twice (an OUT, where KVM
/// takes the fast path). The guest counts every byte that does not come back as written.
#[test]
fn a_snapshot_taken_during_port_io_continues_without_losing_or_repeating_it() {
    require!(kvm);
    let src = Tandem::start("snap-io-src");
    src.boot_builtin(1, 128, "workload=loopback");
    src.serial().wait_count("tandem-guest: loopback", 2, T);
    let mut snaps = Vec::new();
    for i in 0..IO_SNAPSHOTS {
        let dir = TempDir::new(&format!("snap-io-{i}"));
        pause_and_snapshot(&src, &dir);
        src.put_ok("vm.resume", None);
        std::thread::sleep(Duration::from_millis(5 + 3 * (i % 7)));
        snaps.push(dir);
    }
    src.serial().wait_count("tandem-guest: loopback", 4, T);
    assert_eq!(loopback_wrong(&src.serial().text()), 0, "the source itself");
    src.put_ok("vmm.shutdown", None);
    let mut bad = Vec::new();
    for (i, dir) in snaps.iter().enumerate() {
        let t = Tandem::start(&format!("snap-io-dst{i}"));
        t.put_ok("vm.restore", Some(&restore_body(&t, dir, true)));
        t.serial().wait_count("tandem-guest: loopback", 1, T);
        let wrong = loopback_wrong(&t.serial().text());
        if wrong > 0 {
            bad.push((i, wrong));
        }
        t.put_ok("vmm.shutdown", None);
    }
    assert!(
        bad.is_empty(),
        "restored guests lost or doubled port I/O (snapshot, bytes wrong): {bad:?} of {IO_SNAPSHOTS}"
    );
}

/// The `W` of the last `tandem-guest: loopback N bytes, W wrong` line (0 when none).
fn loopback_wrong(console: &str) -> u64 {
    console
        .lines()
        .filter_map(|l| l.strip_prefix("tandem-guest: loopback "))
        .filter_map(|l| l.split(", ").nth(1)?.strip_suffix(" wrong")?.parse().ok())
        .next_back()
        .unwrap_or(0)
}

fn error_text(body: &Value) -> String {
    body["error"].to_string()
}

#[test]
fn wrong_state_bad_url_and_corrupt_state_are_refused() {
    require!(kvm);
    let snap = TempDir::new("snap-errors");
    let t = Tandem::start("snap-errors");
    // No VM at all.
    let (s, b) = t.put("vm.snapshot", Some(&json!({"destination_url": url(&snap)})));
    assert_eq!(s, 404, "{b}");
    t.boot_builtin(1, 128, "workload=idle");
    // Running: must be paused first.
    let (s, b) = t.put("vm.snapshot", Some(&json!({"destination_url": url(&snap)})));
    assert_eq!(s, 409, "{b}");
    assert!(error_text(&b).contains("Running"), "{b}");
    t.put_ok("vm.pause", None);
    for (bad, want) in [
        ("http://host/x", "file://"),
        ("file://relative/dir", "file://"),
        ("file:///nonexistent/tandem-snapshot-dir", "nonexistent"),
    ] {
        let (s, b) = t.put("vm.snapshot", Some(&json!({"destination_url": bad})));
        assert_eq!(s, 400, "{bad}: {b}");
        assert!(error_text(&b).contains(want), "{bad}: {b}");
    }
    t.put_ok("vm.snapshot", Some(&json!({"destination_url": url(&snap)})));
    // A VM exists: restore is a conflict.
    let (s, b) = t.put("vm.restore", Some(&restore_body(&t, &snap, false)));
    assert_eq!(s, 409, "{b}");

    let fresh = Tandem::start("snap-errors-2");
    // One flipped bit in the state file: the checksum says so, and nothing is created.
    let state = snap.path("state.bin");
    let mut bytes = std::fs::read(&state).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&state, &bytes).unwrap();
    let (s, b) = fresh.put("vm.restore", Some(&restore_body(&fresh, &snap, true)));
    assert_eq!(s, 400, "{b}");
    assert!(error_text(&b).contains("checksum"), "{b}");
    // Truncated and wrong version are named too.
    bytes[last] ^= 1;
    std::fs::write(&state, &bytes[..bytes.len() / 2]).unwrap();
    let (s, b) = fresh.put("vm.restore", Some(&restore_body(&fresh, &snap, true)));
    assert_eq!(s, 400, "{b}");
    assert!(error_text(&b).contains("truncated"), "{b}");
    let mut v = bytes.clone();
    v[8] = 99;
    std::fs::write(&state, &v).unwrap();
    let (s, b) = fresh.put("vm.restore", Some(&restore_body(&fresh, &snap, true)));
    assert_eq!(s, 400, "{b}");
    assert!(error_text(&b).contains("version 99"), "{b}");
    // A missing directory and an unknown NIC override.
    let (s, b) = fresh.put(
        "vm.restore",
        Some(&json!({"source_url": "file:///nonexistent/tandem-snapshot-dir"})),
    );
    assert_eq!(s, 400, "{b}");
    std::fs::write(&state, &bytes).unwrap();
    let (s, b) = fresh.put(
        "vm.restore",
        Some(&json!({"source_url": url(&snap), "net": [{"id": "nope", "tap": "tap9"}]})),
    );
    assert_eq!(s, 400, "{b}");
    assert!(error_text(&b).contains("nope"), "{b}");
    assert_eq!(fresh.get("vm.info").0, 404, "a failed restore left a VM");
    // The intact snapshot still restores.
    fresh.put_ok("vm.restore", Some(&restore_body(&fresh, &snap, true)));
    assert_eq!(fresh.state(), "Running");
}

#[test]
fn counter_service_continues_after_restore_in_a_new_process() {
    require!(kvm);
    require!(netns);
    const IP: &str = "10.77.0.2";
    let net = TestNet::up("snp");
    net.add_tap(Node::HostP, "tap0");
    let hp = net.ns(Node::HostP);
    let store = TempDir::new("snap-counter-disk");
    let image = store.path("counter.img");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    let snap = TempDir::new("snap-counter");
    let counter = |f: fn(&mut CounterConn) -> (u64, u64)| {
        net.run_in(Node::Client, move || {
            let mut c = CounterConn::connect(&format!("{IP}:7000"), T).expect("connect");
            f(&mut c)
        })
        .join()
        .expect("client thread")
    };
    {
        let t = Tandem::start_in_netns("snap-counter-src", &hp);
        t.boot_counter(128, IP, &image);
        let (_, last) = counter(|c| {
            for _ in 0..41 {
                c.inc().expect("INC");
            }
            (0, c.inc().expect("INC"))
        });
        assert_eq!(last, 42);
        eprintln!("counter at 42 before the snapshot");
        pause_and_snapshot(&t, &snap);
        t.put_ok("vmm.shutdown", None);
    }
    let t = Tandem::start_in_netns("snap-counter-dst", &hp);
    let mut body = restore_body(&t, &snap, true);
    body["net"] = json!([{"id": "nic0", "tap": "tap0"}]);
    body["disks"] = json!([{"id": "disk0", "path": image}]);
    t.put_ok("vm.restore", Some(&body));
    let (get, inc) = counter(|c| (c.get().expect("GET"), c.inc().expect("INC")));
    assert_eq!((get, inc), (42, 43));
    assert!(
        !t.serial().text().contains("tandem-guest: ready"),
        "the guest booted again"
    );
}

/// Snapshot time of an idle 1 GiB guest: zero pages are skipped, so it is not the time to write
/// 1 GiB. Printed for the record; the bound only catches a pathological regression.
#[test]
fn idle_one_gib_guest_snapshots_sparsely() {
    require!(kvm);
    let snap = TempDir::new("snap-1g");
    let t = Tandem::start("snap-1g");
    t.boot_builtin(1, 1024, "workload=idle");
    let took = pause_and_snapshot(&t, &snap);
    let meta = std::fs::metadata(snap.path("memory.bin")).unwrap();
    use std::os::unix::fs::MetadataExt;
    let on_disk = meta.blocks() * 512;
    eprintln!(
        "1 GiB idle snapshot: {took:?}, memory.bin {} bytes, {} on disk",
        meta.len(),
        on_disk
    );
    assert_eq!(meta.len(), 1 << 30);
    assert!(on_disk < 64 << 20, "memory.bin is not sparse: {on_disk}");
    assert!(took < Duration::from_secs(30), "{took:?}");
    t.put_ok("vmm.shutdown", None);
    let t = Tandem::start("snap-1g-dst");
    let start = Instant::now();
    t.put_ok("vm.restore", Some(&restore_body(&t, &snap, true)));
    eprintln!("1 GiB idle restore: {:?}", start.elapsed());
    assert_eq!(t.state(), "Running");
}
