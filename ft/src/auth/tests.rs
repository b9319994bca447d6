//! Handshake outcomes for every key combination, purpose and version, record confidentiality and
//! tampering of every kind, the counter's end, key file checks, and bounded mutation loops over
//! the record opener and the handshake decoder (the stable stand-ins for the `ft/fuzz` targets).

use super::*;
use crate::frame::{encode_frame, Decoder, Frame};
use crate::transport::Connection;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;
use tandem_testkit::{mutation_loop, Edit, EditKind, Rng};

const T: Duration = Duration::from_secs(5);

fn key(b: u8) -> PairKey {
    PairKey::from_bytes(&[b; 32]).unwrap()
}

type Outcome = Result<(Box<dyn Connection>, Session), AuthError>;

/// Runs both ends of an FT stream's handshake over a socket pair.
fn pair(a: Option<PairKey>, b: Option<PairKey>) -> (Outcome, Outcome) {
    pair_for(a, Purpose::Ft, b, Purpose::Ft)
}

/// Runs an initiator for `pa` and a responder for `pb` over a socket pair.
fn pair_for(
    a: Option<PairKey>,
    pa: Purpose,
    b: Option<PairKey>,
    pb: Purpose,
) -> (Outcome, Outcome) {
    let (x, y) = UnixStream::pair().unwrap();
    let t = std::thread::spawn(move || handshake(Box::new(y), b.as_ref(), Side::Responder, pb, T));
    let l = handshake(Box::new(x), a.as_ref(), Side::Initiator, pa, T);
    (l, t.join().unwrap())
}

fn err(o: Outcome) -> AuthError {
    match o {
        Ok(_) => panic!("handshake succeeded"),
        Err(e) => e,
    }
}

#[test]
fn same_key_authenticates_and_frames_flow_both_ways() {
    let (a, b) = pair(Some(key(1)), Some(key(1)));
    let ((mut ca, sa), (mut cb, sb)) = (a.unwrap(), b.unwrap());
    assert!(sa.authenticated && sb.authenticated);
    assert_eq!(sa.pair_id, sb.pair_id);
    let (ha, hb) = (sa.heartbeat.unwrap(), sb.heartbeat.unwrap());
    // What one side seals, the other opens; the directions differ.
    let mut body = *b"heartbeat";
    let tag = ha.0.seal(1, b"hdr", &mut body);
    let mut sealed = [&body[..], &tag[..]].concat();
    assert!(hb.0.open(1, b"hdr", &mut sealed.clone()).is_none());
    assert_eq!(hb.1.open(1, b"hdr", &mut sealed), Some(&b"heartbeat"[..]));
    // A frame bigger than one record crosses intact.
    let f = Frame::DeviceState(vec![7; super::MAX_RECORD * 2 + 5]);
    let mut bytes = Vec::new();
    encode_frame(&f, 0, 0, 0, &mut bytes).unwrap();
    let w = std::thread::spawn(move || {
        ca.write_all(&bytes).unwrap();
        ca
    });
    let mut d = Decoder::new();
    let mut buf = vec![0u8; 1000];
    let got = loop {
        if let Some(g) = d.next_frame().unwrap() {
            break g;
        }
        let n = cb.read(&mut buf).unwrap();
        assert!(n > 0);
        d.push(&buf[..n]);
    };
    assert_eq!(got.frame, f);
    let mut ca = w.join().unwrap();
    cb.write_all(b"back").unwrap();
    let mut four = [0u8; 4];
    ca.read_exact(&mut four).unwrap();
    assert_eq!(&four, b"back");
}

#[test]
fn no_key_on_either_side_is_unauthenticated_and_plain() {
    let (a, b) = pair(None, None);
    let ((mut ca, sa), (mut cb, sb)) = (a.unwrap(), b.unwrap());
    assert!(!sa.authenticated && !sb.authenticated);
    assert!(sa.heartbeat.is_none());
    assert_eq!(sa.pair_id, sb.pair_id);
    ca.write_all(b"TNDM").unwrap();
    let mut four = [0u8; 4];
    cb.read_exact(&mut four).unwrap();
    assert_eq!(&four, b"TNDM", "no records: the bytes go as they are");
}

#[test]
fn a_different_key_fails_on_both_sides() {
    let (a, b) = pair(Some(key(1)), Some(key(2)));
    for e in [err(a), err(b)] {
        assert!(matches!(e, AuthError::Failed), "{e:?}");
        assert!(e.to_string().starts_with("authentication failed"), "{e}");
    }
}

#[test]
fn a_key_on_one_side_only_is_refused_on_both() {
    let (a, b) = pair(Some(key(1)), None);
    assert!(matches!(err(a), AuthError::PeerHasNoKey));
    assert!(matches!(err(b), AuthError::WeHaveNoKey));
    let (a, b) = pair(None, Some(key(1)));
    assert!(matches!(err(a), AuthError::WeHaveNoKey));
    let e = err(b);
    assert!(e.to_string().starts_with("authentication failed"), "{e}");
}

#[test]
fn nonces_differ_per_connection() {
    let (a1, _) = pair(None, None);
    let (a2, _) = pair(None, None);
    assert_ne!(a1.unwrap().1.pair_id, a2.unwrap().1.pair_id);
}

#[test]
fn an_older_peer_or_garbage_is_refused_clearly() {
    let (x, mut y) = UnixStream::pair().unwrap();
    let mut hello = Vec::new();
    encode_frame(&Frame::Heartbeat { timestamp_ms: 1 }, 0, 0, 0, &mut hello).unwrap();
    hello.resize(64, 0);
    y.write_all(&hello).unwrap();
    let e = err(handshake(
        Box::new(x),
        Some(&key(1)),
        Side::Responder,
        Purpose::Ft,
        T,
    ));
    assert!(matches!(e, AuthError::OldPeer), "{e:?}");
    let (x, mut y) = UnixStream::pair().unwrap();
    y.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n")
        .unwrap();
    assert!(matches!(
        err(handshake(
            Box::new(x),
            None,
            Side::Responder,
            Purpose::Ft,
            T
        )),
        AuthError::NotTandem
    ));
    drop(y);
    // A reflected handshake (our own message back) claims our side.
    let (x, y) = UnixStream::pair().unwrap();
    let t =
        std::thread::spawn(move || handshake(Box::new(y), None, Side::Initiator, Purpose::Ft, T));
    let e = err(handshake(
        Box::new(x),
        None,
        Side::Initiator,
        Purpose::Ft,
        T,
    ));
    assert!(matches!(e, AuthError::BadHandshake(_)), "{e:?}");
    let _ = t.join();
}

#[test]
fn a_silent_or_vanishing_peer_times_out_or_closes() {
    let (x, _y) = UnixStream::pair().unwrap();
    let e = err(handshake(
        Box::new(x),
        None,
        Side::Initiator,
        Purpose::Ft,
        Duration::from_millis(50),
    ));
    assert!(matches!(e, AuthError::Timeout { .. }), "{e:?}");
    let (x, y) = UnixStream::pair().unwrap();
    drop(y);
    let e = err(handshake(
        Box::new(x),
        None,
        Side::Initiator,
        Purpose::Ft,
        T,
    ));
    assert!(
        matches!(e, AuthError::PeerClosed | AuthError::Io { .. }),
        "{e:?}"
    );
}

#[test]
fn handshake_messages_round_trip_and_reject_edits() {
    let h = AuthHello {
        keyed: true,
        side: Side::Responder,
        purpose: Purpose::Migration,
        nonce: [9; 32],
    };
    let b = h.encode();
    assert_eq!(AuthHello::decode(&b).unwrap(), h);
    for at in 0..MSG_LEN {
        let mut m = b;
        m[at] ^= 0x10;
        assert!(AuthHello::decode(&m).is_err(), "byte {at}");
    }
    assert!(AuthHello::decode(&b[..10]).is_err());
}

#[test]
fn migration_streams_take_the_same_key_and_handshake() {
    let (a, b) = pair_for(
        Some(key(1)),
        Purpose::Migration,
        Some(key(1)),
        Purpose::Migration,
    );
    assert!(a.unwrap().1.authenticated && b.unwrap().1.authenticated);
    let (a, b) = pair_for(
        Some(key(1)),
        Purpose::Migration,
        Some(key(2)),
        Purpose::Migration,
    );
    assert!(matches!(err(a), AuthError::Failed));
    assert!(matches!(err(b), AuthError::Failed));
}

#[test]
fn a_stream_for_another_purpose_is_refused_on_both_sides() {
    // A migration source pointed at an FT backup's listener, and an FT primary at a migration
    // destination: each side names both purposes, keyed or not.
    for k in [None, Some(key(1))] {
        let (a, b) = pair_for(k.clone(), Purpose::Migration, k.clone(), Purpose::Ft);
        let (a, b) = (err(a), err(b));
        assert!(
            matches!(
                a,
                AuthError::WrongPurpose {
                    ours: Purpose::Migration,
                    theirs: Purpose::Ft
                }
            ),
            "{a:?}"
        );
        assert!(
            b.to_string()
                .contains("opens a live migration but this side expects an FT"),
            "{b}"
        );
        let (a, _) = pair_for(k.clone(), Purpose::Ft, k, Purpose::Migration);
        assert!(matches!(err(a), AuthError::WrongPurpose { .. }));
    }
}

/// What a Tandem of the HMAC-only release sends: version 1, byte 7 reserved, CRC over it.
fn version_1_hello(keyed: bool) -> [u8; MSG_LEN] {
    let mut b = AuthHello {
        keyed,
        side: Side::Initiator,
        purpose: Purpose::Ft,
        nonce: [4; 32],
    }
    .encode();
    b[4] = 1;
    b[7] = 0;
    let crc = crc32fast::hash(&b[..40]);
    b[40..].copy_from_slice(&crc.to_le_bytes());
    b
}

#[test]
fn a_peer_with_the_unencrypted_handshake_version_is_refused_clearly() {
    for keyed in [false, true] {
        let (x, mut y) = UnixStream::pair().unwrap();
        y.write_all(&version_1_hello(keyed)).unwrap();
        let k = keyed.then(|| key(1));
        let e = err(handshake(
            Box::new(x),
            k.as_ref(),
            Side::Responder,
            Purpose::Ft,
            T,
        ));
        assert!(matches!(e, AuthError::Version { theirs: 1 }), "{e:?}");
        let text = e.to_string();
        assert!(
            text.contains("version 1") && text.contains("encrypts"),
            "{text}"
        );
        // What the old peer reads from us is a version-2 hello (it refuses that itself).
        let mut ours = [0u8; MSG_LEN];
        y.read_exact(&mut ours).unwrap();
        assert_eq!(ours[4], 2);
    }
}

/// Random edits and random bytes never panic the handshake decoder, and whatever it accepts
/// re-encodes to the same bytes (the stable stand-in for the `auth_handshake` fuzz target).
#[test]
fn handshake_decoder_mutation_loop() {
    let clean = AuthHello {
        keyed: true,
        side: Side::Initiator,
        purpose: Purpose::Ft,
        nonce: [0x33; 32],
    }
    .encode();
    let mut rng = Rng::new(0x0ddc_0ffe_e15e_a5e5);
    for iter in 0..5000 {
        let mut b = clean.to_vec();
        match iter % 3 {
            0 => {
                let bit = rng.below(b.len() * 8);
                b[bit / 8] ^= 1 << (bit % 8);
                assert!(
                    AuthHello::decode(&b).is_err(),
                    "iteration {iter}: bit {bit}"
                );
            }
            1 => b.truncate(rng.below(MSG_LEN)),
            _ => b = (0..rng.below(60)).map(|_| rng.byte()).collect(),
        }
        if let Ok(h) = AuthHello::decode(&b) {
            assert_eq!(&h.encode()[..], &b[..], "iteration {iter}");
        }
    }
}

// Records.

fn sealed(key: [u8; 32], pieces: &[&[u8]]) -> Vec<Vec<u8>> {
    let mut s = Sealer::new(key);
    pieces
        .iter()
        .map(|p| {
            let mut out = Vec::new();
            s.seal(p, &mut out).unwrap();
            out
        })
        .collect()
}

/// Opens `bytes` whole with `push`/`next_record`, and again read from a stream with
/// `fill`/`read_into` (the connection's way): both must agree on the data or on failing.
fn open_all(key: [u8; 32], bytes: &[u8]) -> Result<Vec<Vec<u8>>, RecordError> {
    let whole: Result<Vec<Vec<u8>>, RecordError> = (|| {
        let mut o = Opener::new(key);
        o.push(bytes);
        let mut out = Vec::new();
        while let Some(r) = o.next_record()? {
            out.push(r);
        }
        o.finish()?;
        Ok(out)
    })();
    let streamed: Result<Vec<u8>, RecordError> = (|| {
        let mut o = Opener::new(key);
        let mut src = bytes;
        let mut data = Vec::new();
        let mut buf = [0u8; 37];
        loop {
            match o.read_into(&mut buf)? {
                0 if o.fill(&mut src).map_err(|_| RecordError::Poisoned)? == 0 => break,
                n => data.extend_from_slice(&buf[..n]),
            }
        }
        o.finish()?;
        Ok(data)
    })();
    match (&whole, &streamed) {
        (Ok(w), Ok(s)) => assert_eq!(&w.concat(), s, "the two ways disagree"),
        (Err(_), Err(_)) => {}
        _ => panic!("the two ways disagree: {whole:?} / {streamed:?}"),
    }
    whole
}

const K: [u8; 32] = [3; 32];

#[test]
fn records_round_trip_in_any_pieces() {
    let recs = sealed(K, &[b"one", b"two", &[5; 300]]);
    let all: Vec<u8> = recs.concat();
    for step in [1, 7, 64, all.len()] {
        let mut o = Opener::new(K);
        let mut got = Vec::new();
        for c in all.chunks(step) {
            o.push(c);
            while let Some(r) = o.next_record().unwrap() {
                got.push(r);
            }
        }
        assert_eq!(o.finish(), Ok(()));
        assert_eq!(got, vec![b"one".to_vec(), b"two".to_vec(), vec![5; 300]]);
    }
}

#[test]
fn records_hide_their_data() {
    let text = b"tandem-guest: ready; the guest's memory and console text".repeat(20);
    let recs = sealed(K, &[&text, &text]);
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r.len(), 4 + text.len() + TAG_LEN);
        assert!(
            !r.windows(8).any(|w| text.windows(8).any(|t| t == w)),
            "record {i} shows 8 bytes of its data"
        );
    }
    // The same data as records 0 and 1: other bytes (the counter is the nonce).
    assert_ne!(recs[0][4..], recs[1][4..]);
}

#[test]
fn records_change_key_every_epoch_and_open_across_the_boundary() {
    use super::crypto::{epoch_key, AeadKey};
    let first = RECORDS_PER_KEY - 2;
    let mut s = Sealer::starting_at(K, first);
    let mut wire = Vec::new();
    for i in 0..4u8 {
        s.seal(&[i; 100], &mut wire).unwrap();
    }
    let mut o = Opener::starting_at(K, first);
    o.push(&wire);
    for i in 0..4u8 {
        assert_eq!(o.next_record().unwrap(), Some(vec![i; 100]), "record {i}");
    }
    // The third record (the first of epoch 1) does not open under epoch 0's key: the key changed.
    let rec = 4 + 100 + TAG_LEN;
    let mut third = wire[2 * rec..3 * rec].to_vec();
    let (len, rest) = third.split_at_mut(4);
    let secret = ring::hkdf::Prk::new_less_safe(ring::hkdf::HKDF_SHA256, &K);
    let old = AeadKey::new(&epoch_key(&secret, 0));
    assert!(old.open(RECORDS_PER_KEY, len, rest).is_none());
    let mut third = wire[2 * rec..3 * rec].to_vec();
    let (len, rest) = third.split_at_mut(4);
    let new = AeadKey::new(&epoch_key(&secret, 1));
    assert_eq!(
        new.open(RECORDS_PER_KEY, len, rest),
        Some(&mut [2u8; 100][..])
    );
}

#[test]
fn the_counter_never_wraps() {
    let mut s = Sealer::starting_at(K, u64::MAX - 2);
    let mut out = Vec::new();
    s.seal(b"second to last", &mut out).unwrap();
    s.seal(b"last", &mut out).unwrap();
    let before = out.clone();
    assert_eq!(s.seal(b"one more", &mut out), Err(RecordError::Exhausted));
    assert_eq!(out, before, "nothing sealed once exhausted");
    // Nor does data that would need more numbers than are left go out in part.
    let mut s = Sealer::starting_at(K, u64::MAX - 2);
    let mut partial = Vec::new();
    assert_eq!(
        s.seal(&vec![1; MAX_RECORD * 3], &mut partial),
        Err(RecordError::Exhausted)
    );
    assert!(partial.is_empty());
    let mut o = Opener::starting_at(K, u64::MAX - 2);
    o.push(&before);
    assert_eq!(
        o.next_record().unwrap().as_deref(),
        Some(&b"second to last"[..])
    );
    assert_eq!(o.next_record().unwrap().as_deref(), Some(&b"last"[..]));
    // An opener at the last number refuses whatever comes.
    o.push(&sealed(K, &[b"x"]).concat());
    assert_eq!(o.next_record(), Err(RecordError::Exhausted));
}

#[test]
fn the_opener_reads_from_a_stream_in_place_and_never_past_a_record() {
    let recs = sealed(K, &[b"first record", b"second"]);
    let mut src = std::io::Cursor::new(recs.concat());
    let mut o = Opener::new(K);
    let mut got = Vec::new();
    let mut out = [0u8; 5];
    // Small reads hand the data out in pieces, the record's bytes read once.
    while got.len() < 12 {
        let n = o.read_into(&mut out).unwrap();
        if n == 0 {
            assert!(o.fill(&mut src).unwrap() > 0, "stream ended early");
        }
        got.extend_from_slice(&out[..n]);
    }
    assert_eq!(got, b"first record");
    assert_eq!(src.position() as usize, recs[0].len(), "read past record 0");
    let mut out = [0u8; 64];
    let n = loop {
        match o.read_into(&mut out).unwrap() {
            0 => assert!(o.fill(&mut src).unwrap() > 0),
            n => break n,
        }
    };
    assert_eq!(&out[..n], b"second");
    assert_eq!(o.fill(&mut src).unwrap(), 0, "end of stream");
    assert_eq!(o.finish(), Ok(()));
    assert_eq!(o.buffered(), 0);
}

#[test]
fn every_altered_byte_fails() {
    let rec = sealed(K, &[b"checkpoint bytes"]).concat();
    for at in 0..rec.len() {
        let mut b = rec.clone();
        b[at] ^= 1;
        let e = open_all(K, &b).unwrap_err();
        assert!(
            matches!(
                e,
                RecordError::BadMac { .. }
                    | RecordError::BadLength { .. }
                    | RecordError::Truncated { .. }
            ),
            "byte {at}: {e:?}"
        );
        // A changed length or content never yields data.
    }
}

#[test]
fn replayed_and_reordered_records_fail() {
    let r = sealed(K, &[b"a", b"b", b"c"]);
    let replay = [r[0].clone(), r[1].clone(), r[1].clone()].concat();
    assert_eq!(
        open_all(K, &replay),
        Err(RecordError::BadMac { record: 2 }),
        "a record sent twice"
    );
    let reorder = [r[0].clone(), r[2].clone(), r[1].clone()].concat();
    assert_eq!(
        open_all(K, &reorder),
        Err(RecordError::BadMac { record: 1 })
    );
    let dropped = [r[0].clone(), r[2].clone()].concat();
    assert_eq!(
        open_all(K, &dropped),
        Err(RecordError::BadMac { record: 1 })
    );
}

#[test]
fn a_cut_tag_is_truncation_and_a_wrong_key_fails() {
    let rec = sealed(K, &[b"abc"]).concat();
    let cut = &rec[..rec.len() - 5];
    assert!(matches!(
        open_all(K, cut),
        Err(RecordError::Truncated { record: 0, .. })
    ));
    assert_eq!(
        open_all([4; 32], &rec),
        Err(RecordError::BadMac { record: 0 })
    );
}

#[test]
fn hostile_lengths_are_refused_before_buffering() {
    let mut o = Opener::new(K);
    o.push(&u32::MAX.to_le_bytes());
    assert!(matches!(
        o.next_record(),
        Err(RecordError::BadLength { .. })
    ));
    assert_eq!(o.next_record(), Err(RecordError::Poisoned));
    let mut o = Opener::new(K);
    o.push(&0u32.to_le_bytes());
    assert!(matches!(
        o.next_record(),
        Err(RecordError::BadLength { len: 0, .. })
    ));
}

/// Connects an initiator and a responder through a man in the middle that passes the responder's
/// bytes as they are and the initiator's through `edit(offset, byte)`; returns both ends after
/// the handshake (keyed with `k`).
fn through_mitm(
    k: u8,
    edit: impl FnMut(usize, u8) -> u8 + Send + 'static,
) -> (Box<dyn Connection>, Box<dyn Connection>) {
    let (x, mid_a) = UnixStream::pair().unwrap();
    let (mid_b, y) = UnixStream::pair().unwrap();
    let (mut ra, mut wb) = (mid_a.try_clone().unwrap(), mid_b.try_clone().unwrap());
    let mut edit = edit;
    std::thread::spawn(move || {
        let mut at = 0usize;
        let mut buf = [0u8; 4096];
        loop {
            let n = match ra.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            for (i, b) in buf[..n].iter_mut().enumerate() {
                *b = edit(at + i, *b);
            }
            at += n;
            if wb.write_all(&buf[..n]).is_err() {
                return;
            }
        }
    });
    let (mut rb, mut wa) = (mid_b, mid_a);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut rb, &mut wa);
    });
    let t = std::thread::spawn(move || {
        handshake(Box::new(y), Some(&key(k)), Side::Responder, Purpose::Ft, T)
    });
    let (ca, _) = handshake(Box::new(x), Some(&key(k)), Side::Initiator, Purpose::Ft, T).unwrap();
    let (cb, _) = t.join().unwrap().unwrap();
    (ca, cb)
}

/// Where the initiator's records start: after its handshake message and key confirmation.
const RECORDS_AT: usize = MSG_LEN + CONFIRM_LEN;

fn expect_auth_failure(cb: &mut Box<dyn Connection>) {
    let mut buf = [0u8; 100];
    let e = cb.read(&mut buf).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    assert!(e.to_string().contains("authentication failed"), "{e}");
    // The stream stays failed.
    assert!(cb.read(&mut buf).is_err());
}

/// A flipped byte in transit: the receiver's read fails with "authentication failed" and the
/// decoder above it never sees the frame.
#[test]
fn a_flipped_byte_in_transit_fails_the_read() {
    let (mut ca, mut cb) = through_mitm(5, |at, b| if at == RECORDS_AT + 10 { b ^ 1 } else { b });
    ca.write_all(&[0x42; 100]).unwrap();
    expect_auth_failure(&mut cb);
}

/// What the man in the middle sees of a frame: no byte run of it.
#[test]
fn the_wire_shows_no_plaintext() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let (mut ca, mut cb) = through_mitm(7, move |_, b| {
        s2.lock().unwrap().push(b);
        b
    });
    let text = b"guest console: tandem-guest: ready".repeat(100);
    ca.write_all(&text).unwrap();
    let mut got = vec![0u8; text.len()];
    cb.read_exact(&mut got).unwrap();
    assert_eq!(got, text);
    let wire = seen.lock().unwrap().clone();
    assert!(wire.len() > text.len());
    assert!(
        !wire.windows(8).any(|w| text.windows(8).any(|t| t == w)),
        "the wire shows plaintext"
    );
}

/// A stream recorded from an earlier connection with the same pair key, replayed into a new
/// one: the new connection's nonces give it other keys, so the first replayed record fails.
#[test]
fn a_stream_recorded_from_another_connection_fails() {
    let recorded = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let rec = recorded.clone();
    let (mut ca, mut cb) = through_mitm(6, move |at, b| {
        if at >= RECORDS_AT {
            rec.lock().unwrap().push(b);
        }
        b
    });
    ca.write_all(b"ack checkpoint 7").unwrap();
    let mut got = [0u8; 16];
    cb.read_exact(&mut got).unwrap();
    let old = recorded.lock().unwrap().clone();
    assert!(!old.is_empty());
    let (mut ca, mut cb) = through_mitm(6, move |at, b| {
        if at >= RECORDS_AT {
            old.get(at - RECORDS_AT).copied().unwrap_or(b)
        } else {
            b
        }
    });
    ca.write_all(b"ack checkpoint 7").unwrap();
    expect_auth_failure(&mut cb);
}

#[test]
fn key_files_are_checked_like_ssh_keys() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("ft-auth-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, len: usize, mode: u32| {
        let p = dir.join(name);
        std::fs::write(&p, vec![0xa5; len]).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    };
    let good = write("good", 32, 0o600);
    assert!(PairKey::load(&good).is_ok());
    assert!(PairKey::load(&write("ro", 64, 0o400)).is_ok());
    let e = PairKey::load(&write("open", 32, 0o644)).unwrap_err();
    assert!(matches!(e, AuthError::KeyPermissions { mode: 0o644, .. }));
    assert!(e.to_string().contains("chmod 600"), "{e}");
    assert!(matches!(
        PairKey::load(&write("group", 32, 0o640)),
        Err(AuthError::KeyPermissions { .. })
    ));
    assert!(matches!(
        PairKey::load(&write("short", 31, 0o600)),
        Err(AuthError::KeyTooShort { len: 31, .. })
    ));
    assert!(matches!(
        PairKey::load(&write("long", MAX_KEY_LEN + 1, 0o600)),
        Err(AuthError::KeyTooLong { .. })
    ));
    assert!(matches!(
        PairKey::load(&dir),
        Err(AuthError::KeyNotAFile { .. })
    ));
    let e = PairKey::load(&dir.join("missing")).unwrap_err();
    assert!(matches!(e, AuthError::KeyFile { .. }) && e.is_key_error());
    assert_eq!(format!("{:?}", key(1)), "PairKey(32 bytes)");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Random edits never panic and never yield data that was not sealed; every bit flip fails.
#[test]
fn bounded_mutation_loop() {
    let pieces: Vec<Vec<u8>> = (0..5).map(|i| vec![i as u8; 10 + i * 40]).collect();
    let refs: Vec<&[u8]> = pieces.iter().map(|p| p.as_slice()).collect();
    let clean = sealed(K, &refs).concat();
    let kinds = [EditKind::FlipBit, EditKind::Overwrite, EditKind::Garbage];
    mutation_loop(
        &clean,
        0x1234_5678_9abc_def1,
        2000,
        &kinds,
        |iter, edit, b, _| match edit {
            Edit::FlipBit(bit) => {
                assert!(open_all(K, b).is_err(), "iteration {iter}: bit {bit}");
            }
            Edit::Overwrite(_) => {
                if let Ok(got) = open_all(K, b) {
                    assert_eq!(got, pieces, "iteration {iter}");
                }
            }
            Edit::Garbage(_) | Edit::Truncate(_) => {
                let mut o = Opener::new(K);
                o.push(b);
                let _ = o.next_record();
                let _ = o.finish();
            }
        },
    );
}

#[test]
fn a_keyless_listener_must_be_local_or_say_insecure() {
    let ep = |s: &str| s.parse::<crate::transport::Endpoint>().unwrap();
    for local in ["tcp:127.0.0.1:7600", "unix:/run/t.sock"] {
        assert!(check_listener(&ep(local), false, false).is_ok(), "{local}");
    }
    let open = ep("tcp:10.99.0.2:7600");
    let e = check_listener(&open, false, false).unwrap_err();
    assert!(matches!(e, AuthError::InsecureListen { .. }));
    let text = e.to_string();
    assert!(
        text.contains("tcp:10.99.0.2:7600") && text.contains("\"insecure\": true"),
        "{text}"
    );
    assert!(check_listener(&open, true, false).is_ok(), "keyed");
    assert!(check_listener(&open, false, true).is_ok(), "insecure");
    assert!(check_listener(&ep("tcp:0.0.0.0:7600"), false, false).is_err());
}
