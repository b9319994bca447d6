//! Any bytes through the state file decoder, framed as found and re-framed with a valid header
//! (so the checksum does not stop the input before postcard sees it): errors, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::state::format;

fuzz_target!(|data: &[u8]| {
    let _ = format::decode(data);
    let _ = format::decode(&format::frame(data));
});
