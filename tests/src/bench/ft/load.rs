//! What the bench measures the guest with: round trips on `echo` from the client namespace, and
//! the rates the compute and dirty workloads print on the console.

use super::pair::{GUEST_IP, T};
use super::window::Poll;
use crate::client::ECHO_PORT;
use crate::net::{Node, TestNet};
use crate::Tandem;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// `n` round trips of 64 bytes on one connection to the guest's TCP echo, after 20 unmeasured
/// ones; sorted.
pub fn echo_round_trips(net: &TestNet, n: usize) -> Vec<Duration> {
    echo_client(net, n).join().expect("client")
}

/// [`echo_round_trips`] on a client thread, which this returns.
pub fn echo_client(net: &TestNet, n: usize) -> std::thread::JoinHandle<Vec<Duration>> {
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
}

/// Per-second work of all `cpus` CPUs: the `i`-th sample of every CPU's console lines, summed,
/// for as many seconds as every CPU has printed.
fn summed(t: &Tandem, parse: fn(&str) -> Option<(u32, u64)>, cpus: u8) -> Vec<u64> {
    let mut per_cpu: Vec<Vec<u64>> = vec![Vec::new(); usize::from(cpus.max(1))];
    for (cpu, n) in t.serial().lines().iter().filter_map(|l| parse(l)) {
        if let Some(v) = per_cpu.get_mut(cpu as usize) {
            v.push(n);
        }
    }
    let secs = per_cpu.iter().map(Vec::len).min().unwrap_or(0);
    (0..secs)
        .map(|i| per_cpu.iter().map(|v| v[i]).sum())
        .collect()
}

/// How many whole seconds of samples `t`'s console holds now.
pub fn console_count(t: &Tandem, parse: fn(&str) -> Option<(u32, u64)>, cpus: u8) -> usize {
    summed(t, parse, cpus).len()
}

/// Seconds `from..from + k` of the guest's work (summed over its CPUs), waiting for them and
/// polling `ft.status` meanwhile when `poll` is given. A sample is the work the guest did in
/// one second of its TSC, which runs on through pauses and throttling: work per wall-clock
/// second.
pub fn console_rates(
    t: &Tandem,
    parse: fn(&str) -> Option<(u32, u64)>,
    cpus: u8,
    from: usize,
    k: usize,
    mut poll: Option<&mut Poll>,
) -> Vec<u64> {
    let start = Instant::now();
    loop {
        let all = summed(t, parse, cpus);
        if all.len() >= from + k {
            return all[from..from + k].to_vec();
        }
        assert!(
            start.elapsed() < T + Duration::from_secs(k as u64),
            "only {} samples on the console:\n{}",
            all.len(),
            t.serial().text()
        );
        if let Some(p) = poll.as_deref_mut() {
            p.tick(t);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
