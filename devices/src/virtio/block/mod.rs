//! virtio-blk on a raw image file: IN, OUT, FLUSH and GET_ID on one request queue, read-only
//! disks, capacity in config space. A worker thread serves the queue (see `virtio` for why).

pub mod disk;
pub mod gate;
pub mod io;
pub mod request;

use super::chain;
use super::device::{
    ActivateContext, ActivateError, DeviceSnapshot, DeviceStateError, Interrupt, VirtioDevice,
};
use super::ft::{DeviceGate, FtSetup};
use super::worker::{queues_or_stop, Worker, WorkerEpoll, WorkerSlot};
use super::{GuestMemoryMmap, VIRTIO_F_VERSION_1};
use disk::RawDisk;
use ft::gate::EpochClock;
use gate::{DiskGate, DiskMode, GatedDisk};
use io::DiskIo;
use request::DiskId;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_S_IOERR,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::{Queue, QueueOwnedT, QueueState, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::epoll::{EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// Entries in the request queue.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: &[u16] = &[QUEUE_SIZE];
/// Data segments per request we tell the driver it may use (the header and status take two
/// descriptors of the queue).
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// epoll token of the queue's notification eventfd.
const QUEUE_TOKEN: u64 = 0;
/// epoll token of the disk's "room again" eventfd (an FT gate that pushed back).
const ROOM_TOKEN: u64 = 1;

/// One disk as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockConfig {
    /// Name, also the serial GET_ID returns (first 20 bytes).
    pub id: String,
    /// Raw image file.
    pub path: PathBuf,
    /// Refuse guest writes.
    pub readonly: bool,
}

/// Block device set-up errors.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The disk image cannot be opened (read-write unless `readonly`).
    #[error("cannot open disk image {path}")]
    Open {
        /// The image's path, as the config gave it.
        path: String,
        /// What `open(2)` said.
        #[source]
        source: std::io::Error,
    },
}

/// A virtio-blk device.
pub struct Block {
    id: String,
    disk: RawDisk,
    disk_id: DiskId,
    features: u64,
    config_space: Vec<u8>,
    /// Hands back (stopped) or over (parked) its queue's state.
    worker: Option<Worker<QueueState>>,
    /// The FT gate every request goes through once FT is enabled.
    gate: Option<Arc<DiskGate>>,
}

impl Block {
    /// Opens the image; the device starts when the guest driver sets it up.
    pub fn new(cfg: &BlockConfig) -> Result<Self, BlockError> {
        let disk = RawDisk::open(&cfg.path, cfg.readonly).map_err(|source| BlockError::Open {
            path: cfg.path.display().to_string(),
            source,
        })?;
        let mut disk_id = DiskId::default();
        let n = cfg.id.len().min(disk_id.len());
        disk_id[..n].copy_from_slice(&cfg.id.as_bytes()[..n]);
        let mut features = VIRTIO_F_VERSION_1 | 1 << VIRTIO_BLK_F_FLUSH | 1 << VIRTIO_BLK_F_SEG_MAX;
        if cfg.readonly {
            features |= 1 << VIRTIO_BLK_F_RO;
        }
        // struct virtio_blk_config up to seg_max: capacity (le64), size_max (le32), seg_max (le32).
        let mut config_space = Vec::with_capacity(16);
        config_space.extend_from_slice(&disk.sectors().to_le_bytes());
        config_space.extend_from_slice(&0u32.to_le_bytes());
        config_space.extend_from_slice(&SEG_MAX.to_le_bytes());
        Ok(Block {
            id: cfg.id.clone(),
            disk,
            disk_id,
            features,
            config_space,
            worker: None,
            gate: None,
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.disk.sectors()
    }

    /// Routes every request through an FT gate on `clock` from the next activation (the
    /// transport re-activates on resume, so enable it while quiesced). `index` is the disk's
    /// position among the VM's virtio devices, the same on both hosts.
    pub fn enable_ft(
        &mut self,
        clock: Arc<EpochClock>,
        index: u32,
        mode: DiskMode,
        cap_bytes: usize,
    ) -> std::io::Result<Arc<DiskGate>> {
        // A parked worker writes to the ungated disk; the next activation takes the gate.
        self.worker.stop_parked_worker();
        if let Some(old) = self.gate.take() {
            old.settle("a new FT gate replaces it");
        }
        let gate = Arc::new(DiskGate::new(
            &format!("{} disk gate", self.id),
            index,
            mode,
            clock,
            self.disk.try_clone()?,
            cap_bytes,
        )?);
        self.gate = Some(gate.clone());
        Ok(gate)
    }

    /// A second handle on the image, for the backup to apply committed writes to
    /// ([`gate::apply_writes`]) while the VM does not run.
    pub fn replica_disk(&self) -> std::io::Result<RawDisk> {
        self.disk.try_clone()
    }

    fn worker_disk(&self) -> Result<Box<dyn DiskIo>, ActivateError> {
        Ok(match &self.gate {
            Some(g) => Box::new(GatedDisk(g.clone())),
            None => Box::new(self.disk.try_clone().map_err(ActivateError::Dup)?),
        })
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space, offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let got = ctx.queues.len();
        let Some(q) = ctx.queues.into_iter().next().filter(|_| got == 1) else {
            return Err(ActivateError::QueueCount { expected: 1, got });
        };
        let interrupt = ctx.interrupt.clone();
        let worker = BlockWorker {
            disk: self.worker_disk()?,
            disk_id: self.disk_id,
            mem: ctx.mem,
            queue: q.queue,
            interrupt: ctx.interrupt,
            bounce: Vec::new(),
            broken: false,
        };
        let notify = q.notify;
        self.worker.stop_worker();
        self.worker = Some(
            Worker::spawn(format!("tandem_blk_{}", self.id), interrupt, move |ep| {
                worker.run(ep, notify)
            })
            .map_err(ActivateError::Worker)?,
        );
        Ok(())
    }

    fn reset(&mut self) {
        self.worker.stop_worker();
    }

    fn quiesce(&mut self) -> Option<Vec<Queue>> {
        let state = self.worker.park_worker()?;
        queues_or_stop(&mut self.worker, [state], "virtio-blk", &self.id)
    }

    fn resume(&mut self) -> bool {
        self.worker.as_mut().is_some_and(Worker::unpark)
    }

    fn state(&self) -> DeviceSnapshot {
        DeviceSnapshot::Block
    }

    fn restore(&mut self, state: &DeviceSnapshot) -> Result<(), DeviceStateError> {
        match state {
            // Everything else (capacity, ID) comes from the config and the image.
            DeviceSnapshot::Block => {
                // The parked worker's queue is not the saved one.
                self.worker.stop_parked_worker();
                Ok(())
            }
            _ => Err(DeviceStateError::WrongKind { expected: "block" }),
        }
    }

    fn enable_ft(&mut self, setup: &FtSetup, index: u32) -> std::io::Result<Option<DeviceGate>> {
        let gate = Block::enable_ft(
            self,
            setup.clock.clone(),
            index,
            setup.disk_mode,
            setup.disk_cap_bytes,
        )?;
        Ok(Some(DeviceGate::Disk(gate)))
    }

    fn settle_output(&mut self, why: &str) {
        if let Some(g) = &self.gate {
            g.settle(why);
        }
    }
}

/// Resets an eventfd's counter; a failed read (nothing pending) changes nothing.
fn drain_eventfd(fd: Option<std::os::fd::RawFd>) {
    if let Some(fd) = fd {
        let mut v = 0u64;
        // SAFETY: reads 8 bytes into a local u64 from an eventfd its owner keeps open.
        let _ = unsafe { libc::read(fd, &mut v as *mut u64 as *mut libc::c_void, 8) };
    }
}

/// Copies config space bytes at `offset` into `data`; bytes past the end read as zero.
pub(crate) fn read_config_bytes(space: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(off) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = space.get(off..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

/// What the worker thread owns: its own disk handle, the queue and guest memory.
pub(crate) struct BlockWorker {
    disk: Box<dyn DiskIo>,
    disk_id: DiskId,
    mem: GuestMemoryMmap,
    queue: Queue,
    interrupt: Arc<Interrupt>,
    bounce: Vec<u8>,
    /// The driver broke the queue (e.g. avail idx far ahead); nothing more is processed until
    /// it resets the device.
    broken: bool,
}

impl BlockWorker {
    fn run(mut self, ep: WorkerEpoll<QueueState>, notify: EventFd) -> QueueState {
        let watched = ep
            .add(notify.as_raw_fd(), EventSet::IN, QUEUE_TOKEN)
            .and_then(|_| match self.disk.room_fd() {
                Some(fd) => ep.add(fd, EventSet::IN, ROOM_TOKEN),
                None => Ok(()),
            });
        if let Err(e) = watched {
            crate::guest_error!("virtio-blk: cannot watch the queue: {e}");
            self.interrupt.set_needs_reset();
            return self.queue.state();
        }
        let mut events = vec![EpollEvent::default(); 4];
        // Requests queued before the first notification are served too.
        self.process_queue();
        loop {
            match ep.wait(&mut events, || self.queue.state()) {
                Ok(Some(tokens)) => {
                    // Draining the counters first means a notification arriving during
                    // processing wakes us again rather than being lost.
                    let _ = notify.read();
                    if tokens.contains(&ROOM_TOKEN) {
                        drain_eventfd(self.disk.room_fd());
                    }
                    self.process_queue();
                }
                Ok(None) => break,
                Err(e) => {
                    crate::guest_error!("virtio-blk: epoll failed, worker stops: {e}");
                    self.interrupt.set_needs_reset();
                    break;
                }
            }
        }
        self.queue.state()
    }

    fn give_up(&mut self, what: &str, e: virtio_queue::Error) {
        crate::guest_warn!("virtio-blk: {what}: {e}; the device needs a reset");
        self.broken = true;
        self.interrupt.set_needs_reset();
    }

    /// Serves every request the driver has made available.
    pub(crate) fn process_queue(&mut self) {
        let mut completed = false;
        // A full FT gate leaves requests in the ring until a commit frees room (backpressure;
        // the room eventfd brings us back).
        while !self.broken && self.disk.has_room() {
            let next = match self.queue.iter(&self.mem) {
                Ok(mut it) => it.next(),
                Err(e) => {
                    self.give_up("bad available ring", e);
                    break;
                }
            };
            let Some(desc_chain) = next else { break };
            let parsed = chain::parse(desc_chain, &self.mem);
            let used_len = match &parsed.buffers {
                Ok(bufs) => request::execute(
                    &*self.disk,
                    &self.disk_id,
                    &self.mem,
                    bufs,
                    &mut self.bounce,
                )
                .map_or(0, |c| c.used_len),
                Err(e) => {
                    crate::guest_debug!("virtio-blk: request {} refused: {e}", parsed.head);
                    self.report_bad_chain(parsed.status_byte)
                }
            };
            if let Err(e) = self.queue.add_used(&self.mem, parsed.head, used_len) {
                self.give_up("cannot return a request", e);
                break;
            }
            completed = true;
        }
        if completed && self.queue.needs_notification(&self.mem).unwrap_or(true) {
            self.interrupt.signal_used_queue();
        }
    }

    /// IOERR in the chain's last byte when that byte is ours to write; returns the used length.
    fn report_bad_chain(&self, status_byte: Option<GuestAddress>) -> u32 {
        match status_byte {
            Some(a) if self.mem.write_obj(VIRTIO_BLK_S_IOERR as u8, a).is_ok() => 1,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests;
