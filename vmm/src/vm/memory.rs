//! Guest RAM: anonymous mappings with vm-memory's dirty bitmap (device backends' writes are
//! tracked there; KVM's dirty log tracks the vCPUs'), split around the 32-bit MMIO hole.

use crate::boot::layout::{MMIO_HOLE_END, MMIO_HOLE_START};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

/// Guest memory as the whole VMM types it.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<AtomicBitmap>;

/// Guest memory errors.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Mapping guest RAM failed (host out of memory or address space).
    #[error("cannot allocate {size} bytes of guest memory")]
    Allocate {
        /// The RAM size asked for, in bytes.
        size: u64,
        /// What vm-memory said.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    /// `KVM_SET_USER_MEMORY_REGION` refused a RAM region.
    #[error("cannot register guest memory slot {slot} with KVM")]
    RegisterSlot {
        /// The KVM memory slot.
        slot: u32,
        /// What KVM said.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The RAM size (in bytes) does not fit a host `usize`.
    #[error("guest memory size {0} does not fit this host's address space")]
    TooLarge(u64),
}

/// RAM ranges for `size` bytes: below the MMIO hole first, the rest above 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, u64)> {
    let low = size.min(MMIO_HOLE_START);
    let mut ranges = vec![(GuestAddress(0), low)];
    if size > low {
        ranges.push((GuestAddress(MMIO_HOLE_END), size - low));
    }
    ranges
}

/// Allocates guest RAM (lazily backed: untouched pages cost nothing).
pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let ranges = ram_ranges(size)
        .into_iter()
        .map(|(a, l)| usize::try_from(l).map(|l| (a, l)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| MemoryError::TooLarge(size))?;
    GuestMemoryMmap::from_ranges(&ranges).map_err(|source| MemoryError::Allocate { size, source })
}

/// Tells KVM about every region; `log_dirty` turns on KVM's dirty page log for them.
pub fn register_memory(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    log_dirty: bool,
) -> Result<(), MemoryError> {
    for (slot, region) in mem.iter().enumerate() {
        let slot = slot as u32;
        let flags = if log_dirty {
            kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES
        } else {
            0
        };
        let r = kvm_userspace_memory_region {
            slot,
            flags,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which the VM keeps for as long as
        // the VM fd exists, and its size is exactly `memory_size`.
        unsafe { vm.set_user_memory_region(r) }
            .map_err(|source| MemoryError::RegisterSlot { slot, source })?;
    }
    Ok(())
}

/// Bytes of RAM in the guest.
pub fn total_size(mem: &GuestMemoryMmap) -> u64 {
    mem.iter().map(|r| r.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_skip_the_mmio_hole() {
        assert_eq!(ram_ranges(256 << 20), vec![(GuestAddress(0), 256 << 20)]);
        assert_eq!(
            ram_ranges(4 << 30),
            vec![
                (GuestAddress(0), MMIO_HOLE_START),
                (GuestAddress(MMIO_HOLE_END), (4 << 30) - MMIO_HOLE_START)
            ]
        );
    }

    #[test]
    fn memory_is_allocated_with_the_right_size() {
        let m = create_guest_memory(64 << 20).unwrap();
        assert_eq!(total_size(&m), 64 << 20);
    }
}
