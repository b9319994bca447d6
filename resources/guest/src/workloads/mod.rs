//! The workloads selected by `workload=` on the command line.  All run in
//! ring 3 on every CPU; the BSP prepares shared state before releasing the APs.

pub mod compute;
pub mod dirty;
pub mod idle;
pub mod power;

use crate::cmdline::Workload;
use crate::gdt::Shared;

/// The chosen workload; written by the BSP before it sets `GO`.
static CURRENT: Shared<Workload> = Shared::new(Workload::Idle);

/// Record the workload and set up what it shares between CPUs (BSP only,
/// before the APs are released).
pub fn prepare(workload: Workload, cpus: usize) {
    // SAFETY: the APs read CURRENT only after GO, which is set after this.
    unsafe { *CURRENT.get() = workload };
    if let Workload::Dirty { mib, .. } = workload {
        dirty::prepare(mib, cpus);
    }
}

pub fn current() -> Workload {
    // SAFETY: written once by the BSP before GO; read-only afterwards.
    unsafe { *CURRENT.get() }
}

/// Run this CPU's share of `workload`; never returns.
pub fn run(workload: Workload, cpu: usize, cpus: usize) -> ! {
    match workload {
        Workload::Idle => idle::run(),
        Workload::PowerOff if cpu == 0 => power::power_off(),
        Workload::Reboot if cpu == 0 => power::reboot(),
        Workload::PowerOff | Workload::Reboot => idle::run(),
        Workload::Compute => compute::run(cpu),
        Workload::Dirty { pages_per_s, .. } => dirty::run(cpu, cpus, pages_per_s),
    }
}
