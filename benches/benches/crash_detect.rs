//! How long the host takes to notice a crashed plugin: SIGKILL a running plugin, then time
//! until the `crashed` event reaches a subscriber (the event is recorded durably in redb
//! before it is sent, so that write is included). Median over 100 crashes.
//!
//! `cargo bench -p toru-benches --bench crash_detect`

use std::path::Path;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};
use tokio::sync::broadcast::Receiver;
use toru_host::{EventKind, PluginEvent, PluginHost, RestartPolicy};

const CRASHES: usize = 100;
const ID: &str = "hello-python";

async fn next(rx: &mut Receiver<PluginEvent>, kind: EventKind) {
    let wait = async {
        loop {
            if let Ok(e) = rx.recv().await
                && e.plugin_id == ID
                && e.kind == kind
            {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .unwrap_or_else(|_| panic!("no {kind} event"));
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; a plain `cargo test` run of benches passes nothing.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("cb")
        .tempdir_in("/tmp")
        .unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    // The Python example is its script plus the SDK module beside it.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello-plugin-python");
    std::fs::copy(
        example.join("hello-plugin-python.binary"),
        plugins.join("hello-python.binary"),
    )
    .unwrap();
    std::fs::copy(
        example.join("toru_plugin.py"),
        plugins.join("toru_plugin.py"),
    )
    .unwrap();
    let host = PluginHost::builder()
        .plugin_dir(&plugins)
        .data_dir(dir.path().join("data"))
        .log_dir(dir.path().join("logs"))
        .socket_dir(dir.path())
        .restart_policy(
            RestartPolicy::default()
                .with_initial_delay(Duration::from_millis(1))
                .with_max_delay(Duration::from_millis(1))
                .with_max_consecutive_crashes(u32::MAX)
                .with_reset_after(Duration::from_secs(3600)),
        )
        .start()
        .await
        .unwrap();
    let mut rx = host.subscribe();
    host.discovered().await;
    let mut samples = Vec::with_capacity(CRASHES);
    for _ in 0..CRASHES {
        if !host.get(ID).unwrap().state.serves() {
            next(&mut rx, EventKind::Started).await;
        }
        let pid = host.get(ID).unwrap().pid.unwrap();
        let t0 = Instant::now();
        kill_process(Pid::from_raw(pid as i32).unwrap(), Signal::KILL).unwrap();
        next(&mut rx, EventKind::Crashed).await;
        samples.push(t0.elapsed());
    }
    host.shutdown().await;
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "crash to `crashed` event over {CRASHES} SIGKILLs: median {:.2} ms, p90 {:.2} ms, min {:.2} ms, max {:.2} ms",
        ms(samples[CRASHES / 2]),
        ms(samples[CRASHES * 9 / 10]),
        ms(samples[0]),
        ms(samples[CRASHES - 1]),
    );
}
