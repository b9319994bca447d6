//! Failover as a client sees it: INC after INC on one TCP connection to the counter guest while
//! the primary is SIGKILLed; the outage is the silence that the backup's first reply ends.

use super::pair::{wait_ft, DiskMode, Guest, Site, GUEST_IP, T};
use super::window::{Delta, Mark, Poll};
use crate::client::{CounterConn, COUNTER_PORT};
use crate::net::Node;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The counter guest with a disk in `mode` (every INC is a sector write and a flush).
pub fn counter(disk: DiskMode) -> Guest<'static> {
    Guest {
        workload: "counter",
        mem_mib: 128,
        vcpus: 1,
        nic: true,
        disk: Some(disk),
    }
}

/// One reply: when it arrived, its value, how long the INC took.
#[derive(Clone, Copy)]
struct Reply {
    at: Instant,
    value: u64,
    took: Duration,
}

/// INCs on one connection until `stop`, each reply recorded in `log` as it arrives.
fn client(
    site: &Site,
    log: Arc<Mutex<Vec<Reply>>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    site.net.run_in(Node::Client, move || {
        let addr = format!("{GUEST_IP}:{COUNTER_PORT}");
        let mut c = CounterConn::connect(&addr, T).expect("connect to the counter");
        while !stop.load(Ordering::Relaxed) {
            let t0 = Instant::now();
            let value = c.inc().expect("INC (across the failover)");
            let r = Reply {
                at: Instant::now(),
                value,
                took: t0.elapsed(),
            };
            log.lock().unwrap_or_else(|e| e.into_inner()).push(r);
        }
    })
}

/// `n` INC round trips on a standalone counter guest (disk write + flush each), sorted.
pub fn standalone_incs(site: &Site, n: usize) -> Vec<Duration> {
    let _vm = site.boot(&counter(DiskMode::Shared));
    site.net
        .run_in(Node::Client, move || {
            let addr = format!("{GUEST_IP}:{COUNTER_PORT}");
            let mut c = CounterConn::connect(&addr, T).expect("connect to the counter");
            for _ in 0..20 {
                c.inc().expect("INC");
            }
            let mut v: Vec<Duration> = (0..n)
                .map(|_| {
                    let t = Instant::now();
                    c.inc().expect("INC");
                    t.elapsed()
                })
                .collect();
            v.sort();
            v
        })
        .join()
        .expect("client")
}

/// One failover.
pub struct Run {
    /// SIGKILL to the reply that ended the client's longest silence after it.
    pub outage: Duration,
    /// SIGKILL to the backup's ft.status saying primary/unprotected (polled every 5 ms).
    pub live: Duration,
    /// INC round trips while protected, before the kill, sorted.
    pub incs: Vec<Duration>,
    /// The primary's checkpoints while the client ran, before the kill.
    pub ckpt: Delta,
}

/// Protects a counter guest in `mode`, runs the client for `warm`, SIGKILLs the primary and
/// waits for the client to be served by the backup.
pub fn run_once(mode: DiskMode, warm: Duration) -> Run {
    let site = Site::up("fov");
    let mut vm = site.boot(&counter(mode));
    vm.protect(&site);
    let log = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let client = client(&site, log.clone(), stop.clone());
    let mark = Mark::now(&vm, &site.net);
    let mut poll = Poll::new();
    poll.sleep(&vm.p, warm);
    let ckpt = mark.since(&vm, &site.net, &poll);

    let killed = Instant::now();
    vm.p.child.kill().expect("SIGKILL the primary");
    vm.p.wait_exit(T);
    wait_ft(vm.backup(), "primary", "unprotected");
    let live = killed.elapsed();
    // Served again: a run of replies after the kill (retransmission may take a while to retry).
    let start = Instant::now();
    loop {
        let after = {
            let l = log.lock().unwrap_or_else(|e| e.into_inner());
            l.iter().filter(|r| r.at > killed).count()
        };
        if after >= 20 || client.is_finished() {
            break;
        }
        assert!(
            start.elapsed() < T,
            "the client got no replies after the failover"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    client
        .join()
        .expect("the client failed across the failover");
    let replies = log.lock().unwrap_or_else(|e| e.into_inner()).clone();

    // Every INC answered once, in order: the benchmark measured a correct failover.
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(r.value, i as u64 + 1, "INC #{i} answered {}", r.value);
    }
    let first_after = replies
        .iter()
        .position(|r| r.at > killed)
        .expect("replies after the kill");
    let ends_silence = (first_after.max(1)..replies.len())
        .max_by_key(|&i| replies[i].at - replies[i - 1].at)
        .unwrap_or(first_after);
    let mut incs: Vec<Duration> = replies[..first_after]
        .iter()
        .skip(20)
        .map(|r| r.took)
        .collect();
    incs.sort();
    Run {
        outage: replies[ends_silence].at - killed,
        live,
        incs,
        ckpt,
    }
}
