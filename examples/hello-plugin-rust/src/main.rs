//! Toru's example plugin in Rust: greets, counts in the host's key-value store, echoes requests,
//! sleeps on request and serves a small frontend. Copy it to start a plugin of your own.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::json;
use tokio::sync::Mutex;
use toru_plugin_api::{
    KvError, PluginContext, PluginMetadata, Request, Response, ToruPlugin, async_trait,
};

const ID: &str = "hello-rust";
const BUNDLE: &str = include_str!("bundle.js");
const SLOW_CAP_MS: u64 = 60_000;

#[derive(Default)]
struct Hello {
    /// Held across the counter's get and set, so concurrent POSTs get distinct counts.
    counter: Mutex<()>,
}

#[async_trait]
impl ToruPlugin for Hello {
    fn metadata(&self) -> PluginMetadata {
        PluginMetadata {
            id: ID.into(),
            name: "Hello (Rust)".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            author: "Toru".into(),
            description: "Greets, counts in its key-value store and echoes requests; written in \
                          Rust with the Toru SDK."
                .into(),
            icon: "🦀".into(),
            route: "/hello-rust".into(),
            protocol: None,  // the SDK fills in the versions it speaks
            frontend: false, // the SDK sets it, since bundle() returns a script
            license_required: false,
            ..Default::default()
        }
    }

    async fn handle_http(&self, ctx: &PluginContext, req: Request) -> Response {
        match (req.method.as_str(), req.subpath()) {
            ("GET", "" | "/") => Response::json(
                200,
                &json!({
                    "message": "Hello from Rust!",
                    "plugin": ID,
                    "instance_id": ctx.instance_id(),
                }),
            ),
            ("POST", "/count") => self.count(ctx).await,
            ("GET", "/echo") => echo(&req),
            ("GET", "/slow") => slow(&req).await,
            (_, "" | "/" | "/count" | "/echo" | "/slow") => {
                Response::error(405, "method not allowed")
            }
            _ => Response::error(404, "not found"),
        }
    }

    fn bundle(&self) -> Option<&str> {
        Some(BUNDLE)
    }
}

impl Hello {
    async fn count(&self, ctx: &PluginContext) -> Response {
        let _turn = self.counter.lock().await;
        let kv = ctx.kv();
        let stored = match kv.get("counter").await {
            Ok(value) => value,
            Err(e) => return kv_failed(&e),
        };
        let n = match stored.as_deref().map(str::parse::<u64>) {
            None => 1,
            Some(Ok(n)) => n + 1,
            Some(Err(_)) => {
                let text = format!("internal: counter holds {stored:?}, not a number");
                return Response::error(500, &text);
            }
        };
        if let Err(e) = kv.set("counter", &n.to_string()).await {
            return kv_failed(&e);
        }
        ctx.info(format!("counter is now {n}"));
        Response::json(200, &json!({ "count": n }))
    }
}

/// A KV error as `{"error": "<code>: <message>"}`.
fn kv_failed(e: &KvError) -> Response {
    Response::error(500, &e.to_string())
}

/// The request as received: a UTF-8 body as `body`, any other as `body_base64`.
fn echo(req: &Request) -> Response {
    let (body, body_base64) = match req.body_text() {
        _ if req.body.is_empty() => (None, None),
        Some(text) => (Some(text), None),
        None => (None, Some(BASE64.encode(&req.body))),
    };
    Response::json(
        200,
        &json!({
            "method": req.method,
            "path": req.path,
            "query": req.query,
            "headers": req.headers,
            "body": body,
            "body_base64": body_base64,
        }),
    )
}

/// Sleeps `?ms=N` milliseconds (at most a minute): for trying timeouts and `cancel`.
async fn slow(req: &Request) -> Response {
    let Some(ms) = req.query_param("ms").and_then(|ms| ms.parse::<u64>().ok()) else {
        return Response::error(400, "ms must be a whole number of milliseconds");
    };
    let ms = ms.min(SLOW_CAP_MS);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Response::json(200, &json!({ "slept_ms": ms }))
}

fn main() {
    toru_plugin_api::run(Hello::default())
}
