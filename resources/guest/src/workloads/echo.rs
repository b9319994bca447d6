//! Echo: TCP port 7001 sends back every byte (several connections at once);
//! UDP port 7001 sends back every datagram to where it came from.  Both on
//! every configured NIC.

use smoltcp::socket::{tcp, udp};

use super::service::{self, Service};
use crate::net::sockets::{Handle, Sockets, MAX_TCP};
use crate::say;
use crate::virtio::MAX_NICS;

const PORT: u16 = 7001;
/// Bytes copied per step, and the largest datagram echoed (an unfragmented
/// one on a 1500-byte MTU carries 1472).
const CHUNK: usize = 2048;

/// The sockets of each configured NIC (index = NIC index).
struct Echo {
    nics: [Option<NicSockets>; MAX_NICS],
}

struct NicSockets {
    tcp: [Handle; MAX_TCP],
    udp: Handle,
}

pub fn run() -> ! {
    service::run(|_devices, sockets| {
        let mut nics = [const { None }; MAX_NICS];
        for (nic, slot) in nics.iter_mut().enumerate() {
            if sockets.has(nic) {
                *slot = Some(open(sockets, nic)?);
            }
        }
        Some(Echo { nics })
    })
}

/// Open NIC `nic`'s UDP socket and listening TCP sockets.
fn open(sockets: &mut Sockets, nic: usize) -> Option<NicSockets> {
    let udp = sockets.add_udp(nic)?;
    if let Err(e) = sockets.udp(udp).bind(PORT) {
        say!("tandem-guest: error: echo: UDP bind: {:?}", e);
        return None;
    }
    let mut tcp = [udp; MAX_TCP];
    for handle in tcp.iter_mut() {
        *handle = sockets.add_tcp(nic)?;
        if let Err(e) = sockets.tcp(*handle).listen(PORT) {
            say!("tandem-guest: error: echo: listen: {:?}", e);
            return None;
        }
    }
    Some(NicSockets { tcp, udp })
}

/// Echo what one TCP socket holds, as far as its send buffer has room.
fn serve_tcp(socket: &mut tcp::Socket) -> bool {
    if !socket.is_open() {
        // Closed (or in TIME-WAIT): listen again for the next client.
        if socket.listen(PORT).is_err() {
            say!("tandem-guest: warning: echo: cannot listen again");
        }
        return true;
    }
    let mut worked = false;
    let mut chunk = [0u8; CHUNK];
    while socket.can_recv() && socket.can_send() {
        let room = (socket.send_capacity() - socket.send_queue()).min(CHUNK);
        let Ok(n) = socket.recv_slice(&mut chunk[..room]) else {
            break;
        };
        if n == 0 {
            break;
        }
        // `room` was checked: all of it fits.
        let _ = socket.send_slice(&chunk[..n]);
        worked = true;
    }
    if !socket.may_recv() && socket.may_send() && socket.recv_queue() == 0 {
        // The client closed its side and everything is echoed: close ours.
        socket.close();
        worked = true;
    }
    worked
}

/// Echo every datagram waiting (dropped when the send buffer is full, as UDP may).
fn serve_udp(socket: &mut udp::Socket) -> bool {
    let mut worked = false;
    let mut datagram = [0u8; CHUNK];
    while let Ok((n, meta)) = socket.recv_slice(&mut datagram) {
        let _ = socket.send_slice(&datagram[..n], meta);
        worked = true;
    }
    worked
}

impl Service for Echo {
    fn serve(&mut self, sockets: &mut Sockets) -> bool {
        let mut worked = false;
        for nic in self.nics.iter().flatten() {
            worked |= serve_udp(sockets.udp(nic.udp));
            for &handle in &nic.tcp {
                worked |= serve_tcp(sockets.tcp(handle));
            }
        }
        worked
    }
}
