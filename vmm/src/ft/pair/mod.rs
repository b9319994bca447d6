//! A pair member's thread, one per side, started by the VMM thread (`ft.enable` / `ft.receive`)
//! and reporting back once, when it ends, through the [`ReportSink`] it was given (the VMM
//! thread turns the [`PairReport`] into its own event; this module knows nothing of the
//! controller).
//!
//! * [`primary`]: gates the VM's outputs, runs the checkpoint engine, watches the backup,
//!   arbitrates when it falls silent, and carries pause, resume, shutdown and reboot to it.
//! * [`backup`]: builds the replica from the primary's Hello, receives checkpoints, and when the
//!   stream ends tells an intended end (the primary's Abort: discard) from a crash (arbitrate and
//!   go live from the last complete checkpoint).
//! * [`backup_vm`]: the replica VM, which re-issues committed shared-disk writes as it goes live.
//!
//! Every stream opens with the authentication handshake (`ft::auth`); optional UDP heartbeats on a
//! second path feed the same failure detector (`super::second_path`).

mod backup;
mod backup_vm;
mod error;
mod primary;

pub use backup::{spawn_backup, BackupSetup, Localize, LocalizeError};
pub use backup_vm::BackupVm;
pub use error::PairError;
pub use primary::{spawn_primary, PrimaryEnd, PrimarySetup};

use crate::config::VmConfig;
use crate::vm::Vm;
use ft::arbiter::Arbiter;
use ft::checkpoint::{CheckpointStats, StatsSink};
use ft::frame::FrameType;
use ft::heartbeat::Path;
use ft::status::StatusHandle;
use ft::transport::Connection;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::mpsc::{RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
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
    /// The background replica scrub covers everything once per this period (`None`: off).
    pub scrub_period: Option<Duration>,
}

/// The answer to a pause or resume: an error says why it was not done.
pub type OpReply = Sender<Result<(), PairError>>;

/// The answer to ft.verify: the pass's ticket (the caller waits on it), or why there is none.
pub type VerifyReply = Sender<Result<ft::scrub::VerifyTicket, PairError>>;

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
    /// ft.verify on the primary: starts (or joins) a full replica scrub pass at once; the
    /// ticket comes back for the caller to wait on, so this thread never waits for the pass.
    Verify(VerifyReply),
    /// vm.shutdown or vmm.shutdown on the primary (the reason the backup is told): end the pair
    /// on purpose; the VM comes back through [`PairHandle::end`].
    Shutdown(&'static str),
    /// vm.reboot on the primary: end the pair asking the backup to wait for a fresh sync; the VM
    /// comes back through [`PairHandle::end`].
    Reboot,
    /// vmm.shutdown on a backup: stop and discard, like ft.disable.
    Leave,
    /// The primary's guest asked for a reset: like Reboot, but the thread reports when done
    /// (the VMM thread does not wait: the pair may still be syncing).
    GuestReset,
}

/// What a pair thread reports when it ends on its own (not through [`PairHandle::end`]).
pub enum PairReport {
    /// The primary's thread handed the VM back (`None`: the engine lost it).
    PrimaryEnded {
        /// The VM; `None` when the engine lost it.
        vm: Option<Vm>,
        /// How the pair ended.
        end: PrimaryEnd,
    },
    /// The backup went live: the VM runs here now, as the primary.
    BackupLive {
        /// The config the primary sent, with this host's overrides.
        config: Box<VmConfig>,
        /// The VM built from the last committed checkpoint.
        vm: Vm,
        /// The primary's guest was paused at the checkpoint it went live from: it stays paused.
        paused: bool,
        /// ft.status's reason once the VMM thread holds the VM (it turns Unprotected then).
        reason: String,
    },
    /// The backup stopped without going live (discarded or halted; see ft.status).
    BackupEnded,
}

impl std::fmt::Debug for PairReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PairReport::PrimaryEnded { vm, end } => f
                .debug_struct("PrimaryEnded")
                .field("vm", &vm.is_some())
                .field("end", end)
                .finish(),
            PairReport::BackupLive { paused, .. } => f
                .debug_struct("BackupLive")
                .field("paused", paused)
                .finish_non_exhaustive(),
            PairReport::BackupEnded => f.write_str("BackupEnded"),
        }
    }
}

/// Where a pair thread sends its one report.
pub type ReportSink = Box<dyn FnOnce(PairReport) + Send>;

/// What a primary's thread hands back through its join when the VMM thread ended it
/// synchronously (shutdown, reboot); `None` when it ended on its own and sent its report.
type Joined = Option<Box<(Option<Vm>, PrimaryEnd)>>;

/// What the VMM thread keeps of a running pair member.
pub struct PairHandle {
    commands: Sender<PairCommand>,
    /// The backup's stream, so that ft.disable can end `FtBackup::run` at once.
    stream: Arc<Mutex<Option<Box<dyn Connection>>>>,
    /// ft.promote on a backup that receives: its engine asks the primary to fence itself
    /// (`BackupHooks::promote_requested`) before the stream ends.
    promote: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Joined>>,
    /// Whether the VMM thread waits in [`PairHandle::end_within`]: the thread and the VMM
    /// thread agree through it on who carries the VM back (the join or a report).
    waiter: Arc<AtomicU8>,
}

/// Nobody waits: a thread that ends on its own reports.
const NOT_WAITING: u8 = 0;
/// The VMM thread waits in [`PairHandle::end_within`].
const WAITING: u8 = 1;
/// The thread took the wait: the VM comes back through the join.
const TAKEN: u8 = 2;

/// Whether a pair thread that ended on its own may hand its VM back through the join, because
/// the VMM thread waits for it there (and will not give up waiting now).
fn joined_by_waiter(waiter: &AtomicU8) -> bool {
    waiter
        .compare_exchange(WAITING, TAKEN, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
}

impl PairHandle {
    /// Passes `c` (ft.disable) and waits up to `bound` for the thread to end; its VM comes back
    /// if it did. `None`: it goes on past `bound` (an arbiter that does not answer) or had ended
    /// on its own; then its report brings the VM back later.
    pub fn end_within(
        &mut self,
        c: PairCommand,
        bound: Duration,
    ) -> Option<(Option<Vm>, PrimaryEnd)> {
        self.waiter.store(WAITING, Ordering::Release);
        self.command(c);
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline && self.thread.as_ref().is_some_and(|t| !t.is_finished()) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let gave_up = self
            .waiter
            .compare_exchange(WAITING, NOT_WAITING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if gave_up {
            return None;
        }
        // The thread took the wait: it is handing the VM back through the join right now.
        let joined = self.thread.take()?.join().ok()??;
        Some(*joined)
    }

    /// Asks a primary's thread for a synchronised operation (pause, resume) and waits for its
    /// answer, at most `timeout`.
    pub fn op(
        &self,
        c: impl FnOnce(OpReply) -> PairCommand,
        timeout: Duration,
    ) -> Result<(), PairError> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.commands.send(c(tx)).map_err(|_| PairError::Ended)?;
        match rx.recv_timeout(timeout) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => Err(PairError::NoAnswer(timeout)),
            Err(RecvTimeoutError::Disconnected) => Err(PairError::Ended),
        }
    }

    /// Asks a primary's thread for a replica scrub pass (ft.verify); the ticket comes back at
    /// once, within `timeout` of the thread's turn.
    pub fn verify(&self, timeout: Duration) -> Result<ft::scrub::VerifyTicket, PairError> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.commands
            .send(PairCommand::Verify(tx))
            .map_err(|_| PairError::Ended)?;
        match rx.recv_timeout(timeout) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => Err(PairError::NoAnswer(timeout)),
            Err(RecvTimeoutError::Disconnected) => Err(PairError::Ended),
        }
    }

    /// Passes `c` (Shutdown, Reboot, Leave) and waits for the thread to end; a primary's VM
    /// comes back. `None`: the thread had ended on its own (its report is on the way), or was
    /// already joined.
    pub fn end(&mut self, c: PairCommand) -> Option<(Option<Vm>, PrimaryEnd)> {
        self.command(c);
        let joined = self.thread.take()?.join().ok()??;
        Some(*joined)
    }

    /// Passes `c` to the thread; a backup's stream is closed so that it stops receiving (on
    /// ft.promote, its engine first asks the primary to stop writing the shared disk, and ends
    /// the stream itself).
    pub fn command(&self, c: PairCommand) {
        if matches!(c, PairCommand::Promote) {
            self.promote.store(true, Ordering::SeqCst);
            let _ = self.commands.send(c);
            return;
        }
        let stops_backup = !matches!(
            c,
            PairCommand::Pause(_) | PairCommand::Resume(_) | PairCommand::Verify(_)
        );
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
        self.0
            .record_commit_latency(s.send, s.ack_latency.saturating_sub(s.send));
        self.0.record_page_encodings(&s.encodings);
        self.0.record_commit(s.epoch);
    }
    fn in_flight(&self, epochs: usize, staged_bytes: u64) {
        self.0.set_backlog(staged_bytes, epochs as u64);
    }
    fn flow(&self, f: &ft::checkpoint::FlowReport) {
        self.0.set_flow(f);
    }
    fn scrub_checked(&self, c: &ft::scrub::ScrubChecked, reason: Option<&str>) {
        self.0.record_scrub_checked(c, reason);
    }
    fn scrub_status(&self, s: &ft::scrub::ScrubStatus) {
        self.0.set_scrub(s);
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

/// The generation to start a pair in: the highest the arbiter has seen, so that a directory used
/// by an earlier pair does not make the first claim lose.
pub fn start_generation(arbiter: &dyn Arbiter) -> Result<u64, ft::arbiter::ArbiterError> {
    arbiter.current().map(|h| h.map_or(0, |h| h.generation))
}
