//! The UDP heartbeat datagram: fixed 44 bytes, versioned and checksummed.
//!
//! ```text
//! offset size field
//!  0     4    magic "TNHB"
//!  4     1    format version (1)
//!  5     1    sender role (1 primary, 2 backup)
//!  6     2    reserved, zero
//!  8     8    pair id (little-endian, as all fields)
//! 16     8    generation
//! 24     8    sequence number, per sender, from 0
//! 32     8    sender's wall clock, milliseconds since the Unix epoch
//! 40     4    CRC-32 of bytes 0..40
//! ```
//!
//! A pair with a key sends version 3 instead, sealed under the connection's heartbeat key for
//! that direction (`auth`, AES-256-GCM), 76 bytes in all:
//!
//! ```text
//! offset size field
//!  0     4    magic "TNHB"
//!  4     1    format version (3)
//!  5     3    reserved, zero
//!  8     8    sequence number (the nonce; the sealed one must be the same)
//! 16     44   the heartbeat above (version byte 3), encrypted
//! 60     16   tag over bytes 0..16 and the ciphertext
//! ```
//!
//! Receivers with a key take only version 3 and only what opens, and only sequence numbers above
//! the last accepted (no replays). (Version 2, HMAC-tagged but readable, is refused.)

use crate::auth::{DatagramKey, TAG_LEN};
use crate::status::Role;

/// The four bytes every heartbeat starts with (distinct from the stream's "TNDM").
pub const MAGIC: [u8; 4] = *b"TNHB";
/// The only heartbeat format version this build speaks.
pub const VERSION: u8 = 1;
/// Exact datagram length.
pub const LEN: usize = 44;
/// The sealed (keyed) format's version.
pub const VERSION_SEALED: u8 = 3;
/// Clear header of a sealed datagram: magic, version, reserved, sequence number.
const SEALED_HEADER: usize = 16;
/// Exact length of a sealed datagram.
pub const SEALED_LEN: usize = SEALED_HEADER + LEN + TAG_LEN;

/// A heartbeat as carried on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// Which pair the sender belongs to.
    pub pair_id: u64,
    /// The sender's arbitration generation.
    pub generation: u64,
    /// The sender's role (primary or backup).
    pub role: Role,
    /// Per-sender sequence number.
    pub seq: u64,
    /// Sender's wall clock, ms since the Unix epoch (informative: clocks may differ).
    pub sent_unix_ms: u64,
}

/// Why a datagram was not a heartbeat of ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DatagramError {
    /// Not 44 bytes (76 under a key).
    #[error("datagram of {0} bytes, expected {LEN} ({SEALED_LEN} under a key)")]
    BadLength(usize),
    /// Not a Tandem heartbeat.
    #[error("bad magic")]
    BadMagic,
    /// A format version this build does not speak.
    #[error("unsupported heartbeat version {0}")]
    UnsupportedVersion(u8),
    /// Changed in transit.
    #[error("checksum mismatch")]
    BadChecksum,
    /// Role byte is not primary or backup, or reserved bits are set.
    #[error("malformed heartbeat")]
    Malformed,
    /// A key is in force and the datagram is not sealed, or does not open under it.
    #[error("heartbeat authentication failed")]
    BadTag,
}

fn role_byte(role: Role) -> u8 {
    match role {
        Role::Standalone => 0,
        Role::Primary => 1,
        Role::Backup => 2,
    }
}

fn u64_at(b: &[u8; LEN], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

impl Heartbeat {
    /// The datagram bytes.
    pub fn encode(&self) -> [u8; LEN] {
        self.body(VERSION)
    }

    /// The sealed datagram bytes under `key`, its sequence number the nonce (a sender never
    /// reuses one under a key).
    pub fn encode_sealed(&self, key: &DatagramKey) -> [u8; SEALED_LEN] {
        let mut b = [0u8; SEALED_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4] = VERSION_SEALED;
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        let (header, rest) = b.split_at_mut(SEALED_HEADER);
        let (body, tag) = rest.split_at_mut(LEN);
        body.copy_from_slice(&self.body(VERSION_SEALED));
        tag.copy_from_slice(&key.seal(self.seq, header, body));
        b
    }

    /// Parses a datagram that must be sealed under `key` (`None`: the plain format).
    pub fn decode_with(d: &[u8], key: Option<&DatagramKey>) -> Result<Heartbeat, DatagramError> {
        let Some(key) = key else {
            return Heartbeat::decode(d);
        };
        if d.len() == LEN {
            // A plain heartbeat where a key is in force: refused, whatever it says.
            return Err(DatagramError::BadTag);
        }
        let b: &[u8; SEALED_LEN] = d
            .try_into()
            .map_err(|_| DatagramError::BadLength(d.len()))?;
        if b[0..4] != MAGIC {
            return Err(DatagramError::BadMagic);
        }
        if b[4] != VERSION_SEALED {
            return Err(DatagramError::UnsupportedVersion(b[4]));
        }
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&b[8..16]);
        let seq = u64::from_le_bytes(seq);
        let mut sealed = [0u8; LEN + TAG_LEN];
        sealed.copy_from_slice(&b[SEALED_HEADER..]);
        let body = key
            .open(seq, &b[..SEALED_HEADER], &mut sealed)
            .ok_or(DatagramError::BadTag)?;
        let hb = Self::parse(body, VERSION_SEALED)?;
        // The clear sequence number is authenticated; the sealed one must agree with it.
        if hb.seq != seq || b[5..8] != [0, 0, 0] {
            return Err(DatagramError::Malformed);
        }
        Ok(hb)
    }

    fn body(&self, version: u8) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4] = version;
        b[5] = role_byte(self.role);
        b[8..16].copy_from_slice(&self.pair_id.to_le_bytes());
        b[16..24].copy_from_slice(&self.generation.to_le_bytes());
        b[24..32].copy_from_slice(&self.seq.to_le_bytes());
        b[32..40].copy_from_slice(&self.sent_unix_ms.to_le_bytes());
        let crc = crc32fast::hash(&b[..40]);
        b[40..44].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses and validates a plain datagram; anything unexpected is an error, never a panic.
    pub fn decode(d: &[u8]) -> Result<Heartbeat, DatagramError> {
        Self::parse(d, VERSION)
    }

    fn parse(d: &[u8], version: u8) -> Result<Heartbeat, DatagramError> {
        let b: &[u8; LEN] = d
            .try_into()
            .map_err(|_| DatagramError::BadLength(d.len()))?;
        if b[0..4] != MAGIC {
            return Err(DatagramError::BadMagic);
        }
        if b[4] != version {
            return Err(DatagramError::UnsupportedVersion(b[4]));
        }
        let crc = u32::from_le_bytes([b[40], b[41], b[42], b[43]]);
        if crc != crc32fast::hash(&b[..40]) {
            return Err(DatagramError::BadChecksum);
        }
        let role = match b[5] {
            1 => Role::Primary,
            2 => Role::Backup,
            _ => return Err(DatagramError::Malformed),
        };
        if b[6] != 0 || b[7] != 0 {
            return Err(DatagramError::Malformed);
        }
        Ok(Heartbeat {
            pair_id: u64_at(b, 8),
            generation: u64_at(b, 16),
            role,
            seq: u64_at(b, 24),
            sent_unix_ms: u64_at(b, 32),
        })
    }
}
