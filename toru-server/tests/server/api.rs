//! Spec "Plugin API Endpoints" and "Plugin Frontend" (the bundle) through HTTP, plus the live
//! events, instance, health, metrics and the web UI's files.

use reqwest::Method;
use serde_json::Value;

use crate::util::{Env, Server, wait_file_contains};

#[tokio::test]
async fn list_get_and_unknown_plugin() {
    let env = Env::new();
    env.install_examples();
    env.install_file("broken.binary", b"#!/bin/sh\nexit 3\n");
    let server = Server::start(&env, &[]).await;
    server.wait_running(&["hello-rust", "hello-python"]).await;

    let list = server.json("/api/plugins").await;
    let plugins = list["plugins"].as_array().expect("a list");
    let ids: Vec<&str> = plugins.iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 3, "{list}");
    for id in ["hello-rust", "hello-python"] {
        let p = plugins.iter().find(|p| p["id"] == id).expect(id);
        assert_eq!(p["state"], "running", "{p}");
        assert_eq!(p["enabled"], true);
        assert_eq!(p["metadata"]["route"], format!("/{id}"));
        assert_eq!(p["metadata"]["frontend"], true);
        assert!(p["metadata"]["name"].is_string());
    }
    let broken = plugins
        .iter()
        .find(|p| p["load_error"].is_string())
        .unwrap_or_else(|| panic!("the broken file is listed with its load error: {list}"));
    assert!(broken["metadata"].is_null());

    // One plugin's full details.
    let info = server.plugin("hello-rust").await;
    for field in [
        "id",
        "file",
        "metadata",
        "enabled",
        "state",
        "pid",
        "restarts",
        "consecutive_crashes",
        "started_at_ms",
        "uptime_ms",
        "protocol_version",
    ] {
        assert!(!info[field].is_null(), "{field} in {info}");
    }
    assert_eq!(info["metadata"]["author"], "Toru");

    let r = server.get("/api/plugins/nobody").await;
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unknown_plugin", "{body}");

    // A plugin that failed to load cannot be enabled.
    let r = server
        .post(&format!(
            "/api/plugins/{}/enable",
            broken["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_loadable", "{body}");
    server.stop().await;
}

#[tokio::test]
async fn logs_are_paged_newest_first_and_filtered_by_level() {
    let env = Env::new();
    env.install_examples();
    let server = Server::start(&env, &[]).await;
    server.wait_running(&["hello-rust", "hello-python"]).await;
    for id in ["hello-rust", "hello-python"] {
        for _ in 0..5 {
            assert_eq!(
                server.post(&format!("/plugins/{id}/count")).await.status(),
                200
            );
        }
        let file = env.logs().join(format!("plugins/{id}.log"));
        wait_file_contains(&file, "counter is now 5").await;

        let page0 = server
            .json(&format!("/api/plugins/{id}/logs?page=0&page_size=2"))
            .await;
        let entries = page0["entries"].as_array().unwrap();
        assert_eq!(entries.len(), 2, "{page0}");
        assert_eq!(page0["page"], 0);
        assert_eq!(page0["page_size"], 2);
        assert_eq!(page0["has_more"], true);
        assert_eq!(
            entries[0]["message"], "counter is now 5",
            "newest first: {page0}"
        );
        assert_eq!(entries[1]["message"], "counter is now 4", "{page0}");
        assert_eq!(entries[0]["plugin"], id);
        for key in ["timestamp", "level", "source"] {
            assert!(entries[0][key].is_string(), "{key}: {page0}");
        }
        let page1 = server
            .json(&format!("/api/plugins/{id}/logs?page=1&page_size=2"))
            .await;
        assert_eq!(
            page1["entries"][0]["message"], "counter is now 3",
            "{page1}"
        );

        let errors = server
            .json(&format!("/api/plugins/{id}/logs?level=error"))
            .await;
        assert!(
            errors["entries"]
                .as_array()
                .unwrap()
                .iter()
                .all(|e| e["level"] == "error"),
            "{errors}"
        );
    }
    for bad in ["level=loud", "page=abc", "page_size=-1"] {
        let r = server
            .get(&format!("/api/plugins/hello-rust/logs?{bad}"))
            .await;
        assert_eq!(r.status(), 400, "{bad}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "bad_request", "{body}");
    }
    assert_eq!(server.get("/api/plugins/nobody/logs").await.status(), 404);
    server.stop().await;
}

#[tokio::test]
async fn bundles_have_javascript_type_etag_nosniff_and_404_while_disabled() {
    let env = Env::new();
    env.install_examples();
    env.install_test_plugin("serve", "nofront");
    let server = Server::start(&env, &[]).await;
    server
        .wait_running(&["hello-rust", "hello-python", "nofront"])
        .await;
    for id in ["hello-rust", "hello-python"] {
        let path = format!("/api/plugins/{id}/bundle.js");
        let r = server.get(&path).await;
        assert_eq!(r.status(), 200, "{id}");
        let h = r.headers().clone();
        assert_eq!(h["content-type"], "application/javascript; charset=utf-8");
        assert_eq!(h["x-content-type-options"], "nosniff");
        let etag = h["etag"].to_str().unwrap().to_owned();
        assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
        let script = r.text().await.unwrap();
        assert!(script.contains("export function mount"), "{id}: {script}");
        assert!(script.contains("unmount"), "{id}");

        let r = server
            .req(Method::GET, &path)
            .header("If-None-Match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 304, "{id} with its ETag");

        server.post(&format!("/api/plugins/{id}/disable")).await;
        let r = server.get(&path).await;
        assert_eq!(r.status(), 404, "{id}'s bundle while disabled");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "plugin_disabled", "{body}");
    }
    let r = server.get("/api/plugins/nofront/bundle.js").await;
    assert_eq!(r.status(), 404, "a plugin without a frontend");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "no_bundle", "{body}");
    assert_eq!(
        server.get("/api/plugins/nobody/bundle.js").await.status(),
        404
    );
    server.stop().await;
}

#[tokio::test]
async fn events_stream_live_and_are_recorded_per_plugin() {
    let env = Env::new();
    env.install_rust_example();
    let server = Server::start(&env, &[]).await;
    server.wait_running(&["hello-rust"]).await;
    let mut live = server.events().await;
    server.post("/api/plugins/hello-rust/disable").await;
    server.post("/api/plugins/hello-rust/enable").await;
    let mut kinds = Vec::new();
    live.wait_for("hello-rust to start again", |name, e| {
        assert_eq!(name, "plugin");
        kinds.push(e["kind"].as_str().unwrap().to_owned());
        e["kind"] == "started"
    })
    .await;
    assert_eq!(kinds, ["stopped", "disabled", "enabled", "started"]);

    let recorded = server.json("/api/plugins/hello-rust/events").await;
    let kinds: Vec<&str> = recorded["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"started"), "newest first: {recorded}");
    assert!(kinds.contains(&"discovered"), "{recorded}");
    let page = server
        .json("/api/plugins/hello-rust/events?page=0&page_size=2")
        .await;
    assert_eq!(page["events"].as_array().unwrap().len(), 2);
    assert_eq!(server.get("/api/plugins/nobody/events").await.status(), 404);
    server.stop().await;
}

#[tokio::test]
async fn instance_health_metrics_and_the_ui_files() {
    let env = Env::new();
    env.install_rust_example();
    let server = Server::start(&env, &[]).await;
    server.wait_running(&["hello-rust"]).await;

    let instance = server.json("/api/instance").await;
    assert_eq!(
        instance["instance_id"].as_str().unwrap().len(),
        36,
        "{instance}"
    );
    assert!(instance["version"].is_string());

    let r = server.anon(Method::GET, "/healthz").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "ok");

    for _ in 0..3 {
        server.get("/plugins/hello-rust/").await;
    }
    server.get("/plugins/hello-rust/nothing").await;
    let r = server.get("/metrics").await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    for needle in [
        r#"toru_plugin_requests_total{plugin="hello-rust",status="200"} 3"#,
        r#"toru_plugin_requests_total{plugin="hello-rust",status="404"} 1"#,
        r#"toru_plugin_request_duration_seconds_bucket{plugin="hello-rust",le="+Inf"} 4"#,
        r#"toru_plugin_restarts_total{plugin="hello-rust"} 0"#,
        r#"toru_plugin_state{plugin="hello-rust",state="running"} 1"#,
        r#"toru_plugin_state{plugin="hello-rust",state="failed"} 0"#,
        r#"toru_plugin_up{plugin="hello-rust"} 1"#,
    ] {
        assert!(text.contains(needle), "{needle} in\n{text}");
    }

    // The UI: pages with the security headers, files by path, nothing else.
    for path in ["/", "/index.html", "/login"] {
        let r = server.anon(Method::GET, path).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers();
        assert_eq!(h["content-type"], "text/html; charset=utf-8", "{path}");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["referrer-policy"], "no-referrer");
        let etag = h["etag"].to_str().unwrap().to_owned();
        let r = server
            .anon(Method::GET, path)
            .header("If-None-Match", etag)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 304, "{path}");
    }
    for path in ["/assets/no-such-file.js", "/assets/../Cargo.toml"] {
        let r = server.anon(Method::GET, path).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    server.stop().await;
}

/// A plugin that failed to load is listed by its file name, which may need percent-encoding in a
/// path; the dashboard encodes ids with `encodeURIComponent`, and so does this test.
#[tokio::test]
async fn a_plugin_listed_by_a_file_name_that_needs_encoding_is_reachable() {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    /// What `encodeURIComponent` leaves as it is.
    const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'!')
        .remove(b'~')
        .remove(b'*')
        .remove(b'\'')
        .remove(b'(')
        .remove(b')');
    let env = Env::new();
    let name = "broken plugin #1 100%?é.binary";
    env.install_file(name, b"#!/bin/sh\nexit 3\n");
    let server = Server::start(&env, &[]).await;
    let list = server.listed(1).await;
    let id = list["plugins"][0]["id"].as_str().expect("an id").to_owned();
    assert_eq!(id, name, "{list}");
    let encoded = utf8_percent_encode(&id, COMPONENT).to_string();

    let info = server.plugin(&encoded).await;
    assert_eq!(info["id"], name);
    assert!(info["load_error"].is_string(), "{info}");
    for action in ["enable", "disable"] {
        let r = server
            .post(&format!("/api/plugins/{encoded}/{action}"))
            .await;
        assert_eq!(r.status(), 409, "{action}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_loadable", "{body}");
    }
    let logs = server.json(&format!("/api/plugins/{encoded}/logs")).await;
    assert_eq!(logs["entries"], serde_json::json!([]), "{logs}");
    let events = server.json(&format!("/api/plugins/{encoded}/events")).await;
    assert!(events["events"].is_array(), "{events}");
    // Not decoded twice: `%2520` is the id `%20`, which does not exist.
    let r = server.get("/api/plugins/broken%2520plugin").await;
    assert_eq!(r.status(), 404);
    server.stop().await;
}
