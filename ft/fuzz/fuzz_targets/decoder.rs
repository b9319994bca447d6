//! Arbitrary bytes, fed in arbitrary pieces, must never panic the decoder, and whatever it does
//! accept must re-encode to bytes that decode to the same frame.
#![no_main]

use ft::frame::Decoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the piece size so that the incremental paths get covered too.
    let Some((&piece, bytes)) = data.split_first() else {
        return;
    };
    let piece = usize::from(piece).max(1);
    let mut d = Decoder::with_max_payload(1 << 20);
    for chunk in bytes.chunks(piece) {
        d.push(chunk);
        loop {
            match d.next_frame() {
                Ok(Some(f)) => {
                    let mut again = Vec::new();
                    f.encode(&mut again).expect("a decoded frame re-encodes");
                    let mut d2 = Decoder::new();
                    d2.push(&again);
                    assert_eq!(d2.next_frame().ok().flatten().as_ref(), Some(&f));
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    let _ = d.finish();
});
