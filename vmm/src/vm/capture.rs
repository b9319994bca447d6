//! Reading the parked vCPUs' state on their own threads, in parallel: each vCPU thread runs the
//! reads on its own fd as a posted job. For an FT checkpoint the jobs are posted with the pause
//! ([`super::Vm::pause_for_capture`]): each vCPU reads what only it can change (its
//! [`OwnState`]) the moment it parks, already awake and while the others are still stopping,
//! and the capture then only adds the LAPIC and pending events.

use super::bell::ParkBell;
use super::vcpu::VcpuHandle;
use super::VmError;
use crate::state::vcpu::{OwnState, VcpuState, VcpuStateError, VcpuStateInfo};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Reads posted to the vCPU threads and not collected yet; `T` is what each one reports.
pub(super) struct Started<T> {
    replies: Receiver<Result<T, VcpuStateError>>,
    /// vCPUs asked.
    asked: Vec<u8>,
}

/// Posts `read` to each of `vcpus`, which run it once parked (now, if they are: `bell` wakes
/// them all at once).
pub(super) fn start<'a, T: Send + 'static>(
    vcpus: impl IntoIterator<Item = &'a VcpuHandle>,
    bell: &ParkBell,
    info: &Arc<VcpuStateInfo>,
    read: fn(&kvm_ioctls::VcpuFd, u8, &VcpuStateInfo) -> Result<T, VcpuStateError>,
) -> Started<T> {
    let (tx, replies) = channel();
    let mut asked = Vec::new();
    for v in vcpus {
        let (tx, id, info) = (tx.clone(), v.id, info.clone());
        v.post_unrung(Box::new(move |fd| {
            // The collector may have given up (timeout, resumed VM): nobody to tell.
            let _ = tx.send(read(fd, id, &info));
        }));
        asked.push(v.id);
    }
    bell.ring();
    Started { replies, asked }
}

impl<T> Started<T> {
    /// Waits for every vCPU asked until `deadline`, in the order they answer; names the first
    /// vCPU missing when one does not answer in time.
    pub(super) fn collect(
        self,
        deadline: Instant,
        id_of: impl Fn(&T) -> u8,
    ) -> Result<Vec<T>, VmError> {
        let mut out: Vec<T> = Vec::with_capacity(self.asked.len());
        for _ in 0..self.asked.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.replies.recv_timeout(left) {
                Ok(r) => out.push(r?),
                Err(_) => {
                    let missing = self
                        .asked
                        .iter()
                        .copied()
                        .find(|id| !out.iter().any(|s| id_of(s) == *id))
                        .unwrap_or(0);
                    return Err(VmError::CaptureTimeout(missing, super::VCPU_STOP_TIMEOUT));
                }
            }
        }
        Ok(out)
    }
}

/// The [`OwnState`] reads posted with a pause, for the capture that follows it; forgotten
/// when the vCPUs run again, since what they read would be stale.
pub(super) struct Early {
    /// Whether a pause for a capture posts them at all (see [`Early::new`]).
    enabled: bool,
    started: Mutex<Option<Started<OwnState>>>,
}

impl Early {
    /// For a VM of `vcpus` vCPUs. Reading as they park pays where each vCPU thread has a host
    /// CPU to itself beside the capturing thread; with more vCPUs than that, the first to park
    /// take the CPUs the others need to stop at all, and the pause grows instead (measured
    /// with 4 vCPUs on 2 CPUs: the stop step grew by what the capture saved).
    pub(super) fn new(vcpus: usize) -> Early {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Early {
            enabled: vcpus < cpus,
            started: Mutex::new(None),
        }
    }

    /// Whether a pause for a capture should post the reads.
    pub(super) fn enabled(&self) -> bool {
        self.enabled
    }

    /// Keeps `s` for [`Early::take`], replacing any not collected.
    pub(super) fn keep(&self, s: Started<OwnState>) {
        *self.lock() = Some(s);
    }

    /// What was posted with the pause, if anything.
    pub(super) fn take(&self) -> Option<Started<OwnState>> {
        self.lock().take()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Started<OwnState>>> {
        self.started.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The whole state of every vCPU from the [`OwnState`]s in `early`: each is completed on this
/// thread (LAPIC and events, a few ioctls), since waking every vCPU thread again would cost
/// more than the reads.
pub(super) fn finish(
    early: Started<OwnState>,
    vcpus: &[VcpuHandle],
    info: &VcpuStateInfo,
    deadline: Instant,
) -> Result<Vec<VcpuState>, VmError> {
    let mut own = early.collect(deadline, OwnState::id)?;
    let mut out = Vec::with_capacity(vcpus.len());
    for v in vcpus {
        let o = own
            .iter()
            .position(|o| o.id() == v.id)
            .map(|i| own.swap_remove(i))
            .ok_or(VmError::CaptureTimeout(v.id, super::VCPU_STOP_TIMEOUT))?;
        out.push(v.with_fd(|fd| crate::state::vcpu::finish_capture(fd, o, info))?);
    }
    Ok(out)
}
