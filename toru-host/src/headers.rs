//! Header hygiene, both ways, for every caller of the library.
//!
//! To the plugin: names in lower case; the caller's credentials (`Cookie`, `Authorization`),
//! hop-by-hop headers and the names listed in `Connection` never reach it, nor the WebSocket
//! handshake's own headers (the host does the handshake).
//!
//! To the client: hop-by-hop headers dropped; `Content-Length` kept only from a protocol 2
//! plugin (the host frames protocol 1 bodies itself); a `Set-Cookie` that names or shadows a
//! protected cookie dropped; `X-Content-Type-Options: nosniff` and a
//! `Content-Security-Policy: sandbox ...` added, so a plugin's page cannot use the host's
//! session.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that belong to one connection (RFC 9110, section 7.6.1), plus the non-standard
/// ones proxies also drop.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The caller's credentials: a plugin never sees them.
const CREDENTIALS: &[&str] = &["cookie", "authorization"];

/// The WebSocket handshake's headers, which the host answers itself. (`sec-websocket-protocol`
/// is not among them: the plugin chooses the subprotocol.)
const WS_HANDSHAKE: &[&str] = &[
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-accept",
];

/// The sandbox every plugin response gets, before the tokens a plugin's metadata adds: scripts
/// run, but in an opaque origin, so they cannot read the host's pages or send its cookies.
pub(crate) const DEFAULT_SANDBOX: &str =
    "sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads";

/// A request header the protocol cannot carry.
#[derive(Debug)]
pub(crate) struct NotText(pub(crate) String);

/// Names listed in `Connection` headers: hop-by-hop for this message only.
fn connection_tokens<'a>(values: impl Iterator<Item = &'a [u8]>) -> Vec<String> {
    values
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

fn is_dropped_both_ways(name: &str, listed: &[String]) -> bool {
    HOP_BY_HOP.contains(&name) || WS_HANDSHAKE.contains(&name) || listed.iter().any(|t| t == name)
}

/// The headers a plugin gets, in the caller's order, names in lower case.
///
/// # Errors
/// A header whose value is not UTF-8 text (JSON carries only text).
pub(crate) fn to_plugin(headers: &HeaderMap) -> Result<Vec<(String, String)>, NotText> {
    let listed = connection_tokens(
        headers
            .get_all(header::CONNECTION)
            .iter()
            .map(HeaderValue::as_bytes),
    );
    let mut out = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        // `HeaderName`s are lower case already.
        let name = name.as_str();
        if CREDENTIALS.contains(&name) || is_dropped_both_ways(name, &listed) {
            continue;
        }
        let value = std::str::from_utf8(value.as_bytes()).map_err(|_| NotText(name.to_owned()))?;
        out.push((name.to_owned(), value.to_owned()));
    }
    Ok(out)
}

/// What the host adds to and removes from a plugin's response headers.
pub(crate) struct ResponsePolicy<'a> {
    /// Cookie names a plugin may not set.
    pub(crate) protected_cookies: &'a [String],
    /// The `Content-Security-Policy` the response gets.
    pub(crate) csp: &'a HeaderValue,
    /// Keep the plugin's `Content-Length` (protocol 2: the host checks the body against it).
    pub(crate) keep_length: bool,
    /// The response accepts a WebSocket (keeps `sec-websocket-protocol`).
    pub(crate) websocket: bool,
}

/// A plugin's response headers as a client may see them, and the body length the plugin
/// announced (when it was kept).
pub(crate) fn from_plugin(
    plugin: Vec<(String, String)>,
    policy: &ResponsePolicy<'_>,
) -> (HeaderMap, Option<u64>) {
    let listed = connection_tokens(
        plugin
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
            .map(|(_, v)| v.as_bytes()),
    );
    let mut out = HeaderMap::with_capacity(plugin.len() + 2);
    let mut length: Option<Result<u64, ()>> = None;
    for (name, value) in plugin {
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
            tracing::debug!(header = %name, "plugin sent an invalid header name; dropped");
            continue;
        };
        let lower = name.as_str();
        if is_dropped_both_ways(lower, &listed)
            || (lower == "sec-websocket-protocol" && !policy.websocket)
            || lower == "x-content-type-options"
        {
            continue;
        }
        if name == header::CONTENT_LENGTH {
            if policy.keep_length {
                // Several that agree are one; any disagreement, or a value that is not a
                // number, and the host frames the body itself.
                let parsed = value.trim().parse::<u64>().map_err(|_| ());
                length = Some(match (length, parsed) {
                    (None, p) => p,
                    (Some(Ok(a)), Ok(b)) if a == b => Ok(a),
                    _ => Err(()),
                });
            }
            continue;
        }
        if name == header::SET_COOKIE && shadows(&value, policy.protected_cookies) {
            tracing::warn!(
                "plugin tried to set a cookie named like one the host protects; dropped"
            );
            continue;
        }
        match HeaderValue::from_str(&value) {
            Ok(value) => {
                out.append(name, value);
            }
            Err(_) => {
                tracing::debug!(header = %name, "plugin sent an invalid header value; dropped")
            }
        }
    }
    let length = length.and_then(Result::ok);
    if let Some(len) = length {
        out.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    out.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Appended: a plugin's own policy still applies, and so does the sandbox (browsers
    // enforce every policy they are given).
    out.append(header::CONTENT_SECURITY_POLICY, policy.csp.clone());
    (out, length)
}

/// Whether a `Set-Cookie` value names a protected cookie, in any case and under any `__Host-`
/// or `__Secure-` prefix, or is nameless (a browser stores `Set-Cookie: toru_session` as a
/// cookie with an empty name whose value it then sends as `toru_session`).
pub(crate) fn shadows(set_cookie: &str, protected: &[String]) -> bool {
    if protected.is_empty() {
        return false;
    }
    let pair = set_cookie.split(';').next().unwrap_or("");
    let Some((name, _)) = pair.split_once('=') else {
        return true;
    };
    let mut name = name.trim_matches(|c: char| c.is_ascii_whitespace());
    if name.is_empty() {
        return true;
    }
    loop {
        let lower = name.to_ascii_lowercase();
        if lower.starts_with("__host-") {
            name = &name["__host-".len()..];
        } else if lower.starts_with("__secure-") {
            name = &name["__secure-".len()..];
        } else {
            break;
        }
    }
    protected.iter().any(|p| p.eq_ignore_ascii_case(name))
}

/// The `Content-Security-Policy` for a plugin's responses: the default sandbox and the tokens
/// its metadata adds.
pub(crate) fn sandbox_policy(extra: &[String]) -> HeaderValue {
    let mut policy = DEFAULT_SANDBOX.to_owned();
    for token in extra {
        if !policy.split(' ').any(|t| t == token) {
            policy.push(' ');
            policy.push_str(token);
        }
    }
    // Metadata tokens are checked against a fixed list of `allow-*` words.
    HeaderValue::from_str(&policy).unwrap_or_else(|_| HeaderValue::from_static(DEFAULT_SANDBOX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_hop_by_hop_and_listed_headers_never_reach_the_plugin() {
        let mut h = HeaderMap::new();
        h.insert("cookie", HeaderValue::from_static("toru_session=x"));
        h.insert("authorization", HeaderValue::from_static("Bearer s"));
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, X-Private"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
        h.insert("sec-websocket-key", HeaderValue::from_static("abc"));
        h.insert("sec-websocket-protocol", HeaderValue::from_static("chat"));
        h.insert("x-private", HeaderValue::from_static("hop"));
        h.insert("X-Custom", HeaderValue::from_static("kept"));
        h.insert("host", HeaderValue::from_static("127.0.0.1:3000"));
        let out = to_plugin(&h).unwrap();
        let names: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["sec-websocket-protocol", "x-custom", "host"],
            "{out:?}"
        );
        assert_eq!(out[1].1, "kept");
    }

    #[test]
    fn a_header_that_is_not_text_is_refused() {
        let mut h = HeaderMap::new();
        h.insert("x-bin", HeaderValue::from_bytes(b"\xff\xfe").unwrap());
        assert_eq!(to_plugin(&h).unwrap_err().0, "x-bin");
    }

    fn policy<'a>(csp: &'a HeaderValue, protected: &'a [String]) -> ResponsePolicy<'a> {
        ResponsePolicy {
            protected_cookies: protected,
            csp,
            keep_length: false,
            websocket: false,
        }
    }

    #[test]
    fn plugin_headers_lose_hop_by_hop_and_gain_nosniff_and_the_sandbox() {
        let csp = sandbox_policy(&["allow-same-origin".into()]);
        let (h, len) = from_plugin(
            vec![
                ("Content-Type".into(), "text/html".into()),
                ("set-cookie".into(), "a=1".into()),
                ("set-cookie".into(), "b=2".into()),
                ("connection".into(), "close, x-hop".into()),
                ("x-hop".into(), "1".into()),
                ("transfer-encoding".into(), "chunked".into()),
                ("content-length".into(), "999".into()),
                ("x-content-type-options".into(), "sniff-away".into()),
                (
                    "content-security-policy".into(),
                    "default-src 'self'".into(),
                ),
                ("sec-websocket-accept".into(), "x".into()),
                ("bad header".into(), "x".into()),
                ("x-bad-value".into(), "a\nb".into()),
            ],
            &policy(&csp, &[]),
        );
        assert_eq!(len, None);
        assert_eq!(h["content-type"], "text/html");
        assert_eq!(h.get_all("set-cookie").iter().count(), 2);
        assert_eq!(h["x-content-type-options"], "nosniff");
        let csps: Vec<_> = h.get_all("content-security-policy").iter().collect();
        assert_eq!(csps.len(), 2);
        assert_eq!(csps[0], "default-src 'self'");
        assert_eq!(
            csps[1],
            "sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads allow-same-origin"
        );
        for gone in [
            "connection",
            "x-hop",
            "transfer-encoding",
            "content-length",
            "sec-websocket-accept",
            "x-bad-value",
        ] {
            assert!(h.get(gone).is_none(), "{gone}");
        }
    }

    #[test]
    fn a_protocol_2_content_length_is_kept_when_it_is_one_number() {
        let csp = sandbox_policy(&[]);
        let mut p = policy(&csp, &[]);
        p.keep_length = true;
        for (values, expect) in [
            (vec!["12"], Some(12)),
            (vec!["12", "12"], Some(12)),
            (vec!["12", "13"], None),
            (vec!["-1"], None),
            (vec!["1e3"], None),
        ] {
            let headers = values
                .iter()
                .map(|v| ("content-length".to_owned(), (*v).to_owned()))
                .collect();
            let (h, len) = from_plugin(headers, &p);
            assert_eq!(len, expect, "{values:?}");
            assert_eq!(
                h.get("content-length")
                    .map(|v| v.to_str().unwrap().to_owned()),
                expect.map(|n| n.to_string())
            );
        }
    }

    #[test]
    fn cookies_that_name_or_shadow_a_protected_one_are_dropped() {
        let protected = vec!["toru_session".to_owned()];
        for bad in [
            "toru_session=evil",
            "TORU_SESSION=evil; Path=/",
            " toru_session =evil",
            "__Host-toru_session=evil; Secure; Path=/",
            "__secure-Toru_Session=evil",
            "__Host-__Secure-toru_session=x",
            "toru_session",
            "=toru_session",
        ] {
            assert!(shadows(bad, &protected), "{bad}");
        }
        for good in ["toru_sessions=1", "theme=dark; Path=/", "a=toru_session"] {
            assert!(!shadows(good, &protected), "{good}");
        }
        assert!(!shadows("toru_session=x", &[]));
    }
}
