//! Initramfs placement: page-aligned, as high as the kernel allows, so that it stays clear of the
//! kernel and of the memory the kernel's decompressor and early allocator use.

use super::LinuxError;
use crate::boot::layout::{HIGH_RAM_START, MMIO_HOLE_START};
use crate::boot::GuestMemoryMmap;
use linux_loader::loader::bootparam::setup_header;
use std::io::{Read, Seek, SeekFrom};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, ReadVolatile};

const PAGE_SIZE: u64 = 4096;

/// Where the initramfs was put.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Initramfs {
    /// Guest physical address (page-aligned, below 4 GiB).
    pub addr: GuestAddress,
    /// Size in bytes.
    pub size: u64,
}

/// The address for an initramfs of `size` bytes: the highest page-aligned one whose end is at or
/// below the end of the RAM holding the kernel, the 32-bit MMIO hole and the header's
/// `initrd_addr_max`, and whose start is at or above `kernel_end`.
pub fn initramfs_addr(
    mem: &GuestMemoryMmap,
    size: u64,
    kernel_end: u64,
    hdr: Option<&setup_header>,
) -> Result<GuestAddress, LinuxError> {
    // The RAM region that holds the kernel: the initramfs must be contiguous RAM.
    let ram_end = mem
        .find_region(GuestAddress(HIGH_RAM_START))
        .map_or(0, |r| r.start_addr().0 + r.len());
    let mut limit = ram_end.min(MMIO_HOLE_START);
    if let Some(h) = hdr {
        // initrd_addr_max is the highest address the initramfs may *occupy*, hence +1.
        let max = h.initrd_addr_max;
        if max != 0 {
            limit = limit.min(u64::from(max) + 1);
        }
    }
    let too_large = LinuxError::InitramfsTooLarge {
        size,
        kernel_end,
        limit,
    };
    let start = limit.checked_sub(size).ok_or(too_large)?;
    let start = start & !(PAGE_SIZE - 1);
    if start < kernel_end.next_multiple_of(PAGE_SIZE) {
        return Err(LinuxError::InitramfsTooLarge {
            size,
            kernel_end,
            limit,
        });
    }
    Ok(GuestAddress(start))
}

/// Copies the whole of `file` into guest memory at [`initramfs_addr`].
pub fn load_initramfs<F>(
    mem: &GuestMemoryMmap,
    file: &mut F,
    kernel_end: u64,
    hdr: Option<&setup_header>,
) -> Result<Initramfs, LinuxError>
where
    F: Read + ReadVolatile + Seek,
{
    let size = file
        .seek(SeekFrom::End(0))
        .map_err(LinuxError::ReadInitramfs)?;
    file.rewind().map_err(LinuxError::ReadInitramfs)?;
    let addr = initramfs_addr(mem, size, kernel_end, hdr)?;
    let len = usize::try_from(size).map_err(|_| LinuxError::InitramfsTooLarge {
        size,
        kernel_end,
        limit: MMIO_HOLE_START,
    })?;
    mem.read_exact_volatile_from(addr, file, len)
        .map_err(LinuxError::WriteInitramfs)?;
    Ok(Initramfs { addr, size })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    const MIB: u64 = 1 << 20;

    /// Guest RAM laid out the way the VMM lays it out.
    fn mem(size: u64) -> GuestMemoryMmap {
        crate::vm::memory::create_guest_memory(size).unwrap()
    }

    fn header(initrd_addr_max: u32) -> setup_header {
        setup_header {
            initrd_addr_max,
            ..Default::default()
        }
    }

    #[test]
    fn goes_as_high_as_ram_allows() {
        let m = mem(256 * MIB);
        let size = 10 * MIB + 123;
        let a = initramfs_addr(&m, size, 20 * MIB, None).unwrap().0;
        assert_eq!(a % PAGE_SIZE, 0);
        assert!(a + size <= 256 * MIB);
        assert!(
            a + size > 256 * MIB - PAGE_SIZE,
            "not as high as possible: {a:#x}"
        );
    }

    #[test]
    fn respects_initrd_addr_max() {
        let m = mem(2048 * MIB);
        let a = initramfs_addr(&m, 5 * MIB, 20 * MIB, Some(&header(0x37ff_ffff)))
            .unwrap()
            .0;
        assert!(a + 5 * MIB <= 0x3800_0000);
        assert!(a + 5 * MIB > 0x3800_0000 - PAGE_SIZE);
    }

    #[test]
    fn stays_below_the_mmio_hole_with_lots_of_ram() {
        let m = mem(6 << 30);
        let a = initramfs_addr(&m, 5 * MIB, 20 * MIB, Some(&header(0xffff_ffff)))
            .unwrap()
            .0;
        assert!(a + 5 * MIB <= MMIO_HOLE_START);
        assert!(a + 5 * MIB > MMIO_HOLE_START - PAGE_SIZE);
    }

    #[test]
    fn never_overlaps_the_kernel() {
        let m = mem(64 * MIB);
        assert!(initramfs_addr(&m, 44 * MIB + 1, 20 * MIB, None).is_err());
        assert!(initramfs_addr(&m, 100 * MIB, 2 * MIB, None).is_err());
        let a = initramfs_addr(&m, 44 * MIB - 1, 20 * MIB, None).unwrap();
        assert_eq!(a.0, 20 * MIB);
    }

    #[test]
    fn load_copies_the_file() {
        let m = mem(64 * MIB);
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let i = load_initramfs(&m, &mut Cursor::new(data.clone()), 8 * MIB, None).unwrap();
        assert_eq!(i.size, data.len() as u64);
        let mut got = vec![0u8; data.len()];
        m.read_slice(&mut got, i.addr).unwrap();
        assert_eq!(got, data);
    }
}
