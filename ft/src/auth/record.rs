//! Encrypted records: after a keyed handshake every byte of the stream travels in records
//!
//! ```text
//! offset   size  field
//!  0       4     data length n (little-endian, 1..=MAX_RECORD), authenticated as associated data
//!  4       n     AES-256-GCM ciphertext of the data (frame bytes, cut anywhere)
//!  4+n     16    GCM tag
//! ```
//!
//! under the direction's key of the record's epoch (a fresh one every 2^20 records, derived from
//! the direction's secret: `crypto::DirectionKeys`), with the record's number as the nonce. The
//! counter is implicit: 0, 1, 2... per direction, never on the wire. So a replayed, dropped or
//! reordered record fails like an altered one; the direction's secret comes from both sides'
//! handshake nonces, so a record from another connection fails too. A counter never wraps: a
//! direction that would need record number 2^64 - 1 fails instead (the connection ends long
//! before that).

use super::crypto::{DirectionKeys, KEY_LEN, TAG_LEN};
use std::io::{self, Read};
use std::ops::Range;

/// Most data bytes in one record; checked before anything is buffered for it.
pub const MAX_RECORD: usize = 64 << 10;
/// Length prefix size.
const LEN_LEN: usize = 4;

/// Why received bytes are not a valid record, or a record cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The declared length is 0 or above `MAX_RECORD`: not a record of ours.
    #[error("authentication failed: record {record} declares {len} bytes (1..={MAX_RECORD})")]
    BadLength {
        /// The record's number in this direction.
        record: u64,
        /// Declared length.
        len: u64,
    },
    /// The tag does not verify: altered, replayed, reordered, cut or forged.
    #[error(
        "authentication failed: record {record} does not verify (altered, replayed, reordered or \
         forged); the stream is refused"
    )]
    BadMac {
        /// The record's number in this direction.
        record: u64,
    },
    /// The stream ended inside a record (its tag cut off, say).
    #[error("the stream ended inside encrypted record {record}: {have} of {need} bytes")]
    Truncated {
        /// The record's number.
        record: u64,
        /// Bytes of it received.
        have: usize,
        /// Bytes it needs.
        need: usize,
    },
    /// An earlier record failed; an authenticated stream is not resumed after a failure.
    #[error("authenticated stream already failed on an earlier record")]
    Poisoned,
    /// This direction has used every record number: a nonce would repeat, so it ends.
    #[error("record counter exhausted: the connection must end before a nonce repeats")]
    Exhausted,
}

/// Seals outgoing data into records.
pub struct Sealer {
    keys: DirectionKeys,
    counter: u64,
}

impl Sealer {
    /// A sealer of the direction whose secret is `secret`, first record number 0.
    pub fn new(secret: [u8; KEY_LEN]) -> Sealer {
        Sealer::starting_at(secret, 0)
    }

    /// A sealer whose next record is number `counter` (tests of key epochs and the counter's end).
    pub fn starting_at(secret: [u8; KEY_LEN], counter: u64) -> Sealer {
        Sealer {
            keys: DirectionKeys::new(&secret),
            counter,
        }
    }

    /// Appends records carrying all of `data` (cut into `MAX_RECORD` pieces) to `out`; fails,
    /// with `out` as it was, once the counter is used up.
    pub fn seal(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
        let pieces = data.chunks(MAX_RECORD).count() as u64;
        // Record u64::MAX is never sealed: the counter after the last record must still fit.
        if self.counter.checked_add(pieces).is_none() {
            return Err(RecordError::Exhausted);
        }
        for piece in data.chunks(MAX_RECORD) {
            let len = (piece.len() as u32).to_le_bytes();
            out.extend_from_slice(&len);
            let start = out.len();
            out.extend_from_slice(piece);
            let tag =
                self.keys
                    .for_record(self.counter)
                    .seal(self.counter, &len, &mut out[start..]);
            out.extend_from_slice(&tag);
            self.counter += 1;
        }
        Ok(())
    }
}

/// Checks and decrypts incoming records; bytes go in as they arrive (pushed, or read straight
/// into its buffer), verified data comes out. A record is decrypted in place and its data handed
/// out from there, so the only copies are the socket's into the buffer and the caller's out of it.
pub struct Opener {
    keys: DirectionKeys,
    counter: u64,
    /// Received bytes live in `buf[..filled]`; `buf` beyond that is spare room, kept so that
    /// reading into it needs no zeroing.
    buf: Vec<u8>,
    filled: usize,
    /// The opened record's data not handed out yet, inside `buf`.
    plain: Range<usize>,
    /// Where the opened record ends in `buf` (0 when none is open).
    opened_end: usize,
    poisoned: bool,
}

impl Opener {
    /// An opener of the direction whose secret is `secret`, expecting record 0 first.
    pub fn new(secret: [u8; KEY_LEN]) -> Opener {
        Opener::starting_at(secret, 0)
    }

    /// An opener expecting record `counter` next (tests of key epochs and the counter's end).
    pub fn starting_at(secret: [u8; KEY_LEN], counter: u64) -> Opener {
        Opener {
            keys: DirectionKeys::new(&secret),
            counter,
            buf: Vec::new(),
            filled: 0,
            plain: 0..0,
            opened_end: 0,
            poisoned: false,
        }
    }

    /// Drops the record whose data has all been handed out, moving what follows it (rarely
    /// anything: a reader never reads past a record) to the front.
    fn compact(&mut self) {
        if self.opened_end > 0 && self.plain.is_empty() {
            self.buf.copy_within(self.opened_end..self.filled, 0);
            self.filled -= self.opened_end;
            self.opened_end = 0;
            self.plain = 0..0;
        }
    }

    /// Room for `n` more received bytes; returns where they go.
    fn room(&mut self, n: usize) -> Range<usize> {
        if self.buf.len() < self.filled + n {
            self.buf.resize(self.filled + n, 0);
        }
        self.filled..self.filled + n
    }

    /// Appends bytes received from the stream.
    pub fn push(&mut self, data: &[u8]) {
        if self.poisoned {
            return;
        }
        self.compact();
        let at = self.room(data.len());
        self.buf[at].copy_from_slice(data);
        self.filled += data.len();
    }

    /// Reads from `src` straight into the buffer, never past the record being assembled (what
    /// follows it stays in `src`); the byte count `src.read` returned (0: end of stream).
    pub fn fill(&mut self, src: &mut dyn Read) -> io::Result<usize> {
        if self.poisoned {
            return Ok(0);
        }
        self.compact();
        let want = self.wanted();
        let at = self.room(want);
        let n = src.read(&mut self.buf[at])?;
        self.filled += n;
        Ok(n)
    }

    /// Bytes received but not yet handed out as verified data.
    pub fn buffered(&self) -> usize {
        self.filled - self.opened_end + self.plain.len()
    }

    /// The received bytes after the opened record (if any).
    fn pending(&self) -> &[u8] {
        &self.buf[self.opened_end..self.filled]
    }

    /// How many more bytes complete the record being received (at least 1 when none is whole).
    pub fn wanted(&self) -> usize {
        let have = self.pending().len();
        match self.declared() {
            Some(Ok(n)) => (LEN_LEN + n + TAG_LEN).saturating_sub(have).max(1),
            _ => LEN_LEN.saturating_sub(have).max(1),
        }
    }

    fn declared(&self) -> Option<Result<usize, RecordError>> {
        let b: [u8; LEN_LEN] = self.pending().get(..LEN_LEN)?.try_into().ok()?;
        let len = u32::from_le_bytes(b) as usize;
        if len == 0 || len > MAX_RECORD {
            return Some(Err(RecordError::BadLength {
                record: self.counter,
                len: len as u64,
            }));
        }
        Some(Ok(len))
    }

    /// Copies verified data into `out`: what is left of the opened record, else the next record
    /// once it is whole and verifies. `Ok(0)` (for a non-empty `out`) when more bytes are
    /// needed. Any error poisons the opener.
    pub fn read_into(&mut self, out: &mut [u8]) -> Result<usize, RecordError> {
        if self.plain.is_empty() && !self.open_next()? {
            return Ok(0);
        }
        let n = out.len().min(self.plain.len());
        out[..n].copy_from_slice(&self.buf[self.plain.start..self.plain.start + n]);
        self.plain.start += n;
        Ok(n)
    }

    /// The data of the next whole, verified record (with what was left of the opened one
    /// first); `Ok(None)` if more bytes are needed. Any error poisons the opener.
    pub fn next_record(&mut self) -> Result<Option<Vec<u8>>, RecordError> {
        if self.plain.is_empty() && !self.open_next()? {
            return Ok(None);
        }
        let data = self.buf[self.plain.clone()].to_vec();
        self.plain.start = self.plain.end;
        Ok(Some(data))
    }

    /// Opens the next record in place if it is whole: `Ok(false)` if more bytes are needed.
    fn open_next(&mut self) -> Result<bool, RecordError> {
        if self.poisoned {
            return Err(RecordError::Poisoned);
        }
        self.compact();
        let r = self.try_open();
        if r.is_err() {
            self.poisoned = true;
            self.buf = Vec::new();
            self.filled = 0;
            self.opened_end = 0;
            self.plain = 0..0;
        }
        r
    }

    fn try_open(&mut self) -> Result<bool, RecordError> {
        let n = match self.declared() {
            None => return Ok(false),
            Some(n) => n?,
        };
        let end = LEN_LEN + n + TAG_LEN;
        if self.filled < end {
            return Ok(false);
        }
        if self.counter == u64::MAX {
            return Err(RecordError::Exhausted);
        }
        let (len, rest) = self.buf.split_at_mut(LEN_LEN);
        let key = self.keys.for_record(self.counter);
        if key
            .open(self.counter, len, &mut rest[..n + TAG_LEN])
            .is_none()
        {
            return Err(RecordError::BadMac {
                record: self.counter,
            });
        }
        self.plain = LEN_LEN..LEN_LEN + n;
        self.opened_end = end;
        self.counter += 1;
        Ok(true)
    }

    /// Call at end of stream: an error if it ended inside a record.
    pub fn finish(&self) -> Result<(), RecordError> {
        if self.poisoned {
            return Err(RecordError::Poisoned);
        }
        let have = self.pending().len();
        if have == 0 {
            return Ok(());
        }
        let need = match self.declared() {
            Some(Ok(n)) => LEN_LEN + n + TAG_LEN,
            _ => LEN_LEN,
        };
        Err(RecordError::Truncated {
            record: self.counter,
            have,
            need,
        })
    }
}
