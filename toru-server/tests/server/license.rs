//! Licensing end to end: the licensed example plugin as a real process under a real server,
//! its key stored through `PUT /api/plugins/:id/license`. Without a key, and with a key for
//! another instance, it fails with the reason and is not restarted; with a valid key it runs,
//! and the key survives a server restart.

use reqwest::{Method, Response};
use serde_json::{Value, json};
use toru_plugin_api::license::{Issuer, LicenseClaims, Timestamp};

use crate::util::{Env, Events, Server, workspace_binary};

const ID: &str = "hello-licensed";
const PATH: &str = "/api/plugins/hello-licensed/license";
const OTHER_INSTANCE: &str = "0b7e1f7a-0d7c-4b61-8a3c-9f2e4d5c6b7a";

/// The example's demo signing key (comment lines skipped).
fn demo_vendor() -> Issuer {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/hello-licensed/demo-vendor-key.secret"
    );
    let text = std::fs::read_to_string(path).expect("read the demo vendor key");
    let key: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    Issuer::parse(key.trim()).expect("the demo vendor key parses")
}

/// A key for `hello-licensed` on `instance`, valid for 30 days, with the `reports` feature.
fn key_for(instance: &str) -> String {
    let now = Timestamp::now();
    let mut claims = LicenseClaims::new(ID, instance, now);
    claims.expires_at = Some(now.add_days(30));
    claims.features = vec!["reports".into()];
    demo_vendor().issue(&claims)
}

fn install(env: &Env) {
    let bin = workspace_binary(ID, ID);
    env.install_file("hello-licensed.binary", &std::fs::read(bin).unwrap());
}

async fn put(server: &Server, path: &str, body: &Value) -> Response {
    server
        .req(Method::PUT, path)
        .json(body)
        .send()
        .await
        .expect("PUT")
}

async fn error_code(r: Response) -> String {
    let body: Value = r.json().await.expect("an error body");
    body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn reason(info: &Value) -> &str {
    info["reason"].as_str().unwrap_or_default()
}

/// Waits until the plugin is failed with a reason containing `needle`, and returns its info.
async fn wait_failed(server: &Server, events: &mut Events, needle: &str) -> Value {
    let info = server.plugin(ID).await;
    if info["state"] != "failed" || !reason(&info).contains(needle) {
        events
            .wait_for(&format!("{ID} to fail with {needle:?}"), |kind, e| {
                kind == "plugin"
                    && e["plugin_id"] == ID
                    && e["kind"] == "failed"
                    && e["reason"].as_str().is_some_and(|r| r.contains(needle))
            })
            .await;
    }
    let info = server.plugin(ID).await;
    assert_eq!(info["state"], "failed", "{info}");
    assert!(reason(&info).contains(needle), "{needle:?} in {info}");
    info
}

#[tokio::test]
async fn the_licensed_example_runs_only_with_a_key_for_this_instance() {
    let env = Env::new();
    install(&env);
    let server = Server::start(&env, &[]).await;
    let instance = server.json("/api/instance").await["instance_id"]
        .as_str()
        .expect("an instance id")
        .to_owned();

    // No key: failed, with the reason, and its route is unavailable.
    let mut events = server.events().await;
    let info = wait_failed(&server, &mut events, "no license key").await;
    assert_eq!(info["metadata"]["license_required"], true, "{info}");
    assert_eq!(info["license_key_set"], false, "{info}");
    assert_eq!(info["last_exit"], json!({"code": 78}), "{info}");
    let r = server.get("/plugins/hello-licensed/").await;
    assert_eq!(r.status(), 503, "the route of a plugin without a license");

    // A key for another instance: stored, and refused by the plugin with that reason, once.
    let mut events = server.events().await;
    let r = put(
        &server,
        PATH,
        &json!({"license_key": key_for(OTHER_INSTANCE)}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let info: Value = r.json().await.unwrap();
    assert_eq!(info["id"], ID, "{info}");
    assert_eq!(info["license_key_set"], true, "{info}");
    let mut seen = Vec::new();
    events
        .wait_for("the key for another instance to be refused", |kind, e| {
            seen.push(e.clone());
            kind == "plugin" && e["plugin_id"] == ID && e["kind"] == "failed"
        })
        .await;
    let info = server.plugin(ID).await;
    assert_eq!(info["state"], "failed", "{info}");
    assert!(
        reason(&info).contains(&format!("license key is for instance {OTHER_INSTANCE}")),
        "the reason names the other instance: {info}"
    );
    assert!(reason(&info).contains(&instance), "and this one: {info}");
    assert_eq!(info["restarts"], 0, "{info}");
    assert_eq!(info["enabled"], true, "{info}");
    assert_eq!(info["last_exit"], json!({"code": 78}), "{info}");
    assert_eq!(server.get("/plugins/hello-licensed/").await.status(), 503);

    // A valid key: it runs and serves what its license grants. Every event since the refused
    // key is looked at: a restart loop would have shown `crashed` or `restarting` by now.
    let valid = key_for(&instance);
    let r = put(&server, PATH, &json!({"license_key": valid})).await;
    assert_eq!(r.status(), 200);
    events
        .wait_for("the plugin to start with a valid key", |kind, e| {
            seen.push(e.clone());
            kind == "plugin" && e["plugin_id"] == ID && e["kind"] == "started"
        })
        .await;
    let loops: Vec<&Value> = seen
        .iter()
        .filter(|e| e["kind"] == "crashed" || e["kind"] == "restarting")
        .collect();
    assert!(loops.is_empty(), "no restart loop: {loops:?}");
    let info = server.plugin(ID).await;
    assert_eq!(info["state"], "running", "{info}");
    assert_eq!(info["restarts"], 0, "{info}");
    let r = server.get("/plugins/hello-licensed/").await;
    assert_eq!(r.status(), 200);
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["instance_id"], instance.as_str(), "{page}");
    assert_eq!(page["license"]["features"], json!(["reports"]), "{page}");
    assert_eq!(
        server.get("/plugins/hello-licensed/report").await.status(),
        200
    );
    let history = server.json("/api/plugins/hello-licensed/events").await;
    let kinds: Vec<&str> = history["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(
        !kinds.contains(&"crashed") && !kinds.contains(&"restarting"),
        "{kinds:?}"
    );
    assert!(server.stop().await.success());

    // The key is in config.json, and the plugin runs with it after a restart.
    let config = std::fs::read_to_string(env.plugins().join(".metadata/config.json")).unwrap();
    assert!(config.contains(&valid), "{config}");
    let server = Server::start(&env, &[]).await;
    server.wait_running(&[ID]).await;
    assert_eq!(server.plugin(ID).await["license_key_set"], true);
    assert_eq!(server.get("/plugins/hello-licensed/").await.status(), 200);

    // Removing the key (null) stops it again, with the reason.
    let mut events = server.events().await;
    let r = put(&server, PATH, &json!({"license_key": null})).await;
    assert_eq!(r.status(), 200);
    let info: Value = r.json().await.unwrap();
    assert_eq!(info["license_key_set"], false, "{info}");
    wait_failed(&server, &mut events, "no license key").await;
    let config = std::fs::read_to_string(env.plugins().join(".metadata/config.json")).unwrap();
    assert!(!config.contains("license_key"), "{config}");
    server.stop().await;
}

#[tokio::test]
async fn the_license_route_checks_who_asks_and_what_is_sent() {
    let env = Env::new();
    install(&env);
    env.install_file("broken.binary", b"#!/bin/sh\nexit 3\n");
    let server = Server::start(&env, &[]).await;
    let body = json!({"license_key": key_for(OTHER_INSTANCE)});

    // 401 without credentials, 403 from another site even with them.
    let r = server
        .anon(Method::PUT, PATH)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(error_code(r).await, "unauthorized");
    for (name, value) in [
        ("Sec-Fetch-Site", "cross-site"),
        ("Origin", "http://evil.example"),
    ] {
        let r = server
            .req(Method::PUT, PATH)
            .header(name, value)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{name}: {value}");
        assert_eq!(error_code(r).await, "cross_origin");
    }

    // Bodies that are not `{"license_key": string or null}`, and keys that are too long.
    let long = "k".repeat(4097);
    let bad: [(&str, String); 7] = [
        ("not JSON", "toru1.ed25519.x".into()),
        ("no field", "{}".into()),
        ("a number", r#"{"license_key": 5}"#.into()),
        ("an extra field", r#"{"license_key": "a", "b": 1}"#.into()),
        ("an array", r#"["a"]"#.into()),
        ("empty", String::new()),
        ("too long", json!({"license_key": long}).to_string()),
    ];
    for (what, text) in bad {
        let r = server
            .req(Method::PUT, PATH)
            .header("content-type", "application/json")
            .body(text)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{what}");
        assert_eq!(error_code(r).await, "bad_request", "{what}");
    }
    // Nothing was stored by any of these.
    assert_eq!(server.plugin(ID).await["license_key_set"], false);

    // Unknown plugins: 404; one that failed to load: 409, and no key stored for it.
    let r = put(&server, "/api/plugins/nobody/license", &body).await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "unknown_plugin");
    let list = server.json("/api/plugins").await;
    let broken = list["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["load_error"].is_string())
        .unwrap_or_else(|| panic!("the broken file is listed: {list}"))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = put(&server, &format!("/api/plugins/{broken}/license"), &body).await;
    assert_eq!(r.status(), 409);
    assert_eq!(error_code(r).await, "not_loadable");
    assert_eq!(server.plugin(&broken).await["license_key_set"], false);

    // A key of exactly the limit is taken (the plugin refuses it, which is its business).
    let mut events = server.events().await;
    let r = put(&server, PATH, &json!({"license_key": "k".repeat(4096)})).await;
    assert_eq!(r.status(), 200);
    let info: Value = r.json().await.unwrap();
    assert_eq!(info["license_key_set"], true, "{info}");
    wait_failed(&server, &mut events, "malformed").await;
    // An empty key removes it, like null.
    let r = put(&server, PATH, &json!({"license_key": "  "})).await;
    assert_eq!(r.status(), 200);
    let info: Value = r.json().await.unwrap();
    assert_eq!(info["license_key_set"], false, "{info}");
    server.stop().await;
}
