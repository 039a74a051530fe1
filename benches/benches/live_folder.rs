//! The live plugins folder, measured with real plugin processes (`toru-test-plugin`) and the
//! host's default settings:
//!
//! 1. time from a new file dropped in the folder to the plugin serving (20 files);
//! 2. 20 upgrades (the file replaced) under continuous load from 4 clients: requests failed,
//!    and time from the replacement to the new version serving;
//! 3. start-up with 200 plugins in the folder: `start()` returning, the first scan done, all
//!    200 serving.
//!
//! ```sh
//! cargo build --release -p toru-host --bins && cargo bench -p toru-benches --bench live_folder
//! ```
//! (`benches/lifecycle/run.sh` does both, then times toru-server itself.)

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;
use toru_host::{EventKind, HealthPolicy, PluginEvent, PluginHost, PluginRequest};

const DROPS: usize = 20;
const UPGRADES: usize = 20;
const PLUGINS: usize = 200;

fn test_plugin() -> PathBuf {
    let exe = std::env::current_exe().expect("bench path");
    // target/release/deps/live_folder-<hash> -> target/release/toru-test-plugin
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("toru-test-plugin");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --release -p toru-host --bins` first",
        bin.display()
    );
    bin
}

fn script(bin: &Path, id: &str, version: &str) -> String {
    format!(
        "#!/bin/sh\nexport TORU_TEST_VERSION='{version}'\nexec '{}' serve {id} \"$@\"\n",
        bin.display()
    )
}

fn install(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, contents).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.join(name);
    std::fs::rename(&tmp, &path).unwrap();
    path
}

fn host_in(dir: &Path) -> toru_host::PluginHostBuilder {
    let mut b = PluginHost::builder();
    b.plugin_dir(dir.join("plugins"))
        .data_dir(dir.join("data"))
        .log_dir(dir.join("logs"))
        .socket_dir(dir)
        .health_policy(HealthPolicy::default().with_interval(Duration::from_secs(3600)));
    b
}

async fn next(rx: &mut broadcast::Receiver<PluginEvent>, id: &str, kind: EventKind) {
    let wait = async {
        loop {
            match rx.recv().await {
                Ok(e) if e.plugin_id == id && e.kind == kind => return,
                Ok(e)
                    if e.plugin_id == id
                        && matches!(
                            e.kind,
                            EventKind::Crashed | EventKind::UpgradeFailed | EventKind::LoadFailed
                        ) =>
                {
                    panic!("{id}: {e:?}")
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("{e}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), wait)
        .await
        .unwrap_or_else(|_| panic!("no {kind} of {id}"));
}

fn summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let n = samples.len();
    println!(
        "{name} over {n}: median {:.0} ms, p90 {:.0} ms, min {:.0} ms, max {:.0} ms",
        ms(samples[n / 2]),
        ms(samples[n * 9 / 10]),
        ms(samples[0]),
        ms(samples[n - 1]),
    );
}

async fn drop_to_serving(bin: &Path) {
    let dir = tempfile::Builder::new()
        .prefix("lf")
        .tempdir_in("/tmp")
        .unwrap();
    let host = host_in(dir.path()).start().await.unwrap();
    host.discovered().await;
    let plugins = dir.path().join("plugins");
    let mut rx = host.subscribe();
    let mut samples = Vec::new();
    for i in 0..DROPS {
        let id = format!("d{i:02}");
        let t0 = Instant::now();
        install(&plugins, &format!("{id}.binary"), &script(bin, &id, "1"));
        next(&mut rx, &id, EventKind::Started).await;
        let resp = host
            .request(&id, &PluginRequest::get(format!("/{id}/")))
            .await;
        assert_eq!(resp.unwrap().status, 200);
        samples.push(t0.elapsed());
    }
    summary("file dropped -> first request answered", samples);
    host.shutdown().await;
}

async fn upgrades_under_load(bin: &Path) {
    let dir = tempfile::Builder::new()
        .prefix("lf")
        .tempdir_in("/tmp")
        .unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    install(&plugins, "up.binary", &script(bin, "up", "1.0.0"));
    let host = host_in(dir.path()).start().await.unwrap();
    let mut rx = host.subscribe();
    host.discovered().await;
    if !host.get("up").unwrap().state.serves() {
        next(&mut rx, "up", EventKind::Started).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (host, stop) = (host.clone(), Arc::clone(&stop));
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    match host.request("up", &PluginRequest::get("/up/x")).await {
                        Ok(r) if r.status == 200 => ok += 1,
                        _ => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let mut samples = Vec::new();
    for n in 1..=UPGRADES {
        let t0 = Instant::now();
        install(
            &plugins,
            "up.binary",
            &script(bin, "up", &format!("1.0.{n}")),
        );
        next(&mut rx, "up", EventKind::Upgraded).await;
        samples.push(t0.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failed) = (0, 0);
    for c in clients {
        let (o, f) = c.await.unwrap();
        ok += o;
        failed += f;
    }
    println!(
        "{UPGRADES} upgrades under load (4 clients): {failed} requests failed of {}",
        ok + failed
    );
    summary("file replaced -> new version serving", samples);
    host.shutdown().await;
}

async fn startup(bin: &Path) {
    let dir = tempfile::Builder::new()
        .prefix("lf")
        .tempdir_in("/tmp")
        .unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    for i in 0..PLUGINS {
        let id = format!("p{i:03}");
        install(&plugins, &format!("{id}.binary"), &script(bin, &id, "1"));
    }
    let t0 = Instant::now();
    let host = host_in(dir.path()).start().await.unwrap();
    let started_at = t0.elapsed();
    let mut rx = host.subscribe();
    let mut running = std::collections::HashSet::new();
    let mut scanned = None;
    let discovered = host.discovered();
    tokio::pin!(discovered);
    while running.len() < PLUGINS {
        tokio::select! {
            () = &mut discovered, if scanned.is_none() => scanned = Some(t0.elapsed()),
            e = rx.recv() => match e {
                Ok(e) if e.kind == EventKind::Started => { running.insert(e.plugin_id); }
                Ok(e) if matches!(e.kind, EventKind::Crashed | EventKind::LoadFailed) => panic!("{e:?}"),
                Ok(_) => {}
                Err(e) => panic!("{e}"),
            },
        }
    }
    let all = t0.elapsed();
    println!(
        "start-up with {PLUGINS} plugins: start() returned after {:.1} ms, first scan done after {:.0} ms, all {PLUGINS} serving after {:.0} ms",
        started_at.as_secs_f64() * 1000.0,
        scanned.unwrap_or(all).as_secs_f64() * 1000.0,
        all.as_secs_f64() * 1000.0,
    );
    host.shutdown().await;
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: then only build.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let bin = test_plugin();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        drop_to_serving(&bin).await;
        upgrades_under_load(&bin).await;
        startup(&bin).await;
    });
}
