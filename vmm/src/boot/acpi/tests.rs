//! Builds the tables into guest memory, then reads them back the way a guest does: from the RSDP,
//! through the XSDT, checking every signature, length and checksum on the way.

use super::*;
use crate::boot::layout::*;
use vm_memory::Bytes;

fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap()
}

fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

/// Reads the table at `addr`, checks it lies in the ACPI area, has `sig` and sums to zero.
fn table(mem: &GuestMemoryMmap, addr: u64, sig: &[u8; 4]) -> Vec<u8> {
    assert!(
        (RSDP_START..ACPI_END).contains(&addr),
        "{addr:#x} outside ACPI area"
    );
    let mut hdr = [0u8; 36];
    mem.read_slice(&mut hdr, GuestAddress(addr)).unwrap();
    assert_eq!(&hdr[0..4], sig, "signature at {addr:#x}");
    let len = u32_at(&hdr, 4) as usize;
    assert!(len >= 36 && addr + len as u64 <= ACPI_END, "length {len}");
    let mut t = vec![0u8; len];
    mem.read_slice(&mut t, GuestAddress(addr)).unwrap();
    assert_eq!(sum(&t), 0, "{} checksum", String::from_utf8_lossy(sig));
    assert_eq!(&t[10..16], b"TANDEM");
    t
}

/// The tables a guest finds, by signature.
struct Found {
    fadt: Vec<u8>,
    madt: Vec<u8>,
    dsdt: Vec<u8>,
    dsdt_addr: u64,
}

fn walk(mem: &GuestMemoryMmap, rsdp: GuestAddress) -> Found {
    assert_eq!(rsdp, GuestAddress(RSDP_START));
    let mut r = [0u8; 36];
    mem.read_slice(&mut r, rsdp).unwrap();
    assert_eq!(&r[0..8], b"RSD PTR ");
    assert_eq!(sum(&r[0..20]), 0, "RSDP v1 checksum");
    assert_eq!(r[15], 2, "RSDP revision");
    assert_eq!(u32_at(&r, 20), 36, "RSDP length");
    assert_eq!(sum(&r), 0, "RSDP extended checksum");
    let xsdt = table(mem, u64_at(&r, 24), b"XSDT");
    assert_eq!((xsdt.len() - 36) % 8, 0);

    let (mut fadt, mut madt) = (None, None);
    for i in 0..(xsdt.len() - 36) / 8 {
        let addr = u64_at(&xsdt, 36 + 8 * i);
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(addr)).unwrap();
        match &sig {
            b"FACP" => fadt = Some(table(mem, addr, b"FACP")),
            b"APIC" => madt = Some(table(mem, addr, b"APIC")),
            other => panic!("unexpected table {other:?}"),
        }
    }
    let fadt = fadt.expect("XSDT lists a FADT");
    let madt = madt.expect("XSDT lists a MADT");
    assert_eq!(u32_at(&fadt, 40), 0, "32-bit DSDT pointer unused");
    let dsdt_addr = u64_at(&fadt, 140);
    let dsdt = table(mem, dsdt_addr, b"DSDT");
    Found {
        fadt,
        madt,
        dsdt,
        dsdt_addr,
    }
}

/// An 8-bit System I/O generic address at `port`.
fn io_gas(port: u16) -> [u8; 12] {
    let mut g = [1, 8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
    g[4..6].copy_from_slice(&port.to_le_bytes());
    g
}

fn check_fadt(f: &[u8]) {
    assert_eq!(f.len(), 276);
    assert_eq!(f[8], 6, "FADT major version");
    assert_eq!(f[131], 5, "FADT minor version");
    let flags = u32_at(f, 112);
    for bit in [20, 10, 4, 5] {
        assert_ne!(flags & (1 << bit), 0, "FADT flag bit {bit}");
    }
    assert_eq!(u16_at(f, 109) & 0b10, 0b10, "8042 present");
    assert_eq!(&f[116..128], &io_gas(ACPI_PM_PORT + 2), "reset register");
    assert_eq!(f[128], ACPI_RESET_VALUE);
    assert_eq!(&f[244..256], &io_gas(ACPI_PM_PORT), "sleep control");
    assert_eq!(&f[256..268], &io_gas(ACPI_PM_PORT + 1), "sleep status");
}

fn check_madt(m: &[u8], cpus: u8) {
    assert_eq!(u32_at(m, 36) as u64, LAPIC_START);
    assert_eq!(u32_at(m, 40) & 1, 1, "PCAT_COMPAT");
    let (mut apic_ids, mut ioapics, mut isos, mut nmis) = (vec![], 0, 0, 0);
    let mut off = 44;
    while off < m.len() {
        let (ty, len) = (m[off], m[off + 1] as usize);
        assert!(len >= 2 && off + len <= m.len(), "MADT entry at {off}");
        let e = &m[off..off + len];
        match ty {
            0 => {
                assert_eq!(len, 8);
                assert_eq!(e[2], e[3], "UID = APIC id");
                assert_eq!(u32_at(e, 4), 1, "enabled");
                apic_ids.push(e[3]);
            }
            1 => {
                assert_eq!((len, e[2]), (12, 0));
                assert_eq!(u32_at(e, 4) as u64, IOAPIC_START);
                assert_eq!(u32_at(e, 8), 0, "GSI base");
                ioapics += 1;
            }
            2 => {
                assert_eq!((len, e[2], e[3]), (10, 0, 0), "ISA IRQ0");
                assert_eq!(u32_at(e, 4), 2, "-> GSI 2");
                isos += 1;
            }
            4 => {
                assert_eq!((len, e[2], e[5]), (6, 0xff, 1), "NMI on LINT1 of all");
                nmis += 1;
            }
            t => panic!("unexpected MADT entry type {t}"),
        }
        off += len;
    }
    assert_eq!(off, m.len());
    assert_eq!(apic_ids, (0..cpus).collect::<Vec<_>>());
    assert_eq!((ioapics, isos, nmis), (1, 1, 1));
}

/// `Memory32Fixed(ReadWrite, addr, len)` then `Interrupt(Consumer, Edge, ActiveHigh, Exclusive)`.
fn mmio_crs(d: &MmioDeviceInfo) -> Vec<u8> {
    let mut v = vec![0x86, 0x09, 0x00, 0x01];
    v.extend_from_slice(&(d.addr as u32).to_le_bytes());
    v.extend_from_slice(&(d.len as u32).to_le_bytes());
    v.extend_from_slice(&[0x89, 0x06, 0x00, 0x03, 0x01]);
    v.extend_from_slice(&d.irq.to_le_bytes());
    v
}

/// COM1's `IO(Decode16, 0x3F8, 0x3F8, 1, 8)` and IRQ 4.
const COM1_CRS: [u8; 17] = [
    0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08, 0x89, 0x06, 0x00, 0x03, 0x01, 4, 0, 0, 0,
];

fn check_dsdt(d: &[u8], cfg: &AcpiConfig) {
    // Name(_S5_, Package(4) {5, 5, 0, 0})
    assert_eq!(
        count(
            d,
            &[0x08, b'_', b'S', b'5', b'_', 0x12, 0x08, 0x04, 0x0a, 5, 0x0a, 5, 0, 0]
        ),
        1
    );
    let serial = usize::from(cfg.serial);
    assert_eq!(count(d, b"COM1"), serial);
    assert_eq!(
        count(d, &[0x41, 0xd0, 0x05, 0x01]),
        serial,
        "EISAID PNP0501"
    );
    assert_eq!(count(d, &COM1_CRS), serial);
    assert_eq!(count(d, b"LNRO0005\0"), cfg.mmio_devices.len());
    for (i, dev) in cfg.mmio_devices.iter().enumerate() {
        assert_eq!(count(d, &mmio_crs(dev)), 1, "device {i} resources");
        assert_eq!(count(d, format!("V{i:03X}").as_bytes()), 1);
    }
}

fn devices(n: usize) -> Vec<MmioDeviceInfo> {
    (0..n)
        .map(|i| MmioDeviceInfo {
            addr: VIRTIO_MMIO_START + 0x1000 * i as u64,
            len: 0x1000,
            irq: 5 + i as u32,
        })
        .collect()
}

#[test]
fn tables_walk_back_for_every_shape() {
    for cpus in [1u8, 2, 64, 255] {
        for ndev in [0, 8] {
            for serial in [false, true] {
                let devs = devices(ndev);
                let cfg = AcpiConfig {
                    num_cpus: cpus,
                    mmio_devices: &devs,
                    serial,
                };
                let mem = guest_memory();
                let rsdp = create_acpi_tables(&mem, &cfg).unwrap();
                let f = walk(&mem, rsdp);
                check_fadt(&f.fadt);
                check_madt(&f.madt, cpus);
                check_dsdt(&f.dsdt, &cfg);
                assert_eq!(f.dsdt_addr % 16, 0);
            }
        }
    }
}

#[test]
fn walker_notices_a_corrupted_table() {
    let mem = guest_memory();
    let devs = devices(1);
    let cfg = AcpiConfig {
        num_cpus: 2,
        mmio_devices: &devs,
        serial: true,
    };
    let rsdp = create_acpi_tables(&mem, &cfg).unwrap();
    let dsdt = walk(&mem, rsdp).dsdt_addr;
    // Flip one AML byte: the checksum no longer holds and the walk must fail.
    let b: u8 = mem.read_obj(GuestAddress(dsdt + 40)).unwrap();
    mem.write_obj(b ^ 1, GuestAddress(dsdt + 40)).unwrap();
    let r = std::panic::catch_unwind(|| walk(&mem, rsdp));
    assert!(r.is_err());
}

#[test]
fn zero_cpus_is_an_error() {
    let cfg = AcpiConfig {
        num_cpus: 0,
        mmio_devices: &[],
        serial: true,
    };
    assert!(matches!(
        create_acpi_tables(&guest_memory(), &cfg),
        Err(AcpiError::NoCpus)
    ));
}

#[test]
fn tables_that_do_not_fit_are_an_error_and_write_nothing() {
    let devs = devices(3000);
    let cfg = AcpiConfig {
        num_cpus: 1,
        mmio_devices: &devs,
        serial: true,
    };
    let mem = guest_memory();
    let err = create_acpi_tables(&mem, &cfg).unwrap_err();
    assert!(matches!(err, AcpiError::TooLarge { .. }), "{err}");
    let mut rsdp = [0u8; 8];
    mem.read_slice(&mut rsdp, GuestAddress(RSDP_START)).unwrap();
    assert_eq!(rsdp, [0; 8]);
}

#[test]
fn mmio_window_above_4g_is_an_error() {
    for (addr, len) in [
        (0xffff_f000, 0x2000),
        (1 << 32, 0x1000),
        (VIRTIO_MMIO_START, 0),
    ] {
        let devs = [MmioDeviceInfo { addr, len, irq: 5 }];
        let cfg = AcpiConfig {
            num_cpus: 1,
            mmio_devices: &devs,
            serial: false,
        };
        let err = create_acpi_tables(&guest_memory(), &cfg).unwrap_err();
        assert!(
            matches!(err, AcpiError::MmioOutOfRange { index: 0, .. }),
            "{err}"
        );
    }
}

#[test]
fn memory_without_the_acpi_area_is_an_error() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x8_0000)]).unwrap();
    let cfg = AcpiConfig {
        num_cpus: 1,
        mmio_devices: &[],
        serial: false,
    };
    let err = create_acpi_tables(&mem, &cfg).unwrap_err();
    assert!(matches!(err, AcpiError::GuestMemory { .. }), "{err}");
}
