//! A TCP proxy between source and destination that can cut the stream, flip a bit in it, or
//! delay the destination's replies.

use ft::frame::{Decoder, Frame};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::Duration;

/// What the proxy does.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// Closes both connections after forwarding this many source → destination bytes.
    #[allow(dead_code)] // each test binary uses some of the faults
    CutAfter(u64),
    /// Inverts one bit of the source → destination byte at this offset.
    FlipBitAt(u64),
    /// Forwards source → destination frame by frame; once past this many bytes and after the
    /// initial sync, closes both connections in the middle of the frame that follows a whole
    /// page frame of a checkpoint: the destination holds part of a checkpoint, for sure.
    #[allow(dead_code)]
    CutMidCheckpoint(u64),
    /// Forwards everything, but holds each chunk of destination → source bytes this long (a
    /// backup slow to ack).
    #[allow(dead_code)]
    DelayReplies(Duration),
}

/// Where [`Fault::CutMidCheckpoint`] cut the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MidCheckpointCut {
    /// The checkpoint (frame epoch) that was cut.
    pub epoch: u64,
    /// Its frames that went through whole (at least one page frame).
    pub whole_frames: usize,
    /// The last checkpoint whose Commit went through whole (0: the initial sync).
    pub last_commit: u64,
}

/// Listens on a loopback port; the first connection is forwarded to `upstream`. The thread
/// returns where a [`Fault::CutMidCheckpoint`] cut (None for the other faults, or no cut).
pub fn start(
    upstream: SocketAddr,
    fault: Fault,
) -> (SocketAddr, JoinHandle<Option<MidCheckpointCut>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let Ok((down, _)) = l.accept() else {
            return None;
        };
        let Ok(up) = TcpStream::connect(upstream) else {
            return None;
        };
        let (down2, up2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
        let (fwd, back) = match fault {
            Fault::DelayReplies(d) => (None, Some(d)),
            f => (Some(f), None),
        };
        let back = std::thread::spawn(move || pump(up2, down2, None, back));
        let cut = match fwd {
            Some(Fault::CutMidCheckpoint(after)) => cut_mid_checkpoint(down, up, after),
            _ => {
                pump(down, up, fwd, None);
                None
            }
        };
        let _ = back.join();
        cut
    });
    (addr, t)
}

/// Forwards whole frames until the cut described at [`Fault::CutMidCheckpoint`].
fn cut_mid_checkpoint(
    mut from: TcpStream,
    mut to: TcpStream,
    after: u64,
) -> Option<MidCheckpointCut> {
    let mut buf = vec![0u8; 16 << 10];
    let mut dec = Decoder::new();
    // Bytes received but not yet forwarded (the frame being assembled), and the offset of
    // their start in the stream.
    let mut pending: Vec<u8> = Vec::new();
    let mut forwarded: u64 = 0;
    let mut last_commit: Option<u64> = None;
    // (epoch, whole frames of it so far, whether one was a page frame) of the open checkpoint.
    let mut open: Option<(u64, usize, bool)> = None;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        dec.push(&buf[..n]);
        pending.extend_from_slice(&buf[..n]);
        while let Some(f) = dec
            .next_frame()
            .expect("the proxy decodes an intact stream")
        {
            let len = pending.len() - dec.buffered();
            let frame: Vec<u8> = pending.drain(..len).collect();
            let checkpoint = last_commit.is_some() && forwarded >= after;
            let is_commit = matches!(f.frame, Frame::Commit { .. });
            if let (true, Some((epoch, whole, true)), Some(last)) = (checkpoint, open, last_commit)
            {
                if epoch == f.epoch {
                    let _ = to.write_all(&frame[..frame.len() / 2]);
                    let _ = from.shutdown(Shutdown::Both);
                    let _ = to.shutdown(Shutdown::Both);
                    return Some(MidCheckpointCut {
                        epoch,
                        whole_frames: whole,
                        last_commit: last,
                    });
                }
            }
            if to.write_all(&frame).is_err() {
                return None;
            }
            forwarded += frame.len() as u64;
            if is_commit {
                // The initial sync's Commit carries its round count; it is checkpoint 0.
                last_commit = Some(last_commit.map_or(0, |_| f.epoch));
                open = None;
            } else if !matches!(f.frame, Frame::Heartbeat { .. }) && last_commit.is_some() {
                let pages = matches!(f.frame, Frame::MemoryPages(_));
                open = match open {
                    Some((e, whole, p)) if e == f.epoch => Some((e, whole + 1, p || pages)),
                    _ => Some((f.epoch, 1, pages)),
                };
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    None
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
        match fault {
            Some(Fault::CutAfter(limit)) if at + n as u64 >= limit => {
                let keep = (limit - at) as usize;
                let _ = to.write_all(&chunk[..keep]);
                let _ = from.shutdown(Shutdown::Both);
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
            Some(Fault::FlipBitAt(off)) if (at..at + n as u64).contains(&off) => {
                chunk[(off - at) as usize] ^= 0x10;
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
