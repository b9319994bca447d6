//! The memory intrinsics the compiler calls (there is no libc).  String
//! instructions are fast in ring 3, where all of this runs.

/// # Safety
/// `dst` and `src` valid for `n` bytes, not overlapping.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: per the function contract; DF is clear (ABI).
    unsafe {
        core::arch::asm!("rep movsb", inout("rdi") dst => _, inout("rsi") src => _,
            inout("rcx") n => _, options(nostack, preserves_flags));
    }
    dst
}

/// # Safety
/// `dst` and `src` valid for `n` bytes; they may overlap.
#[no_mangle]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize).wrapping_sub(src as usize) >= n {
        // dst is below src or past its end: a forward copy is safe.
        // SAFETY: per the function contract.
        return unsafe { memcpy(dst, src, n) };
    }
    if n != 0 {
        // Overlap with dst above src: copy backwards (DF=1), then restore DF.
        // SAFETY: per the function contract; the last byte is at n - 1.
        unsafe {
            core::arch::asm!("std", "rep movsb", "cld",
                inout("rdi") dst.add(n - 1) => _, inout("rsi") src.add(n - 1) => _,
                inout("rcx") n => _, options(nostack));
        }
    }
    dst
}

/// # Safety
/// `dst` valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memset(dst: *mut u8, value: i32, n: usize) -> *mut u8 {
    // SAFETY: per the function contract.
    unsafe {
        core::arch::asm!("rep stosb", inout("rdi") dst => _, inout("rcx") n => _,
            in("al") value as u8, options(nostack, preserves_flags));
    }
    dst
}

/// # Safety
/// `a` and `b` valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: i < n, per the function contract.
        let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
        if x != y {
            return x as i32 - y as i32;
        }
    }
    0
}

/// # Safety
/// As `memcmp`.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract.
    unsafe { memcmp(a, b, n) }
}
