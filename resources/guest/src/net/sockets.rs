//! Socket buffers: static pools (there is no heap), one per NIC, handed out
//! once each; and `Sockets`, the socket sets of the configured NICs.
//!
//! Each configured NIC has its own smoltcp interface and socket set: a
//! listening socket belongs to one interface, so a service listens on every
//! NIC with sockets of its own there (see `Sockets::has`).

use smoltcp::iface::{SocketHandle, SocketSet, SocketStorage};
use smoltcp::socket::{tcp, udp};

use crate::once::Once;
use crate::virtio::MAX_NICS;

/// TCP sockets a workload may create per NIC.
pub const MAX_TCP: usize = 8;
/// Per direction; 16 KiB keeps a LAN pipe full without window scaling.
const TCP_BUFFER: usize = 16 * 1024;
const UDP_BUFFER: usize = 16 * 1024;
const UDP_PACKETS: usize = 32;
/// Slots of a socket set: every TCP socket plus one UDP socket.
const MAX_SOCKETS: usize = MAX_TCP + 1;

type TcpBuffers = [[u8; TCP_BUFFER]; 2];
/// RX and TX packet metadata, and RX and TX payload, of the UDP socket.
type UdpMeta = [[udp::PacketMetadata; UDP_PACKETS]; 2];
type UdpBytes = [[u8; UDP_BUFFER]; 2];

/// Slots and packet metadata: small, but not all-zero, so they are in `.data`.
struct Slots {
    sockets: [SocketStorage<'static>; MAX_SOCKETS],
    udp_meta: UdpMeta,
}

/// The byte buffers: all zero, so they cost `.bss`, not image size.
struct Bytes {
    tcp: [TcpBuffers; MAX_TCP],
    udp: UdpBytes,
}

static SLOTS: [Once<Slots>; MAX_NICS] = [const {
    Once::new(Slots {
        sockets: [SocketStorage::EMPTY; MAX_SOCKETS],
        udp_meta: [[udp::PacketMetadata::EMPTY; UDP_PACKETS]; 2],
    })
}; MAX_NICS];
static BYTES: [Once<Bytes>; MAX_NICS] = [const {
    Once::new(Bytes {
        tcp: [[[0; TCP_BUFFER]; 2]; MAX_TCP],
        udp: [[0; UDP_BUFFER]; 2],
    })
}; MAX_NICS];

/// What is left of one NIC's static storage.
struct Pool {
    tcp: &'static mut [TcpBuffers],
    udp: Option<(&'static mut UdpMeta, &'static mut UdpBytes)>,
}

impl Pool {
    /// NIC `nic`'s socket-set slots and buffer pool.  Call once per NIC.
    fn take(nic: usize) -> (&'static mut [SocketStorage<'static>], Pool) {
        let slots = SLOTS[nic].take();
        let bytes = BYTES[nic].take();
        (
            &mut slots.sockets,
            Pool {
                tcp: &mut bytes.tcp,
                udp: Some((&mut slots.udp_meta, &mut bytes.udp)),
            },
        )
    }

    /// A TCP socket with its own buffers, or None once `MAX_TCP` are out.
    /// Nagle is off: the services answer small requests at once, and holding
    /// an answer back until the previous one is acked would cost an RTT.
    fn tcp(&mut self) -> Option<tcp::Socket<'static>> {
        let (first, rest) = core::mem::take(&mut self.tcp).split_first_mut()?;
        self.tcp = rest;
        let [rx, tx] = first;
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(&mut rx[..]),
            tcp::SocketBuffer::new(&mut tx[..]),
        );
        socket.set_nagle_enabled(false);
        Some(socket)
    }

    /// The one UDP socket, or None if it was taken.
    fn udp(&mut self) -> Option<udp::Socket<'static>> {
        let ([rx_meta, tx_meta], [rx, tx]) = self.udp.take()?;
        Some(udp::Socket::new(
            udp::PacketBuffer::new(&mut rx_meta[..], &mut rx[..]),
            udp::PacketBuffer::new(&mut tx_meta[..], &mut tx[..]),
        ))
    }
}

/// A socket: the NIC whose set holds it, and its handle there.
#[derive(Clone, Copy)]
pub struct Handle {
    pub nic: usize,
    handle: SocketHandle,
}

/// One NIC's socket set and what is left of its pool.
struct NicSockets {
    set: SocketSet<'static>,
    pool: Pool,
}

/// The socket sets of the configured NICs (index = NIC index).
pub struct Sockets {
    nics: [Option<NicSockets>; MAX_NICS],
}

impl Sockets {
    /// Socket sets for the NICs marked in `configured`.  Call once.
    pub fn new(configured: [bool; MAX_NICS]) -> Self {
        let mut nics = [const { None }; MAX_NICS];
        for (nic, slot) in nics.iter_mut().enumerate() {
            if configured[nic] {
                let (storage, pool) = Pool::take(nic);
                *slot = Some(NicSockets {
                    set: SocketSet::new(storage),
                    pool,
                });
            }
        }
        Sockets { nics }
    }

    /// Whether NIC `nic` is configured (has a socket set).
    pub fn has(&self, nic: usize) -> bool {
        matches!(self.nics.get(nic), Some(Some(_)))
    }

    /// NIC `nic`'s socket set (for its interface).
    pub fn set(&mut self, nic: usize) -> Option<&mut SocketSet<'static>> {
        Some(&mut self.nics.get_mut(nic)?.as_mut()?.set)
    }

    /// Add a new TCP socket on NIC `nic`; None when `nic` is not configured
    /// or its `MAX_TCP` sockets are out.
    pub fn add_tcp(&mut self, nic: usize) -> Option<Handle> {
        let s = self.nics.get_mut(nic)?.as_mut()?;
        let socket = s.pool.tcp()?;
        Some(Handle {
            nic,
            handle: s.set.add(socket),
        })
    }

    /// Add NIC `nic`'s one UDP socket; None when `nic` is not configured or
    /// it was added already.
    pub fn add_udp(&mut self, nic: usize) -> Option<Handle> {
        let s = self.nics.get_mut(nic)?.as_mut()?;
        let socket = s.pool.udp()?;
        Some(Handle {
            nic,
            handle: s.set.add(socket),
        })
    }

    fn set_of(&mut self, h: Handle) -> &mut SocketSet<'static> {
        match self.nics[h.nic].as_mut() {
            Some(s) => &mut s.set,
            // Handles come only from `add_*` on a configured NIC.
            None => unreachable!("socket handle of an unconfigured NIC"),
        }
    }

    /// The TCP socket `h` (panics if `h` is another kind, as smoltcp does).
    pub fn tcp(&mut self, h: Handle) -> &mut tcp::Socket<'static> {
        self.set_of(h).get_mut::<tcp::Socket>(h.handle)
    }

    /// The UDP socket `h` (panics if `h` is another kind, as smoltcp does).
    pub fn udp(&mut self, h: Handle) -> &mut udp::Socket<'static> {
        self.set_of(h).get_mut::<udp::Socket>(h.handle)
    }
}
