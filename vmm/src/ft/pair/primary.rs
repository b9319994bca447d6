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
//!
//! Replicated disks: the initial sync copies them with memory ([`GateDisks`]). A backup that
//! cannot keep its copy withdraws with an Abort ([`is_withdrawal`]): it has discarded its copy and
//! will never go live, so its word ends the pair without arbitration, and the primary releases
//! what it holds and runs on unprotected, its reason naming the backup's error.

// Host-side: the backup, the arbiter and timers decide these lines, not the guest.
#![allow(clippy::disallowed_macros)]

use super::super::disks::GateDisks;
use super::super::hooks::PrimaryHooks;
use super::super::second_path::{self, HeartbeatPaths, Heartbeats};
use super::{
    count_peer_frame, joined_by_waiter, Joined, PairCommand, PairError, PairHandle, PairReport,
    PairTiming, ReportSink, StatusStats, OP_TIMEOUT, SYNC_IO_TIMEOUT, TICK,
};
use crate::config::VmConfig;
use crate::migration::source::PrimaryVm;
use crate::vm::Vm;
use devices::virtio::block::gate::DiskMode;
use devices::virtio::ft::{DeviceGate, FtSetup};
use ft::arbiter::Arbiter;
use ft::checkpoint::{
    is_withdrawal, CheckpointError, EpochHooks, FlowOptions, FtPrimary, PrimaryOptions,
    RESYNC_PREFIX, WITHDRAW_PREFIX,
};
use ft::failover::{Decision, FailoverCoordinator};
use ft::frame::FrameType;
use ft::gate::{EpochClock, LeaseTerms, Releaser};
use ft::heartbeat::{ChannelHook, FailureDetector, Path, Verdict};
use ft::migration::OpenedStream;
use ft::migration::SendOptions;
use ft::status::{FtState, StatusHandle};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How a primary's thread gave its VM back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrimaryEnd {
    /// Running, no backup any more (won arbitration, or the initial sync failed before the
    /// backup could hold anything): outputs flow.
    Alone,
    /// ft.disable: running standalone.
    Disabled,
    /// The guest powered off: stop the VM.
    PoweredOff,
    /// Lost arbitration: the VM must never run again here.
    Halted,
    /// vm.shutdown/vmm.shutdown: stop the VM.
    Shutdown,
    /// vm.reboot: the VMM reboots the guest and re-syncs the backup.
    Reboot,
    /// The pair was ended on purpose, but the backup did not confirm and the arbiter could not
    /// record the end in time: the backup may still take over. The VM must be stopped and not
    /// run again here until the operator knows where the guest runs.
    Unresolved,
}

/// Why a primary ends its pair on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Disable,
    Shutdown(&'static str),
    Reboot,
    /// The guest's own reset: a reboot the VMM thread does not wait for.
    GuestReset,
    PowerOff,
}

impl Ending {
    /// The Abort's reason, as the backup and the arbiter's record see it.
    fn reason(self) -> String {
        match self {
            Ending::Disable => "ft.disable on the primary".into(),
            Ending::Shutdown(why) => why.into(),
            Ending::Reboot => format!("{RESYNC_PREFIX}vm.reboot on the primary"),
            Ending::GuestReset => format!("{RESYNC_PREFIX}the guest reset itself"),
            Ending::PowerOff => "guest powered off".into(),
        }
    }

    /// Whether the VMM thread waits for it (the VM comes back through the join).
    fn synchronous(self) -> bool {
        matches!(self, Ending::Shutdown(_) | Ending::Reboot)
    }
}

/// How an unconfirmed end was settled at the arbiter.
enum Settled {
    /// This member holds the next generation: the backup can never go live from its copy.
    Won,
    /// The backup won first: it is (or is going) live; this copy must never run again.
    Lost,
    /// The arbiter did not answer before the deadline.
    Unknown(String),
}

/// Shortest time a synchronous end (shutdown, reboot) keeps asking an unreachable arbiter.
const SETTLE_MIN: Duration = Duration::from_secs(5);

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
    fn lease_renewed(&self, sent: Instant) {
        self.gates.lease_renewed(sent)
    }
    fn fence(&self, generation: u64) {
        self.gates.fence(generation);
        let why = format!(
            "the backup is being promoted (ft.promote, generation {generation}): this primary \
             gave up its shared-disk lease and writes nothing more until it wins a generation"
        );
        log::warn!("ft primary: {why}");
        self.status.note(&why);
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
    fn epoch_thread_started(&self) {
        match crate::sched::latency_critical() {
            Ok(g) => log::info!("ft primary: the epoch thread runs {g}"),
            Err(e) => log::info!("ft primary: the epoch thread keeps the default scheduling: {e}"),
        }
    }
    fn scrub_disks(&self) -> Option<&dyn ft::scrub::ScrubDisks> {
        self.gates.scrub_disks()
    }
}

/// Everything `spawn_primary` needs.
pub struct PrimarySetup {
    /// The running VM the pair protects; the primary's thread holds it from now on.
    pub vm: Vm,
    /// The VM's config, sent to the backup with the initial sync.
    pub config: VmConfig,
    /// The stream, its Hello accepted by the backup (`ft.enable` opened it).
    pub stream: OpenedStream,
    /// How the pair shares the disks.
    pub disk_mode: DiskMode,
    /// The store where the pair's generations are claimed.
    pub arbiter: Arc<dyn Arbiter>,
    /// Where the pair reports its role, state and figures (`ft.status`).
    pub status: StatusHandle,
    /// Epoch length, heartbeat, failure timeout and flow control bounds.
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
    arbiter: Arc<dyn Arbiter>,
    status: StatusHandle,
    timing: PairTiming,
    commands: Receiver<PairCommand>,
    /// Replicated mode: the disks the initial sync copies.
    disks: Option<GateDisks>,
}

/// Gates the VM's outputs and starts the primary's thread; on error the VM comes back untouched
/// but for its (unprotected, pass-through) gates.
pub fn spawn_primary(
    s: PrimarySetup,
    report: ReportSink,
) -> Result<PairHandle, Box<(Vm, PairError)>> {
    let clock = Arc::new(EpochClock::new());
    // Shared-disk writes of committed epochs need a lease that each ack renews (fencing).
    clock
        .lease()
        .set_terms(LeaseTerms::for_failure_timeout(s.timing.failure_timeout));
    let gates = match s.vm.enable_ft(&FtSetup::new(clock.clone(), s.disk_mode)) {
        Ok(g) => g,
        Err(e) => {
            s.stream.close();
            return Err(Box::new((s.vm, PairError::Gates(e))));
        }
    };
    // Replicated: the initial sync copies the images, reading them through handles of its own.
    let disks = if s.disk_mode == DiskMode::Replicated {
        let disk_gates: Vec<_> = gates
            .iter()
            .filter_map(|g| match g {
                DeviceGate::Disk(d) => Some(d.clone()),
                DeviceGate::Net(_) => None,
            })
            .collect();
        match GateDisks::new(&disk_gates) {
            Ok(d) => Some(d),
            Err(e) => {
                s.stream.close();
                return Err(Box::new((s.vm, PairError::DiskImages(e))));
            }
        }
    } else {
        None
    };
    let releaser = match Releaser::spawn(
        clock.clone(),
        gates.iter().map(|g| g.output_gate()).collect(),
    ) {
        Ok(r) => r,
        Err(e) => {
            s.stream.close();
            return Err(Box::new((s.vm, PairError::Releaser(e))));
        }
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let mut handle = PairHandle {
        commands: tx,
        stream: Arc::default(),
        promote: Arc::default(),
        thread: None,
        waiter: Arc::default(),
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
        Some(Err(e)) => {
            s.stream.close();
            return Err(Box::new((s.vm, PairError::Heartbeats(e))));
        }
        Some(Ok(h)) => Some(h),
        None => None,
    };
    let hooks = Arc::new(PrimaryPairHooks {
        gates: PrimaryHooks::new(clock.clone(), &gates),
        channel: detector.channel_hook(),
        status: s.status.clone(),
    });
    let slot = Arc::new(Mutex::new(Some((s.vm, s.stream))));
    let thread_slot = slot.clone();
    let waiter = handle.waiter.clone();
    let run = PrimaryRun {
        config: s.config,
        hooks,
        clock,
        detector,
        arbiter: s.arbiter,
        status: s.status,
        timing: s.timing,
        commands: rx,
        disks,
    };
    let spawned = std::thread::Builder::new()
        .name("tandem_ft_primary".into())
        .spawn(move || -> Joined {
            crate::seccomp::apply(crate::seccomp::ThreadKind::Ft);
            let taken = thread_slot.lock().ok().and_then(|mut s| s.take());
            let (vm, stream) = taken?;
            let (vm, end, joined) = run.run(vm, stream);
            drop(heartbeats);
            drop(releaser);
            if joined || joined_by_waiter(&waiter) {
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
                .map(|(vm, stream)| {
                    stream.close();
                    vm
                });
            if let Some(vm) = vm {
                return Err(Box::new((vm, PairError::Thread(e))));
            }
        }
    }
    Ok(handle)
}

impl PrimaryRun {
    /// Initial sync, then checkpoints until the pair ends; the VM comes back with how, and
    /// whether the VMM thread is waiting for it in a join (`true`) or needs a report.
    fn run(mut self, vm: Vm, stream: OpenedStream) -> (Option<Vm>, PrimaryEnd, bool) {
        let config_json = serde_json::to_string(&self.config).unwrap_or_default();
        let mut source = PrimaryVm::new(vm, self.config.cpus.boot_vcpus, config_json);
        if let Some(d) = self.disks.take() {
            source = source.with_disks(Box::new(d));
        }
        let t = self.timing;
        let opts = PrimaryOptions {
            sync: SendOptions {
                io_timeout: t.failure_timeout.max(SYNC_IO_TIMEOUT),
                commit_timeout: Duration::from_secs(15),
                disk_progress: self.status.disk_progress(),
                ..SendOptions::default()
            },
            checkpoint_interval: t.checkpoint_interval,
            heartbeat_interval: t.heartbeat_interval,
            ack_timeout: t.failure_timeout.max(Duration::from_secs(1)),
            // Well inside the backup's failure timeout: a primary that hears no confirmation
            // claims the next generation before a backup that lost the link would.
            end_confirm_timeout: (t.failure_timeout / 2).max(Duration::from_millis(100)),
            max_backlog_bytes: t.max_backlog_bytes,
            flow: FlowOptions {
                target_pause: t.target_pause,
                ..FlowOptions::default()
            },
            scrub: ft::scrub::ScrubOptions {
                period: t.scrub_period,
                ..ft::scrub::ScrubOptions::default()
            },
            ..PrimaryOptions::default()
        };
        let stats = Arc::new(StatusStats(self.status.clone()));
        let started = FtPrimary::start_opened(source, stream, &opts, self.hooks.clone(), stats);
        let primary = match started {
            Ok(p) => p,
            Err(b) => {
                let (source, e) = *b;
                let vm = source.into_inner();
                return self.sync_failed(vm, &e);
            }
        };
        self.detector.rearm();
        self.status.set_initial_sync(primary.sync_report());
        let _ = self
            .status
            .transition(FtState::Protected, "initial sync complete; checkpointing");
        self.protected(primary)
    }

    /// The initial sync failed. If the backup may have committed the state (its ack was lost),
    /// it may count itself protected and go live: the guest runs on alone only after winning
    /// the next generation. Otherwise the backup holds nothing it could go live from.
    fn sync_failed(&self, vm: Vm, e: &CheckpointError) -> (Option<Vm>, PrimaryEnd, bool) {
        let why = format!("initial sync failed: {}", errors::chain(e));
        let unconfirmed = matches!(e, CheckpointError::InitialSync(m) if m.commit_unconfirmed());
        if !unconfirmed {
            let _ = self.clock.unprotect();
            self.status.disable(&why);
            self.detector.close();
            return (Some(vm), PrimaryEnd::Alone, false);
        }
        log::warn!("ft primary: {why}; claiming the next generation before running alone");
        let mut coordinator = FailoverCoordinator::new(self.arbiter.clone(), self.status.clone());
        coordinator.set_cause(why.clone());
        let mut ending = None;
        let end = match self.settle(&mut coordinator, &why, &mut ending) {
            Settled::Won => {
                let _ = self.clock.unprotect();
                match ending {
                    Some(e) => self.ended_as_asked(e, false),
                    None => PrimaryEnd::Alone,
                }
            }
            Settled::Lost | Settled::Unknown(_) => self.halt_vm(&vm),
        };
        self.detector.close();
        (Some(vm), end, ending.is_some_and(Ending::synchronous))
    }

    /// Checkpoints until the pair ends: by a command (an end on purpose) or by the backup
    /// falling silent (arbitration).
    fn protected(&self, primary: FtPrimary<PrimaryVm>) -> (Option<Vm>, PrimaryEnd, bool) {
        let mut coordinator = FailoverCoordinator::new(self.arbiter.clone(), self.status.clone());
        let mut next_try = Instant::now();
        loop {
            let ending = match self.commands.recv_timeout(TICK) {
                Ok(PairCommand::Disable) | Err(RecvTimeoutError::Disconnected) => {
                    Some(Ending::Disable)
                }
                Ok(PairCommand::Shutdown(why)) => Some(Ending::Shutdown(why)),
                Ok(PairCommand::Reboot) => Some(Ending::Reboot),
                Ok(PairCommand::GuestReset) => Some(Ending::GuestReset),
                Ok(PairCommand::PowerOff) => Some(Ending::PowerOff),
                Ok(PairCommand::Pause(reply)) => {
                    let r = primary
                        .pause_guest(OP_TIMEOUT)
                        .map_err(PairError::Checkpoint);
                    self.status.set_guest_paused(primary.guest_paused());
                    let _ = reply.send(r);
                    None
                }
                Ok(PairCommand::Resume(reply)) => {
                    let r = primary
                        .resume_guest(OP_TIMEOUT)
                        .map_err(PairError::Checkpoint);
                    self.status.set_guest_paused(primary.guest_paused());
                    let _ = reply.send(r);
                    None
                }
                Ok(PairCommand::Verify(reply)) => {
                    let _ = reply.send(Ok(primary.verify()));
                    None
                }
                Ok(PairCommand::Promote | PairCommand::Leave) | Err(RecvTimeoutError::Timeout) => {
                    None
                }
            };
            if let Some(ending) = ending {
                return self.end(primary, ending, coordinator);
            }
            if let Some(reason) = primary.backup_abort().filter(|r| is_withdrawal(r)) {
                // The backup discarded its copy and will never go live: its word ends the pair,
                // nobody need claim a generation. Nothing may stay held behind it.
                let _ = self.clock.unprotect();
                let why = format!(
                    "the backup left the pair ({}); running UNPROTECTED",
                    reason.strip_prefix(WITHDRAW_PREFIX).unwrap_or(&reason)
                );
                log::error!("ft primary: {why}");
                let vm = self.finish(primary, None).0;
                self.detector.close();
                let _ = self.status.transition(FtState::Unprotected, &why);
                return (vm, PrimaryEnd::Alone, false);
            }
            if let Some(why) = primary.failure() {
                // Named in the claim and in the winner's or loser's reason.
                coordinator.set_cause(format!("checkpointing stopped: {why}"));
            }
            if Instant::now() < next_try {
                continue;
            }
            let verdict = match self.detector.wait_for_failure(Instant::now()) {
                // The stream is dead though the heartbeats say the backup lives: the primary
                // arbitrates (second_path's rule); the backup defers to it.
                Verdict::Alive => match second_path::stream_lost(&self.detector) {
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
                    let _ = self.clock.unprotect();
                    log::warn!(
                        "ft primary: backup lost; running unprotected in generation {generation}"
                    );
                    let vm = self.finish(primary, None).0;
                    self.detector.close();
                    return (vm, PrimaryEnd::Alone, false);
                }
                d @ (Decision::Halt { .. } | Decision::GoLive { .. }) => {
                    let reason = match d {
                        Decision::Halt { reason } => reason,
                        _ => "a primary was told to go live".into(),
                    };
                    // Frozen before anything else: no held output may leave now.
                    self.clock.halt();
                    log::error!("ft primary: halting: {reason}");
                    let vm = self.finish(primary, None).0;
                    if let Some(vm) = &vm {
                        self.halt_vm(vm);
                    }
                    self.detector.close();
                    return (vm, PrimaryEnd::Halted, false);
                }
            }
        }
    }

    /// Stops the engine, telling the backup `why` when given; the VM and whether the backup
    /// confirmed the end.
    fn finish(&self, p: FtPrimary<PrimaryVm>, why: Option<&str>) -> (Option<Vm>, bool) {
        // Nothing is in flight once the engine stops, whatever it last reported.
        self.status.set_backlog(0, 0);
        let exit = match why {
            Some(r) => p.end(r),
            None => p.stop(),
        };
        match exit {
            Ok(exit) => {
                if let Some(e) = exit.error {
                    log::info!("ft primary: checkpointing ended: {}", errors::chain(&e));
                }
                (Some(exit.vm.into_inner()), exit.end_confirmed)
            }
            Err(e) => {
                log::error!("ft primary: cannot take the VM back: {}", errors::chain(&e));
                (None, false)
            }
        }
    }

    /// The rule for ending a pair on purpose (issue: never two live VMs): the guest runs on, or
    /// its held output is released, only once the backup confirmed that it discarded its copy
    /// or this member won the next generation at the arbiter. A shutdown that cannot reach the
    /// backup records the end at the arbiter, so the backup never goes live from a VM the user
    /// shut down.
    fn end(
        &self,
        primary: FtPrimary<PrimaryVm>,
        ending: Ending,
        mut coordinator: FailoverCoordinator<Arc<dyn Arbiter>>,
    ) -> (Option<Vm>, PrimaryEnd, bool) {
        let reason = ending.reason();
        let (vm, confirmed) = self.finish(primary, Some(&reason));
        let mut asked = Some(ending);
        let settled = if confirmed {
            log::info!("ft primary: the backup confirmed the end of the pair ({reason})");
            Settled::Won
        } else {
            log::warn!(
                "ft primary: the backup did not confirm the end of the pair ({reason}); \
                 claiming the next generation before the guest runs alone"
            );
            self.settle(&mut coordinator, &reason, &mut asked)
        };
        // A shutdown asked for while settling an ft.disable replaces it.
        let ending = asked.unwrap_or(ending);
        self.detector.close();
        let sync = ending.synchronous();
        let Some(vm) = vm else {
            return (None, PrimaryEnd::Halted, sync);
        };
        let end = match settled {
            Settled::Won => {
                let _ = self.clock.unprotect();
                self.ended_as_asked(ending, confirmed)
            }
            Settled::Lost => self.halt_vm(&vm),
            Settled::Unknown(error) => {
                self.clock.halt();
                let why = format!(
                    "{reason}: the backup did not confirm the end of the pair and the arbiter \
                     could not record it ({error}); the VM is stopped, and the backup may still \
                     take over: check it before running the guest here again"
                );
                log::error!("ft primary: {why}");
                let _ = self.status.transition(FtState::Halted, &why);
                PrimaryEnd::Unresolved
            }
        };
        (Some(vm), end, sync)
    }

    /// The pair ended as asked (confirmed, or won at the arbiter): the status and the end.
    fn ended_as_asked(&self, ending: Ending, confirmed: bool) -> PrimaryEnd {
        let how = if confirmed {
            "the backup discarded its copy"
        } else {
            "the backup did not confirm; this member won the next generation"
        };
        match ending {
            Ending::Disable => {
                self.status
                    .disable(&format!("ft.disable: running standalone ({how})"));
                PrimaryEnd::Disabled
            }
            Ending::Shutdown(why) => {
                self.status
                    .disable(&format!("{why}; the pair has ended ({how})"));
                PrimaryEnd::Shutdown
            }
            Ending::PowerOff => {
                self.status
                    .disable(&format!("guest powered off; the pair has ended ({how})"));
                PrimaryEnd::PoweredOff
            }
            Ending::Reboot | Ending::GuestReset => {
                let _ = self.status.transition(
                    FtState::Unprotected,
                    &format!(
                        "vm.reboot: the guest reboots; the backup waits for a fresh sync ({how})"
                    ),
                );
                PrimaryEnd::Reboot
            }
        }
    }

    /// Claims the next generation for an unconfirmed end until the arbiter answers; a
    /// synchronous end (shutdown, reboot: the VMM thread waits) gives up after a bound. While
    /// it retries the guest's output stays held; pause and resume are refused, and a shutdown,
    /// reboot or power-off asked for meanwhile replaces `ending`.
    fn settle(
        &self,
        coordinator: &mut FailoverCoordinator<Arc<dyn Arbiter>>,
        why: &str,
        ending: &mut Option<Ending>,
    ) -> Settled {
        let bound = (self.timing.failure_timeout * 5).max(SETTLE_MIN);
        let mut deadline = ending
            .is_some_and(Ending::synchronous)
            .then(|| Instant::now() + bound);
        loop {
            match coordinator.claim_end(why) {
                Decision::ReleaseOutputs { .. } => return Settled::Won,
                Decision::Halt { .. } | Decision::GoLive { .. } | Decision::Stay => {
                    return Settled::Lost
                }
                Decision::Retry { error, after } => {
                    if deadline.is_some_and(|d| Instant::now() + after > d) {
                        return Settled::Unknown(error);
                    }
                    // An ft.disable answered before this settles: ft.status tells the operator.
                    self.status.note(&format!(
                        "{why}: the backup did not confirm; output held until the arbiter \
                         records the end: {error}"
                    ));
                    let until = Instant::now() + after;
                    while Instant::now() < until {
                        let next = match self.commands.recv_timeout(TICK) {
                            Ok(PairCommand::Pause(reply) | PairCommand::Resume(reply)) => {
                                let _ = reply.send(Err(PairError::Ended));
                                None
                            }
                            Ok(PairCommand::Verify(reply)) => {
                                let _ = reply.send(Err(PairError::Ended));
                                None
                            }
                            Ok(PairCommand::Shutdown(why)) => Some(Ending::Shutdown(why)),
                            Ok(PairCommand::Reboot) => Some(Ending::Reboot),
                            Ok(PairCommand::GuestReset) => Some(Ending::GuestReset),
                            Ok(PairCommand::PowerOff) => Some(Ending::PowerOff),
                            Ok(_) | Err(_) => None,
                        };
                        if let Some(e) = next {
                            *ending = Some(e);
                            if e.synchronous() && deadline.is_none() {
                                deadline = Some(Instant::now() + bound);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Freezes the outputs for good and pauses the VM: this copy must never run again.
    fn halt_vm(&self, vm: &Vm) -> PrimaryEnd {
        self.clock.halt();
        if let Err(e) = vm.pause() {
            log::error!("ft primary: pausing the halted VM: {}", errors::chain(&e));
        }
        PrimaryEnd::Halted
    }
}
