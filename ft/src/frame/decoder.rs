//! Incremental decoder: bytes go in as they arrive, in pieces of any size, and whole checked
//! frames come out. Any error poisons it, because a byte stream cannot be resynchronised.

use super::header::{checksum, FrameHeader};
use super::{DecodedFrame, Frame, FrameError, HEADER_LEN, MAGIC, MAX_PAYLOAD};

/// Turns a byte stream into frames.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    max_payload: u32,
    poisoned: bool,
    /// Bytes of the frames returned so far (header and payload).
    decoded: u64,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder that accepts payloads up to `MAX_PAYLOAD`.
    pub fn new() -> Self {
        Self::with_max_payload(MAX_PAYLOAD)
    }

    /// A decoder with a smaller payload limit (never more than `MAX_PAYLOAD`).
    pub fn with_max_payload(max_payload: u32) -> Self {
        Decoder {
            buf: Vec::new(),
            max_payload: max_payload.min(MAX_PAYLOAD),
            poisoned: false,
            decoded: 0,
        }
    }

    /// Appends bytes received from the stream.
    pub fn push(&mut self, data: &[u8]) {
        if !self.poisoned {
            self.buf.extend_from_slice(data);
        }
    }

    /// Bytes received but not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Bytes of all the frames returned so far, headers included: what a frame cost on the
    /// stream, however the reads that brought it were cut.
    pub fn decoded_bytes(&self) -> u64 {
        self.decoded
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed. Garbage is reported as soon
    /// as the bytes that prove it arrive (a wrong magic after its first byte, an oversized length
    /// as soon as the header is in), not when a whole frame's worth has been buffered.
    pub fn next_frame(&mut self) -> Result<Option<DecodedFrame>, FrameError> {
        if self.poisoned {
            return Err(FrameError::Poisoned);
        }
        let r = self.try_next();
        if r.is_err() {
            self.poisoned = true;
            self.buf = Vec::new();
        }
        r
    }

    /// Call at end of stream: an error if it ended inside a frame.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.poisoned {
            return Err(FrameError::Poisoned);
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        let need = match self.header() {
            Some(Ok(h)) => HEADER_LEN + h.payload_len as usize,
            _ => HEADER_LEN,
        };
        Err(FrameError::Truncated {
            have: self.buf.len(),
            need,
        })
    }

    fn header(&self) -> Option<Result<FrameHeader, FrameError>> {
        let b: &[u8; HEADER_LEN] = self.buf.get(..HEADER_LEN)?.try_into().ok()?;
        Some(FrameHeader::parse(b, self.max_payload))
    }

    fn try_next(&mut self) -> Result<Option<DecodedFrame>, FrameError> {
        let n = self.buf.len().min(MAGIC.len());
        if self.buf[..n] != MAGIC[..n] {
            return Err(FrameError::BadMagic {
                found: self.buf[..n].to_vec(),
            });
        }
        let h = match self.header() {
            None => return Ok(None),
            Some(h) => h?,
        };
        let end = HEADER_LEN + h.payload_len as usize;
        if self.buf.len() < end {
            return Ok(None);
        }
        let computed = checksum(&self.buf[..HEADER_LEN], &self.buf[HEADER_LEN..end]);
        if computed != h.checksum {
            return Err(FrameError::BadChecksum {
                expected: h.checksum,
                computed,
            });
        }
        let frame = Frame::decode_payload(h.frame_type, &self.buf[HEADER_LEN..end])?;
        self.buf.drain(..end);
        self.decoded += end as u64;
        Ok(Some(DecodedFrame {
            seq: h.seq,
            epoch: h.epoch,
            flags: h.flags,
            frame,
        }))
    }
}
