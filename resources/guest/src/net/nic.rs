//! The NIC as a smoltcp `Device`: virtio-drivers' `VirtIONetRaw` (no heap)
//! with static frame buffers.
//!
//! Every RX buffer is posted to the device at start and re-posted once
//! smoltcp has consumed its frame.  TX frames are built in place in a free TX
//! buffer, behind the 12-byte virtio-net header, and handed to the device
//! without waiting; finished ones are reclaimed on the next receive/transmit.

use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::Error;

use crate::dma::GuestHal;
use crate::once::Once;
use crate::virtio::{MmioBus, MAX_NICS};

/// Entries in each virtqueue; every RX buffer takes one.
const QUEUE_SIZE: usize = 64;
const RX_BUFFERS: usize = QUEUE_SIZE;
const TX_BUFFERS: usize = 32;
/// virtio-net header (12 bytes, VERSION_1) plus a 1514-byte frame, rounded up.
const BUFFER_SIZE: usize = 1536;
/// Largest Ethernet frame, header included (smoltcp's MTU for Ethernet).
const MAX_FRAME: usize = 1514;

type Buffer = [u8; BUFFER_SIZE];

struct Buffers {
    rx: [Buffer; RX_BUFFERS],
    tx: [Buffer; TX_BUFFERS],
    /// Where a frame goes when no TX buffer is free (it is then dropped).
    scratch: Buffer,
}

/// One set per NIC (all zero: `.bss`).
static BUFFERS: [Once<Buffers>; MAX_NICS] = [const {
    Once::new(Buffers {
        rx: [[0; BUFFER_SIZE]; RX_BUFFERS],
        tx: [[0; BUFFER_SIZE]; TX_BUFFERS],
        scratch: [0; BUFFER_SIZE],
    })
}; MAX_NICS];

type Raw = VirtIONetRaw<GuestHal, MmioBus, QUEUE_SIZE>;

pub struct Nic {
    raw: Raw,
    rx: Rx,
    tx: Tx,
}

struct Rx {
    buffers: &'static mut [Buffer; RX_BUFFERS],
    /// The buffer each in-flight token (the descriptor head) stands for.
    buffer_of_token: [u8; QUEUE_SIZE],
    /// The buffer whose frame smoltcp read last; re-posted on the next call
    /// (the RX token borrowed it until then).
    to_repost: Option<usize>,
}

struct Tx {
    buffers: &'static mut [Buffer; TX_BUFFERS],
    /// (token, length) of each buffer the device still holds.
    in_flight: [Option<(u16, u16)>; TX_BUFFERS],
    scratch: &'static mut Buffer,
}

impl Nic {
    /// Start the driver of NIC `index` (< `MAX_NICS`) and post every RX
    /// buffer.  Call once per index.  (The driver must never be dropped: see
    /// `virtio::Devices`.)
    pub fn new(transport: MmioBus, index: usize) -> Result<Self, Error> {
        // The driver first: when it fails, the index is tried again by the
        // next NIC, so its buffers must still be there.
        let raw = Raw::new(transport)?;
        let buffers = BUFFERS[index].take();
        let mut nic = Nic {
            raw,
            rx: Rx {
                buffers: &mut buffers.rx,
                buffer_of_token: [0; QUEUE_SIZE],
                to_repost: None,
            },
            tx: Tx {
                buffers: &mut buffers.tx,
                in_flight: [None; TX_BUFFERS],
                scratch: &mut buffers.scratch,
            },
        };
        for i in 0..RX_BUFFERS {
            if let Err(e) = nic.post_rx(i) {
                // Cannot happen (one descriptor per buffer); fewer buffers still work.
                log::warn!("cannot post RX buffer {i}: {e}");
            }
        }
        Ok(nic)
    }

    pub fn mac(&self) -> [u8; 6] {
        self.raw.mac_address()
    }

    /// Whether a received frame waits in the used ring (read from memory:
    /// no exit).
    pub fn rx_pending(&self) -> bool {
        self.raw.poll_receive().is_some()
    }

    /// Clear the device's interrupt status (two register accesses, each an
    /// exit to the VMM: done once per interrupt, off the request path).
    pub fn ack_interrupt(&mut self) {
        self.raw.ack_interrupt();
    }

    fn post_rx(&mut self, i: usize) -> Result<(), Error> {
        // SAFETY: buffer `i` is not in the device's hands (never posted, or
        // its frame was completed) and we do not touch it until its token
        // comes back through `poll_receive`.
        let token = unsafe { self.raw.receive_begin(&mut self.rx.buffers[i])? };
        self.rx.buffer_of_token[token as usize] = i as u8;
        Ok(())
    }

    fn repost_rx(&mut self) {
        if let Some(i) = self.rx.to_repost.take() {
            if let Err(e) = self.post_rx(i) {
                // Cannot happen (one descriptor per buffer); we would only
                // lose one of 64 buffers.
                log::warn!("cannot re-post an RX buffer: {e}");
            }
        }
    }

    /// Take back the TX buffers the device has finished with.
    fn reclaim_tx(&mut self) {
        while let Some(token) = self.raw.poll_transmit() {
            let Some(i) = self
                .tx
                .in_flight
                .iter()
                .position(|f| matches!(f, Some((t, _)) if *t == token))
            else {
                log::warn!("virtio-net completed unknown TX token {token}");
                return;
            };
            let len = self.tx.in_flight[i].map_or(0, |(_, len)| len as usize);
            // SAFETY: the same buffer (and length) as `transmit_begin` got.
            if let Err(e) = unsafe {
                self.raw
                    .transmit_complete(token, &self.tx.buffers[i][..len])
            } {
                log::warn!("virtio-net TX completion: {e}");
            }
            self.tx.in_flight[i] = None;
        }
    }
}

pub struct RxToken<'a> {
    frame: &'a [u8],
}

pub struct TxToken<'a> {
    raw: &'a mut Raw,
    tx: &'a mut Tx,
}

impl Device for Nic {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        self.repost_rx();
        self.reclaim_tx();
        let token = self.raw.poll_receive()?;
        let i = self.rx.buffer_of_token[token as usize] as usize;
        // SAFETY: the buffer `token` was posted with.
        let done = unsafe { self.raw.receive_complete(token, &mut self.rx.buffers[i]) };
        self.rx.to_repost = Some(i);
        let (header, len) = match done {
            Ok(lengths) => lengths,
            Err(e) => {
                log::warn!("virtio-net RX: {e}");
                return None;
            }
        };
        let frame = self.rx.buffers[i].get(header..header + len)?;
        Some((
            RxToken { frame },
            TxToken {
                raw: &mut self.raw,
                tx: &mut self.tx,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        self.repost_rx();
        self.reclaim_tx();
        // No free buffer: smoltcp keeps the data and retries on a later poll
        // (the TX completion's interrupt brings one).
        self.tx
            .in_flight
            .iter()
            .any(Option::is_none)
            .then_some(TxToken {
                raw: &mut self.raw,
                tx: &mut self.tx,
            })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MAX_FRAME;
        caps.max_burst_size = Some(TX_BUFFERS);
        caps
    }
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.frame)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let Some(i) = self.tx.in_flight.iter().position(Option::is_none) else {
            // Only a receive's token can get here with all buffers in
            // flight: build the frame and drop it, as a full NIC would.
            return f(&mut self.tx.scratch[..len.min(MAX_FRAME)]);
        };
        let buffer = &mut self.tx.buffers[i];
        let header = self.raw.fill_buffer_header(buffer).unwrap_or(0);
        let total = header + len.min(MAX_FRAME);
        let result = f(&mut buffer[header..total]);
        // SAFETY: buffer `i` is free, and is not touched again until the
        // device returns its token (`reclaim_tx`).
        match unsafe { self.raw.transmit_begin(&buffer[..total]) } {
            Ok(token) => self.tx.in_flight[i] = Some((token, total as u16)),
            // Cannot happen (32 buffers, 64 descriptors); the frame is lost
            // and TCP resends it.
            Err(e) => log::warn!("virtio-net TX: {e}"),
        }
        result
    }
}
