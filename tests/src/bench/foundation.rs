//! Foundation figures: boot time, API latency, the guest's compute rate beside the host's, idle CPU.

use super::{median, ms, percentile, us};
use crate::guest::compute_samples;
use crate::Tandem;
use std::time::{Duration, Instant};

/// Runs every foundation figure.
pub fn run() {
    boot_to_ready();
    api_latency();
    compute_ratio();
    idle_cpu();
}

fn boot_to_ready() {
    let t = Tandem::start("bench-boot");
    t.put_ok(
        "vm.create",
        Some(&t.builtin_config(1, 128, "workload=idle")),
    );
    let mut times = Vec::new();
    for i in 1..=10 {
        let start = Instant::now();
        t.put_ok("vm.boot", None);
        t.serial()
            .wait_count("tandem-guest: ready", i, Duration::from_secs(60));
        times.push(start.elapsed());
        t.put_ok("vm.shutdown", None);
    }
    times.sort();
    println!(
        "boot -> ready (1 vCPU, 128 MiB, 10 boots): median {:.1} ms, min {:.1} ms, max {:.1} ms",
        ms(percentile(&times, 0.5)),
        ms(times[0]),
        ms(times[times.len() - 1])
    );
}

fn api_latency() {
    let t = Tandem::start("bench-api");
    let client = t.client();
    let mut times = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let start = Instant::now();
        client.get("vmm.ping").expect("ping");
        times.push(start.elapsed());
    }
    times.sort();
    println!(
        "API round trip (GET vmm.ping, 1000 calls, new connection each): p50 {:.0} us, p99 {:.0} us",
        us(percentile(&times, 0.5)),
        us(percentile(&times, 0.99))
    );
}

/// The guest's compute loop (resources/guest/src/workloads/compute.rs), run as a host process:
/// the same LCG step behind the same empty-asm barrier, the clock read every 65,536 iterations.
fn host_compute_rate(seconds: u32) -> Vec<u64> {
    let mut rates = Vec::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..seconds {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_secs(1) {
            for _ in 0..65_536 {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                // SAFETY: the asm is empty; it only hides `x` from the optimiser.
                unsafe {
                    std::arch::asm!("/* {x} */", x = inout(reg) x, options(nomem, nostack, preserves_flags))
                };
            }
            x = std::hint::black_box(x);
            n += 65_536;
        }
        rates.push(n);
    }
    rates
}

fn compute_ratio() {
    let t = Tandem::start("bench-compute");
    t.boot_builtin(1, 128, "workload=compute");
    // Skip the first sample (partial second), keep the next five.
    t.serial()
        .wait_count("tandem-guest: compute", 6, Duration::from_secs(60));
    let guest: Vec<u64> = compute_samples(&t.serial().text())
        .into_iter()
        .skip(1)
        .take(5)
        .map(|(_, n)| n)
        .collect();
    t.put_ok("vm.pause", None);
    let host = host_compute_rate(5);
    let (g, h) = (median(&guest), median(&host));
    println!(
        "compute (ring-3 loop): guest {:.1} M iter/s, host {:.1} M iter/s, guest/host {:.3}",
        g as f64 / 1e6,
        h as f64 / 1e6,
        g as f64 / h as f64
    );
}

fn idle_cpu() {
    let t = Tandem::start("bench-idle");
    t.boot_builtin(1, 128, "workload=idle");
    std::thread::sleep(Duration::from_millis(500));
    let window = Duration::from_secs(5);
    let before = t.thread_cpu_time("tandem_vcpu0").unwrap_or_default();
    std::thread::sleep(window);
    let used = t.thread_cpu_time("tandem_vcpu0").unwrap_or_default() - before;
    println!(
        "idle guest: vCPU thread used {:.1} ms CPU in {:.0} s ({:.2}% of a core)",
        ms(used),
        window.as_secs_f64(),
        used.as_secs_f64() / window.as_secs_f64() * 100.0
    );
}
