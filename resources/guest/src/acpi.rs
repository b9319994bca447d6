//! CPU discovery: RSDP → XSDT (or RSDT) → MADT, counting enabled local APICs.
//! Anything missing or corrupt means one CPU.

use crate::MAX_CPUS;

/// The CPUs to run on: APIC IDs in MADT order.
pub struct Cpus {
    pub apic_ids: [u8; MAX_CPUS],
    pub count: usize,
}

impl Cpus {
    pub fn ids(&self) -> &[u8] {
        &self.apic_ids[..self.count]
    }
}

fn byte(addr: u64) -> u8 {
    // SAFETY: callers pass addresses inside ACPI tables or the BIOS area,
    // which lie in identity-mapped RAM.
    unsafe { (addr as *const u8).read_volatile() }
}

fn u32_at(addr: u64) -> u32 {
    u32::from_le_bytes([byte(addr), byte(addr + 1), byte(addr + 2), byte(addr + 3)])
}

fn u64_at(addr: u64) -> u64 {
    u32_at(addr) as u64 | (u32_at(addr + 4) as u64) << 32
}

fn checksum_ok(addr: u64, len: u64) -> bool {
    (0..len).fold(0u8, |sum, i| sum.wrapping_add(byte(addr + i))) == 0
}

fn signature_is(addr: u64, sig: &[u8]) -> bool {
    sig.iter().enumerate().all(|(i, &b)| byte(addr + i as u64) == b)
}

/// The RSDP from the zero page, else from a scan of the BIOS area.
fn find_rsdp(hint: u64, mapped: u64) -> Option<u64> {
    let valid = |a: u64| a != 0 && a + 36 <= mapped && signature_is(a, b"RSD PTR ") && checksum_ok(a, 20);
    if valid(hint) {
        return Some(hint);
    }
    (0xe0000..0x100000u64).step_by(16).find(|&a| valid(a))
}

/// A system description table at `addr` with signature `sig`, if intact.
fn table(addr: u64, sig: &[u8; 4], mapped: u64) -> Option<(u64, u64)> {
    if addr == 0 || addr + 36 > mapped || !signature_is(addr, sig) {
        return None;
    }
    let len = u32_at(addr + 4) as u64;
    (len >= 36 && addr + len <= mapped && checksum_ok(addr, len)).then_some((addr, len))
}

fn find_madt(rsdp: u64, mapped: u64) -> Option<(u64, u64)> {
    let revision = byte(rsdp + 15);
    // ACPI 2+: the XSDT has 64-bit entries; ACPI 1: the RSDT has 32-bit ones.
    let (root, entry_size) = if revision >= 2 {
        (table(u64_at(rsdp + 24), b"XSDT", mapped), 8)
    } else {
        (table(u32_at(rsdp + 16) as u64, b"RSDT", mapped), 4)
    };
    let (root, len) = root?;
    (36..len).step_by(entry_size).find_map(|off| {
        let entry = if entry_size == 8 { u64_at(root + off) } else { u32_at(root + off) as u64 };
        table(entry, b"APIC", mapped)
    })
}

/// Enabled processor-local-APIC entries of the MADT; `bsp_apic_id` first.
pub fn find_cpus(rsdp_hint: u64, mapped: u64, bsp_apic_id: u8) -> Cpus {
    let mut cpus = Cpus { apic_ids: [0; MAX_CPUS], count: 1 };
    cpus.apic_ids[0] = bsp_apic_id;
    let Some(rsdp) = find_rsdp(rsdp_hint, mapped) else {
        return cpus;
    };
    let Some((madt, len)) = find_madt(rsdp, mapped) else {
        return cpus;
    };
    const LOCAL_APIC: u8 = 0;
    const ENABLED: u32 = 1;
    let mut off = 44; // header (36) + local APIC address (4) + flags (4)
    while off + 2 <= len {
        let kind = byte(madt + off);
        let entry_len = byte(madt + off + 1) as u64;
        if entry_len < 2 || off + entry_len > len {
            break;
        }
        if kind == LOCAL_APIC && entry_len >= 8 && u32_at(madt + off + 4) & ENABLED != 0 {
            let apic_id = byte(madt + off + 3);
            if apic_id != bsp_apic_id && cpus.count < MAX_CPUS {
                cpus.apic_ids[cpus.count] = apic_id;
                cpus.count += 1;
            }
        }
        off += entry_len;
    }
    cpus
}
