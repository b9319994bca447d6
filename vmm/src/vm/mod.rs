//! A VM: the KVM VM, guest memory, devices and vCPU threads, from creation to teardown.

pub mod irq_routing;
pub mod memory;
pub mod vcpu;
pub mod virtio;

use crate::boot::acpi::MmioDeviceInfo;
use crate::boot::layout::*;
use crate::boot::{cpuid, msrs, payload, regs};
use crate::config::{SerialMode, VmConfig};
use devices::acpi_pm::AcpiPm;
use devices::bus::{BusError, PioBus, PioDevice};
use devices::i8042::I8042;
use devices::mmio_bus::MmioBus;
use devices::serial::{SerialCounters, SerialDevice};
use devices::GuestEventHandler;
use kvm_ioctls::{Kvm, VmFd};
use memory::GuestMemoryMmap;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vcpu::{VcpuContext, VcpuFailureHandler, VcpuHandle};
use virtio::VirtioDevices;
use vmm_sys_util::eventfd::EventFd;

/// How long a vCPU may take to park or stop before we call it stuck.
const VCPU_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// VM errors, outermost layer of the VM's life.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot open /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("cannot {what}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("guest memory")]
    Memory(#[from] memory::MemoryError),
    #[error("cannot load the payload")]
    Payload(#[from] payload::PayloadError),
    #[error("cannot set up boot registers")]
    Regs(#[from] regs::RegsError),
    #[error("cannot set up CPUID")]
    Cpuid(#[from] cpuid::CpuidError),
    #[error("cannot set up MSRs")]
    Msrs(#[from] msrs::MsrError),
    #[error("cannot wire device")]
    Bus(#[from] BusError),
    #[error("cannot open serial output {path}")]
    SerialFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("vCPU")]
    Vcpu(#[from] vcpu::VcpuError),
    #[error("cannot set up virtio devices")]
    Virtio(#[from] virtio::VirtioSetupError),
}

impl VmError {
    /// Whether the caller's config or files are at fault rather than the VMM.
    pub fn is_input_error(&self) -> bool {
        match self {
            VmError::Payload(p) => p.is_input_error(),
            VmError::Virtio(v) => v.is_input_error(),
            _ => false,
        }
    }
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// A created VM; its vCPUs run once [`Vm::start`] is called.
pub struct Vm {
    // Field order matters for drop: vCPU threads stop before the VM fd and memory go away.
    vcpus: Vec<VcpuHandle>,
    pending: Vec<VcpuContext>,
    // After the vCPUs (nothing can reach a device any more), before the VM fd and memory.
    virtio: VirtioDevices,
    serial_counters: Option<Arc<SerialCounters>>,
    _vm_fd: VmFd,
    memory: GuestMemoryMmap,
}

impl Vm {
    /// Creates the KVM VM, its memory and devices, loads the payload and sets every vCPU up.
    /// `guest_events` receives power-off and reset requests; `on_failure` a vCPU that died.
    pub fn new(
        config: &VmConfig,
        guest_events: GuestEventHandler,
        on_failure: VcpuFailureHandler,
    ) -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let vm_fd = kvm.create_vm().map_err(kvm_err("create the VM"))?;
        // The TSS and identity map pages sit just below the BIOS area, inside the MMIO hole.
        vm_fd
            .set_tss_address(0xfffb_d000)
            .map_err(kvm_err("set the TSS address"))?;
        vm_fd
            .set_identity_map_address(0xfffb_c000)
            .map_err(kvm_err("set the identity map address"))?;
        vm_fd
            .create_irq_chip()
            .map_err(kvm_err("create the in-kernel irqchip"))?;
        irq_routing::setup_pc_routing(&vm_fd).map_err(kvm_err("set GSI routing"))?;
        let pit = kvm_bindings::kvm_pit_config {
            flags: kvm_bindings::KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm_fd
            .create_pit2(pit)
            .map_err(kvm_err("create the in-kernel PIT"))?;

        let mem_size = config.memory.size;
        let memory = memory::create_guest_memory(mem_size)?;
        memory::register_memory(&vm_fd, &memory, false)?;

        let (pio, serial_counters) = build_pio_bus(&vm_fd, config, guest_events.clone())?;
        let pio = Arc::new(pio);

        let virtio = VirtioDevices::build(&vm_fd, &memory, config)?;
        let entry = payload::load(&memory, config, &virtio.info)?;
        regs::write_boot_tables(&memory)?;
        let cpus = config.cpus.boot_vcpus;

        let base_cpuid = cpuid::supported_cpuid(&kvm)?;
        let mut pending = Vec::with_capacity(usize::from(cpus));
        for id in 0..cpus {
            let fd = vm_fd
                .create_vcpu(u64::from(id))
                .map_err(kvm_err("create a vCPU"))?;
            let tsc_khz = fd.get_tsc_khz().ok();
            let c = cpuid::vcpu_cpuid(&base_cpuid, id, cpus, tsc_khz)?;
            fd.set_cpuid2(&c).map_err(kvm_err("set CPUID"))?;
            msrs::setup_msrs(&fd)?;
            msrs::setup_lint(&fd)?;
            regs::setup_fpu(&fd)?;
            // Application processors wait for INIT/SIPI from the guest, as on a PC.
            if id == 0 {
                regs::setup_boot_vcpu(&fd, entry)?;
            }
            pending.push(VcpuContext {
                id,
                fd,
                pio: pio.clone(),
                mmio: virtio.bus.clone(),
                guest_events: guest_events.clone(),
                on_failure: on_failure.clone(),
            });
        }
        Ok(Vm {
            vcpus: Vec::new(),
            pending,
            virtio,
            serial_counters,
            _vm_fd: vm_fd,
            memory,
        })
    }

    /// Starts every vCPU thread.
    pub fn start(&mut self) -> Result<(), VmError> {
        for ctx in self.pending.drain(..) {
            self.vcpus.push(VcpuHandle::spawn(ctx, false)?);
        }
        Ok(())
    }

    /// Parks every vCPU.
    pub fn pause(&self) -> Result<(), VmError> {
        for v in &self.vcpus {
            v.pause(VCPU_STOP_TIMEOUT)?;
        }
        Ok(())
    }

    /// Lets every vCPU run again.
    pub fn resume(&self) {
        for v in &self.vcpus {
            v.resume();
        }
    }

    /// Stops and joins every vCPU thread, then every device worker thread.
    pub fn stop(&mut self) -> Result<(), VmError> {
        for v in &mut self.vcpus {
            v.stop(VCPU_STOP_TIMEOUT)?;
        }
        self.vcpus.clear();
        self.virtio.shutdown();
        Ok(())
    }

    /// The virtio-mmio bus (what the vCPUs see in the device windows).
    pub fn mmio_bus(&self) -> &Arc<MmioBus> {
        &self.virtio.bus
    }

    /// Where the virtio devices are, as ACPI and the command line announce them.
    pub fn virtio_devices(&self) -> &[MmioDeviceInfo] {
        &self.virtio.info
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// Counters for `vm.counters`: one map per vCPU and per device.
    pub fn counters(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        let mut out = BTreeMap::new();
        for v in &self.vcpus {
            let c = &v.shared.counters;
            let m = [
                ("exits", c.exits.load(Ordering::Relaxed)),
                ("io_exits", c.io_exits.load(Ordering::Relaxed)),
                ("mmio_exits", c.mmio_exits.load(Ordering::Relaxed)),
                ("unhandled_mmio", c.unhandled_mmio.load(Ordering::Relaxed)),
                ("unhandled_io", c.unhandled_io.load(Ordering::Relaxed)),
            ];
            out.insert(
                format!("vcpu{}", v.id),
                m.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            );
        }
        for (id, c) in &self.virtio.net_counters {
            out.insert(
                format!("net_{id}"),
                c.snapshot()
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            );
        }
        if let Some(s) = &self.serial_counters {
            let m = [
                ("tx_bytes", s.tx_bytes.load(Ordering::Relaxed)),
                ("tx_lost_bytes", s.tx_lost_bytes.load(Ordering::Relaxed)),
            ];
            out.insert(
                "serial".to_string(),
                m.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            );
        }
        out
    }
}

fn serial_output(config: &VmConfig) -> Result<Box<dyn std::io::Write + Send>, VmError> {
    Ok(match (config.serial.mode, &config.serial.file) {
        (SerialMode::Tty, _) => Box::new(std::io::stdout()),
        (SerialMode::File, Some(p)) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|source| VmError::SerialFile {
                    path: p.display().to_string(),
                    source,
                })?,
        ),
        _ => Box::new(std::io::sink()),
    })
}

fn build_pio_bus(
    vm_fd: &VmFd,
    config: &VmConfig,
    guest_events: GuestEventHandler,
) -> Result<(PioBus, Option<Arc<SerialCounters>>), VmError> {
    let mut bus = PioBus::new();
    let mut serial_counters = None;
    if config.serial.mode != SerialMode::Off {
        let irq = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).map_err(VmError::EventFd)?;
        vm_fd
            .register_irqfd(&irq, SERIAL_IRQ)
            .map_err(kvm_err("register the serial irqfd"))?;
        let counters = Arc::new(SerialCounters::default());
        let dev = SerialDevice::new(irq, serial_output(config)?, counters.clone());
        bus.insert(SERIAL_PORT, 8, shared(dev))?;
        serial_counters = Some(counters);
    }
    bus.insert(
        I8042_DATA_PORT,
        1,
        shared(I8042::new(guest_events.clone(), false)),
    )?;
    bus.insert(
        I8042_COMMAND_PORT,
        1,
        shared(I8042::new(guest_events.clone(), true)),
    )?;
    bus.insert(
        ACPI_PM_PORT,
        3,
        shared(AcpiPm::new(guest_events, ACPI_S5_SLP_TYP, ACPI_RESET_VALUE)),
    )?;
    Ok((bus, serial_counters))
}

fn shared<D: PioDevice + 'static>(d: D) -> Arc<Mutex<dyn PioDevice>> {
    Arc::new(Mutex::new(d))
}
