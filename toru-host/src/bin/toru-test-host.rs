//! A host for toru-host's tests that need a process of their own.
//!
//! - `toru-test-host <dir> [containment]` hosts the plugins in `<dir>/plugins` (contained as
//!   asked, or as the machine allows), prints `ready <containment> <pid> <pid> ...` once all of
//!   them run, and waits to be killed.
//! - `toru-test-host <dir> exhaust` runs out of file descriptors for real: it hosts the one
//!   plugin in `<dir>/plugins`, fills its descriptor table, kills the plugin, and prints what
//!   the restart did: `out_of_resources <reason>` once a start failed for want of descriptors
//!   (then it frees them), `recovered <consecutive crashes> <restarts>` once the plugin runs
//!   again.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::broadcast;
use toru_host::{EventKind, PluginEvent, PluginHost, RestartPolicy};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .expect("usage: toru-test-host <dir> [exhaust | <containment>]"),
    );
    let second = args.next();
    let exhaust = second.as_deref() == Some("exhaust");
    if exhaust {
        // A small table, so that filling it takes a few hundred files, not a million.
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        rustix::process::setrlimit(
            rustix::process::Resource::Nofile,
            rustix::process::Rlimit {
                current: Some(256),
                maximum: limit.maximum,
            },
        )
        .expect("lower RLIMIT_NOFILE");
    }
    let mut builder = PluginHost::builder();
    builder
        .plugin_dir(dir.join("plugins"))
        .data_dir(dir.join("data"))
        .log_dir(dir.join("logs"))
        .socket_dir(&dir)
        .watch_plugins(!exhaust);
    if let Some(containment) = second.as_deref().filter(|_| !exhaust) {
        builder.containment(containment.parse().expect("a containment"));
    }
    if exhaust {
        // Time for this process to fill its table again after the crash frees a few.
        builder.restart_policy(
            RestartPolicy::default()
                .with_initial_delay(Duration::from_secs(1))
                .with_max_delay(Duration::from_secs(1)),
        );
    }
    let host = builder.start().await.expect("host starts");
    let mut events = host.subscribe();
    host.discovered().await;
    loop {
        let plugins = host.list();
        if plugins.iter().all(|p| p.state.serves()) {
            let pids: Vec<String> = plugins
                .iter()
                .filter_map(|p| p.pid.map(|pid| pid.to_string()))
                .collect();
            println!("ready {} {}", host.containment(), pids.join(" "));
            break;
        }
        match events.recv().await {
            Ok(e) if e.kind == EventKind::Failed || e.kind == EventKind::Crashed => {
                panic!("plugin {} did not start: {:?}", e.plugin_id, e.reason)
            }
            _ => {}
        }
    }
    if exhaust {
        run_out_of_descriptors(&host, &mut events).await;
        host.shutdown().await;
        return;
    }
    std::future::pending::<()>().await;
}

/// Opens `/dev/null` until the table is full.
fn fill(hoard: &mut Vec<std::fs::File>) {
    while let Ok(f) = std::fs::File::open("/dev/null") {
        hoard.push(f);
    }
}

async fn next(events: &mut broadcast::Receiver<PluginEvent>, kind: EventKind) -> PluginEvent {
    loop {
        match events.recv().await {
            Ok(e) if e.kind == kind => return e,
            Ok(e) if e.kind == EventKind::Disabled || e.kind == EventKind::Failed => {
                panic!("unexpected: {e:?}")
            }
            Ok(_) => {}
            Err(e) => panic!("event stream: {e}"),
        }
    }
}

async fn run_out_of_descriptors(host: &PluginHost, events: &mut broadcast::Receiver<PluginEvent>) {
    let plugin = host.list().into_iter().next().expect("one plugin");
    let mut hoard = Vec::new();
    fill(&mut hoard);
    let pid = plugin.pid.expect("a running plugin");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).expect("pid"),
        rustix::process::Signal::KILL,
    )
    .expect("kill the plugin");
    next(events, EventKind::Crashed).await;
    // The crash closed the plugin's pipes and socket: take those descriptors too.
    fill(&mut hoard);
    let starved = next(events, EventKind::OutOfResources).await;
    println!(
        "out_of_resources {}",
        starved.reason.unwrap_or_default().replace('\n', " ")
    );
    drop(hoard);
    next(events, EventKind::Started).await;
    let info = host.get(&plugin.id).expect("the plugin");
    println!("recovered {} {}", info.consecutive_crashes, info.restarts);
}
