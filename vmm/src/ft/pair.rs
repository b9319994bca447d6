//! A pair member's thread, one per side, started by the VMM thread (`ft.enable` / `ft.receive`)
//! and reporting back through [`VmmEvent`]s, like the migration threads.
//!
//! Primary: gates the VM's outputs on an epoch clock, runs `FtPrimary` (initial sync, then
//! epochs), and watches the failure detector (fed by every frame from the backup). When the
//! backup falls silent for the failure timeout it arbitrates (`FailoverCoordinator`): won →
//! release everything held and run unprotected; lost → freeze outputs, hand the VM back to be
//! stopped, status Halted with the winner's name.
//!
//! Backup: builds its VM from the primary's Hello (like `IncomingVm`, with this host's taps and
//! disk paths), runs `FtBackup` until the stream ends, then tells apart
//! * the pair ending on purpose: the primary sent an Abort first (`FtPrimary::end`: ft.disable,
//!   guest power-off) → the copy is discarded, never live;
//! * the primary dying: the stream closed or went silent without one (a killed process closes
//!   its socket the same way a clean close does, so only the Abort distinguishes them) → once the
//!   detector has heard nothing for the failure timeout, arbitrate; won → go live from the last
//!   complete checkpoint (shared disks: re-issue the committed writes first), announce the MACs,
//!   become the primary, unprotected.
//!
//! Not yet: UDP heartbeats on a second path (the detector has only the stream), and carrying
//! pause/resume/shutdown/reboot to the backup (refused while FT runs).

use super::hooks::{BackupDisk, BackupDiskHooks, PrimaryHooks};
use crate::api::{VmBox, VmmEvent};
use crate::config::VmConfig;
use crate::migration::incoming::IncomingVm;
use crate::migration::source::PrimaryVm;
use crate::vm::vcpu::VcpuFailureHandler;
use crate::vm::Vm;
use devices::virtio::block::disk::RawDisk;
use devices::virtio::block::gate::DiskMode;
use devices::virtio::ft::FtSetup;
use devices::GuestEventHandler;
use ft::arbiter::{Arbiter, FileArbiter};
use ft::bitmap::DirtyBitmap;
use ft::checkpoint::{
    BackupHooks, BackupOptions, CheckpointError, CheckpointStats, EpochHooks, FtBackup, FtPrimary,
    PrimaryOptions, StatsSink,
};
use ft::failover::{Decision, FailoverCoordinator};
use ft::frame::{FrameType, PAGE_SIZE};
use ft::gate::{EpochClock, Releaser};
use ft::heartbeat::{ChannelHook, FailureDetector, Verdict};
use ft::migration::{error_chain, MigrationError, ReceiveOptions, SendOptions};
use ft::status::{FtState, StatusHandle};
use ft::transport::Connection;
use ft::vm::{MigratableVm, VmOpError, VmState};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// Longest silence during the initial sync (a full pass over guest memory, the backup building
/// its VM): the failure timeout applies from the first checkpoint on.
const SYNC_IO_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a pair thread looks at its commands and the detector.
const TICK: Duration = Duration::from_millis(20);

/// Timing of a pair.
#[derive(Debug, Clone, Copy)]
pub struct PairTiming {
    /// Longest epoch.
    pub checkpoint_interval: Duration,
    /// Heartbeat on the stream when nothing else was sent for this long.
    pub heartbeat_interval: Duration,
    /// Silence from the peer after which it counts as failed.
    pub failure_timeout: Duration,
}

/// What the VMM thread asks of a pair thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairCommand {
    /// ft.disable: end the pair on purpose (primary runs on alone, backup discards).
    Disable,
    /// The primary's guest powered off (or its VM failed): end the pair, the backup must halt.
    PowerOff,
    /// ft.promote on the backup: stop receiving and go live, through arbitration.
    Promote,
}

/// How a primary's thread gave its VM back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrimaryEnd {
    /// Running, no backup any more (won arbitration, or the initial sync failed): outputs flow.
    Alone,
    /// ft.disable: running standalone.
    Disabled,
    /// The guest powered off: stop the VM.
    PoweredOff,
    /// Lost arbitration: the VM must never run again here.
    Halted,
}

/// What the VMM thread keeps of a running pair member.
pub struct PairHandle {
    commands: Sender<PairCommand>,
    /// The backup's stream, so that ft.promote/ft.disable can end `FtBackup::run` at once.
    stream: Arc<Mutex<Option<Box<dyn Connection>>>>,
}

impl PairHandle {
    /// Passes `c` to the thread; a backup's stream is closed so that it stops receiving.
    pub fn command(&self, c: PairCommand) {
        let _ = self.commands.send(c);
        if let Some(s) = self
            .stream
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Feeds the engine's figures into the status.
struct StatusStats(StatusHandle);

impl StatsSink for StatusStats {
    fn checkpoint_committed(&self, s: &CheckpointStats) {
        self.0.record_checkpoint(s.pause, s.bytes);
        self.0.record_commit(s.epoch);
    }
}

/// The primary's hooks plus the failure detector's channel path.
struct PrimaryPairHooks {
    gates: PrimaryHooks,
    channel: ChannelHook,
}

impl EpochHooks for PrimaryPairHooks {
    fn epoch_captured(&self, n: u64) {
        self.gates.epoch_captured(n)
    }
    fn take_epoch_extras(&self, n: u64) -> Vec<u8> {
        self.gates.take_epoch_extras(n)
    }
    fn epoch_committed(&self, n: u64) {
        self.gates.epoch_committed(n)
    }
    fn output_waiting(&self) -> bool {
        self.gates.output_waiting()
    }
    fn on_peer_frame(&self, _kind: FrameType) {
        self.channel.frame_received()
    }
}

/// The generation to start a pair in: the highest the arbiter has seen, so that a directory used
/// by an earlier pair does not make the first claim lose.
pub fn start_generation(arbiter: &FileArbiter) -> Result<u64, String> {
    arbiter
        .current()
        .map(|h| h.map_or(0, |h| h.generation))
        .map_err(|e| crate::controller::chain(&e))
}

/// Everything `spawn_primary` needs.
pub struct PrimarySetup {
    pub vm: Vm,
    pub config: VmConfig,
    pub conn: Box<dyn Connection>,
    pub disk_mode: DiskMode,
    pub arbiter: FileArbiter,
    pub status: StatusHandle,
    pub timing: PairTiming,
    pub events: Sender<VmmEvent>,
}

/// Gates the VM's outputs and starts the primary's thread; on error the VM comes back untouched
/// but for its (unprotected, pass-through) gates.
pub fn spawn_primary(s: PrimarySetup) -> Result<PairHandle, Box<(Vm, String)>> {
    let clock = Arc::new(EpochClock::new());
    let gates = match s.vm.enable_ft(&FtSetup::new(clock.clone(), s.disk_mode)) {
        Ok(g) => g,
        Err(e) => {
            let why = format!(
                "cannot gate the VM's outputs: {}",
                crate::controller::chain(&e)
            );
            return Err(Box::new((s.vm, why)));
        }
    };
    let releaser = match Releaser::spawn(
        clock.clone(),
        gates.iter().map(|g| g.output_gate()).collect(),
    ) {
        Ok(r) => r,
        Err(e) => return Err(Box::new((s.vm, format!("cannot start the releaser: {e}")))),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = PairHandle {
        commands: tx,
        stream: Arc::default(),
    };
    let detector = FailureDetector::new(s.timing.failure_timeout);
    s.status.attach_detector(detector.clone());
    let hooks = Arc::new(PrimaryPairHooks {
        gates: PrimaryHooks::new(clock.clone(), &gates),
        channel: detector.channel_hook(),
    });
    let slot = Arc::new(Mutex::new(Some((s.vm, s.conn))));
    let thread_slot = slot.clone();
    let (status, events, timing, arbiter, config) =
        (s.status, s.events, s.timing, s.arbiter, s.config);
    let spawned = std::thread::Builder::new()
        .name("tandem_ft_primary".into())
        .spawn(move || {
            crate::seccomp::apply(crate::seccomp::ThreadKind::Ft);
            let taken = thread_slot.lock().ok().and_then(|mut s| s.take());
            let Some((vm, conn)) = taken else { return };
            let (vm, end) = run_primary(
                vm, conn, &config, hooks, &clock, detector, arbiter, &status, timing, &rx,
            );
            drop(releaser);
            let vm = vm.map(VmBox);
            let _ = events.send(VmmEvent::FtPrimaryEnded { vm, end });
        });
    if let Err(e) = spawned {
        let vm = slot
            .lock()
            .ok()
            .and_then(|mut s| s.take())
            .map(|(vm, _)| vm);
        if let Some(vm) = vm {
            return Err(Box::new((vm, format!("cannot start the FT thread: {e}"))));
        }
    }
    Ok(handle)
}

#[allow(clippy::too_many_arguments)]
fn run_primary(
    vm: Vm,
    conn: Box<dyn Connection>,
    config: &VmConfig,
    hooks: Arc<PrimaryPairHooks>,
    clock: &EpochClock,
    detector: FailureDetector,
    arbiter: FileArbiter,
    status: &StatusHandle,
    timing: PairTiming,
    commands: &Receiver<PairCommand>,
) -> (Option<Vm>, PrimaryEnd) {
    let config_json = serde_json::to_string(config).unwrap_or_default();
    let source = PrimaryVm::new(vm, config.cpus.boot_vcpus, config_json);
    let opts = PrimaryOptions {
        sync: SendOptions {
            io_timeout: timing.failure_timeout.max(SYNC_IO_TIMEOUT),
            commit_timeout: Duration::from_secs(15),
            ..SendOptions::default()
        },
        checkpoint_interval: timing.checkpoint_interval,
        heartbeat_interval: timing.heartbeat_interval,
        ack_timeout: timing.failure_timeout.max(Duration::from_secs(1)),
        ..PrimaryOptions::default()
    };
    let stats = Arc::new(StatusStats(status.clone()));
    let primary = match FtPrimary::start(source, conn, &opts, hooks, stats) {
        Ok(p) => p,
        Err(b) => {
            let (source, e) = *b;
            let _ = clock.unprotect();
            status.disable(&format!("initial sync failed: {}", error_chain(&e)));
            detector.close();
            return (Some(source.into_inner()), PrimaryEnd::Alone);
        }
    };
    detector.rearm();
    let _ = status.transition(FtState::Protected, "initial sync complete; checkpointing");
    let mut coordinator = FailoverCoordinator::new(arbiter, status.clone());
    let mut next_try = Instant::now();
    let finish = |p: FtPrimary<PrimaryVm>, reason: Option<&str>| -> Option<Vm> {
        let exit = match reason {
            Some(r) => p.end(r),
            None => p.stop(),
        };
        match exit {
            Ok(exit) => {
                if let Some(e) = exit.error {
                    log::info!("ft primary: checkpointing ended: {}", error_chain(&e));
                }
                Some(exit.vm.into_inner())
            }
            Err(e) => {
                log::error!("ft primary: cannot take the VM back: {}", error_chain(&e));
                None
            }
        }
    };
    loop {
        match commands.recv_timeout(TICK) {
            Ok(PairCommand::Disable) | Err(RecvTimeoutError::Disconnected) => {
                let vm = finish(primary, Some("ft.disable on the primary"));
                let _ = clock.unprotect();
                detector.close();
                status.disable("ft.disable: running standalone");
                return (vm, PrimaryEnd::Disabled);
            }
            Ok(PairCommand::PowerOff) => {
                let vm = finish(primary, Some("guest powered off"));
                let _ = clock.unprotect();
                detector.close();
                status.disable("guest powered off; the pair has ended");
                return (vm, PrimaryEnd::PoweredOff);
            }
            Ok(PairCommand::Promote) | Err(RecvTimeoutError::Timeout) => {}
        }
        if Instant::now() < next_try {
            continue;
        }
        let verdict = detector.wait_for_failure(Instant::now());
        match coordinator.on_verdict(verdict) {
            Decision::Stay => {}
            Decision::Retry { after, .. } => next_try = Instant::now() + after,
            Decision::ReleaseOutputs { generation } => {
                // We hold the generation: nothing may stay held behind a dead backup.
                let _ = clock.unprotect();
                log::warn!(
                    "ft primary: backup lost; running unprotected in generation {generation}"
                );
                let vm = finish(primary, None);
                detector.close();
                return (vm, PrimaryEnd::Alone);
            }
            d @ (Decision::Halt { .. } | Decision::GoLive { .. }) => {
                let reason = match d {
                    Decision::Halt { reason } => reason,
                    _ => "a primary was told to go live".into(),
                };
                clock.halt();
                log::error!("ft primary: halting: {reason}");
                let vm = finish(primary, None);
                if let Some(Err(e)) = vm.as_ref().map(Vm::pause) {
                    log::error!(
                        "ft primary: pausing the halted VM: {}",
                        crate::controller::chain(&e)
                    );
                }
                detector.close();
                return (vm, PrimaryEnd::Halted);
            }
        }
    }
}

/// A backup's VM: an `IncomingVm` that, when it goes live, re-issues the committed shared-disk
/// writes before the guest runs.
pub struct BackupVm {
    inner: IncomingVm,
    disks: Arc<BackupDiskHooks>,
}

impl MigratableVm for BackupVm {
    fn memory_size(&self) -> u64 {
        self.inner.memory_size()
    }
    fn vcpu_count(&self) -> u32 {
        self.inner.vcpu_count()
    }
    fn config_json(&self) -> String {
        self.inner.config_json()
    }
    fn read_page(&self, pfn: u64, buf: &mut [u8; PAGE_SIZE]) -> Result<(), VmOpError> {
        self.inner.read_page(pfn, buf)
    }
    fn write_page(&mut self, pfn: u64, data: &[u8; PAGE_SIZE]) -> Result<(), VmOpError> {
        self.inner.write_page(pfn, data)
    }
    fn start_dirty_log(&mut self) -> Result<(), VmOpError> {
        self.inner.start_dirty_log()
    }
    fn take_dirty_pages(&mut self) -> Result<DirtyBitmap, VmOpError> {
        self.inner.take_dirty_pages()
    }
    fn stop_dirty_log(&mut self) -> Result<(), VmOpError> {
        self.inner.stop_dirty_log()
    }
    fn pause(&mut self) -> Result<(), VmOpError> {
        self.inner.pause()
    }
    fn resume(&mut self) -> Result<(), VmOpError> {
        let n = self.disks.reissue().map_err(|e| VmOpError::Backend {
            what: "re-issue committed disk writes",
            source: Box::new(e),
        })?;
        if n > 0 {
            log::info!("ft backup: re-issued {n} committed disk writes");
        }
        // Resumes and announces the MACs (IncomingVm).
        self.inner.resume()
    }
    fn save_state(&mut self) -> Result<VmState, VmOpError> {
        self.inner.save_state()
    }
    fn restore_state(&mut self, state: &VmState) -> Result<(), VmOpError> {
        self.inner.restore_state(state)
    }
}

/// The backup's hooks: disks (once the VM is known), status, detector.
struct BackupPairHooks {
    disks: OnceLock<Arc<BackupDiskHooks>>,
    status: StatusHandle,
    channel: ChannelHook,
}

impl BackupHooks for BackupPairHooks {
    fn backup_committed(&self, n: u64, extras: &[u8]) {
        if let Some(d) = self.disks.get() {
            d.backup_committed(n, extras);
        }
        if n == 0 {
            let _ = self.status.transition(
                FtState::Protected,
                "initial sync received; checkpoints flow",
            );
        }
        self.status.record_commit(n);
    }
    fn on_peer_frame(&self, _kind: FrameType) {
        self.channel.frame_received()
    }
}

/// Turns the primary's config (JSON) into this host's VM config.
pub type Localize = Box<dyn FnOnce(&str) -> Result<VmConfig, String> + Send>;

/// Everything `spawn_backup` needs.
pub struct BackupSetup {
    pub listener: ft::transport::Listener,
    /// Turns the primary's config (JSON) into this host's (taps, disk paths, serial).
    pub localize: Localize,
    pub disk_mode: DiskMode,
    pub arbiter: FileArbiter,
    pub status: StatusHandle,
    pub failure_timeout: Duration,
    pub guest_events: GuestEventHandler,
    pub on_failure: VcpuFailureHandler,
    pub events: Sender<VmmEvent>,
}

/// How long a backup waits for its primary to connect.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(600);
/// How often a waiting backup looks at its commands.
const ACCEPT_TURN: Duration = Duration::from_millis(100);

/// Starts the backup's thread: accept, receive, then discard or go live.
pub fn spawn_backup(s: BackupSetup) -> std::io::Result<PairHandle> {
    let (tx, rx) = std::sync::mpsc::channel();
    let stream: Arc<Mutex<Option<Box<dyn Connection>>>> = Arc::default();
    let handle = PairHandle {
        commands: tx,
        stream: stream.clone(),
    };
    std::thread::Builder::new()
        .name("tandem_ft_backup".into())
        .spawn(move || {
            crate::seccomp::apply(crate::seccomp::ThreadKind::Ft);
            let events = s.events.clone();
            let ev = match run_backup(s, &stream, &rx) {
                Some((config, vm)) => VmmEvent::FtBackupLive {
                    config: Box::new(config),
                    vm: VmBox(vm),
                },
                None => VmmEvent::FtBackupEnded,
            };
            let _ = events.send(ev);
        })?;
    Ok(handle)
}

fn run_backup(
    s: BackupSetup,
    stream: &Mutex<Option<Box<dyn Connection>>>,
    commands: &Receiver<PairCommand>,
) -> Option<(VmConfig, Vm)> {
    let status = s.status.clone();
    let end = |why: String| {
        log::warn!("ft backup: {why}");
        status.disable(&why);
        None
    };
    // Accept in short turns, so that ft.disable or ft.promote while waiting for the primary ends
    // the wait (nothing received, nothing to keep).
    let waiting_since = Instant::now();
    let conn = loop {
        if let Ok(c) = commands.try_recv() {
            return end(format!("{c:?} before the primary connected"));
        }
        match s.listener.accept(Some(ACCEPT_TURN)) {
            Ok(c) => break c,
            Err(ft::transport::TransportError::AcceptTimeout { .. })
                if waiting_since.elapsed() < ACCEPT_TIMEOUT => {}
            Err(e) => {
                return end(format!(
                    "no primary connected: {}",
                    crate::controller::chain(&e)
                ))
            }
        }
    };
    if let Ok(c) = conn.try_clone_box() {
        *stream.lock().unwrap_or_else(PoisonError::into_inner) = Some(c);
    }
    let detector = FailureDetector::new(s.failure_timeout);
    status.attach_detector(detector.clone());
    let hooks = Arc::new(BackupPairHooks {
        disks: OnceLock::new(),
        status: status.clone(),
        channel: detector.channel_hook(),
    });
    let opts = BackupOptions {
        sync: ReceiveOptions {
            io_timeout: s.failure_timeout.max(SYNC_IO_TIMEOUT),
        },
        heartbeat_interval: Duration::from_millis(100),
        peer_timeout: s.failure_timeout,
    };
    let config: OnceLock<VmConfig> = OnceLock::new();
    let (localize, guest_events, on_failure, mode) =
        (s.localize, s.guest_events, s.on_failure, s.disk_mode);
    let build_hooks = hooks.clone();
    let built = FtBackup::run_built(conn, &opts, hooks.clone(), |id| {
        let cfg = localize(&id.config)?;
        let mut disks = Vec::new();
        // Disk gates are numbered by virtio device position, disks first (VirtioDevices).
        for (index, d) in cfg.disks.iter().enumerate() {
            let disk = RawDisk::open(&d.path, false)
                .map_err(|e| format!("cannot open disk {:?} at {}: {e}", d.id, d.path.display()))?;
            disks.push(BackupDisk {
                index: index as u32,
                disk,
            });
        }
        let disks = Arc::new(BackupDiskHooks::new(mode, disks));
        let _ = build_hooks.disks.set(disks.clone());
        let inner = IncomingVm::new(cfg.clone(), guest_events, on_failure)
            .map_err(|e| crate::controller::chain(&e))?;
        let _ = config.set(cfg);
        Ok(BackupVm { inner, disks })
    });
    *stream.lock().unwrap_or_else(PoisonError::into_inner) = None;
    let exit = match built {
        Ok(exit) => exit,
        Err(e) => {
            detector.close();
            return end(format!("initial sync failed: {}", error_chain(&e)));
        }
    };
    // An Abort from the primary: the pair ended on purpose, never go live from it.
    if let CheckpointError::BackupStopped { cause, .. } = &exit.error {
        if let CheckpointError::Stream(MigrationError::PeerAborted { reason }) = &**cause {
            detector.close();
            return end(format!(
                "the primary ended the pair ({reason}); copy discarded"
            ));
        }
    }
    if let Some(e) = hooks.disks.get().and_then(|d| d.error()) {
        detector.close();
        let _ = status.transition(FtState::Halted, &format!("disk replication failed: {e}"));
        return None;
    }
    log::warn!("ft backup: stream ended: {}", error_chain(&exit.error));
    let mut coordinator = FailoverCoordinator::new(s.arbiter, status.clone());
    let mut backup = Some(exit.backup);
    let mut next_try = Instant::now();
    let mut promote = false;
    loop {
        match commands.recv_timeout(TICK) {
            Ok(PairCommand::Disable) | Ok(PairCommand::PowerOff) => {
                detector.close();
                return end("ft.disable on the backup; copy discarded".into());
            }
            Ok(PairCommand::Promote) => promote = true,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                detector.close();
                return end("the VMM went away".into());
            }
        }
        if Instant::now() < next_try {
            continue;
        }
        let verdict = match detector.wait_for_failure(Instant::now()) {
            Verdict::Alive if promote => Verdict::Failed {
                silent_for: detector
                    .last_heard(ft::heartbeat::Path::Channel)
                    .map_or(Duration::ZERO, |t| t.elapsed()),
            },
            v => v,
        };
        match coordinator.on_verdict(verdict) {
            Decision::Stay => {}
            Decision::Retry { after, .. } => next_try = Instant::now() + after,
            Decision::GoLive { generation } => {
                let b = backup.take()?;
                let from = b.last_committed();
                let t0 = Instant::now();
                match b.go_live() {
                    Ok(vm) => {
                        let _ = coordinator.went_live();
                        detector.close();
                        log::warn!(
                            "ft backup: live as primary in generation {generation} from checkpoint \
                             {from:?} in {:?}",
                            t0.elapsed()
                        );
                        let vm = vm.inner.into_vm()?;
                        return Some((config.get()?.clone(), vm));
                    }
                    Err(e) => {
                        detector.close();
                        let why = format!("going live failed: {}", error_chain(&e));
                        let _ = status.transition(FtState::Halted, &why);
                        log::error!("ft backup: {why}");
                        return None;
                    }
                }
            }
            Decision::Halt { .. } | Decision::ReleaseOutputs { .. } => {
                detector.close();
                return None;
            }
        }
    }
}
