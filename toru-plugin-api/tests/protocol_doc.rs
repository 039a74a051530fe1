//! `docs/protocol.md` is the contract for plugin authors in other languages, so every JSON example
//! in it must be exactly what this crate sends and accepts.
//!
//! Each ```` ```json ```` block is either a message (it has `type`) or plugin metadata (it has `id`
//! and `route`). A message must decode to a known type, and re-encoding it must reproduce every
//! key and value of the example: a field the types would silently ignore (a misspelling, a field
//! the code dropped) fails. An example that is deliberately not a valid message is fenced as
//! ```` ```text ````.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;
use toru_plugin_api::protocol::error_code;
use toru_plugin_api::{Frame, Payload, PluginMetadata};

/// Every `type` in [`Payload`]. The document must show each of them at least once.
const MESSAGE_TYPES: &[&str] = &[
    "init",
    "ready",
    "http_request",
    "http_response",
    "get_bundle",
    "bundle",
    "ping",
    "pong",
    "cancel",
    "shutdown",
    "kv",
    "kv_result",
    "log",
    "error",
    "credit",
    "ws_close",
    "settings",
];

/// Every `kv` operation. The document must show each of them at least once.
const KV_OPS: &[&str] = &["get", "set", "delete", "list"];

/// Every code in [`error_code`]. The document must name each of them.
const ERROR_CODES: &[&str] = &[
    error_code::UNKNOWN_TYPE,
    error_code::BAD_REQUEST,
    error_code::UNSUPPORTED_PROTOCOL_VERSION,
    error_code::INIT_REFUSED,
    error_code::NOT_FOUND,
    error_code::PLUGIN_ERROR,
    error_code::KV_TOO_LARGE,
    error_code::KV_QUOTA_EXCEEDED,
    error_code::SHUTTING_DOWN,
    error_code::INTERNAL,
];

/// One fenced ```` ```json ```` block: the line of its opening fence (1-based) and its text.
#[derive(Debug)]
struct Block {
    line: usize,
    text: String,
}

/// What a block turned out to be.
#[derive(Debug, PartialEq, Eq)]
enum Example {
    /// A message of this `type` (and, for `kv`, this `op`).
    Message {
        type_name: String,
        op: Option<String>,
    },
    /// Plugin metadata.
    Metadata,
}

fn doc_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/protocol.md")
}

fn read_doc() -> String {
    let path = doc_path();
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The ```` ```json ```` blocks of a Markdown document, in order.
fn json_blocks(doc: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    // Any fence (```json, ```text, ```) toggles; only json blocks are kept.
    let mut in_other_fence = false;
    for (index, line) in doc.lines().enumerate() {
        let trimmed = line.trim();
        if let Some(info) = trimmed.strip_prefix("```") {
            if let Some(block) = open.take() {
                blocks.push(block);
            } else if in_other_fence {
                in_other_fence = false;
            } else if info.trim() == "json" {
                open = Some(Block {
                    line: index + 1,
                    text: String::new(),
                });
            } else {
                in_other_fence = true;
            }
            continue;
        }
        if let Some(block) = open.as_mut() {
            block.text.push_str(line);
            block.text.push('\n');
        }
    }
    if let Some(block) = open {
        panic!(
            "the ```json block opened at line {} is never closed",
            block.line
        );
    }
    blocks
}

/// Checks that every key and value of `expected` is in `actual`. Objects may have more keys in
/// `actual`; arrays and scalars must be equal. Returns the first difference, named by its path.
fn contains(expected: &Value, actual: &Value, path: &str) -> Result<(), String> {
    match (expected, actual) {
        (Value::Object(want), Value::Object(got)) => {
            for (key, value) in want {
                let here = format!("{path}.{key}");
                match got.get(key) {
                    Some(found) => contains(value, found, &here)?,
                    None => {
                        return Err(format!(
                            "{here} is not in the re-encoded message (a field the types ignore, or misspelt?)"
                        ));
                    }
                }
            }
            Ok(())
        }
        (Value::Array(want), Value::Array(got)) => {
            if want.len() != got.len() {
                return Err(format!(
                    "{path} has {} items in the document but {} re-encoded",
                    want.len(),
                    got.len()
                ));
            }
            for (i, (w, g)) in want.iter().zip(got).enumerate() {
                contains(w, g, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        _ if expected == actual => Ok(()),
        _ => Err(format!(
            "{path} is {expected} in the document but {actual} re-encoded"
        )),
    }
}

/// Checks one block and says what it is.
fn check_block(text: &str) -> Result<Example, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("is not valid JSON: {e}"))?;
    let Value::Object(object) = &value else {
        return Err("is not a JSON object; fence it as ```text if that is intended".into());
    };
    if object.contains_key("type") {
        let frame = Frame::new(text.as_bytes().to_vec());
        let message = frame
            .message()
            .map_err(|e| format!("is not a valid message: {e}: {}", cause(&e)))?;
        if let Payload::Unknown(name) = &message.payload {
            return Err(format!(
                "has type {name:?}, which the protocol does not know"
            ));
        }
        let encoded =
            serde_json::to_value(&message).map_err(|e| format!("cannot be re-encoded: {e}"))?;
        contains(&value, &encoded, "$")?;
        let op = match &value["payload"]["op"] {
            Value::String(op) => Some(op.clone()),
            _ => None,
        };
        Ok(Example::Message {
            type_name: message.payload.type_name().to_owned(),
            op,
        })
    } else if object.contains_key("id") && object.contains_key("route") {
        let metadata: PluginMetadata = serde_json::from_value(value.clone())
            .map_err(|e| format!("is not valid plugin metadata: {e}"))?;
        metadata
            .validate()
            .map_err(|e| format!("is plugin metadata that fails validation: {e}"))?;
        let encoded =
            serde_json::to_value(&metadata).map_err(|e| format!("cannot be re-encoded: {e}"))?;
        contains(&value, &encoded, "$")?;
        Ok(Example::Metadata)
    } else {
        Err(
            "is neither a message (no \"type\") nor metadata (no \"id\" and \"route\"); \
             fence it as ```text if that is intended"
                .into(),
        )
    }
}

/// What the JSON parser said, under the codec's own message.
fn cause(e: &toru_plugin_api::CodecError) -> String {
    std::error::Error::source(e)
        .map(ToString::to_string)
        .unwrap_or_default()
}

#[test]
fn every_json_example_in_the_protocol_doc_is_valid() {
    let doc = read_doc();
    let blocks = json_blocks(&doc);
    assert!(
        blocks.len() >= MESSAGE_TYPES.len(),
        "expected at least {} ```json blocks in {}, found {}",
        MESSAGE_TYPES.len(),
        doc_path().display(),
        blocks.len()
    );

    let mut failures = Vec::new();
    let mut types = BTreeSet::new();
    let mut ops = BTreeSet::new();
    let mut metadata_blocks = 0;
    for block in &blocks {
        match check_block(&block.text) {
            Ok(Example::Message { type_name, op }) => {
                if let Some(op) = op {
                    ops.insert(op);
                }
                types.insert(type_name);
            }
            Ok(Example::Metadata) => metadata_blocks += 1,
            Err(why) => failures.push(format!(
                "docs/protocol.md line {}: the ```json block {why}",
                block.line
            )),
        }
    }

    for name in MESSAGE_TYPES {
        if !types.contains(*name) {
            failures.push(format!(
                "docs/protocol.md has no ```json example of message type {name:?}"
            ));
        }
    }
    for op in KV_OPS {
        if !ops.contains(*op) {
            failures.push(format!(
                "docs/protocol.md has no ```json example of the kv operation {op:?}"
            ));
        }
    }
    if metadata_blocks == 0 {
        failures.push("docs/protocol.md has no ```json example of plugin metadata".into());
    }
    for code in ERROR_CODES {
        if !doc.contains(&format!("`{code}`")) {
            failures.push(format!(
                "docs/protocol.md never names the error code `{code}`"
            ));
        }
    }

    assert!(failures.is_empty(), "\n{}\n", failures.join("\n"));
}

#[test]
fn the_checker_finds_json_blocks_and_skips_other_fences() {
    let doc = "intro\n```text\n{\"type\": \"nope\"}\n```\n```json\n{\"a\": 1}\n```\n\n```\nplain\n```\n```json\n[1]\n```\n";
    let blocks = json_blocks(doc);
    assert_eq!(blocks.len(), 2, "{blocks:?}");
    assert_eq!(blocks[0].line, 5);
    assert_eq!(blocks[0].text, "{\"a\": 1}\n");
    assert_eq!(blocks[1].line, 12);
}

#[test]
fn the_checker_accepts_a_good_message_and_metadata() {
    assert_eq!(
        check_block(
            r#"{"type": "kv", "timestamp": 1, "request_id": 2, "payload": {"op": "get", "key": "k"}}"#
        ),
        Ok(Example::Message {
            type_name: "kv".into(),
            op: Some("get".into())
        })
    );
    assert_eq!(
        check_block(r#"{"id": "a", "name": "A", "version": "1", "route": "/a"}"#),
        Ok(Example::Metadata)
    );
}

#[test]
fn the_checker_refuses_what_the_types_would_ignore_or_reject() {
    let refused = [
        // A field the envelope ignores.
        r#"{"type": "ping", "timestamp": 1, "request_id": 1, "payload": {}, "extra": 1}"#,
        // A misspelt payload field.
        r#"{"type": "ready", "timestamp": 1, "request_id": 1, "payload": {"protocol_version": 1, "protocl": 2}}"#,
        // A field of a payload that has none.
        r#"{"type": "pong", "timestamp": 1, "request_id": 1, "payload": {"late": true}}"#,
        // A misspelt optional field: it would read as absent.
        r#"{"type": "http_response", "timestamp": 1, "request_id": 1, "payload": {"status": 200, "headers": [], "bdy": "x"}}"#,
        // An unknown type.
        r#"{"type": "pingg", "timestamp": 1, "request_id": 1, "payload": {}}"#,
        // A wrong field type.
        r#"{"type": "ready", "timestamp": 1, "request_id": 1, "payload": {"protocol_version": "1"}}"#,
        // Metadata that breaks the route pattern, and metadata with a misspelt field.
        r#"{"id": "a", "name": "A", "version": "1", "route": "a"}"#,
        r#"{"id": "a", "name": "A", "version": "1", "route": "/a", "frontnd": true}"#,
        // Neither a message nor metadata.
        r#"{"error": {"code": "x", "message": "y"}}"#,
        "[1, 2]",
        "{not json",
    ];
    for text in refused {
        assert!(check_block(text).is_err(), "accepted {text}");
    }
}
