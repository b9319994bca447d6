//! What the bench measures the guest with: round trips on `echo` from the client namespace, and
//! the rates the compute and dirty workloads print on the console.

use super::pair::{GUEST_IP, T};
use crate::client::ECHO_PORT;
use crate::net::{Node, TestNet};
use crate::Tandem;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// `n` round trips of 64 bytes on one connection to the guest's TCP echo, after 20 unmeasured
/// ones; sorted.
pub fn echo_round_trips(net: &TestNet, n: usize) -> Vec<Duration> {
    net.run_in(Node::Client, move || {
        let addr = format!("{GUEST_IP}:{ECHO_PORT}");
        let start = Instant::now();
        let mut s = loop {
            match TcpStream::connect(&addr) {
                Ok(s) => break s,
                Err(e) if start.elapsed() > T => panic!("{addr}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        s.set_nodelay(true).expect("nodelay");
        s.set_read_timeout(Some(T)).expect("read timeout");
        let msg = [0x5au8; 64];
        let mut back = [0u8; 64];
        let mut rtts = Vec::with_capacity(n);
        for i in 0..n + 20 {
            let t = Instant::now();
            s.write_all(&msg).expect("send");
            s.read_exact(&mut back).expect("echo");
            if i >= 20 {
                rtts.push(t.elapsed());
            }
            assert_eq!(back, msg, "echo changed the bytes");
        }
        rtts.sort();
        rtts
    })
    .join()
    .expect("client")
}

/// The next `k` samples that `parse` finds on `t`'s console after the first `skip` (a sample
/// line is printed once a second by the guest, about its last second).
pub fn console_rates(
    t: &Tandem,
    parse: fn(&str) -> Option<(u32, u64)>,
    skip: usize,
    k: usize,
) -> Vec<u64> {
    let start = Instant::now();
    loop {
        let all: Vec<u64> = t
            .serial()
            .lines()
            .iter()
            .filter_map(|l| parse(l))
            .map(|(_, n)| n)
            .collect();
        if all.len() >= skip + k {
            return all[skip..skip + k].to_vec();
        }
        assert!(
            start.elapsed() < T,
            "only {} samples on the console:\n{}",
            all.len(),
            t.serial().text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How many samples `parse` finds on `t`'s console now.
pub fn console_count(t: &Tandem, parse: fn(&str) -> Option<(u32, u64)>) -> usize {
    t.serial()
        .lines()
        .iter()
        .filter(|l| parse(l).is_some())
        .count()
}

/// Console samples over a stretch, with the vCPU thread's CPU time and the wall time it took.
pub struct Window {
    /// The samples (one per guest second).
    pub samples: Vec<u64>,
    /// CPU time the vCPU thread used meanwhile.
    pub cpu: Duration,
    /// Wall time.
    pub wall: Duration,
}

impl Window {
    /// Samples `from..from + k` of `t`'s console; call it once sample `from - 1` is out, so that
    /// the window is the seconds they cover.
    pub fn take(t: &Tandem, parse: fn(&str) -> Option<(u32, u64)>, from: usize, k: usize) -> Self {
        let cpu = || t.thread_cpu_time("tandem_vcpu0").unwrap_or_default();
        let (c0, t0) = (cpu(), Instant::now());
        let samples = console_rates(t, parse, from, k);
        Window {
            samples,
            cpu: cpu().saturating_sub(c0),
            wall: t0.elapsed(),
        }
    }

    /// Units of work per second of vCPU thread CPU time.
    pub fn per_cpu_second(&self) -> f64 {
        self.samples.iter().sum::<u64>() as f64 / self.cpu.as_secs_f64().max(1e-3)
    }

    /// Share of one core the vCPU thread had.
    pub fn cpu_share(&self) -> f64 {
        self.cpu.as_secs_f64() / self.wall.as_secs_f64().max(1e-3)
    }
}
