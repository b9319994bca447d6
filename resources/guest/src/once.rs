//! Statics handed out as `&'static mut` exactly once.
//!
//! The drivers' frame buffers, the DMA pool, the socket buffers and the
//! network stack itself live in `.bss`: the ring-3 stack is only 32 KiB, and
//! smoltcp wants `'static` storage when there is no heap.

use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::gdt::Shared;

pub struct Once<T> {
    taken: AtomicBool,
    value: Shared<T>,
}

impl<T> Once<T> {
    pub const fn new(value: T) -> Self {
        Self {
            taken: AtomicBool::new(false),
            value: Shared::new(value),
        }
    }

    /// The value, mutably, for the rest of the guest's life.  Panics on a
    /// second call: two `&mut` to one static would be undefined behaviour.
    // `&self` → `&mut T` is sound here: the flag hands out one reference, ever.
    #[allow(clippy::mut_from_ref)]
    pub fn take(&'static self) -> &'static mut T {
        assert!(
            !self.taken.swap(true, Ordering::AcqRel),
            "a static was taken twice"
        );
        // SAFETY: the flag above lets exactly one caller through, so this is
        // the only reference ever made to the value.
        unsafe { &mut *self.value.get() }
    }
}

impl<T> Once<MaybeUninit<T>> {
    pub const fn uninit() -> Self {
        Self::new(MaybeUninit::uninit())
    }

    /// Move `value` into the static and return it.
    pub fn put(&'static self, value: T) -> &'static mut T {
        self.take().write(value)
    }
}
