//! State format version 1, kept so that snapshots written before version 2 still restore. It
//! differs only in the XSAVE area, which version 1 wrote as a sequence of u32s (version 2: its
//! bytes, see [`super::words`]).

use super::vcpu::VcpuState;
use super::{raw, vm::KvmVmState, DevicesState, VmSnapshot};
use kvm_bindings::{
    kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs,
};
use serde::Deserialize;

/// [`VmSnapshot`] as version 1 wrote it.
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
pub struct VmSnapshotV1 {
    memory_size: u64,
    vcpus: Vec<VcpuStateV1>,
    kvm: KvmVmState,
    devices: DevicesState,
}

/// [`VcpuState`] as version 1 wrote it: the same fields, in the same order.
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct VcpuStateV1 {
    id: u8,
    #[serde(with = "raw")]
    mp_state: kvm_mp_state,
    #[serde(with = "raw")]
    regs: kvm_regs,
    #[serde(with = "raw")]
    sregs: kvm_sregs,
    xsave: Vec<u32>,
    #[serde(with = "raw")]
    xcrs: kvm_xcrs,
    #[serde(with = "raw")]
    debugregs: kvm_debugregs,
    #[serde(with = "raw")]
    lapic: kvm_lapic_state,
    tsc_khz: Option<u32>,
    msrs: Vec<(u32, u64)>,
    #[serde(with = "raw")]
    events: kvm_vcpu_events,
}

impl From<VmSnapshotV1> for VmSnapshot {
    fn from(v: VmSnapshotV1) -> VmSnapshot {
        VmSnapshot {
            memory_size: v.memory_size,
            vcpus: v.vcpus.into_iter().map(VcpuState::from).collect(),
            kvm: v.kvm,
            devices: v.devices,
        }
    }
}

impl From<VcpuStateV1> for VcpuState {
    fn from(v: VcpuStateV1) -> VcpuState {
        VcpuState {
            id: v.id,
            mp_state: v.mp_state,
            regs: v.regs,
            sregs: v.sregs,
            xsave: v.xsave,
            xcrs: v.xcrs,
            debugregs: v.debugregs,
            lapic: v.lapic,
            tsc_khz: v.tsc_khz,
            msrs: v.msrs,
            events: v.events,
        }
    }
}

/// A version-1 snapshot of `s`, for the tests that read one.
#[cfg(test)]
pub fn v1_of(s: &VmSnapshot) -> VmSnapshotV1 {
    VmSnapshotV1 {
        memory_size: s.memory_size,
        vcpus: s
            .vcpus
            .iter()
            .map(|v| VcpuStateV1 {
                id: v.id,
                mp_state: v.mp_state,
                regs: v.regs,
                sregs: v.sregs,
                xsave: v.xsave.clone(),
                xcrs: v.xcrs,
                debugregs: v.debugregs,
                lapic: v.lapic,
                tsc_khz: v.tsc_khz,
                msrs: v.msrs.clone(),
                events: v.events,
            })
            .collect(),
        kvm: s.kvm.clone(),
        devices: s.devices.clone(),
    }
}
