//! Foundation benchmark: prints figures, asserts nothing. Run it with
//! `cargo run --release -p tandem-tests --bin tandem-bench` (needs /dev/kvm).
//!
//! * time from `vm.boot` to `tandem-guest: ready`, median of 10 boots;
//! * API round-trip latency (`GET vmm.ping`), p50/p99 over 1000 calls;
//! * the guest's ring-3 compute rate beside the same loop run as a host process, in one run;
//! * CPU used by an idle guest's vCPU thread;
//! * devices (root, test network): TCP round trip p50/p99 and TCP throughput client <-> guest echo,
//!   and disk write+flush rate through the guest's counter, each beside a host-only baseline
//!   (a host process on host P's LAN bridge; the same disk file written from the host) in one run.
//!
//! * migration (root, test network): for 256 MiB and 1 GiB guests, idle and under
//!   `dirty:64:20000`, live migration over the host-to-host link: downtime, total time, rounds and
//!   bytes sent.
//!
//! `tandem-bench [foundation|devices|migration]` runs one part; no argument runs all.

use std::time::{Duration, Instant};
use tandem_tests::guest::compute_samples;
use tandem_tests::Tandem;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
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
    let med = |v: &[u64]| {
        let mut s = v.to_vec();
        s.sort_unstable();
        s[s.len() / 2]
    };
    let (g, h) = (med(&guest), med(&host));
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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    if !tandem_tests::kvm_available("tandem-bench") {
        std::process::exit(2);
    }
    let part = std::env::args().nth(1).unwrap_or_default();
    println!(
        "tandem-bench, tandem at {}",
        tandem_tests::tandem_bin().display()
    );
    if part.is_empty() || part == "foundation" {
        boot_to_ready();
        api_latency();
        compute_ratio();
        idle_cpu();
    }
    if (part.is_empty() || part == "devices")
        && tandem_tests::net::netns_available("tandem-bench devices")
    {
        devices::run();
    }
    if (part.is_empty() || part == "migration")
        && tandem_tests::net::netns_available("tandem-bench migration")
    {
        migration::run();
    }
}

mod migration {
    //! Live migration figures from the source's own report.

    use serde_json::{json, Value};
    use std::time::{Duration, Instant};
    use tandem_tests::net::{Node, TestNet, HOST_B_LINK_IP};
    use tandem_tests::Tandem;

    fn secs(v: &Value) -> f64 {
        v["secs"].as_f64().unwrap_or(0.0) + v["nanos"].as_f64().unwrap_or(0.0) / 1e9
    }

    fn one(net: &TestNet, mem_mib: u64, workload: &str) -> Value {
        let p = Tandem::start_in_netns("bench-mig-p", &net.ns(Node::HostP));
        let b = Tandem::start_in_netns("bench-mig-b", &net.ns(Node::HostB));
        p.boot_builtin(1, mem_mib, &format!("workload={workload}"));
        // Let a dirtying guest reach its rate (and touch its working set) first.
        std::thread::sleep(Duration::from_secs(2));
        let url = format!("tcp:{HOST_B_LINK_IP}:7600");
        b.put_ok(
            "vm.receive-migration",
            Some(&json!({"receiver_url": url, "serial": {"mode": "Null"}})),
        );
        p.put_ok(
            "vm.send-migration",
            Some(&json!({"destination_url": url, "downtime_ms": 300})),
        );
        let start = Instant::now();
        loop {
            let i = p.get("vm.info").1;
            if i["state"] == "Migrated" {
                return i["migration"]["report"].clone();
            }
            if !i["migration"]["error"].is_null() || start.elapsed() > Duration::from_secs(300) {
                return json!({"error": i["migration"]["error"]});
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn run() {
        let net = TestNet::up("bmg");
        for mem in [256u64, 1024] {
            for workload in ["idle", "dirty:64:20000"] {
                let r = one(&net, mem, workload);
                if !r["error"].is_null() {
                    println!("migration {mem} MiB {workload}: FAILED {}", r["error"]);
                    continue;
                }
                println!(
                    "migration {mem:>4} MiB {workload:<15}: downtime {:.1} ms, total {:.0} ms, {} rounds ({}), {:.1} MiB sent",
                    secs(&r["downtime"]) * 1e3,
                    secs(&r["total_time"]) * 1e3,
                    r["rounds"],
                    r["stop_reason"].as_str().unwrap_or("?"),
                    r["bytes_sent"].as_f64().unwrap_or(0.0) / (1 << 20) as f64
                );
            }
        }
    }
}

mod devices {
    //! Network and disk figures beside host-only baselines.

    use super::{ms, percentile, us};
    use serde_json::json;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::unix::fs::FileExt;
    use std::time::{Duration, Instant};
    use tandem_tests::client::CounterConn;
    use tandem_tests::net::{Node, TestNet, HOST_P_LAN_IP};
    use tandem_tests::{Tandem, TempDir};

    const GUEST_IP: &str = "10.77.0.2";
    const ROUND_TRIPS: usize = 2000;
    const STREAM_BYTES: usize = 32 << 20;
    const DISK_OPS: usize = 1000;

    /// A host-side echo server on host P's LAN address (the baseline's far end).
    fn host_echo(net: &TestNet) {
        let (tx, rx) = std::sync::mpsc::channel();
        let _ = net.run_in(Node::HostP, move || {
            let l = TcpListener::bind((HOST_P_LAN_IP, 7001)).expect("bind host echo");
            tx.send(()).ok();
            for s in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut s = s;
                    let _ = s.set_nodelay(true);
                    let mut b = vec![0u8; 65536];
                    while let Ok(n) = s.read(&mut b) {
                        if n == 0 || s.write_all(&b[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        rx.recv().expect("host echo up");
    }

    /// Round trips of 64-byte messages, then a streamed echo of STREAM_BYTES, from the client.
    fn measure_echo(net: &TestNet, ip: &'static str) -> (Vec<Duration>, f64) {
        net.run_in(Node::Client, move || {
            let addr = format!("{ip}:7001");
            let start = Instant::now();
            let mut s = loop {
                match TcpStream::connect(&addr) {
                    Ok(s) => break s,
                    Err(e) if start.elapsed() > Duration::from_secs(30) => panic!("{addr}: {e}"),
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            };
            s.set_nodelay(true).expect("nodelay");
            let msg = [0x5au8; 64];
            let mut back = [0u8; 64];
            let mut rtts = Vec::with_capacity(ROUND_TRIPS);
            for _ in 0..ROUND_TRIPS {
                let t = Instant::now();
                s.write_all(&msg).expect("send");
                s.read_exact(&mut back).expect("echo");
                rtts.push(t.elapsed());
            }
            rtts.sort();
            let mut reader = s.try_clone().expect("clone");
            let t = Instant::now();
            let sender = std::thread::spawn(move || {
                let chunk = vec![0xa5u8; 64 << 10];
                let mut sent = 0;
                while sent < STREAM_BYTES {
                    s.write_all(&chunk).expect("stream");
                    sent += chunk.len();
                }
            });
            let mut buf = vec![0u8; 64 << 10];
            let mut got = 0;
            while got < STREAM_BYTES {
                let n = reader.read(&mut buf).expect("read stream");
                assert!(n > 0, "echo closed early");
                got += n;
            }
            sender.join().expect("sender");
            let mbps = STREAM_BYTES as f64 / t.elapsed().as_secs_f64() / 1e6;
            (rtts, mbps)
        })
        .join()
        .expect("client")
    }

    fn boot(net: &TestNet, workload: &str, disk: Option<&std::path::Path>) -> Tandem {
        let t = Tandem::start_in_netns("bench-dev", &net.ns(Node::HostP));
        let mut cfg = t.builtin_config(1, 128, &format!("workload={workload} ip={GUEST_IP}/24"));
        cfg["net"] = json!([{"id": "nic0", "tap": "tap0"}]);
        if let Some(d) = disk {
            cfg["disks"] = json!([{"id": "disk0", "path": d}]);
        }
        t.put_ok("vm.create", Some(&cfg));
        t.put_ok("vm.boot", None);
        t.serial()
            .wait_for("tandem-guest: ready", Duration::from_secs(60));
        t
    }

    pub fn run() {
        let net = TestNet::up("bch");
        net.add_tap(Node::HostP, "tap0");
        host_echo(&net);

        let (host_rtt, host_mbps) = measure_echo(&net, HOST_P_LAN_IP);
        let t = boot(&net, "echo", None);
        let (guest_rtt, guest_mbps) = measure_echo(&net, GUEST_IP);
        drop(t);
        for (what, p) in [("p50", 0.5), ("p99", 0.99)] {
            let (g, h) = (percentile(&guest_rtt, p), percentile(&host_rtt, p));
            println!(
                "TCP round trip {what} (64 B x {ROUND_TRIPS}, one connection): guest {:.0} us, host-only {:.0} us, guest/host {:.2}",
                us(g),
                us(h),
                g.as_secs_f64() / h.as_secs_f64()
            );
        }
        println!(
            "TCP echo throughput ({} MiB through, one connection): guest {guest_mbps:.1} MB/s, host-only {host_mbps:.1} MB/s, guest/host {:.3}",
            STREAM_BYTES >> 20,
            guest_mbps / host_mbps
        );

        // Disk: each INC is a sector write plus a flush (fdatasync) in the guest.
        let dir = TempDir::new("bench-disk");
        let image = dir.path("disk.img");
        std::fs::write(&image, vec![0u8; 1 << 20]).expect("disk image");
        let t = boot(&net, "counter", Some(&image));
        let guest = net
            .run_in(Node::Client, move || {
                let addr = format!("{GUEST_IP}:7000");
                let mut c = CounterConn::connect(&addr, Duration::from_secs(30)).expect("connect");
                let t = Instant::now();
                for _ in 0..DISK_OPS {
                    c.inc().expect("INC");
                }
                t.elapsed()
            })
            .join()
            .expect("client");
        drop(t);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&image)
            .expect("open image");
        let sector = [0x11u8; 512];
        let t = Instant::now();
        for _ in 0..DISK_OPS {
            f.write_all_at(&sector, 0).expect("write");
            f.sync_data().expect("fdatasync");
        }
        let host = t.elapsed();
        println!(
            "disk write+flush ({DISK_OPS} x 512 B + fdatasync): guest counter {:.0} ops/s ({:.2} ms each, TCP round trip included), host-only {:.0} ops/s, guest/host {:.3}",
            DISK_OPS as f64 / guest.as_secs_f64(),
            ms(guest) / DISK_OPS as f64,
            DISK_OPS as f64 / host.as_secs_f64(),
            host.as_secs_f64() / guest.as_secs_f64()
        );
    }
}
