//! FT under chaos, between real `tandem` processes in the host namespaces of one test network:
//! * SIGKILL of the primary at random moments (seeded, printed, replayable), in both disk modes,
//!   with a client INC-ing over one TCP connection all along;
//! * corrupt, truncated and unexpected frames injected into the replication stream by a
//!   man-in-the-middle proxy on host B (`tandem_tests::tamper`);
//! * a host-to-host partition that the backup wins (the primary's failure timeout is longer).
//!
//! Each check reads `ft.status` on both sides; failures print the seed, the run and both logs.
//!
//! Replay a chaos failure with `TANDEM_CHAOS_SEED=<seed printed>`; `TANDEM_CHAOS_RUNS` changes
//! the number of runs per disk mode (default 20). A run set stops starting runs once
//! `TANDEM_CHAOS_BUDGET_S` (default 150) seconds have passed, says so in the skip report, and
//! fails if fewer than 5 runs fit: a deadline of its own instead of nextest's kill timer
//! (`.config/nextest.toml` gives these tests 6 minutes).

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tandem_tests::client::wait_counter_on_disk;
use tandem_tests::net::{Node, TestNet, HOST_B_LINK_IP};
use tandem_tests::tamper::{Tamper, TamperProxy};
use tandem_tests::{require, Tandem, TempDir};

use tandem_tests::ft::{arbiter_dir, ft_status, pair_images, write_key_file, FT_PORT, GUEST_IP, T};
/// Where a backup behind the tampering proxy listens (host B's loopback).
const BEHIND_PROXY_PORT: u16 = 7601;

// ---------------------------------------------------------------------------------------------
// Status helpers

fn is(s: &Value, role: &str, state: &str) -> bool {
    s["role"] == role && s["state"] == state
}

fn committed(s: &Value) -> Option<u64> {
    s["last_committed_epoch"].as_u64()
}

fn reason(s: &Value) -> &str {
    s["reason"].as_str().unwrap_or("")
}

// ---------------------------------------------------------------------------------------------
// A pair on a test network that outlives it

/// How to set a pair up.
#[derive(Clone)]
struct Spec {
    tag: String,
    disk_mode: &'static str,
    /// The primary's failure timeout.
    p_timeout_ms: u64,
    /// The backup's failure timeout.
    b_timeout_ms: u64,
    /// The backup listens behind a proxy on host B instead of on the link address.
    behind_proxy: bool,
    /// Both members share a pair key (an authenticated stream).
    keyed: bool,
}

impl Spec {
    fn new(tag: &str, disk_mode: &'static str) -> Self {
        Spec {
            tag: tag.into(),
            disk_mode,
            p_timeout_ms: 1000,
            b_timeout_ms: 1000,
            behind_proxy: false,
            keyed: false,
        }
    }
}

/// A network with a tap for the guest on each host, reused by pairs one after the other.
fn network(tag: &str) -> TestNet {
    TestNet::up_with_taps(tag)
}

/// P runs a counter guest, B waits for it (`ft.receive`); FT is not enabled yet.
struct Pair {
    spec: Spec,
    p: Tandem,
    b: Tandem,
    p_image: PathBuf,
    b_image: PathBuf,
    arbiter: PathBuf,
    /// The pair key file (used when `spec.keyed`).
    key: PathBuf,
    _store: TempDir,
}

impl Pair {
    fn boot(net: &TestNet, spec: &Spec) -> Pair {
        // A previous pair's guest had the same IP and MAC, on either host: forget where it was.
        let _ = std::process::Command::new("ip")
            .args(["-n", &net.ns(Node::Client), "neigh", "flush", "all"])
            .status();
        let tag = &spec.tag;
        let p = Tandem::start_in_netns(&format!("{tag}-p"), &net.ns(Node::HostP));
        let b = Tandem::start_in_netns(&format!("{tag}-b"), &net.ns(Node::HostB));
        let store = TempDir::new(&format!("{tag}-store"));
        let (p_image, b_image) = pair_images(&store, spec.disk_mode, 1 << 20);
        let arbiter = arbiter_dir(&store);
        let key = store.path("ft.key");
        write_key_file(&key, &[0x5au8; 32]);
        p.boot_counter(64, GUEST_IP, &p_image);

        let listen = if spec.behind_proxy {
            format!("tcp:127.0.0.1:{BEHIND_PROXY_PORT}")
        } else {
            format!("tcp:{HOST_B_LINK_IP}:{FT_PORT}")
        };
        let mut receive = json!({
            "listen": listen,
            "disks": [{"id": "disk0", "path": b_image}],
            "net": [{"id": "nic0", "tap": "tap0"}],
            "serial": {"mode": "File", "file": b.serial_path},
            "arbiter": {"path": arbiter},
            "disk_mode": spec.disk_mode,
            "failure_timeout_ms": spec.b_timeout_ms,
        });
        if spec.keyed {
            receive["key"] = json!({ "path": key });
        } else {
            receive["insecure"] = json!(true);
        }
        b.put_ok("ft.receive", Some(&receive));
        Pair {
            key,
            spec: spec.clone(),
            p,
            b,
            p_image,
            b_image,
            arbiter,
            _store: store,
        }
    }

    /// `ft.enable` on P, towards B (or the proxy in front of it); does not wait.
    fn enable(&self) {
        let enable = json!({
            "peer": format!("tcp:{HOST_B_LINK_IP}:{FT_PORT}"),
            "disk_mode": self.spec.disk_mode,
            "arbiter": {"path": self.arbiter},
            "failure_timeout_ms": self.spec.p_timeout_ms,
        });
        let mut enable = enable;
        if self.spec.keyed {
            enable["key"] = json!({ "path": self.key });
        }
        self.p.put_ok("ft.enable", Some(&enable));
    }

    /// Both logs, for failure messages.
    fn logs(&self) -> String {
        format!(
            "\n--- P log:\n{}\n--- B log:\n{}",
            self.p.log(),
            self.b.log()
        )
    }

    /// Both sides' `ft.status`.
    fn statuses(&self) -> (Value, Value) {
        (ft_status(&self.p), ft_status(&self.b))
    }

    /// Waits until P is primary/protected and B backup/protected; returns their statuses.
    fn wait_protected(&self) -> (Value, Value) {
        let start = Instant::now();
        loop {
            let (ps, bs) = self.statuses();
            if is(&ps, "primary", "protected") && is(&bs, "backup", "protected") {
                return (ps, bs);
            }
            assert!(
                start.elapsed() < T && ps["state"] != "halted" && bs["state"] != "halted",
                "never protected: P {ps}\nB {bs}{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Waits until `t` is the primary, unprotected (failing on halted); the time it took.
fn wait_takeover(t: &Tandem, ctx: &dyn Fn() -> String) -> Duration {
    let start = Instant::now();
    loop {
        let s = ft_status(t);
        if is(&s, "primary", "unprotected") {
            return start.elapsed();
        }
        assert!(
            s["state"] != "halted" && start.elapsed() < T,
            "no takeover: {s}{}",
            ctx()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The counter on `image` once it is `want` (the guest's last writes may still be on their way
/// to the disk while it runs unprotected), or what it was when the wait gave up.
fn wait_disk(image: &std::path::Path, want: Option<u64>) -> Option<u64> {
    wait_counter_on_disk(image, want)
}

// ---------------------------------------------------------------------------------------------
// The client: INC after INC on one connection

/// What the client has seen: each reply with when it came.
type Replies = Arc<Mutex<Vec<(u64, Instant)>>>;

/// A client in the client namespace, INC after INC on one connection until stopped.
struct Client {
    replies: Replies,
    stop: Arc<AtomicBool>,
    /// A pid to SIGKILL right after the client's next INC has been sent (0: none).
    arm: Arc<AtomicU32>,
    killed: Receiver<Killed>,
    thread: std::thread::JoinHandle<Result<(), String>>,
}

impl Client {
    fn start(net: &TestNet) -> Client {
        let replies: Replies = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let arm = Arc::new(AtomicU32::new(0));
        let (killed_tx, killed) = std::sync::mpsc::channel();
        let (r, s, a) = (replies.clone(), stop.clone(), arm.clone());
        let thread = net.run_in(Node::Client, move || client_loop(&r, &s, &a, &killed_tx));
        Client {
            replies,
            stop,
            arm,
            killed,
            thread,
        }
    }

    /// The last reply so far, if any.
    fn last(&self) -> Option<u64> {
        self.replies.lock().unwrap().last().map(|r| r.0)
    }

    /// Replies that came after `t`.
    fn replies_after(&self, t: Instant) -> usize {
        self.replies
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.1 > t)
            .count()
    }

    /// Waits until `n` replies came after `t`, or the client failed, or `T`; false if not.
    fn wait_replies_after(&self, t: Instant, n: usize) -> bool {
        let start = Instant::now();
        while self.replies_after(t) < n {
            if self.thread.is_finished() || start.elapsed() > T {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// Stops; every reply, or the client's error with the replies it had.
    fn finish(self) -> (Vec<u64>, Result<(), String>) {
        self.stop.store(true, Ordering::Relaxed);
        let r = self
            .thread
            .join()
            .unwrap_or_else(|_| Err("client thread panicked".into()));
        let seen = self.replies.lock().unwrap().iter().map(|r| r.0).collect();
        (seen, r)
    }
}

/// What the client saw when it killed the primary right after sending an INC.
struct Killed {
    /// When the SIGKILL was sent.
    at: Instant,
    /// Replies the client had by then: the INC in flight is reply number `replies + 1`.
    replies: usize,
    /// Whether its reply had already arrived when the primary died (the moment was missed).
    answered_before: bool,
}

fn client_loop(
    replies: &Mutex<Vec<(u64, Instant)>>,
    stop: &AtomicBool,
    arm: &AtomicU32,
    killed: &Sender<Killed>,
) -> Result<(), String> {
    let addr: std::net::SocketAddr = format!("{GUEST_IP}:7000").parse().unwrap();
    let start = Instant::now();
    let stream = loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(s) => break s,
            Err(e) if start.elapsed() > T => return Err(format!("connect: {e}")),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let io = |e: std::io::Error| format!("INC #{}: {e}", replies.lock().unwrap().len() + 1);
    stream.set_nodelay(true).map_err(io)?;
    stream.set_read_timeout(Some(T)).map_err(io)?;
    let mut reader = BufReader::new(stream.try_clone().map_err(io)?);
    let mut writer = stream;
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        writer.write_all(b"INC\n").map_err(io)?;
        let pid = arm.swap(0, Ordering::SeqCst);
        if pid != 0 {
            // Killed from here, right after the send: the reply cannot have been read yet, and
            // has almost surely not been released (it waits for a checkpoint's ack).
            // SAFETY: kill(2) on the pid of a `tandem` this test started; no memory involved.
            let r = unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            let at = Instant::now();
            if r != 0 {
                return Err(format!(
                    "SIGKILL {pid}: {}",
                    std::io::Error::last_os_error()
                ));
            }
            writer.set_nonblocking(true).map_err(io)?;
            let answered_before = !reader.buffer().is_empty() || writer.peek(&mut [0u8; 1]).is_ok();
            writer.set_nonblocking(false).map_err(io)?;
            let _ = killed.send(Killed {
                at,
                replies: replies.lock().unwrap().len(),
                answered_before,
            });
        }
        line.clear();
        if reader.read_line(&mut line).map_err(io)? == 0 {
            return Err(io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        let v: u64 = line
            .trim()
            .parse()
            .map_err(|_| format!("reply {line:?} is not a number"))?;
        replies.lock().unwrap().push((v, Instant::now()));
    }
    Ok(())
}

/// Every INC answered once, in order: 1, 2, 3... (none lost, never going back).
fn counts_up(seen: &[u64]) -> Result<(), String> {
    for (i, v) in seen.iter().enumerate() {
        if *v != i as u64 + 1 {
            return Err(format!("INC #{} answered {v}; all: {seen:?}", i + 1));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Seeded randomness

/// `TANDEM_CHAOS_SEED` (decimal or 0x-hex), else one from the clock; always printed.
fn chaos_seed() -> u64 {
    tandem_testkit::seed("TANDEM_CHAOS_SEED")
}

fn chaos_runs() -> usize {
    std::env::var("TANDEM_CHAOS_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20)
}

/// How long a run set may go on starting runs (`TANDEM_CHAOS_BUDGET_S`, default 150 s): with
/// one run's worst case on top, well inside the 6 minutes nextest gives these tests.
fn chaos_budget() -> Duration {
    Duration::from_secs(
        std::env::var("TANDEM_CHAOS_BUDGET_S")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(150),
    )
}

/// Fewer runs than this in the budget fail the set (a host that slow hides real failures).
const MIN_RUNS: usize = 5;

// ---------------------------------------------------------------------------------------------
// 1. SIGKILL of the primary at random moments

/// When to kill the primary.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// As soon as the backup has acked the first checkpoint after the initial sync.
    FirstCheckpoint,
    /// This long after both sides are protected.
    After(Duration),
    /// This long after protection, then the moment the client has sent an INC (reply pending).
    MidRequest(Duration),
}

/// Both sides' status before the kill, looked at again and again.
struct Watch {
    generation: Option<u64>,
    p_epoch: Option<u64>,
    b_epoch: Option<u64>,
    last: (Value, Value),
}

impl Watch {
    /// One look at both sides: roles and states hold, the generation too, committed epochs
    /// never go back.
    fn look(&mut self, pair: &Pair, ctx: &dyn Fn(&Pair) -> String) {
        let (p, b) = pair.statuses();
        assert!(
            is(&p, "primary", "protected") && is(&b, "backup", "protected"),
            "before the kill: P {p}\nB {b}{}",
            ctx(pair)
        );
        assert!(
            committed(&p) >= self.p_epoch && committed(&b) >= self.b_epoch,
            "committed epoch went back: P {:?} -> {p}\nB {:?} -> {b}{}",
            self.p_epoch,
            self.b_epoch,
            ctx(pair)
        );
        assert_eq!(p["generation"].as_u64(), self.generation, "{p}");
        assert_eq!(b["generation"].as_u64(), self.generation, "{b}");
        (self.p_epoch, self.b_epoch) = (committed(&p), committed(&b));
        self.last = (p, b);
    }
}

/// Figures of one run.
struct RunFigures {
    takeover: Duration,
    incs: usize,
    from_epoch: Option<u64>,
    /// MidRequest: whether the INC sent just before the kill was still unanswered then (the
    /// moment this plan aims at), and when it was answered.
    pending: Option<(bool, String)>,
}

fn fmt_figures(d: &mut [Duration]) -> String {
    d.sort();
    match (d.first(), d.get(d.len() / 2), d.last()) {
        (Some(min), Some(med), Some(max)) => format!("min {min:?} median {med:?} max {max:?}"),
        _ => "no runs".into(),
    }
}

fn kill_chaos(tag: &str, disk_mode: &'static str, stream: u64) {
    let base = chaos_seed();
    let runs = chaos_runs();
    let budget = chaos_budget();
    eprintln!(
        "[{tag}] {runs} runs, seed {base:#x} (replay: TANDEM_CHAOS_SEED={base:#x} \
         TANDEM_CHAOS_RUNS={runs})"
    );
    let mut rng = tandem_testkit::Rng::new(base ^ stream);
    let net = network(tag);
    let started = Instant::now();
    let mut takeovers = Vec::new();
    let (mut mid_runs, mut mid_hits) = (0, 0);
    for run in 0..runs {
        if started.elapsed() > budget {
            let why = format!(
                "time budget of {budget:?} spent after {run} of {runs} runs (seed {base:#x})"
            );
            eprintln!("[{tag}] {why}");
            tandem_tests::require::report::append(
                std::env::var_os(tandem_tests::require::REPORT_ENV)
                    .as_deref()
                    .map(std::path::Path::new),
                tandem_tests::require::report::Kind::Skipped,
                &tandem_tests::require::report::current_test(),
                "time",
                &why,
            );
            assert!(run >= MIN_RUNS.min(runs), "[{tag}] {why}");
            break;
        }
        // Drawn for every run so that a replay meets the same moments whatever the plan.
        let delay = Duration::from_millis(rng.upto(1500));
        let plan = match run % 5 {
            0 => KillAt::FirstCheckpoint,
            1 | 3 => KillAt::MidRequest(delay),
            // Right after protection.
            2 => KillAt::After(delay / 20),
            _ => KillAt::After(delay),
        };
        let spec = Spec::new(&format!("{tag}{run}"), disk_mode);
        let f = kill_run(&net, &spec, plan, &|| {
            format!("\n[{tag}] run {run} of seed {base:#x}, {plan:?}")
        });
        eprintln!(
            "[{tag}] run {run}: {plan:?}: backup live {:?} after SIGKILL, from checkpoint \
             {:?}; {} INCs{}",
            f.takeover,
            f.from_epoch,
            f.incs,
            f.pending
                .as_ref()
                .map(|(_, p)| format!("; the INC in flight answered {p}"))
                .unwrap_or_default()
        );
        if let Some((hit, _)) = f.pending {
            mid_runs += 1;
            mid_hits += usize::from(hit);
        }
        takeovers.push(f.takeover);
    }
    eprintln!(
        "[{tag}] {} SIGKILLs in {:?}; takeover {}; {mid_hits} of {mid_runs} mid-request kills \
         with the reply pending",
        takeovers.len(),
        started.elapsed(),
        fmt_figures(&mut takeovers)
    );
    // The mid-request plan is only worth its name if it met the moment (seed {base:#x}).
    assert!(
        mid_runs == 0 || mid_hits > 0,
        "[{tag}] no mid-request kill found its INC's reply pending ({mid_runs} tried, seed \
         {base:#x})"
    );
}

fn kill_run(net: &TestNet, spec: &Spec, plan: KillAt, where_: &dyn Fn() -> String) -> RunFigures {
    let mut pair = Pair::boot(net, spec);
    // The connection exists before FT is enabled: the initial sync carries it.
    let client = Client::start(net);
    let ctx = |pair: &Pair| format!("{}{}", where_(), pair.logs());
    assert!(
        client.wait_replies_after(Instant::now() - T, 3),
        "the client made no progress before ft.enable{}",
        ctx(&pair)
    );
    let generation = ft_status(&pair.b)["generation"].as_u64();
    pair.enable();
    let (ps, bs) = pair.wait_protected();
    let mut w = Watch {
        generation,
        p_epoch: committed(&ps),
        b_epoch: committed(&bs),
        last: (ps, bs),
    };
    let first = (w.p_epoch, w.b_epoch);
    match plan {
        KillAt::FirstCheckpoint => {
            while w.p_epoch < Some(1) {
                w.look(&pair, &ctx);
            }
        }
        KillAt::After(d) | KillAt::MidRequest(d) => {
            let until = Instant::now() + d;
            while Instant::now() < until {
                w.look(&pair, &ctx);
                std::thread::sleep(Duration::from_millis(50).min(d));
            }
            w.look(&pair, &ctx);
            if d >= Duration::from_millis(500) {
                // Checkpoints go on while protected: at least one more is committed (waited
                // for, since a loaded host may take longer than `d` to commit one).
                let since = Instant::now();
                while (w.p_epoch, w.b_epoch) <= first {
                    assert!(
                        since.elapsed() < T,
                        "no checkpoint committed in {:?}: {first:?} -> P {}\nB {}{}",
                        d + since.elapsed(),
                        w.last.0,
                        w.last.1,
                        ctx(&pair)
                    );
                    std::thread::sleep(Duration::from_millis(10));
                    w.look(&pair, &ctx);
                }
            }
        }
    }
    let b_epoch = w.b_epoch;
    let mut in_flight = None;
    if let KillAt::MidRequest(_) = plan {
        client.arm.store(pair.p.child.id(), Ordering::SeqCst);
        let killed = client.killed.recv_timeout(T);
        assert!(
            killed.is_ok(),
            "the client sent no INC to kill on{}",
            ctx(&pair)
        );
        in_flight = killed.ok();
    }
    let acked = client.last();
    // Already dead when the client killed it mid-request: then this only reaps it.
    pair.p.child.kill().expect("SIGKILL the primary");
    let killed = in_flight.as_ref().map_or_else(Instant::now, |k| k.at);
    pair.p.wait_exit(T);
    wait_takeover(&pair.b, &|| ctx(&pair));
    let live_at = Instant::now();
    let took = live_at - killed;
    let s = ft_status(&pair.b);
    let want_gen = generation.map(|g| g + 1);
    assert!(
        is(&s, "primary", "unprotected")
            && s["generation"].as_u64() == want_gen
            && s["failover_count"] == 1
            && reason(&s).contains("live as primary"),
        "after the takeover (generation {generation:?} before): {s}{}",
        ctx(&pair)
    );
    let from_epoch = committed(&s);
    assert!(
        from_epoch >= b_epoch,
        "live from checkpoint {from_epoch:?}, but {b_epoch:?} was committed: {s}{}",
        ctx(&pair)
    );
    pair.b.wait_state("Running", T);
    // The same connection carries on, served by the new primary.
    let progressed = client.wait_replies_after(live_at, 3);
    // The INC sent just before the kill: answered (by the new primary, unless its reply had
    // already arrived), once, in order (counts_up below).
    let pending = in_flight.map(|k| {
        let r = client.replies.lock().unwrap();
        let answered = r.get(k.replies).map(|(_, at)| {
            at.checked_duration_since(k.at)
                .map_or("before the kill".to_string(), |d| {
                    format!("{d:?} after the kill")
                })
        });
        assert!(
            answered.is_some(),
            "the INC in flight at the kill was never answered ({} replies){}",
            r.len(),
            ctx(&pair)
        );
        let when = answered.unwrap_or_default();
        if k.answered_before {
            (
                false,
                format!("{when} (its reply had arrived before the kill)"),
            )
        } else {
            (true, when)
        }
    });
    let (seen, result) = client.finish();
    if let Err(e) = result.and_then(|()| counts_up(&seen)) {
        panic!("client: {e}{}", ctx(&pair));
    }
    assert!(
        progressed,
        "no INC answered after the takeover; last {:?}{}",
        seen.last(),
        ctx(&pair)
    );
    let last = seen.last().copied();
    assert!(
        last > acked,
        "no progress past {acked:?}: {seen:?}{}",
        ctx(&pair)
    );
    // Every acknowledged INC is on the disk the guest runs from now (invariant 4).
    let on_disk = wait_disk(&pair.b_image, last);
    assert_eq!(
        on_disk,
        last,
        "counter on the survivor's disk{}",
        ctx(&pair)
    );
    assert!(
        !pair.b.serial().text().contains("tandem-guest: boot"),
        "the guest rebooted{}",
        ctx(&pair)
    );
    RunFigures {
        takeover: took,
        incs: seen.len(),
        from_epoch,
        pending,
    }
}

#[test]
fn chaos_primary_sigkill_at_random_moments_shared_disk() {
    require!(kvm, netns);
    kill_chaos("cks", "shared", 0x5348_4152_4544);
}

#[test]
fn chaos_primary_sigkill_at_random_moments_replicated_disks() {
    require!(kvm, netns);
    kill_chaos("ckr", "replicated", 0x5245_504c_4943);
}

// ---------------------------------------------------------------------------------------------
// Shared by the tamper and partition tests

/// Waits until exactly one side is the live primary and the other has halted, checking on every
/// look that both are never live at once; (P's status, B's status).
fn wait_one_live(pair: &Pair, ctx: &dyn Fn() -> String) -> (Value, Value) {
    let live = |s: &Value| is(s, "primary", "unprotected");
    let start = Instant::now();
    loop {
        let (ps, bs) = pair.statuses();
        assert!(
            !(live(&ps) && live(&bs)),
            "both members live: P {ps}\nB {bs}{}",
            ctx()
        );
        if (live(&ps) && bs["state"] == "halted") || (live(&bs) && ps["state"] == "halted") {
            return (ps, bs);
        }
        assert!(
            start.elapsed() < T,
            "no single winner: P {ps}\nB {bs}{}",
            ctx()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Packets the VMM on `node` wrote into its tap (the guest's transmitted frames): a tap counts
/// what its user space writes as received.
fn tap_tx_packets(net: &TestNet, node: Node) -> u64 {
    let out = std::process::Command::new("ip")
        .args([
            "-n",
            &net.ns(node),
            "-s",
            "-j",
            "link",
            "show",
            "dev",
            "tap0",
        ])
        .output()
        .expect("run ip");
    let v: Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
    v[0]["stats64"]["rx"]["packets"]
        .as_u64()
        .expect("tap0 rx packets")
}

/// The live member's VM is running, the loser's is not: (winner, loser).
fn check_vms(winner: &Tandem, loser: &Tandem, loser_is_primary: bool) {
    winner.wait_state("Running", T);
    if loser_is_primary {
        loser.wait_state("Shutdown", T);
    } else {
        let (code, info) = loser.get("vm.info");
        assert!(
            code != 200 || info["state"] != "Running",
            "the losing backup runs a VM: {info}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Corrupt, truncated and unexpected frames between two real VMMs

/// One tamper case: what the proxy does, who must win (by failure timeouts far apart), and what
/// the backup's reason must name.
struct TamperCase {
    tag: &'static str,
    disk_mode: &'static str,
    tamper: Tamper,
    backup_wins: bool,
    says: &'static str,
}

fn tampered(case: TamperCase) {
    let TamperCase {
        tag,
        disk_mode,
        tamper,
        backup_wins,
        says,
    } = case;
    let net = network(tag);
    let mut spec = Spec::new(tag, disk_mode);
    spec.behind_proxy = true;
    // The winner's detector fires long before the loser's: the outcome is not a race.
    (spec.p_timeout_ms, spec.b_timeout_ms) = if backup_wins {
        (5000, 800)
    } else {
        (800, 5000)
    };
    let pair = Pair::boot(&net, &spec);
    let ctx = || pair.logs();
    let listen = format!("{HOST_B_LINK_IP}:{FT_PORT}").parse().unwrap();
    let upstream = format!("127.0.0.1:{BEHIND_PROXY_PORT}").parse().unwrap();
    let proxy = TamperProxy::start(&net, Node::HostB, listen, upstream, tamper);
    let client = Client::start(&net);
    assert!(
        client.wait_replies_after(Instant::now() - T, 3),
        "no INC before ft.enable{}",
        ctx()
    );
    let generation = ft_status(&pair.b)["generation"].as_u64().unwrap();
    pair.enable();
    let report = proxy.wait_tampered(T);
    let Some((kind, epoch, seq)) = report.tampered else {
        panic!("the proxy never tampered: {report:?}{}", ctx());
    };
    let acked = client.last();
    let (ps, bs) = wait_one_live(&pair, &ctx);
    let decided = proxy.report();
    eprintln!(
        "[{tag}] {tamper:?} on {kind:?} frame {seq} of checkpoint {epoch} (after {} bytes, \
         last intact Commit {:?}, last Ack {:?})\n[{tag}] P: {} {}: {}\n[{tag}] B: {} {}: {}",
        report.forward_bytes,
        report.commits.last(),
        decided.acks.last(),
        ps["role"],
        ps["state"],
        reason(&ps),
        bs["role"],
        bs["state"],
        reason(&bs),
    );
    let last_whole = report.commits.last().copied();
    assert_eq!(
        last_whole.map(|e| e + 1),
        Some(epoch),
        "tampered inside the checkpoint after the last whole one: {report:?}"
    );
    // The backup never acked, committed or went live from the damaged checkpoint: its last
    // committed one is the last that arrived whole (invariant 2).
    assert!(
        decided.acks.iter().all(|a| *a < epoch),
        "the backup acked the damaged checkpoint {epoch}: {decided:?}"
    );
    assert_eq!(
        committed(&bs),
        last_whole,
        "B's last committed: {bs}{}",
        ctx()
    );
    assert!(
        reason(&bs).contains(says),
        "B's reason does not say {says:?}: {bs}{}",
        ctx()
    );
    assert!(
        pair.b.log().contains(says),
        "B's log lacks {says:?}{}",
        ctx()
    );
    let (winner, loser, ws, ls, image) = if backup_wins {
        (&pair.b, &pair.p, &bs, &ps, &pair.b_image)
    } else {
        (&pair.p, &pair.b, &ps, &bs, &pair.p_image)
    };
    assert!(
        is(ws, "primary", "unprotected") && ls["state"] == "halted",
        "expected the {} to win: P {ps}\nB {bs}{}",
        if backup_wins { "backup" } else { "primary" },
        ctx()
    );
    assert_eq!(ws["generation"].as_u64(), Some(generation + 1), "{ws}");
    assert_eq!(ls["generation"].as_u64(), Some(generation), "{ls}");
    assert!(reason(ls).contains("lost arbitration"), "loser: {ls}");
    assert_eq!(ws["failover_count"], u64::from(backup_wins), "{ws}");
    if backup_wins {
        assert!(reason(ws).contains("live as primary"), "{ws}");
        let line = format!("from checkpoint {last_whole:?}");
        assert!(
            pair.b.log().contains(&line),
            "B's log lacks {line:?}{}",
            ctx()
        );
    } else {
        assert!(reason(ws).contains("won generation"), "{ws}");
    }
    check_vms(winner, loser, backup_wins);
    // The client's connection carries on, served by the winner, without a lost INC.
    let progressed = client.wait_replies_after(Instant::now(), 3);
    let (seen, result) = client.finish();
    if let Err(e) = result.and_then(|()| counts_up(&seen)) {
        panic!("client: {e}{}", ctx());
    }
    assert!(
        progressed && seen.last() > acked.as_ref(),
        "no progress{}",
        ctx()
    );
    let last = seen.last().copied();
    assert_eq!(wait_disk(image, last), last, "counter on the winner's disk");
    // Still exactly one live, both saying why.
    let (ps2, bs2) = pair.statuses();
    let (w2, l2) = if backup_wins { (bs2, ps2) } else { (ps2, bs2) };
    assert!(is(&w2, "primary", "unprotected") && l2["state"] == "halted");
    drop(proxy);
}

#[test]
fn tamper_flipped_byte_backup_goes_live_from_the_last_whole_checkpoint() {
    require!(kvm, netns);
    tampered(TamperCase {
        tag: "tfl",
        disk_mode: "shared",
        tamper: Tamper::FlipByte { after_commits: 40 },
        backup_wins: true,
        says: "checksum mismatch",
    });
}

#[test]
fn tamper_truncated_stream_backup_goes_live_from_the_last_whole_checkpoint() {
    require!(kvm, netns);
    tampered(TamperCase {
        tag: "ttr",
        disk_mode: "replicated",
        tamper: Tamper::Truncate { after_commits: 1 },
        backup_wins: true,
        says: "truncated frame",
    });
}

#[test]
fn tamper_unexpected_frame_the_primary_wins_and_the_backup_says_why() {
    require!(kvm, netns);
    tampered(TamperCase {
        tag: "tin",
        disk_mode: "shared",
        tamper: Tamper::InjectAck { after_commits: 40 },
        backup_wins: false,
        says: "unexpected Ack frame",
    });
}

#[test]
fn tamper_authenticated_stream_altered_byte_is_refused_and_the_backup_goes_live_from_whole_checkpoints(
) {
    require!(kvm, netns);
    let tag = "tau";
    let net = network(tag);
    let mut spec = Spec::new(tag, "shared");
    spec.behind_proxy = true;
    spec.keyed = true;
    (spec.p_timeout_ms, spec.b_timeout_ms) = (5000, 800);
    let pair = Pair::boot(&net, &spec);
    let ctx = || pair.logs();
    let listen = format!("{HOST_B_LINK_IP}:{FT_PORT}").parse().unwrap();
    let upstream = format!("127.0.0.1:{BEHIND_PROXY_PORT}").parse().unwrap();
    let after = Duration::from_secs(3);
    let proxy = TamperProxy::start(
        &net,
        Node::HostB,
        listen,
        upstream,
        Tamper::FlipRaw { after },
    );
    let client = Client::start(&net);
    let generation = ft_status(&pair.b)["generation"].as_u64().unwrap();
    pair.enable();
    let (ps, bs) = pair.wait_protected();
    assert!(
        ps["authenticated"] == true && bs["authenticated"] == true,
        "{ps}\n{bs}"
    );
    let report = proxy.wait_tampered(T);
    assert!(
        report.flipped_raw,
        "the proxy never flipped: {report:?}{}",
        ctx()
    );
    let committed_before = committed(&ft_status(&pair.b));
    let acked = client.last();
    let (ps, bs) = wait_one_live(&pair, &ctx);
    // The record layer refuses the altered byte before any frame decoder sees it; the backup
    // goes live from the last checkpoint it verified whole.
    assert!(
        is(&bs, "primary", "unprotected"),
        "B: {bs}\nP: {ps}{}",
        ctx()
    );
    assert!(
        reason(&bs).contains("authentication failed"),
        "B's reason: {bs}{}",
        ctx()
    );
    assert!(reason(&ps).contains("lost arbitration"), "P: {ps}");
    assert_eq!(bs["generation"].as_u64(), Some(generation + 1), "{bs}");
    assert!(committed(&bs) >= committed_before, "{bs}");
    let progressed = client.wait_replies_after(Instant::now(), 3);
    let (seen, result) = client.finish();
    if let Err(e) = result.and_then(|()| counts_up(&seen)) {
        panic!("client: {e}{}", ctx());
    }
    assert!(
        progressed && seen.last() > acked.as_ref(),
        "no progress{}",
        ctx()
    );
    let last = seen.last().copied();
    assert_eq!(wait_disk(&pair.b_image, last), last, "counter on B's disk");
    drop(proxy);
}

// ---------------------------------------------------------------------------------------------
// 3. A partition the backup wins

#[test]
fn link_partition_the_backup_wins_and_the_old_primary_halts_with_outputs_frozen() {
    require!(kvm, netns);
    let net = network("fpb");
    let mut spec = Spec::new("fpb", "shared");
    (spec.p_timeout_ms, spec.b_timeout_ms) = (5000, 800);
    let pair = Pair::boot(&net, &spec);
    let ctx = || pair.logs();
    let client = Client::start(&net);
    pair.enable();
    let (ps, _) = pair.wait_protected();
    let generation = ps["generation"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    net.set_link(Node::HostP, false);
    let cut = Instant::now();
    let acked = client.last();
    // The backup wins first; the old primary, with its longer timeout, still waits.
    wait_takeover(&pair.b, &ctx);
    let took = cut.elapsed();
    let frozen = tap_tx_packets(&net, Node::HostP);
    let bs = ft_status(&pair.b);
    assert_eq!(bs["failover_count"], 1, "{bs}");
    assert_eq!(bs["generation"].as_u64(), Some(generation + 1), "{bs}");
    let ps = ft_status(&pair.p);
    // Only meaningful while its 5 s timeout cannot have run out yet (a loaded host may take
    // that long to get here).
    if cut.elapsed() < Duration::from_millis(4500) {
        assert!(
            is(&ps, "primary", "protected"),
            "the old primary decided before its timeout: {ps}{}",
            ctx()
        );
    } else {
        eprintln!("[fpb] too late to see the old primary still waiting: {ps}");
    }
    let (ps, bs) = wait_one_live(&pair, &ctx);
    let halted = cut.elapsed();
    eprintln!(
        "[fpb] link cut: backup live after {took:?} ({}); old primary halted after {halted:?} \
         ({})",
        reason(&bs),
        reason(&ps)
    );
    assert!(
        reason(&ps).contains("lost arbitration") && reason(&ps).contains("generation"),
        "{ps}"
    );
    assert_eq!(ps["generation"].as_u64(), Some(generation), "{ps}");
    check_vms(&pair.b, &pair.p, true);
    // The client carries on with the new primary.
    let progressed = client.wait_replies_after(Instant::now(), 5);
    std::thread::sleep(Duration::from_millis(300));
    let (seen, result) = client.finish();
    if let Err(e) = result.and_then(|()| counts_up(&seen)) {
        panic!("client: {e}{}", ctx());
    }
    assert!(
        progressed && seen.last() > acked.as_ref(),
        "no progress{}",
        ctx()
    );
    // Nothing the old primary held got out: not before it halted, not after.
    assert_eq!(
        tap_tx_packets(&net, Node::HostP),
        frozen,
        "the old primary sent frames after the backup went live{}",
        ctx()
    );
    let last = seen.last().copied();
    assert_eq!(wait_disk(&pair.b_image, last), last, "counter on the disk");
    let (ps, bs) = pair.statuses();
    assert!(is(&bs, "primary", "unprotected") && ps["state"] == "halted");
}
