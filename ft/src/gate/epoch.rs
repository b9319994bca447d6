//! The epoch clock that every output gate of one VM shares (DESIGN.md, "The epoch").
//!
//! Hot-path reads (the current epoch, the protection mode, how far outputs may be released) are
//! single atomic loads. Everything that moves the clock takes one mutex, recomputes the release
//! bound and wakes waiters through a condvar; that happens a few times per checkpoint, not per
//! output.

use super::lease::{FenceError, Lease};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// The first epoch a VM runs; 0 means "none" in `committed` and `release_bound`.
pub const FIRST_EPOCH: u64 = 1;

/// What the gates do with outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[repr(u8)]
pub enum Protection {
    /// No FT (standalone, or not yet protected): outputs pass through.
    Off = 0,
    /// Outputs of epoch N are held until N is committed (and, for the network, durable).
    Protected = 1,
    /// The primary won arbitration and runs alone: held outputs are released, nothing is held.
    Unprotected = 2,
    /// This VM lost arbitration: nothing is released and nothing is dropped, ever.
    Halted = 3,
}

impl Protection {
    fn from_u8(v: u8) -> Protection {
        match v {
            1 => Protection::Protected,
            2 => Protection::Unprotected,
            3 => Protection::Halted,
            _ => Protection::Off,
        }
    }

    /// Whether gates hold outputs in this mode (Protected, and Halted which never releases).
    pub fn holds(self) -> bool {
        matches!(self, Protection::Protected | Protection::Halted)
    }
}

/// A clock move the protocol forbids; the engine has a bug or a hostile peer acked nonsense.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClockError {
    /// An ack for an epoch that has not been captured yet.
    #[error("epoch {epoch} cannot commit: the last captured epoch is {captured}")]
    NotCaptured {
        /// The epoch acked.
        epoch: u64,
        /// The newest captured epoch (0 when none).
        captured: u64,
    },
    /// A halted VM's clock never moves again.
    #[error("the VM is halted; its clock is frozen")]
    Halted,
    /// A durability report from a source this clock never registered.
    #[error("no durability source {0}")]
    UnknownSource(usize),
}

/// One registered source of durability (a disk gate): the network may release epoch N only
/// when every source has reported N durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DurabilityId(usize);

/// The primary's epoch numbers and protection mode, shared by the engine and all gates.
#[derive(Debug)]
pub struct EpochClock {
    current: AtomicU64,
    committed: AtomicU64,
    release_bound: AtomicU64,
    mode: AtomicU8,
    /// The primary's right to write the shared disk while protected.
    lease: Lease,
    inner: Mutex<Inner>,
    changed: Condvar,
    /// Bumped each time a gate holds an output, so that the epoch thread wakes for it at once
    /// (output-triggered epochs) instead of finding it on its next poll.
    outputs: Mutex<u64>,
    output_held: Condvar,
    /// The newest epoch in which a gate held an output (0: none yet).
    last_output: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    /// Highest durable epoch per durability source.
    durable: Vec<u64>,
    /// Bumped on every change, so that waiters can tell a wakeup from a spurious one.
    generation: u64,
}

impl Default for EpochClock {
    fn default() -> Self {
        Self::new()
    }
}

impl EpochClock {
    /// A clock at epoch [`FIRST_EPOCH`], nothing committed, protection off.
    pub fn new() -> Self {
        EpochClock {
            current: AtomicU64::new(FIRST_EPOCH),
            committed: AtomicU64::new(0),
            release_bound: AtomicU64::new(0),
            mode: AtomicU8::new(Protection::Off as u8),
            lease: Lease::new(),
            inner: Mutex::default(),
            changed: Condvar::new(),
            outputs: Mutex::new(0),
            output_held: Condvar::new(),
            last_output: AtomicU64::new(0),
        }
    }

    /// A gate holds an output now: wakes [`EpochClock::wait_output`].
    pub fn note_output(&self) {
        // Gates hold outputs with the device running, captures happen with it stopped: the
        // epoch read here is the one the output was tagged with.
        self.last_output
            .fetch_max(self.current.load(Ordering::Acquire), Ordering::AcqRel);
        let mut n = self.outputs.lock().unwrap_or_else(|p| p.into_inner());
        *n = n.wrapping_add(1);
        self.output_held.notify_all();
    }

    /// Whether an output is held in the running epoch: only a checkpoint of this epoch can
    /// release it. Outputs of captured epochs are not counted: their checkpoints are in flight
    /// (or acked, the releaser about to move them), and another checkpoint would only delay the
    /// next output behind it.
    pub fn output_in_current_epoch(&self) -> bool {
        self.last_output.load(Ordering::Acquire) >= self.current()
    }

    /// A counter of held outputs, for [`EpochClock::wait_output`].
    pub fn outputs(&self) -> u64 {
        *self.outputs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until an output is held after `seen` (an [`EpochClock::outputs`] value) or
    /// `timeout` passes.
    pub fn wait_output(&self, seen: u64, timeout: Duration) {
        let n = self.outputs.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self
            .output_held
            .wait_timeout_while(n, timeout, |n| *n == seen)
            .unwrap_or_else(|p| p.into_inner());
    }

    /// The epoch that outputs produced now belong to.
    pub fn current(&self) -> u64 {
        self.current.load(Ordering::Acquire)
    }

    /// The newest epoch the backup has acked (0 when none).
    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }

    /// Outputs of epochs up to this one may leave: committed and durable on every disk.
    pub fn release_bound(&self) -> u64 {
        self.release_bound.load(Ordering::Acquire)
    }

    /// The protection mode.
    pub fn mode(&self) -> Protection {
        Protection::from_u8(self.mode.load(Ordering::Acquire))
    }

    /// The shared-disk lease (terms set by the pair, renewed on acks).
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// Whether the shared disk may be written now: always when not protected (no backup, or
    /// this member won the generation), never when halted, and while protected only under a
    /// valid lease. Checked before every write of committed epochs.
    pub fn shared_write_allowed(&self) -> Result<(), FenceError> {
        match self.mode() {
            Protection::Off | Protection::Unprotected => Ok(()),
            Protection::Halted => Err(FenceError::Halted),
            Protection::Protected => self.lease.check(),
        }
    }

    /// A counter that changes on every clock move; pass it to [`EpochClock::wait_change`].
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Ends the running epoch N (called with vCPUs and device workers stopped, so no output
    /// races it): outputs from now on belong to N+1. Returns N.
    pub fn capture(&self) -> Result<u64, ClockError> {
        // Held so that a capture never interleaves with a commit or a mode change.
        let inner = self.lock();
        if self.mode() == Protection::Halted {
            return Err(ClockError::Halted);
        }
        let n = self.current.fetch_add(1, Ordering::AcqRel);
        // No wakeup: a capture changes neither what is committed nor what is durable, so the
        // release bound stays, and a releaser woken now (in the guest's pause) has nothing to do.
        drop(inner);
        Ok(n)
    }

    /// The backup acked checkpoint `epoch`: outputs of epochs ≤ `epoch` may be released once
    /// durable. Acks that arrive late (for an older epoch) change nothing.
    pub fn commit(&self, epoch: u64) -> Result<(), ClockError> {
        let mut inner = self.lock();
        if self.mode() == Protection::Halted {
            return Err(ClockError::Halted);
        }
        let captured = self.current().saturating_sub(1);
        if epoch > captured {
            return Err(ClockError::NotCaptured { epoch, captured });
        }
        self.committed.fetch_max(epoch, Ordering::AcqRel);
        self.changed_locked(&mut inner);
        Ok(())
    }

    /// Starts holding outputs (FT enabled, or a new backup joined after unprotected running).
    pub fn protect(&self) -> Result<(), ClockError> {
        self.set_mode(Protection::Protected)
    }

    /// Releases everything held and stops holding: the primary won arbitration.
    pub fn unprotect(&self) -> Result<(), ClockError> {
        self.set_mode(Protection::Unprotected)
    }

    /// Freezes the gates for good: nothing more is released, nothing is dropped.
    pub fn halt(&self) {
        let mut inner = self.lock();
        self.mode.store(Protection::Halted as u8, Ordering::Release);
        self.changed_locked(&mut inner);
    }

    fn set_mode(&self, mode: Protection) -> Result<(), ClockError> {
        let mut inner = self.lock();
        if self.mode() == Protection::Halted {
            return Err(ClockError::Halted);
        }
        self.mode.store(mode as u8, Ordering::Release);
        self.changed_locked(&mut inner);
        Ok(())
    }

    /// Registers a disk gate; it starts durable up to the committed epoch (it holds nothing).
    pub fn register_durability(&self) -> DurabilityId {
        let mut inner = self.lock();
        inner.durable.push(self.committed());
        let id = DurabilityId(inner.durable.len() - 1);
        self.changed_locked(&mut inner);
        id
    }

    /// A disk gate made every write of epochs ≤ `epoch` durable.
    pub fn mark_durable(&self, id: DurabilityId, epoch: u64) -> Result<(), ClockError> {
        let mut inner = self.lock();
        let slot = inner
            .durable
            .get_mut(id.0)
            .ok_or(ClockError::UnknownSource(id.0))?;
        if epoch > *slot {
            *slot = epoch;
            self.changed_locked(&mut inner);
        }
        Ok(())
    }

    /// Waits until the clock moves past `seen` (a [`EpochClock::generation`]) or `timeout`
    /// passes; returns the generation now.
    pub fn wait_change(&self, seen: u64, timeout: Duration) -> u64 {
        let inner = self.lock();
        let (inner, _) = self
            .changed
            .wait_timeout_while(inner, timeout, |i| i.generation == seen)
            .unwrap_or_else(|p| p.into_inner());
        inner.generation
    }

    /// Wakes every waiter without moving the clock (used to stop a releaser thread).
    pub fn poke(&self) {
        let mut inner = self.lock();
        self.changed_locked(&mut inner);
    }

    fn changed_locked(&self, inner: &mut MutexGuard<'_, Inner>) {
        let committed = self.committed();
        let bound = inner.durable.iter().fold(committed, |b, &d| b.min(d));
        self.release_bound.store(bound, Ordering::Release);
        inner.generation = inner.generation.wrapping_add(1);
        self.changed.notify_all();
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The data under the lock stays consistent at every await point; a panicked holder
        // cannot leave it half-updated, so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn capture_moves_outputs_to_the_next_epoch() {
        let c = EpochClock::new();
        assert_eq!(c.current(), 1);
        assert_eq!(c.capture(), Ok(1));
        assert_eq!(c.current(), 2);
        assert_eq!(c.committed(), 0);
    }

    #[test]
    fn only_output_of_the_running_epoch_asks_for_a_checkpoint() {
        let c = EpochClock::new();
        c.protect().unwrap();
        assert!(!c.output_in_current_epoch(), "nothing held yet");
        c.note_output();
        assert!(c.output_in_current_epoch());
        // Captured: the output rides on epoch 1's checkpoint; epoch 2 has none of its own,
        // whether epoch 1 is in flight or acked and not yet released.
        c.capture().unwrap();
        assert!(!c.output_in_current_epoch());
        c.commit(1).unwrap();
        assert!(!c.output_in_current_epoch());
        c.note_output();
        assert!(c.output_in_current_epoch());
    }

    #[test]
    fn commit_of_an_uncaptured_epoch_is_refused() {
        let c = EpochClock::new();
        assert_eq!(
            c.commit(1),
            Err(ClockError::NotCaptured {
                epoch: 1,
                captured: 0
            })
        );
        c.capture().unwrap();
        c.commit(1).unwrap();
        // A late ack for an older epoch does not move the clock back.
        c.capture().unwrap();
        c.commit(2).unwrap();
        c.commit(1).unwrap();
        assert_eq!(c.committed(), 2);
        assert_eq!(c.release_bound(), 2);
    }

    #[test]
    fn release_bound_waits_for_every_disk() {
        let c = EpochClock::new();
        let a = c.register_durability();
        let b = c.register_durability();
        c.capture().unwrap();
        c.capture().unwrap();
        c.commit(2).unwrap();
        assert_eq!(c.release_bound(), 0);
        c.mark_durable(a, 2).unwrap();
        assert_eq!(c.release_bound(), 0);
        c.mark_durable(b, 1).unwrap();
        assert_eq!(c.release_bound(), 1);
        c.mark_durable(b, 2).unwrap();
        assert_eq!(c.release_bound(), 2);
        assert_eq!(
            c.mark_durable(DurabilityId(9), 1),
            Err(ClockError::UnknownSource(9))
        );
    }

    #[test]
    fn halt_freezes_the_clock() {
        let c = EpochClock::new();
        c.protect().unwrap();
        c.capture().unwrap();
        c.halt();
        assert_eq!(c.mode(), Protection::Halted);
        assert_eq!(c.commit(1), Err(ClockError::Halted));
        assert_eq!(c.capture(), Err(ClockError::Halted));
        assert_eq!(c.unprotect(), Err(ClockError::Halted));
        assert_eq!(c.committed(), 0);
    }

    #[test]
    fn waiters_wake_on_commit() {
        let c = Arc::new(EpochClock::new());
        c.capture().unwrap();
        let seen = c.generation();
        let c2 = c.clone();
        let t = std::thread::spawn(move || c2.wait_change(seen, Duration::from_secs(10)));
        c.commit(1).unwrap();
        assert_ne!(t.join().unwrap(), seen);
    }
}
