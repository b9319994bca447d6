//! The handshake every FT and live-migration stream opens with, before any frame: each side sends
//!
//! ```text
//! offset size field
//!  0     4    magic "TNAU"
//!  4     1    handshake version (2: encrypted records; 1 was HMAC-only and is refused)
//!  5     1    mode: 0 no pair key, 1 the pair key (HKDF-SHA256, AES-256-GCM records)
//!  6     1    side: 1 initiator (connected: primary, migration source), 2 responder (accepted)
//!  7     1    purpose: 1 FT replication stream, 2 live migration
//!  8     32   nonce, fresh random bytes per connection
//! 40     4    CRC-32 of bytes 0..40
//! ```
//!
//! then reads the peer's. Another version or purpose is refused, naming it. Both modes 0: an
//! unencrypted, unauthenticated stream (allowed, logged loudly; a listener without a key must be
//! local or say `insecure`). Modes differ: refused on both sides. Both 1: each derives the
//! connection's keys from the pair key and both messages (HKDF), sends a 32-byte confirmation only
//! the key holder can compute, and checks the peer's, so a peer without the key (or with another)
//! fails here, on both sides, before any frame. From then on every byte travels in encrypted,
//! authenticated records (`record`).

use super::conn::SecureConn;
use super::crypto::{derive, mac, sha256, verify, CONFIRM_LABEL, CONFIRM_LEN, KEY_LEN};
use super::{AuthError, DatagramKey, PairKey, Session};
use crate::transport::Connection;
use std::io::{self, Read};
use std::time::Duration;

/// The four bytes a handshake starts with.
pub const MAGIC: [u8; 4] = *b"TNAU";
/// The only handshake version this build speaks.
pub const VERSION: u8 = 2;
/// Exact length of a handshake message.
pub const MSG_LEN: usize = 44;
/// How the frame stream starts: a peer that sends this speaks no handshake (an older Tandem).
const FRAME_MAGIC: [u8; 4] = crate::frame::MAGIC;

/// Which end of the connection this side is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Connected to the peer (the primary of a pair).
    Initiator,
    /// Accepted the peer's connection (the backup).
    Responder,
}

impl Side {
    fn byte(self) -> u8 {
        match self {
            Side::Initiator => 1,
            Side::Responder => 2,
        }
    }
}

/// What the stream carries: both ends must agree, so that a primary pointed at a migration
/// listener (or the reverse) is refused before anything is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// An FT pair's replication stream (`ft.enable` / `ft.receive`).
    Ft,
    /// A live migration (`vm.send-migration` / `vm.receive-migration`).
    Migration,
}

impl Purpose {
    fn byte(self) -> u8 {
        match self {
            Purpose::Ft => 1,
            Purpose::Migration => 2,
        }
    }
}

impl std::fmt::Display for Purpose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Purpose::Ft => "an FT replication stream",
            Purpose::Migration => "a live migration",
        })
    }
}

/// One side's handshake message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthHello {
    /// Whether the sender holds a pair key.
    pub keyed: bool,
    /// The sender's side.
    pub side: Side,
    /// What the sender's stream is for.
    pub purpose: Purpose,
    /// The sender's fresh nonce.
    pub nonce: [u8; 32],
}

impl AuthHello {
    /// The message bytes.
    pub fn encode(&self) -> [u8; MSG_LEN] {
        let mut b = [0u8; MSG_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4] = VERSION;
        b[5] = u8::from(self.keyed);
        b[6] = self.side.byte();
        b[7] = self.purpose.byte();
        b[8..40].copy_from_slice(&self.nonce);
        let crc = crc32fast::hash(&b[..40]);
        b[40..44].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses a message; anything unexpected is an error, never a panic. A prefix shorter than a
    /// message is judged by what it has (an older Tandem's frame is recognised from its magic).
    pub fn decode(b: &[u8]) -> Result<AuthHello, AuthError> {
        let n = b.len().min(4);
        if b[..n] == FRAME_MAGIC[..n] && n == 4 {
            return Err(AuthError::OldPeer);
        }
        if b[..n] != MAGIC[..n] {
            return Err(AuthError::NotTandem);
        }
        let b: &[u8; MSG_LEN] = b.try_into().map_err(|_| AuthError::PeerClosed)?;
        if b[4] != VERSION {
            return Err(AuthError::Version { theirs: b[4] });
        }
        let crc = u32::from_le_bytes([b[40], b[41], b[42], b[43]]);
        if crc != crc32fast::hash(&b[..40]) {
            return Err(AuthError::BadHandshake("checksum mismatch"));
        }
        let keyed = match b[5] {
            0 => false,
            1 => true,
            _ => return Err(AuthError::BadHandshake("unknown mode")),
        };
        let side = match b[6] {
            1 => Side::Initiator,
            2 => Side::Responder,
            _ => return Err(AuthError::BadHandshake("unknown side")),
        };
        let purpose = match b[7] {
            1 => Purpose::Ft,
            2 => Purpose::Migration,
            _ => return Err(AuthError::BadHandshake("unknown purpose")),
        };
        let mut nonce = [0u8; 32];
        nonce.copy_from_slice(&b[8..40]);
        Ok(AuthHello {
            keyed,
            side,
            purpose,
            nonce,
        })
    }
}

fn random_nonce() -> Result<[u8; 32], AuthError> {
    let mut n = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut n))
        .map_err(AuthError::Random)?;
    Ok(n)
}

fn io_err(what: &'static str) -> impl Fn(io::Error) -> AuthError {
    move |source| match source.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => AuthError::Timeout { what },
        io::ErrorKind::UnexpectedEof => AuthError::PeerClosed,
        _ => AuthError::Io { what, source },
    }
}

/// Reads up to `N` bytes; fewer only at end of stream, or as soon as `wrong` finds the bytes so
/// far cannot be what is expected (a peer that sent something else may never send `N` bytes).
fn read_upto<const N: usize>(
    conn: &mut dyn Connection,
    what: &'static str,
    wrong: impl Fn(&[u8]) -> bool,
) -> Result<([u8; N], usize), AuthError> {
    let mut b = [0u8; N];
    let mut have = 0;
    while have < N {
        match conn.read(&mut b[have..]) {
            Ok(0) => break,
            Ok(n) => {
                have += n;
                if wrong(&b[..have]) {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(what)(e)),
        }
    }
    Ok((b, have))
}

/// Runs the handshake on a fresh connection as `side` of a stream for `purpose`, with or without
/// the pair key, each read and write bounded by `timeout`. Returns the connection to carry frames
/// on (encrypted records when keyed) and what the session established. On error the connection
/// is closed.
pub fn handshake(
    mut conn: Box<dyn Connection>,
    key: Option<&PairKey>,
    side: Side,
    purpose: Purpose,
    timeout: Duration,
) -> Result<(Box<dyn Connection>, Session), AuthError> {
    let r = run(&mut *conn, key, side, purpose, timeout);
    match r {
        Ok((session, keys)) => {
            let conn: Box<dyn Connection> = match keys {
                Some((send, recv)) => Box::new(SecureConn::new(conn, send, recv)),
                None => conn,
            };
            Ok((conn, session))
        }
        Err(e) => {
            let _ = conn.shutdown(std::net::Shutdown::Both);
            Err(e)
        }
    }
}

type StreamKeys = Option<([u8; KEY_LEN], [u8; KEY_LEN])>;

fn run(
    conn: &mut dyn Connection,
    key: Option<&PairKey>,
    side: Side,
    purpose: Purpose,
    timeout: Duration,
) -> Result<(Session, StreamKeys), AuthError> {
    let set = |c: &dyn Connection| {
        c.set_read_timeout(Some(timeout))
            .and_then(|()| c.set_write_timeout(Some(timeout)))
    };
    set(conn).map_err(io_err("setting timeouts"))?;
    let ours = AuthHello {
        keyed: key.is_some(),
        side,
        purpose,
        nonce: random_nonce()?,
    };
    let our_msg = ours.encode();
    conn.write_all(&our_msg)
        .map_err(io_err("sending the handshake"))?;
    let (peer_msg, have) = read_upto::<MSG_LEN>(conn, "the peer's handshake", |b| {
        let n = b.len().min(MAGIC.len());
        b[..n] != MAGIC[..n]
    })?;
    let theirs = AuthHello::decode(&peer_msg[..have])?;
    if theirs.side == side {
        return Err(AuthError::BadHandshake("both ends claim the same side"));
    }
    if theirs.purpose != purpose {
        return Err(AuthError::WrongPurpose {
            ours: purpose,
            theirs: theirs.purpose,
        });
    }
    let (i_msg, r_msg) = match side {
        Side::Initiator => (&our_msg, &peer_msg),
        Side::Responder => (&peer_msg, &our_msg),
    };
    // Both ends compute the same id from the two nonces: it names the pair's heartbeats.
    let digest = sha256(&[b"tandem pair id", i_msg, r_msg]);
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    let pair_id = u64::from_le_bytes(id);
    let key = match (key, theirs.keyed) {
        (None, false) => {
            let session = Session {
                authenticated: false,
                pair_id,
                heartbeat: None,
            };
            return Ok((session, None));
        }
        (Some(_), false) => return Err(AuthError::PeerHasNoKey),
        (None, true) => return Err(AuthError::WeHaveNoKey),
        (Some(k), true) => k,
    };
    let keys = derive(key.bytes(), i_msg, r_msg, side == Side::Initiator);
    conn.write_all(&mac(&keys.confirm_ours, &[CONFIRM_LABEL]))
        .map_err(io_err("sending the key confirmation"))?;
    let (confirm, have) = read_upto::<CONFIRM_LEN>(conn, "the peer's key confirmation", |_| false)?;
    // The peer closes after a failed check of ours: a cut confirmation is the same failure.
    if have < CONFIRM_LEN || !verify(&keys.confirm_theirs, &[CONFIRM_LABEL], &confirm) {
        return Err(AuthError::Failed);
    }
    let session = Session {
        authenticated: true,
        pair_id,
        heartbeat: Some((DatagramKey(keys.hb_send), DatagramKey(keys.hb_recv))),
    };
    Ok((session, Some((keys.send, keys.recv))))
}
