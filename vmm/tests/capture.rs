//! An FT checkpoint's capture (`Vm::pause_for_capture`, where each vCPU reads its own registers
//! as it parks) must hold exactly what a capture of the same stopped VM reads afterwards, on a
//! real VM whose vCPU is nearly always mid-port-I/O when it is stopped (the `loopback` guest):
//! an early read taken before the access completed, or from a vCPU that ran on, differs.

mod common;

use std::time::Duration;

#[test]
fn a_capture_read_as_the_vcpus_park_equals_one_read_afterwards() {
    tandem_require::require!(kvm);
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        eprintln!(
            "NOTE: one host CPU: the VM reads no state as it parks; only the plain path runs"
        );
    }
    let vm = common::running_builtin("workload=loopback");
    std::thread::sleep(Duration::from_millis(300));
    let mut rips = std::collections::BTreeSet::new();
    for round in 0..50 {
        vm.pause_for_capture().unwrap();
        let (early, _) = vm.capture().unwrap();
        let (after, _) = vm.capture().unwrap();
        for (e, a) in early.vcpus.iter().zip(&after.vcpus) {
            // The TSC MSR runs on while paused; everything else the vCPU owns must not move.
            assert_eq!(e.regs, a.regs, "round {round}: registers");
            assert_eq!(e.sregs, a.sregs, "round {round}: segment registers");
            assert_eq!(e.xsave, a.xsave, "round {round}: XSAVE");
            assert_eq!(e.debugregs, a.debugregs, "round {round}: debug registers");
            assert_eq!(e.mp_state, a.mp_state, "round {round}: MP state");
            assert_eq!(e.events, a.events, "round {round}: events");
            rips.insert(e.regs.rip);
        }
        vm.resume();
        std::thread::sleep(Duration::from_millis(3));
    }
    // The guest ran between the rounds: the captures were of different moments.
    assert!(rips.len() > 1, "the guest never moved: {rips:?}");
}
