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
//! Synchronised VM operations on a protected primary (the VMM thread waits for each):
//! * pause/resume: `FtPrimary::pause_guest` takes one last checkpoint that leaves the guest
//!   paused and says so in its Commit, so the backup knows, and goes live paused if the primary
//!   dies then; resume lets epochs go on.
//! * shutdown (`vm.shutdown`, `vmm.shutdown`): ends the pair on purpose like a guest power-off;
//!   the backup discards its copy; the VM comes back through the thread's join to be stopped.
//! * reboot: ends the pair with an Abort that asks for a re-sync ([`ft::checkpoint::RESYNC_PREFIX`]):
//!   the backup discards its copy (so it can never go live from the old guest or a half-done
//!   reboot) and waits on the same listener; the VMM reboots the guest and enables FT again with
//!   the same settings, a fresh initial sync.
//!
//! Every stream opens with the authentication handshake (`ft::auth`): the primary's in
//! `ft.enable` (a refusal is the call's error), the backup's here, where a refused connection is
//! noted in ft.status and the backup keeps waiting for its real primary. Optional UDP heartbeats
//! on a second path feed the same detector (`second_path`, which also holds the rule for a lost
//! stream with a live peer).

use super::hooks::{BackupDisk, BackupDiskHooks, PrimaryHooks};
use super::second_path::{self, Deferral, HeartbeatPaths};
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
    is_resync, BackupHooks, BackupOptions, CheckpointError, CheckpointStats, EpochHooks,
    FlowOptions, FtBackup, FtPrimary, PrimaryOptions, ReceivedCheckpoint, StatsSink, RESYNC_PREFIX,
};
use ft::failover::{Decision, FailoverCoordinator};
use ft::frame::{FrameType, PAGE_SIZE};
use ft::gate::{EpochClock, Releaser};
use ft::heartbeat::{ChannelHook, FailureDetector, Path, Verdict};
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

/// Longest wait for the epoch thread to pause or resume the guest (it may first wait for room
/// in the in-flight window, which the ack timeout bounds).
pub const OP_TIMEOUT: Duration = Duration::from_secs(5);

/// Timing of a pair.
#[derive(Debug, Clone, Copy)]
pub struct PairTiming {
    /// Longest epoch.
    pub checkpoint_interval: Duration,
    /// Heartbeat on the stream when nothing else was sent for this long.
    pub heartbeat_interval: Duration,
    /// Silence from the peer after which it counts as failed.
    pub failure_timeout: Duration,
    /// Bound on the staged bytes of unacked checkpoints (`ft.enable`'s `max_backlog_bytes`).
    pub max_backlog_bytes: u64,
    /// The pause flow control aims at (`ft.enable`'s `target_pause_ms`).
    pub target_pause: Duration,
}

/// The answer to a pause or resume: an error says why it was not done.
pub type OpReply = Sender<Result<(), String>>;

/// What the VMM thread asks of a pair thread.
#[derive(Debug)]
pub enum PairCommand {
    /// ft.disable: end the pair on purpose (primary runs on alone, backup discards).
    Disable,
    /// The primary's guest powered off (or its VM failed): end the pair, the backup must halt.
    PowerOff,
    /// ft.promote on the backup: stop receiving and go live, through arbitration.
    Promote,
    /// vm.pause on the primary: answered once the guest is paused and its last checkpoint
    /// captured; it stays protected.
    Pause(OpReply),
    /// vm.resume on the primary.
    Resume(OpReply),
    /// vm.shutdown or vmm.shutdown on the primary (the reason the backup is told): end the pair
    /// on purpose; the VM comes back through [`PairHandle::end`].
    Shutdown(&'static str),
    /// vm.reboot on the primary: end the pair asking the backup to wait for a fresh sync; the VM
    /// comes back through [`PairHandle::end`].
    Reboot,
    /// vmm.shutdown on a backup: stop and discard, like ft.disable.
    Leave,
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
    /// vm.shutdown/vmm.shutdown: stop the VM (handed back through the join, not an event).
    Shutdown,
    /// vm.reboot: the VMM reboots the guest and re-syncs the backup (handed back through the
    /// join, not an event).
    Reboot,
}

/// What a primary's thread hands back through its join when the VMM thread ended it
/// synchronously (shutdown, reboot); `None` when it ended on its own and sent an event.
type Joined = Option<Box<(Option<Vm>, PrimaryEnd)>>;

/// What the VMM thread keeps of a running pair member.
pub struct PairHandle {
    commands: Sender<PairCommand>,
    /// The backup's stream, so that ft.promote/ft.disable can end `FtBackup::run` at once.
    stream: Arc<Mutex<Option<Box<dyn Connection>>>>,
    thread: Option<std::thread::JoinHandle<Joined>>,
}

impl PairHandle {
    /// Asks a primary's thread for a synchronised operation (pause, resume) and waits for its
    /// answer, at most `timeout`. `Err(None)`: the pair ended (or is ending) meanwhile.
    pub fn op(
        &self,
        c: impl FnOnce(OpReply) -> PairCommand,
        timeout: Duration,
    ) -> Result<(), Option<String>> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.commands.send(c(tx)).map_err(|_| None)?;
        match rx.recv_timeout(timeout) {
            Ok(r) => r.map_err(Some),
            Err(RecvTimeoutError::Timeout) => Err(Some(format!("no answer within {timeout:?}"))),
            Err(RecvTimeoutError::Disconnected) => Err(None),
        }
    }

    /// Passes `c` (Shutdown, Reboot, Leave) and waits for the thread to end; a primary's VM
    /// comes back. `None`: the thread had ended on its own (its event is on the way).
    pub fn end(mut self, c: PairCommand) -> Option<(Option<Vm>, PrimaryEnd)> {
        self.command(c);
        let joined = self.thread.take()?.join().ok()??;
        Some(*joined)
    }

    /// Passes `c` to the thread; a backup's stream is closed so that it stops receiving.
    pub fn command(&self, c: PairCommand) {
        let stops_backup = !matches!(c, PairCommand::Pause(_) | PairCommand::Resume(_));
        let _ = self.commands.send(c);
        if !stops_backup {
            return;
        }
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
        self.0.record_pause_steps(&s.steps);
        self.0.record_page_encodings(&s.encodings);
        self.0.record_commit(s.epoch);
    }
    fn in_flight(&self, epochs: usize, staged_bytes: u64) {
        self.0.set_backlog(staged_bytes, epochs as u64);
    }
    fn flow(&self, f: &ft::checkpoint::FlowReport) {
        self.0.set_flow(f);
    }
}

/// Counts a frame from the peer for the metrics (acks only where `acks` says they count here).
fn count_peer_frame(status: &StatusHandle, kind: FrameType, acks: bool) {
    match kind {
        FrameType::Heartbeat => status.record_heartbeat_received(Path::Channel),
        FrameType::Ack if acks => status.record_ack(),
        _ => {}
    }
}

/// The primary's hooks plus the failure detector's channel path.
struct PrimaryPairHooks {
    gates: PrimaryHooks,
    channel: ChannelHook,
    status: StatusHandle,
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
    fn wait_output(&self, timeout: Duration) -> bool {
        self.gates.wait_output(timeout)
    }
    fn on_peer_frame(&self, kind: FrameType) {
        self.channel.frame_received();
        count_peer_frame(&self.status, kind, true);
    }
    fn heartbeat_sent(&self) {
        self.status.record_heartbeat_sent(Path::Channel);
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
    /// What the handshake in `ft.enable` established.
    pub session: ft::auth::Session,
    /// The second liveness path, if configured.
    pub heartbeat: Option<HeartbeatPaths>,
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
    let mut handle = PairHandle {
        commands: tx,
        stream: Arc::default(),
        thread: None,
    };
    let detector = FailureDetector::new(s.timing.failure_timeout);
    s.status.attach_detector(detector.clone());
    let heartbeats = match s.heartbeat.map(|paths| {
        second_path::start(
            paths,
            &s.session,
            ft::status::Role::Primary,
            s.status.generation(),
            s.timing.heartbeat_interval,
            &detector,
            &s.status,
        )
    }) {
        Some(Err(e)) => return Err(Box::new((s.vm, format!("heartbeats: {e}")))),
        Some(Ok(h)) => Some(h),
        None => None,
    };
    let hooks = Arc::new(PrimaryPairHooks {
        gates: PrimaryHooks::new(clock.clone(), &gates),
        channel: detector.channel_hook(),
        status: s.status.clone(),
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
            let (vm, conn) = taken?;
            let (vm, end) = run_primary(
                vm, conn, &config, hooks, &clock, detector, arbiter, &status, timing, &rx,
            );
            drop(heartbeats);
            drop(releaser);
            if matches!(end, PrimaryEnd::Shutdown | PrimaryEnd::Reboot) {
                return Some(Box::new((vm, end)));
            }
            let vm = vm.map(VmBox);
            let _ = events.send(VmmEvent::FtPrimaryEnded { vm, end });
            None
        });
    let spawned = spawned.map(|t| handle.thread = Some(t));
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
        max_backlog_bytes: timing.max_backlog_bytes,
        flow: FlowOptions {
            target_pause: timing.target_pause,
            ..FlowOptions::default()
        },
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
    status.set_initial_sync(primary.sync_report());
    let _ = status.transition(FtState::Protected, "initial sync complete; checkpointing");
    let mut coordinator = FailoverCoordinator::new(arbiter, status.clone());
    let mut next_try = Instant::now();
    let finish = |p: FtPrimary<PrimaryVm>, reason: Option<&str>| -> Option<Vm> {
        // Nothing is in flight once the engine stops, whatever it last reported.
        status.set_backlog(0, 0);
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
            Ok(PairCommand::Pause(reply)) => {
                let r = primary.pause_guest(OP_TIMEOUT).map_err(|e| error_chain(&e));
                status.set_guest_paused(primary.guest_paused());
                let _ = reply.send(r);
            }
            Ok(PairCommand::Resume(reply)) => {
                let r = primary
                    .resume_guest(OP_TIMEOUT)
                    .map_err(|e| error_chain(&e));
                status.set_guest_paused(primary.guest_paused());
                let _ = reply.send(r);
            }
            Ok(PairCommand::Shutdown(why)) => {
                let vm = finish(primary, Some(why));
                let _ = clock.unprotect();
                detector.close();
                status.disable(&format!("{why}; the pair has ended"));
                return (vm, PrimaryEnd::Shutdown);
            }
            Ok(PairCommand::Reboot) => {
                let why = format!("{RESYNC_PREFIX}vm.reboot on the primary");
                let vm = finish(primary, Some(&why));
                let _ = clock.unprotect();
                detector.close();
                let _ = status.transition(
                    FtState::Unprotected,
                    "vm.reboot: the guest reboots; the backup waits for a fresh sync",
                );
                return (vm, PrimaryEnd::Reboot);
            }
            Ok(PairCommand::PowerOff) => {
                let vm = finish(primary, Some("guest powered off"));
                let _ = clock.unprotect();
                detector.close();
                status.disable("guest powered off; the pair has ended");
                return (vm, PrimaryEnd::PoweredOff);
            }
            Ok(PairCommand::Promote | PairCommand::Leave) | Err(RecvTimeoutError::Timeout) => {}
        }
        if let Some(why) = primary.failure() {
            // Named in the claim and in the winner's or loser's reason.
            coordinator.set_cause(format!("checkpointing stopped: {why}"));
        }
        if Instant::now() < next_try {
            continue;
        }
        let verdict = match detector.wait_for_failure(Instant::now()) {
            // The stream is dead though the heartbeats say the backup lives: the primary
            // arbitrates (second_path's rule); the backup defers to it.
            Verdict::Alive => match second_path::stream_lost(&detector) {
                Some(silent_for) => Verdict::Failed { silent_for },
                None => Verdict::Alive,
            },
            v => v,
        };
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
        // Resumes and announces the MACs (IncomingVm).
        self.inner.resume()
    }
    fn save_state(&mut self) -> Result<VmState, VmOpError> {
        self.inner.save_state()
    }
    /// Only `go_live` restores, once: the committed writes are re-issued right after, before
    /// the guest runs, also when it goes live paused.
    fn restore_state(&mut self, state: &VmState) -> Result<(), VmOpError> {
        self.inner.restore_state(state)?;
        let n = self.disks.reissue().map_err(|e| VmOpError::Backend {
            what: "re-issue committed disk writes",
            source: Box::new(e),
        })?;
        if n > 0 {
            log::info!("ft backup: re-issued {n} committed disk writes");
        }
        Ok(())
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
        // The ack went out just before this call; the initial sync's commit is no checkpoint.
        if n > 0 {
            self.status.record_ack();
        }
    }
    fn checkpoint_received(&self, r: &ReceivedCheckpoint) {
        self.status
            .record_checkpoint(r.pause.unwrap_or_default(), r.bytes);
        self.status.set_guest_paused(r.guest_paused);
    }
    fn on_peer_frame(&self, kind: FrameType) {
        self.channel.frame_received();
        count_peer_frame(&self.status, kind, false);
    }
    fn heartbeat_sent(&self) {
        self.status.record_heartbeat_sent(Path::Channel);
    }
}

/// Turns the primary's config (JSON) into this host's VM config.
/// Called once per initial sync (again after a guest reboot's re-sync).
pub type Localize = Box<dyn Fn(&str) -> Result<VmConfig, String> + Send>;

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
    /// The pair key, if any: the primary must prove it holds the same.
    pub key: Option<ft::auth::PairKey>,
    /// The second liveness path, if configured.
    pub heartbeat: Option<HeartbeatPaths>,
}

/// How long a backup waits for its primary to connect.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(600);
/// How often a waiting backup looks at its commands.
const ACCEPT_TURN: Duration = Duration::from_millis(100);
/// Longest authentication handshake a backup waits through before taking the next connection.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts the backup's thread: accept, receive, then discard or go live.
pub fn spawn_backup(s: BackupSetup) -> std::io::Result<PairHandle> {
    let (tx, rx) = std::sync::mpsc::channel();
    let stream: Arc<Mutex<Option<Box<dyn Connection>>>> = Arc::default();
    let mut handle = PairHandle {
        commands: tx,
        stream: stream.clone(),
        thread: None,
    };
    let thread = std::thread::Builder::new()
        .name("tandem_ft_backup".into())
        .spawn(move || {
            crate::seccomp::apply(crate::seccomp::ThreadKind::Ft);
            let events = s.events.clone();
            let ev = match run_backup(s, &stream, &rx) {
                Some((config, vm, paused, reason)) => VmmEvent::FtBackupLive {
                    config: Box::new(config),
                    vm: VmBox(vm),
                    paused,
                    reason,
                },
                None => VmmEvent::FtBackupEnded,
            };
            let _ = events.send(ev);
            None
        })?;
    handle.thread = Some(thread);
    Ok(handle)
}

/// The backup's thread: accept, receive, then discard, go live, or (the primary's guest
/// rebooted) discard and wait on the same listener for a fresh sync. `Some((config, vm,
/// paused, reason))` once live; the VMM thread makes ft.status say so once it holds the VM.
fn run_backup(
    s: BackupSetup,
    stream: &Mutex<Option<Box<dyn Connection>>>,
    commands: &Receiver<PairCommand>,
) -> Option<(VmConfig, Vm, bool, String)> {
    let status = s.status.clone();
    let end = |why: String| {
        log::warn!("ft backup: {why}");
        status.disable(&why);
        None
    };
    let (localize, guest_events, on_failure, mode) =
        (s.localize, s.guest_events, s.on_failure, s.disk_mode);
    let hb_on = s.heartbeat.is_some();
    let opts = BackupOptions {
        sync: ReceiveOptions {
            io_timeout: s.failure_timeout.max(SYNC_IO_TIMEOUT),
        },
        heartbeat_interval: Duration::from_millis(100),
        peer_timeout: s.failure_timeout,
    };
    let mut waiting_since = Instant::now();
    let exit = loop {
        // Accept in short turns, so that ft.disable or ft.promote while waiting for the primary
        // ends the wait (nothing received, nothing to keep).
        let conn = loop {
            if let Ok(c) = commands.try_recv() {
                return end(format!("{c:?} before the primary connected"));
            }
            match s.listener.accept(Some(ACCEPT_TURN)) {
                Ok(c) => {
                    use ft::auth::{handshake, Side};
                    match handshake(c, s.key.as_ref(), Side::Responder, HANDSHAKE_TIMEOUT) {
                        Ok(done) => break done,
                        // Whoever connected cannot end the wait: the real primary may come next.
                        Err(e) => {
                            let why = format!(
                                "refused a connection: {}; still waiting for the primary",
                                crate::controller::chain(&e)
                            );
                            log::warn!("ft backup: {why}");
                            status.note(&why);
                        }
                    }
                }
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
        let (conn, session) = conn;
        if !session.authenticated {
            log::warn!("ft backup: the replication stream is NOT authenticated (no pair key)");
        }
        status.set_authenticated(session.authenticated);
        if let Ok(c) = conn.try_clone_box() {
            *stream.lock().unwrap_or_else(PoisonError::into_inner) = Some(c);
        }
        let detector = FailureDetector::new(s.failure_timeout);
        status.attach_detector(detector.clone());
        // Heartbeats are keyed per connection: a re-sync after a reboot starts them afresh on
        // the same socket.
        let paths = match s
            .heartbeat
            .as_ref()
            .map(HeartbeatPaths::try_clone)
            .transpose()
        {
            Ok(p) => p,
            Err(e) => {
                detector.close();
                return end(format!("heartbeats: {e}"));
            }
        };
        let heartbeats = match paths.map(|paths| {
            second_path::start(
                paths,
                &session,
                ft::status::Role::Backup,
                status.generation(),
                Duration::from_millis(100),
                &detector,
                &status,
            )
        }) {
            Some(Err(e)) => {
                detector.close();
                return end(format!("heartbeats: {e}"));
            }
            Some(Ok(h)) => Some(h),
            None => None,
        };
        let hooks = Arc::new(BackupPairHooks {
            disks: OnceLock::new(),
            status: status.clone(),
            channel: detector.channel_hook(),
        });
        let config: OnceLock<VmConfig> = OnceLock::new();
        let build_hooks = hooks.clone();
        let (guest_events, on_failure) = (guest_events.clone(), on_failure.clone());
        let built = FtBackup::run_built(conn, &opts, hooks.clone(), |id| {
            let cfg = localize(&id.config)?;
            let mut disks = Vec::new();
            // Disk gates are numbered by virtio device position, disks first (VirtioDevices).
            for (index, d) in cfg.disks.iter().enumerate() {
                let disk = RawDisk::open(&d.path, false).map_err(|e| {
                    format!("cannot open disk {:?} at {}: {e}", d.id, d.path.display())
                })?;
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
                if !is_resync(reason) {
                    return end(format!(
                        "the primary ended the pair ({reason}); copy discarded"
                    ));
                }
                // The guest rebooted: its old state is worthless, and a half-done reboot is
                // nothing to go live from. Drop the copy and wait for the fresh sync.
                drop(exit);
                status.set_guest_paused(false);
                let _ = status.transition(
                    FtState::Syncing,
                    "the primary's guest rebooted: copy discarded, waiting for a fresh sync",
                );
                log::info!("ft backup: the primary's guest rebooted; waiting for a fresh sync");
                waiting_since = Instant::now();
                continue;
            }
        }
        if let Some(e) = hooks.disks.get().and_then(|d| d.error()) {
            detector.close();
            let _ = status.transition(FtState::Halted, &format!("disk replication failed: {e}"));
            return None;
        }
        let config = config.get()?.clone();
        break (exit, detector, config, heartbeats);
    };
    let (exit, detector, config, _heartbeats) = exit;
    let why = error_chain(&exit.error);
    log::warn!("ft backup: stream ended: {why}");
    let mut coordinator = FailoverCoordinator::new(s.arbiter, status.clone());
    // A primary that closed cleanly or fell silent leaves "the peer closed the connection" or a
    // timeout here; a corrupt, truncated or unexpected frame is named: the reasons say which.
    coordinator.set_cause(format!("the replication stream ended: {why}"));
    let mut backup = Some(exit.backup);
    let mut next_try = Instant::now();
    let mut promote = false;
    loop {
        match commands.recv_timeout(TICK) {
            Ok(
                PairCommand::Disable
                | PairCommand::PowerOff
                | PairCommand::Leave
                | PairCommand::Shutdown(_)
                | PairCommand::Reboot,
            ) => {
                detector.close();
                return end("ft.disable on the backup; copy discarded".into());
            }
            Ok(PairCommand::Pause(reply) | PairCommand::Resume(reply)) => {
                let _ = reply.send(Err("a backup runs no guest".into()));
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
        // The stream is gone but the primary still heard on the heartbeat path: defer to it.
        let verdict = match verdict {
            Verdict::Alive if hb_on => {
                match second_path::defer(coordinator.arbiter(), &status, &detector) {
                    Deferral::Wait => Verdict::Alive,
                    Deferral::Claim(silent_for) => Verdict::Failed { silent_for },
                    Deferral::Lost(why) => {
                        detector.close();
                        log::error!("ft backup: halting: {why}");
                        let _ = status.transition(FtState::Halted, &why);
                        return None;
                    }
                }
            }
            v => v,
        };
        match coordinator.on_verdict(verdict) {
            Decision::Stay => {}
            Decision::Retry { after, .. } => next_try = Instant::now() + after,
            Decision::GoLive { generation } => {
                let b = backup.take()?;
                let from = b.last_committed();
                let paused = b.committed_guest_paused();
                let t0 = Instant::now();
                match b.go_live() {
                    Ok(vm) => {
                        // ft.status turns Unprotected on the VMM thread once it holds the VM.
                        let reason = coordinator.live_reason();
                        detector.close();
                        log::warn!(
                            "ft backup: live as primary in generation {generation} from checkpoint \
                             {from:?}{} in {:?}",
                            if paused { ", paused" } else { "" },
                            t0.elapsed()
                        );
                        let vm = vm.inner.into_vm()?;
                        return Some((config, vm, paused, reason));
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
