//! Plugin logs through the host: the right file, JSON lines, queries, rotation (T20-T22).

use toru_host::{EventKind, LogConfig, LogQuery, LogSource, PluginRequest};
use toru_plugin_api::protocol::Level;

use crate::util::*;

#[tokio::test]
async fn plugin_output_and_protocol_logs_reach_its_file_and_the_query() {
    let env = Env::new();
    env.install_python_example();
    let host = env.start().await;
    serving(&host, &["hello-python"]).await;
    // `count` makes the plugin send a protocol `log` message.
    let resp = host
        .request(
            "hello-python",
            &PluginRequest::new("POST", "/hello-python/count"),
        )
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    host.shutdown().await;

    let file = env.logs().join("plugins/hello-python.log");
    let text = std::fs::read_to_string(&file).unwrap();
    for line in text.lines() {
        let entry: toru_host::LogEntry =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(entry.plugin, "hello-python");
    }
    let host = env.start().await;
    let page = host
        .logs("hello-python", &LogQuery::new(0, 100))
        .await
        .unwrap();
    assert!(
        page.entries
            .iter()
            .any(|e| e.source == LogSource::Protocol && e.message.contains("counter is now 1")),
        "{page:?}"
    );
    assert!(
        page.entries.iter().any(|e| e.source == LogSource::Stderr),
        "{page:?}"
    );
    // Newest first.
    let times: Vec<&str> = page.entries.iter().map(|e| e.timestamp.as_str()).collect();
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(times, sorted);
    let warnings = host
        .logs(
            "hello-python",
            &LogQuery::new(0, 100).with_min_level(Level::Warn),
        )
        .await
        .unwrap();
    assert!(warnings.entries.iter().all(|e| e.level >= Level::Warn));
    host.shutdown().await;

    let supervisor = std::fs::read_to_string(env.logs().join("plugin-supervisor.log")).unwrap();
    for action in ["\"spawn\"", "\"started\"", "\"kill\""] {
        assert!(supervisor.contains(action), "no {action} in {supervisor}");
    }
    for line in supervisor.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }
}

#[tokio::test]
async fn fifty_megabytes_of_stderr_do_not_block_the_plugin_and_the_logs_rotate() {
    let env = Env::new();
    env.install_test_plugin("stderr-flood", "flood");
    let mut b = env.builder();
    // 50 MB of logging takes seconds in a debug build; the plugin binds only after it.
    b.start_timeout(std::time::Duration::from_secs(60));
    b.log_config(
        LogConfig::default()
            .with_max_file_bytes(4 << 20)
            .with_max_files(5),
    );
    let host = start_with(&b).await;
    let mut rx = host.subscribe();
    // The plugin writes 50 MB before it binds its socket: it starts only if nothing blocked it.
    if !host.get("flood").unwrap().state.serves() {
        wait_event(&mut rx, "flood", EventKind::Started).await;
    }
    let resp = host
        .request("flood", &PluginRequest::get("/flood/"))
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    host.shutdown().await;
    let dir = env.logs().join("plugins");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("flood.log"))
        .collect();
    assert!(files.len() > 1 && files.len() <= 6, "{files:?}");
    for f in &files {
        let len = std::fs::metadata(dir.join(f)).unwrap().len();
        assert!(len <= 4 << 20, "{f} is {len} bytes");
    }
}
