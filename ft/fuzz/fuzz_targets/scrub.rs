//! The replica scrub's frames (ScrubDigest 17, ScrubResult 18) behind a valid header and
//! checksum: the first input byte picks the type, the rest is the payload. Nothing may panic or
//! allocate for a count the payload cannot hold, and what decodes must re-encode to the same
//! bytes (every unused field is checked to be zero, so there is one encoding per frame).
#![no_main]

use ft::frame::{Decoder, FRAME_VERSION, HEADER_LEN, MAGIC};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    let frame_type = if pick & 1 == 0 { 17u8 } else { 18u8 };
    let mut b = Vec::with_capacity(HEADER_LEN + payload.len());
    b.extend_from_slice(&MAGIC);
    b.extend_from_slice(&FRAME_VERSION.to_le_bytes());
    b.push(frame_type);
    b.push(0);
    b.extend_from_slice(&[0; 16]);
    b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&b);
    h.update(payload);
    b.extend_from_slice(&h.finalize().to_le_bytes());
    b.extend_from_slice(payload);
    let mut d = Decoder::new();
    d.push(&b);
    if let Ok(Some(f)) = d.next_frame() {
        let mut again = Vec::new();
        f.encode(&mut again).expect("a decoded frame re-encodes");
        assert_eq!(again, b, "one encoding per scrub frame");
    }
});
