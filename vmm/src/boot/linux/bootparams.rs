//! The zero page: the kernel's setup header (or a synthetic one for ELF), command line,
//! initramfs, e820 map and RSDP address.

use super::{Initramfs, LinuxError};
use crate::boot::layout::{
    CMDLINE_MAX_SIZE, CMDLINE_START, EBDA_START, HIGH_RAM_START, MMIO_HOLE_END, MMIO_HOLE_START,
    ZERO_PAGE_START,
};
use crate::boot::GuestMemoryMmap;
use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

/// `boot_flag` magic.
const BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// "HdrS".
const HDR_MAGIC: u32 = 0x5372_6448;
/// Boot protocol we claim for a synthetic header: 2.15 (has `acpi_rsdp_addr`, xloadflags).
const SYNTHETIC_PROTOCOL: u16 = 0x020f;
/// `type_of_loader`: "undefined" boot loader.
const LOADER_OTHER: u8 = 0xff;
/// loadflags: protected-mode code at 1 MiB; keep our segments; `heap_end_ptr` is valid.
const LOADED_HIGH: u8 = 1 << 0;
const KEEP_SEGMENTS: u8 = 1 << 6;
const CAN_USE_HEAP: u8 = 1 << 7;
/// End of the setup heap relative to the real-mode code, minus 0x200 (boot.rst's usual value).
const HEAP_END_PTR: u16 = 0xfe00;
/// Alignment a relocatable x86-64 kernel wants (CONFIG_PHYSICAL_ALIGN default).
const KERNEL_ALIGNMENT: u32 = 0x100_0000;
/// e820 type of usable RAM.
const E820_RAM: u32 = 1;

/// Where the command line went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CmdlineInfo {
    /// Guest physical address of the NUL-terminated string.
    pub addr: GuestAddress,
    /// Length without the terminating NUL.
    pub len: usize,
}

/// Everything `boot_params` is filled from.
#[derive(Clone, Copy, Debug)]
pub struct BootParamsConfig {
    /// The bzImage's header; None builds a synthetic one (ELF vmlinux).
    pub setup_header: Option<setup_header>,
    /// The command line written by [`load_cmdline`].
    pub cmdline: CmdlineInfo,
    /// The initramfs, if any.
    pub initramfs: Option<Initramfs>,
    /// The ACPI RSDP, if tables were built.
    pub rsdp: Option<GuestAddress>,
}

/// Writes `cmdline` at CMDLINE_START, refusing one longer than the kernel (its header's
/// `cmdline_size`) or our buffer takes.
pub fn load_cmdline(
    mem: &GuestMemoryMmap,
    cmdline: &str,
    hdr: Option<&setup_header>,
) -> Result<CmdlineInfo, LinuxError> {
    let kernel_max = hdr.map_or(usize::MAX, |h| h.cmdline_size as usize);
    let max = kernel_max.min(CMDLINE_MAX_SIZE - 1);
    if cmdline.len() > max {
        return Err(LinuxError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    let mut cl = Cmdline::new(CMDLINE_MAX_SIZE).map_err(LinuxError::Cmdline)?;
    cl.insert_str(cmdline).map_err(LinuxError::Cmdline)?;
    let addr = GuestAddress(CMDLINE_START);
    linux_loader::loader::load_cmdline(mem, addr, &cl).map_err(LinuxError::WriteCmdline)?;
    Ok(CmdlineInfo {
        addr,
        len: cmdline.len(),
    })
}

/// The e820 RAM ranges (start, length) of `mem`: RAM below the EBDA, RAM from 1 MiB up to the
/// MMIO hole, and RAM above 4 GiB. The gaps (EBDA, VGA/BIOS area with the ACPI tables, the hole)
/// are left out, so the guest never allocates them.
pub fn e820_map(mem: &GuestMemoryMmap) -> Vec<(u64, u64)> {
    const WINDOWS: [(u64, u64); 3] = [
        (0, EBDA_START),
        (HIGH_RAM_START, MMIO_HOLE_START),
        (MMIO_HOLE_END, u64::MAX),
    ];
    let mut map: Vec<(u64, u64)> = Vec::new();
    for r in mem.iter() {
        let (start, end) = (r.start_addr().0, r.start_addr().0.saturating_add(r.len()));
        for (lo, hi) in WINDOWS {
            let (s, e) = (start.max(lo), end.min(hi));
            if s >= e {
                continue;
            }
            // Merge with the previous range when regions touch.
            match map.last_mut() {
                Some((ps, pl)) if *ps + *pl == s => *pl += e - s,
                _ => map.push((s, e - s)),
            }
        }
    }
    map
}

/// Fills `boot_params` for the 64-bit boot protocol.
pub fn build_boot_params(
    mem: &GuestMemoryMmap,
    cfg: &BootParamsConfig,
) -> Result<boot_params, LinuxError> {
    let mut p = boot_params {
        hdr: cfg.setup_header.unwrap_or_else(synthetic_header),
        ..Default::default()
    };
    p.hdr.type_of_loader = LOADER_OTHER;
    p.hdr.loadflags |= KEEP_SEGMENTS | CAN_USE_HEAP;
    p.hdr.heap_end_ptr = HEAP_END_PTR;

    let cl = cfg.cmdline.addr.0;
    p.hdr.cmd_line_ptr = cl as u32;
    p.ext_cmd_line_ptr = (cl >> 32) as u32;

    if let Some(rd) = cfg.initramfs {
        p.hdr.ramdisk_image = rd.addr.0 as u32;
        p.ext_ramdisk_image = (rd.addr.0 >> 32) as u32;
        p.hdr.ramdisk_size = rd.size as u32;
        p.ext_ramdisk_size = (rd.size >> 32) as u32;
    }

    if let Some(rsdp) = cfg.rsdp {
        p.acpi_rsdp_addr = rsdp.0;
    }

    let map = e820_map(mem);
    if map.len() > p.e820_table.len() {
        return Err(LinuxError::TooManyE820Entries(map.len()));
    }
    for (slot, (addr, size)) in p.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: E820_RAM,
        };
    }
    p.e820_entries = map.len() as u8;
    Ok(p)
}

/// Writes `params` at ZERO_PAGE_START (the address the boot vCPU gets in `rsi`).
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    params: &boot_params,
) -> Result<GuestAddress, LinuxError> {
    let addr = GuestAddress(ZERO_PAGE_START);
    let bp = BootParams::new::<boot_params>(params, addr);
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(&bp, mem)
        .map_err(LinuxError::WriteBootParams)?;
    Ok(addr)
}

/// What a bzImage's header would say, for a kernel (ELF vmlinux) that has none.
fn synthetic_header() -> setup_header {
    setup_header {
        boot_flag: BOOT_FLAG_MAGIC,
        header: HDR_MAGIC,
        version: SYNTHETIC_PROTOCOL,
        loadflags: LOADED_HIGH,
        kernel_alignment: KERNEL_ALIGNMENT,
        // What we allow, so that anything reading these sees the truth.
        cmdline_size: (CMDLINE_MAX_SIZE - 1) as u32,
        initrd_addr_max: (MMIO_HOLE_START - 1) as u32,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryError};

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    /// Guest RAM laid out the way the VMM lays it out.
    fn mem(size: u64) -> GuestMemoryMmap {
        crate::vm::memory::create_guest_memory(size).unwrap()
    }

    #[test]
    fn e820_for_256_mib() {
        assert_eq!(
            e820_map(&mem(256 * MIB)),
            vec![
                (0, EBDA_START),
                (HIGH_RAM_START, 256 * MIB - HIGH_RAM_START)
            ]
        );
    }

    #[test]
    fn e820_for_6_gib_respects_the_hole() {
        let map = e820_map(&mem(6 * GIB));
        assert_eq!(
            map,
            vec![
                (0, EBDA_START),
                (HIGH_RAM_START, MMIO_HOLE_START - HIGH_RAM_START),
                (MMIO_HOLE_END, 6 * GIB - MMIO_HOLE_START),
            ]
        );
        for (a, l) in &map {
            assert!(
                a + l <= MMIO_HOLE_START || *a >= MMIO_HOLE_END,
                "{a:#x}+{l:#x}"
            );
        }
        let total: u64 = map.iter().map(|(_, l)| l).sum();
        assert_eq!(total, 6 * GIB - (HIGH_RAM_START - EBDA_START));
    }

    #[test]
    fn cmdline_longer_than_the_kernel_takes_is_refused() {
        let m = mem(64 * MIB);
        let hdr = setup_header {
            cmdline_size: 10,
            ..Default::default()
        };
        let r = load_cmdline(&m, "console=ttyS0 panic=1", Some(&hdr));
        assert!(
            matches!(r, Err(LinuxError::CmdlineTooLong { max: 10, .. })),
            "{r:?}"
        );
        let long = "a".repeat(CMDLINE_MAX_SIZE);
        assert!(load_cmdline(&m, &long, None).is_err());
    }

    fn read_back(m: &GuestMemoryMmap) -> Result<boot_params, GuestMemoryError> {
        m.read_obj(GuestAddress(ZERO_PAGE_START))
    }

    #[test]
    fn boot_params_round_trip_synthetic_header() {
        let m = mem(6 * GIB);
        let cmdline = load_cmdline(&m, "console=ttyS0 reboot=acpi", None).unwrap();
        let cfg = BootParamsConfig {
            setup_header: None,
            cmdline,
            initramfs: Some(Initramfs {
                addr: GuestAddress(0xb000_0000),
                size: 0x12_3456,
            }),
            rsdp: Some(GuestAddress(0xe0000)),
        };
        let p = build_boot_params(&m, &cfg).unwrap();
        assert_eq!(
            write_boot_params(&m, &p).unwrap(),
            GuestAddress(ZERO_PAGE_START)
        );
        let q = read_back(&m).unwrap();
        assert_eq!({ q.hdr.boot_flag }, 0xaa55);
        assert_eq!({ q.hdr.header }, 0x5372_6448);
        assert!({ q.hdr.version } >= 0x020e);
        assert_eq!(q.hdr.type_of_loader, 0xff);
        assert_eq!(q.hdr.loadflags, LOADED_HIGH | KEEP_SEGMENTS | CAN_USE_HEAP);
        assert_eq!({ q.hdr.cmd_line_ptr } as u64, CMDLINE_START);
        assert_eq!({ q.ext_cmd_line_ptr }, 0);
        assert_eq!({ q.hdr.ramdisk_image }, 0xb000_0000);
        assert_eq!({ q.hdr.ramdisk_size }, 0x12_3456);
        assert_eq!({ q.acpi_rsdp_addr }, 0xe0000);
        assert_eq!(q.e820_entries, 3);
        let e = q.e820_table[2];
        assert_eq!(
            ({ e.addr }, { e.size }, { e.r#type }),
            (MMIO_HOLE_END, 6 * GIB - MMIO_HOLE_START, 1)
        );
        let mut s = vec![0u8; cmdline.len + 1];
        m.read_slice(&mut s, GuestAddress(CMDLINE_START)).unwrap();
        assert_eq!(s, b"console=ttyS0 reboot=acpi\0");
    }

    #[test]
    fn boot_params_keep_the_kernels_header() {
        let m = mem(256 * MIB);
        let hdr = setup_header {
            boot_flag: 0xaa55,
            header: 0x5372_6448,
            version: 0x020f,
            setup_sects: 27,
            loadflags: LOADED_HIGH,
            init_size: 0x200_0000,
            cmdline_size: 2047,
            xloadflags: 0x7f,
            ..Default::default()
        };
        let cmdline = load_cmdline(&m, "console=ttyS0", Some(&hdr)).unwrap();
        let cfg = BootParamsConfig {
            setup_header: Some(hdr),
            cmdline,
            initramfs: None,
            rsdp: None,
        };
        write_boot_params(&m, &build_boot_params(&m, &cfg).unwrap()).unwrap();
        let q = read_back(&m).unwrap();
        assert_eq!(q.hdr.setup_sects, 27);
        assert_eq!({ q.hdr.init_size }, 0x200_0000);
        assert_eq!({ q.hdr.xloadflags }, 0x7f);
        assert_eq!(
            { q.hdr.cmdline_size },
            2047,
            "the kernel's limit is left alone"
        );
        assert_eq!(q.hdr.type_of_loader, 0xff);
        assert_eq!(({ q.hdr.ramdisk_image }, { q.hdr.ramdisk_size }), (0, 0));
        assert_eq!({ q.acpi_rsdp_addr }, 0);
        assert_eq!(q.e820_entries, 2);
    }
}
