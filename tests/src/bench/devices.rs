//! Network and disk figures beside host-only baselines.

use super::{ms, percentile, us};
use crate::client::CounterConn;
use crate::net::{Node, TestNet, HOST_P_LAN_IP};
use crate::{Tandem, TempDir};
use serde_json::json;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

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

/// A host-side counter on host P's LAN address, the same line protocol as the guest's: each
/// INC writes a 512-byte sector of `image` and `fdatasync`s it before it answers, so that the
/// disk baseline includes the TCP round trip as the guest's figure does.
fn host_counter(net: &TestNet, image: std::path::PathBuf) {
    let (tx, rx) = std::sync::mpsc::channel();
    let _ = net.run_in(Node::HostP, move || {
        let l = TcpListener::bind((HOST_P_LAN_IP, 7000)).expect("bind host counter");
        tx.send(()).ok();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&image)
            .expect("open image");
        for s in l.incoming().flatten() {
            let _ = s.set_nodelay(true);
            let mut w = s.try_clone().expect("clone");
            let mut n = 0u64;
            for line in std::io::BufRead::lines(std::io::BufReader::new(s)) {
                let Ok(line) = line else { break };
                if line.trim() != "INC" {
                    break;
                }
                n += 1;
                let mut sector = [0u8; 512];
                sector[..8].copy_from_slice(b"TNDMCNT1");
                sector[8..16].copy_from_slice(&n.to_le_bytes());
                f.write_all_at(&sector, 0).expect("write");
                f.sync_data().expect("fdatasync");
                if writeln!(w, "{n}").is_err() {
                    break;
                }
            }
        }
    });
    rx.recv().expect("host counter up");
}

/// `DISK_OPS` INCs on one connection to `ip`'s counter, from the client; the time they took.
fn incs(net: &TestNet, ip: &'static str) -> Duration {
    net.run_in(Node::Client, move || {
        let addr = format!("{ip}:7000");
        let mut c = CounterConn::connect(&addr, Duration::from_secs(30)).expect("connect");
        let t = Instant::now();
        for _ in 0..DISK_OPS {
            c.inc().expect("INC");
        }
        t.elapsed()
    })
    .join()
    .expect("client")
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

/// Runs the device bench: TCP round trips, throughput and disk write+flush beside host baselines.
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
    let guest = incs(&net, GUEST_IP);
    drop(t);
    host_counter(&net, image.clone());
    let host = incs(&net, HOST_P_LAN_IP);
    println!(
        "disk write+flush via the counter (n={DISK_OPS} INCs on one TCP connection, each a 512 B write + flush before the reply): guest {:.0} ops/s ({:.2} ms each), host process on host P's bridge doing pwrite+fdatasync {:.0} ops/s ({:.2} ms each), guest/host {:.3}",
        DISK_OPS as f64 / guest.as_secs_f64(),
        ms(guest) / DISK_OPS as f64,
        DISK_OPS as f64 / host.as_secs_f64(),
        ms(host) / DISK_OPS as f64,
        host.as_secs_f64() / guest.as_secs_f64()
    );
}
