//! The fixed 32-byte frame header: layout, validation and checksum.

use super::{FrameError, FrameType, FRAME_VERSION, HEADER_LEN, KNOWN_FLAGS, MAGIC};

/// Byte offset of the checksum field; the checksum covers everything before it plus the payload.
pub(crate) const CHECKSUM_OFFSET: usize = 28;

/// A validated header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// What the payload is.
    pub frame_type: FrameType,
    /// Flag bits.
    pub flags: u8,
    /// Sequence number in the sender's direction.
    pub seq: u64,
    /// Epoch or round.
    pub epoch: u64,
    /// Payload length in bytes.
    pub payload_len: u32,
    /// CRC-32 carried by the frame.
    pub checksum: u32,
}

fn le_u16(b: &[u8; HEADER_LEN], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le_u32(b: &[u8; HEADER_LEN], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le_u64(b: &[u8; HEADER_LEN], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

impl FrameHeader {
    /// Parses and validates a header; `max_payload` is enforced here, before any payload buffer
    /// exists, so that a hostile length cannot make the receiver allocate.
    pub fn parse(b: &[u8; HEADER_LEN], max_payload: u32) -> Result<FrameHeader, FrameError> {
        if b[0..4] != MAGIC {
            return Err(FrameError::BadMagic {
                found: b[0..4].to_vec(),
            });
        }
        let version = le_u16(b, 4);
        if version != FRAME_VERSION {
            return Err(FrameError::UnsupportedVersion {
                found: version,
                supported: FRAME_VERSION,
            });
        }
        let frame_type = FrameType::from_u8(b[6]).ok_or(FrameError::UnknownFrameType(b[6]))?;
        let flags = b[7];
        if flags & !KNOWN_FLAGS != 0 {
            return Err(FrameError::UnknownFlags(flags));
        }
        let payload_len = le_u32(b, 24);
        if payload_len > max_payload {
            return Err(FrameError::PayloadTooLarge {
                len: payload_len.into(),
                max: max_payload,
            });
        }
        Ok(FrameHeader {
            frame_type,
            flags,
            seq: le_u64(b, 8),
            epoch: le_u64(b, 16),
            payload_len,
            checksum: le_u32(b, CHECKSUM_OFFSET),
        })
    }

    /// Writes the header with a zero checksum; the encoder patches length and checksum later.
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FRAME_VERSION.to_le_bytes());
        out.push(self.frame_type as u8);
        out.push(self.flags);
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.epoch.to_le_bytes());
        out.extend_from_slice(&self.payload_len.to_le_bytes());
        out.extend_from_slice(&self.checksum.to_le_bytes());
    }
}

/// CRC-32 over the header (without its checksum field) and the payload.
pub(crate) fn checksum(header: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&header[..CHECKSUM_OFFSET]);
    h.update(payload);
    h.finalize()
}
