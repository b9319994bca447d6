//! Turns a typed frame into bytes: header, payload, then the checksum over both.

use super::header::{checksum, FrameHeader, CHECKSUM_OFFSET};
use super::{DecodedFrame, Frame, FrameError, HEADER_LEN, KNOWN_FLAGS, MAX_PAYLOAD};

/// Appends one encoded frame to `out`; fails (leaving `out` as it was) if the payload would exceed
/// `MAX_PAYLOAD` or `flags` has bits this version does not know.
pub fn encode_frame(
    frame: &Frame,
    seq: u64,
    epoch: u64,
    flags: u8,
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    if flags & !KNOWN_FLAGS != 0 {
        return Err(FrameError::UnknownFlags(flags));
    }
    let start = out.len();
    FrameHeader {
        frame_type: frame.frame_type(),
        flags,
        seq,
        epoch,
        payload_len: 0,
        checksum: 0,
    }
    .write(out);
    frame.encode_payload(out);
    let len = out.len() - start - HEADER_LEN;
    if len > MAX_PAYLOAD as usize {
        out.truncate(start);
        return Err(FrameError::PayloadTooLarge {
            len: len as u64,
            max: MAX_PAYLOAD,
        });
    }
    out[start + 24..start + 28].copy_from_slice(&(len as u32).to_le_bytes());
    let (header, payload) = out[start..].split_at(HEADER_LEN);
    let crc = checksum(header, payload);
    out[start + CHECKSUM_OFFSET..start + HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

impl DecodedFrame {
    /// Encodes this frame again with its own header fields (tests and fuzzing use the round trip).
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        encode_frame(&self.frame, self.seq, self.epoch, self.flags, out)
    }
}
