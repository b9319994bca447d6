//! Per-vCPU CPUID: KVM's supported set, with the topology, APIC ids and hypervisor leaves fixed up.

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Kvm;

/// Leaf advertising TSC and LAPIC bus frequencies (the de-facto "generic timing" hypervisor leaf).
pub const TIMING_LEAF: u32 = 0x4000_0010;
/// KVM's default LAPIC bus frequency (1 ns per bus cycle), in kHz.
pub const LAPIC_BUS_KHZ: u32 = 1_000_000;

/// CPUID errors.
#[derive(Debug, thiserror::Error)]
pub enum CpuidError {
    /// `KVM_GET_SUPPORTED_CPUID` failed.
    #[error("cannot read KVM's supported CPUID")]
    Supported(#[source] kvm_ioctls::Error),
    /// The CPUID list is full, so this leaf cannot be added.
    #[error("cannot add CPUID leaf {0:#x}")]
    Full(u32),
}

/// KVM's supported CPUID, read once per VM and patched per vCPU by [`vcpu_cpuid`].
pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, CpuidError> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(CpuidError::Supported)
}

/// The CPUID of vCPU `id` in a VM of `count` vCPUs; `tsc_khz` feeds the timing leaf when known.
pub fn vcpu_cpuid(
    base: &CpuId,
    id: u8,
    count: u8,
    tsc_khz: Option<u32>,
) -> Result<CpuId, CpuidError> {
    let mut cpuid = base.clone();
    // Bits needed to number `count` logical CPUs in the x2APIC topology leaf.
    let shift = u32::BITS - u32::from(count.max(1) - 1).leading_zeros();
    let mut has_timing_leaf = false;
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                // Initial APIC id and logical processor count; we are a hypervisor guest.
                e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(id) << 24) | (u32::from(count) << 16);
                e.ecx |= 1 << 31;
                if count > 1 {
                    e.edx |= 1 << 28;
                }
            }
            0xb => {
                // One thread per core, `count` cores in one package.
                e.edx = u32::from(id);
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 0x100;
                    }
                    1 => {
                        e.eax = shift;
                        e.ebx = u32::from(count);
                        e.ecx = 0x201;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            0x4000_0000 if tsc_khz.is_some() => e.eax = e.eax.max(TIMING_LEAF),
            TIMING_LEAF => has_timing_leaf = true,
            _ => {}
        }
    }
    if let (Some(khz), false) = (tsc_khz, has_timing_leaf) {
        let leaf = kvm_bindings::kvm_cpuid_entry2 {
            function: TIMING_LEAF,
            eax: khz,
            ebx: LAPIC_BUS_KHZ,
            ..Default::default()
        };
        cpuid
            .push(leaf)
            .map_err(|_| CpuidError::Full(TIMING_LEAF))?;
    }
    Ok(cpuid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    #[test]
    fn apic_ids_topology_and_timing_leaf() {
        let base = CpuId::from_entries(&[
            leaf(1, 0),
            leaf(0xb, 0),
            leaf(0xb, 1),
            kvm_cpuid_entry2 {
                function: 0x4000_0000,
                eax: 0x4000_0001,
                ..Default::default()
            },
        ])
        .unwrap();
        let c = vcpu_cpuid(&base, 3, 4, Some(2_500_000)).unwrap();
        let get = |f, i| {
            *c.as_slice()
                .iter()
                .find(|e| e.function == f && e.index == i)
                .unwrap()
        };
        assert_eq!(get(1, 0).ebx >> 24, 3);
        assert_eq!((get(1, 0).ebx >> 16) & 0xff, 4);
        assert_ne!(get(1, 0).ecx & (1 << 31), 0);
        assert_eq!(get(0xb, 1).eax, 2);
        assert_eq!(get(0xb, 0).edx, 3);
        assert_eq!(get(0x4000_0000, 0).eax, TIMING_LEAF);
        assert_eq!(get(TIMING_LEAF, 0).eax, 2_500_000);
        assert_eq!(get(TIMING_LEAF, 0).ebx, LAPIC_BUS_KHZ);
    }
}
