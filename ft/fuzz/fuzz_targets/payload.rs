//! Payload parsers behind a valid header and checksum: random bytes rarely get past the CRC, so
//! this target builds the header itself (first input byte = frame type) and fuzzes what follows.
#![no_main]

use ft::frame::{Decoder, FRAME_VERSION, HEADER_LEN, MAGIC};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&frame_type, payload)) = data.split_first() else {
        return;
    };
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
        let mut d2 = Decoder::new();
        d2.push(&again);
        assert_eq!(d2.next_frame().ok().flatten().as_ref(), Some(&f));
    }
});
