//! Quiescing a transport (its device's worker parks and hands over copies of the queues) and
//! saving or restoring its registers, queues and device, for snapshots, migration and FT
//! checkpoints.

use super::MmioTransport;
use crate::virtio::device::{DeviceSnapshot, DeviceStateError};
use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState, QueueT};

/// One virtqueue as the transport and the device last saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    /// The most descriptors the device allows (QueueNumMax); a restore keeps the device's own.
    pub max_size: u16,
    /// The queue size the driver chose (QueueNum).
    pub size: u16,
    /// The driver set QueueReady.
    pub ready: bool,
    /// Guest physical address of the descriptor table.
    pub desc_table: u64,
    /// Guest physical address of the available (driver) ring.
    pub avail_ring: u64,
    /// Guest physical address of the used (device) ring.
    pub used_ring: u64,
    /// The next available-ring index the device will take.
    pub next_avail: u16,
    /// The next used-ring index the device will fill.
    pub next_used: u16,
    /// The driver acked VIRTIO_F_EVENT_IDX, so notifications use the event index.
    pub event_idx_enabled: bool,
    /// The driver wrote a QueueNum the queue cannot take.
    pub bad_size: bool,
}

/// A virtio-mmio transport and its device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmioSnapshot {
    /// The virtio device ID (1 net, 2 block); a restore refuses another.
    pub device_type: u32,
    /// The device status register (ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK bits).
    pub status: u32,
    /// The feature bits the driver acked.
    pub acked_features: u64,
    /// The driver acked bits beyond the 64 that exist (FEATURES_OK is then refused).
    pub acked_unoffered: bool,
    /// The queue that QueueSel last selected.
    pub queue_select: u32,
    /// Which 32-bit word of the device features DeviceFeaturesSel selects.
    pub device_features_select: u32,
    /// Which 32-bit word of the driver features DriverFeaturesSel selects.
    pub driver_features_select: u32,
    /// Pending InterruptStatus bits (used buffer, configuration change).
    pub interrupt_status: u32,
    /// The device met an error and reports DEVICE_NEEDS_RESET until the driver resets it.
    pub needs_reset: bool,
    /// ConfigGeneration; always 0, as the configuration space never changes.
    pub config_generation: u32,
    /// DRIVER_OK was accepted and the device runs.
    pub activated: bool,
    /// Each virtqueue, in queue index order.
    pub queues: Vec<QueueSnapshot>,
    /// The device's own state (block or net).
    pub device: DeviceSnapshot,
}

/// A snapshot this transport cannot take.
#[derive(Debug, thiserror::Error)]
pub enum MmioStateError {
    /// The snapshot is of another kind of device.
    #[error("saved device type {saved} differs from this device's {ours}")]
    DeviceType {
        /// The saved device ID.
        saved: u32,
        /// This transport's device ID.
        ours: u32,
    },
    /// The snapshot has a different number of queues than the device.
    #[error("saved state has {saved} queues, the device has {ours}")]
    QueueCount {
        /// Queues in the snapshot.
        saved: usize,
        /// Queues the device has.
        ours: usize,
    },
    /// A saved queue's addresses or size are not a valid queue for this device.
    #[error("saved queue {index} is invalid")]
    Queue {
        /// The queue's index.
        index: usize,
        /// What virtio-queue refused.
        #[source]
        source: virtio_queue::Error,
    },
    /// The device refused its part of the snapshot.
    #[error("device state")]
    Device(#[from] DeviceStateError),
}

impl MmioTransport {
    /// Parks the device's worker so that nothing touches guest memory or the queues; copies of
    /// the queues with their progress come into the transport (for [`MmioTransport::state`]).
    /// [`MmioTransport::resume`] undoes it.
    pub fn quiesce(&mut self) {
        if std::mem::take(&mut self.activation_pending) {
            // DRIVER_OK arrived but the device has not started yet: it is as good as running
            // (a snapshot says so) and [`MmioTransport::resume`] starts it.
            self.activated = true;
            self.quiesced = true;
            return;
        }
        if self.activated && !self.quiesced {
            match self.device.quiesce() {
                Some(queues) if queues.len() == self.queues.len() => {
                    self.queues = queues;
                    self.quiesced = true;
                    self.parked = true;
                }
                _ => {
                    // The worker died (it panicked and marked the device broken) and took the
                    // queues' progress with it: restarting from our stale copies would replay
                    // requests, so the device stays stopped until the driver resets it.
                    crate::guest_warn!(
                        "virtio-mmio: device {} has no worker to park; it stays stopped until reset",
                        self.device.device_type()
                    );
                    self.activated = false;
                    self.interrupt.set_needs_reset();
                }
            }
        }
    }

    /// Lets the device's parked worker go on after [`MmioTransport::quiesce`] (no new thread,
    /// no waiting for it), or starts a fresh one when something changed the device or its
    /// queues meanwhile, after a restore, or when the device does not park its worker.
    pub fn resume(&mut self) {
        if self.quiesced {
            self.quiesced = false;
            if std::mem::take(&mut self.parked) && self.device.resume() {
                return;
            }
            self.activated = false;
            self.activate();
        }
    }

    /// The transport's and device's state; call it while quiesced (or never activated).
    pub fn state(&self) -> MmioSnapshot {
        let queues = self
            .queues
            .iter()
            .zip(&self.bad_queue_size)
            .map(|(q, &bad_size)| {
                let s = q.state();
                QueueSnapshot {
                    max_size: s.max_size,
                    size: s.size,
                    ready: s.ready,
                    desc_table: s.desc_table,
                    avail_ring: s.avail_ring,
                    used_ring: s.used_ring,
                    next_avail: s.next_avail,
                    next_used: s.next_used,
                    event_idx_enabled: s.event_idx_enabled,
                    bad_size,
                }
            })
            .collect();
        MmioSnapshot {
            device_type: self.device.device_type(),
            status: self.status,
            acked_features: self.acked_features,
            acked_unoffered: self.acked_unoffered,
            queue_select: self.queue_select,
            device_features_select: self.device_features_select,
            driver_features_select: self.driver_features_select,
            interrupt_status: self.interrupt.status(),
            needs_reset: self.interrupt.needs_reset(),
            config_generation: 0,
            activated: self.activated || self.activation_pending,
            queues,
            device: self.device.state(),
        }
    }

    /// Takes a snapshot's state into a freshly built transport. A device that was running stays
    /// quiesced until [`MmioTransport::resume`].
    pub fn restore(&mut self, s: &MmioSnapshot) -> Result<(), MmioStateError> {
        let ours = self.device.device_type();
        if s.device_type != ours {
            return Err(MmioStateError::DeviceType {
                saved: s.device_type,
                ours,
            });
        }
        if s.queues.len() != self.queues.len() {
            return Err(MmioStateError::QueueCount {
                saved: s.queues.len(),
                ours: self.queues.len(),
            });
        }
        let mut queues = Vec::with_capacity(s.queues.len());
        for (index, (q, cur)) in s.queues.iter().zip(&self.queues).enumerate() {
            let state = QueueState {
                // The device decides its queue sizes; a snapshot cannot enlarge them.
                max_size: cur.max_size(),
                next_avail: q.next_avail,
                next_used: q.next_used,
                event_idx_enabled: q.event_idx_enabled,
                size: q.size,
                ready: q.ready,
                desc_table: q.desc_table,
                avail_ring: q.avail_ring,
                used_ring: q.used_ring,
            };
            queues.push(
                Queue::try_from(state).map_err(|source| MmioStateError::Queue { index, source })?,
            );
        }
        // The device stops a parked worker; resume then activates from the restored queues.
        self.device.restore(&s.device)?;
        self.parked = false;
        self.queues = queues;
        self.bad_queue_size = s.queues.iter().map(|q| q.bad_size).collect();
        self.status = s.status;
        self.acked_features = s.acked_features;
        self.acked_unoffered = s.acked_unoffered;
        self.queue_select = s.queue_select;
        self.device_features_select = s.device_features_select;
        self.driver_features_select = s.driver_features_select;
        self.interrupt.restore(s.interrupt_status, s.needs_reset);
        self.activated = s.activated;
        self.quiesced = s.activated;
        Ok(())
    }
}
