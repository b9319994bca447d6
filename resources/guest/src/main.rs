//! tandem-guest: Tandem's built-in test guest.
//!
//! Booted like a Linux vmlinux.  Under KVM on PVM every ring-0 instruction is
//! emulated (~1 µs each), so ring 0 only sets up paging, GDT/TSS/IDT and
//! drops to ring 3 (asm in `src/asm/`); everything else — ACPI, LAPIC and
//! IOAPIC programming, AP start-up, serial output, workloads — runs in ring 3
//! at native speed on a user-accessible identity map.  Ring 3 enters ring 0
//! only for interrupts and for the privileged instructions it executes (HLT
//! to idle, port I/O), which trap to #GP and are emulated there (see `sys`).

//!
//! Memory map (physical == virtual):
//! * 0x7000 zero page, 0x20000 command line, 0x8ff0 boot stack, boot page
//!   tables — the VMM's; read (zero page, e820, cmdline) and then unused.
//! * 0x10000..0x10fff: AP trampoline, copied there by the BSP.
//! * 0xe0000..0xfffff: scanned for the RSDP when the zero page has none.
//! * 0x200000: the image — text, rodata, data; then `.noinit` (per-CPU
//!   blocks with ring-0 stacks, ring-3 stacks, page tables: ring 0 fills
//!   them) and `.bss` (cleared by ring 3 at boot); ends at `__image_end`.
//! * Free RAM above `__image_end`: the `dirty` workload's working set.
//!   (The network workloads' DMA pool, frame and socket buffers are statics
//!   in `.bss`.)
//! * 0xd0000000 + i * 0x1000: virtio-mmio devices, as `virtio_mmio.device=`
//!   on the command line says.
//! * 0xfec00000 IOAPIC, 0xfee00000 LAPIC: mapped uncached and user-accessible.

#![no_std]
#![no_main]

mod acpi;
mod bootparams;
mod cmdline;
mod dma;
mod entry;
mod gdt;
mod idt;
mod ioapic;
mod lapic;
mod logger;
mod mem;
mod net;
mod once;
mod paging;
mod serial;
mod smp;
mod sys;
mod time;
mod virtio;
mod workloads;

use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use cmdline::Workload;

/// The most CPUs we bring up (per-CPU blocks and stacks are static).
pub const MAX_CPUS: usize = 64;
/// LAPIC timer rate: it only wakes idle CPUs; each tick costs ~30 µs of ring 0.
const TIMER_HZ: u32 = 100;
/// How long the BSP waits for the APs.
const AP_TIMEOUT_MS: u64 = 5_000;

/// Set by the BSP once every CPU is online and the workload is chosen.
static GO: AtomicBool = AtomicBool::new(false);
/// The CPUs that came online (the workload's CPU count).
static CPUS_ONLINE: AtomicUsize = AtomicUsize::new(1);
/// Bus kHz for the LAPIC timer, set by the BSP before the APs start.
static BUS_KHZ: AtomicUsize = AtomicUsize::new(0);

/// The BSP in ring 3 (from `ring3_bsp_entry`, after `.bss` is cleared).
#[no_mangle]
extern "C" fn bsp_main() -> ! {
    idt::init(); // first, so faults from here on are reported
    let info = entry::ring0_info();
    bootparams::capture(info.boot_params);
    let boot = bootparams::get();

    lapic::enable();
    ioapic::mask_all();
    let tsc_source = time::init(info.tsc_khz);
    let bus_khz = if info.bus_khz != 0 { info.bus_khz } else { lapic::DEFAULT_BUS_KHZ };
    BUS_KHZ.store(bus_khz as usize, Ordering::Relaxed);

    let cpus = acpi::find_cpus(boot.rsdp, info.mapped_bytes, lapic::id());
    say!(
        "tandem-guest: boot cpus={} mem={}MiB cmdline=\"{}\"",
        cpus.count,
        boot.ram_bytes() >> 20,
        boot.cmdline()
    );
    say!(
        "tandem-guest: tsc {} kHz ({}), lapic bus {} kHz, {} pages, {} MiB mapped",
        time::tsc_hz() / 1000,
        match tsc_source {
            time::TscSource::Cpuid => "cpuid",
            time::TscSource::Pit => "pit",
        },
        bus_khz,
        if info.has_1g != 0 { "1GiB" } else { "2MiB" },
        info.mapped_bytes >> 20
    );

    lapic::start_timer(bus_khz, TIMER_HZ);
    say!("tandem-guest: cpu 0 online");
    smp::ONLINE.store(1, Ordering::Release);

    let online = smp::start_aps(&cpus, AP_TIMEOUT_MS);
    if online < cpus.count {
        say!("tandem-guest: warning: only {} of {} cpus came online", online, cpus.count);
    }
    CPUS_ONLINE.store(online, Ordering::Relaxed);
    if cpus.count > 1 && gdt::ticks(0) == 0 {
        // AP start-up took >= 10 ms, so a working 100 Hz timer has ticked.
        say!("tandem-guest: warning: no LAPIC timer ticks; idle CPUs will not wake");
    }

    let workload = match cmdline::workload(boot.cmdline()) {
        Ok(w) => w,
        Err(text) => {
            say!("tandem-guest: error: bad workload '{}'", text);
            Workload::Idle
        }
    };
    workloads::prepare(workload, online);
    GO.store(true, Ordering::Release);
    if !workloads::says_ready(workload) {
        say!("tandem-guest: ready");
    }
    workloads::run(workload, 0, online)
}

/// An AP in ring 3 (from `ring3_ap_entry`).
#[no_mangle]
extern "C" fn ap_main(cpu: usize) -> ! {
    lapic::enable();
    lapic::start_timer(BUS_KHZ.load(Ordering::Relaxed) as u32, TIMER_HZ);
    say!("tandem-guest: cpu {} online", cpu);
    smp::ONLINE.fetch_add(1, Ordering::AcqRel);
    while !GO.load(Ordering::Acquire) {
        sys::idle_wait();
    }
    let online = CPUS_ONLINE.load(Ordering::Relaxed);
    if cpu >= online {
        // Came up after the BSP gave up waiting: not part of the workload.
        workloads::idle::run()
    }
    workloads::run(workloads::current(), cpu, online)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    serial::print_line_forced(format_args!("tandem-guest: panic: {}", info));
    sys::halt_cpu()
}

/// Precompiled `core` (built with unwinding) refers to this symbol; with
/// `panic = "abort"` nothing unwinds, so it is never called.  LTO in the
/// release profile drops the reference; unoptimised builds need the symbol.
#[no_mangle]
extern "C" fn rust_eh_personality() {}
