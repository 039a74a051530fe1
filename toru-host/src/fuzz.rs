//! The host's handling of a plugin's response, for the fuzz target in `toru-plugin-api/fuzz`
//! and the seeded test below. Not part of the API.

use bytes::Bytes;
use toru_plugin_api::{Frame, Payload};

use crate::body::PluginBody;
use crate::connection::{Checked, StreamLimits, check_response};

/// Runs one frame's bytes through what the host does with an `http_response`: the protocol's
/// checks, the limits on response heads, and the header rules into an `http::Response`. Returns
/// the response the client would get, or `None` when the frame is not an acceptable
/// `http_response`. Must never panic, whatever the bytes.
pub fn response(frame: &[u8], streams: bool) -> Option<http::Response<PluginBody>> {
    let frame = Frame::new(Bytes::copy_from_slice(frame));
    let message = frame.message().ok()?;
    let Payload::HttpResponse(r) = message.payload else {
        return None;
    };
    let limits = StreamLimits::default();
    let Checked::Head(head) = check_response(&frame, r, &limits, streams).ok()? else {
        return None;
    };
    let websocket = head.status == 101;
    let protected = ["toru_session".to_owned()];
    let csp = crate::headers::sandbox_policy(&[]);
    crate::host::client_response(head, None, websocket, &protected, &csp).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small generator with a fixed seed: the same inputs every run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn mutated_responses_never_panic_and_keep_the_rules() {
        let seeds = [
            r#"{"type":"http_response","request_id":1,"payload":{"status":200,"headers":[["content-type","text/html"],["set-cookie","toru_session=x"],["connection","close, x-a"],["x-a","1"]],"body":"hi"}}"#,
            r#"{"type":"http_response","request_id":1,"payload":{"status":101,"headers":[["sec-websocket-protocol","chat"]],"end_stream":false}}"#,
            r#"{"type":"http_response","request_id":1,"payload":{"status":204,"headers":[["content-length","12"],["Set-Cookie","__Host-Toru_Session=1"]],"end_stream":true}}"#,
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for seed in seeds {
            assert!(response(seed.as_bytes(), true).is_some(), "{seed}");
            for _ in 0..3000 {
                let mut bytes = seed.as_bytes().to_vec();
                for _ in 0..(rng.next() % 4 + 1) {
                    let at = (rng.next() as usize) % bytes.len();
                    match rng.next() % 3 {
                        0 => bytes[at] = rng.next() as u8,
                        1 => {
                            bytes.remove(at);
                        }
                        _ => bytes.insert(at, b"\"{}[],:0x\n\\"[(rng.next() % 10) as usize]),
                    }
                }
                if let Some(r) = response(&bytes, rng.next() & 1 == 0) {
                    for cookie in r.headers().get_all("set-cookie") {
                        let c = String::from_utf8_lossy(cookie.as_bytes()).to_ascii_lowercase();
                        let pair = c.split(';').next().unwrap_or_default();
                        let (name, _) = pair.split_once('=').expect("a named cookie");
                        let name = name
                            .trim()
                            .trim_start_matches("__host-")
                            .trim_start_matches("__secure-");
                        assert_ne!(name, "toru_session", "{c}");
                    }
                    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
                    assert!(r.headers().get("connection").is_none());
                    assert!(
                        r.headers().get("x-a").is_none() || !r.headers().contains_key("connection")
                    );
                }
            }
        }
    }

    #[test]
    fn a_head_with_tens_of_thousands_of_headers_is_refused_not_a_panic() {
        let headers: Vec<String> = (0..40_000).map(|i| format!(r#"["x-h","{i}"]"#)).collect();
        let frame = format!(
            r#"{{"type":"http_response","request_id":1,"payload":{{"status":200,"headers":[{}]}}}}"#,
            headers.join(",")
        );
        assert!(response(frame.as_bytes(), true).is_none());
    }
}
