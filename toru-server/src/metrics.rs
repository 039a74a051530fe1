//! Prometheus metrics: per-plugin requests and latency, recorded as requests pass, and restarts
//! and state, read from the host when `/metrics` is scraped.

use std::collections::HashMap;
use std::sync::{OnceLock, PoisonError, RwLock};
use std::time::Duration;

use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use toru_host::PluginInfo;

const REQUESTS: &str = "toru_plugin_requests_total";
const DURATION: &str = "toru_plugin_request_duration_seconds";
const RESTARTS: &str = "toru_plugin_restarts_total";
const STATE: &str = "toru_plugin_state";
const UP: &str = "toru_plugin_up";

const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The process-wide recorder's handle, installed on first use.
pub(crate) fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(DURATION.into()), BUCKETS)
            .expect("the bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
        }
        metrics::describe_counter!(REQUESTS, "Requests forwarded to each plugin, by status.");
        metrics::describe_histogram!(
            DURATION,
            metrics::Unit::Seconds,
            "Time from receiving a plugin request to having its response."
        );
        metrics::describe_counter!(RESTARTS, "Restarts of each plugin after crashes.");
        metrics::describe_gauge!(STATE, "1 for each plugin's current state, else 0.");
        metrics::describe_gauge!(UP, "1 when the plugin serves requests, else 0.");
        handle
    })
}

/// One plugin's request metrics, registered once: looking a metric up by name and labels on
/// every request would allocate its key each time.
struct PluginMetrics {
    duration: Histogram,
    by_status: RwLock<HashMap<u16, Counter>>,
}

fn plugin_metrics() -> &'static RwLock<HashMap<String, PluginMetrics>> {
    static CACHE: OnceLock<RwLock<HashMap<String, PluginMetrics>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// Records one forwarded request (only for known plugins, so labels stay bounded).
pub(crate) fn record_request(plugin: &str, status: u16, elapsed: Duration) {
    let cache = plugin_metrics();
    let plugins = cache.read().unwrap_or_else(PoisonError::into_inner);
    let Some(metrics) = plugins.get(plugin) else {
        drop(plugins);
        cache
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(plugin.to_owned())
            .or_insert_with(|| PluginMetrics {
                duration: metrics::histogram!(DURATION, "plugin" => plugin.to_owned()),
                by_status: RwLock::default(),
            });
        return record_request(plugin, status, elapsed);
    };
    metrics.duration.record(elapsed.as_secs_f64());
    let counters = metrics
        .by_status
        .read()
        .unwrap_or_else(PoisonError::into_inner);
    match counters.get(&status) {
        Some(counter) => counter.increment(1),
        None => {
            drop(counters);
            let counter = metrics::counter!(
                REQUESTS,
                "plugin" => plugin.to_owned(),
                "status" => status.to_string()
            );
            counter.increment(1);
            metrics
                .by_status
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(status, counter);
        }
    }
}

/// Drains recorded samples into their histograms now and then, so that memory stays bounded
/// between scrapes. Ends with `shutdown`.
pub(crate) fn spawn_upkeep(shutdown: tokio_util::sync::CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = tick.tick() => handle().run_upkeep(),
                () = shutdown.cancelled() => return,
            }
        }
    });
}

/// The Prometheus text for every plugin in `plugins` and the requests seen so far.
pub(crate) fn render(plugins: &[PluginInfo]) -> String {
    let handle = handle();
    for info in plugins {
        let id = info.id.clone();
        metrics::counter!(RESTARTS, "plugin" => id.clone()).absolute(u64::from(info.restarts));
        metrics::gauge!(UP, "plugin" => id.clone()).set(f64::from(u8::from(info.state.serves())));
        let current = info.state.name();
        for state in toru_host::PluginState::NAMES {
            let value = f64::from(u8::from(*state == current));
            metrics::gauge!(STATE, "plugin" => id.clone(), "state" => *state).set(value);
        }
    }
    handle.run_upkeep();
    handle.render()
}
