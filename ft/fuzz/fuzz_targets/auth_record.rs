//! Arbitrary bytes, fed in arbitrary pieces, must never panic the encrypted-record opener, and it
//! must never hand out data that was not sealed under its key: the fuzzer cannot forge a tag, so
//! anything opened must be a record the target itself sealed (the input's first part).
#![no_main]

use ft::auth::{Opener, Sealer};
use libfuzzer_sys::fuzz_target;

const KEY: [u8; 32] = [0x5a; 32];

fuzz_target!(|data: &[u8]| {
    let Some((&piece, rest)) = data.split_first() else {
        return;
    };
    let piece = usize::from(piece).max(1);
    // Half the input is sealed honestly, then the other half follows as raw (hostile) bytes.
    let (honest, hostile) = rest.split_at(rest.len() / 2);
    let mut stream = Vec::new();
    Sealer::new(KEY)
        .seal(honest, &mut stream)
        .expect("a fresh sealer has numbers left");
    stream.extend_from_slice(hostile);
    let mut o = Opener::new(KEY);
    let mut opened = Vec::new();
    for chunk in stream.chunks(piece) {
        o.push(chunk);
        loop {
            match o.next_record() {
                Ok(Some(r)) => opened.extend_from_slice(&r),
                Ok(None) => break,
                Err(_) => {
                    assert!(opened.len() <= honest.len());
                    return;
                }
            }
        }
    }
    let _ = o.finish();
    // Only the honest records open: the hostile tail never yields a byte.
    assert!(opened.len() <= honest.len(), "forged data was accepted");
    assert_eq!(&opened[..], &honest[..opened.len()]);
    // The same stream read the connection's way (straight into the buffer, in place) yields no
    // more than the honest data either.
    let mut o = Opener::new(KEY);
    let mut src = &stream[..];
    let mut buf = vec![0u8; piece];
    let mut read = Vec::new();
    loop {
        match o.read_into(&mut buf) {
            Ok(0) => match o.fill(&mut src) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            },
            Ok(n) => read.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    assert!(read.len() <= honest.len(), "forged data was read");
    assert_eq!(&read[..], &honest[..read.len()]);
});
