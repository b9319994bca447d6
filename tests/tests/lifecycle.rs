//! VM lifecycle through the real API socket of a real `tandem` process, with the built-in guest
//! under KVM: boot, pause/resume, shutdown, guest power-off, reboot.

use std::time::{Duration, Instant};
use tandem_tests::guest::compute_samples;
use tandem_tests::{require, Tandem};

const T: Duration = Duration::from_secs(30);

#[test]
fn boots_to_ready_and_reports_running() {
    require!(kvm);
    let t = Tandem::start("boot");
    t.put_ok(
        "vm.create",
        Some(&t.builtin_config(1, 128, "workload=idle")),
    );
    assert_eq!(t.state(), "Created");
    t.put_ok("vm.boot", None);
    t.serial().wait_for("tandem-guest: ready", T);
    assert_eq!(t.state(), "Running");
    let (_, info) = t.get("vm.info");
    assert_eq!(info["config"]["cpus"]["boot_vcpus"], 1);
    assert_eq!(info["config"]["memory"]["size"], 128u64 << 20);
    let (s, c) = t.get("vm.counters");
    assert_eq!(s, 200);
    assert!(c["serial"]["tx_bytes"].as_u64().unwrap() > 0, "{c}");
    assert!(c["vcpu0"]["io_exits"].as_u64().unwrap() > 0, "{c}");
}

#[test]
fn pause_stops_the_compute_counter_and_resume_continues_it() {
    require!(kvm);
    let t = Tandem::start("pause");
    t.boot_builtin(1, 128, "workload=compute");
    let serial = t.serial();
    serial.wait_count("tandem-guest: compute", 2, T);

    t.put_ok("vm.pause", None);
    assert_eq!(t.state(), "Paused");
    let exits_before = t.get("vm.counters").1["vcpu0"]["exits"].clone();
    let lines_paused = serial.count("tandem-guest: compute");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        serial.count("tandem-guest: compute"),
        lines_paused,
        "the guest printed while paused"
    );
    assert_eq!(t.get("vm.counters").1["vcpu0"]["exits"], exits_before);
    // Pausing twice is a state error, not a crash.
    assert_eq!(t.put("vm.pause", None).0, 409);

    t.put_ok("vm.resume", None);
    assert_eq!(t.state(), "Running");
    serial.wait_count("tandem-guest: compute", lines_paused + 2, T);
    let samples = compute_samples(&serial.text());
    assert!(
        samples.iter().all(|&(cpu, n)| cpu == 0 && n > 0),
        "{samples:?}"
    );
}

#[test]
fn two_vcpus_both_report() {
    require!(kvm);
    let t = Tandem::start("smp");
    t.boot_builtin(2, 128, "workload=compute");
    let serial = t.serial();
    serial.wait_for("tandem-guest: cpu 0 online", T);
    serial.wait_for("tandem-guest: cpu 1 online", T);
    assert!(serial.text().contains("tandem-guest: boot cpus=2"));
    serial.wait_count("tandem-guest: compute", 4, T);
    let samples = compute_samples(&serial.text());
    for cpu in [0, 1] {
        assert!(
            samples.iter().any(|&(c, n)| c == cpu && n > 0),
            "no compute from cpu {cpu}: {samples:?}"
        );
    }
    let (_, c) = t.get("vm.counters");
    assert!(c["vcpu1"]["exits"].as_u64().unwrap() > 0, "{c}");
}

#[test]
fn shutdown_then_vmm_shutdown_end_cleanly() {
    require!(kvm);
    let mut t = Tandem::start("shutdown");
    t.boot_builtin(1, 64, "workload=idle");
    t.put_ok("vm.shutdown", None);
    assert_eq!(t.state(), "Shutdown");
    assert!(
        t.thread_cpu_time("tandem_vcpu0").is_none(),
        "vCPU thread still there"
    );
    // The config stays: the same VM boots again.
    t.put_ok("vm.boot", None);
    t.serial().wait_count("tandem-guest: ready", 2, T);
    t.put_ok("vm.delete", None);
    assert_eq!(t.get("vm.info").0, 404);
    t.put_ok("vmm.shutdown", None);
    let status = t.wait_exit(T);
    assert!(status.success(), "{status:?}");
    assert!(!t.socket.exists(), "socket left behind");
}

#[test]
fn guest_power_off_ends_the_vm() {
    require!(kvm);
    let t = Tandem::start("poweroff");
    t.boot_builtin(1, 64, "workload=poweroff");
    t.wait_state("Shutdown", T);
    assert!(t.serial().text().contains("tandem-guest: poweroff"));
    // The VMM itself stays up to report it, and can boot the VM again.
    assert_eq!(t.get("vmm.ping").0, 200);
}

#[test]
fn guest_power_off_exits_a_vmm_started_from_flags() {
    require!(kvm);
    let dir = tandem_tests::TempDir::new("flags");
    let serial = dir.path("serial.log");
    let out = std::process::Command::new(tandem_tests::tandem_bin())
        .args([
            "--cpus",
            "2",
            "--memory",
            "64M",
            "--cmdline",
            "workload=poweroff",
        ])
        .arg("--serial")
        .arg(format!("file={}", serial.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let console = std::fs::read_to_string(&serial).unwrap();
    assert!(console.contains("tandem-guest: ready"), "{console}");
    assert!(console.contains("tandem-guest: cpu 1 online"), "{console}");
}

#[test]
fn api_reboot_comes_back_to_ready() {
    require!(kvm);
    let t = Tandem::start("reboot");
    t.boot_builtin(2, 64, "workload=idle");
    t.put_ok("vm.reboot", None);
    t.serial().wait_count("tandem-guest: ready", 2, T);
    assert_eq!(t.state(), "Running");
    // Rebooting a paused VM works too and leaves it running.
    t.put_ok("vm.pause", None);
    t.put_ok("vm.reboot", None);
    t.serial().wait_count("tandem-guest: ready", 3, T);
    assert_eq!(t.state(), "Running");
}

#[test]
fn guest_reset_reboots_the_vm() {
    require!(kvm);
    let t = Tandem::start("guest-reset");
    // The `reboot` workload resets through the i8042 every boot, so the VM keeps coming back.
    t.boot_builtin(1, 64, "workload=reboot");
    t.serial().wait_count("tandem-guest: ready", 3, T);
    assert_eq!(t.state(), "Running");
    t.put_ok("vm.shutdown", None);
}

#[test]
fn idle_guest_costs_little_cpu() {
    require!(kvm);
    let t = Tandem::start("idle");
    t.boot_builtin(1, 64, "workload=idle");
    // Let boot work settle, then measure CPU time, not wall time, over a window.
    std::thread::sleep(Duration::from_millis(500));
    let window = Duration::from_secs(3);
    let before = t.thread_cpu_time("tandem_vcpu0").unwrap();
    std::thread::sleep(window);
    let used = t.thread_cpu_time("tandem_vcpu0").unwrap() - before;
    let share = used.as_secs_f64() / window.as_secs_f64();
    eprintln!(
        "idle vCPU thread used {used:?} in {window:?} ({:.2}% of a core)",
        share * 100.0
    );
    assert!(
        share < 0.05,
        "idle vCPU used {:.1}% of a core",
        share * 100.0
    );
}

#[test]
fn guest_triggered_log_messages_are_rate_limited() {
    require!(kvm);
    let dir = tandem_tests::TempDir::new("ratelimit");
    let log = dir.path("tandem.log");
    let t = Tandem::start_with_args("ratelimit", &["--log-file", log.to_str().unwrap()]);
    // The guest resets the machine every boot: one log line per reset without a limit. The
    // limit lets BURST lines through per window; over `elapsed` the resets can span at most
    // elapsed / WINDOW + 2 windows. Boot until more resets happened than that lets through
    // (25 boots on an idle host, more on a loaded one), so some must have been dropped.
    let allowed = |elapsed: Duration| BURST * (elapsed.as_secs() / WINDOW_S + 2) as usize;
    let booted = Instant::now();
    t.boot_builtin(1, 64, "workload=reboot");
    let boots = |t: &Tandem| t.serial().text().matches("tandem-guest: ready").count();
    while boots(&t) <= allowed(booted.elapsed()) + 5 {
        // A host that boots the guest less than once a second cannot show the limit.
        let deadline = Duration::from_secs(120);
        assert!(
            booted.elapsed() < deadline,
            "only {} boots in {deadline:?}",
            boots(&t)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    t.put_ok("vm.shutdown", None);
    let (elapsed, boots) = (booted.elapsed(), boots(&t));
    let text = std::fs::read_to_string(&log).unwrap();
    let resets = text.matches("guest requested a reset").count();
    eprintln!("{boots} boots in {elapsed:?}: {resets} reset lines logged");
    assert!(
        (1..=allowed(elapsed)).contains(&resets) && resets + 1 < boots,
        "{resets} reset lines for {boots} boots in {elapsed:?}:\n{text}"
    );
}

/// The per-call-site burst of guest-triggered messages (devices::ratelimit::BURST).
const BURST: usize = 10;
/// Its window in seconds (devices::ratelimit::WINDOW).
const WINDOW_S: u64 = 10;
