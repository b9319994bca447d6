//! Authentication of the replication channel with a key the two members of a pair share
//! (README, "Security model"): integrity and authenticity of every byte of the stream and of the
//! UDP heartbeats, replay protection within and across connections. Not confidentiality: the
//! stream is not encrypted, so guest memory crosses the link readable to whoever can see it.
//!
//! * [`PairKey`]: the key file (≥ 32 random bytes, not readable by group or others).
//! * [`handshake`]: opens every FT stream, keyed or not, so that a peer with another key, no key,
//!   or no handshake at all (an older Tandem) is refused before the first frame, on both sides.
//! * `record`: the authenticated records a keyed stream travels in, under per-connection,
//!   per-direction keys and an implicit counter.
//! * [`DatagramKey`]: tags heartbeat datagrams under per-connection keys.
//!
//! Live migration (`vm.send_migration` / `vm.receive_migration`) does not use this yet: its
//! stream is unchanged, without handshake.

mod conn;
mod crypto;
mod handshake;
mod key;
mod record;

pub use crypto::TAG_LEN;
pub use handshake::{handshake, AuthHello, Side, MSG_LEN};
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

/// Tags or checks heartbeat datagrams of one connection and direction.
#[derive(Clone)]
pub struct DatagramKey(pub(crate) [u8; TAG_LEN]);

impl std::fmt::Debug for DatagramKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DatagramKey(..)")
    }
}

impl DatagramKey {
    /// The tag of `body`.
    pub fn tag(&self, body: &[u8]) -> [u8; TAG_LEN] {
        crypto::mac(&self.0, &[body])
    }

    /// Whether `tag` is `body`'s, in constant time.
    pub fn verify(&self, body: &[u8], tag: &[u8]) -> bool {
        crypto::verify(&self.0, &[body], tag)
    }
}

/// What a handshake established.
#[derive(Debug, Clone)]
pub struct Session {
    /// Both sides proved the pair key; the stream is authenticated.
    pub authenticated: bool,
    /// An id both sides derived from the connection's nonces, naming the pair's heartbeats.
    pub pair_id: u64,
    /// Keys for heartbeat datagrams (send, receive), when authenticated.
    pub heartbeat: Option<(DatagramKey, DatagramKey)>,
}

#[cfg(test)]
mod tests;
