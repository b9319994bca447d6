//! A connection whose bytes travel in encrypted, authenticated records: the frame layer above it
//! is unchanged, and a record that does not verify is a read error, so nothing of it reaches the
//! decoder (let alone the replica).

use super::crypto::KEY_LEN;
use super::record::{Opener, RecordError, Sealer};
use crate::transport::Connection;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

const READ_CHUNK: usize = 64 << 10;

struct Tx {
    sealer: Sealer,
    buf: Vec<u8>,
    /// A write failed part way: the peer's counter and ours no longer agree.
    broken: bool,
}

struct Rx {
    opener: Opener,
    plain: Vec<u8>,
    pos: usize,
    chunk: Vec<u8>,
}

/// Both halves' state is shared by every clone, so that one thread may read while another
/// writes (as with a plain socket) and the record counters stay one per direction.
pub struct SecureConn {
    inner: Box<dyn Connection>,
    tx: Arc<Mutex<Tx>>,
    rx: Arc<Mutex<Rx>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn record_error(e: RecordError) -> io::Error {
    let kind = match e {
        RecordError::Truncated { .. } => io::ErrorKind::UnexpectedEof,
        _ => io::ErrorKind::InvalidData,
    };
    io::Error::new(kind, e)
}

impl SecureConn {
    /// Wraps `inner`; `send`/`recv` are this side's direction keys from the handshake.
    pub(crate) fn new(
        inner: Box<dyn Connection>,
        send: [u8; KEY_LEN],
        recv: [u8; KEY_LEN],
    ) -> SecureConn {
        SecureConn {
            inner,
            tx: Arc::new(Mutex::new(Tx {
                sealer: Sealer::new(send),
                buf: Vec::new(),
                broken: false,
            })),
            rx: Arc::new(Mutex::new(Rx {
                opener: Opener::new(recv),
                plain: Vec::new(),
                pos: 0,
                chunk: vec![0; READ_CHUNK],
            })),
        }
    }
}

impl Read for SecureConn {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        let mut rx = lock(&self.rx);
        let rx = &mut *rx;
        loop {
            if rx.pos < rx.plain.len() {
                let n = out.len().min(rx.plain.len() - rx.pos);
                out[..n].copy_from_slice(&rx.plain[rx.pos..rx.pos + n]);
                rx.pos += n;
                return Ok(n);
            }
            if let Some(p) = rx.opener.next_record().map_err(record_error)? {
                rx.plain = p;
                rx.pos = 0;
                continue;
            }
            // Never read past the record being assembled: what follows it stays in the socket.
            let want = rx.opener.wanted().min(rx.chunk.len());
            // A timeout or interruption leaves the partial record buffered for the next call.
            match self.inner.read(&mut rx.chunk[..want])? {
                0 => {
                    rx.opener.finish().map_err(record_error)?;
                    return Ok(0);
                }
                n => {
                    let (opener, chunk) = (&mut rx.opener, &rx.chunk);
                    opener.push(&chunk[..n]);
                }
            }
        }
    }
}

impl Write for SecureConn {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        let mut tx = lock(&self.tx);
        if tx.broken {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "authenticated stream broken by an earlier failed write",
            ));
        }
        let n = data.len().min(super::record::MAX_RECORD);
        let tx = &mut *tx;
        tx.buf.clear();
        if let Err(e) = tx.sealer.seal(&data[..n], &mut tx.buf) {
            tx.broken = true;
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        if let Err(e) = self.inner.write_all(&tx.buf) {
            tx.broken = true;
            return Err(e);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl Connection for SecureConn {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.inner.set_read_timeout(t)
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.inner.set_write_timeout(t)
    }
    fn try_clone_box(&self) -> io::Result<Box<dyn Connection>> {
        Ok(Box::new(SecureConn {
            inner: self.inner.try_clone_box()?,
            tx: self.tx.clone(),
            rx: self.rx.clone(),
        }))
    }
    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.inner.shutdown(how)
    }
}
