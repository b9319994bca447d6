//! What we need from the Linux zero page, copied into our own memory at once.

use crate::gdt::Shared;

const CMDLINE_PTR: usize = 0x228;
const CMDLINE_SIZE: usize = 0x238;
const E820_ENTRIES: usize = 0x1e8;
const E820_TABLE: usize = 0x2d0;
const ACPI_RSDP_ADDR: usize = 0x70;

const E820_MAX: usize = 128;
const E820_RAM: u32 = 1;
pub const CMDLINE_MAX: usize = 2048;

#[derive(Clone, Copy)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

impl E820Entry {
    pub fn is_ram(&self) -> bool {
        self.kind == E820_RAM
    }
}

pub struct BootInfo {
    cmdline: [u8; CMDLINE_MAX],
    cmdline_len: usize,
    e820: [E820Entry; E820_MAX],
    e820_len: usize,
    /// `acpi_rsdp_addr`, 0 when the VMM gave none.
    pub rsdp: u64,
}

/// Written once by `capture` on the BSP before the APs start; read-only after.
static BOOT: Shared<BootInfo> = Shared::new(BootInfo {
    cmdline: [0; CMDLINE_MAX],
    cmdline_len: 0,
    e820: [E820Entry { addr: 0, size: 0, kind: 0 }; E820_MAX],
    e820_len: 0,
    rsdp: 0,
});

/// # Safety
/// `addr` must be readable, identity-mapped guest memory.
unsafe fn read<T: Copy>(addr: u64) -> T {
    // SAFETY: per the function contract; the zero page is not aligned for us.
    unsafe { (addr as *const T).read_unaligned() }
}

/// Copy the zero page's command line, e820 map and RSDP address.  Call once,
/// on the BSP, before anything else may reuse low memory.
pub fn capture(zero_page: u64) {
    // SAFETY: only the BSP runs; nobody reads BOOT before this returns.
    let boot = unsafe { &mut *BOOT.get() };
    // SAFETY: the VMM put the zero page at `zero_page`, inside mapped RAM; the
    // fields are at their documented offsets.
    unsafe {
        let n = (read::<u8>(zero_page + E820_ENTRIES as u64) as usize).min(E820_MAX);
        for (i, entry) in boot.e820.iter_mut().enumerate().take(n) {
            let at = zero_page + (E820_TABLE + 20 * i) as u64;
            *entry = E820Entry { addr: read(at), size: read(at + 8), kind: read(at + 16) };
        }
        boot.e820_len = n;
        boot.rsdp = read(zero_page + ACPI_RSDP_ADDR as u64);

        let ptr = read::<u32>(zero_page + CMDLINE_PTR as u64) as u64;
        let size = read::<u32>(zero_page + CMDLINE_SIZE as u64) as usize;
        let mut len = 0;
        if ptr != 0 {
            while len < size.min(CMDLINE_MAX) {
                let b: u8 = read(ptr + len as u64);
                if b == 0 {
                    break;
                }
                boot.cmdline[len] = b;
                len += 1;
            }
        }
        boot.cmdline_len = len;
    }
}

pub fn get() -> &'static BootInfo {
    // SAFETY: after `capture`, BOOT is never written again.
    unsafe { &*BOOT.get() }
}

impl BootInfo {
    /// The command line, without trailing blanks; non-UTF-8 is shown as "?".
    pub fn cmdline(&self) -> &str {
        core::str::from_utf8(&self.cmdline[..self.cmdline_len])
            .unwrap_or("?")
            .trim_end_matches([' ', '\n', '\t'])
    }

    pub fn e820(&self) -> &[E820Entry] {
        &self.e820[..self.e820_len]
    }

    /// Total RAM in the e820 map, in bytes.
    pub fn ram_bytes(&self) -> u64 {
        self.e820().iter().filter(|e| e.is_ram()).map(|e| e.size).sum()
    }
}
