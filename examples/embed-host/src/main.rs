//! An application that embeds `toru-host`: it starts the plugins in a folder, forwards one
//! request to each, reads a value from a plugin's KV namespace, and shuts down cleanly.
//!
//! ```sh
//! embed-host <plugins dir> <data dir>
//! ```

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use toru_host::{PluginHost, PluginRequest};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let mut args = std::env::args_os().skip(1).map(PathBuf::from);
    let (Some(plugins), Some(data)) = (args.next(), args.next()) else {
        bail!("usage: embed-host <plugins dir> <data dir>");
    };

    let host = PluginHost::builder()
        .plugin_dir(&plugins)
        .data_dir(&data) // logs go to <data>/logs
        .start()
        .await
        .context("starting the plugin host")?;
    println!("instance {}", host.instance_id());

    // The host scans its folder in the background: wait until every file there is listed, then
    // until each enabled plugin serves (or say why it does not).
    host.discovered().await;
    for plugin in host.list().into_iter().filter(|p| p.enabled) {
        host.wait_ready(&plugin.id, Duration::from_secs(10))
            .await
            .with_context(|| format!("plugin {} did not start", plugin.id))?;
    }

    for plugin in host.list() {
        let Some(meta) = plugin.metadata else {
            println!(
                "{}: not loaded ({})",
                plugin.id,
                plugin.load_error.unwrap_or_default()
            );
            continue;
        };
        let count = host
            .request(
                &meta.id,
                &PluginRequest::new("POST", format!("{}/count", meta.route)),
            )
            .await
            .with_context(|| format!("counting with {}", meta.id))?;
        let greeting = host
            .request(&meta.id, &PluginRequest::get(format!("{}/", meta.route)))
            .await
            .with_context(|| format!("greeting {}", meta.id))?;
        let counter = host.kv(&meta.id)?.get("counter").await?;
        println!(
            "{}: GET {}/ -> {} {}; count -> {}; kv counter = {}",
            meta.id,
            meta.route,
            greeting.status,
            String::from_utf8_lossy(&greeting.body),
            String::from_utf8_lossy(&count.body),
            counter.as_deref().unwrap_or("(unset)"),
        );
    }

    host.shutdown().await;
    println!("shut down");
    Ok(())
}
