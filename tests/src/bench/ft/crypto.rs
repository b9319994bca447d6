//! `tandem-bench ft-crypto`: what encrypting the stream costs, each figure without a key and
//! with one, in alternating rounds so that the load of a shared host falls on both alike:
//! * records: AES-256-GCM sealing and opening of 64 KiB records on one core (in process), per
//!   CPU-second of the thread (so that a loaded host does not halve it);
//! * link: bytes pushed through the real transport and handshake (and records, when keyed) from
//!   host P to host B over the host-to-host veth: MB/s, and CPU seconds per GB of the sending
//!   and receiving threads together (what a loaded host cannot hide);
//! * migration: a 256 MiB guest under `dirty:64:20000` live-migrated over that link: downtime,
//!   total time, stream bytes and rate;
//! * checkpoints: an FT pair of the same guest: time to protected (the initial sync), guest pause
//!   per checkpoint p50/p99, checkpoint rate and link bytes per second.
//!
//! `--quick` (the smoke test) takes small sizes, one round and an idle 64 MiB guest.

use super::pair::link_tx_bytes;
use crate::bench::ms;
use crate::ft::{ft_status, wait_ft, FT_PORT};
use crate::ft_pair::write_key;
use crate::net::{Node, TestNet, HOST_B_LINK_IP};
use crate::{Tandem, TempDir};
use ft::auth::{handshake, Opener, PairKey, Purpose, Sealer, Side, MAX_RECORD};
use ft::transport::{connect, Endpoint, Listener};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(120);
const LINK_PORT: u16 = 7690;
const MIGRATION_PORT: u16 = 7691;

/// How much of each figure to take.
struct Sizes {
    record_mib: usize,
    link_mib: usize,
    rounds: usize,
    window: Duration,
    /// Guest RAM for the migration and the pair, MiB.
    mem_mib: u64,
    /// Their workload.
    workload: &'static str,
}

/// Runs every figure; `quick` takes small sizes and one round (the smoke test runs it).
pub fn run(quick: bool) {
    let z = if quick {
        Sizes {
            record_mib: 4,
            link_mib: 16,
            rounds: 1,
            window: Duration::from_secs(1),
            mem_mib: 64,
            workload: "idle",
        }
    } else {
        Sizes {
            record_mib: 256,
            link_mib: 512,
            rounds: 3,
            window: Duration::from_secs(5),
            mem_mib: 256,
            workload: "dirty:64:20000",
        }
    };
    println!(
        "ft-crypto: keyed streams are AES-256-GCM records (ring) under HKDF-SHA256 keys; \
         each figure without a key, then with one, {} alternating round(s){}",
        z.rounds,
        if quick { " (quick)" } else { "" }
    );
    records(&z);
    let net = TestNet::up("bcr");
    let store = TempDir::new("bench-crypto");
    let key = store.path("ft.key");
    write_key(&key, 32, 0o600);
    link(&net, &key, &z);
    migration(&net, &key, &z);
    checkpoints(&net, &key, &z);
}

/// CPU time this thread has used.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`, which we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn mb_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64().max(1e-9) / 1e6
}

/// "a / b / c (median m)" of per-round figures, or the one figure.
fn series(v: &[f64], digits: usize) -> String {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let all: Vec<String> = v.iter().map(|x| format!("{x:.digits$}")).collect();
    match s.len() {
        1 => all.join(""),
        n => format!("{} (median {:.digits$})", all.join(" / "), s[n / 2]),
    }
}

/// Sealing and opening 64 KiB records in this process, as a stream connection does (sealed into
/// a reused buffer; opened in place and copied out), per CPU-second of this thread.
fn records(z: &Sizes) {
    let n = z.record_mib * (1 << 20) / MAX_RECORD;
    let data = vec![0xa5u8; MAX_RECORD];
    let (mut seal, mut open) = (Vec::new(), Vec::new());
    for _ in 0..z.rounds {
        let mut sealer = Sealer::new([7; 32]);
        let mut out = Vec::with_capacity(MAX_RECORD + 64);
        let t = thread_cpu();
        for _ in 0..n {
            out.clear();
            sealer.seal(&data, &mut out).expect("seal");
        }
        seal.push(mb_s((n * MAX_RECORD) as u64, thread_cpu() - t));
        // The stream to open, sealed beforehand (not timed).
        let mut sealer = Sealer::new([7; 32]);
        let mut wire = Vec::with_capacity(n * (MAX_RECORD + 32));
        for _ in 0..n {
            sealer.seal(&data, &mut wire).expect("seal");
        }
        let mut opener = Opener::new([7; 32]);
        let mut src = std::io::Cursor::new(wire);
        let mut plain = vec![0u8; 1 << 20];
        let t = thread_cpu();
        let mut got = 0;
        loop {
            match opener.read_into(&mut plain).expect("open") {
                0 if opener.fill(&mut src).expect("fill") == 0 => break,
                k => got += k,
            }
        }
        open.push(mb_s(got as u64, thread_cpu() - t));
        assert_eq!(got, n * MAX_RECORD);
    }
    println!(
        "ft-crypto: records of 64 KiB: seal {} MB per CPU-second, open {} MB per CPU-second",
        series(&seal, 0),
        series(&open, 0)
    );
}

/// One transfer of `mib` MiB from host P to host B through the handshake (and records when
/// keyed): (MB/s as the receiver counts them, CPU seconds per GB of both threads).
fn transfer(net: &TestNet, key: Option<PairKey>, mib: usize) -> (f64, f64) {
    let ep: Endpoint = format!("tcp:{HOST_B_LINK_IP}:{LINK_PORT}")
        .parse()
        .expect("endpoint");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let rkey = key.clone();
    let lep = ep.clone();
    let receiver = net.run_in(Node::HostB, move || {
        let l = Listener::bind(&lep).expect("listen on host B");
        let _ = ready_tx.send(());
        let c = l.accept(Some(T)).expect("accept");
        let (mut c, _) =
            handshake(c, rkey.as_ref(), Side::Responder, Purpose::Migration, T).expect("handshake");
        let mut buf = vec![0u8; 1 << 20];
        let (mut got, mut first) = (0u64, None);
        let cpu = thread_cpu();
        loop {
            match c.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    first.get_or_insert_with(Instant::now);
                    got += n as u64;
                }
                Err(e) => panic!("receive: {e}"),
            }
        }
        let took = first.map(|f| f.elapsed()).unwrap_or_default();
        (got, took, thread_cpu() - cpu)
    });
    ready_rx.recv().expect("receiver ready");
    let sender = net.run_in(Node::HostP, move || {
        let cpu = thread_cpu();
        let c = connect(&ep, T).expect("connect");
        let (mut c, _) =
            handshake(c, key.as_ref(), Side::Initiator, Purpose::Migration, T).expect("handshake");
        // Not all one value: a constant page would flatter nothing here, but be honest anyway.
        let chunk: Vec<u8> = (0..1 << 20)
            .map(|i: u32| (i.wrapping_mul(2654435761) >> 24) as u8)
            .collect();
        for _ in 0..mib {
            c.write_all(&chunk).expect("send");
        }
        c.shutdown(std::net::Shutdown::Write).expect("shutdown");
        thread_cpu() - cpu
    });
    let sent_cpu = sender.join().expect("sender");
    let (got, took, recv_cpu) = receiver.join().expect("receiver");
    assert_eq!(got, (mib as u64) << 20);
    let cpu_per_gb = (sent_cpu + recv_cpu).as_secs_f64() / (got as f64 / 1e9);
    (mb_s(got, took), cpu_per_gb)
}

/// The link: the same bytes without and with a key.
fn link(net: &TestNet, key_path: &Path, z: &Sizes) {
    let key = PairKey::load(key_path).expect("key");
    let (mut plain, mut keyed) = (Vec::new(), Vec::new());
    for _ in 0..z.rounds {
        plain.push(transfer(net, None, z.link_mib));
        keyed.push(transfer(net, Some(key.clone()), z.link_mib));
    }
    let col = |v: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| v.iter().map(f).collect::<Vec<_>>();
    println!(
        "ft-crypto: link throughput, {} MiB host P -> host B per run: no key {} MB/s ({} CPU-s/GB), \
         key {} MB/s ({} CPU-s/GB)",
        z.link_mib,
        series(&col(&plain, |x| x.0), 0),
        series(&col(&plain, |x| x.1), 2),
        series(&col(&keyed, |x| x.0), 0),
        series(&col(&keyed, |x| x.1), 2)
    );
}

fn secs(v: &Value) -> f64 {
    v["secs"].as_f64().unwrap_or(0.0) + v["nanos"].as_f64().unwrap_or(0.0) / 1e9
}

/// Adds the key to a body, or `insecure` to a keyless listener's.
fn with_key(body: &mut Value, key: Option<&Path>, listener: bool) {
    match key {
        Some(k) => body["key"] = json!({ "path": k }),
        None if listener => body["insecure"] = json!(true),
        None => {}
    }
}

/// One migration of the guest `z` says; the source's report.
fn migrate_once(net: &TestNet, key: Option<&Path>, z: &Sizes) -> Value {
    let p = Tandem::start_in_netns("bench-crypto-mp", &net.ns(Node::HostP));
    let b = Tandem::start_in_netns("bench-crypto-mb", &net.ns(Node::HostB));
    p.boot_builtin(1, z.mem_mib, &format!("workload={}", z.workload));
    // Let it touch its working set first.
    std::thread::sleep(Duration::from_secs(2));
    let url = format!("tcp:{HOST_B_LINK_IP}:{MIGRATION_PORT}");
    let mut recv = json!({"receiver_url": url, "serial": {"mode": "Null"}});
    with_key(&mut recv, key, true);
    b.put_ok("vm.receive-migration", Some(&recv));
    let mut send = json!({"destination_url": url, "downtime_ms": 300});
    with_key(&mut send, key, false);
    p.put_ok("vm.send-migration", Some(&send));
    let start = Instant::now();
    loop {
        let i = p.get("vm.info").1;
        if i["state"] == "Migrated" {
            return i["migration"]["report"].clone();
        }
        assert!(
            i["migration"]["error"].is_null() && start.elapsed() < T,
            "migration: {i}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Live migration without and with a key.
fn migration(net: &TestNet, key: &Path, z: &Sizes) {
    let mut figures: [[Vec<f64>; 4]; 2] = Default::default();
    for _ in 0..z.rounds {
        for (i, k) in [None, Some(key)].into_iter().enumerate() {
            let r = migrate_once(net, k, z);
            let bytes = r["bytes_sent"].as_u64().unwrap_or(0);
            let total = Duration::from_secs_f64(secs(&r["total_time"]));
            let f = &mut figures[i];
            f[0].push(secs(&r["downtime"]) * 1e3);
            f[1].push(ms(total));
            f[2].push(bytes as f64 / (1 << 20) as f64);
            f[3].push(mb_s(bytes, total));
        }
    }
    for (i, what) in ["no key", "key"].iter().enumerate() {
        let f = &figures[i];
        println!(
            "ft-crypto: migration {} MiB {}, {what}: downtime {} ms, total {} ms, {} MiB sent, \
             {} MB/s",
            z.mem_mib,
            z.workload,
            series(&f[0], 1),
            series(&f[1], 0),
            series(&f[2], 1),
            series(&f[3], 0)
        );
    }
}

/// One protected stretch: (ms to protected, pause p50 µs, pause p99 µs, checkpoints/s, link MB/s).
fn protect_once(net: &TestNet, key: Option<&Path>, z: &Sizes) -> [f64; 5] {
    let p = Tandem::start_in_netns("bench-crypto-fp", &net.ns(Node::HostP));
    let b = Tandem::start_in_netns("bench-crypto-fb", &net.ns(Node::HostB));
    p.boot_builtin(1, z.mem_mib, &format!("workload={}", z.workload));
    std::thread::sleep(Duration::from_secs(2));
    let store = TempDir::new("bench-crypto-arb");
    let arbiter = store.path("arbiter");
    std::fs::create_dir(&arbiter).expect("arbiter");
    let url = format!("tcp:{HOST_B_LINK_IP}:{FT_PORT}");
    // A generous failure timeout: a pair that breaks on a starved host measures nothing.
    let mut recv = json!({"listen": url, "arbiter": {"path": arbiter},
                          "serial": {"mode": "Null"}, "failure_timeout_ms": 5000});
    with_key(&mut recv, key, true);
    b.put_ok("ft.receive", Some(&recv));
    let mut enable = json!({"peer": url, "disk_mode": "shared", "arbiter": {"path": arbiter},
                            "failure_timeout_ms": 5000});
    with_key(&mut enable, key, false);
    let start = Instant::now();
    p.put_ok("ft.enable", Some(&enable));
    wait_ft(&p, "primary", "protected", &b);
    let synced = start.elapsed();
    wait_ft(&b, "backup", "protected", &p);
    std::thread::sleep(Duration::from_millis(500));
    let count = |s: &Value| s["checkpoint_count"].as_u64().unwrap_or(0);
    let (c0, tx0, t0) = (count(&ft_status(&p)), link_tx_bytes(net), Instant::now());
    std::thread::sleep(z.window);
    let s = ft_status(&p);
    let took = t0.elapsed();
    assert_eq!(s["authenticated"], key.is_some(), "{s}");
    let n = count(&s) - c0;
    let pause = |k: &str| s["pause"][k].as_u64().unwrap_or(0) as f64;
    // The backup first, so that it never goes live at teardown.
    drop(b);
    [
        ms(synced),
        pause("p50_us"),
        pause("p99_us"),
        n as f64 / took.as_secs_f64(),
        mb_s(link_tx_bytes(net) - tx0, took),
    ]
}

/// Checkpointing without and with a key.
fn checkpoints(net: &TestNet, key: &Path, z: &Sizes) {
    let mut figures: [Vec<[f64; 5]>; 2] = Default::default();
    for _ in 0..z.rounds {
        for (i, k) in [None, Some(key)].into_iter().enumerate() {
            figures[i].push(protect_once(net, k, z));
        }
    }
    for (i, what) in ["no key", "key"].iter().enumerate() {
        let col = |j: usize| figures[i].iter().map(|f| f[j]).collect::<Vec<f64>>();
        println!(
            "ft-crypto: FT {} MiB {}, {what}: protected after {} ms; checkpoint pause p50 {} us, \
             p99 {} us; {} checkpoints/s; link {} MB/s",
            z.mem_mib,
            z.workload,
            series(&col(0), 0),
            series(&col(1), 0),
            series(&col(2), 0),
            series(&col(3), 1),
            series(&col(4), 2)
        );
    }
}
