//! Loads what the VM boots (a kernel file, or the built-in guest) and writes `boot_params`.
//! Temporary minimal ELF-only path; replaced by boot::linux (bzImage, initramfs) on merge.

use super::layout::*;
use crate::vm::memory::{ram_ranges, GuestMemoryMmap};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{load_cmdline, Cmdline, Elf, KernelLoader};
use std::io::Cursor;
use vm_memory::{Bytes, GuestAddress};

/// Payload errors.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("cannot read {0}")]
    Read(String, #[source] std::io::Error),
    #[error("not a kernel (neither ELF nor bzImage)")]
    NotAKernel(#[source] linux_loader::loader::Error),
    #[error("bad kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    #[error("cannot write the command line into guest memory")]
    WriteCmdline(#[source] linux_loader::loader::Error),
    #[error("cannot write boot_params into guest memory")]
    WriteBootParams(#[source] vm_memory::GuestMemoryError),
}

/// Loads an ELF kernel image; returns its entry point.
pub fn load_kernel(mem: &GuestMemoryMmap, image: &[u8]) -> Result<u64, PayloadError> {
    let mut cursor = Cursor::new(image);
    let r = Elf::load(
        mem,
        None,
        &mut cursor,
        Some(GuestAddress(HIGH_RAM_START)),
    )
    .map_err(|e| PayloadError::NotAKernel(e.into()))?;
    Ok(r.kernel_load.0)
}

/// Writes the command line and a `boot_params` with the e820 map and the RSDP address.
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    cmdline: &str,
    rsdp: Option<GuestAddress>,
) -> Result<(), PayloadError> {
    let mut cl = Cmdline::new(CMDLINE_MAX_SIZE).map_err(PayloadError::Cmdline)?;
    cl.insert_str(cmdline).map_err(PayloadError::Cmdline)?;
    load_cmdline(mem, GuestAddress(CMDLINE_START), &cl).map_err(PayloadError::WriteCmdline)?;

    let mut params = boot_params::default();
    params.hdr.type_of_loader = 0xff;
    params.hdr.boot_flag = 0xaa55;
    params.hdr.header = 0x5372_6448; // "HdrS"
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline.len() as u32 + 1;
    params.hdr.kernel_alignment = 0x0100_0000;
    if let Some(r) = rsdp {
        params.acpi_rsdp_addr = r.0;
    }
    let mut e820 = vec![(0, EBDA_START)];
    for (start, len) in ram_ranges(mem_size) {
        let (s, end) = (start.0.max(HIGH_RAM_START), start.0 + len);
        if end > s {
            e820.push((s, end - s));
        }
    }
    for (i, (addr, size)) in e820.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: 1,
        };
    }
    params.e820_entries = e820.len() as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
        .map_err(PayloadError::WriteBootParams)
}
