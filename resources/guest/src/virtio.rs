//! The virtio-mmio devices: found on the kernel command line, where the VMM
//! puts `virtio_mmio.device=<size>@<addr>:<irq>` for each (Linux's syntax; it
//! also lists them in the DSDT, which would need an AML parser), opened with
//! virtio-drivers' MMIO transport, and their IOAPIC pins routed to the BSP.

use core::mem::MaybeUninit;
use core::ptr::NonNull;

use virtio_drivers::device::blk::VirtIOBlk;
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
use virtio_drivers::transport::{DeviceType, Transport};

use crate::dma::GuestHal;
use crate::net::nic::Nic;
use crate::once::Once;
use crate::{idt, ioapic, lapic, say};

/// The transport every driver here runs on.
pub type MmioBus = MmioTransport<'static>;
pub type Disk = VirtIOBlk<GuestHal, MmioBus>;

/// Disks we drive; more on the command line are reported and ignored.
pub const MAX_DISKS: usize = 8;
/// NICs we drive (each has its own frame buffers, socket buffers and
/// smoltcp interface, all static); more are reported and ignored.
pub const MAX_NICS: usize = 2;

/// A `virtio_mmio.device=` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub addr: u64,
    pub size: u64,
    pub irq: u32,
}

/// The windows the command line announces, in order (the VMM's device order,
/// so the first disk is the first `--disk`).  Malformed entries are skipped.
pub fn windows(cmdline: &str) -> impl Iterator<Item = Window> + '_ {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|w| w.strip_prefix("virtio_mmio.device="))
        .filter_map(parse_window)
}

/// `<size>@<addr>:<irq>`, e.g. `4K@0xd0000000:5`.
fn parse_window(text: &str) -> Option<Window> {
    let (size, rest) = text.split_once('@')?;
    let (addr, irq) = rest.split_once(':')?;
    // Linux allows `:<irq>:<id>`; the platform-device id is of no use here.
    let irq = irq.split(':').next()?;
    Some(Window {
        addr: parse_number(addr)?,
        size: parse_size(size)?,
        irq: parse_number(irq)?.try_into().ok()?,
    })
}

/// Decimal or 0x-prefixed hex.
fn parse_number(text: &str) -> Option<u64> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// A number with an optional K/M/G suffix (memparse).
fn parse_size(text: &str) -> Option<u64> {
    let (digits, shift) = match text.as_bytes().last()? {
        b'K' | b'k' => (&text[..text.len() - 1], 10),
        b'M' | b'm' => (&text[..text.len() - 1], 20),
        b'G' | b'g' => (&text[..text.len() - 1], 30),
        _ => (text, 0),
    };
    parse_number(digits)?.checked_mul(1 << shift)
}

/// The devices a network workload uses.  They stay here (a static) for good:
/// dropping a virtio-drivers driver resets its queues and waits for
/// QueueReady to read 0, which our VMM does not do after DRIVER_OK, so a
/// drop would hang.
pub struct Devices {
    /// NICs in command-line order.  Their IRQs are not routed yet: the
    /// network stack routes those of the NICs it configures (`route`), so an
    /// unconfigured NIC never wakes the CPU.
    pub nics: [Option<Nic>; MAX_NICS],
    /// The IOAPIC pin of each NIC.
    pub nic_irqs: [u32; MAX_NICS],
    pub nic_count: usize,
    /// Disks in command-line order.
    pub disks: [Option<Disk>; MAX_DISKS],
    pub disk_count: usize,
}

/// The MMIO hole the page tables map uncached (see `asm/paging.s`): device
/// registers must not be cached.
const MMIO_HOLE: core::ops::Range<u64> = 0xc000_0000..0x1_0000_0000;

fn open(w: &Window) -> Option<MmioBus> {
    let end = w.addr.checked_add(w.size)?;
    if w.addr < MMIO_HOLE.start || end > MMIO_HOLE.end || !w.addr.is_multiple_of(4096) {
        say!(
            "tandem-guest: warning: virtio window {:#x}+{:#x} is outside the MMIO hole; ignored",
            w.addr,
            w.size
        );
        return None;
    }
    let header = NonNull::new(w.addr as *mut VirtIOHeader)?;
    // SAFETY: the window lies in the uncached, identity-mapped MMIO hole, the
    // VMM put a virtio-mmio register block (and its config space) there, and
    // each window is opened once, so the transport's pointer is unique.
    match unsafe { MmioTransport::new(header, w.size as usize) } {
        Ok(t) => Some(t),
        Err(e) => {
            say!("tandem-guest: warning: virtio window {:#x}: {}", w.addr, e);
            None
        }
    }
}

/// The drivers (several KiB of queue bookkeeping) live here rather than on
/// the 32 KiB ring-3 stack.
static DEVICES: Once<MaybeUninit<Devices>> = Once::uninit();

/// Open every announced device we have a driver for and route its IRQ to
/// `idt::VEC_DEVICE` on this CPU (the BSP, where the network stack runs) —
/// except the NICs', which the stack routes (see `Devices::nics`).  Call once.
pub fn probe(cmdline: &str) -> &'static mut Devices {
    let devices = DEVICES.put(Devices {
        nics: [const { None }; MAX_NICS],
        nic_irqs: [0; MAX_NICS],
        nic_count: 0,
        disks: [const { None }; MAX_DISKS],
        disk_count: 0,
    });
    for w in windows(cmdline) {
        let Some(transport) = open(&w) else { continue };
        let kind = transport.device_type();
        let routed = match kind {
            DeviceType::Block if devices.disk_count < MAX_DISKS => match Disk::new(transport) {
                Ok(mut disk) => {
                    // The workloads wait for the disk by polling its used ring
                    // (its requests are short); an interrupt per request would
                    // only cost ~30 µs of ring 0.
                    disk.disable_interrupts();
                    devices.disks[devices.disk_count] = Some(disk);
                    devices.disk_count += 1;
                    true
                }
                Err(e) => {
                    say!("tandem-guest: warning: virtio-blk at {:#x}: {}", w.addr, e);
                    false
                }
            },
            DeviceType::Network if devices.nic_count < MAX_NICS => {
                match Nic::new(transport, devices.nic_count) {
                    Ok(nic) => {
                        devices.nics[devices.nic_count] = Some(nic);
                        devices.nic_irqs[devices.nic_count] = w.irq;
                        devices.nic_count += 1;
                        // Routed once the stack knows whether it uses this NIC.
                        false
                    }
                    Err(e) => {
                        say!("tandem-guest: warning: virtio-net at {:#x}: {}", w.addr, e);
                        false
                    }
                }
            }
            _ => {
                say!(
                    "tandem-guest: warning: virtio {:?} at {:#x} not used",
                    kind,
                    w.addr
                );
                false
            }
        };
        if routed {
            route(w.irq);
        }
    }
    devices
}

/// Deliver a device's IRQ to `idt::VEC_DEVICE` on this CPU (the BSP).
pub fn route(irq: u32) {
    if !ioapic::route(irq, idt::VEC_DEVICE, lapic::id()) {
        say!(
            "tandem-guest: warning: virtio irq {} has no IOAPIC pin; polling on the tick",
            irq
        );
    }
}
