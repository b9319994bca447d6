//! Encryption and authentication of the replication channel and of live migration with a key
//! both ends share (README, "Security model"): confidentiality, integrity and authenticity of
//! every byte of the stream and of the UDP heartbeats, replay protection within and across
//! connections.
//!
//! * [`PairKey`]: the key file (≥ 32 random bytes, not readable by group or others).
//! * [`handshake`]: opens every FT and migration stream, keyed or not, so that a peer with another
//!   key, no key, another purpose, an older handshake or none at all is refused before the first
//!   frame, on both sides.
//! * `record`: the encrypted records (AES-256-GCM) a keyed stream travels in, under
//!   per-connection, per-direction keys (HKDF-SHA256, renewed every 2^20 records) and an implicit
//!   counter as the nonce.
//! * [`DatagramKey`]: seals heartbeat datagrams under per-connection keys.
//! * [`check_listener`]: without a key, only a local listener unless the caller says insecure.

mod conn;
mod crypto;
mod exposure;
mod handshake;
mod key;
mod record;

pub use crypto::{CONFIRM_LEN, KEY_LEN, RECORDS_PER_KEY, TAG_LEN};

/// Most datagrams one [`DatagramKey`] seals: 2^32 of 44 bytes keep its AES-GCM usage far inside
/// the limits (a sender at 10 Hz would take 13 years).
pub const MAX_SEALED: u64 = 1 << 32;
pub use exposure::check_listener;
pub use handshake::{handshake, AuthHello, Purpose, Side, MSG_LEN};
pub use key::{PairKey, MAX_KEY_LEN, MIN_KEY_LEN};
pub use record::{Opener, RecordError, Sealer, MAX_RECORD};

use std::path::PathBuf;

/// Errors of the authentication layer. Every refusal of the peer says "authentication failed"
/// or names the mismatch, so that both members' logs and ft.status tell the operator the same.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The key file cannot be opened or read.
    #[error("cannot read the pair key file {path}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The key path is not a regular file.
    #[error("pair key {path} is not a regular file")]
    KeyNotAFile {
        /// The path.
        path: PathBuf,
    },
    /// Group or others may access the key file.
    #[error(
        "pair key file {path} is accessible by group or others (mode {mode:o}); it must be \
         readable by its owner only (chmod 600)"
    )]
    KeyPermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Fewer than `MIN_KEY_LEN` bytes.
    #[error("pair key {path} has {len} bytes; at least {MIN_KEY_LEN} random bytes are required")]
    KeyTooShort {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// More than `MAX_KEY_LEN` bytes.
    #[error("pair key file {path} is larger than {MAX_KEY_LEN} bytes: not a key file")]
    KeyTooLong {
        /// The file.
        path: PathBuf,
    },
    /// No random bytes for the nonce.
    #[error("cannot read random bytes for the handshake")]
    Random(#[source] std::io::Error),
    /// The peer did not answer in time.
    #[error("timed out waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: &'static str,
    },
    /// The connection failed during the handshake.
    #[error("handshake I/O failed ({what})")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The peer closed the connection during the handshake.
    #[error("the peer closed the connection during the handshake")]
    PeerClosed,
    /// The peer started a frame stream without the handshake.
    #[error(
        "the peer speaks the frame stream without the authentication handshake (an older \
         Tandem): refused"
    )]
    OldPeer,
    /// The peer speaks another handshake version (1: authenticated but unencrypted records).
    #[error(
        "the peer speaks authentication handshake version {theirs}, this Tandem version {ours} \
         (version 2 encrypts the stream; version 1 did not): refused; run the same Tandem \
         release on both ends",
        ours = handshake::VERSION
    )]
    Version {
        /// The peer's version byte.
        theirs: u8,
    },
    /// The peer's stream is for something else (a migration sent to an FT backup, say).
    #[error("the peer opens {theirs} but this side expects {ours}: refused")]
    WrongPurpose {
        /// What this side expects.
        ours: Purpose,
        /// What the peer sends.
        theirs: Purpose,
    },
    /// A listener without a key that other hosts could reach, not marked insecure.
    #[error(
        "refusing to listen on {endpoint} without a key: any host that reaches it could hand \
         this VMM a VM to run. Give a key (\"key\": {{\"path\": ...}}, the same file on both \
         ends) or, on a network you trust, \"insecure\": true (a loopback address or a unix: \
         path needs neither)"
    )]
    InsecureListen {
        /// Where the caller asked to listen.
        endpoint: String,
    },
    /// The peer's first bytes are not a Tandem handshake.
    #[error("the peer's first bytes are not a Tandem handshake")]
    NotTandem,
    /// A handshake message that does not parse.
    #[error("malformed handshake: {0}")]
    BadHandshake(&'static str),
    /// We have a key, the peer has none.
    #[error(
        "authentication failed: this side has a pair key but the peer has none (give both the \
         same key)"
    )]
    PeerHasNoKey,
    /// The peer has a key, we have none.
    #[error(
        "authentication failed: the peer requires a pair key but this side has none (give both \
         the same key)"
    )]
    WeHaveNoKey,
    /// The peer's key confirmation does not verify.
    #[error(
        "authentication failed: the peer does not hold the same pair key (or the handshake was \
         altered)"
    )]
    Failed,
}

impl AuthError {
    /// Whether the key file itself is at fault (a 400 for the call that named it).
    pub fn is_key_error(&self) -> bool {
        matches!(
            self,
            AuthError::KeyFile { .. }
                | AuthError::KeyNotAFile { .. }
                | AuthError::KeyPermissions { .. }
                | AuthError::KeyTooShort { .. }
                | AuthError::KeyTooLong { .. }
        )
    }
}

/// Seals or opens heartbeat datagrams of one connection and direction (AES-256-GCM; the
/// sender's sequence number is the nonce, below [`MAX_SEALED`] per key).
#[derive(Clone)]
pub struct DatagramKey(pub(crate) [u8; KEY_LEN]);

impl std::fmt::Debug for DatagramKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DatagramKey(..)")
    }
}

impl DatagramKey {
    /// A key from its bytes (tests and fuzzing; a pair's keys come from the handshake).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> DatagramKey {
        DatagramKey(bytes)
    }

    /// Encrypts `body` in place as datagram `seq`, binding `header`; returns the tag. A sender
    /// never seals two datagrams with the same `seq` under one key.
    pub fn seal(&self, seq: u64, header: &[u8], body: &mut [u8]) -> [u8; TAG_LEN] {
        crypto::AeadKey::new(&self.0).seal(seq, header, body)
    }

    /// Decrypts `in_out` (ciphertext then tag) in place as datagram `seq` with `header`; the
    /// plaintext, or `None` if it does not verify.
    pub fn open<'a>(&self, seq: u64, header: &[u8], in_out: &'a mut [u8]) -> Option<&'a [u8]> {
        crypto::AeadKey::new(&self.0)
            .open(seq, header, in_out)
            .map(|p| &*p)
    }
}

/// What a handshake established.
#[derive(Debug, Clone)]
pub struct Session {
    /// Both sides proved the pair key; the stream is encrypted and authenticated.
    pub authenticated: bool,
    /// An id both sides derived from the connection's nonces, naming the pair's heartbeats.
    pub pair_id: u64,
    /// Keys for heartbeat datagrams (send, receive), when keyed.
    pub heartbeat: Option<(DatagramKey, DatagramKey)>,
}

#[cfg(test)]
mod tests;
