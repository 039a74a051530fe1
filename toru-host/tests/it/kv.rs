//! KV through real plugins: counting, isolation, persistence (T9-T11, T18).

use toru_host::EventKind;
use toru_host::{PluginHost, PluginRequest};

use crate::util::*;

async fn count(host: &PluginHost, id: &str, route: &str) -> u64 {
    let resp = host
        .request(id, &PluginRequest::new("POST", format!("{route}/count")))
        .await
        .unwrap();
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    v["count"].as_u64().unwrap()
}

#[tokio::test]
async fn counters_are_per_plugin_and_survive_a_host_restart() {
    let env = Env::new();
    env.install_rust_example();
    env.install_python_example();
    for round in 0..2u64 {
        let host = env.start().await;
        let mut rx = host.subscribe();
        for id in ["hello-rust", "hello-python"] {
            if !host.get(id).unwrap().state.serves() {
                wait_event(&mut rx, id, EventKind::Started).await;
            }
        }
        // Both plugins use the key "counter"; each sees only its own.
        assert_eq!(
            count(&host, "hello-rust", "/hello-rust").await,
            1 + round * 3
        );
        assert_eq!(
            count(&host, "hello-rust", "/hello-rust").await,
            2 + round * 3
        );
        assert_eq!(
            count(&host, "hello-python", "/hello-python").await,
            1 + round
        );
        assert_eq!(
            count(&host, "hello-rust", "/hello-rust").await,
            3 + round * 3
        );
        assert_eq!(
            host.kv("hello-rust")
                .unwrap()
                .get("counter")
                .await
                .unwrap()
                .as_deref(),
            Some(&*(3 + round * 3).to_string())
        );
        host.shutdown().await;
    }
}

#[tokio::test]
async fn concurrent_counts_are_all_distinct() {
    let env = Env::new();
    env.install_python_example();
    let host = env.start().await;
    serving(&host, &["hello-python"]).await;
    let counts = futures_util::future::join_all(
        (0..50).map(|_| count(&host, "hello-python", "/hello-python")),
    )
    .await;
    let mut sorted = counts.clone();
    sorted.sort();
    assert_eq!(sorted, (1..=50).collect::<Vec<u64>>());
    host.shutdown().await;
}
