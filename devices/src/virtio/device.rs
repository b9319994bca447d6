//! What a virtio device implements for the transport, and the interrupt line it signals on.

use super::GuestMemoryMmap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

/// Why a device could not start after the driver set DRIVER_OK.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The transport handed over another number of queues than the device has.
    #[error("the device needs {expected} queues, the transport gave {got}")]
    QueueCount {
        /// Queues the device has (2 for net, 1 for block).
        expected: usize,
        /// Queues the transport handed over.
        got: usize,
    },
    /// Cloning the tap or disk file descriptor for the worker failed.
    #[error("cannot duplicate a file descriptor for the worker")]
    Dup(#[source] std::io::Error),
    /// Spawning the worker thread failed.
    #[error("cannot start the device's worker thread")]
    Worker(#[source] std::io::Error),
}

/// Device-specific state in a snapshot (the transport saves the generic part).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DeviceSnapshot {
    /// virtio-blk keeps nothing beyond its config and image.
    Block,
    /// virtio-net: the MAC the driver read, and a frame read from the tap but not yet delivered.
    Net {
        /// The MAC address the guest driver read, kept across a restore.
        mac: [u8; 6],
        /// A frame (vnet header first) read from the tap that no RX buffer took yet; `None`: none.
        held_frame: Option<Vec<u8>>,
    },
}

/// A saved device state this device cannot take.
#[derive(Debug, thiserror::Error)]
pub enum DeviceStateError {
    /// The snapshot is of another kind of device.
    #[error("saved state is not that of a {expected} device")]
    WrongKind {
        /// The kind this device is (`block` or `net`).
        expected: &'static str,
    },
    /// The snapshot is of this kind but cannot be taken (e.g. a held frame larger than any frame).
    #[error("saved state is invalid: {0}")]
    Invalid(&'static str),
}

/// One queue handed to a device at activation: its ring state and the eventfd that fires when
/// the driver writes the queue's index to QueueNotify.
pub struct ActiveQueue {
    /// The queue's ring addresses, size and progress.
    pub queue: Queue,
    /// Fires when the driver writes this queue's index to QueueNotify (an ioeventfd).
    pub notify: EventFd,
}

/// Everything a device gets when the driver sets DRIVER_OK.
pub struct ActivateContext {
    /// Guest RAM; the device's only way to touch guest memory.
    pub mem: GuestMemoryMmap,
    /// Where to raise used-buffer and config interrupts.
    pub interrupt: Arc<Interrupt>,
    /// The queues, in index order; the transport has checked that each is ready and lies in RAM.
    pub queues: Vec<ActiveQueue>,
    /// Feature bits both sides agreed on.
    pub acked_features: u64,
}

/// A virtio device behind a transport.
pub trait VirtioDevice: Send {
    /// Virtio device ID (1 = network, 2 = block).
    fn device_type(&self) -> u32;
    /// Largest size of each queue; the number of entries is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits the device offers (VIRTIO_F_VERSION_1 included).
    fn features(&self) -> u64;
    /// Reads device config space at `offset`; bytes past the end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device config space; our devices have no writable fields, so the default ignores it.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        crate::guest_debug!("ignoring a {}-byte config write at {offset:#x}", data.len());
    }
    /// Starts processing the queues with a fresh worker (one left parked by
    /// [`VirtioDevice::quiesce`] is stopped first).
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// Stops processing (joins the worker, running or parked) and returns to the pre-activation
    /// state.
    fn reset(&mut self);
    /// Pauses processing for a state capture, keeping the device's state: the worker finishes
    /// what it is doing, hands over copies of the queues with their progress (returned here)
    /// and parks, touching neither guest memory nor the queues, until [`VirtioDevice::resume`]
    /// (the cheap way back: no new thread) or until something stops it. `None` when no worker
    /// ran or it died: the transport then treats the device as broken, never restarting it from
    /// stale copies. A device may also stop its worker here instead of parking it, and let
    /// [`VirtioDevice::activate`] start a new one.
    fn quiesce(&mut self) -> Option<Vec<Queue>>;
    /// Lets the worker that [`VirtioDevice::quiesce`] parked go on where it was; `false` when
    /// none is parked (stopped since, or never parked), and the transport then activates the
    /// device afresh from its copies. Anything that changes the device or its queues while it is
    /// quiesced (restore, enable_ft, reset, activate) must stop a parked worker first, so that
    /// this says `false`. The default: no worker parks.
    fn resume(&mut self) -> bool {
        false
    }
    /// Device-specific state for a snapshot; call it while quiesced.
    fn state(&self) -> DeviceSnapshot;
    /// Takes device-specific state from a snapshot, before activation (a parked worker is
    /// stopped: the next activation starts from this state).
    fn restore(&mut self, state: &DeviceSnapshot) -> Result<(), DeviceStateError>;
    /// Puts the device's output behind an FT gate from its next activation (so call it while
    /// quiesced; a parked worker is stopped, so that resume activates one behind the gate);
    /// `index` is the device's position in the VM, the same on both hosts. `None`: the device
    /// has no output to gate.
    fn enable_ft(
        &mut self,
        _setup: &super::ft::FtSetup,
        _index: u32,
    ) -> std::io::Result<Option<super::ft::DeviceGate>> {
        Ok(None)
    }
    /// The VM stops: output still held in an FT gate is released if the clock allows it, or
    /// dropped with a logged reason (`why`) if it never will; never left behind silently.
    fn settle_output(&mut self, _why: &str) {}
}

/// A device's interrupt line: the virtio-mmio InterruptStatus bits and the irqfd that KVM turns
/// into an edge on the device's GSI. Shared by the transport (which reads and acks) and the
/// device's worker (which raises).
pub struct Interrupt {
    status: AtomicU32,
    needs_reset: AtomicBool,
    irqfd: EventFd,
}

impl Interrupt {
    /// An interrupt that signals through `irqfd` (registered with KVM by the VMM).
    pub fn new(irqfd: EventFd) -> Self {
        Interrupt {
            status: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            irqfd,
        }
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        // A full eventfd counter (never in practice) still means an interrupt is pending.
        if let Err(e) = self.irqfd.write(1) {
            crate::guest_warn!("cannot signal the device interrupt: {e}");
        }
    }

    /// Tells the driver that a queue's used ring has new entries.
    pub fn signal_used_queue(&self) {
        self.raise(VIRTIO_MMIO_INT_VRING);
    }

    /// Tells the driver that the config space (or the device status) changed.
    pub fn signal_config(&self) {
        self.raise(VIRTIO_MMIO_INT_CONFIG);
    }

    /// Marks the device broken by the driver (DEVICE_NEEDS_RESET) and tells the driver.
    pub fn set_needs_reset(&self) {
        if !self.needs_reset.swap(true, Ordering::SeqCst) {
            self.signal_config();
        }
    }

    /// Whether the device asked for a reset.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// InterruptStatus as the driver reads it.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clears the bits the driver has handled.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Sets InterruptStatus and DEVICE_NEEDS_RESET from a snapshot (signals nothing: the
    /// irqchip's saved state already holds what the guest saw).
    pub fn restore(&self, status: u32, needs_reset: bool) {
        self.status.store(status, Ordering::SeqCst);
        self.needs_reset.store(needs_reset, Ordering::SeqCst);
    }

    /// Device reset: nothing pending, no error.
    pub fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }

    /// The irqfd, for the VMM to register with KVM.
    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }
}
