//! Socket buffers: static pools (there is no heap), handed out once each.

use smoltcp::iface::SocketStorage;
use smoltcp::socket::{tcp, udp};

use crate::once::Once;

/// TCP sockets a workload may create.
pub const MAX_TCP: usize = 8;
/// Per direction; 16 KiB keeps a LAN pipe full without window scaling.
const TCP_BUFFER: usize = 16 * 1024;
const UDP_BUFFER: usize = 16 * 1024;
const UDP_PACKETS: usize = 32;
/// Slots of the socket set: every TCP socket plus one UDP socket.
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

static SLOTS: Once<Slots> = Once::new(Slots {
    sockets: [SocketStorage::EMPTY; MAX_SOCKETS],
    udp_meta: [[udp::PacketMetadata::EMPTY; UDP_PACKETS]; 2],
});
static BYTES: Once<Bytes> = Once::new(Bytes {
    tcp: [[[0; TCP_BUFFER]; 2]; MAX_TCP],
    udp: [[0; UDP_BUFFER]; 2],
});

/// What is left of the static storage.
pub struct Pool {
    tcp: &'static mut [TcpBuffers],
    udp: Option<(&'static mut UdpMeta, &'static mut UdpBytes)>,
}

/// The socket set's slots and the buffer pool.  Call once.
pub fn take() -> (&'static mut [SocketStorage<'static>], Pool) {
    let slots = SLOTS.take();
    let bytes = BYTES.take();
    (
        &mut slots.sockets,
        Pool {
            tcp: &mut bytes.tcp,
            udp: Some((&mut slots.udp_meta, &mut bytes.udp)),
        },
    )
}

impl Pool {
    /// A TCP socket with its own buffers, or None once `MAX_TCP` are out.
    /// Nagle is off: the services answer small requests at once, and holding
    /// an answer back until the previous one is acked would cost an RTT.
    pub fn tcp(&mut self) -> Option<tcp::Socket<'static>> {
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
    pub fn udp(&mut self) -> Option<udp::Socket<'static>> {
        let ([rx_meta, tx_meta], [rx, tx]) = self.udp.take()?;
        Some(udp::Socket::new(
            udp::PacketBuffer::new(&mut rx_meta[..], &mut rx[..]),
            udp::PacketBuffer::new(&mut tx_meta[..], &mut tx[..]),
        ))
    }
}
