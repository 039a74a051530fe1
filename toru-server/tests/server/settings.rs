//! Plugin settings end to end: `PUT /api/plugins/:id/settings` checks every type against the
//! plugin's declarations (400 with a message per field), stores and applies them; a live
//! plugin (`hello-python`) changes its greeting without a restart, one without `live_settings`
//! restarts; a required setting keeps its plugin from starting; a secret is never in the API,
//! the events or any log.

use std::path::Path;

use reqwest::{Method, Response};
use serde_json::{Value, json};

use crate::util::{Env, Server, wait_file_contains};

/// A secret whose value must appear in config.json and nowhere else.
const SECRET: &str = "tok-8a41c2d9e7-secret";

async fn put(server: &Server, id: &str, body: &Value) -> Response {
    server
        .req(Method::PUT, &format!("/api/plugins/{id}/settings"))
        .json(body)
        .send()
        .await
        .expect("PUT settings")
}

/// `toru-test-plugin <mode> s`, which declares a setting of every type and a required
/// `endpoint`, answers its settings and pid on `GET /s/`.
fn install_settings_plugin(env: &Env, mode: &str, endpoint: Option<&str>) {
    env.install_test_plugin(mode, "s");
    if let Some(endpoint) = endpoint {
        let config = json!({"version": 1, "plugins": {"s": {"settings": {"endpoint": endpoint}}}});
        std::fs::create_dir_all(env.plugins().join(".metadata")).unwrap();
        std::fs::write(
            env.plugins().join(".metadata/config.json"),
            config.to_string(),
        )
        .unwrap();
    }
}

/// What the test plugin answers: the settings it got, and its pid.
async fn plugin_view(server: &Server) -> (Value, u64) {
    let r = server.get("/plugins/s/").await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    (body["settings"].clone(), body["pid"].as_u64().unwrap())
}

#[tokio::test]
async fn every_type_is_checked_and_a_bad_change_is_refused_whole() {
    let env = Env::new();
    install_settings_plugin(&env, "settings", None);
    let server = Server::start(&env, &[]).await;

    // The required `endpoint` has no value: the plugin is not started, and says why.
    let mut events = server.events().await;
    let info = server.plugin("s").await;
    if info["state"] != "failed" {
        events.wait_plugin("s", "failed").await;
    }
    let info = server.plugin("s").await;
    assert_eq!(info["state"], "failed", "{info}");
    assert_eq!(
        info["reason"],
        "setting \"endpoint\" is required and has no value; set it in the plugin's settings"
    );
    assert!(info["pid"].is_null(), "{info}");
    let names: Vec<&str> = info["settings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "greeting",
            "retries",
            "verbose",
            "mode",
            "api_token",
            "endpoint"
        ]
    );
    assert_eq!(info["settings"][1]["value"], 3, "the default: {info}");
    assert_eq!(info["settings"][1]["set"], false, "{info}");
    assert_eq!(info["settings"][5]["required"], true, "{info}");
    assert!(info["settings"][5]["value"].is_null(), "{info}");
    assert!(info["settings"][4].get("value").is_none(), "{info}");

    // A wrong value of every type, an unknown name, and the required one cleared.
    let r = put(
        &server,
        "s",
        &json!({"greeting": 5, "retries": "3", "verbose": "yes", "mode": "slow",
                "api_token": {"t": 1}, "endpoint": null, "colour": "blue"}),
    )
    .await;
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_settings", "{body}");
    let fields = &body["error"]["fields"];
    assert_eq!(fields["greeting"], "expected text", "{body}");
    assert_eq!(fields["retries"], "expected a number", "{body}");
    assert_eq!(fields["verbose"], "expected true or false", "{body}");
    assert_eq!(
        fields["mode"], "\"slow\" is not one of fast, safe",
        "{body}"
    );
    assert_eq!(fields["api_token"], "expected text", "{body}");
    assert_eq!(fields["endpoint"], "a value is required", "{body}");
    assert!(
        fields["colour"]
            .as_str()
            .unwrap()
            .starts_with("is not a setting of this plugin; it takes greeting, retries"),
        "{body}"
    );
    assert_eq!(fields.as_object().unwrap().len(), 7, "{body}");
    let info = server.plugin("s").await;
    assert!(
        info["settings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["set"] == false),
        "nothing was stored: {info}"
    );

    // Not an object, not JSON: refused before anything is looked at.
    for (body, code) in [
        ("[1, 2]", "bad_settings"),
        ("\"greeting\"", "bad_settings"),
        ("{\"greeting\": ", "bad_request"),
    ] {
        let r = server
            .req(Method::PUT, "/api/plugins/s/settings")
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let answer: Value = r.json().await.unwrap();
        assert_eq!(answer["error"]["code"], code, "{body}: {answer}");
    }
    let r = put(
        &server,
        "s",
        &json!({"greeting": "x".repeat(64 * 1024 + 1)}),
    )
    .await;
    assert_eq!(r.status(), 400, "over the text limit");
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["error"]["fields"]["greeting"],
        "at most 65536 bytes of text are accepted"
    );
    let r = put(&server, "nobody", &json!({})).await;
    assert_eq!(r.status(), 404);

    // Good values: stored, and the plugin starts with them, defaults filled in.
    let mut events = server.events().await;
    let r = put(
        &server,
        "s",
        &json!({"endpoint": "https://example.net", "retries": 2.5, "verbose": true,
                "mode": "fast"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let info: Value = r.json().await.unwrap();
    assert_eq!(info["id"], "s");
    assert_eq!(
        info["settings"][5]["value"], "https://example.net",
        "{info}"
    );
    events.wait_plugin("s", "started").await;
    let (got, _) = plugin_view(&server).await;
    assert_eq!(
        got,
        json!({"greeting": "Hello", "retries": 2.5, "verbose": true, "mode": "fast",
               "endpoint": "https://example.net"})
    );
    assert!(server.plugin("s").await["last_error"].is_null());
    server.stop().await;
}

#[tokio::test]
async fn a_plugin_without_live_settings_restarts_with_them() {
    let env = Env::new();
    install_settings_plugin(&env, "settings", Some("e"));
    let server = Server::start(&env, &[]).await;
    server.wait_running(&["s"]).await;
    let (_, pid) = plugin_view(&server).await;

    let mut events = server.events().await;
    let r = put(&server, "s", &json!({"greeting": "Howdy"})).await;
    assert_eq!(r.status(), 200);
    let changed = events.wait_plugin("s", "settings_changed").await;
    assert_eq!(
        changed["reason"],
        "greeting changed; restarted to apply them"
    );
    events.wait_plugin("s", "started").await;
    let (got, new_pid) = plugin_view(&server).await;
    assert_ne!(new_pid, pid, "restarted");
    assert_eq!(got["greeting"], "Howdy");
    server.stop().await;
}

#[tokio::test]
async fn hello_python_greets_with_a_new_greeting_without_a_restart_and_keeps_its_token_secret() {
    let env = Env::new();
    env.install_python_example();
    let server = Server::start(&env, &[]).await;
    server.wait_running(&["hello-python"]).await;
    let before = server.plugin("hello-python").await;
    let r = server.get("/plugins/hello-python/").await;
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["message"], "Hello from Python!");

    let mut events = server.events().await;
    let r = put(
        &server,
        "hello-python",
        &json!({"greeting": "Howdy", "api_token": SECRET}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let answer = r.text().await.unwrap();
    assert!(!answer.contains(SECRET), "{answer}");
    let info: Value = serde_json::from_str(&answer).unwrap();
    let token = &info["settings"][1];
    assert_eq!(token["name"], "api_token");
    assert_eq!(token["set"], true, "{info}");
    assert!(token.get("value").is_none(), "{info}");
    let changed = events.wait_plugin("hello-python", "settings_changed").await;
    assert_eq!(
        changed["reason"],
        "api_token, greeting changed; applied while it runs"
    );

    // The plugin says when it applied them; then it greets with the new word, same process.
    let log = env.logs().join("plugins/hello-python.log");
    wait_file_contains(&log, "greeting is now 'Howdy'").await;
    let body: Value = server
        .get("/plugins/hello-python/")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["message"], "Howdy from Python!");
    let settings: Value = server
        .get("/plugins/hello-python/settings")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(settings["api_token"], "set", "the plugin has it");
    let after = server.plugin("hello-python").await;
    assert_eq!(after["pid"], before["pid"], "no restart");
    assert_eq!(after["restarts"], 0);

    // Clearing the secret: a blank value removes it.
    let r = put(&server, "hello-python", &json!({"api_token": ""})).await;
    assert_eq!(r.status(), 200);
    let info: Value = r.json().await.unwrap();
    assert_eq!(info["settings"][1]["set"], false, "{info}");
    wait_file_contains(&log, "api_token is not set").await;

    // Nowhere in the API, the events or the logs; in config.json only, private to its owner.
    for path in [
        "/api/plugins",
        "/api/plugins/hello-python",
        "/api/plugins/hello-python/events",
        "/api/plugins/hello-python/logs?page_size=1000",
    ] {
        let text = server.get(path).await.text().await.unwrap();
        assert!(!text.contains(SECRET), "{path}: {text}");
    }
    server.stop().await;
    let config = env.plugins().join(".metadata/config.json");
    // Cleared above; the file was rewritten without it.
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("Howdy") && !text.contains(SECRET), "{text}");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&config).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "config.json is {mode:o}");
    assert_nowhere(env.dir.path(), SECRET, &[]);
}

#[tokio::test]
async fn a_stored_secret_is_in_config_json_only() {
    let env = Env::new();
    env.install_python_example();
    let server = Server::start(&env, &[]).await;
    server.wait_running(&["hello-python"]).await;
    let mut events = server.events().await;
    let r = put(&server, "hello-python", &json!({"api_token": SECRET})).await;
    assert_eq!(r.status(), 200);
    let event = events
        .wait_for("the settings_changed event", |kind, e| {
            kind == "plugin" && e["kind"] == "settings_changed"
        })
        .await;
    assert!(!event.to_string().contains(SECRET), "{event}");
    wait_file_contains(
        &env.logs().join("plugins/hello-python.log"),
        "api_token is set",
    )
    .await;
    // A restart sends it again in `init`.
    let r = server.post("/api/plugins/hello-python/disable").await;
    assert_eq!(r.status(), 200);
    let r = server.post("/api/plugins/hello-python/enable").await;
    assert_eq!(r.status(), 200);
    server.wait_running(&["hello-python"]).await;
    let settings: Value = server
        .get("/plugins/hello-python/settings")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(settings["api_token"], "set");
    server.stop().await;
    let config = env.plugins().join(".metadata/config.json");
    assert!(std::fs::read_to_string(&config).unwrap().contains(SECRET));
    assert_nowhere(env.dir.path(), SECRET, &[config.as_path()]);
}

/// Fails when `needle` is in any file under `dir` but those in `except`: the plugins' and the
/// supervisor's logs, the server's own log, the database.
fn assert_nowhere(dir: &Path, needle: &str, except: &[&Path]) {
    let mut stack = vec![dir.to_owned()];
    let mut looked = Vec::new();
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() && !except.contains(&path.as_path()) {
                let bytes = std::fs::read(&path).unwrap();
                let found = bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
                assert!(!found, "the secret is in {}", path.display());
                looked.push(path);
            }
        }
    }
    for must in [
        "server.log",
        "plugin-supervisor.log",
        "hello-python.log",
        "toru.redb",
    ] {
        assert!(
            looked.iter().any(|p| p.ends_with(must)),
            "{must} was looked in: {looked:?}"
        );
    }
}

#[tokio::test]
async fn the_license_route_is_the_license_key_setting() {
    let env = Env::new();
    install_settings_plugin(&env, "settings", Some("e"));
    let server = Server::start(&env, &[]).await;
    server.wait_running(&["s"]).await;
    // `s` takes no license key: refused, naming the field.
    let r = server
        .req(Method::PUT, "/api/plugins/s/license")
        .json(&json!({"license_key": "toru1.x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_settings", "{body}");
    assert!(
        body["error"]["fields"]["license_key"]
            .as_str()
            .unwrap()
            .contains("is not a setting of this plugin"),
        "{body}"
    );
    server.stop().await;
}
