//! The workloads selected by `workload=` on the command line.  All run in
//! ring 3 on every CPU; the BSP prepares shared state before releasing the APs.

pub mod compute;
pub mod counter;
pub mod dirty;
pub mod echo;
pub mod idle;
pub mod loopback;
pub mod power;
pub mod service;

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

/// Whether the workload prints `tandem-guest: ready` itself (the network
/// services do, once they listen); for the others `bsp_main` prints it.
pub fn says_ready(workload: Workload) -> bool {
    matches!(workload, Workload::Counter | Workload::Echo)
}

/// Run this CPU's share of `workload`; never returns.
pub fn run(workload: Workload, cpu: usize, cpus: usize) -> ! {
    match workload {
        Workload::Idle => idle::run(),
        Workload::PowerOff if cpu == 0 => power::power_off(),
        Workload::Reboot if cpu == 0 => power::reboot(),
        // The network stack runs on the BSP; the other CPUs idle.
        Workload::Counter if cpu == 0 => counter::run(),
        Workload::Echo if cpu == 0 => echo::run(),
        Workload::PowerOff | Workload::Reboot | Workload::Counter | Workload::Echo => idle::run(),
        Workload::Compute => compute::run(cpu),
        // One user of the console's loopback: bytes from several CPUs would mix.
        Workload::Loopback if cpu == 0 => loopback::run(),
        Workload::Loopback => idle::run(),
        Workload::Dirty { pages_per_s, .. } => dirty::run(cpu, cpus, pages_per_s),
    }
}
