//! Decoder tests: every error, round trips in arbitrary pieces, and a bounded random
//! mutation loop (the stable stand-in for the cargo-fuzz target in `ft/fuzz`).

use super::*;
use crate::vm::VmIdentity;
use tandem_testkit::{mutation_loop, Edit, Rng, ALL_EDITS};

fn samples() -> Vec<Frame> {
    let mut pages = PageBatch::new();
    let mut p = [0u8; PAGE_SIZE];
    p[0] = 0xaa;
    p[PAGE_SIZE - 1] = 0x55;
    pages.push_data(3, &p);
    pages.push_zero(4);
    pages.push_zero(5);
    vec![
        Frame::Hello(Hello::new(
            StreamPurpose::Migration,
            VmIdentity {
                memory_size: 1 << 30,
                vcpu_count: 2,
                config: r#"{"memory":{"size_mib":1024}}"#.into(),
                disks: Vec::new(),
            },
        )),
        Frame::MemoryPages(pages),
        Frame::DeviceState(vec![1, 2, 3]),
        Frame::VcpuState {
            index: 1,
            data: vec![9; 100],
        },
        Frame::EndOfRound { pages: 3 },
        Frame::Commit {
            vcpus: 2,
            pages: 7,
            info: None,
        },
        Frame::Commit {
            vcpus: 1,
            pages: 0,
            info: Some(CommitInfo {
                pause_us: 1234,
                guest_paused: true,
            }),
        },
        Frame::Ack { seq: 42 },
        Frame::Handover {
            generation: 7,
            token: 0x0123_4567_89ab_cdef,
            identity: crate::arbiter::Identity::parse("00112233445566778899aabbccddeeff").unwrap(),
        },
        Frame::Fence { generation: 3 },
        Frame::Abort {
            reason: "disk full".into(),
        },
        Frame::Heartbeat { timestamp_ms: 1234 },
        Frame::EndConfirmed,
        Frame::DeviceState(Vec::new()),
        Frame::Extras {
            offset: 4,
            total: 10,
            data: vec![7; 6],
        },
        Frame::Extras {
            offset: 0,
            total: 0,
            data: Vec::new(),
        },
        Frame::Hello(Hello::fault_tolerance(
            VmIdentity {
                memory_size: 1 << 30,
                vcpu_count: 1,
                config: "{}".into(),
                disks: vec![
                    crate::disk::DiskInfo {
                        index: 0,
                        size: 8 << 20,
                    },
                    crate::disk::DiskInfo {
                        index: 2,
                        size: 512,
                    },
                ],
            },
            r#"{"disk_mode":"replicated"}"#.into(),
        )),
        Frame::DiskBlocks(disk_blocks()),
        Frame::DiskBlocks(DiskBatch::new(7)),
        Frame::ScrubDigest(scrub_digest()),
        Frame::ScrubDigest(ScrubDigest::default()),
        Frame::ScrubResult(scrub_result()),
        Frame::ScrubResult(ScrubResult {
            pass: 0,
            outcome: ScrubOutcome::Stale,
            backup_epoch: 41,
            checked: 0,
            bytes: 0,
            repaired: 0,
            mismatches: Vec::new(),
        }),
    ]
}

fn scrub_digest() -> ScrubDigest {
    let mem = ScrubRegion::Memory {
        first_pfn: 32,
        pages: 2,
    };
    let disk = ScrubRegion::Disk {
        index: 1,
        offset: 4096,
        len: 1024,
    };
    ScrubDigest {
        pass: 7,
        entries: vec![
            ScrubEntry {
                region: mem,
                hash: 0x0123_4567_89ab_cdef,
            },
            ScrubEntry {
                region: disk,
                hash: 1,
            },
            ScrubEntry {
                region: ScrubRegion::Devices,
                hash: 2,
            },
            ScrubEntry {
                region: ScrubRegion::Vcpu { index: 3 },
                hash: 3,
            },
        ],
        repairs: vec![
            ScrubRepair {
                region: mem,
                data: vec![0x5a; 2 * PAGE_SIZE],
            },
            ScrubRepair {
                region: disk,
                data: vec![0xa5; 1024],
            },
        ],
    }
}

fn scrub_result() -> ScrubResult {
    ScrubResult {
        pass: 7,
        outcome: ScrubOutcome::Compared,
        backup_epoch: 42,
        checked: 4,
        bytes: 2 * PAGE_SIZE as u64 + 1024,
        repaired: 2,
        mismatches: vec![ScrubRegion::Devices, ScrubRegion::Vcpu { index: 3 }],
    }
}

fn disk_blocks() -> DiskBatch {
    let mut b = DiskBatch::new(1);
    b.push_zero(0, 3);
    b.push_data(3, &[0x5a; 4096]);
    b.push_data(4, &[0xa5; 512]);
    b
}

fn stream(frames: &[Frame]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        let flags = if i % 2 == 0 { FLAG_ACK_REQUESTED } else { 0 };
        encode_frame(f, i as u64, 7, flags, &mut out).unwrap();
    }
    out
}

/// Feeds `bytes` in pieces of the given sizes (cycled) and collects frames until the first error.
fn decode_in_pieces(bytes: &[u8], sizes: &[usize]) -> (Vec<DecodedFrame>, Result<(), FrameError>) {
    let mut d = Decoder::new();
    let mut out = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < bytes.len() {
        let n = sizes[i % sizes.len()].max(1).min(bytes.len() - at);
        i += 1;
        d.push(&bytes[at..at + n]);
        at += n;
        loop {
            match d.next_frame() {
                Ok(Some(f)) => out.push(f),
                Ok(None) => break,
                Err(e) => return (out, Err(e)),
            }
        }
    }
    let r = d.finish();
    (out, r)
}

fn one(bytes: &[u8]) -> Result<Option<DecodedFrame>, FrameError> {
    let mut d = Decoder::new();
    d.push(bytes);
    d.next_frame()
}

fn encoded(f: &Frame) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(f, 0, 0, 0, &mut out).unwrap();
    out
}

/// Rewrites a frame's checksum after a deliberate edit, so that the edit itself is what fails.
fn reseal(b: &mut [u8]) {
    let crc = header::checksum(&b[..HEADER_LEN], &b[HEADER_LEN..]);
    b[28..32].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn every_type_round_trips_in_any_pieces() {
    let frames = samples();
    let bytes = stream(&frames);
    for sizes in [&[usize::MAX][..], &[1], &[7, 3, 1000], &[31, 33]] {
        let (got, r) = decode_in_pieces(&bytes, sizes);
        assert_eq!(r, Ok(()));
        assert_eq!(
            got.iter().map(|f| f.frame.clone()).collect::<Vec<_>>(),
            frames
        );
        for (i, f) in got.iter().enumerate() {
            assert_eq!((f.seq, f.epoch), (i as u64, 7));
            assert_eq!(f.ack_requested(), i % 2 == 0);
        }
    }
}

#[test]
fn decoded_bytes_count_whole_frames_however_the_reads_were_cut() {
    let frames = samples();
    let sizes: Vec<u64> = frames.iter().map(|f| encoded(f).len() as u64).collect();
    let bytes = stream(&frames);
    // All of it in one read: each frame still counts its own bytes when it comes out.
    let mut d = Decoder::new();
    d.push(&bytes);
    let mut total = 0;
    for size in &sizes {
        assert!(d.next_frame().unwrap().is_some());
        total += size;
        assert_eq!(d.decoded_bytes(), total);
    }
    // A frame cut in two counts nothing until it is whole.
    let mut d = Decoder::new();
    d.push(&bytes[..sizes[0] as usize - 1]);
    assert_eq!(d.next_frame().unwrap(), None);
    assert_eq!(d.decoded_bytes(), 0);
    d.push(&bytes[sizes[0] as usize - 1..sizes[0] as usize]);
    assert!(d.next_frame().unwrap().is_some());
    assert_eq!(d.decoded_bytes(), sizes[0]);
}

#[test]
fn bad_magic_is_reported_from_the_first_wrong_byte() {
    assert_eq!(
        one(b"G"),
        Err(FrameError::BadMagic {
            found: b"G".to_vec()
        })
    );
    assert_eq!(
        one(b"GET / HTTP/1.1\r\n").map(|_| ()),
        Err(FrameError::BadMagic {
            found: b"GET ".to_vec()
        })
    );
    assert_eq!(one(b"TN"), Ok(None));
}

#[test]
fn unknown_version_type_and_flags() {
    let mut b = encoded(&Frame::Ack { seq: 1 });
    b[4] = 2;
    assert_eq!(
        one(&b),
        Err(FrameError::UnsupportedVersion {
            found: 2,
            supported: FRAME_VERSION
        })
    );
    let mut b = encoded(&Frame::Ack { seq: 1 });
    b[6] = 0xee;
    assert_eq!(one(&b), Err(FrameError::UnknownFrameType(0xee)));
    let mut b = encoded(&Frame::Ack { seq: 1 });
    b[7] = 0x80;
    assert_eq!(one(&b), Err(FrameError::UnknownFlags(0x80)));
    assert_eq!(
        encode_frame(&Frame::Ack { seq: 1 }, 0, 0, 0x02, &mut Vec::new()),
        Err(FrameError::UnknownFlags(0x02))
    );
}

#[test]
fn oversized_payload_is_refused_from_the_header_alone() {
    let mut b = encoded(&Frame::DeviceState(vec![0; 100]));
    b[24..28].copy_from_slice(&(MAX_PAYLOAD + 1).to_le_bytes());
    // Only the header is given: the limit must not wait for (or allocate) the payload.
    assert_eq!(
        one(&b[..HEADER_LEN]),
        Err(FrameError::PayloadTooLarge {
            len: u64::from(MAX_PAYLOAD) + 1,
            max: MAX_PAYLOAD
        })
    );
    let mut d = Decoder::with_max_payload(50);
    d.push(&encoded(&Frame::DeviceState(vec![0; 51])));
    assert!(matches!(
        d.next_frame(),
        Err(FrameError::PayloadTooLarge { len: 51, max: 50 })
    ));
    let mut out = vec![1, 2];
    let r = encode_frame(
        &Frame::DeviceState(vec![0; MAX_PAYLOAD as usize + 1]),
        0,
        0,
        0,
        &mut out,
    );
    assert!(matches!(r, Err(FrameError::PayloadTooLarge { .. })));
    assert_eq!(
        out,
        vec![1, 2],
        "a failed encode leaves the buffer as it was"
    );
}

#[test]
fn checksum_covers_header_and_payload() {
    let base = encoded(&Frame::DeviceState(vec![5; 64]));
    for at in [8, 16, HEADER_LEN + 10] {
        let mut b = base.clone();
        b[at] ^= 1;
        assert!(
            matches!(one(&b), Err(FrameError::BadChecksum { .. })),
            "byte {at}"
        );
    }
}

#[test]
fn truncation_is_reported_at_end_of_stream() {
    let b = encoded(&Frame::DeviceState(vec![5; 64]));
    let mut d = Decoder::new();
    d.push(&b[..10]);
    assert_eq!(d.next_frame(), Ok(None));
    assert_eq!(
        d.finish(),
        Err(FrameError::Truncated {
            have: 10,
            need: HEADER_LEN
        })
    );
    let mut d = Decoder::new();
    d.push(&b[..HEADER_LEN + 5]);
    assert_eq!(d.next_frame(), Ok(None));
    assert_eq!(
        d.finish(),
        Err(FrameError::Truncated {
            have: HEADER_LEN + 5,
            need: HEADER_LEN + 64
        })
    );
}

#[test]
fn malformed_payloads_are_named() {
    let malformed = |b: &[u8]| match one(b) {
        Err(FrameError::Malformed { reason, .. }) => reason,
        other => panic!("{other:?}"),
    };
    // A payload too short for its type.
    let mut b = encoded(&Frame::Ack { seq: 1 });
    b.truncate(HEADER_LEN + 4);
    b[24..28].copy_from_slice(&4u32.to_le_bytes());
    reseal(&mut b);
    assert_eq!(malformed(&b), "payload ends early");
    // Trailing bytes.
    let mut b = encoded(&Frame::Ack { seq: 1 });
    b.push(0);
    b[24..28].copy_from_slice(&9u32.to_le_bytes());
    reseal(&mut b);
    assert_eq!(malformed(&b), "trailing bytes after payload");
    // Hello: unknown purpose, empty version range, non-UTF-8 config.
    let hello = encoded(&samples()[0]);
    let mut b = hello.clone();
    b[HEADER_LEN + 4] = 9;
    reseal(&mut b);
    assert_eq!(malformed(&b), "unknown stream purpose");
    let mut b = hello.clone();
    let above = crate::PROTOCOL_VERSION + 1;
    b[HEADER_LEN..HEADER_LEN + 2].copy_from_slice(&above.to_le_bytes());
    reseal(&mut b);
    assert_eq!(malformed(&b), "version range is empty");
    let mut b = hello;
    let last = b.len() - 1;
    b[last] = 0xff;
    reseal(&mut b);
    assert_eq!(malformed(&b), "config is not UTF-8");
    // Pages: a zero run that wraps.
    let mut b = encoded(&samples()[1]);
    let run_pfn = b.len() - 12;
    b[run_pfn..run_pfn + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    reseal(&mut b);
    assert_eq!(malformed(&b), "zero run wraps around the page number space");
    // Hello's disk list (protocol 5): empty, cut, out of order, not whole sectors.
    let ft_hello = samples()
        .into_iter()
        .find(|f| matches!(f, Frame::Hello(h) if !h.identity.disks.is_empty()))
        .expect("an FT Hello with disks");
    let hello = encoded(&ft_hello);
    let list = hello.len() - 4 - 2 * 12;
    let with_list = |list_bytes: &[u8]| {
        let mut b = hello[..list].to_vec();
        b.extend_from_slice(list_bytes);
        let len = (b.len() - HEADER_LEN) as u32;
        b[24..28].copy_from_slice(&len.to_le_bytes());
        reseal(&mut b);
        b
    };
    let disk = |index: u32, size: u64| {
        let mut v = index.to_le_bytes().to_vec();
        v.extend_from_slice(&size.to_le_bytes());
        v
    };
    let list_of = |disks: &[Vec<u8>]| {
        let mut v = (disks.len() as u32).to_le_bytes().to_vec();
        disks.iter().for_each(|d| v.extend_from_slice(d));
        v
    };
    assert_eq!(
        malformed(&with_list(&0u32.to_le_bytes())),
        "empty disk list"
    );
    assert_eq!(malformed(&with_list(&[1, 0])), "disk list ends early");
    assert_eq!(
        malformed(&with_list(&list_of(&[disk(2, 512), disk(1, 512)]))),
        "disk indices not rising"
    );
    assert_eq!(
        malformed(&with_list(&list_of(&[disk(0, 100)]))),
        "disk size not a whole, non-zero number of sectors"
    );
    assert_eq!(
        malformed(&with_list(&list_of(&[disk(0, 0)]))),
        "disk size not a whole, non-zero number of sectors"
    );
    let mut huge = u32::MAX.to_le_bytes().to_vec();
    huge.extend_from_slice(&disk(0, 512));
    assert_eq!(
        malformed(&with_list(&huge)),
        "disk count larger than the payload can hold"
    );
    assert!(one(&with_list(&list_of(&[disk(0, 512), disk(3, 4096)]))).is_ok());
    // DiskBlocks: a zero run past any disk.
    let mut b = encoded(&Frame::DiskBlocks(disk_blocks()));
    let run = HEADER_LEN + 8 + 1;
    b[run..run + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    reseal(&mut b);
    assert_eq!(malformed(&b), "zero run past any disk");
}

#[test]
fn a_failed_decoder_stays_failed() {
    let mut d = Decoder::new();
    d.push(b"XXXX");
    assert!(matches!(d.next_frame(), Err(FrameError::BadMagic { .. })));
    d.push(&encoded(&Frame::Ack { seq: 1 }));
    assert_eq!(d.next_frame(), Err(FrameError::Poisoned));
    assert_eq!(d.finish(), Err(FrameError::Poisoned));
}

/// Every single-bit flip anywhere in a stream is caught (CRC-32 detects all of them), every
/// truncation is caught, and random garbage never panics; decoded frames re-encode identically.
#[test]
fn bounded_mutation_loop() {
    let frames = samples();
    let clean = stream(&frames);
    mutation_loop(
        &clean,
        0x9e37_79b9_7f4a_7c15,
        3000,
        &ALL_EDITS,
        |iter, edit, b, rng| {
            let sizes = [1 + rng.below(5000), 1 + rng.below(40), 1 + rng.below(300)];
            match edit {
                Edit::FlipBit(bit) => {
                    let (_, r) = decode_in_pieces(b, &sizes);
                    assert!(
                        r.is_err(),
                        "iteration {iter}: bit {bit} flipped went unnoticed"
                    );
                }
                Edit::Truncate(cut) => {
                    let (got, r) = decode_in_pieces(b, &sizes);
                    assert!(got.len() < frames.len(), "iteration {iter}");
                    let on_boundary = r.is_ok();
                    assert_eq!(
                        on_boundary,
                        stream(&frames[..got.len()]).len() == cut,
                        "iteration {iter}"
                    );
                }
                Edit::Overwrite(_) => check_decoded_reencode(b, &sizes),
                Edit::Garbage(_) => {
                    // Garbage behind a valid-looking header prefix, so that deeper checks get reached.
                    let mut g = clean[..HEADER_LEN].to_vec();
                    let len = b.len().min(200);
                    g.extend_from_slice(&b[..len]);
                    if rng.below(2) == 0 {
                        g[24..28].copy_from_slice(&((len as u32).to_le_bytes()));
                        reseal(&mut g);
                    }
                    check_decoded_reencode(&g, &sizes);
                }
            }
        },
    );
}

fn check_decoded_reencode(b: &[u8], sizes: &[usize]) {
    let (got, _) = decode_in_pieces(b, sizes);
    for f in got {
        let mut again = Vec::new();
        f.encode(&mut again).unwrap();
        assert_eq!(one(&again), Ok(Some(f)));
    }
}

#[test]
fn extras_chunk_past_its_total_is_malformed() {
    let mut out = Vec::new();
    let f = Frame::Extras {
        offset: 8,
        total: 9,
        data: vec![1, 2],
    };
    encode_frame(&f, 0, 1, 0, &mut out).unwrap();
    let mut d = Decoder::new();
    d.push(&out);
    assert!(matches!(
        d.next_frame(),
        Err(FrameError::Malformed {
            frame_type: FrameType::Extras,
            ..
        })
    ));
}

#[test]
fn commit_info_is_optional_and_checked() {
    let with = |paused| Frame::Commit {
        vcpus: 2,
        pages: 9,
        info: Some(CommitInfo {
            pause_us: 77,
            guest_paused: paused,
        }),
    };
    for f in [with(false), with(true)] {
        assert_eq!(one(&encoded(&f)).unwrap().unwrap().frame, f);
    }
    // A version-2 Commit (no info) still decodes.
    let v2 = Frame::Commit {
        vcpus: 2,
        pages: 9,
        info: None,
    };
    assert_eq!(encoded(&v2).len(), HEADER_LEN + 12);
    assert_eq!(one(&encoded(&v2)).unwrap().unwrap().frame, v2);
    let malformed = |b: &[u8]| match one(b) {
        Err(FrameError::Malformed {
            frame_type: FrameType::Commit,
            reason,
        }) => reason,
        other => panic!("{other:?}"),
    };
    // A flag this version does not know.
    let mut b = encoded(&with(true));
    let last = b.len() - 1;
    b[last] = 0x02;
    reseal(&mut b);
    assert_eq!(malformed(&b), "unknown Commit flags");
    // A tail cut short: neither 0 nor 9 bytes after `pages`.
    let mut b = encoded(&with(false));
    b.truncate(b.len() - 1);
    let len = (b.len() - HEADER_LEN) as u32;
    b[24..28].copy_from_slice(&len.to_le_bytes());
    reseal(&mut b);
    assert_eq!(malformed(&b), "payload ends early");
}

/// The scrub frames' decoders name what is wrong: unknown kinds, unused fields set, empty or
/// oversized regions, repairs of the wrong length or of a state blob, counts larger than the
/// payload, results that contradict themselves.
#[test]
fn scrub_frames_are_checked() {
    let malformed = |f: &Frame, edit: &dyn Fn(&mut Vec<u8>)| {
        let mut b = encoded(f);
        edit(&mut b);
        let len = (b.len() - HEADER_LEN) as u32;
        b[24..28].copy_from_slice(&len.to_le_bytes());
        reseal(&mut b);
        match one(&b) {
            Err(FrameError::Malformed { reason, .. }) => reason,
            other => panic!("{other:?}"),
        }
    };
    let digest = Frame::ScrubDigest(scrub_digest());
    // The first entry's region starts after pass (8) and count (4).
    let region = HEADER_LEN + 12;
    type Edit = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "unknown scrub region kind",
            Box::new(move |b| b[region] = 9),
        ),
        (
            "memory region with a disk index",
            Box::new(move |b| b[region + 1] = 1),
        ),
        (
            "memory region of 0 or too many pages",
            Box::new(move |b| b[region + 13..region + 17].copy_from_slice(&0u32.to_le_bytes())),
        ),
        (
            "memory region of 0 or too many pages",
            Box::new(move |b| {
                b[region + 13..region + 17].copy_from_slice(&(MAX_REGION_PAGES + 1).to_le_bytes())
            }),
        ),
        (
            "memory region wraps around the page number space",
            Box::new(move |b| b[region + 5..region + 13].copy_from_slice(&u64::MAX.to_le_bytes())),
        ),
        (
            "too many scrub entries",
            Box::new(|b| {
                b[HEADER_LEN + 8..HEADER_LEN + 12].copy_from_slice(&u32::MAX.to_le_bytes())
            }),
        ),
        (
            "payload ends early",
            Box::new(|b| {
                b[HEADER_LEN + 8..HEADER_LEN + 12].copy_from_slice(&1000u32.to_le_bytes())
            }),
        ),
        ("payload ends early", Box::new(|b| b.truncate(b.len() - 1))),
        ("trailing bytes after payload", Box::new(|b| b.push(0))),
    ];
    for (want, edit) in &cases {
        assert_eq!(malformed(&digest, &**edit), *want);
    }
    // A repair whose length is not its region's, and a repair of a state blob.
    let mut d = scrub_digest();
    d.repairs[1].data.pop();
    assert_eq!(
        malformed(&Frame::ScrubDigest(d), &|_| {}),
        "repair length differs from its region's"
    );
    let mut d = scrub_digest();
    d.repairs[0] = ScrubRepair {
        region: ScrubRegion::Devices,
        data: Vec::new(),
    };
    assert_eq!(
        malformed(&Frame::ScrubDigest(d), &|_| {}),
        "repair of a state region"
    );
    // A state region with unused fields set, and an empty disk region.
    let state_region = |r: ScrubRegion, at: usize, v: u8| {
        let d = ScrubDigest {
            pass: 0,
            entries: vec![ScrubEntry { region: r, hash: 0 }],
            repairs: Vec::new(),
        };
        malformed(&Frame::ScrubDigest(d), &move |b| b[region + at] = v)
    };
    assert_eq!(
        state_region(ScrubRegion::Devices, 1, 1),
        "state region with unused fields set"
    );
    assert_eq!(
        state_region(ScrubRegion::Vcpu { index: 0 }, 5, 1),
        "state region with unused fields set"
    );
    let disk = ScrubRegion::Disk {
        index: 0,
        offset: 0,
        len: 1,
    };
    assert_eq!(
        state_region(disk, 13, 0),
        "disk region of 0 or too many bytes"
    );
    // Results: an unknown outcome, a stale one that compared, more mismatches than checked.
    let result = Frame::ScrubResult(scrub_result());
    assert_eq!(
        malformed(&result, &|b| b[HEADER_LEN + 8] = 7),
        "unknown scrub outcome"
    );
    assert_eq!(
        malformed(&result, &|b| b[HEADER_LEN + 8] = 1),
        "a stale scrub result that compared something"
    );
    let mut r = scrub_result();
    r.checked = 1;
    assert_eq!(
        malformed(&Frame::ScrubResult(r), &|_| {}),
        "more mismatches than regions checked"
    );
}

#[test]
fn disk_payload_garbage_never_panics() {
    // Behind a valid header and CRC, so that every mutation reaches the DiskBlocks and Hello
    // disk-list parsers: whatever decodes must re-encode to the same frame.
    let mut rng = Rng::new(0x2545_f491_4f6c_dd1d);
    let ft_hello = samples()
        .into_iter()
        .find(|f| matches!(f, Frame::Hello(h) if !h.identity.disks.is_empty()))
        .expect("an FT Hello with disks");
    let bases = [
        encoded(&Frame::DiskBlocks(disk_blocks())),
        encoded(&ft_hello),
    ];
    for iter in 0..4000 {
        let base = &bases[iter % 2];
        let mut b = base.clone();
        match iter % 3 {
            0 => {
                for _ in 0..1 + rng.below(8) {
                    let at = HEADER_LEN + rng.below(b.len() - HEADER_LEN);
                    b[at] = rng.byte();
                }
            }
            1 => b.truncate(HEADER_LEN + rng.below(b.len() - HEADER_LEN)),
            _ => {
                b.truncate(HEADER_LEN);
                b.extend((0..rng.below(600)).map(|_| rng.byte()));
            }
        }
        let len = (b.len() - HEADER_LEN) as u32;
        b[24..28].copy_from_slice(&len.to_le_bytes());
        reseal(&mut b);
        check_decoded_reencode(&b, &[1 + rng.below(64), b.len()]);
    }
}

#[test]
fn scrub_payload_garbage_never_panics() {
    // The stable stand-in for the `scrub` fuzz target: behind a valid header and CRC, mutated,
    // cut and random ScrubDigest and ScrubResult payloads never panic, and whatever decodes
    // re-encodes to exactly the same bytes (every unused field must be zero).
    let mut rng = Rng::new(0x5eed_5c4b_0000_0017);
    let bases = [
        encoded(&Frame::ScrubDigest(scrub_digest())),
        encoded(&Frame::ScrubResult(scrub_result())),
    ];
    let mut decoded = 0;
    for iter in 0..4000 {
        let mut b = bases[iter % 2].clone();
        match iter % 3 {
            0 => {
                for _ in 0..1 + rng.below(4) {
                    let at = HEADER_LEN + rng.below(b.len() - HEADER_LEN);
                    b[at] = rng.byte();
                }
            }
            1 => b.truncate(HEADER_LEN + rng.below(b.len() - HEADER_LEN)),
            _ => {
                b.truncate(HEADER_LEN);
                b.extend((0..rng.below(200)).map(|_| rng.byte()));
            }
        }
        let len = (b.len() - HEADER_LEN) as u32;
        b[24..28].copy_from_slice(&len.to_le_bytes());
        reseal(&mut b);
        if let Ok(Some(f)) = one(&b) {
            decoded += 1;
            let mut again = Vec::new();
            f.encode(&mut again).unwrap();
            assert_eq!(again, b, "one encoding per scrub frame: {f:?}");
        }
    }
    assert!(decoded > 100, "only {decoded} mutations decoded");
}
