//! The state file: a fixed header (magic, format version, payload length, CRC-32 of the payload)
//! and a postcard-encoded [`VmSnapshot`]. Every check happens before any decoding, and postcard
//! checks each length against the bytes left before allocating, so no input can panic or make
//! us allocate more than the input's size.

use super::VmSnapshot;

/// First bytes of every state file.
pub const MAGIC: [u8; 8] = *b"TANDEMST";
/// Format version this build writes; bump it on any change to [`VmSnapshot`]. Version 2 writes
/// the XSAVE area as bytes; whole state files of version 1 are still read (`legacy`), parts
/// (the vCPU blobs of a migration or FT stream, whose protocol version pins the format) are not.
pub const VERSION: u32 = 2;
/// The oldest version a whole state file may have.
const OLDEST_FILE_VERSION: u32 = 1;
/// Magic, version, payload length (u64), CRC-32 (u32).
pub const HEADER_LEN: usize = 8 + 4 + 8 + 4;

/// Why a state file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The first 8 bytes are not [`MAGIC`] (nor a prefix of it).
    #[error("not a Tandem state file (bad magic)")]
    BadMagic,
    /// The header's format version is not one this build reads.
    #[error(
        "state format version {found} is not supported (this build writes version {VERSION} \
         and reads state files from version {OLDEST_FILE_VERSION})"
    )]
    WrongVersion {
        /// The version the header names.
        found: u32,
    },
    /// The file is shorter than its header, or than the payload length it announces.
    #[error("state is truncated: {need} bytes needed, {have} present")]
    Truncated {
        /// Bytes the header (and payload) need.
        need: u64,
        /// Bytes present.
        have: u64,
    },
    /// The file has this many bytes after the payload the header announces.
    #[error("state has {0} bytes after its end")]
    Trailing(u64),
    /// The payload's CRC-32 differs from the header's.
    #[error("state checksum mismatch: header says {expected:#010x}, payload has {found:#010x}")]
    Checksum {
        /// The CRC-32 in the header.
        expected: u32,
        /// The CRC-32 of the payload.
        found: u32,
    },
    /// The payload passed its checks but does not decode as a [`VmSnapshot`].
    #[error("cannot decode the state")]
    Decode(#[source] postcard::Error),
    /// Encoding the [`VmSnapshot`] with postcard failed.
    #[error("cannot encode the state")]
    Encode(#[source] postcard::Error),
}

/// Encodes `s` with its header.
pub fn encode(s: &VmSnapshot) -> Result<Vec<u8>, FormatError> {
    encode_part(s)
}

/// Encodes any part of the state (a vCPU's, say, for the migration stream) with the same header.
pub fn encode_part<T: serde::Serialize>(part: &T) -> Result<Vec<u8>, FormatError> {
    let payload = postcard::to_stdvec(part).map_err(FormatError::Encode)?;
    Ok(frame(&payload))
}

/// Puts the header in front of an already encoded payload.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    frame_version(payload, VERSION)
}

/// [`frame`] with the header naming `version` (the tests write older files with it).
fn frame_version(payload: &[u8], version: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

fn field<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(src) = b.get(at..at + N) {
        out.copy_from_slice(src);
    }
    out
}

/// Checks the header, which must be of this build's [`VERSION`], and returns the payload it
/// vouches for.
pub fn unframe(b: &[u8]) -> Result<&[u8], FormatError> {
    match unframe_versioned(b)? {
        (VERSION, payload) => Ok(payload),
        (found, _) => Err(FormatError::WrongVersion { found }),
    }
}

/// Checks the header, which may be of any version down to [`OLDEST_FILE_VERSION`], and returns
/// its version and the payload it vouches for.
fn unframe_versioned(b: &[u8]) -> Result<(u32, &[u8]), FormatError> {
    let have = b.len() as u64;
    // A short prefix of a real file still says whether it is ours.
    if b.len() < MAGIC.len() {
        if MAGIC.starts_with(b) {
            return Err(FormatError::Truncated {
                need: HEADER_LEN as u64,
                have,
            });
        }
        return Err(FormatError::BadMagic);
    }
    if field::<8>(b, 0) != MAGIC {
        return Err(FormatError::BadMagic);
    }
    if b.len() < 12 {
        return Err(FormatError::Truncated {
            need: HEADER_LEN as u64,
            have,
        });
    }
    let version = u32::from_le_bytes(field(b, 8));
    if !(OLDEST_FILE_VERSION..=VERSION).contains(&version) {
        return Err(FormatError::WrongVersion { found: version });
    }
    if b.len() < HEADER_LEN {
        return Err(FormatError::Truncated {
            need: HEADER_LEN as u64,
            have,
        });
    }
    let len = u64::from_le_bytes(field(b, 12));
    let expected = u32::from_le_bytes(field(b, 20));
    let need = (HEADER_LEN as u64).saturating_add(len);
    if have < need {
        return Err(FormatError::Truncated { need, have });
    }
    if have > need {
        return Err(FormatError::Trailing(have - need));
    }
    let payload = &b[HEADER_LEN..];
    let found = crc32fast::hash(payload);
    if found != expected {
        return Err(FormatError::Checksum { expected, found });
    }
    Ok((version, payload))
}

/// Decodes a whole state file, of this version or an older one.
pub fn decode(b: &[u8]) -> Result<VmSnapshot, FormatError> {
    match unframe_versioned(b)? {
        (1, payload) => decode_payload::<super::legacy::VmSnapshotV1>(payload).map(Into::into),
        (_, payload) => decode_payload(payload),
    }
}

/// Decodes a part written by [`encode_part`], header checks first.
pub fn decode_part<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, FormatError> {
    decode_payload(unframe(b)?)
}

/// Decodes a payload whose header has been checked.
pub fn decode_payload<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, FormatError> {
    let (s, rest) = postcard::take_from_bytes(payload).map_err(FormatError::Decode)?;
    if !rest.is_empty() {
        return Err(FormatError::Trailing(rest.len() as u64));
    }
    Ok(s)
}

#[cfg(test)]
#[path = "format_tests.rs"]
mod tests;
