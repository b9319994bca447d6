//! A VM: the KVM VM, guest memory, devices and vCPU threads, from creation to teardown.

pub mod bell;
mod capture;
pub mod counters;
pub mod handlers;
pub mod internal_error;
pub mod irq_routing;
pub mod memory;
pub mod park;
pub mod vcpu;
pub mod virtio;

use crate::boot::acpi::MmioDeviceInfo;
use crate::boot::layout::*;
use crate::boot::{cpuid, msrs, payload, regs};
use crate::config::{SerialMode, VmConfig};
use crate::state::memory::{DirtyBitmap, MemorySaveStats, MemoryStateError};
use crate::state::vcpu::{VcpuState, VcpuStateError, VcpuStateInfo};
use crate::state::vm::KvmVmStateError;
use crate::state::{CaptureTimes, DevicesState, VmSnapshot};
use devices::acpi_pm::AcpiPm;
use devices::bus::{BusError, PioBus, PioDevice};
use devices::i8042::I8042;
use devices::mmio_bus::MmioBus;
use devices::serial::{SerialCounters, SerialDevice, SerialRestoreError, SerialSnapshot};
use devices::GuestEventHandler;
use handlers::VmHandlers;
use kvm_ioctls::{Kvm, VmFd};
use memory::GuestMemoryMmap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vcpu::{VcpuContext, VcpuHandle};
use virtio::VirtioDevices;
use vmm_sys_util::eventfd::EventFd;

/// How long a vCPU may take to park or stop before we call it stuck.
const VCPU_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// VM errors, outermost layer of the VM's life.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// `/dev/kvm` cannot be opened (no KVM, or no permission).
    #[error("cannot open /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// A KVM ioctl failed while building or wiring the VM.
    #[error("cannot {what}")]
    Kvm {
        /// What the VMM was doing, as a verb phrase (`create the VM`).
        what: &'static str,
        /// What KVM said.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Guest RAM cannot be mapped or registered.
    #[error("guest memory")]
    Memory(#[from] memory::MemoryError),
    /// The kernel, initramfs or built-in guest cannot be loaded.
    #[error("cannot load the payload")]
    Payload(#[from] payload::PayloadError),
    /// The boot vCPU's registers cannot be set.
    #[error("cannot set up boot registers")]
    Regs(#[from] regs::RegsError),
    /// A vCPU's CPUID cannot be set.
    #[error("cannot set up CPUID")]
    Cpuid(#[from] cpuid::CpuidError),
    /// A vCPU's MSRs cannot be set.
    #[error("cannot set up MSRs")]
    Msrs(#[from] msrs::MsrError),
    /// A device's ports or MMIO window clash with another's.
    #[error("cannot wire device")]
    Bus(#[from] BusError),
    /// The `serial.file` cannot be opened for appending.
    #[error("cannot open serial output {path}")]
    SerialFile {
        /// The file as the config names it.
        path: String,
        /// What `open(2)` said.
        #[source]
        source: std::io::Error,
    },
    /// Creating an interrupt or exit eventfd failed.
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    /// Creating, starting or stopping a vCPU thread failed.
    #[error("vCPU")]
    Vcpu(#[from] vcpu::VcpuError),
    /// A disk or NIC cannot be built or wired.
    #[error("cannot set up virtio devices")]
    Virtio(#[from] virtio::VirtioSetupError),
    /// A vCPU's state cannot be captured or restored.
    #[error("vCPU state")]
    VcpuState(#[from] VcpuStateError),
    /// The VM-wide KVM state (irqchip, PIT, clock) cannot be captured or restored.
    #[error("VM-wide KVM state")]
    KvmState(#[from] KvmVmStateError),
    /// Guest memory cannot be saved or restored.
    #[error("guest memory state")]
    MemoryState(#[from] MemoryStateError),
    /// The saved serial port state cannot be restored.
    #[error("serial port state")]
    SerialState(#[from] SerialRestoreError),
    /// A virtio device's saved state cannot be taken or restored.
    #[error("virtio device state")]
    VirtioState(#[from] virtio::VirtioStateError),
    /// A saved state does not fit the config (memory size, vCPU count or order differ).
    #[error("snapshot does not fit the config: {0}")]
    Mismatch(String),
    /// A vCPU (the first number) did not stop and report its state within the time (the second).
    #[error("vCPU {0} did not report its state within {1:?}")]
    CaptureTimeout(u8, Duration),
}

impl VmError {
    /// Whether the caller's config or files are at fault rather than the VMM.
    pub fn is_input_error(&self) -> bool {
        match self {
            VmError::Payload(p) => p.is_input_error(),
            VmError::Virtio(v) => v.is_input_error(),
            // Restoring a snapshot the caller gave us: its contents are input.
            VmError::VcpuState(_)
            | VmError::KvmState(_)
            | VmError::SerialState(_)
            | VmError::VirtioState(_)
            | VmError::Mismatch(_) => true,
            VmError::MemoryState(m) => !matches!(m, MemoryStateError::Guest(..)),
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
    /// Wakes the parked vCPU threads, all at once.
    bell: Arc<bell::ParkBell>,
    // After the vCPUs (nothing can reach a device any more), before the VM fd and memory.
    virtio: VirtioDevices,
    serial_counters: Option<Arc<SerialCounters>>,
    serial: Option<Arc<Mutex<SerialDevice>>>,
    /// Saveable MSRs and XSAVE size, found once so capture is only the reads.
    state_info: Arc<VcpuStateInfo>,
    /// vCPU state reads started before the capture that collects them.
    early_capture: capture::Early,
    /// KVM leaves reported dirty pages writable until told otherwise
    /// (`state::memory::enable_manual_protect`).
    manual_protect: bool,
    vm_fd: VmFd,
    memory: GuestMemoryMmap,
}

impl Vm {
    /// Creates the KVM VM, its memory and devices, loads the payload and sets every vCPU up.
    /// Its threads report guest events, vCPU failures and device activations to `handlers`.
    pub fn new(config: &VmConfig, handlers: VmHandlers) -> Result<Self, VmError> {
        Self::build(config, handlers, None, None)
    }

    /// Creates the VM with its vCPUs, devices or payload set up either for a fresh boot
    /// (`restore` None) or to take a snapshot's state (the payload is not loaded).
    fn build(
        config: &VmConfig,
        handlers: VmHandlers,
        restore: Option<&DevicesState>,
        memory: Option<GuestMemoryMmap>,
    ) -> Result<Self, VmError> {
        let VmHandlers {
            guest_events,
            on_failure,
            activate,
        } = handlers;
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let vm_fd = kvm.create_vm().map_err(kvm_err("create the VM"))?;
        let manual_protect = crate::state::memory::enable_manual_protect(&vm_fd);
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

        let memory = match memory {
            Some(m) => m,
            None => memory::create_guest_memory(config.memory.size)?,
        };
        memory::register_memory(&vm_fd, &memory, false)?;

        let saved_serial = restore.and_then(|d| d.serial.as_ref());
        let (pio, serial) = build_pio_bus(&vm_fd, config, guest_events.clone(), saved_serial)?;
        let serial_counters = serial.as_ref().map(|s| s.1.clone());
        let serial = serial.map(|s| s.0);
        let pio = Arc::new(pio);

        let virtio = VirtioDevices::build(&vm_fd, &memory, config, &activate)?;
        let entry = match restore {
            Some(d) => {
                virtio.restore(&d.virtio)?;
                None
            }
            None => {
                let entry = payload::load(&memory, config, &virtio.info)?;
                regs::write_boot_tables(&memory)?;
                Some(entry)
            }
        };
        let cpus = config.cpus.boot_vcpus;

        let base_cpuid = cpuid::supported_cpuid(&kvm)?;
        let mut pending = Vec::with_capacity(usize::from(cpus));
        let bell = Arc::new(bell::ParkBell::default());
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
            if let (0, Some(entry)) = (id, entry) {
                regs::setup_boot_vcpu(&fd, entry)?;
            }
            pending.push(VcpuContext {
                id,
                fd,
                pio: pio.clone(),
                mmio: virtio.bus.clone(),
                guest_events: guest_events.clone(),
                on_failure: on_failure.clone(),
                bell: bell.clone(),
            });
        }
        let early_capture = capture::Early::new(pending.len());
        let state_info = match pending.first() {
            Some(ctx) => crate::state::vcpu::state_info(&kvm, &vm_fd, &ctx.fd)?,
            None => VcpuStateInfo::default(),
        };
        Ok(Vm {
            vcpus: Vec::new(),
            pending,
            bell,
            virtio,
            serial_counters,
            serial,
            state_info: Arc::new(state_info),
            early_capture,
            manual_protect,
            vm_fd,
            memory,
        })
    }

    /// Rebuilds a VM from a snapshot whose memory is in `memory_file`; left paused.
    pub fn restore(
        config: &VmConfig,
        snapshot: &VmSnapshot,
        memory_file: &Path,
        handlers: VmHandlers,
    ) -> Result<Self, VmError> {
        let memory = memory::create_guest_memory(config.memory.size)?;
        crate::state::memory::restore(&memory, memory_file)?;
        Self::restore_with_memory(config, snapshot, memory, handlers)
    }

    /// Rebuilds a VM from `snapshot` and guest memory already filled in (by a snapshot file or a
    /// migration stream), with host resources (disk paths, taps, serial output) from `config`. Its vCPUs are left paused and its
    /// devices quiesced: [`Vm::resume`] runs it.
    pub fn restore_with_memory(
        config: &VmConfig,
        snapshot: &VmSnapshot,
        memory: GuestMemoryMmap,
        handlers: VmHandlers,
    ) -> Result<Self, VmError> {
        if snapshot.memory_size != config.memory.size {
            return Err(VmError::Mismatch(format!(
                "state has {} bytes of memory, config {}",
                snapshot.memory_size, config.memory.size
            )));
        }
        if snapshot.vcpus.len() != usize::from(config.cpus.boot_vcpus) {
            return Err(VmError::Mismatch(format!(
                "state has {} vCPUs, config {}",
                snapshot.vcpus.len(),
                config.cpus.boot_vcpus
            )));
        }
        let mut vm = Self::build(config, handlers, Some(&snapshot.devices), Some(memory))?;
        crate::state::vm::restore_irqchip(&vm.vm_fd, &snapshot.kvm)?;
        for (ctx, s) in vm.pending.iter().zip(&snapshot.vcpus) {
            if s.id != ctx.id {
                return Err(VmError::Mismatch(format!(
                    "vCPU state {} found where vCPU {} belongs",
                    s.id, ctx.id
                )));
            }
            crate::state::vcpu::restore(&ctx.fd, s, &vm.state_info)?;
        }
        crate::state::vm::restore_clock(&vm.vm_fd, &snapshot.kvm)?;
        for ctx in vm.pending.drain(..) {
            vm.vcpus.push(VcpuHandle::spawn(ctx, true)?);
        }
        // Device writes during the restore are not guest activity.
        crate::state::memory::reset_device_bitmap(&vm.memory);
        Ok(vm)
    }

    /// Starts every vCPU thread.
    pub fn start(&mut self) -> Result<(), VmError> {
        for ctx in self.pending.drain(..) {
            self.vcpus.push(VcpuHandle::spawn(ctx, false)?);
        }
        Ok(())
    }

    /// Parks every vCPU, then stops every device worker (they hand their queues back), so that
    /// nothing changes guest memory or device state until [`Vm::resume`].
    pub fn pause(&self) -> Result<(), VmError> {
        // All or none: a vCPU that does not park in time leaves every vCPU running.
        self.pause_vcpus()?;
        self.virtio.quiesce();
        Ok(())
    }

    /// Restarts the device workers, then lets every vCPU run again; returns when the vCPUs
    /// were let go (see [`Vm::resume_vcpus`]).
    pub fn resume(&self) -> Instant {
        self.virtio.resume();
        self.resume_vcpus()
    }

    /// Parks every vCPU (all kicked first, then waited for), leaving the devices running: FT's
    /// throttle takes the guest's CPU this way.
    pub fn pause_vcpus(&self) -> Result<(), VmError> {
        // All or none: a vCPU that does not park in time leaves every vCPU running.
        park::park_all(&self.vcpus, VCPU_STOP_TIMEOUT)?;
        Ok(())
    }

    /// Lets every parked vCPU run again, all with one wakeup ([`bell`]); returns the moment
    /// just before that wakeup. From then on the guest is no longer held: the calling thread's
    /// own clock, read after this returns, can be later by however long the woken vCPU threads
    /// kept it off its CPU.
    pub fn resume_vcpus(&self) -> Instant {
        // Reads started for a capture that did not happen would be stale by the next one.
        drop(self.early_capture.take());
        for v in &self.vcpus {
            v.resume_unrung();
        }
        let released = Instant::now();
        self.bell.ring();
        released
    }

    /// [`Vm::pause`] for a [`Vm::capture`] that follows at once (an FT checkpoint): every vCPU
    /// reads its own registers, FPU and MSRs the moment it parks, while the others are still
    /// stopping and this thread goes on, instead of being woken for it later (where the host
    /// has a CPU for each vCPU beside this thread; see `capture::Early::new`).
    pub fn pause_for_capture(&self) -> Result<(), VmError> {
        if !self.early_capture.enabled() {
            return self.pause();
        }
        self.early_capture.keep(capture::start(
            &self.vcpus,
            &self.bell,
            &self.state_info,
            crate::state::vcpu::capture_own,
        ));
        let paused = self.pause();
        if paused.is_err() {
            // Every vCPU runs again (all or none): what they read would be stale.
            drop(self.early_capture.take());
        }
        paused
    }

    /// Captures everything but memory; the VM must be paused ([`Vm::pause`]). After
    /// [`Vm::pause_for_capture`] it completes what the vCPUs read as they parked; otherwise the
    /// first vCPU is read from this thread (no wakeup of its parked thread), the others on
    /// their own parked threads meanwhile, in parallel.
    pub fn capture(&self) -> Result<(VmSnapshot, CaptureTimes), VmError> {
        let t0 = Instant::now();
        let deadline = t0 + VCPU_STOP_TIMEOUT;
        let mut vcpus = match self.early_capture.take() {
            Some(early) => capture::finish(early, &self.vcpus, &self.state_info, deadline)?,
            None => {
                let others = capture::start(
                    self.vcpus.iter().skip(1),
                    &self.bell,
                    &self.state_info,
                    crate::state::vcpu::capture,
                );
                let mut vcpus = Vec::with_capacity(self.vcpus.len());
                if let Some(v) = self.vcpus.first() {
                    vcpus.push(
                        v.with_fd(|fd| crate::state::vcpu::capture(fd, v.id, &self.state_info))?,
                    );
                }
                vcpus.extend(others.collect(deadline, |s: &VcpuState| s.id)?);
                vcpus
            }
        };
        vcpus.sort_by_key(|s| s.id);
        let t1 = Instant::now();
        let kvm = crate::state::vm::capture(&self.vm_fd)?;
        let t2 = Instant::now();
        let devices = DevicesState {
            serial: self
                .serial
                .as_ref()
                .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).state()),
            virtio: self.virtio.state(),
        };
        let t3 = Instant::now();
        let snapshot = VmSnapshot {
            memory_size: memory::total_size(&self.memory),
            vcpus,
            kvm,
            devices,
        };
        let times = CaptureTimes {
            vcpus: t1 - t0,
            kvm: t2 - t1,
            devices: t3 - t2,
        };
        Ok((snapshot, times))
    }

    /// Writes guest memory to `path`, zero pages as holes; the VM must be paused.
    pub fn save_memory(&self, path: &Path) -> Result<MemorySaveStats, VmError> {
        Ok(crate::state::memory::save(&self.memory, path)?)
    }

    /// Starts tracking dirty pages (KVM's log and the device bitmap), from a clean slate.
    pub fn start_dirty_log(&self) -> Result<(), VmError> {
        Ok(crate::state::memory::start_dirty_log(
            &self.vm_fd,
            &self.memory,
            self.manual_protect,
        )?)
    }

    /// Pages written since the last call or [`Vm::start_dirty_log`]; both logs are cleared.
    pub fn dirty_pages(&self) -> Result<DirtyBitmap, VmError> {
        Ok(crate::state::memory::dirty_pages(
            &self.vm_fd,
            &self.memory,
            self.manual_protect,
        )?)
    }

    /// Whether [`Vm::dirty_pages_keeping`] can leave pages writable on this KVM.
    pub fn keeps_dirty_pages(&self) -> bool {
        self.manual_protect
    }

    /// [`Vm::dirty_pages`], leaving the reported pages `keep` picks writable and dirty (see
    /// `state::memory::dirty_pages_keeping`); call it paused. On a KVM without manual
    /// protection `keep` is not asked.
    pub fn dirty_pages_keeping(
        &self,
        keep: impl FnOnce(&DirtyBitmap) -> Option<DirtyBitmap>,
    ) -> Result<DirtyBitmap, VmError> {
        Ok(crate::state::memory::dirty_pages_keeping(
            &self.vm_fd,
            &self.memory,
            self.manual_protect,
            keep,
        )?)
    }

    /// Stops KVM's dirty log (best effort: a VM that keeps logging is only slower).
    pub fn stop_dirty_log(&self) -> Result<(), VmError> {
        Ok(memory::register_memory(&self.vm_fd, &self.memory, false)?)
    }

    /// Puts every device's output behind an FT gate (`VirtioDevices::enable_ft`): pauses the VM
    /// so the gates take effect when the device workers restart, and resumes it either way.
    pub fn enable_ft(
        &self,
        setup: &devices::virtio::ft::FtSetup,
    ) -> Result<Vec<devices::virtio::ft::DeviceGate>, VmError> {
        self.pause()?;
        let gates = self.virtio.enable_ft(setup);
        self.resume();
        Ok(gates?)
    }

    /// Broadcasts a RARP for every NIC's MAC (after the VM moved to this host).
    pub fn announce(&mut self) {
        self.virtio.announce();
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

    /// Each disk's size in bytes, by device index (disks come first among virtio devices).
    pub fn disk_sizes(&self) -> &[u64] {
        &self.virtio.disk_sizes
    }

    /// Handles on the VM's counters, for readers on other threads (`vm.counters`, metrics).
    pub fn counter_source(&self) -> counters::CounterSource {
        counters::CounterSource {
            vcpus: self
                .vcpus
                .iter()
                .map(|v| (v.id, v.shared.clone()))
                .collect(),
            net: self.virtio.net_counters.clone(),
            serial: self.serial_counters.clone(),
        }
    }

    /// Counters for `vm.counters`: one map per vCPU and per device.
    pub fn counters(&self) -> counters::CounterMap {
        self.counter_source().read()
    }
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("vcpus", &self.vcpus.len())
            .finish_non_exhaustive()
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

/// COM1 as the VM keeps it: the device (for its state) and its counters.
type SerialParts = (Arc<Mutex<SerialDevice>>, Arc<SerialCounters>);

fn build_pio_bus(
    vm_fd: &VmFd,
    config: &VmConfig,
    guest_events: GuestEventHandler,
    saved_serial: Option<&SerialSnapshot>,
) -> Result<(PioBus, Option<SerialParts>), VmError> {
    let mut bus = PioBus::new();
    let mut serial = None;
    if config.serial.mode != SerialMode::Off {
        let irq = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).map_err(VmError::EventFd)?;
        vm_fd
            .register_irqfd(&irq, SERIAL_IRQ)
            .map_err(kvm_err("register the serial irqfd"))?;
        let counters = Arc::new(SerialCounters::default());
        let out = serial_output(config)?;
        let dev = match saved_serial {
            Some(s) => SerialDevice::from_state(s, irq, out, counters.clone())?,
            None => SerialDevice::new(irq, out, counters.clone()),
        };
        let dev = Arc::new(Mutex::new(dev));
        bus.insert(SERIAL_PORT, 8, dev.clone())?;
        serial = Some((dev, counters));
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
    Ok((bus, serial))
}

fn shared<D: PioDevice + 'static>(d: D) -> Arc<Mutex<dyn PioDevice>> {
    Arc::new(Mutex::new(d))
}
