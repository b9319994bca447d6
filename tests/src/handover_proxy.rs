//! A proxy on a live migration's stream that cuts the link at the hand-over, the one moment a
//! pre-copy migration cannot survive without help: after the source sent its final state.
//! It reads both directions frame by frame (ft's header) and either lets the destination's
//! first replies through and kills the link with the next one (the final ack is lost: the
//! destination runs the VM, the source never hears it), or kills the link instead of passing
//! the source's Commit (the source sent it, the destination never gets it). The destination's
//! side of the connection stays open after the cut, so that its last write succeeds, as it would
//! when a link dies beyond its host. The stream must be keyless (`insecure` on the private test
//! link): each side's handshake message passes as it is, and plain frames follow.

use crate::net::{Node, TestNet};
use ft::frame::{FrameHeader, FrameType, HEADER_LEN, MAX_PAYLOAD};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Where the link dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Pass this many of the destination's frames (its Hello ack, and its ack of the hand-over
    /// terms when there is an arbiter); the next one, the final ack, kills the link.
    FinalAck {
        /// Frames from the destination to let through.
        pass: usize,
    },
    /// Kill the link instead of forwarding the source's Commit.
    Commit,
}

/// A running proxy.
pub struct HandoverProxy {
    cut: Arc<AtomicBool>,
}

impl HandoverProxy {
    /// Listens on `listen` inside `node`'s namespace and relays the first connection to
    /// `upstream`, cutting as `cut` says.
    pub fn start(
        net: &TestNet,
        node: Node,
        listen: SocketAddr,
        upstream: SocketAddr,
        cut: Cut,
    ) -> HandoverProxy {
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        net.run_in(node, move || {
            let listener = match TcpListener::bind(listen) {
                Ok(l) => {
                    let _ = ready_tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("bind {listen}: {e}")));
                    return;
                }
            };
            let Ok((source, _)) = listener.accept() else {
                return;
            };
            let Ok(dest) = TcpStream::connect(upstream) else {
                return;
            };
            relay(source, dest, cut, &flag);
        });
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("handover proxy: {e}"),
            Err(_) => panic!("handover proxy thread ended before listening"),
        }
        HandoverProxy { cut: done }
    }

    /// Whether it has cut the link.
    pub fn has_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }
}

fn relay(source: TcpStream, dest: TcpStream, cut: Cut, done: &Arc<AtomicBool>) {
    let _ = source.set_nodelay(true);
    let _ = dest.set_nodelay(true);
    let (Ok(s2), Ok(d2)) = (source.try_clone(), dest.try_clone()) else {
        return;
    };
    let back_done = done.clone();
    let back = std::thread::spawn(move || {
        let pass = match cut {
            Cut::FinalAck { pass } => Some(pass),
            Cut::Commit => None,
        };
        copy_frames(d2, s2, |n, _| pass.is_some_and(|p| n >= p), &back_done);
    });
    copy_frames(
        source,
        dest,
        |_, t| cut == Cut::Commit && t == FrameType::Commit,
        done,
    );
    let _ = back.join();
}

/// Copies whole frames from `from` to `to` until `cut_at(frames passed, type)` says this frame
/// dies with the link: the source's end is shut, the destination's left to drain.
fn copy_frames(
    mut from: TcpStream,
    mut to: TcpStream,
    cut_at: impl Fn(usize, FrameType) -> bool,
    done: &AtomicBool,
) {
    let mut hello = [0u8; ft::auth::MSG_LEN];
    if from.read_exact(&mut hello).is_err() || to.write_all(&hello).is_err() {
        let _ = to.shutdown(Shutdown::Write);
        return;
    }
    let mut frame = Vec::new();
    let mut n = 0;
    loop {
        let mut header = [0u8; HEADER_LEN];
        if from.read_exact(&mut header).is_err() {
            break;
        }
        let Ok(h) = FrameHeader::parse(&header, MAX_PAYLOAD) else {
            break;
        };
        frame.clear();
        frame.extend_from_slice(&header);
        frame.resize(HEADER_LEN + h.payload_len as usize, 0);
        if from.read_exact(&mut frame[HEADER_LEN..]).is_err() {
            break;
        }
        if done.load(Ordering::SeqCst) || cut_at(n, h.frame_type) {
            done.store(true, Ordering::SeqCst);
            // The source's end dies with the link (either direction's copier may be the one
            // that sees it first).
            let _ = to.shutdown(Shutdown::Both);
            let _ = from.shutdown(Shutdown::Both);
            return;
        }
        if to.write_all(&frame).is_err() {
            break;
        }
        n += 1;
    }
    let _ = to.shutdown(Shutdown::Write);
}
