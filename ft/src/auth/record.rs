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

/// Checks and decrypts incoming records; bytes go in as they arrive, verified data comes out.
pub struct Opener {
    keys: DirectionKeys,
    counter: u64,
    buf: Vec<u8>,
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
            poisoned: false,
        }
    }

    /// Appends bytes received from the stream.
    pub fn push(&mut self, data: &[u8]) {
        if !self.poisoned {
            self.buf.extend_from_slice(data);
        }
    }

    /// Bytes received but not yet returned in a verified record.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// How many more bytes complete the record being received (at least 1 when none is whole).
    pub fn wanted(&self) -> usize {
        match self.declared() {
            Some(Ok(n)) => (LEN_LEN + n + TAG_LEN)
                .saturating_sub(self.buf.len())
                .max(1),
            _ => LEN_LEN.saturating_sub(self.buf.len()).max(1),
        }
    }

    fn declared(&self) -> Option<Result<usize, RecordError>> {
        let b: [u8; LEN_LEN] = self.buf.get(..LEN_LEN)?.try_into().ok()?;
        let len = u32::from_le_bytes(b) as usize;
        if len == 0 || len > MAX_RECORD {
            return Some(Err(RecordError::BadLength {
                record: self.counter,
                len: len as u64,
            }));
        }
        Some(Ok(len))
    }

    /// The data of the next whole, verified record; `Ok(None)` if more bytes are needed. Any
    /// error poisons the opener.
    pub fn next_record(&mut self) -> Result<Option<Vec<u8>>, RecordError> {
        if self.poisoned {
            return Err(RecordError::Poisoned);
        }
        let r = self.try_next();
        if r.is_err() {
            self.poisoned = true;
            self.buf = Vec::new();
        }
        r
    }

    fn try_next(&mut self) -> Result<Option<Vec<u8>>, RecordError> {
        let n = match self.declared() {
            None => return Ok(None),
            Some(n) => n?,
        };
        let end = LEN_LEN + n + TAG_LEN;
        if self.buf.len() < end {
            return Ok(None);
        }
        if self.counter == u64::MAX {
            return Err(RecordError::Exhausted);
        }
        let (len, rest) = self.buf.split_at_mut(LEN_LEN);
        let key = self.keys.for_record(self.counter);
        let Some(plain) = key.open(self.counter, len, &mut rest[..n + TAG_LEN]) else {
            return Err(RecordError::BadMac {
                record: self.counter,
            });
        };
        let out = plain.to_vec();
        self.buf.drain(..end);
        self.counter += 1;
        Ok(Some(out))
    }

    /// Call at end of stream: an error if it ended inside a record.
    pub fn finish(&self) -> Result<(), RecordError> {
        if self.poisoned {
            return Err(RecordError::Poisoned);
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        let need = match self.declared() {
            Some(Ok(n)) => LEN_LEN + n + TAG_LEN,
            _ => LEN_LEN,
        };
        Err(RecordError::Truncated {
            record: self.counter,
            have: self.buf.len(),
            need,
        })
    }
}
