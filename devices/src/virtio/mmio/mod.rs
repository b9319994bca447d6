//! The virtio-mmio transport, version 2 (virtio 1.x "modern" register layout only): feature
//! negotiation, the device status machine, queue setup and the interrupt registers. A guest that
//! writes registers out of order, with odd widths or bad values is ignored or sees
//! DEVICE_NEEDS_RESET; it can never make the VMM touch memory outside guest RAM.
//!
//! Activation happens off the vCPU thread: a DRIVER_OK write (a vCPU's MMIO exit) only records
//! the request and calls the owner's [`ActivationNotifier`]; the owner then calls
//! [`MmioTransport::activate_pending`] on a thread that may start workers (the VMM thread), so
//! that vCPU threads need neither thread creation nor any worker syscall in their seccomp
//! filter. The vCPU does not wait: the driver goes on at once, and queue notifications it makes
//! meanwhile stay counted in their ioeventfds until the worker starts and reads them.

pub mod state;

use super::device::{ActivateContext, ActiveQueue, Interrupt, VirtioDevice};
use super::{GuestMemoryMmap, VIRTIO_F_VERSION_1};
use crate::mmio_bus::MmioDevice;
use std::sync::Arc;
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_mmio::*;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// "virt" in little endian.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// Register layout version 2 (virtio 1.x).
pub const MMIO_VERSION: u32 = 2;
/// Our vendor ID ("TNDM" is not registered anywhere; drivers ignore it).
pub const VENDOR_ID: u32 = 0x4d44_4e54;
/// Offset of QueueNotify, where the VMM registers the ioeventfds.
pub const QUEUE_NOTIFY_OFFSET: u64 = VIRTIO_MMIO_QUEUE_NOTIFY as u64;

/// Transport set-up errors.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    /// Creating a queue's notification eventfd failed.
    #[error("cannot create a queue notification eventfd")]
    EventFd(#[source] std::io::Error),
    /// The device asks for a queue size virtio-queue refuses (not a power of two up to 32768).
    #[error("queue {index}: bad maximum size {size}")]
    QueueSize {
        /// The queue's index.
        index: usize,
        /// The maximum size the device asked for.
        size: u16,
        /// What virtio-queue said.
        #[source]
        source: virtio_queue::Error,
    },
}

/// Called, on the vCPU thread and with the transport locked, when the driver set DRIVER_OK: it
/// must only hand the request on (it cannot lock the transport); the receiver then calls
/// [`MmioTransport::activate_pending`].
pub type ActivationNotifier = Box<dyn Fn() + Send>;

/// A virtio device's register window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    /// A QueueNum write that was not a power of two up to the maximum: the queue cannot be used.
    bad_queue_size: Vec<bool>,
    queue_evts: Vec<EventFd>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    acked_features: u64,
    /// The driver acked bits beyond the 64 that exist.
    acked_unoffered: bool,
    status: u32,
    activated: bool,
    /// The device's worker is paused for a state capture (or not yet started after a restore).
    quiesced: bool,
    /// The quiesce parked the device's worker and nothing changed since: resume lets it go on
    /// instead of activating the device again. Whatever changes the device or the queues
    /// clears it (and the device stops its parked worker).
    parked: bool,
    /// DRIVER_OK was accepted; the activation waits for [`MmioTransport::activate_pending`].
    activation_pending: bool,
    /// Where DRIVER_OK is reported; without one the device activates at once, on the caller's
    /// thread (unit tests and library users that do not filter their threads).
    notifier: Option<ActivationNotifier>,
}

impl MmioTransport {
    /// Wraps `device`; it interrupts through `irqfd`.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        irqfd: EventFd,
    ) -> Result<Self, MmioError> {
        let mut queues = Vec::new();
        let mut queue_evts = Vec::new();
        for (index, &size) in device.queue_max_sizes().iter().enumerate() {
            queues.push(Queue::new(size).map_err(|source| MmioError::QueueSize {
                index,
                size,
                source,
            })?);
            queue_evts.push(EventFd::new(EFD_NONBLOCK).map_err(MmioError::EventFd)?);
        }
        Ok(MmioTransport {
            bad_queue_size: vec![false; queues.len()],
            device,
            mem,
            interrupt: Arc::new(Interrupt::new(irqfd)),
            queues,
            queue_evts,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            acked_features: 0,
            acked_unoffered: false,
            status: 0,
            activated: false,
            quiesced: false,
            parked: false,
            activation_pending: false,
            notifier: None,
        })
    }

    /// From now on a DRIVER_OK write only records the request and calls `notifier`; the device
    /// starts when [`MmioTransport::activate_pending`] is called.
    pub fn set_activation_notifier(&mut self, notifier: ActivationNotifier) {
        self.notifier = Some(notifier);
    }

    /// Starts the device if its driver set DRIVER_OK since the last call and nothing (a reset,
    /// FAILED, a quiesce that took the request over) overtook the request; otherwise does
    /// nothing, so a late or repeated call is harmless.
    pub fn activate_pending(&mut self) {
        if std::mem::take(&mut self.activation_pending) {
            self.activate();
        }
    }

    /// Whether DRIVER_OK waits for [`MmioTransport::activate_pending`].
    pub fn is_activation_pending(&self) -> bool {
        self.activation_pending
    }

    /// One eventfd per queue, fired by a write of the queue's index to QueueNotify; the VMM
    /// registers them as KVM ioeventfds so that notifications never exit to userspace.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The device's interrupt line (its irqfd is registered with KVM by the VMM).
    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    /// The wrapped device.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    /// Whether the driver has started the device (and it is running).
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// Puts the device's output behind an FT gate (see [`VirtioDevice::enable_ft`]); call it
    /// while quiesced or before activation, so that the next activation uses the gate (a
    /// parked worker does not go on: resume starts a fresh one).
    pub fn enable_ft(
        &mut self,
        setup: &crate::virtio::ft::FtSetup,
        index: u32,
    ) -> std::io::Result<Option<crate::virtio::ft::DeviceGate>> {
        self.parked = false;
        self.device.enable_ft(setup, index)
    }

    /// Stops the device's worker; used when the VM stops. The guest sees a reset device.
    pub fn shutdown(&mut self) {
        self.device.settle_output("the VM stops");
        self.reset();
    }

    /// Stops the device (joins its worker, running or parked) and forgets any activation not
    /// yet run.
    fn stop_device(&mut self) {
        self.device.reset();
        self.activated = false;
        self.quiesced = false;
        self.parked = false;
        self.activation_pending = false;
    }

    fn reset(&mut self) {
        self.stop_device();
        for q in &mut self.queues {
            q.reset();
        }
        self.bad_queue_size.fill(false);
        // Drain notifications the old driver left behind so a new one starts clean.
        for e in &self.queue_evts {
            let _ = e.read();
        }
        self.interrupt.reset();
        self.queue_select = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.acked_features = 0;
        self.acked_unoffered = false;
        self.status = 0;
    }

    fn selected_queue(&mut self) -> Option<(&mut Queue, &mut bool)> {
        let i = usize::try_from(self.queue_select).ok()?;
        Some((self.queues.get_mut(i)?, self.bad_queue_size.get_mut(i)?))
    }

    /// Queue registers may change only between FEATURES_OK and DRIVER_OK (virtio 1.x, 4.2.3.2).
    fn queue_config_allowed(&self) -> bool {
        self.status
            & (VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK | VIRTIO_CONFIG_S_FAILED)
            == VIRTIO_CONFIG_S_FEATURES_OK
    }

    fn update_queue(&mut self, f: impl FnOnce(&mut Queue, &mut bool)) {
        if !self.queue_config_allowed() {
            crate::guest_debug!("virtio-mmio: queue register write outside queue setup ignored");
            return;
        }
        match self.selected_queue() {
            // Changing a queue the driver already enabled is not allowed either.
            Some((q, bad)) if !q.ready() => f(q, bad),
            Some(_) => crate::guest_debug!("virtio-mmio: write to a ready queue ignored"),
            None => {
                crate::guest_debug!("virtio-mmio: write to a queue that does not exist ignored")
            }
        }
    }

    /// A driver stops using a queue by writing 0 to QueueReady and reading it back (virtio 1.x,
    /// 4.2.2.2); virtio-drivers does so when a driver is dropped. Without VIRTIO_F_RING_RESET
    /// (not offered) a driver only does that on its way to a reset, so the device stops all its
    /// queues: nothing is processed after the driver let go of the rings.
    fn stop_queue(&mut self) {
        if let Some((q, _)) = self.selected_queue() {
            q.set_ready(false);
        }
        if self.activated || self.activation_pending {
            crate::guest_info!(
                "virtio-mmio: driver disabled queue {}; device stopped",
                self.queue_select
            );
            self.stop_device();
        }
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        // NEEDS_RESET is the device's to set; drivers write back what they read, so drop it.
        let v = v & !VIRTIO_CONFIG_S_NEEDS_RESET;
        // The driver only ever adds bits; clearing one (other than by reset) is a driver bug.
        if v & self.status != self.status {
            crate::guest_debug!(
                "virtio-mmio: status {v:#x} clears bits of {:#x}; ignored",
                self.status
            );
            return;
        }
        let new = v & !self.status;
        if new & VIRTIO_CONFIG_S_FAILED != 0 {
            // The driver gave up; stop using its queues.
            self.stop_device();
            self.status |= VIRTIO_CONFIG_S_FAILED;
            return;
        }
        if new & VIRTIO_CONFIG_S_ACKNOWLEDGE != 0 {
            self.status |= VIRTIO_CONFIG_S_ACKNOWLEDGE;
        }
        if new & VIRTIO_CONFIG_S_DRIVER != 0 && self.status & VIRTIO_CONFIG_S_ACKNOWLEDGE != 0 {
            self.status |= VIRTIO_CONFIG_S_DRIVER;
        }
        if new & VIRTIO_CONFIG_S_FEATURES_OK != 0 && self.status & VIRTIO_CONFIG_S_DRIVER != 0 {
            // FEATURES_OK stays clear (the driver re-reads it) unless the driver took only
            // offered features and speaks virtio 1.x.
            let offered = self.device.features();
            if self.acked_features & !offered == 0
                && self.acked_features & VIRTIO_F_VERSION_1 != 0
                && !self.acked_unoffered
            {
                self.status |= VIRTIO_CONFIG_S_FEATURES_OK;
            } else {
                crate::guest_warn!(
                    "virtio-mmio: driver features {:#x} not acceptable (offered {offered:#x})",
                    self.acked_features
                );
            }
        }
        if new & VIRTIO_CONFIG_S_DRIVER_OK != 0 && self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            self.status |= VIRTIO_CONFIG_S_DRIVER_OK;
            match &self.notifier {
                Some(notify) => {
                    self.activation_pending = true;
                    notify();
                }
                None => self.activate(),
            }
        }
    }

    fn activate(&mut self) {
        // The device replaces any worker it still has; a parked one must not be resumed after.
        self.parked = false;
        for (i, q) in self.queues.iter().enumerate() {
            let bad_size = self.bad_queue_size.get(i).copied().unwrap_or(true);
            if bad_size || !q.is_valid(&self.mem) {
                crate::guest_warn!(
                    "virtio-mmio: queue {i} is not ready or not in guest RAM; device needs reset"
                );
                self.interrupt.set_needs_reset();
                return;
            }
        }
        let mut queues = Vec::with_capacity(self.queues.len());
        for (q, e) in self.queues.iter().zip(&self.queue_evts) {
            // The device gets its own copy of the queue; ours keeps answering register reads.
            match (Queue::try_from(q.state()), e.try_clone()) {
                (Ok(queue), Ok(notify)) => queues.push(ActiveQueue { queue, notify }),
                (Err(err), _) => {
                    crate::guest_error!("virtio-mmio: cannot copy a queue: {err}");
                    self.interrupt.set_needs_reset();
                    return;
                }
                (_, Err(err)) => {
                    crate::guest_error!("virtio-mmio: cannot duplicate a queue eventfd: {err}");
                    self.interrupt.set_needs_reset();
                    return;
                }
            }
        }
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            interrupt: self.interrupt.clone(),
            queues,
            acked_features: self.acked_features,
        };
        match self.device.activate(ctx) {
            Ok(()) => self.activated = true,
            Err(e) => {
                crate::guest_warn!("virtio-mmio: device activation failed: {e}");
                self.interrupt.set_needs_reset();
            }
        }
    }

    fn read_reg(&mut self, offset: u32) -> u32 {
        match offset {
            VIRTIO_MMIO_MAGIC_VALUE => MMIO_MAGIC,
            VIRTIO_MMIO_VERSION => MMIO_VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_select {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => self
                .selected_queue()
                .map_or(0, |(q, _)| u32::from(q.max_size())),
            VIRTIO_MMIO_QUEUE_READY => self
                .selected_queue()
                .map_or(0, |(q, _)| u32::from(q.ready())),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            VIRTIO_MMIO_STATUS => {
                let needs_reset = if self.interrupt.needs_reset() {
                    VIRTIO_CONFIG_S_NEEDS_RESET
                } else {
                    0
                };
                self.status | needs_reset
            }
            // No shared memory regions: a length of all ones says "none" (virtio 1.2, 4.2.2).
            VIRTIO_MMIO_SHM_LEN_LOW | VIRTIO_MMIO_SHM_LEN_HIGH => u32::MAX,
            VIRTIO_MMIO_SHM_BASE_LOW | VIRTIO_MMIO_SHM_BASE_HIGH => u32::MAX,
            // Our config space never changes, so its generation never does either.
            VIRTIO_MMIO_CONFIG_GENERATION => 0,
            _ => {
                crate::guest_debug!(
                    "virtio-mmio: read of write-only or unknown register {offset:#x}"
                );
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u32, v: u32) {
        let features_allowed = self.status
            & (VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_FAILED)
            == VIRTIO_CONFIG_S_DRIVER;
        match offset {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_select = v,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_select = v,
            VIRTIO_MMIO_DRIVER_FEATURES if features_allowed => match self.driver_features_select {
                0 => self.acked_features = (self.acked_features & !0xffff_ffff) | u64::from(v),
                1 => {
                    self.acked_features =
                        (self.acked_features & 0xffff_ffff) | (u64::from(v) << 32)
                }
                // Feature words past 63 do not exist: bits there are never offered, so
                // FEATURES_OK is refused.
                _ => self.acked_unoffered |= v != 0,
            },
            VIRTIO_MMIO_QUEUE_SEL => self.queue_select = v,
            VIRTIO_MMIO_QUEUE_NUM => self.update_queue(|q, bad| {
                // Not a power of two or above the maximum: remember it and refuse DRIVER_OK.
                *bad = u16::try_from(v)
                    .map_err(|_| ())
                    .and_then(|n| q.try_set_size(n).map_err(|_| ()))
                    .is_err();
            }),
            VIRTIO_MMIO_QUEUE_READY => {
                if self.queue_config_allowed() {
                    // Unlike the other queue registers, READY may be cleared again during setup.
                    if let Some((q, _)) = self.selected_queue() {
                        q.set_ready(v == 1);
                    }
                } else if v == 0 && self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
                    self.stop_queue();
                }
            }
            VIRTIO_MMIO_QUEUE_DESC_LOW => self.update_queue(|q, _| q.set_desc_table_address(Some(v), None)),
            VIRTIO_MMIO_QUEUE_DESC_HIGH => self.update_queue(|q, _| q.set_desc_table_address(None, Some(v))),
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => self.update_queue(|q, _| q.set_avail_ring_address(Some(v), None)),
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH => self.update_queue(|q, _| q.set_avail_ring_address(None, Some(v))),
            VIRTIO_MMIO_QUEUE_USED_LOW => self.update_queue(|q, _| q.set_used_ring_address(Some(v), None)),
            VIRTIO_MMIO_QUEUE_USED_HIGH => self.update_queue(|q, _| q.set_used_ring_address(None, Some(v))),
            VIRTIO_MMIO_QUEUE_NOTIFY => {
                // Only reached when the ioeventfd is not registered (unit tests, or KVM refused it).
                match usize::try_from(v).ok().and_then(|i| self.queue_evts.get(i)) {
                    Some(e) => {
                        if let Err(err) = e.write(1) {
                            crate::guest_warn!("virtio-mmio: cannot forward a queue notification: {err}");
                        }
                    }
                    None => crate::guest_debug!("virtio-mmio: notify for queue {v} that does not exist"),
                }
            }
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.ack(v),
            VIRTIO_MMIO_STATUS => self.set_status(v),
            VIRTIO_MMIO_SHM_SEL => {}
            _ => crate::guest_debug!("virtio-mmio: write {v:#x} to read-only, unknown or locked register {offset:#x} ignored"),
        }
    }
}

impl MmioDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            self.device
                .read_config(offset - u64::from(VIRTIO_MMIO_CONFIG), data);
            return;
        }
        // Registers are 32 bits wide and must be read as such (virtio 1.x, 4.2.2.2).
        match (u32::try_from(offset), <&mut [u8; 4]>::try_from(&mut *data)) {
            (Ok(off), Ok(out)) if off % 4 == 0 => *out = self.read_reg(off).to_le_bytes(),
            _ => {
                crate::guest_debug!(
                    "virtio-mmio: {}-byte read at {offset:#x} ignored",
                    data.len()
                );
                data.fill(0);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            self.device
                .write_config(offset - u64::from(VIRTIO_MMIO_CONFIG), data);
            return;
        }
        match (u32::try_from(offset), <[u8; 4]>::try_from(data)) {
            (Ok(off), Ok(v)) if off % 4 == 0 => self.write_reg(off, u32::from_le_bytes(v)),
            _ => crate::guest_debug!(
                "virtio-mmio: {}-byte write at {offset:#x} ignored",
                data.len()
            ),
        }
    }
}

#[cfg(test)]
mod tests;
