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

struct Tx {
    sealer: Sealer,
    buf: Vec<u8>,
    /// A write failed part way: the peer's counter and ours no longer agree.
    broken: bool,
}

struct Rx {
    opener: Opener,
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
        loop {
            let n = rx.opener.read_into(out).map_err(record_error)?;
            if n > 0 {
                return Ok(n);
            }
            // Straight into the opener's buffer, never past the record being assembled. A
            // timeout or interruption leaves the partial record buffered for the next call.
            if rx.opener.fill(&mut *self.inner)? == 0 {
                rx.opener.finish().map_err(record_error)?;
                return Ok(0);
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
