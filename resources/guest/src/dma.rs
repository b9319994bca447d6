//! virtio-drivers' `Hal`: DMA memory and address translation.
//!
//! The guest is identity-mapped, so a buffer's physical address is its
//! address and sharing a buffer with a device needs no bounce buffer.  The
//! pages the drivers ask for (their virtqueues) come from a static pool in
//! `.bss` (zeroed at boot, as `dma_alloc` must return) and are never given
//! back: drivers live as long as the guest.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};

use crate::gdt::Shared;

/// 256 KiB: a 64-entry queue takes two pages, so this covers two NICs and
/// dozens of disks.
const POOL_PAGES: usize = 64;

#[repr(C, align(4096))]
struct Pool([u8; POOL_PAGES * PAGE_SIZE]);

/// Handed out page by page by `dma_alloc`; nothing else touches it.
static POOL: Shared<Pool> = Shared::new(Pool([0; POOL_PAGES * PAGE_SIZE]));
/// The first page of `POOL` not handed out yet.
static NEXT_PAGE: AtomicUsize = AtomicUsize::new(0);

pub struct GuestHal;

// SAFETY: `dma_alloc` hands out zeroed, page-aligned, never-aliased pages
// (each page once); addresses are identity-mapped, so `share` returns the
// address the device must use and `mmio_phys_to_virt` the one we must use.
unsafe impl Hal for GuestHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let first = NEXT_PAGE.fetch_add(pages, Ordering::Relaxed);
        if first.saturating_add(pages) > POOL_PAGES {
            // A zero address is the failure `Dma::new` reports as DmaError.
            return (0, NonNull::dangling());
        }
        // SAFETY: first + pages <= POOL_PAGES, so the range lies inside POOL.
        let ptr = unsafe { POOL.get().cast::<u8>().add(first * PAGE_SIZE) };
        (
            ptr as PhysAddr,
            NonNull::new(ptr).expect("POOL is not at address 0"),
        )
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, _vaddr: NonNull<u8>, _pages: usize) -> i32 {
        // Never reused (see the module comment); 0 tells the driver it went fine.
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).expect("virtio MMIO at address 0")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.cast::<u8>().as_ptr() as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {
        // The device wrote into the buffer itself: nothing to copy back.
    }
}
