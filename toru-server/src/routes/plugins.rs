//! `/plugins/<route>/<rest>`: every method forwarded to the plugin whose route is `/<route>`,
//! with the path `/<route>/<rest>`, through [`PluginHost::forward`](toru_host::PluginHost):
//! bodies streamed both ways, WebSocket upgrades, errors, header rules and limits all from the
//! library. Both need the session cookie or the bearer secret, and a state-changing request or
//! an upgrade from another site is refused.
//!
//! The edge serves these itself ([`PluginRoutes`] is its [`Direct`] route), before warp's filter
//! chain: the hot path is hyper's request handed to the library and the library's response
//! handed to hyper, with the checks as plain functions of the headers ([`access::admit`]).

use std::future::Future;
use std::time::Instant;

use hyper::body::Incoming;
use toru_host::http::{Request, Response};
use toru_host::{ForwardedTo, PluginBody};
use tracing::Instrument as _;

use super::{State, access};
use crate::edge::{Direct, PeerAddr};

/// The path prefix of plugin routes.
const PREFIX: &str = "/plugins";

/// The plugin routes, for the edge.
#[derive(Debug, Clone)]
pub(crate) struct PluginRoutes {
    pub(crate) state: State,
}

impl Direct for PluginRoutes {
    type Body = PluginBody;

    fn takes(&self, request: &Request<Incoming>) -> bool {
        is_plugin_path(request.uri().path())
    }

    fn serve(
        &self,
        request: Request<Incoming>,
        peer: PeerAddr,
    ) -> impl Future<Output = Response<PluginBody>> + Send + 'static {
        forward(std::sync::Arc::clone(&self.state), request, peer)
    }
}

/// `/plugins` and everything under `/plugins/` (as warp's `path("plugins")` matched them).
fn is_plugin_path(path: &str) -> bool {
    path.strip_prefix(PREFIX)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The target of the request log lines: warp's, whose trace filter logs every other route, so
/// that one `RUST_LOG` setting (`warp::filters::trace=warn` by default: a line per failed
/// request) covers the plugin routes too.
const TRACE_TARGET: &str = "warp::filters::trace";

/// Forwards one request, logged as warp's trace filter logs the other routes (a `request` span
/// with the client's address, method, path and version; its outcome by status).
fn forward(
    state: State,
    request: Request<Incoming>,
    peer: PeerAddr,
) -> impl Future<Output = Response<PluginBody>> + Send + 'static {
    let span = tracing::info_span!(
        target: TRACE_TARGET,
        "request",
        remote.addr = %peer.0,
        method = %request.method(),
        path = %request.uri().path(),
        version = ?request.version(),
    );
    async move {
        tracing::info!(target: TRACE_TARGET, "processing request");
        let response = admit_and_forward(state, request, peer).await;
        let status = response.status();
        if status.is_success() {
            tracing::info!(target: TRACE_TARGET, status = status.as_u16(), "finished processing with success");
        } else if status.is_server_error() {
            tracing::error!(target: TRACE_TARGET, status = status.as_u16(), "unable to process request (internal error)");
        } else if status.is_client_error() {
            tracing::warn!(target: TRACE_TARGET, status = status.as_u16(), "unable to serve request (client error)");
        } else {
            tracing::info!(target: TRACE_TARGET, status = status.as_u16(), "finished processing with status");
        }
        response
    }
    .instrument(span)
}

async fn admit_and_forward(
    state: State,
    request: Request<Incoming>,
    peer: PeerAddr,
) -> Response<PluginBody> {
    if let Err(refused) = access::admit(&state, request.method(), request.headers(), peer.0).await {
        return refused.into_http().map(PluginBody::full);
    }
    let started = Instant::now();
    let response = state.host.forward(request, PREFIX).await;
    if let Some(to) = response.extensions().get::<ForwardedTo>() {
        crate::metrics::record_request(
            &to.plugin_id,
            response.status().as_u16(),
            started.elapsed(),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_paths_are_the_prefix_and_below() {
        for yes in ["/plugins", "/plugins/", "/plugins/a", "/plugins/a/b?"] {
            assert!(is_plugin_path(yes), "{yes}");
        }
        for no in [
            "/",
            "/pluginsx",
            "/plugin",
            "/api/plugins",
            "/assets/plugins/x",
        ] {
            assert!(!is_plugin_path(no), "{no}");
        }
    }
}
