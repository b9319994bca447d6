//! Kernel images: ELF vmlinux at its own physical addresses, or a bzImage's protected-mode part at
//! HIGH_RAM_START (1 MiB) entered through its 64-bit entry point.

use super::LinuxError;
use crate::boot::layout::HIGH_RAM_START;
use crate::boot::GuestMemoryMmap;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{bzimage, BzImage, Elf, Error as LoaderError, KernelLoader};
use std::io::{Read, Seek, SeekFrom};
use vm_memory::{GuestAddress, ReadVolatile};

/// The 64-bit entry point sits this far into a bzImage's protected-mode code (boot.rst, "64-bit
/// boot protocol").
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// xloadflags bit: the kernel has the 64-bit entry point.
const XLF_KERNEL_64: u16 = 1 << 0;
/// First boot protocol with xloadflags (2.12).
const PROTOCOL_XLOADFLAGS: u16 = 0x020c;
/// First boot protocol with init_size (2.10).
const PROTOCOL_INIT_SIZE: u16 = 0x020a;

/// A kernel loaded into guest memory.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    /// Where the boot vCPU starts, in 64-bit mode with `rsi` = the zero page.
    pub entry: GuestAddress,
    /// First address past everything the kernel uses while it starts (for a bzImage, including
    /// the room its decompressor needs): the initramfs must go above it.
    pub end: u64,
    /// The bzImage's setup header (None for ELF).
    pub setup_header: Option<setup_header>,
}

/// Loads an ELF vmlinux or a bzImage, telling them apart by their magic numbers.
pub fn load_kernel<F>(mem: &GuestMemoryMmap, image: &mut F) -> Result<LoadedKernel, LinuxError>
where
    F: Read + ReadVolatile + Seek,
{
    if is_elf(image)? {
        let r = Elf::load(mem, None, image, Some(GuestAddress(HIGH_RAM_START)))
            .map_err(LinuxError::LoadKernel)?;
        return Ok(LoadedKernel {
            entry: r.kernel_load,
            end: r.kernel_end,
            setup_header: None,
        });
    }

    let load_addr = GuestAddress(HIGH_RAM_START);
    let r = BzImage::load(mem, Some(load_addr), image, Some(load_addr)).map_err(|e| match e {
        // No "HdrS" (or too short to hold a header): not a bzImage, and not ELF either.
        LoaderError::Bzimage(
            bzimage::Error::InvalidBzImage
            | bzimage::Error::ReadBzImageHeader
            | bzimage::Error::SeekBzImageHeader,
        ) => LinuxError::NotAKernel,
        e => LinuxError::LoadKernel(e),
    })?;
    let hdr = r.setup_header.ok_or(LinuxError::NotAKernel)?;
    let (version, xloadflags) = (hdr.version, hdr.xloadflags);
    if version < PROTOCOL_XLOADFLAGS || xloadflags & XLF_KERNEL_64 == 0 {
        return Err(LinuxError::No64BitEntry {
            version,
            xloadflags,
        });
    }
    // The decompressor works in place and needs init_size bytes from the load address.
    let init_end = if version >= PROTOCOL_INIT_SIZE {
        r.kernel_load.0 + u64::from(hdr.init_size)
    } else {
        0
    };
    Ok(LoadedKernel {
        entry: GuestAddress(r.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET),
        end: r.kernel_end.max(init_end),
        setup_header: Some(hdr),
    })
}

/// Whether the image starts with the ELF magic; leaves the stream at its start.
fn is_elf<F: Read + Seek>(image: &mut F) -> Result<bool, LinuxError> {
    let mut magic = [0u8; 4];
    image.rewind().map_err(LinuxError::ReadKernel)?;
    let n = read_up_to(image, &mut magic).map_err(LinuxError::ReadKernel)?;
    image
        .seek(SeekFrom::Start(0))
        .map_err(LinuxError::ReadKernel)?;
    Ok(n == magic.len() && magic == *b"\x7fELF")
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_up_to<F: Read>(r: &mut F, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use vm_memory::Bytes;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap()
    }

    /// A minimal ELF64 executable: one PT_LOAD of `payload` at `paddr`, entry at `paddr`.
    fn tiny_elf(paddr: u64, payload: &[u8]) -> Vec<u8> {
        let (ehsize, phentsize) = (64u16, 56u16);
        let mut e = vec![0u8; 64];
        e[0..4].copy_from_slice(b"\x7fELF");
        e[4] = 2; // 64-bit
        e[5] = 1; // little endian
        e[6] = 1; // version
        e[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        e[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        e[20..24].copy_from_slice(&1u32.to_le_bytes());
        e[24..32].copy_from_slice(&paddr.to_le_bytes()); // e_entry
        e[32..40].copy_from_slice(&u64::from(ehsize).to_le_bytes()); // e_phoff
        e[52..54].copy_from_slice(&ehsize.to_le_bytes());
        e[54..56].copy_from_slice(&phentsize.to_le_bytes());
        e[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
        let off = u64::from(ehsize + phentsize);
        let mut ph = vec![0u8; 56];
        ph[0..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        ph[4..8].copy_from_slice(&5u32.to_le_bytes()); // R+X
        ph[8..16].copy_from_slice(&off.to_le_bytes());
        ph[16..24].copy_from_slice(&paddr.to_le_bytes()); // vaddr
        ph[24..32].copy_from_slice(&paddr.to_le_bytes()); // paddr
        ph[32..40].copy_from_slice(&(payload.len() as u64).to_le_bytes());
        ph[40..48].copy_from_slice(&(payload.len() as u64 + 0x1000).to_le_bytes()); // memsz
        ph[48..56].copy_from_slice(&0x1000u64.to_le_bytes());
        e.extend_from_slice(&ph);
        e.extend_from_slice(payload);
        e
    }

    /// A minimal bzImage: 4 setup sectors plus the boot sector, then `payload`.
    pub(crate) fn tiny_bzimage(xloadflags: u16, payload: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 5 * 512];
        b[0x1f1] = 4; // setup_sects
        b[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        b[0x202..0x206].copy_from_slice(b"HdrS");
        b[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        b[0x211] = 1; // loadflags: LOADED_HIGH
        b[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
        b[0x22c..0x230].copy_from_slice(&0x37ff_ffffu32.to_le_bytes()); // initrd_addr_max
        b[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
        b[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes()); // cmdline_size
        b[0x260..0x264].copy_from_slice(&0x40_0000u32.to_le_bytes()); // init_size
        b.extend_from_slice(payload);
        b
    }

    #[test]
    fn elf_loads_at_its_own_address() {
        let m = mem();
        let payload = b"\xf4tiny-kernel";
        let k = load_kernel(&m, &mut Cursor::new(tiny_elf(0x20_0000, payload))).unwrap();
        assert_eq!(k.entry, GuestAddress(0x20_0000));
        assert!(k.setup_header.is_none());
        assert_eq!(k.end, 0x20_0000 + payload.len() as u64 + 0x1000);
        let mut got = vec![0u8; payload.len()];
        m.read_slice(&mut got, GuestAddress(0x20_0000)).unwrap();
        assert_eq!(got, payload);
    }

    #[test]
    fn elf_below_high_ram_is_refused() {
        let r = load_kernel(&mem(), &mut Cursor::new(tiny_elf(0x8000, b"x")));
        assert!(matches!(r, Err(LinuxError::LoadKernel(_))), "{r:?}");
    }

    #[test]
    fn bzimage_loads_at_1mib_with_64bit_entry() {
        let m = mem();
        let payload = vec![0x5a; 3000];
        let k = load_kernel(&m, &mut Cursor::new(tiny_bzimage(1, &payload))).unwrap();
        assert_eq!(k.entry, GuestAddress(HIGH_RAM_START + 0x200));
        assert_eq!(k.end, HIGH_RAM_START + 0x40_0000, "init_size wins");
        let hdr = k.setup_header.unwrap();
        assert_eq!({ hdr.header }, 0x5372_6448);
        assert_eq!({ hdr.initrd_addr_max }, 0x37ff_ffff);
        let mut got = vec![0u8; payload.len()];
        m.read_slice(&mut got, GuestAddress(HIGH_RAM_START))
            .unwrap();
        assert_eq!(got, payload);
    }

    #[test]
    fn bzimage_without_64bit_entry_is_refused() {
        let r = load_kernel(&mem(), &mut Cursor::new(tiny_bzimage(0, b"x")));
        assert!(matches!(r, Err(LinuxError::No64BitEntry { .. })), "{r:?}");
    }

    #[test]
    fn garbage_is_not_a_kernel() {
        let inputs: [Vec<u8>; 4] = [
            vec![],
            b"\x7fE".to_vec(),
            (0..8192u32).map(|i| (i * 7 + 3) as u8).collect(),
            b"#!/bin/sh\necho not a kernel\n".to_vec(),
        ];
        for input in inputs {
            let err = load_kernel(&mem(), &mut Cursor::new(input)).unwrap_err();
            assert!(matches!(err, LinuxError::NotAKernel), "{err:?}");
            assert_eq!(err.to_string(), "not a kernel (neither ELF nor bzImage)");
        }
    }
}
