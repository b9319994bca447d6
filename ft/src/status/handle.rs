//! The shared status handle and the snapshot it gives the API.

use super::counters::{FtCounters, HeartbeatCounts};
use super::samples::{
    CommitLatencyStats, CommitRings, PauseStats, PauseStepStats, Ring, StepRings,
};
use super::transitions::transition_allowed;
use super::{FtState, Role, StatusError};
use crate::heartbeat::{FailureDetector, Path};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long ago each liveness path last heard from the peer, milliseconds (`None`: never).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PathAges {
    /// Any frame on the checkpoint channel.
    pub channel_ms: Option<u64>,
    /// A valid UDP heartbeat on the second path.
    pub udp_ms: Option<u64>,
}

/// Flow control on the primary: how hard it slows the guest, and the epoch and backlog bounds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct FlowStatus {
    /// How hard the guest's vCPUs are throttled now, per mille of their time (0: not at all).
    pub throttle_permille: u16,
    /// What holds the throttle or the epoch length where they are: `none`, `pause` (the dirty
    /// set would make the pause too long) or `backlog` (the backup or the link is behind).
    pub limited_by: crate::checkpoint::FlowLimit,
    /// The epoch length flow control chose (at most the checkpoint interval), microseconds.
    pub epoch_us: u64,
    /// The pause flow control aims at, microseconds.
    pub target_pause_us: u64,
    /// Bound on bytes captured but not acked (`ft.enable`'s `max_backlog_bytes`).
    pub max_backlog_bytes: u64,
    /// Most bytes captured but not acked at once since FT was enabled.
    pub peak_backlog_bytes: u64,
    /// Pages the guest rewrites every epoch, kept writable between checkpoints and copied at
    /// each (saves a dirty-log fault per page per epoch).
    pub hot_pages: u64,
}

/// Everything `ft.status` reports, as of one instant.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FtStatus {
    /// Standalone, primary or backup.
    pub role: Role,
    /// Where in the state machine.
    pub state: FtState,
    /// Arbitration generation this member belongs to.
    pub generation: u64,
    /// The peer's address, if paired.
    pub peer: Option<String>,
    /// Whether the pair's stream and heartbeats are authenticated with a pair key (`false`:
    /// anyone who can reach the link can alter or forge replication traffic).
    pub authenticated: bool,
    /// Last epoch acked by the backup (primary) or committed (backup).
    pub last_committed_epoch: Option<u64>,
    /// Checkpoints taken (primary) or applied (backup) since FT was enabled.
    pub checkpoint_count: u64,
    /// Guest pause per checkpoint.
    pub pause: PauseStats,
    /// Where the pause goes, step by step, over the same window as `pause` (primary).
    pub pause_steps: PauseStepStats,
    /// What a checkpoint takes to commit after the pause, over the same window (primary).
    pub commit_latency: CommitLatencyStats,
    /// Flow control (primary).
    pub flow: FlowStatus,
    /// The initial sync that protected the guest (primary; `None` before it completed): its
    /// rounds, bytes and the guest pause it ended with.
    pub initial_sync: Option<crate::migration::SendReport>,
    /// Stream bytes of the latest checkpoint.
    pub bytes_last_checkpoint: u64,
    /// Mean stream bytes per checkpoint over the recent window.
    pub bytes_per_checkpoint: u64,
    /// Bytes captured but not yet acked.
    pub backlog_bytes: u64,
    /// Epochs captured but not yet acked.
    pub backlog_epochs: u64,
    /// Time since the last ack/commit, milliseconds (`None`: none yet).
    pub ack_age_ms: Option<u64>,
    /// Time since the peer was last heard, per path.
    pub heartbeat_age: PathAges,
    /// The failure timeout this member applies to its peer (a backup's is the primary's unless
    /// `ft.receive` set its own); `None` outside a pair.
    pub failure_timeout_ms: Option<u64>,
    /// Failovers this VMM completed (backup went live as the new primary).
    pub failover_count: u64,
    /// The guest is paused (primary: `vm.pause`; backup: at the last committed checkpoint, so a
    /// failover now would bring it up paused).
    pub guest_paused: bool,
    /// Why the state last changed (or the last failed arbitration attempt).
    pub reason: String,
    /// When `reason` was set, milliseconds since the Unix epoch.
    pub reason_at_unix_ms: u64,
    /// Time spent in the current state, milliseconds.
    pub state_age_ms: u64,
    /// The latest arbiter error while retrying, cleared on the next arbiter answer.
    pub arbiter_error: Option<String>,
    /// The copy of replicated disks in this pair's (latest) initial sync.
    pub disk_sync: crate::disk::DiskSync,
    /// The replica scrub (primary): what it compared, the differences it found and healed,
    /// and the last `ft.verify` pass.
    pub scrub: crate::scrub::ScrubStatus,
}

struct Inner {
    role: Role,
    state: FtState,
    generation: u64,
    peer: Option<String>,
    authenticated: bool,
    last_committed_epoch: Option<u64>,
    last_ack: Option<Instant>,
    checkpoint_count: u64,
    pauses_us: Ring,
    pause_max_us: u64,
    steps: StepRings,
    commit: CommitRings,
    flow: FlowStatus,
    initial_sync: Option<crate::migration::SendReport>,
    bytes: Ring,
    bytes_last: u64,
    backlog_bytes: u64,
    backlog_epochs: u64,
    failover_count: u64,
    guest_paused: bool,
    reason: String,
    reason_at_unix_ms: u64,
    state_since: Instant,
    arbiter_error: Option<String>,
    detector: Option<FailureDetector>,
    /// Kept across enable/disable: they count over the VMM's life.
    counters: FtCounters,
    /// The running second-path heartbeats' live counts, added to `counters` when read.
    udp_source: Option<UdpCounts>,
    /// The disk copy's figures; one handle for the VMM's life (its lifetime count is a metric).
    disk: crate::disk::DiskProgress,
    scrub: crate::scrub::ScrubStatus,
}

/// Reads the running second path's heartbeat counts (sent, received).
pub type UdpCounts = Box<dyn Fn() -> HeartbeatCounts + Send>;

impl Inner {
    fn standalone(reason: &str) -> Self {
        Inner {
            role: Role::Standalone,
            state: FtState::Unprotected,
            generation: 0,
            peer: None,
            authenticated: false,
            last_committed_epoch: None,
            last_ack: None,
            checkpoint_count: 0,
            pauses_us: Ring::new(),
            pause_max_us: 0,
            steps: StepRings::new(),
            commit: CommitRings::new(),
            flow: FlowStatus::default(),
            initial_sync: None,
            bytes: Ring::new(),
            bytes_last: 0,
            backlog_bytes: 0,
            backlog_epochs: 0,
            failover_count: 0,
            guest_paused: false,
            reason: reason.to_owned(),
            reason_at_unix_ms: unix_ms(),
            state_since: Instant::now(),
            arbiter_error: None,
            detector: None,
            counters: FtCounters::default(),
            udp_source: None,
            disk: crate::disk::DiskProgress::new(),
            scrub: crate::scrub::ScrubStatus::default(),
        }
    }

    fn set_state(&mut self, to: FtState, reason: &str) {
        self.state = to;
        self.state_since = Instant::now();
        self.reason = reason.to_owned();
        self.reason_at_unix_ms = unix_ms();
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it, which only a broken host has).
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn age_ms(since: Instant) -> u64 {
    since.elapsed().as_millis() as u64
}

/// Shared, cheaply cloned handle: the engine updates, the API snapshots.
#[derive(Clone)]
pub struct StatusHandle(Arc<Mutex<Inner>>);

impl Default for StatusHandle {
    fn default() -> Self {
        Self::new()
    }
}

impl StatusHandle {
    /// A standalone VMM (FT not enabled).
    pub fn new() -> Self {
        StatusHandle(Arc::new(Mutex::new(Inner::standalone("ft not enabled"))))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere must not take the status endpoint down with it.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// ft.enable (primary) / ft.receive (backup): enters `Syncing` in `generation` with `peer`.
    /// Only from standalone; a halted member must be disabled first.
    pub fn enable(
        &self,
        role: Role,
        generation: u64,
        peer: Option<String>,
        reason: &str,
    ) -> Result<(), StatusError> {
        let mut g = self.lock();
        if role == Role::Standalone || g.role != Role::Standalone {
            return Err(StatusError::BadEnable {
                requested: role,
                role: g.role,
                state: g.state,
            });
        }
        let detector = g.detector.take();
        let counters = std::mem::take(&mut g.counters);
        let disk = g.disk.clone();
        *g = Inner::standalone(reason);
        g.disk = disk;
        g.disk.reset();
        g.role = role;
        g.generation = generation;
        g.peer = peer;
        g.detector = detector;
        g.counters = counters;
        g.set_state(FtState::Syncing, reason);
        Ok(())
    }

    /// ft.enable on a primary running unprotected (after a failover, a lost backup or a guest
    /// reboot): `Unprotected -> Syncing` with the new `peer`, in `generation` or the current
    /// one if higher; the checkpoint figures restart, the failover count stays.
    pub fn reprotect(
        &self,
        generation: u64,
        peer: Option<String>,
        reason: &str,
    ) -> Result<(), StatusError> {
        let mut g = self.lock();
        if g.role != Role::Primary || !transition_allowed(g.role, g.state, FtState::Syncing) {
            return Err(StatusError::BadEnable {
                requested: Role::Primary,
                role: g.role,
                state: g.state,
            });
        }
        let mut fresh = Inner::standalone(reason);
        fresh.role = Role::Primary;
        fresh.generation = g.generation.max(generation);
        fresh.peer = peer;
        fresh.failover_count = g.failover_count;
        fresh.guest_paused = g.guest_paused;
        fresh.detector = g.detector.take();
        fresh.disk = g.disk.clone();
        fresh.disk.reset();
        *g = fresh;
        g.set_state(FtState::Syncing, reason);
        Ok(())
    }

    /// Records whether the guest is paused (see [`FtStatus::guest_paused`]).
    pub fn set_guest_paused(&self, paused: bool) {
        self.lock().guest_paused = paused;
    }

    /// ft.disable: back to standalone from any state (the only way out of `Halted`); figures reset.
    pub fn disable(&self, reason: &str) {
        let mut g = self.lock();
        let counters = std::mem::take(&mut g.counters);
        let udp_source = g.udp_source.take();
        let disk = g.disk.clone();
        *g = Inner::standalone(reason);
        g.counters = counters;
        g.udp_source = udp_source;
        g.disk = disk;
        g.disk.reset();
    }

    /// Changes state if the table allows it; `FailingOver -> Unprotected` also makes this member
    /// the primary and counts a failover.
    pub fn transition(&self, to: FtState, reason: &str) -> Result<(), StatusError> {
        let mut g = self.lock();
        if !transition_allowed(g.role, g.state, to) {
            return Err(StatusError::Refused {
                role: g.role,
                from: g.state,
                to,
            });
        }
        if g.state == FtState::FailingOver && to == FtState::Unprotected {
            g.role = Role::Primary;
            g.failover_count += 1;
            g.counters.failovers += 1;
        }
        g.set_state(to, reason);
        Ok(())
    }

    /// Moves to a higher arbitration generation (after winning it).
    pub fn set_generation(&self, generation: u64) -> Result<(), StatusError> {
        let mut g = self.lock();
        if generation <= g.generation {
            return Err(StatusError::GenerationNotIncreasing {
                current: g.generation,
                requested: generation,
            });
        }
        g.generation = generation;
        Ok(())
    }

    /// Records whether the pair authenticates its traffic with a key.
    pub fn set_authenticated(&self, on: bool) {
        self.lock().authenticated = on;
    }

    /// Updates `reason` without a change of state (a refused connection while waiting, a
    /// decision deferred to the peer).
    pub fn note(&self, reason: &str) {
        let mut g = self.lock();
        g.reason = reason.to_owned();
        g.reason_at_unix_ms = unix_ms();
    }

    /// Sets or clears the peer's address.
    pub fn set_peer(&self, peer: Option<String>) {
        self.lock().peer = peer;
    }

    /// Engine: one checkpoint taken (primary) or applied (backup), with its pause and size.
    pub fn record_checkpoint(&self, pause: Duration, bytes: u64) {
        let us = pause.as_micros().min(u128::from(u64::MAX)) as u64;
        let mut g = self.lock();
        g.checkpoint_count += 1;
        g.pauses_us.push(us);
        g.pause_max_us = g.pause_max_us.max(us);
        g.bytes.push(bytes);
        g.bytes_last = bytes;
        g.counters.pause_us.observe(us);
        g.counters.replicated_bytes = g.counters.replicated_bytes.saturating_add(bytes);
    }

    /// Primary: a committed checkpoint's pause, step by step.
    pub fn record_pause_steps(&self, steps: &crate::checkpoint::PauseSteps) {
        let mut g = self.lock();
        g.steps.push(steps);
        let sum = &mut g.counters.pause_steps;
        sum.stop += steps.stop;
        sum.dirty_log += steps.dirty_log;
        sum.backlog_wait += steps.backlog_wait;
        sum.copy += steps.copy;
        sum.vcpu_state += steps.vcpu_state;
        sum.devices += steps.devices;
        sum.gates += steps.gates;
        sum.resume += steps.resume;
    }

    /// Primary: a committed checkpoint's time from resume to its Commit written (`send`) and
    /// from there to its ack (`ack`).
    pub fn record_commit_latency(&self, send: Duration, ack: Duration) {
        self.lock().commit.push(send, ack);
    }

    /// Primary: the initial sync completed with `report`.
    pub fn set_initial_sync(&self, report: &crate::migration::SendReport) {
        self.lock().initial_sync = Some(report.clone());
    }

    /// Primary: flow control's settings now (the peak backlog is kept here).
    pub fn set_flow(&self, f: &crate::checkpoint::FlowReport) {
        let mut g = self.lock();
        let peak = g.flow.peak_backlog_bytes;
        g.flow = FlowStatus {
            throttle_permille: f.throttle_permille,
            limited_by: f.limited_by,
            epoch_us: f.epoch.as_micros().min(u128::from(u64::MAX)) as u64,
            target_pause_us: f.target_pause.as_micros().min(u128::from(u64::MAX)) as u64,
            max_backlog_bytes: f.max_backlog_bytes,
            peak_backlog_bytes: peak,
            hot_pages: f.hot_pages,
        };
    }

    /// Primary: how a committed checkpoint's pages went out (whole, delta, zero).
    pub fn record_page_encodings(&self, e: &crate::checkpoint::PageEncodings) {
        let mut g = self.lock();
        let p = &mut g.counters.pages;
        p.whole = p.whole.saturating_add(e.whole);
        p.delta = p.delta.saturating_add(e.delta);
        p.zero = p.zero.saturating_add(e.zero);
    }

    /// Engine: epoch acked by the backup (primary) or committed (backup).
    pub fn record_commit(&self, epoch: u64) {
        let mut g = self.lock();
        g.last_committed_epoch = Some(epoch);
        g.last_ack = Some(Instant::now());
        // Epoch 0 is the initial sync, not a checkpoint.
        if epoch > 0 {
            g.counters.checkpoints += 1;
        }
    }

    /// Engine: an ack received (primary) or sent (backup).
    pub fn record_ack(&self) {
        self.lock().counters.acks += 1;
    }

    /// A heartbeat sent to the peer on `path`.
    pub fn record_heartbeat_sent(&self, path: Path) {
        self.lock().counters.heartbeats_mut(path).sent += 1;
    }

    /// A heartbeat received from the peer on `path`.
    pub fn record_heartbeat_received(&self, path: Path) {
        self.lock().counters.heartbeats_mut(path).received += 1;
    }

    /// Primary: the replica scrub compared regions; `reason`, when given, becomes the status's
    /// reason (a difference found, a region that could not be healed).
    pub fn record_scrub_checked(&self, c: &crate::scrub::ScrubChecked, reason: Option<&str>) {
        let mut g = self.lock();
        g.counters.scrub.add(c);
        if let Some(r) = reason {
            g.reason = r.to_owned();
            g.reason_at_unix_ms = unix_ms();
        }
    }

    /// Primary: the replica scrub's figures for `ft.status`.
    pub fn set_scrub(&self, s: &crate::scrub::ScrubStatus) {
        self.lock().scrub = s.clone();
    }

    /// The counters since the VMM started (for metrics).
    pub fn counters(&self) -> FtCounters {
        let g = self.lock();
        let mut c = g.counters.clone();
        c.disk_sync_bytes = g.disk.sent_ever();
        if let Some(live) = g.udp_source.as_ref().map(|f| f()) {
            let udp = c.heartbeats_mut(Path::Udp);
            udp.sent += live.sent;
            udp.received += live.received;
        }
        c
    }

    /// The second path's heartbeats started: their counts are read live from `source`.
    pub fn attach_udp_counts(&self, source: UdpCounts) {
        let mut g = self.lock();
        Self::fold_udp(&mut g);
        g.udp_source = Some(source);
    }

    /// The second path's heartbeats stopped: their final counts stay in the totals.
    pub fn detach_udp_counts(&self) {
        Self::fold_udp(&mut self.lock());
    }

    fn fold_udp(g: &mut Inner) {
        if let Some(live) = g.udp_source.take().map(|f| f()) {
            let udp = g.counters.heartbeats_mut(Path::Udp);
            udp.sent += live.sent;
            udp.received += live.received;
        }
    }

    /// Engine: what is captured but not acked yet.
    pub fn set_backlog(&self, bytes: u64, epochs: u64) {
        let mut g = self.lock();
        g.backlog_bytes = bytes;
        g.backlog_epochs = epochs;
        g.flow.peak_backlog_bytes = g.flow.peak_backlog_bytes.max(bytes);
    }

    /// Where the initial sync shows its disk copy (`disk_sync` in snapshots, and the metrics).
    pub fn disk_progress(&self) -> crate::disk::DiskProgress {
        self.lock().disk.clone()
    }

    /// Uses `detector` for the heartbeat ages in snapshots.
    pub fn attach_detector(&self, detector: FailureDetector) {
        self.lock().detector = Some(detector);
    }

    /// Records (or clears) an arbiter error met while retrying; the state is unchanged.
    pub fn set_arbiter_error(&self, error: Option<String>) {
        self.lock().arbiter_error = error;
    }

    /// Current role.
    pub fn role(&self) -> Role {
        self.lock().role
    }

    /// Current state.
    pub fn state(&self) -> FtState {
        self.lock().state
    }

    /// Current generation.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Everything, as of now.
    pub fn snapshot(&self) -> FtStatus {
        let g = self.lock();
        let heartbeat_age = match &g.detector {
            Some(d) => PathAges {
                channel_ms: d.last_heard(Path::Channel).map(age_ms),
                udp_ms: d.last_heard(Path::Udp).map(age_ms),
            },
            None => PathAges::default(),
        };
        FtStatus {
            role: g.role,
            state: g.state,
            generation: g.generation,
            peer: g.peer.clone(),
            authenticated: g.authenticated,
            last_committed_epoch: g.last_committed_epoch,
            checkpoint_count: g.checkpoint_count,
            pause: PauseStats {
                p50_us: g.pauses_us.percentile(50),
                p99_us: g.pauses_us.percentile(99),
                max_us: g.pause_max_us,
            },
            pause_steps: g.steps.stats(),
            commit_latency: g.commit.stats(),
            flow: g.flow,
            initial_sync: g.initial_sync.clone(),
            bytes_last_checkpoint: g.bytes_last,
            bytes_per_checkpoint: g.bytes.mean(),
            backlog_bytes: g.backlog_bytes,
            backlog_epochs: g.backlog_epochs,
            ack_age_ms: g.last_ack.map(age_ms),
            heartbeat_age,
            failure_timeout_ms: g
                .detector
                .as_ref()
                .map(|d| d.timeout().as_millis().min(u128::from(u64::MAX)) as u64),
            failover_count: g.failover_count,
            guest_paused: g.guest_paused,
            reason: g.reason.clone(),
            reason_at_unix_ms: g.reason_at_unix_ms,
            state_age_ms: age_ms(g.state_since),
            arbiter_error: g.arbiter_error.clone(),
            disk_sync: g.disk.snapshot(),
            scrub: g.scrub.clone(),
        }
    }
}
