//! Parking every vCPU of a VM, all or none: a pause that fails part-way (one vCPU did not stop
//! in time) must not leave the others parked, nor its own pause request pending, or the guest
//! freezes later while the VMM reports it Running and `vm.resume` is refused.

use super::vcpu::{VcpuError, VcpuHandle};
use std::time::Duration;

/// What parking needs of a vCPU.
pub trait Parkable {
    /// Asks the vCPU to park (kicking it out of the guest) without waiting.
    fn ask_park(&self);
    /// Waits until the vCPU asked has parked, at most `timeout`.
    fn wait_parked(&self, timeout: Duration) -> Result<(), VcpuError>;
    /// Lets it run again (also withdraws a pending park request).
    fn unpark(&self);
}

impl Parkable for VcpuHandle {
    fn ask_park(&self) {
        self.ask_pause()
    }
    fn wait_parked(&self, timeout: Duration) -> Result<(), VcpuError> {
        VcpuHandle::wait_parked(self, timeout)
    }
    fn unpark(&self) {
        self.resume()
    }
}

/// Parks every vCPU: all are asked (and kicked) first, then waited for, so that they stop in
/// parallel (every FT checkpoint pauses; one after another, the pause grew by a whole stop per
/// vCPU). If one does not park in time, every vCPU is let run again (the one that failed
/// included) and its error returned.
pub fn park_all<P: Parkable>(vcpus: &[P], timeout: Duration) -> Result<(), VcpuError> {
    for v in vcpus {
        v.ask_park();
    }
    // Each wait gets the whole timeout: they all started together, so a slow one costs once.
    for v in vcpus {
        if let Err(e) = v.wait_parked(timeout) {
            for v in vcpus {
                v.unpark();
            }
            return Err(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    thread_local! {
        /// A wait has begun on this test's thread: asking another vCPU now is a serial pause.
        static ASKED_ALL: Cell<bool> = const { Cell::new(false) };
    }

    /// A vCPU that parks unless told it is stuck.
    struct Fake {
        id: u8,
        stuck: bool,
        parked: Cell<bool>,
        pending: Cell<bool>,
    }

    impl Fake {
        fn new(id: u8, stuck: bool) -> Fake {
            Fake {
                id,
                stuck,
                parked: Cell::new(false),
                pending: Cell::new(false),
            }
        }
    }

    impl Parkable for Fake {
        fn ask_park(&self) {
            assert!(
                !ASKED_ALL.with(|w| w.get()),
                "vCPU {} asked after a wait began",
                self.id
            );
            self.pending.set(true);
        }
        fn wait_parked(&self, timeout: Duration) -> Result<(), VcpuError> {
            ASKED_ALL.with(|w| w.set(true));
            assert!(self.pending.get(), "vCPU {} waited for unasked", self.id);
            if self.stuck {
                return Err(VcpuError::Timeout(self.id, timeout));
            }
            self.parked.set(true);
            Ok(())
        }
        fn unpark(&self) {
            self.pending.set(false);
            self.parked.set(false);
        }
    }

    #[test]
    fn a_vcpu_that_does_not_park_leaves_every_vcpu_running_and_no_request_pending() {
        let vcpus = [Fake::new(0, false), Fake::new(1, true), Fake::new(2, false)];
        let e = park_all(&vcpus, Duration::from_millis(1)).unwrap_err();
        assert!(matches!(e, VcpuError::Timeout(1, _)), "{e}");
        for v in &vcpus {
            assert!(!v.parked.get(), "vCPU {} left parked", v.id);
            assert!(!v.pending.get(), "vCPU {} still asked to park", v.id);
        }
    }

    #[test]
    fn every_vcpu_parks_when_all_can_asked_all_before_any_is_waited_for() {
        let vcpus = [
            Fake::new(0, false),
            Fake::new(1, false),
            Fake::new(2, false),
        ];
        park_all(&vcpus, Duration::from_millis(1)).unwrap();
        assert!(vcpus.iter().all(|v| v.parked.get()));
    }
}
