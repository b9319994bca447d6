//! HMAC-SHA256 and the key schedule of one authenticated connection.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Bytes of every tag and derived key.
pub const TAG_LEN: usize = 32;

type HmacSha256 = Hmac<Sha256>;

fn keyed(key: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    // HMAC takes keys of any length (long ones are hashed), so this cannot fail.
    let mut m = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    };
    for p in parts {
        m.update(p);
    }
    m
}

/// HMAC-SHA256 of the concatenated `parts` under `key`.
pub fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; TAG_LEN] {
    keyed(key, parts).finalize().into_bytes().into()
}

/// Whether `tag` is the HMAC of `parts` under `key`, compared in constant time (a
/// byte-by-byte early exit would tell a forger how many leading bytes were right).
pub fn verify(key: &[u8], parts: &[&[u8]], tag: &[u8]) -> bool {
    keyed(key, parts).verify_slice(tag).is_ok()
}

/// SHA-256 of the concatenated `parts`.
pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// The keys of one connection, as seen from one side.
pub(crate) struct SessionKeys {
    /// Seals the records we send.
    pub(crate) send: [u8; TAG_LEN],
    /// Opens the records we receive.
    pub(crate) recv: [u8; TAG_LEN],
    /// Tags the heartbeat datagrams we send.
    pub(crate) hb_send: [u8; TAG_LEN],
    /// Checks the peer's heartbeat datagrams.
    pub(crate) hb_recv: [u8; TAG_LEN],
    /// What we send to prove we hold the key.
    pub(crate) confirm_ours: [u8; TAG_LEN],
    /// What the peer must send.
    pub(crate) confirm_theirs: [u8; TAG_LEN],
}

/// Derives the connection's keys from the pair key and both handshake messages (each carrying
/// a fresh random nonce), so that nothing recorded from another connection verifies on this one,
/// and each direction and purpose has its own key (a frame reflected back to its sender, or a
/// stream record replayed as a datagram, does not verify).
pub(crate) fn derive(
    pair_key: &[u8],
    initiator_msg: &[u8],
    responder_msg: &[u8],
    we_initiate: bool,
) -> SessionKeys {
    let prk = mac(
        pair_key,
        &[b"tandem ft auth v1", initiator_msg, responder_msg],
    );
    let k = |label: &[u8]| mac(&prk, &[label]);
    let (i2r, r2i) = (k(b"stream i2r"), k(b"stream r2i"));
    let (hb_i2r, hb_r2i) = (k(b"heartbeat i2r"), k(b"heartbeat r2i"));
    let (c_i, c_r) = (k(b"confirm i"), k(b"confirm r"));
    if we_initiate {
        SessionKeys {
            send: i2r,
            recv: r2i,
            hb_send: hb_i2r,
            hb_recv: hb_r2i,
            confirm_ours: c_i,
            confirm_theirs: c_r,
        }
    } else {
        SessionKeys {
            send: r2i,
            recv: i2r,
            hb_send: hb_r2i,
            hb_recv: hb_i2r,
            confirm_ours: c_r,
            confirm_theirs: c_i,
        }
    }
}
