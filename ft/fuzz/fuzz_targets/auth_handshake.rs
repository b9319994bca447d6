//! Arbitrary bytes as a peer's handshake message or as a heartbeat datagram (plain or under a
//! key) must never panic, and what parses must re-encode to the same bytes.
#![no_main]

use ft::auth::AuthHello;
use ft::heartbeat::Heartbeat;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = AuthHello::decode(data) {
        assert_eq!(&h.encode()[..], data);
    }
    if let Ok(hb) = Heartbeat::decode(data) {
        assert_eq!(&hb.encode()[..], data);
    }
    let _ = Heartbeat::decode_with(data, None);
});
