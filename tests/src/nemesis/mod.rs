//! A Jepsen-style nemesis soak of an FT pair (issue 11): a client INCrements the guest's counter
//! over one connection and records its history, while a seeded schedule kills, stops, cuts and
//! commands the pair's members; after each fault the survivor is protected again by a fresh
//! backup on the other host. Checked throughout and after every step: never two members running
//! the guest alone at once (`watch`), every reply the previous + 1 with no acknowledged value
//! lost (`history`), `ft.verify` finding no difference between the backup's copy and the
//! primary's (`verify`), and, at quiet points, the disk's counter equal to the last reply and (in
//! replicated mode) the backup's image equal to the primary's.
//!
//! `TANDEM_NEMESIS_SEED=<seed>` replays a run (the seed is printed first); `TANDEM_NEMESIS_FAULTS`
//! and `TANDEM_NEMESIS_MINUTES` make it longer.

pub mod cluster;
pub mod faults;
pub mod history;
pub mod verify;
pub mod watch;
pub mod wire;

use crate::client::{counter_on_disk, CounterConn};
use crate::ft::GUEST_IP;
use crate::net::Node;
use cluster::Cluster;
use faults::{inject, Fault, ALL};
use history::History;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use verify::Verified;
use watch::Watcher;

/// A seeded schedule: the same seed, the same faults in the same order.
pub struct Schedule {
    seed: u64,
    rng: tandem_testkit::Rng,
}

impl Schedule {
    /// From `TANDEM_NEMESIS_SEED` (decimal or 0x-hex), or the clock.
    pub fn from_env() -> Schedule {
        let seed = tandem_testkit::seed("TANDEM_NEMESIS_SEED");
        Schedule {
            seed,
            rng: tandem_testkit::Rng::new(seed),
        }
    }

    /// The seed, as `TANDEM_NEMESIS_SEED` takes it.
    pub fn seed(&self) -> String {
        format!("{:#x}", self.seed)
    }

    /// The next fault.
    pub fn fault(&mut self) -> Fault {
        ALL[self.rng.below(ALL.len())]
    }
}

/// The client: INC after INC on one connection (a new one after a guest reboot breaks it),
/// everything recorded; `hold` parks it between INCs for a quiet check.
struct Client {
    stop: Arc<AtomicBool>,
    hold: Arc<AtomicBool>,
    idle: Arc<AtomicBool>,
    history: Arc<Mutex<History>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Client {
    fn start(c: &Cluster, run_start: Instant) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let hold = Arc::new(AtomicBool::new(false));
        let idle = Arc::new(AtomicBool::new(false));
        let history = Arc::new(Mutex::new(History::default()));
        let (s, h, i, hist) = (stop.clone(), hold.clone(), idle.clone(), history.clone());
        let thread = c.net.run_in(Node::Client, move || {
            let addr = format!("{GUEST_IP}:7000");
            let mut conn: Option<CounterConn> = None;
            while !s.load(Ordering::Relaxed) {
                if h.load(Ordering::Relaxed) {
                    i.store(true, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                i.store(false, Ordering::Relaxed);
                if conn.is_none() {
                    conn = CounterConn::connect(&addr, Duration::from_secs(5)).ok();
                    if conn.is_none() {
                        continue;
                    }
                }
                let Some(c) = conn.as_mut() else { continue };
                let started = Instant::now();
                let reply = c.inc().map_err(|e| e.to_string());
                if reply.is_err() {
                    conn = None;
                }
                if let Ok(mut hist) = hist.lock() {
                    hist.record(run_start, started, reply);
                }
            }
            i.store(true, Ordering::Relaxed);
        });
        Client {
            stop,
            hold,
            idle,
            history,
            thread: Some(thread),
        }
    }

    fn history(&self) -> History {
        self.history.lock().map(|h| h.clone()).unwrap_or_default()
    }

    /// Parks the client between INCs.
    fn pause(&self) {
        self.hold.store(true, Ordering::Relaxed);
        let start = Instant::now();
        while !self.idle.load(Ordering::Relaxed) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the client never went idle"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn resume(&self) {
        self.idle.store(false, Ordering::Relaxed);
        self.hold.store(false, Ordering::Relaxed);
    }

    fn finish(mut self) -> History {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.history()
    }
}

/// What a soak did.
#[derive(Debug)]
pub struct Report {
    /// The schedule's seed, as `TANDEM_NEMESIS_SEED` takes it to replay the run.
    pub seed: String,
    /// The faults it was to inject (`TANDEM_NEMESIS_FAULTS` overrides the caller's number).
    pub target: usize,
    /// Each fault injected, in order, with how long injecting and recovering from it took.
    pub faults: Vec<(Fault, Duration)>,
    /// INCs that got a value back.
    pub acked: usize,
    /// INCs sent, answered or not.
    pub ops: usize,
    /// How many times the watcher polled both VMMs for two live VMs.
    pub watcher_polls: u64,
    /// Frames the guest sent out on each host's tap.
    pub wire_frames: [usize; 2],
    /// Steps after which `ft.verify` compared everything and found no difference.
    pub verified: usize,
}

/// Runs the soak on a fresh cluster until `faults` faults were injected or `budget` passed.
pub fn soak(tag: &str, disk_mode: &'static str, faults: usize, budget: Duration) -> Report {
    let mut schedule = Schedule::from_env();
    let seed = schedule.seed();
    eprintln!("[{tag}] nemesis seed {seed} (replay: TANDEM_NEMESIS_SEED={seed})");
    let faults = std::env::var("TANDEM_NEMESIS_FAULTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(faults);
    let budget = std::env::var("TANDEM_NEMESIS_MINUTES")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(budget, |m| Duration::from_secs(m * 60));
    let run_start = Instant::now();
    let mut c = Cluster::up(tag, disk_mode, 500);
    c.protect(0, 1);
    let watcher = Watcher::start(c.sockets.clone(), run_start);
    let wire = wire::Wire::start(
        &c.net,
        [c.slots[0].node, c.slots[1].node],
        "tap0",
        crate::ft::GUEST_IP,
    );
    let client = Client::start(&c, run_start);
    let mut done = Vec::new();
    let mut verified = 0;
    let fail = |c: &Cluster, what: String, done: &[(Fault, Duration)]| -> ! {
        panic!(
            "[{tag}] seed {seed}: {what}\nfaults so far: {done:?}\n{}",
            c.logs()
        )
    };
    while done.len() < faults && run_start.elapsed() < budget {
        let Some(p) = c.protected_primary() else {
            fail(&c, "no protected pair before the next fault".into(), &done);
        };
        let f = schedule.fault();
        let t0 = Instant::now();
        eprintln!(
            "[{tag}] fault {} at {:?}: {f:?}",
            done.len() + 1,
            run_start.elapsed()
        );
        inject(&mut c, p, f);
        recover(&mut c);
        done.push((f, t0.elapsed()));
        if let Some(v) = watcher.violations().first() {
            fail(&c, format!("two live VMs: {v}"), &done);
        }
        if let Some(v) = wire.violations().first() {
            fail(&c, format!("two hosts answer for the guest: {v}"), &done);
        }
        let h = client.history();
        if let Some(v) = h.check() {
            fail(
                &c,
                format!("lost write: {}\n{}", v.what, h.around(v.at)),
                &done,
            );
        }
        match verify::replica_equal(&c) {
            Ok(Verified::Clean) => verified += 1,
            Ok(Verified::Skipped(why)) => eprintln!("[{tag}] ft.verify skipped: {why}"),
            Err(why) => fail(&c, why, &done),
        }
        if done.len() % 10 == 0 {
            if let Err(why) = quiet_check(&c, &client) {
                fail(&c, why, &done);
            }
        }
    }
    if let Err(why) = quiet_check(&c, &client) {
        fail(&c, why, &done);
    }
    let history = client.finish();
    let polls = watcher.polls();
    let violations = watcher.finish();
    let (wire_frames, on_wire) = wire.finish();
    if let Some(v) = on_wire.first() {
        fail(&c, format!("two hosts answer for the guest: {v}"), &done);
    }
    if let Some(v) = violations.first() {
        fail(&c, format!("two live VMs: {v}"), &done);
    }
    if let Some(v) = history.check() {
        fail(
            &c,
            format!("lost write: {}\n{}", v.what, history.around(v.at)),
            &done,
        );
    }
    Report {
        seed,
        target: faults,
        faults: done,
        acked: history.acked(),
        ops: history.ops.len(),
        watcher_polls: polls,
        wire_frames,
        verified,
    }
}

/// After a fault: waits until the pair is protected again on its own (pause, heartbeats, a
/// reboot that re-synced), or until exactly one member runs the guest; then replaces the other
/// member with a fresh backup.
fn recover(c: &mut Cluster) {
    let start = Instant::now();
    let limit = Duration::from_secs(60);
    loop {
        if c.protected_primary().is_some() {
            return;
        }
        if let Some(s) = c.alone() {
            // Alone for a whole failure timeout, not for the instant between a reboot's end of
            // the pair and its re-sync; meanwhile a loser notices and halts (which the watcher
            // checks; replacing it is only cleanup).
            std::thread::sleep(Duration::from_millis(c.timeout_ms));
            if c.alone() == Some(s) && c.protected_primary().is_none() {
                c.protect(s, 1 - s);
                return;
            }
        }
        assert!(
            start.elapsed() < limit,
            "nobody runs the guest {limit:?} after the fault\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// With the client parked between INCs: the primary's disk holds the last acknowledged value,
/// and in replicated mode the backup's image equals the primary's.
fn quiet_check(c: &Cluster, client: &Client) -> Result<(), String> {
    client.pause();
    let result = (|| {
        let last = client.history().last_acked();
        let p = c
            .protected_primary()
            .or_else(|| c.alone())
            .ok_or("no primary at the quiet point")?;
        let (p_image, b_image) = (&c.slots[p].image, &c.slots[1 - p].image);
        let start = Instant::now();
        loop {
            let on_disk = counter_on_disk(p_image);
            let same = c.disk_mode != "replicated"
                || std::fs::read(p_image).ok() == std::fs::read(b_image).ok();
            if on_disk == last && same {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(20) {
                return Err(format!(
                    "at a quiet point: the disk's counter is {on_disk:?}, the last reply {last:?}; \
                     replica image equal: {same}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })();
    client.resume();
    result
}
