//! The envelope's JSON form: field order, missing and extra fields, borrowing.

use std::borrow::Cow;

use super::*;
use crate::protocol::{Level, VersionRange};
use crate::testutil::{VARIANTS, variant_index};

fn parse(json: &str) -> Message<'_> {
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"))
}

fn parse_err(json: &str) -> String {
    match serde_json::from_str::<Message<'_>>(json) {
        Ok(m) => panic!("{json} decoded to {m:?}; expected an error"),
        Err(e) => e.to_string(),
    }
}

fn s(text: &str) -> CowStr<'_> {
    CowStr::borrowed(text)
}

/// One payload of every variant with the answers `type_name` and `is_reply` must give; the
/// match in [`every_variant_is_listed`] keeps it complete.
fn every_variant() -> Vec<(Payload<'static>, &'static str, bool)> {
    vec![
        (
            Payload::Init(Init {
                protocol: VersionRange { min: 1, max: 1 },
                instance_id: s("i"),
                plugin_id: s("p"),
                socket_path: s("/s"),
                log_path: s("/l"),
                settings: Default::default(),
            }),
            "init",
            false,
        ),
        (
            Payload::Ready(Ready {
                protocol_version: 1,
            }),
            "ready",
            true,
        ),
        (
            Payload::HttpRequest(HttpRequest {
                method: s("GET"),
                path: s("/p/"),
                query: s(""),
                headers: vec![],
                body: None,
                body_base64: None,
                end_stream: Some(true),
                upgrade: None,
            }),
            "http_request",
            false,
        ),
        (
            Payload::HttpResponse(HttpResponse {
                status: 200,
                headers: vec![(s("content-type"), s("text/plain"))],
                body: Some(s("ok")),
                body_base64: None,
                end_stream: None,
            }),
            "http_response",
            true,
        ),
        (Payload::Credit(Credit { bytes: 4096 }), "credit", false),
        (
            Payload::Settings(SettingsUpdate {
                settings: Default::default(),
            }),
            "settings",
            false,
        ),
        (
            Payload::WsClose(WsClose {
                code: 1001,
                reason: s("going away"),
            }),
            "ws_close",
            false,
        ),
        (Payload::GetBundle, "get_bundle", false),
        (Payload::Bundle(Bundle { script: s("x") }), "bundle", true),
        (Payload::Ping, "ping", false),
        (Payload::Pong, "pong", true),
        (Payload::Cancel, "cancel", false),
        (Payload::Shutdown, "shutdown", false),
        (Payload::Kv(KvRequest::Get { key: s("k") }), "kv", false),
        (Payload::KvResult(KvResult::default()), "kv_result", true),
        (
            Payload::Log(LogRecord {
                level: Level::Info,
                message: s("m"),
                error: None,
            }),
            "log",
            false,
        ),
        (
            Payload::Error(ErrorReply {
                code: s("internal"),
                message: s("m"),
            }),
            "error",
            true,
        ),
        (Payload::Unknown(s("frobnicate")), "frobnicate", false),
    ]
}

#[test]
fn every_variant_is_listed() {
    let mut seen = [false; VARIANTS];
    for (p, _, _) in every_variant() {
        seen[variant_index(&p)] = true;
    }
    assert!(seen.iter().all(|&s| s), "variants missing: {seen:?}");
}

#[test]
fn type_name_of_every_variant() {
    for (p, name, _) in every_variant() {
        assert_eq!(p.type_name(), name, "{p:?}");
    }
}

#[test]
fn is_reply_of_every_variant() {
    for (p, _, reply) in every_variant() {
        assert_eq!(p.is_reply(), reply, "{p:?}");
    }
}

#[test]
fn every_variant_round_trips_through_json() {
    for (p, name, _) in every_variant() {
        let sent = Message {
            timestamp: 42,
            request_id: Some(3),
            payload: p,
        };
        let json = serde_json::to_string(&sent).unwrap();
        assert!(
            json.starts_with(&format!(
                r#"{{"type":"{name}","timestamp":42,"request_id":3,"#
            )),
            "type must come first: {json}"
        );
        assert_eq!(parse(&json), sent);
    }
}

#[test]
fn unit_payloads_serialise_as_an_empty_object() {
    let json = serde_json::to_string(&Message {
        timestamp: 1,
        request_id: None,
        payload: Payload::Shutdown,
    })
    .unwrap();
    assert_eq!(
        json,
        r#"{"type":"shutdown","timestamp":1,"request_id":null,"payload":{}}"#
    );
}

#[test]
fn payload_before_type_still_decodes() {
    let msg = parse(
        r#"{"payload":{"method":"GET","path":"/a/b","headers":[["host","x"]]},"request_id":4,"timestamp":9,"type":"http_request"}"#,
    );
    assert_eq!(msg.timestamp, 9);
    assert_eq!(msg.request_id, Some(4));
    let Payload::HttpRequest(req) = msg.payload else {
        panic!("expected http_request, got {:?}", msg.payload);
    };
    assert_eq!(req.path, "/a/b");
    assert_eq!(req.query, "");
    // Decoded late, from the raw payload, but still borrowed from the input.
    assert!(matches!(req.path.0, Cow::Borrowed(_)));
    assert!(matches!(req.headers[0].1.0, Cow::Borrowed("x")));
}

#[test]
fn payload_before_type_is_still_checked() {
    let err = parse_err(r#"{"payload":{"method":"GET"},"type":"http_request"}"#);
    assert!(err.contains("path"), "{err}");
    assert_eq!(
        parse(r#"{"payload":{"x":1},"type":"ping"}"#).payload,
        Payload::Ping
    );
    assert_eq!(
        parse(r#"{"payload":[1,2],"type":"nope"}"#).payload,
        Payload::Unknown(s("nope"))
    );
}

#[test]
fn missing_payload_is_fine_for_unit_types() {
    for name in ["get_bundle", "ping", "pong", "cancel", "shutdown"] {
        let json = format!(r#"{{"type":"{name}","request_id":1}}"#);
        let msg = parse(&json);
        assert_eq!(msg.payload.type_name(), name);
        assert_eq!(msg.request_id, Some(1));
    }
    assert_eq!(
        parse(r#"{"type":"frobnicate"}"#).payload,
        Payload::Unknown(s("frobnicate"))
    );
}

#[test]
fn missing_payload_is_an_error_for_types_with_fields() {
    for name in [
        "init",
        "ready",
        "http_request",
        "http_response",
        "bundle",
        "kv",
        "kv_result",
        "log",
        "error",
    ] {
        let err = parse_err(&format!(r#"{{"type":"{name}","request_id":1}}"#));
        assert!(err.contains("missing field `payload`"), "{name}: {err}");
    }
}

#[test]
fn missing_type_is_an_error() {
    let err = parse_err(r#"{"timestamp":1,"payload":{}}"#);
    assert!(err.contains("missing field `type`"), "{err}");
}

#[test]
fn missing_timestamp_and_request_id_default() {
    let msg = parse(r#"{"type":"ping"}"#);
    assert_eq!(msg.timestamp, 0);
    assert_eq!(msg.request_id, None);
    assert_eq!(
        parse(r#"{"type":"log","request_id":null,"payload":{"level":"warn","message":"m"}}"#)
            .request_id,
        None
    );
}

#[test]
fn unknown_fields_are_ignored() {
    let msg = parse(
        r#"{"v":2,"type":"http_request","trace":{"id":[1,"x",null]},"timestamp":1,"request_id":2,
            "payload":{"method":"GET","path":"/p","future":{"a":true},"headers":[]},"z":"\u00e9"}"#,
    );
    assert_eq!(msg.request_id, Some(2));
    assert!(matches!(msg.payload, Payload::HttpRequest(ref r) if r.method == "GET"));
}

#[test]
fn duplicate_type_is_an_error() {
    let err = parse_err(r#"{"type":"ping","type":"pong","payload":{}}"#);
    assert!(err.contains("duplicate field `type`"), "{err}");
}

#[test]
fn duplicate_payload_is_an_error() {
    let err = parse_err(r#"{"type":"ping","payload":{},"payload":{}}"#);
    assert!(err.contains("duplicate field `payload`"), "{err}");
    let err = parse_err(r#"{"payload":{},"payload":{},"type":"ping"}"#);
    assert!(err.contains("duplicate field `payload`"), "{err}");
}

#[test]
fn wrong_shapes_are_errors() {
    for json in [
        "[]",
        r#""ping""#,
        r#"{"type":null}"#,
        r#"{"type":"ping","timestamp":"soon"}"#,
        r#"{"type":"ping","timestamp":-1}"#,
        r#"{"type":"ping","request_id":1.5}"#,
        r#"{"type":"ready","payload":{"protocol_version":"1"}}"#,
        r#"{"type":"kv","payload":{"op":"explode","key":"k"}}"#,
        r#"{"type":"http_response","payload":{"status":70000}}"#,
    ] {
        parse_err(json);
    }
}

#[test]
fn strings_without_escapes_are_borrowed() {
    let json = r#"{"type":"http_request","request_id":1,"payload":{"method":"GET","path":"/a","query":"q=1","headers":[["accept","*/*"]],"body":"hello"}}"#;
    let msg = parse(json);
    let Payload::HttpRequest(req) = &msg.payload else {
        panic!("expected http_request, got {:?}", msg.payload);
    };
    for text in [
        &req.method,
        &req.path,
        &req.query,
        &req.headers[0].0,
        &req.headers[0].1,
        req.body.as_ref().unwrap(),
    ] {
        assert!(matches!(text.0, Cow::Borrowed(_)), "{text:?} was copied");
    }
    let range = json.as_bytes().as_ptr_range();
    assert!(range.contains(&req.body.as_ref().unwrap().as_ptr()));
}

#[test]
fn strings_with_escapes_are_owned() {
    let json =
        r#"{"type":"log","payload":{"level":"info","message":"line\none","error":"\u00e9"}}"#;
    let Payload::Log(log) = parse(json).payload else {
        panic!("expected log");
    };
    assert!(matches!(&log.message.0, Cow::Owned(m) if m == "line\none"));
    assert!(matches!(&log.error.unwrap().0, Cow::Owned(e) if e == "é"));
}

#[test]
fn unknown_type_name_borrows_or_owns_like_any_string() {
    assert!(matches!(
        parse(r#"{"type":"plain"}"#).payload,
        Payload::Unknown(CowStr(Cow::Borrowed("plain")))
    ));
    assert!(matches!(
        parse(r#"{"type":"\u0070ing2"}"#).payload,
        Payload::Unknown(CowStr(Cow::Owned(ref t))) if t == "ping2"
    ));
    // An escaped name still selects its type.
    assert_eq!(parse(r#"{"type":"\u0070ing"}"#).payload, Payload::Ping);
}

#[test]
fn into_owned_keeps_the_message_equal() {
    let json = r#"{"type":"http_request","timestamp":5,"request_id":1,"payload":{"method":"GET","path":"/a","headers":[["x","\"q\""]],"body":"b"}}"#;
    let owned: Message<'static> = {
        let buffer = json.to_owned();
        let borrowed = parse(&buffer);
        let owned = borrowed.clone().into_owned();
        assert_eq!(owned, borrowed);
        owned
    };
    let Payload::HttpRequest(req) = &owned.payload else {
        panic!("expected http_request");
    };
    assert!(matches!(req.path.0, Cow::Owned(_)));
    assert_eq!(owned, parse(json));

    for (p, _, _) in every_variant() {
        assert_eq!(p.clone().into_owned(), p);
    }
}

#[test]
fn constructors_stamp_the_time() {
    let before = now_millis();
    let msg = Message::with_id(7, Payload::Ping);
    assert!(msg.timestamp >= before && msg.timestamp <= now_millis());
    assert_eq!(msg.request_id, Some(7));

    let err = Message::error(Some(3), "not_found", "no bundle");
    assert_eq!(err.request_id, Some(3));
    assert_eq!(
        err.payload,
        Payload::Error(ErrorReply {
            code: s("not_found"),
            message: s("no bundle"),
        })
    );
}

#[test]
fn envelope_head_reads_type_and_id_from_any_valid_object() {
    let head: EnvelopeHead =
        serde_json::from_str(r#"{"payload":{"bad":[]},"request_id":12,"type":"kv"}"#).unwrap();
    assert_eq!(head.type_name.as_deref(), Some("kv"));
    assert_eq!(head.request_id, Some(12));
    let head: EnvelopeHead = serde_json::from_str("{}").unwrap();
    assert_eq!((head.type_name, head.request_id), (None, None));
}
