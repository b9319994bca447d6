//! Frames over a connection: a writer that numbers what it sends, a reader that checks the
//! peer's numbering, and an inbox thread so that a sender busy writing still hears an Abort.

use super::MigrationError;
use crate::frame::{encode_frame, DecodedFrame, Decoder, Frame, FrameError};
use crate::transport::Connection;
use std::io::{self, Read, Write};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const READ_CHUNK: usize = 64 << 10;

/// Queued frames go out once this many bytes wait: a large checkpoint streams while it is
/// encoded, a small one leaves in one write.
const FLUSH_AT: usize = 256 << 10;

/// Sends frames, numbering them 0, 1, 2...
pub(crate) struct FrameWriter {
    conn: Box<dyn Connection>,
    seq: u64,
    buf: Vec<u8>,
    bytes: u64,
}

impl FrameWriter {
    pub(crate) fn new(conn: Box<dyn Connection>) -> Self {
        FrameWriter {
            conn,
            seq: 0,
            buf: Vec::new(),
            bytes: 0,
        }
    }

    /// Sends one frame (after any queued ones) and returns its sequence number.
    pub(crate) fn send(
        &mut self,
        frame: &Frame,
        epoch: u64,
        flags: u8,
    ) -> Result<u64, MigrationError> {
        let seq = self.queue(frame, epoch, flags)?;
        self.flush()?;
        Ok(seq)
    }

    /// Numbers and encodes a frame to go out with the next [`FrameWriter::flush`] (or
    /// [`FrameWriter::send`]); past `FLUSH_AT` queued bytes they go out at once. A checkpoint's
    /// frames leave in one write instead of one each: fewer system calls, one TCP push.
    pub(crate) fn queue(
        &mut self,
        frame: &Frame,
        epoch: u64,
        flags: u8,
    ) -> Result<u64, MigrationError> {
        let before = self.buf.len();
        // A frame that cannot be encoded leaves the buffer as it was.
        encode_frame(frame, self.seq, epoch, flags, &mut self.buf)
            .map_err(MigrationError::Encode)?;
        self.bytes += (self.buf.len() - before) as u64;
        let seq = self.seq;
        self.seq += 1;
        if self.buf.len() >= FLUSH_AT {
            self.flush()?;
        }
        Ok(seq)
    }

    /// Writes every queued frame.
    pub(crate) fn flush(&mut self) -> Result<(), MigrationError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let r = self.conn.write_all(&self.buf).map_err(MigrationError::Send);
        self.buf.clear();
        r
    }

    /// Bytes of the frames sent or queued so far.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The sequence number the next frame will carry (so that an ack racing the write can be
    /// matched).
    pub(crate) fn next_seq(&self) -> u64 {
        self.seq
    }

    /// Closes both directions, which also wakes a reader blocked on the same socket.
    pub(crate) fn shutdown(&self) {
        let _ = self.conn.shutdown(std::net::Shutdown::Both);
    }

    /// Closes our sending side only: the peer reads EOF after what we sent.
    pub(crate) fn shutdown_write(&self) {
        let _ = self.conn.shutdown(std::net::Shutdown::Write);
    }
}

/// Receives frames and checks that the peer numbers them 0, 1, 2... with none missing.
pub(crate) struct FrameReader {
    conn: Box<dyn Connection>,
    decoder: Decoder,
    chunk: Vec<u8>,
    next_seq: u64,
    /// A frame [`FrameReader::peek`] read ahead, returned by the next `recv`.
    peeked: Option<DecodedFrame>,
}

impl FrameReader {
    pub(crate) fn new(conn: Box<dyn Connection>) -> Self {
        FrameReader {
            conn,
            decoder: Decoder::new(),
            chunk: vec![0; READ_CHUNK],
            next_seq: 0,
            peeked: None,
        }
    }

    /// The next frame, left for the next `recv` to return.
    pub(crate) fn peek(&mut self) -> Result<&DecodedFrame, MigrationError> {
        if self.peeked.is_none() {
            let f = self.recv()?;
            self.peeked = Some(f);
        }
        match &self.peeked {
            Some(f) => Ok(f),
            None => Err(MigrationError::PeerClosed),
        }
    }

    /// Bytes of the frames received so far. Counted per frame, not per read: one read may
    /// bring the end of one checkpoint and the whole of the next.
    pub(crate) fn bytes(&self) -> u64 {
        self.decoder.decoded_bytes()
    }

    /// Bounds each wait for bytes in `recv`; a timeout leaves partly received frames buffered.
    pub(crate) fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.conn.set_read_timeout(t)
    }

    /// The next frame; the connection's read timeout bounds each wait for bytes.
    pub(crate) fn recv(&mut self) -> Result<DecodedFrame, MigrationError> {
        if let Some(f) = self.peeked.take() {
            return Ok(f);
        }
        loop {
            if let Some(f) = self.decoder.next_frame()? {
                if f.seq != self.next_seq {
                    return Err(MigrationError::OutOfSequence {
                        expected: self.next_seq,
                        got: f.seq,
                    });
                }
                self.next_seq += 1;
                return Ok(f);
            }
            match self.conn.read(&mut self.chunk) {
                Ok(0) => {
                    self.decoder.finish()?;
                    return Err(MigrationError::PeerClosed);
                }
                Ok(n) => {
                    self.decoder.push(&self.chunk[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(MigrationError::Timeout {
                        waiting_for: "the peer's next frame",
                    })
                }
                Err(e) => return Err(MigrationError::Receive(e)),
            }
        }
    }

    /// Reads and drops whatever the peer still sends, until it closes or `limit` passes, so that
    /// closing our socket with unread data does not reset the connection before the peer has read
    /// our Abort.
    pub(crate) fn drain(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if self
                .conn
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .is_err()
            {
                return;
            }
            match self.conn.read(&mut self.chunk) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }
}

/// Frames from the peer, read by a thread of their own.
pub(crate) struct Inbox {
    rx: Receiver<Result<DecodedFrame, MigrationError>>,
    thread: Option<JoinHandle<()>>,
}

/// What waiting on the inbox gave.
pub(crate) enum Waited {
    Frame(DecodedFrame),
    TimedOut,
}

impl Inbox {
    /// Starts the reader thread; it ends at the first error, Abort, or when the socket is shut down.
    pub(crate) fn spawn(mut reader: FrameReader) -> Result<Inbox, MigrationError> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("ft-mig-inbox".into())
            .spawn(move || loop {
                let r = reader.recv();
                let last = !matches!(&r, Ok(f) if !matches!(f.frame, Frame::Abort { .. }));
                if tx.send(r).is_err() || last {
                    return;
                }
            })
            .map_err(MigrationError::Connection)?;
        Ok(Inbox {
            rx,
            thread: Some(thread),
        })
    }

    /// A frame if one has arrived, without waiting.
    pub(crate) fn poll(&self) -> Result<Option<DecodedFrame>, MigrationError> {
        match self.rx.try_recv() {
            Ok(r) => r.map(Some),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(MigrationError::PeerClosed),
        }
    }

    /// The next frame, waiting at most `timeout`.
    pub(crate) fn wait(&self, timeout: Duration) -> Result<Waited, MigrationError> {
        match self.rx.recv_timeout(timeout) {
            Ok(r) => r.map(Waited::Frame),
            Err(RecvTimeoutError::Timeout) => Ok(Waited::TimedOut),
            Err(RecvTimeoutError::Disconnected) => Err(MigrationError::PeerClosed),
        }
    }

    /// Waits for the reader thread; the socket must have been shut down first.
    pub(crate) fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl From<FrameError> for MigrationError {
    fn from(e: FrameError) -> Self {
        MigrationError::Frame(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn queued_frames_leave_together_on_flush_and_in_order() {
        let (a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let mut w = FrameWriter::new(Box::new(a));
        let frames = [
            Frame::DeviceState(vec![1, 2, 3]),
            Frame::Heartbeat { timestamp_ms: 7 },
            Frame::EndOfRound { pages: 3 },
        ];
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(w.queue(f, 5, 0).unwrap(), i as u64);
        }
        let mut peek = [0u8; 1];
        assert!(
            (&b).read(&mut peek).is_err(),
            "nothing is written before the flush"
        );
        let queued = w.bytes();
        w.flush().unwrap();
        // A send after the flush goes out behind them, numbered next.
        assert_eq!(w.send(&Frame::EndConfirmed, 5, 0).unwrap(), 3);
        b.set_nonblocking(false).unwrap();
        let mut r = FrameReader::new(Box::new(b));
        for f in frames.iter().chain([&Frame::EndConfirmed]) {
            assert_eq!(&r.recv().unwrap().frame, f);
        }
        assert_eq!(r.bytes(), w.bytes());
        assert!(queued > 0 && queued < w.bytes());
    }

    #[test]
    fn a_large_queue_streams_without_waiting_for_the_flush() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut w = FrameWriter::new(Box::new(a));
        let reader = std::thread::spawn(move || {
            let mut r = FrameReader::new(Box::new(b));
            r.recv().map(|f| f.frame)
        });
        let big = Frame::DeviceState(vec![9; FLUSH_AT]);
        w.queue(&big, 1, 0).unwrap();
        // Past FLUSH_AT the frame went out by itself: the reader has it with no flush.
        assert_eq!(reader.join().unwrap().unwrap(), big);
    }
}
