//! FT checkpoint replication between fake VMs over loopback TCP: the backup matches the primary
//! at the last acked capture point, outputs are released in order and only after the ack,
//! output-triggered epochs, backpressure, and every way a checkpoint can be lost on the wire.

mod common;

use common::fake_vm::{FakeVm, Probe};
use common::proxy::{self, Fault};
use ft::checkpoint::{
    BackupExit, BackupHooks, BackupOptions, CheckpointError, CheckpointStats, EpochHooks, FtBackup,
    FtPrimary, PrimaryExit, PrimaryOptions, ReceivedCheckpoint, StatsSink, Summary, Trigger,
};
use ft::frame::{encode_frame, Decoder, Frame, Hello, PageBatch, StreamPurpose, PAGE_SIZE};
use ft::migration::{MigrationError, ReceiveOptions, SendOptions};
use ft::transport::{connect, Endpoint, Listener};
use ft::vm::{MigratableVm, VmState};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const PAGES: u64 = 1024; // 4 MiB
const VCPUS: u32 = 2;

/// The gates' side as the tests see it: what was captured and released, and the primary's memory
/// and state at each capture point.
struct Gates {
    probe: Option<Probe>,
    output_waiting: AtomicBool,
    log: Mutex<Vec<(char, u64, Instant)>>,
    snapshots: Mutex<HashMap<u64, (Vec<u8>, VmState)>>,
}

impl Gates {
    fn new(probe: Option<Probe>) -> Arc<Gates> {
        Arc::new(Gates {
            probe,
            output_waiting: AtomicBool::new(false),
            log: Mutex::new(Vec::new()),
            snapshots: Mutex::new(HashMap::new()),
        })
    }
    fn events(&self, kind: char) -> Vec<(u64, Instant)> {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter(|e| e.0 == kind)
            .map(|e| (e.1, e.2))
            .collect()
    }
    fn snapshot(&self, n: u64) -> (Vec<u8>, VmState) {
        self.snapshots.lock().unwrap()[&n].clone()
    }
}

impl EpochHooks for Gates {
    fn epoch_captured(&self, n: u64) {
        self.log.lock().unwrap().push(('c', n, Instant::now()));
        if let Some(p) = &self.probe {
            // Called while the VM is paused: this is the capture point.
            let mut s = self.snapshots.lock().unwrap();
            s.insert(n, (p.memory(), p.state()));
            s.retain(|&k, _| k + 8 > n);
        }
    }
    fn take_epoch_extras(&self, n: u64) -> Vec<u8> {
        format!("write log of epoch {n}").into_bytes()
    }
    fn epoch_committed(&self, n: u64) {
        self.log.lock().unwrap().push(('r', n, Instant::now()));
    }
    fn output_waiting(&self) -> bool {
        self.output_waiting.load(Ordering::SeqCst)
    }
}

#[derive(Default)]
struct Stats(Mutex<Vec<CheckpointStats>>);

impl StatsSink for Stats {
    fn checkpoint_committed(&self, s: &CheckpointStats) {
        self.0.lock().unwrap().push(s.clone());
    }
}

#[derive(Default)]
struct BackupLog(Mutex<Vec<(u64, Vec<u8>)>>, AtomicU64);

impl BackupHooks for BackupLog {
    fn backup_committed(&self, n: u64, extras: &[u8]) {
        self.0.lock().unwrap().push((n, extras.to_vec()));
    }
    fn heartbeat_sent(&self) {
        self.1.fetch_add(1, Ordering::SeqCst);
    }
}

/// The metrics' view of a primary: in-flight reports and heartbeats sent.
#[derive(Default)]
struct Metered {
    in_flight: Mutex<Vec<(usize, u64)>>,
    beats: AtomicU64,
}

impl StatsSink for Metered {
    fn checkpoint_committed(&self, _s: &CheckpointStats) {}
    fn in_flight(&self, epochs: usize, staged_bytes: u64) {
        self.in_flight.lock().unwrap().push((epochs, staged_bytes));
    }
}

impl EpochHooks for Metered {
    fn epoch_captured(&self, _n: u64) {}
    fn take_epoch_extras(&self, _n: u64) -> Vec<u8> {
        Vec::new()
    }
    fn epoch_committed(&self, _n: u64) {}
    fn output_waiting(&self) -> bool {
        false
    }
    fn heartbeat_sent(&self) {
        self.beats.fetch_add(1, Ordering::SeqCst);
    }
}

/// A backup's per-checkpoint figures, as `checkpoint_received` reports them.
#[derive(Default)]
struct Received(Mutex<Vec<ReceivedCheckpoint>>);

impl BackupHooks for Received {
    fn backup_committed(&self, _n: u64, _extras: &[u8]) {}
    fn checkpoint_received(&self, r: &ReceivedCheckpoint) {
        self.0.lock().unwrap().push(*r);
    }
}

fn primary_opts() -> PrimaryOptions {
    PrimaryOptions {
        sync: SendOptions {
            io_timeout: Duration::from_secs(10),
            commit_timeout: Duration::from_secs(10),
            ..SendOptions::default()
        },
        checkpoint_interval: Duration::from_millis(10),
        ..PrimaryOptions::default()
    }
}

fn backup_opts() -> BackupOptions {
    BackupOptions {
        sync: ReceiveOptions {
            io_timeout: Duration::from_secs(10),
            ..ReceiveOptions::default()
        },
        heartbeat_interval: Duration::from_millis(20),
        peer_timeout: Duration::from_secs(5),
    }
}

type Backup = JoinHandle<(BackupExit<FakeVm>, Arc<BackupLog>)>;

fn spawn_backup() -> (SocketAddr, Backup) {
    let l = Listener::bind(&"tcp:127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = l.local_endpoint().to_string()[4..].parse().unwrap();
    let t = std::thread::spawn(move || {
        let conn = l.accept(Some(Duration::from_secs(10))).unwrap();
        let log = Arc::new(BackupLog::default());
        let vm = FakeVm::destination(PAGES, VCPUS);
        (FtBackup::run(vm, conn, &backup_opts(), log.clone()), log)
    });
    (addr, t)
}

/// How long a loaded host may take to reach a test's minimum: far above what an idle one needs,
/// well under nextest's kill timer.
const DEADLINE: Duration = Duration::from_secs(60);

/// Runs a primary against `addr` for `run_for`, then stops it.
fn run_primary(
    addr: SocketAddr,
    rate: u64,
    opts: &PrimaryOptions,
    gates: impl FnOnce(&FakeVm) -> Arc<Gates>,
    run_for: Duration,
) -> (PrimaryExit<FakeVm>, Arc<Gates>, Vec<CheckpointStats>) {
    run_primary_until(addr, rate, opts, gates, run_for, 0)
}

/// Runs a primary against `addr` for at least `run_for` and until `min_checkpoints` are
/// committed (a loaded host is slower, not wrong), or it fails, or [`DEADLINE`]; then stops it.
fn run_primary_until(
    addr: SocketAddr,
    rate: u64,
    opts: &PrimaryOptions,
    gates: impl FnOnce(&FakeVm) -> Arc<Gates>,
    run_for: Duration,
    min_checkpoints: usize,
) -> (PrimaryExit<FakeVm>, Arc<Gates>, Vec<CheckpointStats>) {
    let src = FakeVm::source(PAGES, VCPUS, rate, 7);
    let gates = gates(&src);
    let stats = Arc::new(Stats::default());
    let ep: Endpoint = format!("tcp:{addr}").parse().unwrap();
    let conn = connect(&ep, Duration::from_secs(5)).unwrap();
    let p = FtPrimary::start(src, conn, opts, gates.clone(), stats.clone())
        .unwrap_or_else(|e| panic!("start: {}", ft::migration::error_chain(&e.1)));
    let start = Instant::now();
    let done = || start.elapsed() >= run_for && stats.0.lock().unwrap().len() >= min_checkpoints;
    while !done() && start.elapsed() < DEADLINE && !p.has_failed() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let exit = p.stop().unwrap();
    let stats = stats.0.lock().unwrap().clone();
    (exit, gates, stats)
}

fn print_figures(name: &str, stats: &[CheckpointStats]) {
    let s = Summary::of(stats);
    println!(
        "[{name}] {} checkpoints: pause p50 {:?} p99 {:?} max {:?}; bytes/checkpoint p50 {} mean {}; \
         ack latency p50 {:?} p99 {:?}; stall total {:?}",
        s.count, s.pause_p50, s.pause_p99, s.pause_max, s.bytes_p50, s.bytes_mean, s.ack_p50,
        s.ack_p99, s.stall_total
    );
}

fn cause(e: &CheckpointError) -> (&CheckpointError, Option<u64>) {
    match e {
        CheckpointError::BackupStopped {
            last_committed,
            cause,
        } => (cause, *last_committed),
        other => panic!("backup error is not BackupStopped: {other:?}"),
    }
}

/// The backup's memory and kept state equal the primary's at capture point `n`.
fn assert_backup_at(b: &FtBackup<FakeVm>, gates: &Gates, n: u64) {
    let (mem, state) = gates.snapshot(n);
    assert!(
        b.vm().memory() == mem,
        "backup memory differs from capture {n}"
    );
    assert_eq!(b.committed_state(), Some(&state), "backup state of {n}");
    assert!(!b.vm().is_running(), "a backup never runs before go_live");
}

#[test]
fn backup_matches_primary_at_last_acked_capture_and_goes_live_from_it() {
    let (addr, backup) = spawn_backup();
    let (exit, gates, stats) = run_primary_until(
        addr,
        3000,
        &primary_opts(),
        |vm| Gates::new(Some(vm.probe())),
        Duration::from_millis(600),
        10,
    );
    assert!(exit.error.is_none(), "{:?}", exit.error);
    assert!(exit.vm.is_running(), "the primary runs on after stop");
    let last = exit.report.committed.unwrap();
    assert_eq!(last, exit.report.captured, "stop waits for every ack");
    assert!(last >= 10, "only {last} checkpoints in {DEADLINE:?}");

    let (bexit, blog) = backup.join().unwrap();
    let (c, committed) = cause(&bexit.error);
    assert_eq!(committed, Some(last));
    assert!(
        matches!(c, CheckpointError::Stream(MigrationError::PeerClosed)),
        "{c:?}"
    );
    assert_backup_at(&bexit.backup, &gates, last);

    // Releases: 0 (initial sync) then 1, 2, ... in order, each after its capture.
    let released: Vec<u64> = gates.events('r').iter().map(|e| e.0).collect();
    assert_eq!(released, (0..=last).collect::<Vec<_>>());
    let blog = blog.0.lock().unwrap();
    assert_eq!(blog.len() as u64, last + 1);
    assert_eq!(blog[3], (3, b"write log of epoch 3".to_vec()));

    let (_, state) = gates.snapshot(last);
    let live = bexit.backup.go_live().unwrap();
    assert!(live.is_running());
    assert_eq!(live.restored_state(), Some(&state));
    assert!(stats.iter().all(|s| s.trigger == Trigger::Timer));
    print_figures("3000 pages/s, 10 ms epochs (with test snapshots)", &stats);
}

#[test]
fn ending_on_purpose_tells_the_backup_which_a_closed_stream_does_not() {
    let (addr, backup) = spawn_backup();
    let src = FakeVm::source(PAGES, VCPUS, 1000, 7);
    let gates = Gates::new(None);
    let ep: Endpoint = format!("tcp:{addr}").parse().unwrap();
    let conn = connect(&ep, Duration::from_secs(5)).unwrap();
    let p = FtPrimary::start(
        src,
        conn,
        &primary_opts(),
        gates,
        Arc::new(Stats::default()),
    )
    .unwrap_or_else(|e| panic!("start: {}", ft::migration::error_chain(&e.1)));
    std::thread::sleep(Duration::from_millis(200));
    let exit = p.end("guest powered off").unwrap();
    assert!(exit.error.is_none(), "{:?}", exit.error);
    assert!(exit.end_confirmed, "the backup confirms an intended end");
    assert!(exit.vm.is_running());
    let (bexit, _) = backup.join().unwrap();
    let (c, committed) = cause(&bexit.error);
    assert_eq!(
        committed, exit.report.committed,
        "every checkpoint acked first"
    );
    match c {
        CheckpointError::Stream(MigrationError::PeerAborted { reason }) => {
            assert_eq!(reason, "guest powered off")
        }
        other => panic!("backup saw {other:?}, not the primary's Abort"),
    }
}

#[test]
fn backup_built_from_the_hello_matches_the_primary() {
    let l = Listener::bind(&"tcp:127.0.0.1:0".parse().unwrap()).unwrap();
    let addr: SocketAddr = l.local_endpoint().to_string()[4..].parse().unwrap();
    let backup = std::thread::spawn(move || {
        let conn = l.accept(Some(Duration::from_secs(10))).unwrap();
        let log = Arc::new(BackupLog::default());
        let exit = FtBackup::run_built(conn, &backup_opts(), log, |hello| {
            let id = &hello.identity;
            assert_eq!(id.vcpu_count, VCPUS);
            // The primary's settings come with its Hello; this backup adopts them.
            let pair =
                ft::checkpoint::PairSettings::from_json(hello.pair.as_deref().unwrap()).unwrap();
            let agreed = ft::checkpoint::agree(&pair, &Default::default()).unwrap();
            let vm = FakeVm::destination(id.memory_size / PAGE_SIZE as u64, id.vcpu_count);
            Ok((vm, Some(agreed)))
        });
        exit.map_err(|e| e.to_string())
    });
    let (exit, gates, _) = run_primary(
        addr,
        1000,
        &primary_opts(),
        |vm| Gates::new(Some(vm.probe())),
        Duration::from_millis(200),
    );
    let last = exit.report.committed.unwrap();
    let bexit = backup.join().unwrap().unwrap();
    assert_eq!(cause(&bexit.error).1, Some(last));
    assert_backup_at(&bexit.backup, &gates, last);
}

#[test]
fn backup_that_cannot_build_the_vm_refuses_and_tells_the_primary() {
    let l = Listener::bind(&"tcp:127.0.0.1:0".parse().unwrap()).unwrap();
    let addr: SocketAddr = l.local_endpoint().to_string()[4..].parse().unwrap();
    let backup = std::thread::spawn(move || {
        let conn = l.accept(Some(Duration::from_secs(10))).unwrap();
        let log = Arc::new(BackupLog::default());
        FtBackup::<FakeVm>::run_built(conn, &backup_opts(), log, |_| Err("no such tap".into()))
            .err()
            .map(|e| ft::migration::error_chain(&e))
    });
    let src = FakeVm::source(PAGES, VCPUS, 1000, 7);
    let ep: Endpoint = format!("tcp:{addr}").parse().unwrap();
    let conn = connect(&ep, Duration::from_secs(5)).unwrap();
    let r = FtPrimary::start(
        src,
        conn,
        &primary_opts(),
        Gates::new(None),
        Arc::new(Stats::default()),
    );
    let e = match r {
        Ok(_) => panic!("the primary started against a backup that refused"),
        Err(b) => ft::migration::error_chain(&b.1),
    };
    assert!(e.contains("no such tap"), "primary saw: {e}");
    let b = backup.join().unwrap().expect("backup must refuse");
    assert!(b.contains("no such tap"), "backup says: {b}");
}

#[test]
fn figures_without_test_snapshots() {
    let (addr, backup) = spawn_backup();
    let (exit, _, stats) = run_primary(
        addr,
        5000,
        &primary_opts(),
        |_| Gates::new(None),
        Duration::from_millis(800),
    );
    assert!(exit.error.is_none(), "{:?}", exit.error);
    let _ = backup.join().unwrap();
    print_figures("5000 pages/s, 10 ms epochs", &stats);
    println!(
        "initial sync: {} rounds, {} bytes, pause {:?}",
        exit.report.sync.rounds, exit.report.sync.bytes_sent, exit.report.sync.downtime
    );
}

#[test]
fn outputs_are_released_only_after_the_backups_ack() {
    let (baddr, backup) = spawn_backup();
    let delay = Duration::from_millis(30);
    let (paddr, _p) = proxy::start(baddr, Fault::DelayReplies(delay));
    let (exit, gates, _) = run_primary_until(
        paddr,
        1000,
        &primary_opts(),
        |_| Gates::new(None),
        Duration::from_millis(500),
        4,
    );
    assert!(exit.error.is_none(), "{:?}", exit.error);
    let captured: HashMap<u64, Instant> = gates.events('c').into_iter().collect();
    let released = gates.events('r');
    assert!(released.len() > 3);
    for w in released.windows(2) {
        assert_eq!(w[1].0, w[0].0 + 1, "released out of order");
    }
    for (n, at) in released.iter().skip(1) {
        let waited = at.duration_since(captured[n]);
        assert!(
            waited >= delay,
            "epoch {n} released {waited:?} after capture"
        );
    }
    let _ = backup.join().unwrap();
}

#[test]
fn output_waiting_ends_epochs_early() {
    let (addr, backup) = spawn_backup();
    let opts = PrimaryOptions {
        checkpoint_interval: Duration::from_secs(10),
        ..primary_opts()
    };
    let (exit, _, stats) = run_primary_until(
        addr,
        1000,
        &opts,
        |_| {
            let g = Gates::new(None);
            g.output_waiting.store(true, Ordering::SeqCst);
            g
        },
        Duration::from_millis(400),
        5,
    );
    assert!(exit.error.is_none(), "{:?}", exit.error);
    assert!(
        stats.len() >= 5,
        "{} checkpoints with a 10 s interval",
        stats.len()
    );
    assert!(stats.iter().all(|s| s.trigger == Trigger::Output));
    assert!(
        stats.iter().all(|s| s.in_flight_before == 0),
        "an output-triggered epoch waits for the previous ack"
    );
    print_figures("output-triggered", &stats);
    let _ = backup.join().unwrap();
}

#[test]
fn slow_backup_bounds_in_flight_and_stalls_epochs() {
    let (baddr, backup) = spawn_backup();
    let (paddr, _p) = proxy::start(baddr, Fault::DelayReplies(Duration::from_millis(50)));
    let opts = PrimaryOptions {
        checkpoint_interval: Duration::from_millis(2),
        max_in_flight: 2,
        ..primary_opts()
    };
    let run_for = Duration::from_millis(800);
    let (exit, _, stats) = run_primary(paddr, 2000, &opts, |_| Gates::new(None), run_for);
    assert!(exit.error.is_none(), "{:?}", exit.error);
    assert!(exit.report.peak_in_flight <= 2, "{:?}", exit.report);
    assert!(
        exit.report.captured < 400 / 2,
        "{} checkpoints: epochs queued instead of stalling",
        exit.report.captured
    );
    assert!(exit.report.total_stall > run_for / 2, "{:?}", exit.report);
    println!(
        "[slow backup] peak in flight {}, {} bytes; stall {:?} over {:?}",
        exit.report.peak_in_flight,
        exit.report.peak_in_flight_bytes,
        exit.report.total_stall,
        run_for
    );
    print_figures("slow backup (50 ms ack delay, K=2)", &stats);
    let _ = backup.join().unwrap();
}

/// Runs a primary against `addr` with `opts`, metered, for at least `run_for` and until `enough`
/// holds (or [`DEADLINE`]).
fn run_metered(
    addr: SocketAddr,
    opts: &PrimaryOptions,
    run_for: Duration,
    enough: impl Fn(&Metered) -> bool,
) -> Arc<Metered> {
    let m = Arc::new(Metered::default());
    let ep: Endpoint = format!("tcp:{addr}").parse().unwrap();
    let conn = connect(&ep, Duration::from_secs(5)).unwrap();
    let src = FakeVm::source(PAGES, VCPUS, 2000, 3);
    let p = FtPrimary::start(src, conn, opts, m.clone(), m.clone())
        .unwrap_or_else(|e| panic!("start: {}", ft::migration::error_chain(&e.1)));
    let start = Instant::now();
    while (start.elapsed() < run_for || !enough(&m)) && start.elapsed() < DEADLINE {
        std::thread::sleep(Duration::from_millis(5));
    }
    let exit = p.stop().unwrap();
    assert!(exit.error.is_none(), "{:?}", exit.error);
    m
}

#[test]
fn backlog_reports_follow_the_window_and_heartbeats_are_counted() {
    // A slow backup: the window fills up to K and drains on each ack.
    let (baddr, backup) = spawn_backup();
    let (paddr, _p) = proxy::start(baddr, Fault::DelayReplies(Duration::from_millis(30)));
    let opts = PrimaryOptions {
        checkpoint_interval: Duration::from_millis(2),
        max_in_flight: 2,
        ..primary_opts()
    };
    let m = run_metered(paddr, &opts, Duration::from_millis(400), |m| {
        let r = m.in_flight.lock().unwrap();
        r.len() > 4 && r.iter().any(|&(n, _)| n == 2)
    });
    let reports = m.in_flight.lock().unwrap().clone();
    assert!(reports.len() > 4, "{reports:?}");
    assert!(reports.iter().all(|&(n, _)| n <= 2), "{reports:?}");
    assert!(reports.iter().any(|&(n, _)| n == 2), "{reports:?}");
    assert!(
        reports.iter().all(|&(n, b)| (n == 0) == (b == 0)),
        "bytes follow the count: {reports:?}"
    );
    let _ = backup.join().unwrap();

    // Idle between long epochs: both sides send heartbeats (the backup's every 20 ms of
    // silence, so the primary's come less often).
    let (addr, backup) = spawn_backup();
    let opts = PrimaryOptions {
        checkpoint_interval: Duration::from_millis(400),
        heartbeat_interval: Duration::from_millis(60),
        ..primary_opts()
    };
    let m = run_metered(addr, &opts, Duration::from_millis(300), |m| {
        m.beats.load(Ordering::SeqCst) >= 2
    });
    let beats = m.beats.load(Ordering::SeqCst);
    let (_, log) = backup.join().unwrap();
    let backup_beats = log.1.load(Ordering::SeqCst);
    println!("[idle 300 ms] primary sent {beats}, backup sent {backup_beats}");
    assert!(beats >= 2, "primary heartbeats: {beats}");
    assert!(backup_beats >= 2, "backup heartbeats: {backup_beats}");
}

/// Runs a fast-dirtying primary through a faulty proxy; returns the backup's exit, the gates,
/// the primary's exit and where a mid-checkpoint cut fell.
fn through_fault(
    fault: Fault,
) -> (
    BackupExit<FakeVm>,
    Arc<Gates>,
    PrimaryExit<FakeVm>,
    Option<proxy::MidCheckpointCut>,
) {
    let (baddr, backup) = spawn_backup();
    let (paddr, proxy) = proxy::start(baddr, fault);
    // Until the fault ends the stream (the primary fails), however long a loaded host takes to
    // reach its offset.
    let (exit, gates, _) = run_primary_until(
        paddr,
        20000,
        &PrimaryOptions {
            checkpoint_interval: Duration::from_millis(20),
            // A small, evicting cache: most pages still go whole, so the stream reaches the
            // fault's offset in time, and deltas are in the stream around it.
            delta_cache_bytes: 64 * PAGE_SIZE as u64,
            ..primary_opts()
        },
        |vm| Gates::new(Some(vm.probe())),
        Duration::ZERO,
        usize::MAX,
    );
    let cut = proxy.join().unwrap();
    (backup.join().unwrap().0, gates, exit, cut)
}

#[test]
fn cut_mid_checkpoint_keeps_the_previous_one() {
    let (bexit, gates, pexit, cut) = through_fault(Fault::CutMidCheckpoint(12 << 20));
    let cut = cut.expect("the proxy never cut inside a checkpoint");
    println!("cut: {cut:?}: {}", ft::migration::error_chain(&bexit.error));
    // The backup held part of checkpoint `cut.epoch` (a whole page frame and more), no Commit of
    // it, and the Commit of the one before.
    assert!(cut.whole_frames >= 1, "{cut:?}");
    assert_eq!(cut.last_commit + 1, cut.epoch, "{cut:?}");
    let (c, last) = cause(&bexit.error);
    assert_eq!(
        last,
        Some(cut.last_commit),
        "the backup's last committed checkpoint is the last whole one"
    );
    assert!(
        gates.events('c').iter().any(|(n, _)| *n >= cut.epoch),
        "the primary captured the cut checkpoint"
    );
    assert!(
        matches!(
            c,
            CheckpointError::Stream(MigrationError::Frame(
                ft::frame::FrameError::Truncated { .. }
            )) | CheckpointError::Stream(MigrationError::PeerClosed)
                | CheckpointError::Stream(MigrationError::Receive(_))
                // The backup's heartbeat or Ack can meet the cut first.
                | CheckpointError::Stream(MigrationError::Send(_))
        ),
        "{c:?}"
    );
    assert_backup_at(&bexit.backup, &gates, cut.last_commit);
    assert!(pexit.error.is_some(), "the primary notices the cut");
    assert!(pexit.report.committed.unwrap() <= cut.last_commit);
    assert!(pexit.vm.is_running());
}

#[test]
fn corrupt_frame_is_a_clean_error_and_nothing_of_it_is_applied() {
    let (bexit, gates, _, _) = through_fault(Fault::FlipBitAt(12 << 20));
    let (c, last) = cause(&bexit.error);
    assert!(
        matches!(c, CheckpointError::Stream(MigrationError::Frame(_))),
        "{c:?}"
    );
    println!("corrupt: {}", ft::migration::error_chain(&bexit.error));
    assert_backup_at(&bexit.backup, &gates, last.unwrap());
}

/// A primary written frame by frame, for exact stream shapes.
struct Script {
    s: TcpStream,
    seq: u64,
    dec: Decoder,
}

impl Script {
    fn connect(addr: SocketAddr) -> Script {
        Script {
            s: TcpStream::connect(addr).unwrap(),
            seq: 0,
            dec: Decoder::new(),
        }
    }
    fn bytes(&mut self, f: &Frame, epoch: u64, flags: u8) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(f, self.seq, epoch, flags, &mut out).unwrap();
        self.seq += 1;
        out
    }
    fn send(&mut self, f: &Frame, epoch: u64) {
        let b = self.bytes(f, epoch, 0);
        self.s.write_all(&b).unwrap();
    }
    /// The next frame that is not a heartbeat.
    fn recv(&mut self) -> Frame {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(f) = self.dec.next_frame().unwrap() {
                if !matches!(f.frame, Frame::Heartbeat { .. }) {
                    return f.frame;
                }
                continue;
            }
            let n = self.s.read(&mut buf).unwrap();
            assert!(n > 0, "backup closed");
            self.dec.push(&buf[..n]);
        }
    }
    /// Initial sync of an all-zero VM: Hello, empty full pass, state, Commit.
    fn sync(&mut self) {
        let id = FakeVm::destination(PAGES, VCPUS).identity();
        let hello = Frame::Hello(Hello::new(StreamPurpose::FaultTolerance, id));
        self.send(&hello, 0);
        assert!(matches!(self.recv(), Frame::Ack { seq: 0 }));
        self.send(&Frame::EndOfRound { pages: 0 }, 0);
        self.state(1, "sync");
        self.send(
            &Frame::Commit {
                vcpus: 2,
                pages: 0,
                info: None,
            },
            1,
        );
        assert!(matches!(self.recv(), Frame::Ack { .. }));
    }
    fn state(&mut self, epoch: u64, tag: &str) {
        for index in 0..VCPUS {
            let data = format!("{tag} vcpu {index}").into_bytes();
            self.send(&Frame::VcpuState { index, data }, epoch);
        }
        self.send(&Frame::DeviceState(tag.as_bytes().to_vec()), epoch);
    }
    fn page(&mut self, epoch: u64, pfn: u64, fill: u8) {
        let mut b = PageBatch::new();
        b.push_data(pfn, &[fill; PAGE_SIZE]);
        self.send(&Frame::MemoryPages(b), epoch);
    }
    fn extras(&mut self, epoch: u64, data: &[u8]) {
        let total = data.len() as u64;
        let data = data.to_vec();
        self.send(
            &Frame::Extras {
                offset: 0,
                total,
                data,
            },
            epoch,
        );
    }
    /// A whole checkpoint writing `fill` into page 5.
    fn checkpoint(&mut self, epoch: u64, fill: u8) {
        self.page(epoch, 5, fill);
        self.state(epoch, &format!("cp{epoch}"));
        self.extras(epoch, b"log");
        self.send(
            &Frame::Commit {
                vcpus: 2,
                pages: 1,
                info: None,
            },
            epoch,
        );
        assert!(matches!(self.recv(), Frame::Ack { .. }));
    }
}

/// A backup fed by a script: runs `script` after a sync and checkpoint 1, then returns the exit.
fn scripted(script: impl FnOnce(&mut Script)) -> BackupExit<FakeVm> {
    let (addr, backup) = spawn_backup();
    let mut s = Script::connect(addr);
    s.sync();
    s.checkpoint(1, 0x11);
    script(&mut s);
    let exit = backup.join().unwrap().0;
    drop(s);
    exit
}

fn assert_at_checkpoint_1(b: &FtBackup<FakeVm>) {
    let mem = b.vm().memory();
    assert!(mem[5 * PAGE_SIZE..6 * PAGE_SIZE].iter().all(|&x| x == 0x11));
    assert_eq!(b.committed_state().unwrap().devices, b"cp1");
}

#[test]
fn truncated_stream_discards_the_partial_checkpoint() {
    let exit = scripted(|s| {
        s.page(2, 5, 0x22);
        s.state(2, "cp2");
        let mut b = s.bytes(
            &Frame::Commit {
                vcpus: 2,
                pages: 1,
                info: None,
            },
            2,
            1,
        );
        b.truncate(20);
        s.s.write_all(&b).unwrap();
        s.s.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let (c, last) = cause(&exit.error);
    assert_eq!(last, Some(1));
    assert!(
        matches!(
            c,
            CheckpointError::Stream(MigrationError::Frame(
                ft::frame::FrameError::Truncated { .. }
            ))
        ),
        "{c:?}"
    );
    assert!(exit
        .error
        .to_string()
        .contains("last committed checkpoint: Some(1)"));
    assert_at_checkpoint_1(&exit.backup);
    let live = exit.backup.go_live().unwrap();
    assert_eq!(live.restored_state().unwrap().devices, b"cp1");
    assert!(live.is_running());
}

#[test]
fn unexpected_frame_type_is_a_clean_error() {
    let exit = scripted(|s| {
        s.page(2, 5, 0x22);
        s.send(&Frame::EndOfRound { pages: 1 }, 2);
    });
    let (c, last) = cause(&exit.error);
    assert_eq!(last, Some(1));
    assert!(
        matches!(
            c,
            CheckpointError::Stream(MigrationError::Frame(
                ft::frame::FrameError::UnexpectedType { .. }
            ))
        ),
        "{c:?}"
    );
    assert_at_checkpoint_1(&exit.backup);
}

#[test]
fn commit_that_does_not_match_what_arrived_is_discarded() {
    let exit = scripted(|s| {
        s.page(2, 5, 0x22);
        s.state(2, "cp2");
        s.extras(2, b"x");
        s.send(
            &Frame::Commit {
                vcpus: 2,
                pages: 2,
                info: None,
            },
            2,
        );
    });
    let (c, last) = cause(&exit.error);
    assert_eq!(last, Some(1));
    assert!(
        matches!(c, CheckpointError::Incomplete { epoch: 2, .. }),
        "{c:?}"
    );
    assert_at_checkpoint_1(&exit.backup);
}

#[test]
fn checkpoint_without_extras_or_state_is_incomplete() {
    let exit = scripted(|s| {
        s.page(2, 5, 0x22);
        s.state(2, "cp2");
        s.send(
            &Frame::Commit {
                vcpus: 2,
                pages: 1,
                info: None,
            },
            2,
        );
    });
    let (c, _) = cause(&exit.error);
    assert!(c.to_string().contains("no Extras frame"), "{c}");
    assert_at_checkpoint_1(&exit.backup);
}

#[test]
fn frame_of_a_skipped_epoch_is_refused() {
    let exit = scripted(|s| s.page(3, 5, 0x33));
    let (c, last) = cause(&exit.error);
    assert_eq!(last, Some(1));
    assert!(matches!(c, CheckpointError::Protocol(_)), "{c:?}");
    assert_at_checkpoint_1(&exit.backup);
}

#[test]
fn no_initial_sync_means_nothing_to_go_live_from() {
    let (addr, backup) = spawn_backup();
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let exit = backup.join().unwrap().0;
    let (c, last) = cause(&exit.error);
    assert_eq!(last, None);
    assert!(matches!(c, CheckpointError::InitialSync(_)), "{c:?}");
    assert!(matches!(
        exit.backup.go_live(),
        Err(CheckpointError::NothingCommitted)
    ));
}

#[test]
fn migration_destination_refuses_an_ft_stream() {
    // The purposes do not mix: an FT primary against a plain migration receiver fails cleanly.
    let l = Listener::bind(&"tcp:127.0.0.1:0".parse().unwrap()).unwrap();
    let ep = l.local_endpoint().clone();
    let t = std::thread::spawn(move || {
        let conn = l.accept(Some(Duration::from_secs(10))).unwrap();
        let mut dst = FakeVm::destination(PAGES, VCPUS);
        let progress = ft::migration::ProgressHandle::new(ft::migration::Role::Destination);
        ft::migration::receive_migration(conn, &mut dst, &ReceiveOptions::default(), &progress)
    });
    let src = FakeVm::source(PAGES, VCPUS, 0, 1);
    let conn = connect(&ep, Duration::from_secs(5)).unwrap();
    let r = FtPrimary::start(
        src,
        conn,
        &primary_opts(),
        Gates::new(None),
        Arc::new(Stats::default()),
    );
    let (vm, e) = *r.err().expect("must fail");
    assert!(matches!(e, CheckpointError::InitialSync(_)), "{e:?}");
    assert!(vm.is_running());
    assert!(matches!(
        t.join().unwrap(),
        Err(MigrationError::Incompatible(_))
    ));
}

#[test]
fn paused_guest_stays_paused_the_backup_knows_and_goes_live_paused() {
    let l = Listener::bind(&"tcp:127.0.0.1:0".parse().unwrap()).unwrap();
    let addr: SocketAddr = l.local_endpoint().to_string()[4..].parse().unwrap();
    let received = Arc::new(Received::default());
    let hooks = received.clone();
    let backup = std::thread::spawn(move || {
        let conn = l.accept(Some(Duration::from_secs(10))).unwrap();
        let vm = FakeVm::destination(PAGES, VCPUS);
        FtBackup::run(vm, conn, &backup_opts(), hooks)
    });
    let src = FakeVm::source(PAGES, VCPUS, 3000, 11);
    let probe = src.probe();
    let conn = connect(
        &format!("tcp:{addr}").parse().unwrap(),
        Duration::from_secs(5),
    )
    .unwrap();
    let stats = Arc::new(Stats::default());
    let p = FtPrimary::start(src, conn, &primary_opts(), Gates::new(None), stats.clone())
        .unwrap_or_else(|e| panic!("start: {}", ft::migration::error_chain(&e.1)));
    std::thread::sleep(Duration::from_millis(100));
    p.pause_guest(Duration::from_secs(5)).unwrap();
    assert!(p.guest_paused());
    // Paused: the guest does not run, and no epochs are taken.
    let state = probe.state();
    let captured = stats.0.lock().unwrap().len();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(probe.state(), state, "the guest ran while paused");
    let after = stats.0.lock().unwrap().len();
    assert!(
        after <= captured + 1,
        "epochs while paused: {captured} -> {after}"
    );
    let last = |r: &Received| r.0.lock().unwrap().last().copied();
    let paused_at = last(&received).expect("a checkpoint reached the backup");
    assert!(paused_at.guest_paused, "{paused_at:?}");
    assert!(
        paused_at.pause.is_some() && paused_at.bytes > 0,
        "{paused_at:?}"
    );
    // Resumed: epochs go on, and the backup hears that the guest runs again.
    p.resume_guest(Duration::from_secs(5)).unwrap();
    assert!(!p.guest_paused());
    let start = Instant::now();
    while last(&received).is_some_and(|r| r.guest_paused) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no running checkpoint"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_ne!(probe.state(), state, "the guest did not run after resume");
    // Paused again, then the pair ends: the VM comes back paused, the backup goes live paused.
    p.pause_guest(Duration::from_secs(5)).unwrap();
    let exit = p.stop().unwrap();
    assert!(exit.guest_paused && !exit.vm.is_running());
    assert!(stats
        .0
        .lock()
        .unwrap()
        .iter()
        .any(|s| s.trigger == Trigger::Pause));
    let bexit = backup.join().unwrap();
    assert!(bexit.backup.committed_guest_paused());
    let live = bexit.backup.go_live().unwrap();
    assert!(
        !live.is_running(),
        "went live running from a paused checkpoint"
    );
    assert!(live.restored_state().is_some());
}

/// Wire bytes per page over the second half of a run's checkpoints (the cache is warm there).
fn bytes_per_page(stats: &[CheckpointStats]) -> u64 {
    let late = &stats[stats.len() / 2..];
    let pages: u64 = late.iter().map(|s| s.pages).sum();
    late.iter().map(|s| s.bytes).sum::<u64>() / pages.max(1)
}

#[test]
fn deltas_keep_the_backup_equal_through_many_checkpoints() {
    let (addr, backup) = spawn_backup();
    let (exit, gates, stats) = run_primary_until(
        addr,
        20_000,
        &primary_opts(),
        |vm| Gates::new(Some(vm.probe())),
        Duration::from_millis(800),
        8,
    );
    assert!(exit.error.is_none(), "{:?}", exit.error);
    let last = exit.report.committed.unwrap();
    assert!(last >= 8, "only {last} checkpoints");
    let (bexit, _) = backup.join().unwrap();
    assert_eq!(cause(&bexit.error).1, Some(last));
    assert_backup_at(&bexit.backup, &gates, last);
    // The fake guest changes one word per write (or zeroes the page): whole pages would cost
    // over 3000 bytes per page on average.
    let per_page = bytes_per_page(&stats);
    assert!(
        per_page < 1024,
        "{per_page} wire bytes per page: no deltas?"
    );
    print_figures("20000 pages/s, deltas", &stats);
    println!("wire bytes per page: {per_page}");
}

#[test]
fn an_evicting_delta_cache_keeps_the_backup_equal() {
    for cache_pages in [0u64, 3, 64] {
        let (addr, backup) = spawn_backup();
        let opts = PrimaryOptions {
            delta_cache_bytes: cache_pages * PAGE_SIZE as u64,
            ..primary_opts()
        };
        let (exit, gates, stats) = run_primary(
            addr,
            20_000,
            &opts,
            |vm| Gates::new(Some(vm.probe())),
            Duration::from_millis(400),
        );
        assert!(exit.error.is_none(), "{:?}", exit.error);
        let last = exit.report.committed.unwrap();
        let (bexit, _) = backup.join().unwrap();
        assert_eq!(cause(&bexit.error).1, Some(last));
        assert_backup_at(&bexit.backup, &gates, last);
        println!(
            "cache of {cache_pages} pages: {} wire bytes per page",
            bytes_per_page(&stats)
        );
    }
}

/// Sends checkpoint `epoch` made of `batch` (one page) and its state; the backup acks it or not.
fn delta_checkpoint(s: &mut Script, epoch: u64, batch: PageBatch) {
    s.send(&Frame::MemoryPages(batch), epoch);
    s.state(epoch, &format!("cp{epoch}"));
    s.extras(epoch, b"log");
    s.send(
        &Frame::Commit {
            vcpus: 2,
            pages: 1,
            info: None,
        },
        epoch,
    );
}

/// A delta that turns a page of `from` bytes into one whose first 16 bytes are `to`, with the
/// result's CRC.
fn fill_delta(from: u8, to: u8) -> (u32, Vec<u8>) {
    let mut new = [from; PAGE_SIZE];
    new[..16].fill(to);
    let mut d = Vec::new();
    assert!(ft::frame::encode_delta(
        &[from; PAGE_SIZE],
        &new,
        64,
        &mut d
    ));
    (crc32fast::hash(&new), d)
}

#[test]
fn a_delta_against_the_committed_page_applies() {
    let exit = scripted(|s| {
        let mut b = PageBatch::new();
        let mut d = Vec::new();
        let mut new = [0x11u8; PAGE_SIZE];
        new[100..108].copy_from_slice(b"changed!");
        assert!(ft::frame::encode_delta(
            &[0x11; PAGE_SIZE],
            &new,
            64,
            &mut d
        ));
        b.push_delta(5, crc32fast::hash(&new), &d);
        delta_checkpoint(s, 2, b);
        assert!(matches!(s.recv(), Frame::Ack { .. }));
    });
    assert_eq!(cause(&exit.error).1, Some(2));
    let mem = exit.backup.vm().memory();
    assert_eq!(&mem[5 * PAGE_SIZE + 100..5 * PAGE_SIZE + 108], b"changed!");
    assert_eq!(mem[5 * PAGE_SIZE + 99], 0x11);
}

#[test]
fn hostile_deltas_end_the_stream_with_nothing_applied() {
    // A delta for a page no checkpoint sent (page 7), one whose result is not what the primary
    // had (wrong base: 0x22 instead of the 0x11 committed), and one that runs past the page.
    let (crc, d) = fill_delta(0x00, 0x33);
    let (crc2, d2) = fill_delta(0x22, 0x33);
    let past = [0xffu8, 0x0f, 2, 0, 1, 1]; // 2 bytes at offset 4095
    type Check = fn(&CheckpointError) -> bool;
    let cases: Vec<(u64, u32, Vec<u8>, Check)> = vec![
        (7, crc, d, |c| {
            matches!(c, CheckpointError::Incomplete { epoch: 2, reason }
                if reason.contains("no earlier checkpoint sent"))
        }),
        (5, crc2, d2, |c| {
            matches!(c, CheckpointError::Incomplete { epoch: 2, reason }
                if reason.contains("does not give the page"))
        }),
        (5, 0, past.to_vec(), |c| {
            matches!(
                c,
                CheckpointError::Stream(MigrationError::Frame(
                    ft::frame::FrameError::Malformed { .. }
                ))
            )
        }),
    ];
    for (pfn, crc, delta, check) in cases {
        let exit = scripted(|s| {
            let mut b = PageBatch::new();
            b.push_delta(pfn, crc, &delta);
            // The backup ends at this frame (it resolves deltas as they arrive), before the
            // Commit could be sent.
            s.send(&Frame::MemoryPages(b), 2);
        });
        let (c, last) = cause(&exit.error);
        assert_eq!(last, Some(1), "{c:?}");
        assert!(
            check(c),
            "page {pfn}: {}",
            ft::migration::error_chain(&exit.error)
        );
        assert_at_checkpoint_1(&exit.backup);
        assert!(exit.backup.vm().memory()[7 * PAGE_SIZE..8 * PAGE_SIZE]
            .iter()
            .all(|&x| x == 0));
    }
}

/// A backup that asks to take over (ft.promote) once checkpoint 5 is committed.
#[derive(Default)]
struct Promoting {
    asked: AtomicBool,
    committed: AtomicU64,
}

impl BackupHooks for Promoting {
    fn backup_committed(&self, n: u64, _extras: &[u8]) {
        self.committed.store(n, Ordering::SeqCst);
        if n >= 5 {
            self.asked.store(true, Ordering::SeqCst);
        }
    }
    fn promote_requested(&self) -> Option<u64> {
        self.asked.load(Ordering::SeqCst).then_some(7)
    }
}

/// A primary's hooks that record the fence and what was committed before it.
#[derive(Default)]
struct Fencing {
    committed: AtomicU64,
    fenced: Mutex<Option<(u64, u64)>>,
}

impl EpochHooks for Fencing {
    fn epoch_captured(&self, _n: u64) {}
    fn take_epoch_extras(&self, _n: u64) -> Vec<u8> {
        Vec::new()
    }
    fn epoch_committed(&self, n: u64) {
        assert!(
            self.fenced.lock().unwrap().is_none(),
            "checkpoint {n} acked after the fence"
        );
        self.committed.store(n, Ordering::SeqCst);
    }
    fn output_waiting(&self) -> bool {
        false
    }
    fn fence(&self, generation: u64) {
        *self.fenced.lock().unwrap() = Some((generation, self.committed.load(Ordering::SeqCst)));
    }
}

/// ft.promote: the backup stops acking and asks the primary to fence itself; the primary's hooks
/// fence before it answers; both engines end saying so, and nothing is acked after the fence.
#[test]
fn promote_fences_the_primary_and_the_backup_hears_it() {
    let l = Listener::bind(&"tcp:127.0.0.1:0".parse().unwrap()).unwrap();
    let addr: SocketAddr = l.local_endpoint().to_string()[4..].parse().unwrap();
    let backup = std::thread::spawn(move || {
        let conn = l.accept(Some(Duration::from_secs(10))).unwrap();
        let hooks = Arc::new(Promoting::default());
        let vm = FakeVm::destination(PAGES, VCPUS);
        (
            FtBackup::run(vm, conn, &backup_opts(), hooks.clone()),
            hooks,
        )
    });
    let src = FakeVm::source(PAGES, VCPUS, 500, 7);
    let hooks = Arc::new(Fencing::default());
    let ep: Endpoint = format!("tcp:{addr}").parse().unwrap();
    let conn = connect(&ep, Duration::from_secs(5)).unwrap();
    let p = FtPrimary::start(
        src,
        conn,
        &primary_opts(),
        hooks.clone(),
        Arc::new(ft::checkpoint::NoStats),
    )
    .unwrap_or_else(|e| panic!("start: {}", ft::migration::error_chain(&e.1)));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !p.has_failed() {
        assert!(Instant::now() < deadline, "the primary was never fenced");
        std::thread::sleep(Duration::from_millis(5));
    }
    let why = p.failure().unwrap_or_default();
    assert!(why.contains("ft.promote, generation 7"), "{why}");
    let exit = p.stop().unwrap();
    assert!(
        exit.vm.is_running(),
        "fencing stops the disk, not the guest"
    );
    let (bexit, bhooks) = backup.join().unwrap();
    let (c, last) = cause(&bexit.error);
    assert!(
        matches!(c, CheckpointError::Promoted { confirmed: true }),
        "{c:?}"
    );
    let (generation, acked) = hooks.fenced.lock().unwrap().expect("fenced");
    assert_eq!(generation, 7);
    assert_eq!(Some(acked), last);
    assert_eq!(bhooks.committed.load(Ordering::SeqCst), acked);
    assert!(acked >= 5);
}
