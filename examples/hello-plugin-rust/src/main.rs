//! Toru's example plugin in Rust: greets, counts in the host's key-value store, echoes requests,
//! streams bytes, hashes uploads, sends server-sent events, echoes WebSocket messages, counts
//! what it answered and serves a small frontend. Copy it to start a plugin of your own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde_json::json;
use sha2::{Digest as _, Sha256};
use tokio::sync::Mutex;
use toru_plugin_api::protocol::{SettingKind, SettingSpec};
use toru_plugin_api::{
    HttpError, HttpResult, Plugin, PluginContext, PluginMetadata, Request, Response, Router,
    WsMessage,
};

const ID: &str = "hello-rust";
const BUNDLE: &str = include_str!("bundle.js");
const SLOW_CAP_MS: u64 = 60_000;
/// The largest body `/echo` reads.
const ECHO_LIMIT: usize = 1024 * 1024;
/// `/bytes` sends its body in chunks of this size.
const CHUNK: usize = 64 * 1024;

/// The plugin's state, shared by its handlers.
#[derive(Default)]
struct Hello {
    /// Held across the counter's get and set, so concurrent POSTs get distinct counts.
    counter: Mutex<()>,
    /// Greetings and hashes answered since the start (`GET /hello-rust/stats`; the load
    /// benchmark checks them against its clients' count).
    greetings: AtomicU64,
    hashes: AtomicU64,
}

fn main() {
    let meta = PluginMetadata::new(ID, "Hello (Rust)", env!("CARGO_PKG_VERSION"), "/hello-rust")
        .with_author("Toru")
        .with_description(
            "Greets, counts in its key-value store, echoes requests, and streams: bytes, \
             SHA-256 of uploads, server-sent ticks and a WebSocket echo; written in Rust with \
             the Toru SDK.",
        )
        .with_icon("🦀")
        .with_setting(
            SettingSpec::new("greeting", SettingKind::String, "Greeting")
                .with_default("Hello")
                .with_help("The word GET /hello-rust/ greets with."),
        );
    let routes = Router::with_state(Hello::default())
        .get("/", greeting)
        .post("/count", count)
        .get("/echo", echo)
        .get("/slow", slow)
        .get("/bytes", bytes)
        .post("/sha256", sha256)
        .get("/stats", stats)
        .get("/ticks", ticks)
        .get("/ws", websocket);
    let plugin = Plugin::new(meta, routes)
        .with_bundle(BUNDLE)
        .on_settings(|_, ctx| async move {
            let greeting: Option<String> = ctx.setting_as("greeting");
            ctx.info(format!("greeting is now {greeting:?}"));
        });
    toru_plugin_api::run(plugin)
}

/// `GET /hello-rust/`: the greeting, from the `greeting` setting.
async fn greeting(hello: Arc<Hello>, ctx: PluginContext, _: Request) -> HttpResult {
    hello.greetings.fetch_add(1, Ordering::Relaxed);
    let word: String = ctx.setting_as("greeting").unwrap_or_else(|| "Hello".into());
    Ok(Response::json(
        200,
        &json!({
            "message": format!("{word} from Rust!"),
            "plugin": ID,
            "instance_id": ctx.instance_id(),
        }),
    ))
}

/// `POST /hello-rust/count`: adds 1 to `counter` in the plugin's KV store.
async fn count(hello: Arc<Hello>, ctx: PluginContext, _: Request) -> HttpResult {
    let _turn = hello.counter.lock().await;
    let n = match ctx.kv().get("counter").await? {
        None => 1,
        Some(stored) => match stored.parse::<u64>() {
            Ok(n) => n + 1,
            Err(_) => {
                let text = format!("internal: counter holds {stored:?}, not a number");
                return Err(HttpError::internal(text));
            }
        },
    };
    ctx.kv().set("counter", &n.to_string()).await?;
    ctx.info(format!("counter is now {n}"));
    Ok(Response::json(200, &json!({ "count": n })))
}

/// `GET /hello-rust/echo`: the request as received, with a UTF-8 body as `body` and any other
/// as `body_base64`.
async fn echo(_: PluginContext, mut req: Request) -> HttpResult {
    let body = req.body.collect(ECHO_LIMIT).await?;
    let (text, base64) = match std::str::from_utf8(&body) {
        _ if body.is_empty() => (None, None),
        Ok(text) => (Some(text), None),
        Err(_) => (None, Some(BASE64.encode(&body))),
    };
    Ok(Response::json(
        200,
        &json!({
            "method": req.method,
            "path": req.path,
            "query": req.query,
            "headers": req.headers,
            "body": text,
            "body_base64": base64,
        }),
    ))
}

/// `GET /hello-rust/slow?ms=N`: sleeps N milliseconds (at most a minute), for trying timeouts
/// and `cancel`.
async fn slow(_: PluginContext, req: Request) -> HttpResult {
    let ms: u64 = number_param(&req, "ms", "a whole number of milliseconds")?;
    let ms = ms.min(SLOW_CAP_MS);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Ok(Response::json(200, &json!({ "slept_ms": ms })))
}

/// Bytes `i % 251` for `i` in `0..CHUNK + 251`: any chunk of the `/bytes` body is a slice of it.
static PATTERN: LazyLock<Bytes> =
    LazyLock::new(|| (0..CHUNK + 251).map(|i| (i % 251) as u8).collect());

/// `GET /hello-rust/bytes?n=N`: exactly N bytes, byte `i` being `i % 251`, generated as the
/// client reads them.
async fn bytes(_: PluginContext, req: Request) -> HttpResult {
    let n: u64 = number_param(&req, "n", "a whole number of bytes")?;
    let res = Response::streamed(
        200,
        "application/octet-stream",
        move |mut body| async move {
            let mut sent = 0u64;
            while sent < n {
                let start = (sent % 251) as usize;
                let len = (n - sent).min(CHUNK as u64) as usize;
                body.send(PATTERN.slice(start..start + len)).await?;
                sent += len as u64;
            }
            Ok(())
        },
    );
    Ok(res.with_header("content-length", n.to_string()))
}

/// `POST /hello-rust/sha256`: the SHA-256 of the body, as lowercase hex, read as it streams in.
async fn sha256(hello: Arc<Hello>, _: PluginContext, mut req: Request) -> HttpResult {
    let mut hasher = Sha256::new();
    while let Some(chunk) = req.body.chunk().await? {
        hasher.update(&chunk);
    }
    hello.hashes.fetch_add(1, Ordering::Relaxed);
    Ok(Response::text(200, format!("{:x}", hasher.finalize())))
}

/// `GET /hello-rust/stats`: how many greetings and hashes were answered since the start.
async fn stats(hello: Arc<Hello>, _: PluginContext, _: Request) -> HttpResult {
    Ok(Response::json(
        200,
        &json!({
            "greetings": hello.greetings.load(Ordering::Relaxed),
            "hashes": hello.hashes.load(Ordering::Relaxed),
        }),
    ))
}

/// `GET /hello-rust/ticks`: an event stream with one event a second, its data counting from 1.
async fn ticks(ctx: PluginContext, _: Request) -> HttpResult {
    if ctx.protocol_version() < 2 {
        // A protocol 1 host would wait for the endless stream to end; say so at once instead.
        return Ok(Response::error(
            501,
            "live ticks need a host that speaks protocol 2",
        ));
    }
    Ok(Response::sse(|mut sse| async move {
        let mut every_second = tokio::time::interval(Duration::from_secs(1));
        for n in 1u64.. {
            every_second.tick().await;
            sse.data(&n.to_string()).await?;
        }
        Ok(())
    }))
}

/// `GET /hello-rust/ws`: a WebSocket answering each text message upper-cased and each binary
/// message as it is.
async fn websocket(_: PluginContext, mut req: Request) -> HttpResult {
    Ok(req.websocket()?.accept(|mut ws| async move {
        while let Some(msg) = ws.recv().await? {
            match msg {
                WsMessage::Text(text) => ws.send_text(text.to_uppercase()).await?,
                WsMessage::Binary(data) => ws.send_binary(data).await?,
            }
        }
        Ok(())
    }))
}

/// Query parameter `name` as a number; 400 saying what it must be otherwise.
fn number_param<T: std::str::FromStr>(req: &Request, name: &str, what: &str) -> HttpResult<T> {
    req.query_param(name)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| HttpError::bad_request(format!("{name} must be {what}")))
}
