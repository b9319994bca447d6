//! The primary's thread: gates the VM's outputs on an epoch clock, runs `FtPrimary` (initial
//! sync, then epochs), and watches the failure detector (fed by every frame from the backup).
//! When the backup falls silent for the failure timeout it arbitrates (`FailoverCoordinator`):
//! won → release everything held and run unprotected; lost → freeze outputs, hand the VM back to
//! be stopped, status Halted with the winner's name.
//!
//! Synchronised VM operations (the VMM thread waits for each):
//! * pause/resume: `FtPrimary::pause_guest` takes one last checkpoint that leaves the guest
//!   paused and says so in its Commit, so the backup knows, and goes live paused if the primary
//!   dies then; resume lets epochs go on.
//! * shutdown (`vm.shutdown`, `vmm.shutdown`): ends the pair on purpose like a guest power-off;
//!   the backup discards its copy; the VM comes back through the thread's join to be stopped.
//! * reboot: ends the pair with an Abort that asks for a re-sync ([`RESYNC_PREFIX`]): the backup
//!   discards its copy and waits on the same listener; the VMM reboots the guest and enables FT
//!   again with the same settings, a fresh initial sync.

use super::super::hooks::PrimaryHooks;
use super::super::second_path::{self, HeartbeatPaths, Heartbeats};
use super::{
    count_peer_frame, Joined, PairCommand, PairError, PairHandle, PairReport, PairTiming,
    ReportSink, StatusStats, OP_TIMEOUT, SYNC_IO_TIMEOUT, TICK,
};
use crate::config::VmConfig;
use crate::migration::source::PrimaryVm;
use crate::vm::Vm;
use devices::virtio::block::gate::DiskMode;
use devices::virtio::ft::FtSetup;
use ft::arbiter::FileArbiter;
use ft::checkpoint::{EpochHooks, FtPrimary, PrimaryOptions, RESYNC_PREFIX};
use ft::failover::{Decision, FailoverCoordinator};
use ft::frame::FrameType;
use ft::gate::{EpochClock, Releaser};
use ft::heartbeat::{ChannelHook, FailureDetector, Path, Verdict};
use ft::migration::SendOptions;
use ft::status::{FtState, StatusHandle};
use ft::transport::Connection;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// vm.shutdown/vmm.shutdown: stop the VM (handed back through the join, not a report).
    Shutdown,
    /// vm.reboot: the VMM reboots the guest and re-syncs the backup (handed back through the
    /// join, not a report).
    Reboot,
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
    fn on_peer_frame(&self, kind: FrameType) {
        self.channel.frame_received();
        count_peer_frame(&self.status, kind, true);
    }
    fn heartbeat_sent(&self) {
        self.status.record_heartbeat_sent(Path::Channel);
    }
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
    /// What the handshake in `ft.enable` established.
    pub session: ft::auth::Session,
    /// The second liveness path, if configured.
    pub heartbeat: Option<HeartbeatPaths>,
}

/// What the primary's thread works with once started.
struct PrimaryRun {
    config: VmConfig,
    hooks: Arc<PrimaryPairHooks>,
    clock: Arc<EpochClock>,
    detector: FailureDetector,
    arbiter: FileArbiter,
    status: StatusHandle,
    timing: PairTiming,
    commands: Receiver<PairCommand>,
}

/// Gates the VM's outputs and starts the primary's thread; on error the VM comes back untouched
/// but for its (unprotected, pass-through) gates.
pub fn spawn_primary(
    s: PrimarySetup,
    report: ReportSink,
) -> Result<PairHandle, Box<(Vm, PairError)>> {
    let clock = Arc::new(EpochClock::new());
    let gates = match s.vm.enable_ft(&FtSetup::new(clock.clone(), s.disk_mode)) {
        Ok(g) => g,
        Err(e) => return Err(Box::new((s.vm, PairError::Gates(e)))),
    };
    let releaser = match Releaser::spawn(
        clock.clone(),
        gates.iter().map(|g| g.output_gate()).collect(),
    ) {
        Ok(r) => r,
        Err(e) => return Err(Box::new((s.vm, PairError::Releaser(e)))),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let mut handle = PairHandle {
        commands: tx,
        stream: Arc::default(),
        thread: None,
    };
    let detector = FailureDetector::new(s.timing.failure_timeout);
    s.status.attach_detector(detector.clone());
    let heartbeats: Option<Heartbeats> = match s.heartbeat.map(|paths| {
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
        Some(Err(e)) => return Err(Box::new((s.vm, PairError::Heartbeats(e)))),
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
    let run = PrimaryRun {
        config: s.config,
        hooks,
        clock,
        detector,
        arbiter: s.arbiter,
        status: s.status,
        timing: s.timing,
        commands: rx,
    };
    let spawned = std::thread::Builder::new()
        .name("tandem_ft_primary".into())
        .spawn(move || -> Joined {
            crate::seccomp::apply(crate::seccomp::ThreadKind::Ft);
            let taken = thread_slot.lock().ok().and_then(|mut s| s.take());
            let (vm, conn) = taken?;
            let (vm, end) = run.run(vm, conn);
            drop(heartbeats);
            drop(releaser);
            if matches!(end, PrimaryEnd::Shutdown | PrimaryEnd::Reboot) {
                return Some(Box::new((vm, end)));
            }
            report(PairReport::PrimaryEnded { vm, end });
            None
        });
    match spawned {
        Ok(t) => handle.thread = Some(t),
        Err(e) => {
            let vm = slot
                .lock()
                .ok()
                .and_then(|mut s| s.take())
                .map(|(vm, _)| vm);
            if let Some(vm) = vm {
                return Err(Box::new((vm, PairError::Thread(e))));
            }
        }
    }
    Ok(handle)
}

impl PrimaryRun {
    /// Initial sync, then checkpoints until the pair ends; the VM comes back with how.
    fn run(self, vm: Vm, conn: Box<dyn Connection>) -> (Option<Vm>, PrimaryEnd) {
        let PrimaryRun {
            config,
            hooks,
            clock,
            detector,
            arbiter,
            status,
            timing,
            commands,
        } = self;
        let config_json = serde_json::to_string(&config).unwrap_or_default();
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
                status.disable(&format!("initial sync failed: {}", errors::chain(&e)));
                detector.close();
                return (Some(source.into_inner()), PrimaryEnd::Alone);
            }
        };
        detector.rearm();
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
                        log::info!("ft primary: checkpointing ended: {}", errors::chain(&e));
                    }
                    Some(exit.vm.into_inner())
                }
                Err(e) => {
                    log::error!("ft primary: cannot take the VM back: {}", errors::chain(&e));
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
                    let r = primary
                        .pause_guest(OP_TIMEOUT)
                        .map_err(PairError::Checkpoint);
                    status.set_guest_paused(primary.guest_paused());
                    let _ = reply.send(r);
                }
                Ok(PairCommand::Resume(reply)) => {
                    let r = primary
                        .resume_guest(OP_TIMEOUT)
                        .map_err(PairError::Checkpoint);
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
                        log::error!("ft primary: pausing the halted VM: {}", errors::chain(&e));
                    }
                    detector.close();
                    return (vm, PrimaryEnd::Halted);
                }
            }
        }
    }
}
