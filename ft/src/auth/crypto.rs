//! The cryptography of one keyed connection, all from `ring`: the HKDF-SHA256 key schedule,
//! AES-256-GCM for stream records and heartbeat datagrams (nonce = the record or datagram
//! number), HMAC-SHA256 for the key confirmation, SHA-256 for the pair id.
//!
//! AES-256-GCM rather than ChaCha20-Poly1305: with AES-NI and carry-less multiply (every x86-64
//! and arm64 server) ring's AES-GCM costs a third of the CPU per byte here (4.6-5.8 against
//! 1.7-1.8 GB per CPU-second), and CPU is what a 2-core host running a guest lacks. Its price, a
//! data limit per key, is paid by [`DirectionKeys`]: a fresh key every 2^20 records.

use ring::{aead, digest, hkdf, hmac};

/// Bytes of every derived key.
pub const KEY_LEN: usize = 32;
/// Bytes of an AEAD tag (GCM).
pub const TAG_LEN: usize = 16;
/// Bytes of a key confirmation (HMAC-SHA256).
pub const CONFIRM_LEN: usize = 32;

/// HMAC-SHA256 of the concatenated `parts` under `key`.
pub fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; CONFIRM_LEN] {
    let mut ctx = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, key));
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; CONFIRM_LEN];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

/// Whether `tag` is the HMAC of `parts` under `key`, compared in constant time (a byte-by-byte
/// early exit would tell a forger how many leading bytes were right).
pub fn verify(key: &[u8], parts: &[&[u8]], tag: &[u8]) -> bool {
    hmac::verify(
        &hmac::Key::new(hmac::HMAC_SHA256, key),
        &parts.concat(),
        tag,
    )
    .is_ok()
}

/// SHA-256 of the concatenated `parts`.
pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The 96-bit nonce of message number `counter`: four zero bytes, then the counter. Each key
/// seals under one counter that only goes up, so no nonce repeats under a key.
fn nonce(counter: u64) -> aead::Nonce {
    let mut n = [0u8; aead::NONCE_LEN];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    aead::Nonce::assume_unique_for_key(n)
}

/// One AES-256-GCM key.
pub(crate) struct AeadKey(aead::LessSafeKey);

impl AeadKey {
    /// The key from its 32 bytes.
    pub(crate) fn new(bytes: &[u8; KEY_LEN]) -> AeadKey {
        match aead::UnboundKey::new(&aead::AES_256_GCM, bytes) {
            Ok(k) => AeadKey(aead::LessSafeKey::new(k)),
            Err(_) => unreachable!("AES-256-GCM takes any 32-byte key"),
        }
    }

    /// Encrypts `in_out` in place as message `counter`, binding `aad`; returns the tag.
    pub(crate) fn seal(&self, counter: u64, aad: &[u8], in_out: &mut [u8]) -> [u8; TAG_LEN] {
        // Fails only above GCM's 64 GiB per message; records are at most 64 KiB.
        match self
            .0
            .seal_in_place_separate_tag(nonce(counter), aead::Aad::from(aad), in_out)
        {
            Ok(tag) => {
                let mut t = [0u8; TAG_LEN];
                t.copy_from_slice(tag.as_ref());
                t
            }
            Err(_) => unreachable!("messages here are far below GCM's length limit"),
        }
    }

    /// Decrypts `in_out` (ciphertext then tag) in place as message `counter`; the plaintext, or
    /// `None` if it does not verify (then `in_out` holds garbage).
    pub(crate) fn open<'a>(
        &self,
        counter: u64,
        aad: &[u8],
        in_out: &'a mut [u8],
    ) -> Option<&'a mut [u8]> {
        self.0
            .open_in_place(nonce(counter), aead::Aad::from(aad), in_out)
            .ok()
    }
}

/// Records sealed under one key before the next: 2^20 records of at most 64 KiB are at most 2^32
/// AES blocks, which keeps an attacker's advantage against a key's confidentiality below 2^-64
/// (the usage limits of draft-irtf-cfrg-aead-limits: (blocks + messages)^2 / 2^129).
pub const RECORDS_PER_KEY: u64 = 1 << 20;

/// One direction's record keys: the direction's secret from the handshake, and the key of the
/// current epoch of [`RECORDS_PER_KEY`] records, derived from it with HKDF-Expand as the
/// counter enters the epoch (both ends do the same, so nothing about it crosses the wire).
pub(crate) struct DirectionKeys {
    secret: hkdf::Prk,
    epoch: u64,
    key: AeadKey,
}

impl DirectionKeys {
    /// The keys of a direction whose secret is `secret` (uniformly random: an HKDF output).
    pub(crate) fn new(secret: &[u8; KEY_LEN]) -> DirectionKeys {
        let secret = hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, secret);
        let key = AeadKey::new(&epoch_key(&secret, 0));
        DirectionKeys {
            secret,
            epoch: 0,
            key,
        }
    }

    /// The key record `counter` is sealed under.
    pub(crate) fn for_record(&mut self, counter: u64) -> &AeadKey {
        let epoch = counter / RECORDS_PER_KEY;
        if epoch != self.epoch {
            self.key = AeadKey::new(&epoch_key(&self.secret, epoch));
            self.epoch = epoch;
        }
        &self.key
    }
}

/// The record key of `epoch` under a direction's secret.
pub(crate) fn epoch_key(secret: &hkdf::Prk, epoch: u64) -> [u8; KEY_LEN] {
    expand(secret, &[b"record key ", &epoch.to_be_bytes()[..]].concat())
}

/// The keys of one connection, as seen from one side.
pub(crate) struct SessionKeys {
    /// The secret of the records we send.
    pub(crate) send: [u8; KEY_LEN],
    /// The secret of the records we receive.
    pub(crate) recv: [u8; KEY_LEN],
    /// Seals the heartbeat datagrams we send.
    pub(crate) hb_send: [u8; KEY_LEN],
    /// Opens the peer's heartbeat datagrams.
    pub(crate) hb_recv: [u8; KEY_LEN],
    /// MACs [`CONFIRM_LABEL`] into what we send to prove we hold the key.
    pub(crate) confirm_ours: [u8; KEY_LEN],
    /// Checks the peer's proof.
    pub(crate) confirm_theirs: [u8; KEY_LEN],
}

/// A length for HKDF-Expand.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-Expand of `prk` for `label`, 32 bytes.
fn expand(prk: &hkdf::Prk, label: &[u8]) -> [u8; KEY_LEN] {
    let mut out = [0u8; KEY_LEN];
    let info: [&[u8]; 2] = [b"tandem auth v2 ", label];
    // 32 bytes is far below HKDF-SHA256's 255 * 32 byte limit.
    match prk
        .expand(&info, Len(KEY_LEN))
        .and_then(|okm| okm.fill(&mut out))
    {
        Ok(()) => out,
        Err(_) => unreachable!("HKDF-SHA256 expands to 32 bytes"),
    }
}

/// What each side MACs under its confirmation key to prove it holds the pair key.
pub(crate) const CONFIRM_LABEL: &[u8] = b"tandem auth v2 key confirmation";

/// Derives the connection's keys with HKDF-SHA256: extract with both handshake messages (each
/// carrying a fresh random nonce, the version and the stream's purpose) as the salt and the pair
/// key as the secret, then expand one secret per direction and purpose (records are sealed under
/// keys expanded from a direction's secret, [`DirectionKeys`]). So nothing recorded from another
/// connection opens on this one, a record reflected back to its sender does not open, and a
/// stream record replayed as a datagram does not either.
pub(crate) fn derive(
    pair_key: &[u8],
    initiator_msg: &[u8],
    responder_msg: &[u8],
    we_initiate: bool,
) -> SessionKeys {
    let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, &[initiator_msg, responder_msg].concat());
    let prk = salt.extract(pair_key);
    let k = |label: &[u8]| expand(&prk, label);
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
