//! The VM's virtio-mmio devices: disks first, then NICs, device `i` with its 4 KiB register
//! window at `VIRTIO_MMIO_START + i * 4 KiB` and its own GSI `5 + i`. KVM does the fast paths:
//! an ioeventfd per queue on QueueNotify (datamatch = queue index) wakes the device's worker
//! without a userspace exit, and an irqfd on the device's GSI raises its interrupt.
//!
//! A driver's DRIVER_OK (a vCPU's MMIO exit) does not start the device there: the transport
//! records it and this module hands a [`DeviceActivation`] to the VM's [`ActivationHandler`],
//! which sends it to the VMM thread; that thread starts the worker. So vCPU threads never create
//! threads, and their seccomp filter allows none of a worker's syscalls.

use crate::boot::acpi::MmioDeviceInfo;
use crate::boot::layout::VIRTIO_MMIO_START;
use crate::config::VmConfig;
use devices::mmio_bus::{MmioBus, MmioBusError};
use devices::virtio::block::disk::SECTOR_SIZE;
use devices::virtio::block::{Block, BlockConfig, BlockError};
use devices::virtio::ft::{DeviceGate, FtSetup};
use devices::virtio::mmio::state::{MmioSnapshot, MmioStateError};
use devices::virtio::mmio::{MmioError, MmioTransport, QUEUE_NOTIFY_OFFSET};
use devices::virtio::net::announce::{announce_in_background, Announcer};
use devices::virtio::net::{MacAddr, MacParseError, Net, NetConfig, NetCounters, NetError};
use devices::virtio::{GuestMemoryMmap, VirtioDevice, MMIO_WINDOW_SIZE};
use kvm_ioctls::{IoEventAddress, VmFd};
use std::sync::{Arc, Mutex, Weak};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// A device whose driver set DRIVER_OK, waiting to be started off the vCPU thread.
pub struct DeviceActivation {
    index: usize,
    transport: Weak<Mutex<MmioTransport>>,
}

impl DeviceActivation {
    /// Starts the device's worker on the calling thread, unless the VM is gone or something
    /// overtook the request (a reset, or a pause that will start it on resume).
    pub fn run(self) {
        if let Some(t) = self.transport.upgrade() {
            t.lock()
                .unwrap_or_else(|p| p.into_inner())
                .activate_pending();
        }
    }
}

impl std::fmt::Debug for DeviceActivation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceActivation(virtio device {})", self.index)
    }
}

/// Where a VM's transports send their activation requests (see [`DeviceActivation`]).
pub type ActivationHandler = Arc<dyn Fn(DeviceActivation) + Send + Sync>;

/// GSI of the first virtio device; 0-4 are the PIT, keyboard, cascade, COM2 and COM1.
pub const VIRTIO_FIRST_GSI: u32 = 5;

/// Why the devices could not be built.
#[derive(Debug, thiserror::Error)]
pub enum VirtioSetupError {
    /// A disk's image cannot be opened.
    #[error("disk")]
    Block(#[from] BlockError),
    /// A NIC's tap cannot be opened or set up.
    #[error("network")]
    Net(#[from] NetError),
    /// A NIC's `mac` does not parse.
    #[error("NIC {id}")]
    Mac {
        /// The NIC's id in the VM config.
        id: String,
        /// Why the MAC does not parse.
        #[source]
        source: MacParseError,
    },
    /// A device's virtio-mmio transport cannot be built.
    #[error("virtio-mmio transport")]
    Transport(#[from] MmioError),
    /// Duplicating a NIC's tap fd for its gratuitous-ARP announcer failed.
    #[error("cannot duplicate a tap fd to announce the NIC")]
    Announcer(#[source] std::io::Error),
    /// Creating a device's interrupt eventfd failed.
    #[error("cannot create an interrupt eventfd")]
    EventFd(#[source] std::io::Error),
    /// Registering a device's irqfd or queue ioeventfd with KVM failed.
    #[error("cannot register {what} of device {index} with KVM")]
    Kvm {
        /// What was being registered (`the irqfd`, `a queue ioeventfd`).
        what: &'static str,
        /// The device's index (disks first, then NICs).
        index: usize,
        /// What KVM said.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A device's MMIO window clashes with another's.
    #[error("MMIO bus")]
    Bus(#[from] MmioBusError),
    /// A device's output cannot be put behind an FT gate at `ft.enable`.
    #[error("cannot put virtio device {index} behind an FT gate")]
    Gate {
        /// The device's index (disks first, then NICs).
        index: usize,
        /// Why the gate could not be set up.
        #[source]
        source: std::io::Error,
    },
}

impl VirtioSetupError {
    /// Whether the caller's config is at fault (a disk or tap that cannot be opened, a bad MAC)
    /// rather than the VMM.
    pub fn is_input_error(&self) -> bool {
        matches!(
            self,
            VirtioSetupError::Block(_) | VirtioSetupError::Net(_) | VirtioSetupError::Mac { .. }
        )
    }
}

/// A snapshot's devices do not fit this VM's.
#[derive(Debug, thiserror::Error)]
pub enum VirtioStateError {
    /// The snapshot has another number of virtio devices than the config.
    #[error("snapshot has {saved} virtio devices, the config {ours}")]
    Count {
        /// Devices in the snapshot.
        saved: usize,
        /// Disks and NICs in the config.
        ours: usize,
    },
    /// A device refused its saved state.
    #[error("virtio device {index}")]
    Device {
        /// The device's index (disks first, then NICs).
        index: usize,
        /// Why the transport or device refused it.
        #[source]
        source: MmioStateError,
    },
}

/// The devices of one VM.
#[derive(Default)]
pub struct VirtioDevices {
    /// Routes vCPU MMIO exits to the register windows.
    pub bus: Arc<MmioBus>,
    /// What ACPI and the command line announce.
    pub info: Vec<MmioDeviceInfo>,
    transports: Vec<Arc<Mutex<MmioTransport>>>,
    /// Per-NIC frame counters, by NIC id.
    pub net_counters: Vec<(String, Arc<NetCounters>)>,
    /// One per NIC: announces its MAC on its tap after the VM moved.
    announcers: Vec<(String, Announcer)>,
    /// Each disk's size in bytes, in config order (which is their device index: disks first).
    pub disk_sizes: Vec<u64>,
}

impl VirtioDevices {
    /// Builds every device in `config` and wires it to KVM.
    pub fn build(
        vm_fd: &VmFd,
        mem: &GuestMemoryMmap,
        config: &VmConfig,
        activate: &ActivationHandler,
    ) -> Result<Self, VirtioSetupError> {
        let mut out = VirtioDevices::default();
        let mut bus = MmioBus::new();
        for d in &config.disks {
            let dev = Block::new(&BlockConfig {
                id: d.id.clone(),
                path: d.path.clone(),
                readonly: d.readonly,
            })?;
            out.disk_sizes.push(dev.capacity_sectors() * SECTOR_SIZE);
            out.add(vm_fd, mem, &mut bus, activate, Box::new(dev))?;
        }
        for n in &config.net {
            let mac = match &n.mac {
                Some(m) => m.parse().map_err(|source| VirtioSetupError::Mac {
                    id: n.id.clone(),
                    source,
                })?,
                None => MacAddr::from_id(&n.id),
            };
            let dev = Net::new(&NetConfig {
                id: n.id.clone(),
                tap: n.tap.clone(),
                mac,
            })?;
            out.net_counters.push((n.id.clone(), dev.counters()));
            let announcer = dev.announcer().map_err(VirtioSetupError::Announcer)?;
            out.announcers.push((n.id.clone(), announcer));
            out.add(vm_fd, mem, &mut bus, activate, Box::new(dev))?;
        }
        out.bus = Arc::new(bus);
        Ok(out)
    }

    /// Broadcasts RARPs for every NIC's MAC (a few, spaced out, in the background), so the LAN
    /// learns where the guest now runs. A NIC that cannot send is logged and skipped: the guest's
    /// own traffic will teach the switch.
    pub fn announce(&mut self) {
        let handles = self
            .announcers
            .iter()
            .filter_map(|(id, a)| match a.try_clone() {
                Ok(c) => Some((id.clone(), c)),
                Err(e) => {
                    devices::guest_warn!("cannot announce NIC {id}: {e}");
                    None
                }
            })
            .collect();
        announce_in_background(handles);
    }

    fn add(
        &mut self,
        vm_fd: &VmFd,
        mem: &GuestMemoryMmap,
        bus: &mut MmioBus,
        activate: &ActivationHandler,
        device: Box<dyn VirtioDevice>,
    ) -> Result<(), VirtioSetupError> {
        let index = self.transports.len();
        let addr = VIRTIO_MMIO_START + index as u64 * MMIO_WINDOW_SIZE;
        let gsi = VIRTIO_FIRST_GSI + index as u32;
        let kvm_err = |what| {
            move |source| VirtioSetupError::Kvm {
                what,
                index,
                source,
            }
        };
        let irqfd = EventFd::new(EFD_NONBLOCK).map_err(VirtioSetupError::EventFd)?;
        vm_fd
            .register_irqfd(&irqfd, gsi)
            .map_err(kvm_err("the irqfd"))?;
        let transport = MmioTransport::new(device, mem.clone(), irqfd)?;
        for (q, evt) in transport.queue_evts().iter().enumerate() {
            // A u32 datamatch makes KVM match 4-byte writes of exactly this queue index.
            vm_fd
                .register_ioevent(
                    evt,
                    &IoEventAddress::Mmio(addr + QUEUE_NOTIFY_OFFSET),
                    q as u32,
                )
                .map_err(kvm_err("a queue ioeventfd"))?;
        }
        let transport = Arc::new(Mutex::new(transport));
        let (weak, handler) = (Arc::downgrade(&transport), activate.clone());
        transport
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_activation_notifier(Box::new(move || {
                handler(DeviceActivation {
                    index,
                    transport: weak.clone(),
                })
            }));
        bus.insert(addr, MMIO_WINDOW_SIZE, transport.clone())?;
        self.transports.push(transport);
        self.info.push(MmioDeviceInfo {
            addr,
            len: MMIO_WINDOW_SIZE,
            irq: gsi,
        });
        Ok(())
    }

    fn each(&self, mut f: impl FnMut(&mut MmioTransport)) {
        for t in &self.transports {
            f(&mut t.lock().unwrap_or_else(|p| p.into_inner()));
        }
    }

    /// Stops every worker, keeping device state (the vCPUs must be paused already).
    pub fn quiesce(&self) {
        self.each(MmioTransport::quiesce);
    }

    /// Restarts the workers [`VirtioDevices::quiesce`] stopped.
    pub fn resume(&self) {
        self.each(MmioTransport::resume);
    }

    /// Every transport's state; call it while quiesced.
    pub fn state(&self) -> Vec<MmioSnapshot> {
        let mut out = Vec::with_capacity(self.transports.len());
        self.each(|t| out.push(t.state()));
        out
    }

    /// Takes a snapshot's device states, in order; running devices stay quiesced until resume.
    pub fn restore(&self, saved: &[MmioSnapshot]) -> Result<(), VirtioStateError> {
        if saved.len() != self.transports.len() {
            return Err(VirtioStateError::Count {
                saved: saved.len(),
                ours: self.transports.len(),
            });
        }
        for (index, (t, s)) in self.transports.iter().zip(saved).enumerate() {
            t.lock()
                .unwrap_or_else(|p| p.into_inner())
                .restore(s)
                .map_err(|source| VirtioStateError::Device { index, source })?;
        }
        Ok(())
    }

    /// Puts every device's output behind an FT gate on `setup.clock` and returns the gates, in
    /// device order (disks first), for the releaser (`ft::gate::Releaser`) and the checkpoint
    /// engine (disk gates' `take_epoch_writes`). Call it with the devices quiesced: the gates
    /// take effect when [`VirtioDevices::resume`] re-activates the workers. Standalone VMs never
    /// call it and keep their ungated, zero-cost output path.
    pub fn enable_ft(&self, setup: &FtSetup) -> Result<Vec<DeviceGate>, VirtioSetupError> {
        let mut gates = Vec::new();
        for (index, t) in self.transports.iter().enumerate() {
            let mut t = t.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(g) = t
                .enable_ft(setup, index as u32)
                .map_err(|source| VirtioSetupError::Gate { index, source })?
            {
                gates.push(g);
            }
        }
        Ok(gates)
    }

    /// Stops every device's worker thread (the vCPUs must be stopped already).
    pub fn shutdown(&self) {
        for t in &self.transports {
            t.lock().unwrap_or_else(|p| p.into_inner()).shutdown();
        }
    }
}
