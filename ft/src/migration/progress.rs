//! A live view of a migration that an API thread can poll while the engine runs.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Which end of the stream this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Sends the VM.
    Source,
    /// Receives the VM.
    Destination,
}

/// Where a migration is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationPhase {
    /// Connecting and exchanging Hello.
    Setup,
    /// Copying memory while the guest runs.
    Precopy,
    /// Guest paused: last dirty pages and state.
    StopAndCopy,
    /// State sent or restored; waiting for or sending the final Ack.
    Completing,
    /// The final Ack was lost: the source asks the arbiter who runs the VM.
    Settling,
    /// The final state left and nobody can say whether the destination runs the VM: the
    /// source stays paused until an operator decides (`error` says why).
    OutcomeUnknown,
    /// Done: the destination runs the guest.
    Completed,
    /// Gave up; `error` says why.
    Failed,
}

/// A snapshot of a migration's progress.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MigrationProgress {
    /// Source or destination.
    pub role: Role,
    /// Current phase.
    pub phase: MigrationPhase,
    /// Pre-copy round: 0 is the full pass, then one per dirty-page pass.
    pub round: u32,
    /// Stream bytes sent (source) or received (destination) so far.
    pub bytes: u64,
    /// Pages transferred so far, zero pages included.
    pub pages: u64,
    /// Pages transferred in the current round.
    pub pages_this_round: u64,
    /// Size of the last dirty set taken (source).
    pub dirty_pages: u64,
    /// Guest dirtying rate over the last round (source), pages per second.
    pub dirty_rate_pages_per_s: u64,
    /// Measured stream bandwidth (source), bytes per second.
    pub bandwidth_bytes_per_s: u64,
    /// Downtime if the guest were paused now (source), milliseconds.
    pub estimated_downtime_ms: u64,
    /// Time since the migration started, milliseconds.
    pub elapsed_ms: u64,
    /// Guest downtime measured once it is over, milliseconds.
    pub downtime_ms: Option<u64>,
    /// Why it failed, with its causes.
    pub error: Option<String>,
    /// Whether the stream is encrypted and authenticated with a key (known after the handshake).
    pub authenticated: Option<bool>,
    /// Destination: why the latest connection was refused at the handshake (the wait goes on).
    pub refused: Option<String>,
}

struct Inner {
    p: MigrationProgress,
    started: Instant,
    ended: Option<Instant>,
}

/// Shared, cheaply cloned handle on a migration's progress.
#[derive(Clone)]
pub struct ProgressHandle(Arc<Mutex<Inner>>);

impl ProgressHandle {
    /// Progress of a migration that starts now.
    pub fn new(role: Role) -> Self {
        ProgressHandle(Arc::new(Mutex::new(Inner {
            p: MigrationProgress {
                role,
                phase: MigrationPhase::Setup,
                round: 0,
                bytes: 0,
                pages: 0,
                pages_this_round: 0,
                dirty_pages: 0,
                dirty_rate_pages_per_s: 0,
                bandwidth_bytes_per_s: 0,
                estimated_downtime_ms: 0,
                elapsed_ms: 0,
                downtime_ms: None,
                error: None,
                authenticated: None,
                refused: None,
            },
            started: Instant::now(),
            ended: None,
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere must not take the status endpoint down with it.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current progress.
    pub fn snapshot(&self) -> MigrationProgress {
        let g = self.lock();
        let mut p = g.p.clone();
        p.elapsed_ms = g
            .ended
            .unwrap_or_else(Instant::now)
            .duration_since(g.started)
            .as_millis() as u64;
        p
    }

    /// Records what the handshake established.
    pub fn set_authenticated(&self, authenticated: bool) {
        self.lock().p.authenticated = Some(authenticated);
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut MigrationProgress)) {
        f(&mut self.lock().p)
    }

    pub(crate) fn complete(&self, downtime: Option<Duration>) {
        let mut g = self.lock();
        g.p.phase = MigrationPhase::Completed;
        g.p.downtime_ms = downtime.map(|d| d.as_millis() as u64);
        g.ended = Some(Instant::now());
    }

    pub(crate) fn unknown(&self, error: String) {
        let mut g = self.lock();
        g.p.phase = MigrationPhase::OutcomeUnknown;
        g.p.error = Some(error);
        g.ended = Some(Instant::now());
    }

    pub(crate) fn fail(&self, error: String) {
        let mut g = self.lock();
        g.p.phase = MigrationPhase::Failed;
        g.p.error = Some(error);
        g.ended = Some(Instant::now());
    }
}
