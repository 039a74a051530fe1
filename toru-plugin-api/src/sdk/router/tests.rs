use std::sync::atomic::{AtomicU32, Ordering};

use super::*;
use crate::protocol::{Level, Payload};
use crate::sdk::{HttpResult, KvError};
use crate::testutil::context;

async fn hello(_: PluginContext, _: Request) -> HttpResult {
    Ok(Response::text(200, "hello"))
}

async fn item(_: PluginContext, req: Request) -> Response {
    let id = req.param("id").unwrap_or("?").to_owned();
    let rest = req.param("rest").unwrap_or("-").to_owned();
    Response::text(200, format!("{id} {rest}"))
}

async fn kv_fails(_: PluginContext, _: Request) -> HttpResult {
    Err(KvError::Disconnected)?
}

async fn refuses(_: PluginContext, _: Request) -> Result<Response, HttpError> {
    Err(HttpError::new(409, "taken"))
}

async fn counts(state: Arc<AtomicU32>, _: PluginContext, _: Request) -> HttpResult {
    let n = state.fetch_add(1, Ordering::Relaxed) + 1;
    Ok(Response::text(200, n.to_string()))
}

fn text(res: &Response) -> &str {
    std::str::from_utf8(&res.body).unwrap()
}

#[tokio::test]
async fn routes_by_method_and_path_with_params() {
    let (ctx, _rx) = context(2);
    let router = Router::new()
        .get("/", hello)
        .get("/items/{id}", item)
        .post("/items/{id}", item)
        .get("/files/{*rest}", item);
    for (method, path, status, body) in [
        ("GET", "/p", 200, "hello"),
        ("GET", "/p/", 200, "hello"),
        ("HEAD", "/p", 200, "hello"),
        ("GET", "/p/items/7", 200, "7 -"),
        ("POST", "/p/items/7/", 200, "7 -"),
        ("GET", "/p/files/a/b.txt", 200, "? a/b.txt"),
        ("GET", "/p/files", 200, "? "),
        ("GET", "/p/items", 404, r#"{"error":"not found"}"#),
        ("GET", "/p/items/7/x", 404, r#"{"error":"not found"}"#),
        ("GET", "/p/nope", 404, r#"{"error":"not found"}"#),
    ] {
        let res = router.handle(&ctx, Request::new(method, path)).await;
        assert_eq!((res.status, text(&res)), (status, body), "{method} {path}");
    }
}

#[tokio::test]
async fn a_known_path_with_another_method_is_405_with_allow() {
    let (ctx, _rx) = context(2);
    let router = Router::new()
        .get("/items/{id}", item)
        .delete("/items/{id}", item);
    let res = router.handle(&ctx, Request::new("PUT", "/p/items/1")).await;
    assert_eq!(res.status, 405);
    assert_eq!(text(&res), r#"{"error":"method not allowed"}"#);
    assert_eq!(res.header("allow"), Some("GET, DELETE, HEAD"));
}

#[tokio::test]
async fn errors_become_json_and_5xx_are_logged() {
    let (ctx, mut rx) = context(2);
    let router = Router::new().post("/kv", kv_fails).post("/taken", refuses);
    let res = router.handle(&ctx, Request::new("POST", "/p/taken")).await;
    assert_eq!((res.status, text(&res)), (409, r#"{"error":"taken"}"#));
    assert!(rx.try_next_message().is_none(), "a 4xx is not logged");
    let res = router.handle(&ctx, Request::new("POST", "/p/kv")).await;
    assert_eq!(res.status, 500);
    assert!(
        text(&res).contains("closed before it answered"),
        "{}",
        text(&res)
    );
    let Payload::Log(log) = rx.try_next_message().unwrap().payload else {
        panic!("expected a log line")
    };
    assert_eq!(log.level, Level::Error);
    assert!(log.message.starts_with("/kv failed"), "{}", log.message);
}

#[tokio::test]
async fn handlers_may_take_the_state() {
    let (ctx, _rx) = context(2);
    let router = Router::with_state(AtomicU32::new(0))
        .post("/count", counts)
        .get("/", hello);
    for n in 1..=3 {
        let res = router.handle(&ctx, Request::new("POST", "/p/count")).await;
        assert_eq!(text(&res), n.to_string());
    }
    assert_eq!(router.state().load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn a_later_handler_for_the_same_method_and_path_replaces_the_first() {
    let (ctx, _rx) = context(2);
    let router = Router::new().get("/", item).get("/", hello);
    let res = router.handle(&ctx, Request::new("GET", "/p")).await;
    assert_eq!(text(&res), "hello");
    assert!(format!("{router:?}").contains("GET /"));
}

#[test]
#[should_panic(expected = "must be the last segment")]
fn a_rest_segment_must_come_last() {
    let _ = Router::new().get("/{*rest}/more", hello);
}

#[test]
#[should_panic(expected = "starts with '/'")]
fn a_path_starts_with_a_slash() {
    let _ = Router::new().get("count", hello);
}
