//! A host for toru-host's tests that kill the host itself: `toru-test-host <dir>` hosts the
//! plugins in `<dir>/plugins`, prints `ready <pid> <pid> ...` once all of them run, and waits
//! to be killed.

use std::path::PathBuf;

use toru_host::{EventKind, PluginHost};

#[tokio::main]
async fn main() {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .expect("usage: toru-test-host <dir>"),
    );
    let host = PluginHost::builder()
        .plugin_dir(dir.join("plugins"))
        .data_dir(dir.join("data"))
        .log_dir(dir.join("logs"))
        .socket_dir(&dir)
        .start()
        .await
        .expect("host starts");
    let mut events = host.subscribe();
    host.discovered().await;
    loop {
        let plugins = host.list();
        if plugins.iter().all(|p| p.state.serves()) {
            let pids: Vec<String> = plugins
                .iter()
                .filter_map(|p| p.pid.map(|pid| pid.to_string()))
                .collect();
            println!("ready {}", pids.join(" "));
            break;
        }
        match events.recv().await {
            Ok(e) if e.kind == EventKind::Failed || e.kind == EventKind::Crashed => {
                panic!("plugin {} did not start: {:?}", e.plugin_id, e.reason)
            }
            _ => {}
        }
    }
    std::future::pending::<()>().await;
}
