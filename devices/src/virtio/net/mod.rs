//! virtio-net on a tap: one RX and one TX queue, a MAC in config space, and no offloads (only
//! VIRTIO_F_VERSION_1 and VIRTIO_NET_F_MAC are offered), so every frame is a plain Ethernet frame
//! behind a zeroed 12-byte header. A worker thread moves frames (see `virtio` for why).

pub mod announce;
pub mod gate;
pub mod tap;
pub mod tx;
mod worker;

use super::block::read_config_bytes;
use super::device::{
    ActivateContext, ActivateError, DeviceSnapshot, DeviceStateError, VirtioDevice,
};
use super::ft::{DeviceGate, FtSetup};
use super::worker::{queues_or_stop, Worker, WorkerSlot};
use super::VIRTIO_F_VERSION_1;
use gate::{GatedTxSink, TxGate};
use std::fmt;
use std::os::fd::OwnedFd;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tap::{Tap, TapError};
use tx::TapTxSink;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MAC;
use virtio_queue::Queue;
use worker::{NetWorker, NetWorkerOut};

/// Entries in each queue.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: &[u16] = &[QUEUE_SIZE, QUEUE_SIZE];

/// An Ethernet MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

/// A string that is not `xx:xx:xx:xx:xx:xx`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a MAC address like 52:54:00:12:34:56")]
pub struct MacParseError(String);

impl MacAddr {
    /// A locally administered unicast address derived from `id` (FNV-1a), stable across boots.
    pub fn from_id(id: &str) -> MacAddr {
        let mut h: u32 = 0x811c_9dc5;
        for b in id.bytes() {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        let [a, b, c, d] = h.to_be_bytes();
        // 0x52: locally administered (bit 1), unicast (bit 0 clear).
        MacAddr([0x52, 0x54, a, b, c, d])
    }

    /// Whether the address is a multicast (or broadcast) one, which a NIC must not own.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }
}

impl FromStr for MacAddr {
    type Err = MacParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let p = parts.next().filter(|p| p.len() == 2).ok_or_else(err)?;
            *byte = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// One NIC as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// Name of the NIC in the VM config.
    pub id: String,
    /// Host tap interface.
    pub tap: String,
    /// Guest MAC address.
    pub mac: MacAddr,
}

/// NIC set-up errors.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The NIC's tap cannot be opened or set up.
    #[error("NIC {id}")]
    Tap {
        /// The NIC's id in the VM config.
        id: String,
        /// Why the tap failed.
        #[source]
        source: TapError,
    },
}

/// Frame counters, shared with the worker.
#[derive(Debug, Default)]
pub struct NetCounters {
    /// Frames delivered from the tap into a guest RX buffer.
    pub rx_frames: AtomicU64,
    /// Frames read from the tap but not delivered (runts, too big for any RX buffer, a dead queue).
    pub rx_dropped: AtomicU64,
    /// Frames from the guest written to the tap.
    pub tx_frames: AtomicU64,
    /// TX chains the guest queued that never reached the tap (malformed, or the write failed).
    pub tx_dropped: AtomicU64,
}

impl NetCounters {
    /// Name/value pairs for `vm.counters`.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("rx_frames", self.rx_frames.load(Ordering::Relaxed)),
            ("rx_dropped", self.rx_dropped.load(Ordering::Relaxed)),
            ("tx_frames", self.tx_frames.load(Ordering::Relaxed)),
            ("tx_dropped", self.tx_dropped.load(Ordering::Relaxed)),
        ]
    }
}

/// A virtio-net device.
pub struct Net {
    id: String,
    mac: MacAddr,
    /// Tap-like frame fd: one frame per read/write, behind a 12-byte vnet header.
    fd: OwnedFd,
    counters: Arc<NetCounters>,
    worker: Option<Worker<NetWorkerOut>>,
    /// A frame from the tap the guest had no buffer for when the worker last stopped.
    held_frame: Option<Vec<u8>>,
    /// The FT gate TX goes through once FT is enabled.
    tx_gate: Option<Arc<TxGate>>,
}

impl Net {
    /// Opens the tap; the device starts when the guest driver sets it up.
    pub fn new(cfg: &NetConfig) -> Result<Self, NetError> {
        let tap_err = |source| NetError::Tap {
            id: cfg.id.clone(),
            source,
        };
        let tap = Tap::open(&cfg.tap).map_err(tap_err)?;
        let fd = tap.try_clone_fd().map_err(|e| {
            tap_err(TapError::Configure {
                name: cfg.tap.clone(),
                what: "dup",
                source: e,
            })
        })?;
        Ok(Self::with_fd(&cfg.id, cfg.mac, fd))
    }

    /// A NIC on an already open tap-like, non-blocking frame fd.
    pub fn with_fd(id: &str, mac: MacAddr, fd: OwnedFd) -> Self {
        Net {
            id: id.to_string(),
            mac,
            fd,
            counters: Arc::default(),
            worker: None,
            held_frame: None,
            tx_gate: None,
        }
    }

    /// Frame counters.
    pub fn counters(&self) -> Arc<NetCounters> {
        self.counters.clone()
    }

    /// A handle that announces this NIC's MAC on its tap (see [`announce`]), usable after the
    /// device itself has been handed to its transport.
    pub fn announcer(&self) -> std::io::Result<announce::Announcer> {
        Ok(announce::Announcer::new(self.mac, self.fd.try_clone()?))
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | 1 << VIRTIO_NET_F_MAC
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_net_config: mac[6]; nothing after it is offered.
        read_config_bytes(&self.mac.0, offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let got = ctx.queues.len();
        let mut queues = ctx.queues.into_iter();
        let (Some(rx), Some(tx), None) = (queues.next(), queues.next(), queues.next()) else {
            return Err(ActivateError::QueueCount { expected: 2, got });
        };
        let rx_fd = self.fd.try_clone().map_err(ActivateError::Dup)?;
        let tx_fd = self.fd.try_clone().map_err(ActivateError::Dup)?;
        let interrupt = ctx.interrupt.clone();
        let worker = NetWorker::new(
            ctx.mem,
            ctx.interrupt,
            rx.queue,
            tx.queue,
            rx_fd,
            match &self.tx_gate {
                Some(g) => Box::new(GatedTxSink(g.clone())),
                None => Box::new(TapTxSink::new(tx_fd)),
            },
            self.counters.clone(),
        )
        .with_held_frame(self.held_frame.take());
        let (rx_notify, tx_notify) = (rx.notify, tx.notify);
        self.worker.stop_worker();
        self.worker = Some(
            Worker::spawn(format!("tandem_net_{}", self.id), interrupt, move |ep| {
                worker.run(ep, rx_notify, tx_notify)
            })
            .map_err(ActivateError::Worker)?,
        );
        Ok(())
    }

    fn reset(&mut self) {
        self.worker.stop_worker();
        self.held_frame = None;
    }

    fn quiesce(&mut self) -> Option<Vec<Queue>> {
        let out = self.worker.park_worker()?;
        self.held_frame = out.held_frame;
        queues_or_stop(&mut self.worker, [out.rx, out.tx], "virtio-net", &self.id)
    }

    fn resume(&mut self) -> bool {
        let resumed = self.worker.as_mut().is_some_and(Worker::unpark);
        if resumed {
            // The worker still holds the frame; ours was the copy for `state`.
            self.held_frame = None;
        }
        resumed
    }

    fn state(&self) -> DeviceSnapshot {
        DeviceSnapshot::Net {
            mac: self.mac.0,
            held_frame: self.held_frame.clone(),
        }
    }

    fn restore(&mut self, state: &DeviceSnapshot) -> Result<(), DeviceStateError> {
        match state {
            DeviceSnapshot::Net { mac, held_frame } => {
                if held_frame
                    .as_ref()
                    .is_some_and(|f| f.len() > tap::VNET_HDR_LEN + worker::MAX_FRAME)
                {
                    return Err(DeviceStateError::Invalid(
                        "held RX frame is larger than any frame",
                    ));
                }
                // The parked worker's frame and queues are not the saved ones.
                self.worker.stop_parked_worker();
                // The guest driver read this MAC; it must not change under it.
                self.mac = MacAddr(*mac);
                self.held_frame = held_frame.clone();
                Ok(())
            }
            _ => Err(DeviceStateError::WrongKind { expected: "net" }),
        }
    }

    fn enable_ft(&mut self, setup: &FtSetup, _index: u32) -> std::io::Result<Option<DeviceGate>> {
        // A parked worker sends through the old sink; the next activation takes the gate.
        self.worker.stop_parked_worker();
        if let Some(old) = self.tx_gate.take() {
            old.settle("a new FT gate replaces it");
        }
        let gate = Arc::new(TxGate::new(
            &format!("{} tx gate", self.id),
            setup.clock.clone(),
            Box::new(TapTxSink::new(self.fd.try_clone()?)),
            setup.net_cap_bytes,
        )?);
        self.tx_gate = Some(gate.clone());
        Ok(Some(DeviceGate::Net(gate)))
    }

    fn settle_output(&mut self, why: &str) {
        if let Some(g) = &self.tx_gate {
            g.settle(why);
        }
    }
}

#[cfg(test)]
mod tests;
