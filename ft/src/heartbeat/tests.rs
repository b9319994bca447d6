//! Heartbeat tests on loopback. Timing assertions use ranges with wide margins: a loaded 2-core
//! CI box may delay a thread by tens of milliseconds, so nothing here depends on tight timing.

use super::*;
use crate::status::Role;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

const PAIR: u64 = 0xfeed_0001;
const INTERVAL: Duration = Duration::from_millis(50);
/// Twenty intervals: "alive throughout" must hold while a loaded host (load average 10 on two
/// cores) stalls the sender for hundreds of milliseconds.
const TIMEOUT: Duration = Duration::from_secs(1);

fn hb() -> Heartbeat {
    Heartbeat {
        pair_id: PAIR,
        generation: 3,
        role: Role::Primary,
        seq: 7,
        sent_unix_ms: 1_700_000_000_000,
    }
}

fn receiver(detector: &FailureDetector) -> HeartbeatReceiver {
    HeartbeatReceiver::start("127.0.0.1:0", PAIR, 3, detector.clone()).expect("bind receiver")
}

fn sender_to(rx: &HeartbeatReceiver) -> HeartbeatSender {
    let peer = rx.local_addr().to_string();
    HeartbeatSender::start("127.0.0.1:0", &peer, PAIR, Role::Primary, 3, INTERVAL)
        .expect("start sender")
}

/// Polls `cond` until it holds or 5 s pass.
fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

#[test]
fn datagram_round_trips() {
    let b = hb().encode();
    assert_eq!(Heartbeat::decode(&b), Ok(hb()));
}

#[test]
fn datagram_rejects_everything_else() {
    let good = hb().encode();
    assert_eq!(
        Heartbeat::decode(&good[..43]),
        Err(DatagramError::BadLength(43))
    );
    assert_eq!(Heartbeat::decode(&[]), Err(DatagramError::BadLength(0)));
    let mut long = good.to_vec();
    long.push(0);
    assert_eq!(Heartbeat::decode(&long), Err(DatagramError::BadLength(45)));
    let mut b = good;
    b[0] = b'X';
    assert_eq!(Heartbeat::decode(&b), Err(DatagramError::BadMagic));
    let mut b = good;
    b[4] = 2;
    assert_eq!(
        Heartbeat::decode(&b),
        Err(DatagramError::UnsupportedVersion(2))
    );
    let mut b = good;
    b[20] ^= 1;
    assert_eq!(Heartbeat::decode(&b), Err(DatagramError::BadChecksum));
    // Field errors with a valid checksum: re-sign after tampering.
    for (at, v) in [(5usize, 0u8), (5, 9), (6, 1), (7, 0x80)] {
        let mut b = good;
        b[at] = v;
        let crc = crc32fast::hash(&b[..40]);
        b[40..44].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            Heartbeat::decode(&b),
            Err(DatagramError::Malformed),
            "byte {at}={v}"
        );
    }
}

#[test]
fn bad_addresses_are_clear_errors() {
    for bad in ["", "127.0.0.1", "no-port-here", "127.0.0.1:99999"] {
        let e = HeartbeatReceiver::start(bad, PAIR, 0, FailureDetector::new(TIMEOUT))
            .err()
            .expect("must fail");
        assert!(
            matches!(e, HeartbeatError::InvalidAddress { .. }),
            "{bad}: {e}"
        );
    }
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let e = HeartbeatReceiver::start(&addr, PAIR, 0, FailureDetector::new(TIMEOUT))
        .err()
        .expect("port in use");
    assert!(matches!(e, HeartbeatError::Bind { .. }), "{e}");
}

#[test]
fn silent_peer_fails_one_timeout_after_arming() {
    let d = FailureDetector::new(TIMEOUT);
    let t0 = Instant::now();
    let v = d.wait_for_failure(t0 + Duration::from_secs(10));
    let took = t0.elapsed();
    assert!(
        matches!(v, Verdict::Failed { silent_for } if silent_for >= TIMEOUT),
        "{v:?}"
    );
    assert!(took >= TIMEOUT && took < TIMEOUT * 4, "{took:?}");
    assert!(d.is_failed());
    d.rearm();
    assert!(!d.is_failed());
}

#[test]
fn close_wakes_waiters() {
    let d = FailureDetector::new(Duration::from_secs(60));
    let d2 = d.clone();
    let t =
        std::thread::spawn(move || d2.wait_for_failure(Instant::now() + Duration::from_secs(60)));
    std::thread::sleep(Duration::from_millis(50));
    d.close();
    assert_eq!(t.join().unwrap(), Verdict::Closed);
}

#[test]
fn heartbeats_keep_the_peer_alive_and_silence_fails_it() {
    let d = FailureDetector::new(TIMEOUT);
    let rx = receiver(&d);
    let tx = sender_to(&rx);
    // Three timeouts' worth of heartbeats: alive throughout.
    let v = d.wait_for_failure(Instant::now() + TIMEOUT * 3);
    assert_eq!(v, Verdict::Alive);
    assert!(d.last_heard(Path::Udp).is_some());
    assert!(rx.stats().accepted >= 5, "{:?}", rx.stats());
    assert!(tx.sent() >= 5);

    tx.stop();
    let stopped = Instant::now();
    let v = d.wait_for_failure(stopped + Duration::from_secs(10));
    let took = stopped.elapsed();
    assert!(
        matches!(v, Verdict::Failed { silent_for } if silent_for >= TIMEOUT),
        "{v:?}"
    );
    // The last datagram left at most one interval before stop: failure cannot come earlier than
    // timeout - interval after stopping (minus scheduling slack), and must come well within 4x.
    let earliest = TIMEOUT - INTERVAL - Duration::from_millis(20);
    assert!(
        took >= earliest && took < TIMEOUT * 4,
        "failed after {took:?}"
    );
}

#[test]
fn channel_hook_alone_keeps_the_peer_alive() {
    let d = FailureDetector::new(TIMEOUT);
    let rx = receiver(&d);
    let tx = sender_to(&rx);
    assert!(eventually(|| d.last_heard(Path::Udp).is_some()));
    // The second path goes down; the channel still carries frames.
    tx.stop();
    let hook = d.channel_hook();
    let feeder = std::thread::spawn(move || {
        let end = Instant::now() + TIMEOUT * 3;
        while Instant::now() < end {
            hook.frame_received();
            std::thread::sleep(INTERVAL);
        }
    });
    let v = d.wait_for_failure(Instant::now() + TIMEOUT * 2);
    assert_eq!(v, Verdict::Alive);
    let udp_age = d
        .last_heard(Path::Udp)
        .map(|t| t.elapsed())
        .unwrap_or_default();
    assert!(
        udp_age >= TIMEOUT,
        "udp silent for {udp_age:?}, channel kept it alive"
    );
    feeder.join().unwrap();
    // Now both paths are down.
    let v = d.wait_for_failure(Instant::now() + Duration::from_secs(10));
    assert!(matches!(v, Verdict::Failed { .. }), "{v:?}");
}

#[test]
fn garbage_foreign_and_stale_datagrams_are_ignored_and_counted() {
    let d = FailureDetector::new(Duration::from_secs(60));
    let rx = receiver(&d);
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = rx.local_addr();
    let mut corrupt = hb().encode();
    corrupt[30] ^= 0xff;
    let foreign = Heartbeat {
        pair_id: PAIR + 1,
        ..hb()
    };
    let stale = Heartbeat {
        generation: 2,
        ..hb()
    };
    for d in [
        &b"hello"[..],
        &[0u8; 44][..],
        &corrupt[..],
        &[0xffu8; 1500][..],
    ] {
        s.send_to(d, to).unwrap();
    }
    s.send_to(&foreign.encode(), to).unwrap();
    s.send_to(&stale.encode(), to).unwrap();
    assert!(
        eventually(|| {
            let st = rx.stats();
            st.malformed == 4 && st.foreign_pair == 1 && st.stale_generation == 1
        }),
        "{:?}",
        rx.stats()
    );
    assert_eq!(rx.stats().accepted, 0);
    assert!(d.last_heard(Path::Udp).is_none());
    // A valid one still gets through afterwards.
    s.send_to(&hb().encode(), to).unwrap();
    assert!(eventually(|| rx.stats().accepted == 1));
    assert!(d.last_heard(Path::Udp).is_some());
    // After moving to generation 4, generation-3 heartbeats are stale.
    rx.set_min_generation(4);
    s.send_to(&hb().encode(), to).unwrap();
    assert!(eventually(|| rx.stats().stale_generation == 2));
}

#[test]
fn two_pairs_on_one_host_do_not_mix() {
    let d1 = FailureDetector::new(TIMEOUT);
    let d2 = FailureDetector::new(TIMEOUT);
    let rx1 = HeartbeatReceiver::start("127.0.0.1:0", 1, 0, d1.clone()).unwrap();
    let rx2 = HeartbeatReceiver::start("127.0.0.1:0", 2, 0, d2.clone()).unwrap();
    // Pair 2's sender is misconfigured to pair 1's port: pair 1 must not count it.
    let _tx = HeartbeatSender::start(
        "127.0.0.1:0",
        &rx1.local_addr().to_string(),
        2,
        Role::Backup,
        0,
        INTERVAL,
    )
    .unwrap();
    assert!(eventually(|| rx1.stats().foreign_pair >= 3));
    assert_eq!(rx1.stats().accepted, 0);
    assert_eq!(rx2.stats().accepted, 0);
    assert!(d1.last_heard(Path::Udp).is_none());
}

#[test]
fn sealed_datagrams_open_only_under_their_key_and_hide_their_fields() {
    let k = crate::auth::DatagramKey([1; 32]);
    let other = crate::auth::DatagramKey([2; 32]);
    let b = hb().encode_sealed(&k);
    assert_eq!(b.len(), SEALED_LEN);
    assert_eq!(Heartbeat::decode_with(&b, Some(&k)), Ok(hb()));
    // Nothing but magic, version and sequence number is readable: not the pair id, the
    // generation or the clock.
    for field in [PAIR.to_le_bytes(), 1_700_000_000_000u64.to_le_bytes()] {
        assert!(!b.windows(8).any(|w| w == field), "{b:?}");
    }
    assert_eq!(
        Heartbeat::decode_with(&b, Some(&other)),
        Err(DatagramError::BadTag)
    );
    // A plain heartbeat where a key is in force, and a sealed one where none is.
    assert_eq!(
        Heartbeat::decode_with(&hb().encode(), Some(&k)),
        Err(DatagramError::BadTag)
    );
    assert!(Heartbeat::decode_with(&b, None).is_err());
    // The readable, HMAC-tagged version 2 of an older Tandem is refused.
    let mut v2 = b;
    v2[4] = 2;
    assert_eq!(
        Heartbeat::decode_with(&v2, Some(&k)),
        Err(DatagramError::UnsupportedVersion(2))
    );
    for at in 0..SEALED_LEN {
        let mut m = b;
        m[at] ^= 0x04;
        assert!(
            Heartbeat::decode_with(&m, Some(&k)).is_err(),
            "byte {at} flipped"
        );
    }
    assert_eq!(
        Heartbeat::decode_with(&b[..SEALED_LEN - 1], Some(&k)),
        Err(DatagramError::BadLength(SEALED_LEN - 1))
    );
    // The same heartbeat under another sequence number is other bytes (a fresh nonce).
    let later = Heartbeat { seq: 8, ..hb() }.encode_sealed(&k);
    assert_ne!(b[16..], later[16..]);
}

/// Random edits of sealed datagrams and random bytes never panic the keyed decoder and never
/// open (the stable stand-in for the `auth_handshake` fuzz target's datagram half).
#[test]
fn keyed_decoder_mutation_loop() {
    let k = crate::auth::DatagramKey([9; 32]);
    let clean = hb().encode_sealed(&k);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..3000 {
        let mut d = clean.to_vec();
        match i % 3 {
            0 => {
                let bit = (next() % (SEALED_LEN as u64 * 8)) as usize;
                d[bit / 8] ^= 1 << (bit % 8);
            }
            1 => d.truncate((next() % SEALED_LEN as u64) as usize),
            _ => d = (0..next() % 100).map(|_| next() as u8).collect(),
        }
        assert!(
            Heartbeat::decode_with(&d, Some(&k)).is_err(),
            "iteration {i}"
        );
    }
}

#[test]
fn a_keyed_receiver_takes_only_sealed_fresh_heartbeats() {
    let k = crate::auth::DatagramKey([7; 32]);
    let d = FailureDetector::new(Duration::from_secs(60));
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let rx = HeartbeatReceiver::start_on(sock, PAIR, 0, d.clone(), Some(k.clone())).unwrap();
    let to = rx.local_addr();
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    // Forged (plain, or sealed with another key): not a sign of life.
    s.send_to(&hb().encode(), to).unwrap();
    let forged = hb().encode_sealed(&crate::auth::DatagramKey([8; 32]));
    s.send_to(&forged, to).unwrap();
    assert!(eventually(|| rx.stats().bad_tag == 2), "{:?}", rx.stats());
    assert!(d.last_heard(Path::Udp).is_none());
    // The real one, then the same again (a replay) and an older one.
    let fresh = hb().encode_sealed(&k);
    s.send_to(&fresh, to).unwrap();
    assert!(eventually(|| rx.stats().accepted == 1));
    s.send_to(&fresh, to).unwrap();
    let older = Heartbeat { seq: 3, ..hb() }.encode_sealed(&k);
    s.send_to(&older, to).unwrap();
    assert!(eventually(|| rx.stats().replayed == 2), "{:?}", rx.stats());
    assert_eq!(rx.stats().accepted, 1);
    // A keyed sender gets through.
    let tx = HeartbeatSender::start_keyed(
        "127.0.0.1:0".parse().unwrap(),
        to,
        PAIR,
        Role::Primary,
        3,
        INTERVAL,
        Some(k),
    )
    .unwrap();
    // Its sequence numbers start at 0, below the 7 accepted above: they count as replays
    // until they pass it, then are accepted.
    assert!(eventually(|| rx.stats().accepted >= 3), "{:?}", rx.stats());
    tx.stop();
}

#[test]
fn udp_endpoints_parse() {
    assert_eq!(
        parse_udp_endpoint("udp:127.0.0.1:7700").unwrap(),
        "127.0.0.1:7700".parse().unwrap()
    );
    for bad in ["127.0.0.1:7700", "tcp:127.0.0.1:1", "udp:nope", "udp:"] {
        assert!(parse_udp_endpoint(bad).is_err(), "{bad}");
    }
}
