//! Any method, path and body through the API's request parser: a request or a RouteError, never
//! a panic, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::api::routes::{parse_request, ROUTES};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    // Half the inputs hit a real route (so bodies reach the JSON and config checks), half a path
    // made of the input itself.
    let (method, path, body) = if sel & 1 == 0 {
        let r = &ROUTES[usize::from(sel >> 1) % ROUTES.len()];
        (r.method.as_str().to_string(), format!("/api/v1/{}", r.name), rest)
    } else {
        let split = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let path = String::from_utf8_lossy(&rest[..split]).into_owned();
        let method = if sel & 2 == 0 { "GET" } else { "PUT" };
        (method.to_string(), path, rest.get(split + 1..).unwrap_or_default())
    };
    let _ = parse_request(&method, &path, body, 1 << 40);
});
