//! The NIC's worker: frames from the tap into the guest's RX buffers, and the guest's TX chains
//! out through the [`TxSink`]. RX never drops a frame for want of buffers: it stops reading the
//! tap until the guest adds some (the kernel queues frames meanwhile).

use super::tap::VNET_HDR_LEN;
use super::tx::TxSink;
use super::NetCounters;
use crate::virtio::chain::{self, ChainBuffers};
use crate::virtio::device::Interrupt;
use crate::virtio::worker::WorkerEpoll;
use crate::virtio::GuestMemoryMmap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use virtio_queue::{Queue, QueueOwnedT, QueueState, QueueT};
use vmm_sys_util::epoll::{EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// Largest Ethernet frame we move (a tap's MTU can be at most 65535).
pub const MAX_FRAME: usize = 65535;
/// Smallest RX buffer a driver may give without mergeable buffers or GSO: header plus a
/// 1514-byte frame (virtio 1.x, 5.1.6.3.1). Smaller chains are the driver's error.
const MIN_RX_BUFFER: u64 = VNET_HDR_LEN as u64 + 1514;

const RX_QUEUE_TOKEN: u64 = 0;
const TX_QUEUE_TOKEN: u64 = 1;
const TAP_TOKEN: u64 = 2;
/// The TX sink (an FT gate) has room again after pushing back.
const TX_ROOM_TOKEN: u64 = 3;

/// What the thread owns.
pub(crate) struct NetWorker {
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    rx: Queue,
    tx: Queue,
    fd: OwnedFd,
    sink: Box<dyn TxSink>,
    counters: Arc<NetCounters>,
    /// One frame read from the tap (vnet header first) waiting for an RX buffer.
    frame: Vec<u8>,
    pending: Option<usize>,
    tx_buf: Vec<u8>,
    rx_broken: bool,
    tx_broken: bool,
}

/// What a stopped worker hands back, and a copy of which a parked one hands over: its queues
/// with their progress, and a frame read from the tap that no RX buffer has taken yet (it
/// belongs to the device's state, not the tap's).
pub(crate) struct NetWorkerOut {
    pub rx: QueueState,
    pub tx: QueueState,
    pub held_frame: Option<Vec<u8>>,
}

/// Whether the worker should keep reading the tap.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RxState {
    /// The tap is drained; wake when it has more.
    WaitForTap,
    /// A frame waits and the guest has no buffers; wake on the RX queue's notification.
    WaitForBuffers,
}

impl NetWorker {
    pub(crate) fn new(
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        rx: Queue,
        tx: Queue,
        fd: OwnedFd,
        sink: Box<dyn TxSink>,
        counters: Arc<NetCounters>,
    ) -> Self {
        NetWorker {
            mem,
            interrupt,
            rx,
            tx,
            fd,
            sink,
            counters,
            frame: vec![0; VNET_HDR_LEN + MAX_FRAME],
            pending: None,
            tx_buf: Vec::new(),
            rx_broken: false,
            tx_broken: false,
        }
    }

    /// Starts with a frame held when the device was last quiesced: it goes to the guest first.
    pub(crate) fn with_held_frame(mut self, held: Option<Vec<u8>>) -> Self {
        self.pending = held.and_then(|f| {
            let dst = self.frame.get_mut(..f.len())?;
            dst.copy_from_slice(&f);
            Some(f.len())
        });
        self
    }

    pub(crate) fn run(
        mut self,
        ep: WorkerEpoll<NetWorkerOut>,
        rx_notify: EventFd,
        tx_notify: EventFd,
    ) -> NetWorkerOut {
        let fd = self.fd.as_raw_fd();
        let watched = ep
            .add(rx_notify.as_raw_fd(), EventSet::IN, RX_QUEUE_TOKEN)
            .and_then(|_| ep.add(tx_notify.as_raw_fd(), EventSet::IN, TX_QUEUE_TOKEN))
            .and_then(|_| ep.add(fd, EventSet::IN, TAP_TOKEN))
            .and_then(|_| match self.sink.room_fd() {
                Some(room) => ep.add(room, EventSet::IN, TX_ROOM_TOKEN),
                None => Ok(()),
            });
        if let Err(e) = watched {
            crate::guest_error!("virtio-net: cannot watch queues and tap: {e}");
            self.interrupt.set_needs_reset();
            return self.snapshot();
        }
        let mut tap_watched = true;
        let mut events = vec![EpollEvent::default(); 8];
        self.process_tx();
        let mut state = self.process_rx();
        loop {
            let want_tap = state == RxState::WaitForTap;
            if want_tap != tap_watched {
                let ev = if want_tap {
                    EventSet::IN
                } else {
                    EventSet::empty()
                };
                if let Err(e) = ep.modify(fd, ev, TAP_TOKEN) {
                    crate::guest_error!("virtio-net: epoll modify failed, worker stops: {e}");
                    break;
                }
                tap_watched = want_tap;
            }
            let tokens = match ep.wait(&mut events, || self.snapshot()) {
                Ok(Some(t)) => t,
                Ok(None) => break,
                Err(e) => {
                    crate::guest_error!("virtio-net: epoll failed, worker stops: {e}");
                    self.interrupt.set_needs_reset();
                    break;
                }
            };
            if tokens.contains(&TX_ROOM_TOKEN) {
                self.drain_room_fd();
            }
            if tokens.contains(&TX_QUEUE_TOKEN) || tokens.contains(&TX_ROOM_TOKEN) {
                if tokens.contains(&TX_QUEUE_TOKEN) {
                    let _ = tx_notify.read();
                }
                self.process_tx();
            }
            if tokens.contains(&RX_QUEUE_TOKEN) || tokens.contains(&TAP_TOKEN) {
                if tokens.contains(&RX_QUEUE_TOKEN) {
                    let _ = rx_notify.read();
                }
                state = self.process_rx();
            }
        }
        self.snapshot()
    }

    /// The queues' progress and the held frame, as a park hands them over.
    fn snapshot(&self) -> NetWorkerOut {
        let held_frame = self
            .pending
            .and_then(|len| self.frame.get(..len))
            .map(<[u8]>::to_vec);
        NetWorkerOut {
            rx: self.rx.state(),
            tx: self.tx.state(),
            held_frame,
        }
    }

    fn give_up(&mut self, rx: bool, what: &str, e: virtio_queue::Error) {
        crate::guest_warn!("virtio-net: {what}: {e}; the device needs a reset");
        if rx {
            self.rx_broken = true;
        } else {
            self.tx_broken = true;
        }
        self.interrupt.set_needs_reset();
    }

    fn notify(&mut self, rx: bool) {
        let q = if rx { &mut self.rx } else { &mut self.tx };
        if q.needs_notification(&self.mem).unwrap_or(true) {
            self.interrupt.signal_used_queue();
        }
    }

    /// Resets the sink's room eventfd so that it wakes us only on the next change.
    fn drain_room_fd(&self) {
        if let Some(fd) = self.sink.room_fd() {
            let mut v = 0u64;
            // SAFETY: reads 8 bytes into a local u64 from the sink's eventfd, which the sink
            // keeps open while we hold it; a failed (EAGAIN) read changes nothing.
            let _ = unsafe { libc::read(fd, &mut v as *mut u64 as *mut libc::c_void, 8) };
        }
    }

    /// Sends every chain the guest has made available, until the sink pushes back.
    pub(crate) fn process_tx(&mut self) {
        let mut used = false;
        // A full gate leaves the chains in the ring: the guest sees its TX ring fill, not a
        // dropped frame, and the room eventfd brings us back here.
        while !self.tx_broken && self.sink.has_room() {
            let next = match self.tx.iter(&self.mem) {
                Ok(mut it) => it.next(),
                Err(e) => {
                    self.give_up(false, "bad TX available ring", e);
                    break;
                }
            };
            let Some(desc_chain) = next else { break };
            let parsed = chain::parse(desc_chain, &self.mem);
            let sent = match &parsed.buffers {
                Ok(bufs) => self.send(bufs),
                Err(e) => {
                    crate::guest_debug!("virtio-net: TX chain {} refused: {e}", parsed.head);
                    false
                }
            };
            let c = if sent {
                &self.counters.tx_frames
            } else {
                &self.counters.tx_dropped
            };
            c.fetch_add(1, Ordering::Relaxed);
            // TX buffers are only read, so the used length is 0 either way.
            if let Err(e) = self.tx.add_used(&self.mem, parsed.head, 0) {
                self.give_up(false, "cannot return a TX chain", e);
                break;
            }
            used = true;
        }
        if used {
            self.notify(false);
        }
    }

    /// Copies the frame out of a TX chain and hands it to the sink.
    fn send(&mut self, bufs: &ChainBuffers) -> bool {
        let len = bufs.readable_len();
        // TX buffers are device-readable only; a writable one means a confused or hostile driver.
        if bufs.writable_len() != 0
            || len <= VNET_HDR_LEN as u64
            || len > (VNET_HDR_LEN + MAX_FRAME) as u64
        {
            crate::guest_debug!(
                "virtio-net: TX chain with {len} readable, {} writable bytes dropped",
                bufs.writable_len()
            );
            return false;
        }
        // The guest's header is ignored: with no offloads negotiated it has nothing to say.
        self.tx_buf.resize(len as usize - VNET_HDR_LEN, 0);
        if let Err(e) = bufs.read_at(&self.mem, VNET_HDR_LEN as u64, &mut self.tx_buf) {
            crate::guest_debug!("virtio-net: TX chain unreadable: {e}");
            return false;
        }
        match self.sink.send(&self.tx_buf) {
            Ok(()) => true,
            Err(e) => {
                crate::guest_debug!("virtio-net: TX frame lost: {e}");
                false
            }
        }
    }

    /// Reads one frame from the tap into `self.frame`; `None` when the tap has none.
    fn read_frame(&mut self) -> Option<usize> {
        loop {
            // SAFETY: reads at most `frame.len()` bytes into the buffer we own; the fd is ours.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    self.frame.as_mut_ptr() as *mut libc::c_void,
                    self.frame.len(),
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => return None,
                    _ => {
                        crate::guest_warn!("virtio-net: tap read failed: {e}");
                        return None;
                    }
                }
            }
            let n = n as usize;
            if n > VNET_HDR_LEN {
                return Some(n);
            }
            // A runt without a frame behind its header: nothing to deliver.
            self.counters.rx_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Delivers frames from the tap while the guest has buffers for them.
    pub(crate) fn process_rx(&mut self) -> RxState {
        let mut used = false;
        let state = loop {
            if self.rx_broken {
                // Keep draining the tap so the host side does not back up behind a dead NIC.
                if self.read_frame().is_some() {
                    self.counters.rx_dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                self.pending = None;
                break RxState::WaitForTap;
            }
            let len = match self.pending {
                Some(len) => len,
                None => match self.read_frame() {
                    Some(len) => {
                        self.pending = Some(len);
                        len
                    }
                    None => break RxState::WaitForTap,
                },
            };
            let next = match self.rx.iter(&self.mem) {
                Ok(mut it) => it.next(),
                Err(e) => {
                    self.give_up(true, "bad RX available ring", e);
                    continue;
                }
            };
            let Some(desc_chain) = next else {
                break RxState::WaitForBuffers;
            };
            let parsed = chain::parse(desc_chain, &self.mem);
            let used_len = match &parsed.buffers {
                Ok(bufs) if bufs.writable_len() >= len as u64 => match self.deliver(bufs, len) {
                    Ok(()) => {
                        self.pending = None;
                        self.counters.rx_frames.fetch_add(1, Ordering::Relaxed);
                        len as u32
                    }
                    Err(e) => {
                        crate::guest_debug!("virtio-net: RX chain {} unwritable: {e}", parsed.head);
                        0
                    }
                },
                Ok(bufs) if bufs.writable_len() >= MIN_RX_BUFFER => {
                    // A proper buffer, but the frame is bigger than any the guest can take:
                    // drop the frame and keep the buffer for the next one.
                    crate::guest_debug!(
                        "virtio-net: {len}-byte frame does not fit RX buffers; dropped"
                    );
                    self.pending = None;
                    self.counters.rx_dropped.fetch_add(1, Ordering::Relaxed);
                    self.rx.go_to_previous_position();
                    continue;
                }
                Ok(bufs) => {
                    crate::guest_debug!(
                        "virtio-net: RX chain {} has only {} writable bytes; returned unused",
                        parsed.head,
                        bufs.writable_len()
                    );
                    0
                }
                Err(e) => {
                    crate::guest_debug!("virtio-net: RX chain {} refused: {e}", parsed.head);
                    0
                }
            };
            if let Err(e) = self.rx.add_used(&self.mem, parsed.head, used_len) {
                self.give_up(true, "cannot return an RX chain", e);
                continue;
            }
            used = true;
        };
        if used {
            self.notify(true);
        }
        state
    }

    /// Writes the pending frame (header first) into `bufs`.
    fn deliver(&mut self, bufs: &ChainBuffers, len: usize) -> Result<(), chain::ChainError> {
        // The tap's header could carry flags (e.g. DATA_VALID) the guest did not negotiate; send
        // a clean one. num_buffers is 1 without mergeable buffers (virtio 1.x, 5.1.6.4).
        let mut hdr = [0u8; VNET_HDR_LEN];
        hdr[10..12].copy_from_slice(&1u16.to_le_bytes());
        bufs.write_at(&self.mem, 0, &hdr)?;
        bufs.write_at(
            &self.mem,
            VNET_HDR_LEN as u64,
            &self.frame[VNET_HDR_LEN..len],
        )
    }
}
