//! Arbitrary bytes as a peer's handshake message or as a heartbeat datagram (plain, or sealed
//! under a key) must never panic, and what parses must re-encode to the same bytes; nothing the
//! fuzzer makes opens under the key (it cannot forge a tag).
#![no_main]

use ft::auth::{AuthHello, DatagramKey};
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
    let key = DatagramKey::from_bytes([0x42; 32]);
    assert!(Heartbeat::decode_with(data, Some(&key)).is_err());
});
