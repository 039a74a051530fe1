//! `POST /<id>/sha256`: the SHA-256 of the request body as lowercase hex, read as the body
//! streams in (the plugin gives credit as it reads, or a body over the window would stall).

use sha2::{Digest as _, Sha256};
use toru_plugin_api::protocol::VersionRange;

use super::host::{Plugin, Target, WINDOW};

fn hex_sha256(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

/// Bytes that do not repeat in any short period.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

async fn digest(plugin: &mut Plugin, t: &Target, body: &[u8], chunk: usize) -> String {
    let id = plugin
        .http_with_body("POST", &t.path("/sha256"), "", &[], body, chunk)
        .await;
    let res = plugin.response(id).await;
    assert_eq!(res.status, 200, "{res:?}");
    assert!(
        res.header("content-type")
            .is_some_and(|ct| ct.starts_with("text/plain")),
        "{res:?}"
    );
    String::from_utf8(res.body)
        .expect("a text digest")
        .trim()
        .to_owned()
}

pub(crate) async fn sha256_of_uploads(t: &Target) {
    let mut plugin = Plugin::ready(t).await;
    for (body, chunk) in [
        (Vec::new(), 1024),
        (b"abc".to_vec(), 1),
        (noise(3 * 1024 * 1024 + 7), 64 * 1024),
        (noise(100_000), 997),
    ] {
        assert_eq!(
            digest(&mut plugin, t, &body, chunk).await,
            hex_sha256(&body),
            "{} bytes in chunks of {chunk}",
            body.len()
        );
    }
}

/// Several windows' worth: the upload completes only if the plugin credits what it reads.
pub(crate) async fn sha256_credits_as_it_reads(t: &Target) {
    let mut plugin = Plugin::ready(t).await;
    let body = noise(4 * WINDOW);
    let id = plugin
        .http_with_body("POST", &t.path("/sha256"), "", &[], &body, 32 * 1024)
        .await;
    let res = plugin.response(id).await;
    assert_eq!(
        String::from_utf8(res.body).unwrap().trim(),
        hex_sha256(&body)
    );
    let credited = plugin.windows.lock().unwrap().credited.get(&id).copied();
    assert!(
        credited.unwrap_or(0) >= (3 * WINDOW) as u64,
        "credit given: {credited:?}"
    );
}

/// A version 1 host sends the body inline (base64 for binary).
pub(crate) async fn sha256_on_protocol_1(t: &Target) {
    let mut plugin = Plugin::ready_offering(t, VersionRange { min: 1, max: 1 }).await;
    let body = noise(10_000);
    assert_eq!(digest(&mut plugin, t, &body, 1024).await, hex_sha256(&body));
}
