//! The backup's thread: builds its VM from the primary's Hello (like `IncomingVm`, with this
//! host's taps and disk paths), runs `FtBackup` until the stream ends, then tells apart
//! * the pair ending on purpose: the primary sent an Abort first (`FtPrimary::end`: ft.disable,
//!   guest power-off) → the copy is discarded, never live;
//! * the primary dying: the stream closed or went silent without one (a killed process closes
//!   its socket the same way a clean close does, so only the Abort distinguishes them) → once the
//!   detector has heard nothing for the failure timeout, arbitrate; won → go live from the last
//!   complete checkpoint (shared disks: re-issue the committed writes first), announce the MACs,
//!   become the primary, unprotected;
//! * the primary's guest rebooting (an Abort asking for a re-sync) → discard and wait on the same
//!   listener for a fresh sync.
//!
//! Whoever connects must pass the authentication handshake; a refused connection is noted in
//! ft.status and the backup keeps waiting for its real primary.

// Host-side: the primary, the arbiter and timers decide these lines, not the guest.
#![allow(clippy::disallowed_macros)]

use super::super::disks::{ReplicaDisk, ReplicaDisks};
use super::super::hooks::{BackupDisk, BackupDiskHooks};
use super::super::replica_fault;
use super::super::second_path::{self, Deferral, HeartbeatPaths};
use super::backup_vm::BackupVm;
use super::{
    count_peer_frame, PairCommand, PairError, PairHandle, PairReport, ReportSink, SYNC_IO_TIMEOUT,
    TICK,
};
use crate::config::VmConfig;
use crate::migration::incoming::IncomingVm;
use crate::vm::handlers::VmHandlers;
use crate::vm::Vm;
use devices::virtio::block::disk::RawDisk;
use devices::virtio::block::gate::DiskMode;
use ft::arbiter::Arbiter;
use ft::checkpoint::{
    agree, is_resync, BackupHooks, BackupOptions, BackupWants, CheckpointError, FtBackup,
    PairDiskMode, PairSettings, ReceivedCheckpoint, SettingsError,
};
use ft::disk::{check_disks, VmDisks};
use ft::failover::{Decision, FailoverCoordinator};
use ft::frame::FrameType;
use ft::heartbeat::{ChannelHook, FailureDetector, Path, Verdict};
use ft::migration::{MigrationError, ReceiveOptions};
use ft::status::{FtState, StatusHandle};
use ft::transport::Connection;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// The backup's hooks: disks (once the VM is known), status, detector.
struct BackupPairHooks {
    disks: OnceLock<Arc<BackupDiskHooks>>,
    status: StatusHandle,
    channel: ChannelHook,
    /// Set by ft.promote ([`PairHandle::command`]).
    promote: Arc<AtomicBool>,
    /// TEST ONLY ([`replica_fault`]): corrupts the replica once the initial sync is in.
    fault: OnceLock<replica_fault::Armed>,
}

impl BackupHooks for BackupPairHooks {
    fn before_ack(&self, n: u64, extras: &[u8]) -> Result<(), ft::checkpoint::ReplicaError> {
        match self.disks.get() {
            Some(d) => d.before_ack(n, extras),
            None => Ok(()),
        }
    }
    fn after_ack(&self, n: u64) -> Result<(), ft::checkpoint::ReplicaError> {
        match self.disks.get() {
            Some(d) => d.after_ack(n),
            None => Ok(()),
        }
    }
    fn backup_committed(&self, n: u64, extras: &[u8]) {
        if let Some(d) = self.disks.get() {
            d.backup_committed(n, extras);
        }
        if n == 0 {
            let _ = self.status.transition(
                FtState::Protected,
                "initial sync received; checkpoints flow",
            );
            if let Some(f) = self.fault.get() {
                f.fire();
            }
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
    fn promote_requested(&self) -> Option<u64> {
        self.promote
            .load(Ordering::SeqCst)
            .then(|| self.status.generation().saturating_add(1))
    }
    fn scrub_disks(&self) -> Option<&dyn ft::scrub::ScrubDisks> {
        self.disks.get().and_then(|d| d.scrub_disks())
    }
}

/// Why the primary's VM cannot be built here; the primary is told (its Hello is refused).
pub type LocalizeError = Box<dyn std::error::Error + Send + Sync>;

/// Turns the primary's config (JSON) into this host's VM config.
/// Called once per initial sync (again after a guest reboot's re-sync).
pub type Localize = Box<dyn Fn(&str) -> Result<VmConfig, LocalizeError> + Send>;

/// Everything `spawn_backup` needs.
pub struct BackupSetup {
    /// The bound `ft.receive` listener the primary connects to.
    pub listener: ft::transport::Listener,
    /// Turns the primary's config (JSON) into this host's (taps, disk paths, serial).
    pub localize: Localize,
    /// What `ft.receive` said of the pair's settings; the primary's Hello must agree.
    pub wants: BackupWants,
    /// The store where the pair's generations are claimed.
    pub arbiter: Arc<dyn Arbiter>,
    /// Where the backup reports its role, state and figures (`ft.status`).
    pub status: StatusHandle,
    /// Silence from the primary after which it counts as failed, until the Hello sets the pair's.
    pub failure_timeout: Duration,
    /// What the replica's threads report through once it runs.
    pub handlers: VmHandlers,
    /// The pair key, if any: the primary must prove it holds the same.
    pub key: Option<ft::auth::PairKey>,
    /// The second liveness path, if configured.
    pub heartbeat: Option<HeartbeatPaths>,
}

/// Sleeps until `end` (the old primary's shared-disk lease is over), saying so in ft.status.
fn wait_out_lease(end: Option<Instant>, status: &StatusHandle) {
    let Some(left) = end.and_then(|e| e.checked_duration_since(Instant::now())) else {
        return;
    };
    let why = format!(
        "won the generation; waiting {left:?} for the old primary's disk lease to run out \
         before the first write"
    );
    log::info!("ft backup: {why}");
    status.note(&why);
    std::thread::sleep(left);
}

/// How long a backup waits for its primary to connect.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(600);
/// How often a waiting backup looks at its commands.
const ACCEPT_TURN: Duration = Duration::from_millis(100);
/// Longest authentication handshake a backup waits through before taking the next connection.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts the backup's thread: accept, receive, then discard or go live.
pub fn spawn_backup(s: BackupSetup, report: ReportSink) -> Result<PairHandle, PairError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let stream: Arc<Mutex<Option<Box<dyn Connection>>>> = Arc::default();
    let promote: Arc<AtomicBool> = Arc::default();
    let mut handle = PairHandle {
        commands: tx,
        stream: stream.clone(),
        promote: promote.clone(),
        thread: None,
        waiter: Arc::default(),
    };
    let thread = std::thread::Builder::new()
        .name("tandem_ft_backup".into())
        .spawn(move || {
            crate::seccomp::apply(crate::seccomp::ThreadKind::Ft);
            report(match run_backup(s, &stream, &promote, &rx) {
                Some((config, vm, paused, reason)) => PairReport::BackupLive {
                    config: Box::new(config),
                    vm,
                    paused,
                    reason,
                },
                None => PairReport::BackupEnded,
            });
            None
        })
        .map_err(PairError::Thread)?;
    handle.thread = Some(thread);
    Ok(handle)
}

/// The backup's thread: accept, receive, then discard, go live, or (the primary's guest
/// rebooted) discard and wait on the same listener for a fresh sync. `Some((config, vm,
/// paused, reason))` once live; the VMM thread makes ft.status say so once it holds the VM.
fn run_backup(
    s: BackupSetup,
    stream: &Mutex<Option<Box<dyn Connection>>>,
    promote_asked: &Arc<AtomicBool>,
    commands: &Receiver<PairCommand>,
) -> Option<(VmConfig, Vm, bool, String)> {
    let status = s.status.clone();
    let end = |why: String| {
        log::warn!("ft backup: {why}");
        status.disable(&why);
        None
    };
    let (localize, handlers) = (s.localize, s.handlers);
    let hb_on = s.heartbeat.is_some();
    let opts = BackupOptions {
        sync: ReceiveOptions {
            io_timeout: s.failure_timeout.max(SYNC_IO_TIMEOUT),
            disk_progress: s.status.disk_progress(),
            ..ReceiveOptions::default()
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
                    use ft::auth::{handshake, Purpose, Side};
                    let key = s.key.as_ref();
                    match handshake(c, key, Side::Responder, Purpose::Ft, HANDSHAKE_TIMEOUT) {
                        Ok(done) => break done,
                        // Whoever connected cannot end the wait: the real primary may come next.
                        Err(e) => {
                            let why = format!(
                                "refused a connection: {}; still waiting for the primary",
                                errors::chain(&e)
                            );
                            log::warn!("ft backup: {why}");
                            status.note(&why);
                        }
                    }
                }
                Err(ft::transport::TransportError::AcceptTimeout { .. })
                    if waiting_since.elapsed() < ACCEPT_TIMEOUT => {}
                Err(e) => return end(format!("no primary connected: {}", errors::chain(&e))),
            }
        };
        let (conn, session) = conn;
        if !session.authenticated {
            log::warn!(
                "ft backup: the replication stream is NOT encrypted or authenticated (no key)"
            );
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
                return end(format!("heartbeats: {}", errors::chain(&e)));
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
                return end(format!("heartbeats: {}", errors::chain(&e)));
            }
            Some(Ok(h)) => Some(h),
            None => None,
        };
        // A promote is only taken while protected, so none can be meant for this new stream.
        promote_asked.store(false, Ordering::SeqCst);
        let hooks = Arc::new(BackupPairHooks {
            disks: OnceLock::new(),
            status: status.clone(),
            channel: detector.channel_hook(),
            promote: promote_asked.clone(),
            fault: OnceLock::new(),
        });
        let config: OnceLock<VmConfig> = OnceLock::new();
        let build_hooks = hooks.clone();
        let handlers = handlers.clone();
        let wants = &s.wants;
        let built_detector = detector.clone();
        let built = FtBackup::run_built(conn, &opts, hooks.clone(), |hello| {
            // The pair's settings first: a mismatch refuses the Hello before anything is built,
            // and the primary's ft.enable answers with this reason.
            let pair = hello
                .pair
                .as_deref()
                .ok_or(SettingsError::Missing)
                .and_then(PairSettings::from_json)
                .and_then(|p| agree(&p, wants))
                .map_err(|e| errors::chain(&e))?;
            built_detector.set_timeout(pair.failure_timeout);
            let mode = match pair.disk_mode {
                PairDiskMode::Shared => DiskMode::Shared,
                PairDiskMode::Replicated => DiskMode::Replicated,
            };
            let cfg = localize(&hello.identity.config).map_err(|e| errors::chain(&*e))?;
            let mut disks = Vec::new();
            let mut replica = Vec::new();
            // Disk gates are numbered by virtio device position, disks first (VirtioDevices).
            for (index, d) in cfg.disks.iter().enumerate() {
                let open = || {
                    RawDisk::open(&d.path, false).map_err(|e| {
                        format!("cannot open disk {:?} at {}: {e}", d.id, d.path.display())
                    })
                };
                let index = index as u32;
                disks.push(BackupDisk {
                    index,
                    disk: open()?,
                });
                if mode == DiskMode::Replicated {
                    replica.push(ReplicaDisk {
                        index,
                        name: d.id.clone(),
                        image: open()?,
                    });
                }
            }
            // Replicated: the initial sync copies the primary's images into ours, which must
            // match what its Hello announced (refused here, before anything is written).
            let mut replica = (mode == DiskMode::Replicated).then(|| ReplicaDisks::new(replica));
            check_disks(
                &hello.identity.disks,
                replica.as_mut().map(|r| r as &mut dyn VmDisks),
            )
            .map_err(|e| match e {
                MigrationError::Incompatible(why) => why,
                e => errors::chain(&e),
            })?;
            let disks = Arc::new(BackupDiskHooks::new(mode, disks));
            let _ = build_hooks.disks.set(disks.clone());
            let inner = IncomingVm::new(cfg.clone(), handlers)
                .map_err(|e| format!("cannot build the replica: {}", errors::chain(&e)))?;
            if let Some(f) = inner.guest_memory().and_then(replica_fault::arm) {
                let _ = build_hooks.fault.set(f);
            }
            let _ = config.set(cfg);
            Ok((
                BackupVm {
                    inner,
                    disks,
                    replica,
                },
                Some(pair),
            ))
        });
        *stream.lock().unwrap_or_else(PoisonError::into_inner) = None;
        let exit = match built {
            Ok(exit) => exit,
            // This backup refused that primary's Hello (settings, config, disks): like a refused
            // handshake, whoever connected cannot end the wait; the right primary may come next.
            Err(CheckpointError::InitialSync(MigrationError::Incompatible(why))) => {
                detector.close();
                let why = format!("refused a primary: {why}; still waiting for the primary");
                log::warn!("ft backup: {why}");
                status.note(&why);
                continue;
            }
            Err(e) => {
                detector.close();
                return end(format!("initial sync failed: {}", errors::chain(&e)));
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
        // Nothing committed yet: this backup refused the primary's VM at its Hello (like a
        // refused settings check: the right primary may come next), or could not take the
        // initial copy (its own image failed: it ends, saying why). The primary was told.
        if let CheckpointError::BackupStopped {
            cause,
            last_committed: None,
        } = &exit.error
        {
            match &**cause {
                CheckpointError::InitialSync(MigrationError::Incompatible(why)) => {
                    detector.close();
                    let why = format!("refused a primary: {why}; still waiting for the primary");
                    log::warn!("ft backup: {why}");
                    status.note(&why);
                    drop(exit);
                    continue;
                }
                CheckpointError::InitialSync(e @ MigrationError::Vm { .. }) => {
                    detector.close();
                    return end(format!(
                        "could not take the initial copy: {}",
                        errors::chain(e)
                    ));
                }
                _ => {}
            }
        }
        // This backup could not keep its copy and told the primary so: it never goes live
        // from this stream, whatever follows (the primary runs on unprotected on its word).
        if exit.error.is_withdrawal() {
            detector.close();
            let cause = match &exit.error {
                CheckpointError::BackupStopped { cause, .. } => errors::chain(&**cause),
                e => errors::chain(e),
            };
            let why = format!(
                "left the pair: {cause}; copy discarded, the primary was told (it runs on \
                 unprotected)"
            );
            log::error!("ft backup: {why}");
            drop(exit);
            let _ = status.transition(FtState::Halted, &why);
            return None;
        }
        let config = config.get()?.clone();
        let disks = hooks.disks.get().cloned();
        break (exit, detector, config, heartbeats, disks);
    };
    let (exit, detector, config, _heartbeats, disks) = exit;
    let why = errors::chain(&exit.error);
    log::warn!("ft backup: stream ended: {why}");
    let mut coordinator = FailoverCoordinator::new(s.arbiter, status.clone());
    // A primary that closed cleanly or fell silent leaves "the peer closed the connection" or a
    // timeout here; a corrupt, truncated or unexpected frame is named: the reasons say which.
    coordinator.set_cause(format!("the replication stream ended: {why}"));
    // ft.promote ended the stream: the primary may have confirmed it stopped writing.
    let (mut promote, fenced) = match &exit.error {
        CheckpointError::BackupStopped { cause, .. } => match **cause {
            CheckpointError::Promoted { confirmed } => (true, confirmed),
            _ => (false, false),
        },
        _ => (false, false),
    };
    let mut backup = Some(exit.backup);
    let mut next_try = Instant::now();
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
                let _ = reply.send(Err(PairError::NotPrimary));
            }
            Ok(PairCommand::Verify(reply)) => {
                let _ = reply.send(Err(PairError::NotPrimary));
            }
            Ok(PairCommand::Promote) => promote = true,
            // A backup runs no guest that could reset.
            Ok(PairCommand::GuestReset) | Err(RecvTimeoutError::Timeout) => {}
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
                // Fencing: the old primary may hold a lease on the shared disk until the last
                // frame we heard plus its duration; nothing of ours is written before that.
                if fenced {
                    log::info!(
                        "ft backup: the old primary confirmed it stopped writing the shared disk"
                    );
                } else {
                    let lease_end = disks
                        .as_ref()
                        .and_then(|d| d.lease_end(detector.last_heard(Path::Channel)));
                    wait_out_lease(lease_end, &status);
                }
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
                        let why = format!("going live failed: {}", errors::chain(&e));
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
