//! The backup side: receive the FT initial sync, then checkpoint after checkpoint, each staged
//! apart from the VM, verified at its Commit, acked, then applied. It never runs the VM until
//! `go_live`.

use super::hooks::BackupHooks;
use super::settings::Agreed;
use super::staging::Staging;
use super::stats::ReceivedCheckpoint;
use super::{now_ms, vm_err, CheckpointError, WITHDRAW_PREFIX};
use crate::bitmap::DirtyBitmap;
use crate::frame::{DecodedFrame, Frame, Hello, StreamPurpose};
use crate::migration::channel::{FrameReader, FrameWriter};
use crate::migration::{
    error_chain, unexpected, IncomingMigration, MigrationError, ProgressHandle, ReceiveOptions,
    ReceiveReport, Role,
};
use crate::transport::Connection;
use crate::vm::{MigratableVm, VmState};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a withdrawing backup keeps reading after its Abort, so that the primary gets it.
const WITHDRAW_DRAIN: Duration = Duration::from_secs(2);

/// Backup-side settings.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// The initial sync's receive settings.
    pub sync: ReceiveOptions,
    /// Heartbeat to the primary when nothing arrived for this long.
    pub heartbeat_interval: Duration,
    /// Silence from the primary that ends `run` (the failure detector may decide sooner).
    pub peer_timeout: Duration,
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions {
            sync: ReceiveOptions::default(),
            heartbeat_interval: Duration::from_millis(100),
            peer_timeout: Duration::from_secs(5),
        }
    }
}

/// The last checkpoint that was complete, verified and applied.
struct Committed {
    epoch: u64,
    state: VmState,
    /// The primary's guest was paused at this checkpoint.
    guest_paused: bool,
}

/// A backup VM and what it has committed.
pub struct FtBackup<V> {
    vm: V,
    committed: Option<Committed>,
    sync: Option<ReceiveReport>,
    /// Pages this stream's checkpoints carried: the only ones the primary may send deltas of.
    sent: DirtyBitmap,
}

/// How `run` ended: the backup (to `go_live` or drop) and why the stream stopped, as
/// `CheckpointError::BackupStopped` naming the cause and the last committed epoch.
pub struct BackupExit<V> {
    /// The backup, at its last committed checkpoint.
    pub backup: FtBackup<V>,
    /// Why receiving stopped.
    pub error: CheckpointError,
}

impl<V: MigratableVm> FtBackup<V> {
    /// Receives the initial sync into `vm` (fresh, zeroed, not running), then checkpoints until
    /// the stream ends or fails. It always ends with an error: the caller decides whether to fail
    /// over (`go_live`) or discard the backup.
    pub fn run(
        vm: V,
        conn: Box<dyn Connection>,
        opts: &BackupOptions,
        hooks: Arc<dyn BackupHooks>,
    ) -> BackupExit<V> {
        let mut b = FtBackup {
            vm,
            committed: None,
            sync: None,
            sent: DirtyBitmap::new(0),
        };
        let cause = b.receive(conn, opts, &*hooks);
        let error = CheckpointError::BackupStopped {
            last_committed: b.last_committed(),
            cause: Box::new(cause),
        };
        log::warn!("ft backup: {}", error_chain(&error));
        BackupExit { backup: b, error }
    }

    /// As [`FtBackup::run`], for a backup that does not know the VM before the primary's Hello:
    /// `build` makes a fresh VM matching the announced identity (memory, vCPUs, config) after
    /// checking the pair's settings, and may hand back the settings agreed with the primary
    /// (whose timing then replaces `opts`'). Errs, with nothing to go live from, when no Hello
    /// arrives or `build` refuses (the primary is told why; its Hello is not acked).
    pub fn run_built(
        conn: Box<dyn Connection>,
        opts: &BackupOptions,
        hooks: Arc<dyn BackupHooks>,
        build: impl FnOnce(&Hello) -> Result<(V, Option<Agreed>), String>,
    ) -> Result<BackupExit<V>, CheckpointError> {
        let progress = ProgressHandle::new(Role::Destination);
        let inc = IncomingMigration::accept_for(
            StreamPurpose::FaultTolerance,
            conn,
            &opts.sync,
            &progress,
        )
        .map_err(CheckpointError::InitialSync)?;
        let (vm, agreed) = match build(inc.hello()) {
            Ok(built) => built,
            Err(reason) => return Err(CheckpointError::InitialSync(inc.reject(&reason))),
        };
        let opts = match agreed {
            Some(a) => BackupOptions {
                heartbeat_interval: a.heartbeat_interval,
                peer_timeout: a.failure_timeout,
                ..opts.clone()
            },
            None => opts.clone(),
        };
        let opts = &opts;
        let mut b = FtBackup {
            vm,
            committed: None,
            sync: None,
            sent: DirtyBitmap::new(0),
        };
        let cause = b.receive_accepted(Ok(inc), opts, &*hooks);
        let error = CheckpointError::BackupStopped {
            last_committed: b.last_committed(),
            cause: Box::new(cause),
        };
        log::warn!("ft backup: {}", error_chain(&error));
        Ok(BackupExit { backup: b, error })
    }

    /// The last committed checkpoint (0: the initial sync), if any.
    pub fn last_committed(&self) -> Option<u64> {
        self.committed.as_ref().map(|c| c.epoch)
    }

    /// The kept state of the last committed checkpoint.
    pub fn committed_state(&self) -> Option<&VmState> {
        self.committed.as_ref().map(|c| &c.state)
    }

    /// The initial sync's figures, once it completed.
    pub fn sync_report(&self) -> Option<&ReceiveReport> {
        self.sync.as_ref()
    }

    /// The backup VM (not running).
    pub fn vm(&self) -> &V {
        &self.vm
    }

    /// Whether the primary's guest was paused at the last committed checkpoint.
    pub fn committed_guest_paused(&self) -> bool {
        self.committed.as_ref().is_some_and(|c| c.guest_paused)
    }

    /// Failover: restores the last committed state into the VM and resumes it, unless the
    /// primary's guest was paused at that checkpoint ([`FtBackup::committed_guest_paused`]):
    /// then it stays paused, as the primary left it. Refused when no checkpoint was ever
    /// committed.
    pub fn go_live(mut self) -> Result<V, CheckpointError> {
        let c = self
            .committed
            .take()
            .ok_or(CheckpointError::NothingCommitted)?;
        self.vm
            .restore_state(&c.state)
            .map_err(vm_err("restore_state"))?;
        if c.guest_paused {
            log::info!("ft backup: live from checkpoint {}, paused", c.epoch);
            return Ok(self.vm);
        }
        self.vm.resume().map_err(vm_err("resume"))?;
        log::info!("ft backup: live from checkpoint {}", c.epoch);
        Ok(self.vm)
    }

    /// Everything up to the first error, which it returns.
    fn receive(
        &mut self,
        conn: Box<dyn Connection>,
        opts: &BackupOptions,
        hooks: &dyn BackupHooks,
    ) -> CheckpointError {
        let progress = ProgressHandle::new(Role::Destination);
        let inc = IncomingMigration::accept_for(
            StreamPurpose::FaultTolerance,
            conn,
            &opts.sync,
            &progress,
        );
        self.receive_accepted(inc, opts, hooks)
    }

    /// Everything after the Hello, up to the first error, which it returns.
    fn receive_accepted(
        &mut self,
        inc: Result<IncomingMigration, MigrationError>,
        opts: &BackupOptions,
        hooks: &dyn BackupHooks,
    ) -> CheckpointError {
        let synced = inc.and_then(|inc| inc.receive_initial_sync(&mut self.vm));
        let synced = match synced {
            Ok(s) => s,
            Err(e) => return CheckpointError::InitialSync(e),
        };
        self.committed = Some(Committed {
            epoch: 0,
            state: synced.state,
            guest_paused: false,
        });
        self.sync = Some(synced.report);
        hooks.backup_committed(0, &[]);
        let (mut reader, mut writer) = (synced.reader, synced.writer);
        let e = self.checkpoints(&mut reader, &mut writer, opts, hooks);
        if e.is_withdrawal() {
            // The primary must read this Abort: it is what lets it run on without arbitrating.
            // So no reset: our side of the stream closes, and what the primary still sends is
            // read until it closes too.
            let reason = format!("{WITHDRAW_PREFIX}backup: {}", error_chain(&e));
            if writer.send(&Frame::Abort { reason }, 0, 0).is_ok() {
                writer.shutdown_write();
                reader.drain(WITHDRAW_DRAIN);
            }
        } else if let CheckpointError::Stream(MigrationError::PeerAborted { .. }) = &e {
            // The primary ends the pair on purpose: this copy is never going live (the pair
            // thread discards it on this error), and the primary may run alone once it reads
            // this.
            let _ = writer.send(&Frame::EndConfirmed, 0, 0);
        } else if !matches!(&e, CheckpointError::Stream(m) if m.peer_knows()) {
            let reason = format!("backup: {}", error_chain(&e));
            let _ = writer.send(&Frame::Abort { reason }, 0, 0);
        }
        writer.shutdown();
        e
    }

    fn checkpoints(
        &mut self,
        reader: &mut FrameReader,
        writer: &mut FrameWriter,
        opts: &BackupOptions,
        hooks: &dyn BackupHooks,
    ) -> CheckpointError {
        if let Err(e) = reader.set_read_timeout(Some(opts.heartbeat_interval)) {
            return MigrationError::Connection(e).into();
        }
        let (pages, vcpus) = (self.vm.page_count(), self.vm.vcpu_count());
        self.sent = DirtyBitmap::new(pages);
        let mut last_heard = Instant::now();
        // Heartbeats go out when this side has sent nothing for the interval, whatever arrives:
        // the primary's own heartbeats (a paused guest, no checkpoints to ack) must not keep
        // ours from going out, or the primary would take our silence for a failure.
        let mut last_sent = Instant::now();
        loop {
            let next = self.last_committed().unwrap_or(0) + 1;
            let mut staging = Staging::new(next, pages, vcpus);
            let mut bytes = 0;
            loop {
                if let Some(generation) = hooks.promote_requested() {
                    return self.fence_primary(reader, writer, opts, hooks, generation, next);
                }
                if last_sent.elapsed() >= opts.heartbeat_interval {
                    let hb = Frame::Heartbeat {
                        timestamp_ms: now_ms(),
                    };
                    if let Err(e) = writer.send(&hb, next - 1, 0) {
                        return e.into();
                    }
                    last_sent = Instant::now();
                    hooks.heartbeat_sent();
                }
                let before = reader.bytes();
                let f = match reader.recv() {
                    Ok(f) => f,
                    Err(MigrationError::Timeout { .. }) => {
                        if last_heard.elapsed() > opts.peer_timeout {
                            return MigrationError::Timeout {
                                waiting_for: "the primary (peer timeout)",
                            }
                            .into();
                        }
                        continue;
                    }
                    Err(e) => return e.into(),
                };
                last_heard = Instant::now();
                hooks.on_peer_frame(f.frame.frame_type());
                if !matches!(f.frame, Frame::Heartbeat { .. }) {
                    bytes += reader.bytes().saturating_sub(before);
                }
                match self.on_frame(f, next, &mut staging, writer, hooks, bytes) {
                    Ok(true) => {
                        last_sent = Instant::now(); // the Ack
                        break;
                    }
                    Ok(false) => {}
                    Err(e) => return e,
                }
            }
        }
    }

    /// `ft.promote`: acks nothing more (an ack would renew the primary's shared-disk lease),
    /// asks the primary to fence itself and waits, at most the peer timeout, for its answer.
    fn fence_primary(
        &mut self,
        reader: &mut FrameReader,
        writer: &mut FrameWriter,
        opts: &BackupOptions,
        hooks: &dyn BackupHooks,
        generation: u64,
        next: u64,
    ) -> CheckpointError {
        if let Err(e) = writer.send(&Frame::Fence { generation }, next - 1, 0) {
            return e.into();
        }
        let deadline = Instant::now() + opts.peer_timeout;
        while Instant::now() < deadline {
            match reader.recv() {
                Ok(f) => {
                    hooks.on_peer_frame(f.frame.frame_type());
                    match f.frame {
                        Frame::Fence { .. } => {
                            return CheckpointError::Promoted { confirmed: true }
                        }
                        Frame::Abort { reason } => {
                            return MigrationError::PeerAborted { reason }.into()
                        }
                        // The rest of a checkpoint in flight: never acked, never applied.
                        _ => {}
                    }
                }
                Err(MigrationError::Timeout { .. }) => {}
                Err(_) => break,
            }
        }
        CheckpointError::Promoted { confirmed: false }
    }

    /// Handles one frame of checkpoint `next`; `Ok(true)` once it is committed.
    fn on_frame(
        &mut self,
        f: DecodedFrame,
        next: u64,
        staging: &mut Staging,
        writer: &mut FrameWriter,
        hooks: &dyn BackupHooks,
        bytes: u64,
    ) -> Result<bool, CheckpointError> {
        let DecodedFrame {
            seq, epoch, frame, ..
        } = f;
        match frame {
            Frame::Heartbeat { .. } => return Ok(false),
            Frame::Abort { reason } => return Err(MigrationError::PeerAborted { reason }.into()),
            // Of the last committed checkpoint (`epoch`, normally `next - 1`): answered now,
            // between checkpoints, while this copy holds exactly that state.
            Frame::ScrubDigest(d) => {
                let committed = self.committed.as_ref().map(|c| (c.epoch, &c.state));
                let r =
                    crate::scrub::check(&mut self.vm, committed, epoch, &d, hooks.scrub_disks())
                        .map_err(CheckpointError::Scrub)?;
                writer.send(&Frame::ScrubResult(r.clone()), epoch, 0)?;
                hooks.scrub_answered(&r);
                return Ok(false);
            }
            _ if epoch != next => {
                return Err(CheckpointError::Protocol(format!(
                    "{:?} frame of epoch {epoch} while receiving checkpoint {next}",
                    frame.frame_type()
                )))
            }
            Frame::Commit { vcpus, pages, info } => {
                let done = std::mem::replace(staging, Staging::new(next, 0, 0));
                let verified = done.verify(vcpus, pages)?;
                // Our own copy first (replicated disks): a backup that cannot keep this
                // checkpoint must not ack it; it withdraws instead.
                hooks.before_ack(next, &verified.extras).map_err(|source| {
                    CheckpointError::Withdrawn {
                        epoch: next,
                        source,
                    }
                })?;
                let acked = writer.send(&Frame::Ack { seq }, next, 0);
                // Acked means the primary may release this epoch's outputs; our copy must now
                // reach it. Should applying fail, nothing committed is left to go live from.
                // Unacked (the send failed), it is still complete and verified, and its disk
                // writes are in our copy: it is what we go live from.
                let applied = verified.apply_pages(&mut self.vm);
                if let Err(e) = applied {
                    self.committed = None;
                    return Err(e);
                }
                verified.mark_sent(&mut self.sent);
                hooks.backup_committed(next, &verified.extras);
                let guest_paused = info.is_some_and(|i| i.guest_paused);
                hooks.checkpoint_received(&ReceivedCheckpoint {
                    epoch: next,
                    bytes,
                    pages,
                    pause: info.map(|i| Duration::from_micros(i.pause_us)),
                    guest_paused,
                });
                self.committed = Some(Committed {
                    epoch: verified.epoch,
                    state: verified.state,
                    guest_paused,
                });
                acked?;
                hooks
                    .after_ack(next)
                    .map_err(|source| CheckpointError::Withdrawn {
                        epoch: next,
                        source,
                    })?;
                return Ok(true);
            }
            f @ (Frame::Hello(_)
            | Frame::Ack { .. }
            | Frame::EndOfRound { .. }
            | Frame::EndConfirmed
            | Frame::ScrubResult(_)) => {
                return Err(unexpected("a checkpoint frame", f.frame_type()).into())
            }
            body => staging.add(body, &self.vm, &self.sent)?,
        }
        Ok(false)
    }
}
