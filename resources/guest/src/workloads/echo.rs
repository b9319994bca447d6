//! Echo: TCP port 7001 sends back every byte (several connections at once);
//! UDP port 7001 sends back every datagram to where it came from.

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::{tcp, udp};

use super::service::{self, Service};
use crate::net::sockets::MAX_TCP;
use crate::say;

const PORT: u16 = 7001;
/// Bytes copied per step, and the largest datagram echoed (an unfragmented
/// one on a 1500-byte MTU carries 1472).
const CHUNK: usize = 2048;

struct Echo {
    tcp: [SocketHandle; MAX_TCP],
    udp: SocketHandle,
}

pub fn run() -> ! {
    service::run(|_devices, pool, sockets| {
        let mut udp = pool.udp()?;
        if let Err(e) = udp.bind(PORT) {
            say!("tandem-guest: error: echo: UDP bind: {:?}", e);
            return None;
        }
        let udp = sockets.add(udp);
        let mut tcp = [udp; MAX_TCP];
        for handle in tcp.iter_mut() {
            let mut socket = pool.tcp()?;
            if let Err(e) = socket.listen(PORT) {
                say!("tandem-guest: error: echo: listen: {:?}", e);
                return None;
            }
            *handle = sockets.add(socket);
        }
        Some(Echo { tcp, udp })
    })
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
    fn serve(&mut self, sockets: &mut SocketSet<'static>) -> bool {
        let mut worked = serve_udp(sockets.get_mut::<udp::Socket>(self.udp));
        for &handle in &self.tcp {
            worked |= serve_tcp(sockets.get_mut::<tcp::Socket>(handle));
        }
        worked
    }
}
