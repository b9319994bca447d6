//! A TCP proxy between source and destination that can cut the stream, flip a bit in it, or
//! delay the destination's replies.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// What the proxy does.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Closes both connections after forwarding this many source → destination bytes.
    CutAfter(u64),
    /// Inverts one bit of the source → destination byte at this offset.
    FlipBitAt(u64),
    /// Forwards everything, but holds each chunk of destination → source bytes this long (a
    /// backup slow to ack).
    #[allow(dead_code)]
    DelayReplies(Duration),
    /// Forwards source → destination bytes at most this many per second (0: no limit), read
    /// anew for every chunk so that a test can slow the link down and let it recover.
    #[allow(dead_code)]
    RateLimit(Arc<AtomicU64>),
}

/// Listens on a loopback port; the first connection is forwarded to `upstream`.
pub fn start(upstream: SocketAddr, fault: Fault) -> (SocketAddr, JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let Ok((down, _)) = l.accept() else { return };
        let Ok(up) = TcpStream::connect(upstream) else {
            return;
        };
        // As the engine's own sockets: Nagle would hold acks back ~40 ms behind delayed ACKs.
        let _ = down.set_nodelay(true);
        let _ = up.set_nodelay(true);
        let (down2, up2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
        let (fwd, back) = match fault {
            Fault::DelayReplies(d) => (None, Some(d)),
            f => (Some(f), None),
        };
        let back = std::thread::spawn(move || pump(up2, down2, None, back));
        pump(down, up, fwd, None);
        let _ = back.join();
    });
    (addr, t)
}

fn pump(mut from: TcpStream, mut to: TcpStream, fault: Option<Fault>, delay: Option<Duration>) {
    let mut buf = vec![0u8; 16 << 10];
    let mut at: u64 = 0;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(d) = delay {
            std::thread::sleep(d);
        }
        let chunk = &mut buf[..n];
        match &fault {
            Some(Fault::CutAfter(limit)) if at + n as u64 >= *limit => {
                let keep = (limit - at) as usize;
                let _ = to.write_all(&chunk[..keep]);
                let _ = from.shutdown(Shutdown::Both);
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
            Some(Fault::FlipBitAt(off)) if (at..at + n as u64).contains(off) => {
                chunk[(off - at) as usize] ^= 0x10;
            }
            Some(Fault::RateLimit(rate)) => {
                let rate = rate.load(Ordering::SeqCst);
                if rate > 0 {
                    std::thread::sleep(Duration::from_secs_f64(n as f64 / rate as f64));
                }
            }
            _ => {}
        }
        at += n as u64;
        if to.write_all(chunk).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
