//! The VM's virtio-mmio devices: disks first, then NICs, device `i` with its 4 KiB register
//! window at `VIRTIO_MMIO_START + i * 4 KiB` and its own GSI `5 + i`. KVM does the fast paths:
//! an ioeventfd per queue on QueueNotify (datamatch = queue index) wakes the device's worker
//! without a userspace exit, and an irqfd on the device's GSI raises its interrupt.

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
use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// GSI of the first virtio device; 0-4 are the PIT, keyboard, cascade, COM2 and COM1.
pub const VIRTIO_FIRST_GSI: u32 = 5;

/// Why the devices could not be built.
#[derive(Debug, thiserror::Error)]
pub enum VirtioSetupError {
    #[error("disk")]
    Block(#[from] BlockError),
    #[error("network")]
    Net(#[from] NetError),
    #[error("NIC {id}")]
    Mac {
        id: String,
        #[source]
        source: MacParseError,
    },
    #[error("virtio-mmio transport")]
    Transport(#[from] MmioError),
    #[error("cannot duplicate a tap fd to announce the NIC")]
    Announcer(#[source] std::io::Error),
    #[error("cannot create an interrupt eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("cannot register {what} of device {index} with KVM")]
    Kvm {
        what: &'static str,
        index: usize,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("MMIO bus")]
    Bus(#[from] MmioBusError),
    #[error("cannot put virtio device {index} behind an FT gate")]
    Gate {
        index: usize,
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
    #[error("snapshot has {saved} virtio devices, the config {ours}")]
    Count { saved: usize, ours: usize },
    #[error("virtio device {index}")]
    Device {
        index: usize,
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
            out.add(vm_fd, mem, &mut bus, Box::new(dev))?;
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
            out.add(vm_fd, mem, &mut bus, Box::new(dev))?;
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
                    log::warn!("cannot announce NIC {id}: {e}");
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
