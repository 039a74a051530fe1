//! Arbitrary bytes as a plugin's `http_response` frame through the host's response path
//! (`toru_host::fuzz::response`): the protocol's checks, the limits on response heads, and the
//! header rules into an `http::Response`. Nothing may panic, and whatever comes out keeps the
//! rules: no cookie named like the host's session, `nosniff`, no hop-by-hop headers.
//!
//! ```text
//! cd toru-plugin-api/fuzz && cargo +nightly fuzz run response
//! ```
//!
//! The first input byte says whether the connection carries streams (protocol 2).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| run(data));

fn run(data: &[u8]) {
    let Some((&control, frame)) = data.split_first() else {
        return;
    };
    let Some(response) = toru_host::fuzz::response(frame, control & 1 == 1) else {
        return;
    };
    let headers = response.headers();
    assert_eq!(headers["x-content-type-options"], "nosniff");
    for hop in [
        "connection",
        "transfer-encoding",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
    ] {
        assert!(headers.get(hop).is_none(), "{hop} passed");
    }
    for cookie in headers.get_all("set-cookie") {
        // Values may hold any byte but control characters; compare them as text all the same.
        let text = String::from_utf8_lossy(cookie.as_bytes()).to_ascii_lowercase();
        let pair = text.split(';').next().unwrap_or_default();
        let (name, _) = pair.split_once('=').expect("a named cookie");
        let name = name
            .trim()
            .trim_start_matches("__host-")
            .trim_start_matches("__secure-");
        assert_ne!(name, "toru_session", "{text}");
    }
}
