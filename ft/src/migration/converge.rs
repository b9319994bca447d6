//! Auto-converge (QEMU's name for it): a pre-copy whose dirty set does not shrink slows the
//! guest, by stopping its vCPUs a growing share of every 20 ms while the rounds go on, so that
//! the set left for the final pause shrinks instead of the pause growing with the guest's
//! appetite. The devices keep running; the guest's pause at the end is what shrinks.

use crate::vm::MigratableVm;
use std::time::{Duration, Instant};

/// The throttle's cycle: the vCPUs run the first part of it, then stop for the rest.
const SLICE: Duration = Duration::from_millis(20);
/// First throttle, and each step up, as a share of the vCPUs' time.
const FIRST: f64 = 0.2;
const STEP: f64 = 0.15;
/// Most throttle: the guest keeps at least this much less than all of its time.
const MAX: f64 = 0.95;
/// A round whose dirty set is at least this share of the last one's did not converge.
const SHRINK: f64 = 0.75;

/// The throttle's state over a pre-copy.
#[derive(Debug)]
pub(crate) struct AutoConverge {
    enabled: bool,
    /// Share of each slice the vCPUs stop.
    share: f64,
    /// The VM can stop its vCPUs alone.
    supported: bool,
    stopped: bool,
    slice_start: Instant,
    last_dirty: Option<u64>,
}

impl AutoConverge {
    pub(crate) fn new(enabled: bool) -> AutoConverge {
        AutoConverge {
            enabled,
            share: 0.0,
            supported: true,
            stopped: false,
            slice_start: Instant::now(),
            last_dirty: None,
        }
    }

    /// The throttle now, per mille.
    pub(crate) fn permille(&self) -> u16 {
        (self.share * 1000.0).round() as u16
    }

    /// A round ends with `dirty` pages left, and pre-copy goes on: throttle harder if the set
    /// did not shrink enough.
    pub(crate) fn round(&mut self, dirty: u64) {
        if let Some(last) = self.last_dirty {
            if self.enabled && dirty as f64 >= last as f64 * SHRINK {
                self.share = if self.share == 0.0 {
                    FIRST
                } else {
                    (self.share + STEP).min(MAX)
                };
            }
        }
        self.last_dirty = Some(dirty);
    }

    /// Called between batches while the guest runs: stops or restarts the vCPUs as the
    /// current slice asks.
    pub(crate) fn tick<V: MigratableVm + ?Sized>(
        &mut self,
        vm: &mut V,
    ) -> Result<(), crate::vm::VmOpError> {
        if self.share == 0.0 || !self.supported {
            return Ok(());
        }
        if self.slice_start.elapsed() >= SLICE {
            self.slice_start = Instant::now();
        }
        let stop = self.slice_start.elapsed() >= SLICE.mul_f64(1.0 - self.share);
        self.set(vm, !stop)
    }

    /// Lets the vCPUs run again (pre-copy is over, or failed).
    pub(crate) fn release<V: MigratableVm + ?Sized>(
        &mut self,
        vm: &mut V,
    ) -> Result<(), crate::vm::VmOpError> {
        self.set(vm, true)
    }

    /// The VM was paused whole (its `resume` restarts every vCPU): the throttle holds none.
    pub(crate) fn forget(&mut self) {
        self.stopped = false;
    }

    fn set<V: MigratableVm + ?Sized>(
        &mut self,
        vm: &mut V,
        running: bool,
    ) -> Result<(), crate::vm::VmOpError> {
        if running != self.stopped {
            return Ok(());
        }
        self.supported = vm.set_vcpus_running(running)?;
        if self.supported {
            self.stopped = !running;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttles_only_a_set_that_does_not_shrink() {
        let mut a = AutoConverge::new(true);
        a.round(1000);
        a.round(500);
        assert_eq!(a.permille(), 0, "halved: converging");
        a.round(480);
        assert_eq!(a.permille(), 200);
        a.round(470);
        assert_eq!(a.permille(), 350);
        for _ in 0..10 {
            a.round(470);
        }
        assert_eq!(a.permille(), 950);
        let mut off = AutoConverge::new(false);
        off.round(1000);
        off.round(1000);
        assert_eq!(off.permille(), 0);
    }
}
