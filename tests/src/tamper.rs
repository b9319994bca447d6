//! A man-in-the-middle TCP proxy for the replication stream between two real VMMs: it passes
//! bytes through, reading the primary's frames as it goes (ft's frame header), and at a chosen
//! moment corrupts the stream once: flips a byte, cuts it mid-frame, or slips in a well-formed
//! frame the protocol does not allow there. What it passed and what it did is in its report, so a
//! test can tell which checkpoints the backup received whole.

use crate::net::{Node, TestNet};
use ft::frame::{encode_frame, Decoder, Frame, FrameHeader, FrameType, HEADER_LEN, MAX_PAYLOAD};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What to do to the primary → backup stream, at the first body frame (pages, vCPU or device
/// state, extras) of the checkpoint after `after_commits` Commits have passed intact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tamper {
    /// Flip one byte in the middle of that frame's payload (its checksum no longer matches).
    FlipByte {
        /// Commits to pass intact first.
        after_commits: u64,
    },
    /// Pass that frame's header and half its payload, then close both connections.
    Truncate {
        /// Commits to pass intact first.
        after_commits: u64,
    },
    /// Before that frame, insert an Ack (a backup → primary frame) with the right sequence
    /// number, epoch and checksum.
    InjectAck {
        /// Commits to pass intact first.
        after_commits: u64,
    },
    /// For an authenticated stream, whose frames travel inside MAC'd records the proxy cannot
    /// read: flip the first byte the primary sends once this long has passed since the
    /// connection opened (well after the initial sync, while checkpoints flow).
    FlipRaw {
        /// Time from the connection to the flip.
        after: Duration,
    },
    /// Lose the backup's Ack of the initial sync's Commit, and from then on pass nothing either
    /// way while keeping both connections open: the link died in the instant after the backup
    /// committed the initial sync.
    LoseSyncAck,
}

impl Tamper {
    fn after_commits(self) -> u64 {
        match self {
            Tamper::FlipByte { after_commits }
            | Tamper::Truncate { after_commits }
            | Tamper::InjectAck { after_commits } => after_commits,
            Tamper::FlipRaw { .. } | Tamper::LoseSyncAck => u64::MAX,
        }
    }
}

/// What the proxy saw and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TamperReport {
    /// Checkpoints whose Commit frame passed intact to the backup, in order: 0 is the initial
    /// sync's (its header carries the pre-copy round), then each checkpoint's epoch.
    pub commits: Vec<u64>,
    /// Checkpoints whose Commit the backup acked, in order.
    pub acks: Vec<u64>,
    /// Sequence number of each Commit passed, with its checkpoint, to match the Acks.
    commit_seqs: Vec<(u64, u64)>,
    /// The frame tampered with: (type, epoch, sequence number), once done.
    pub tampered: Option<(FrameType, u64, u64)>,
    /// `FlipRaw`: the byte was flipped.
    pub flipped_raw: bool,
    /// Bytes passed from the primary to the backup.
    pub forward_bytes: u64,
    /// Both connections are closed.
    pub closed: bool,
    /// `LoseSyncAck`: the Ack was swallowed and the link is black-holed.
    pub black_holed: bool,
}

/// A running proxy; its thread ends when the stream does.
pub struct TamperProxy {
    report: Arc<Mutex<TamperReport>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TamperProxy {
    /// Listens on `listen` inside `node`'s namespace (ready when this returns) and, for the first
    /// connection, connects to `upstream` from there and relays, applying `tamper`.
    pub fn start(
        net: &TestNet,
        node: Node,
        listen: SocketAddr,
        upstream: SocketAddr,
        tamper: Tamper,
    ) -> TamperProxy {
        let report = Arc::new(Mutex::new(TamperReport::default()));
        let r = report.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = net.run_in(node, move || {
            let listener = TcpListener::bind(listen);
            let listener = match listener {
                Ok(l) => {
                    let _ = ready_tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("bind {listen}: {e}")));
                    return;
                }
            };
            let Ok((primary, _)) = listener.accept() else {
                return;
            };
            let backup = match TcpStream::connect(upstream) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("tamper proxy: connect {upstream}: {e}");
                    return;
                }
            };
            relay(primary, backup, tamper, &r);
        });
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("tamper proxy: {e}"),
            Err(_) => panic!("tamper proxy thread ended before listening"),
        }
        TamperProxy {
            report,
            thread: Some(thread),
        }
    }

    /// What it has seen so far.
    pub fn report(&self) -> TamperReport {
        self.report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until it has tampered, or `timeout`; the report then.
    pub fn wait_tampered(&self, timeout: Duration) -> TamperReport {
        let start = Instant::now();
        loop {
            let r = self.report();
            if r.tampered.is_some() || r.flipped_raw || r.closed || start.elapsed() > timeout {
                return r;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for TamperProxy {
    fn drop(&mut self) {
        // The thread ends once both sides close (the VMMs are dropped with the test).
        if let Some(t) = self.thread.take() {
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

fn lock(r: &Mutex<TamperReport>) -> std::sync::MutexGuard<'_, TamperReport> {
    r.lock().unwrap_or_else(|e| e.into_inner())
}

/// Relays both ways until either side closes, then closes both.
fn relay(primary: TcpStream, backup: TcpStream, tamper: Tamper, report: &Arc<Mutex<TamperReport>>) {
    let _ = primary.set_nodelay(true);
    let _ = backup.set_nodelay(true);
    let (Ok(p2), Ok(b2)) = (primary.try_clone(), backup.try_clone()) else {
        return;
    };
    let back_report = report.clone();
    let back = std::thread::spawn(move || {
        if tamper == Tamper::LoseSyncAck {
            backward_losing_sync_ack(b2, p2, &back_report);
        } else {
            backward(b2, p2, &back_report);
        }
    });
    forward(&primary, &backup, tamper, report);
    let _ = primary.shutdown(Shutdown::Both);
    let _ = backup.shutdown(Shutdown::Both);
    let _ = back.join();
    lock(report).closed = true;
}

/// Backup → primary: bytes pass untouched; Acks of Commits are noted.
fn backward(mut from: TcpStream, mut to: TcpStream, report: &Mutex<TamperReport>) {
    if !pass_handshake(&mut from, &mut to) {
        return;
    }
    let mut buf = vec![0u8; 64 << 10];
    let mut decoder = Decoder::new();
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        decoder.push(&buf[..n]);
        while let Ok(Some(f)) = decoder.next_frame() {
            if let Frame::Ack { seq } = f.frame {
                let mut r = lock(report);
                let acked = r.commit_seqs.iter().find(|c| c.0 == seq).map(|c| c.1);
                r.acks.extend(acked);
            }
        }
    }
    // Whichever side closed, the other must see it.
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// Backup → primary, frame by frame, until the Ack of the initial sync's Commit: that one is
/// swallowed and everything after it is read and dropped (the link is dead, not closed).
fn backward_losing_sync_ack(mut from: TcpStream, mut to: TcpStream, report: &Mutex<TamperReport>) {
    if !pass_handshake(&mut from, &mut to) {
        return;
    }
    let mut frame = Vec::new();
    loop {
        let mut header = [0u8; HEADER_LEN];
        if from.read_exact(&mut header).is_err() {
            return;
        }
        let Ok(h) = FrameHeader::parse(&header, MAX_PAYLOAD) else {
            return;
        };
        frame.clear();
        frame.extend_from_slice(&header);
        frame.resize(HEADER_LEN + h.payload_len as usize, 0);
        if from.read_exact(&mut frame[HEADER_LEN..]).is_err() {
            return;
        }
        if h.frame_type == FrameType::Ack {
            let mut d = Decoder::new();
            d.push(&frame);
            if let Ok(Some(f)) = d.next_frame() {
                if let Frame::Ack { seq } = f.frame {
                    let mut r = lock(report);
                    if r.commit_seqs.iter().any(|c| c == &(seq, 0)) {
                        r.acks.push(0);
                        r.black_holed = true;
                        drop(r);
                        // The link is dead from here: drain and drop, keep the sockets open.
                        let mut sink = vec![0u8; 64 << 10];
                        while matches!(from.read(&mut sink), Ok(n) if n > 0) {}
                        return;
                    }
                }
            }
        }
        if to.write_all(&frame).is_err() {
            return;
        }
    }
}

/// Every FT stream opens with each side's authentication hello (`ft::auth`); with no pair key
/// (the proxy's case) frames follow it directly. Passed untouched.
fn pass_handshake(mut from: impl Read, mut to: impl Write) -> bool {
    let mut hello = [0u8; ft::auth::MSG_LEN];
    from.read_exact(&mut hello).is_ok() && to.write_all(&hello).is_ok()
}

/// Copies the stream as bytes, flipping one (in the middle of a read) once `at` has passed.
fn forward_raw(
    mut from: &TcpStream,
    mut to: &TcpStream,
    at: Instant,
    report: &Mutex<TamperReport>,
) {
    let mut buf = vec![0u8; 64 << 10];
    let mut passed = 0u64;
    let mut done = false;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let end = passed + n as u64;
        if !done && Instant::now() >= at {
            done = true;
            buf[n / 2] ^= 0x5a;
            lock(report).flipped_raw = true;
        }
        if to.write_all(&buf[..n]).is_err() {
            return;
        }
        passed = end;
        lock(report).forward_bytes = passed;
    }
}

fn is_body(t: FrameType) -> bool {
    matches!(
        t,
        FrameType::MemoryPages | FrameType::VcpuState | FrameType::DeviceState | FrameType::Extras
    )
}

/// Primary → backup, frame by frame, tampering once.
fn forward(mut from: &TcpStream, mut to: &TcpStream, tamper: Tamper, report: &Mutex<TamperReport>) {
    let mut done = false;
    let mut commits = 0u64;
    let mut frame = Vec::new();
    if !pass_handshake(&mut from, &mut to) {
        return;
    }
    if let Tamper::FlipRaw { after } = tamper {
        return forward_raw(from, to, Instant::now() + after, report);
    }
    loop {
        let mut header = [0u8; HEADER_LEN];
        if from.read_exact(&mut header).is_err() {
            return;
        }
        let Ok(h) = FrameHeader::parse(&header, MAX_PAYLOAD) else {
            // Not a frame we understand: pass the rest of the stream as it is.
            let _ = to.write_all(&header);
            let _ = std::io::copy(&mut from, &mut to);
            return;
        };
        frame.clear();
        frame.extend_from_slice(&header);
        frame.resize(HEADER_LEN + h.payload_len as usize, 0);
        if from.read_exact(&mut frame[HEADER_LEN..]).is_err() {
            return;
        }
        let act = !done
            && commits >= tamper.after_commits()
            && is_body(h.frame_type)
            && h.payload_len > 0;
        if act {
            done = true;
            lock(report).tampered = Some((h.frame_type, h.epoch, h.seq));
            match tamper {
                // Handled by `forward_raw` before any frame is read, or backward.
                Tamper::FlipRaw { .. } | Tamper::LoseSyncAck => {}
                Tamper::FlipByte { .. } => {
                    let at = HEADER_LEN + h.payload_len as usize / 2;
                    frame[at] ^= 0x5a;
                }
                Tamper::Truncate { .. } => {
                    let cut = HEADER_LEN + h.payload_len as usize / 2;
                    let _ = to.write_all(&frame[..cut]);
                    lock(report).forward_bytes += cut as u64;
                    return;
                }
                Tamper::InjectAck { .. } => {
                    // Everything after it keeps the primary's numbering: the backup stops at
                    // the Ack anyway.
                    let mut ack = Vec::new();
                    let ok = encode_frame(&Frame::Ack { seq: h.seq }, h.seq, h.epoch, 0, &mut ack);
                    if ok.is_err() || to.write_all(&ack).is_err() {
                        return;
                    }
                }
            }
        }
        if h.frame_type == FrameType::Commit && !done {
            // Noted before the backup can see it, so that its Ack finds it.
            let checkpoint = if commits == 0 { 0 } else { h.epoch };
            commits += 1;
            let mut r = lock(report);
            r.commits.push(checkpoint);
            r.commit_seqs.push((h.seq, checkpoint));
        }
        if lock(report).black_holed {
            // The link is dead: what the primary sends goes nowhere.
            continue;
        }
        if to.write_all(&frame).is_err() {
            return;
        }
        lock(report).forward_bytes += frame.len() as u64;
    }
}
