//! How long the host takes to report a plugin stopped at its memory limit: a plugin grows until
//! the kernel kills it (the OOM killer in its cgroup, or a failed allocation under an rlimit),
//! and the time from its death (its pidfd turning readable, watched here) to the `crashed`
//! event that names the limit (recorded durably in redb before it is sent). Median over 30
//! kills, for the containment the machine offers and for the rlimit fallback (a PID namespace).
//!
//! `cargo bench -p toru-benches --bench limit_detect`

use std::time::{Duration, Instant};

use tokio::sync::broadcast::Receiver;
use toru_host::{
    Bytes, Containment, EventKind, Limit, LimitKind, Limits, PluginEvent, PluginHost,
    PluginRequest, RestartPolicy,
};

const KILLS: usize = 30;
const ID: &str = "hog";

async fn next(rx: &mut Receiver<PluginEvent>, kind: EventKind) -> PluginEvent {
    let wait = async {
        loop {
            if let Ok(e) = rx.recv().await
                && e.plugin_id == ID
                && e.kind == kind
            {
                return e;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .unwrap_or_else(|_| panic!("no {kind} event"))
}

/// When process `pid` dies, by its pidfd.
async fn death(pid: u32) -> Instant {
    let fd = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::PidfdFlags::empty(),
    )
    .expect("pidfd");
    #[allow(deprecated)]
    let fd = tokio::io::unix::AsyncFd::with_interest(fd, tokio::io::Interest::READABLE).unwrap();
    let _ready = fd.readable().await.unwrap();
    Instant::now()
}

async fn measure(containment: Option<Containment>) {
    let dir = tempfile::Builder::new()
        .prefix("lb")
        .tempdir_in("/tmp")
        .unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_hog-plugin"), plugins.join("hog.binary")).unwrap();
    let mut builder = PluginHost::builder();
    builder
        .plugin_dir(&plugins)
        .data_dir(dir.path().join("data"))
        .log_dir(dir.path().join("logs"))
        .socket_dir(dir.path())
        .default_limits(Limits::default().with_memory(Limit::At(Bytes(64 << 20))))
        .restart_policy(
            RestartPolicy::default()
                .with_initial_delay(Duration::from_millis(1))
                .with_max_delay(Duration::from_millis(1))
                .with_max_consecutive_crashes(u32::MAX)
                .with_reset_after(Duration::from_secs(3600)),
        );
    if let Some(c) = containment {
        builder.containment(c);
    }
    let host = builder.start().await.unwrap();
    let mut rx = host.subscribe();
    let mut samples = Vec::with_capacity(KILLS);
    for _ in 0..KILLS {
        if !host.get(ID).unwrap().state.serves() {
            next(&mut rx, EventKind::Started).await;
        }
        let pid = host.get(ID).unwrap().pid.unwrap();
        let died = tokio::spawn(death(pid));
        let grow = tokio::spawn({
            let host = host.clone();
            async move { host.request_by_path(&PluginRequest::get("/hog/grow")).await }
        });
        let crash = next(&mut rx, EventKind::Crashed).await;
        let reported = Instant::now();
        assert_eq!(crash.limit, Some(LimitKind::Memory), "{crash:?}");
        let _ = grow.await;
        samples.push(reported.saturating_duration_since(died.await.unwrap()));
    }
    let info = host.get(ID).unwrap();
    host.shutdown().await;
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{} ({:?} enforces memory): kill to `crashed` over {KILLS} memory-limit kills: median {:.2} ms, p90 {:.2} ms, min {:.2} ms, max {:.2} ms",
        host.containment(),
        info.limits_enforced_by.map(|e| e.memory),
        ms(samples[KILLS / 2]),
        ms(samples[KILLS * 9 / 10]),
        ms(samples[0]),
        ms(samples[KILLS - 1]),
    );
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; a plain `cargo test` run of benches passes nothing.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    measure(None).await;
    measure(Some(Containment::PidNamespace)).await;
}
