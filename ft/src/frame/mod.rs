//! The replication/migration stream's framing: versioned, checksummed frames over one byte
//! stream per pair (DESIGN.md, "the same stream protocol serves migration").
//!
//! Every frame is a fixed 32-byte header followed by a typed payload:
//!
//! ```text
//! offset size field
//!  0     4    magic "TNDM"
//!  4     2    frame format version (little-endian, 1)
//!  6     1    frame type
//!  7     1    flags (bit 0: the sender wants an Ack of this frame)
//!  8     8    sequence number, per direction, starting at 0
//! 16     8    epoch (FT checkpoint number; pre-copy round for migration)
//! 24     4    payload length (at most MAX_PAYLOAD)
//! 28     4    CRC-32 of bytes 0..28 and the payload
//! ```

mod decoder;
mod delta;
mod disk;
mod encoder;
mod header;
mod pages;
mod payload;
mod scrub;
mod wire;

pub use decoder::Decoder;
pub use delta::{apply_delta, check_delta, encode_delta, DeltaError};
pub use disk::{BlockRef, DiskBatch};
pub use encoder::encode_frame;
pub use header::FrameHeader;
pub use pages::{is_zero_page, PageBatch, PageRef, PAGE_SIZE};
pub use payload::{CommitInfo, Frame, Hello, StreamPurpose};
pub use scrub::{
    ScrubDigest, ScrubEntry, ScrubOutcome, ScrubRegion, ScrubRepair, ScrubResult, MAX_REGION_BYTES,
    MAX_REGION_PAGES, MAX_SCRUB_ENTRIES,
};

/// The four bytes every frame starts with.
pub const MAGIC: [u8; 4] = *b"TNDM";
/// The only frame format version this build speaks.
pub const FRAME_VERSION: u16 = 1;
/// Length of the fixed header.
pub const HEADER_LEN: usize = 32;
/// Largest payload a frame may carry; checked before anything is allocated for it.
pub const MAX_PAYLOAD: u32 = 32 << 20;
/// Flag: the sender expects an `Ack` carrying this frame's sequence number.
pub const FLAG_ACK_REQUESTED: u8 = 0x01;
/// Every flag this version knows; others are rejected so that a newer peer's meaning is not lost.
pub const KNOWN_FLAGS: u8 = FLAG_ACK_REQUESTED;

/// What a frame carries; the numbers are on the wire and never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    /// Versions and VM identity, first frame of a stream.
    Hello = 1,
    /// A batch of guest pages.
    MemoryPages = 2,
    /// Opaque device/platform state.
    DeviceState = 3,
    /// Opaque state of one vCPU.
    VcpuState = 4,
    /// End of one pre-copy round.
    EndOfRound = 5,
    /// Everything for this epoch has been sent.
    Commit = 6,
    /// Acknowledges a frame of the peer's by sequence number.
    Ack = 7,
    /// The peer gives up, with a reason.
    Abort = 8,
    /// Liveness.
    Heartbeat = 9,
    /// A chunk of an FT checkpoint's opaque extras (e.g. the epoch's disk write log); protocol
    /// version 2 and later.
    Extras = 10,
    /// The backup's answer to the primary's Abort: it discarded its copy and will never go live
    /// from it, so the primary may run the guest alone without arbitration (protocol version 5).
    EndConfirmed = 11,
    /// Blocks of a replicated disk, in the FT initial sync; protocol version 5 and later.
    DiskBlocks = 12,
    /// A migration's hand-over terms: the arbiter generation whose winner runs the VM
    /// (protocol version 5 and later; `migration::handover`).
    Handover = 13,
    /// FT `ft.promote`: the backup asks the primary to stop writing the shared disk; the
    /// primary answers with the same frame once it has (protocol version 5 and later).
    Fence = 14,
    /// The replica scrub: the primary's hashes of regions of a committed checkpoint, with
    /// repairs of regions found different before (protocol version 5).
    ScrubDigest = 17,
    /// The replica scrub: the backup's regions that differ from a digest (protocol version 5).
    ScrubResult = 18,
}

impl FrameType {
    /// The type for a wire byte, if this version knows it.
    pub fn from_u8(v: u8) -> Option<FrameType> {
        Some(match v {
            1 => FrameType::Hello,
            2 => FrameType::MemoryPages,
            3 => FrameType::DeviceState,
            4 => FrameType::VcpuState,
            5 => FrameType::EndOfRound,
            6 => FrameType::Commit,
            7 => FrameType::Ack,
            8 => FrameType::Abort,
            9 => FrameType::Heartbeat,
            10 => FrameType::Extras,
            11 => FrameType::EndConfirmed,
            12 => FrameType::DiskBlocks,
            13 => FrameType::Handover,
            14 => FrameType::Fence,
            17 => FrameType::ScrubDigest,
            18 => FrameType::ScrubResult,
            _ => return None,
        })
    }
}

/// Errors of the framing layer: what was wrong with the bytes, precisely enough to log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The stream does not start a frame where one should start.
    #[error("bad magic {found:02x?} (expected \"TNDM\"): not a Tandem stream or out of sync")]
    BadMagic {
        /// The bytes found (up to four).
        found: Vec<u8>,
    },
    /// The peer speaks a frame format version this build does not.
    #[error("unsupported frame version {found} (this build speaks {supported})")]
    UnsupportedVersion {
        /// Version on the wire.
        found: u16,
        /// Version this build speaks.
        supported: u16,
    },
    /// A frame type byte this version does not know.
    #[error("unknown frame type {0}")]
    UnknownFrameType(u8),
    /// Flag bits this version does not know.
    #[error("unknown flags {0:#04x}")]
    UnknownFlags(u8),
    /// The declared payload is larger than the limit.
    #[error("payload of {len} bytes exceeds the limit of {max}")]
    PayloadTooLarge {
        /// Declared or encoded length.
        len: u64,
        /// The limit in force.
        max: u32,
    },
    /// Header or payload changed in transit.
    #[error("checksum mismatch: frame says {expected:#010x}, computed {computed:#010x}")]
    BadChecksum {
        /// Checksum carried by the frame.
        expected: u32,
        /// Checksum of the bytes received.
        computed: u32,
    },
    /// The stream ended inside a frame.
    #[error("truncated frame: the stream ended after {have} of its {need} bytes")]
    Truncated {
        /// Bytes of the frame received.
        have: usize,
        /// Bytes the frame needs (header only, if the header was incomplete).
        need: usize,
    },
    /// The payload does not parse as its type says.
    #[error("malformed {frame_type:?} payload: {reason}")]
    Malformed {
        /// The frame's type.
        frame_type: FrameType,
        /// What was wrong.
        reason: &'static str,
    },
    /// A well-formed frame arrived where the protocol wants another type.
    #[error("unexpected {got:?} frame, expected {expected}")]
    UnexpectedType {
        /// What the protocol wanted at this point.
        expected: &'static str,
        /// What arrived.
        got: FrameType,
    },
    /// The decoder already failed; a byte stream cannot be resynchronised after an error.
    #[error("decoder already failed on an earlier frame")]
    Poisoned,
}

/// A frame as received: header fields the protocol needs plus the typed payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedFrame {
    /// Sequence number in the sender's direction.
    pub seq: u64,
    /// Epoch or round the frame belongs to.
    pub epoch: u64,
    /// Flag bits (only known ones).
    pub flags: u8,
    /// The payload.
    pub frame: Frame,
}

impl DecodedFrame {
    /// Whether the sender asked for an Ack of this frame.
    pub fn ack_requested(&self) -> bool {
        self.flags & FLAG_ACK_REQUESTED != 0
    }
}

#[cfg(test)]
mod tests;
