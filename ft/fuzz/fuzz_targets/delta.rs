//! Page deltas: arbitrary bytes applied as a delta either fail and leave the page untouched, or
//! succeed; and the delta between two pages built from the input always round-trips.
#![no_main]

use ft::frame::{apply_delta, encode_delta, PAGE_SIZE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut page = [0x5au8; PAGE_SIZE];
    let before = page;
    if apply_delta(&mut page, data).is_err() {
        assert_eq!(page, before, "a rejected delta changed the page");
    }
    // The input as edits (offset u16, byte) to a page: encode, apply, compare.
    let mut new = before;
    for e in data.chunks_exact(3) {
        new[usize::from(u16::from_le_bytes([e[0], e[1]])) % PAGE_SIZE] = e[2];
    }
    let mut d = Vec::new();
    if encode_delta(&before, &new, PAGE_SIZE, &mut d) {
        let mut got = before;
        apply_delta(&mut got, &d).expect("an encoded delta applies");
        assert_eq!(got, new);
    }
});
