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

    fn route(
        &self,
        request: Request<Incoming>,
        peer: PeerAddr,
    ) -> Result<impl Future<Output = Response<PluginBody>> + Send + 'static, Request<Incoming>>
    {
        if !is_plugin_path(request.uri().path()) {
            return Err(request);
        }
        Ok(forward(std::sync::Arc::clone(&self.state), request, peer))
    }
}

/// `/plugins` and everything under `/plugins/` (as warp's `path("plugins")` matched them).
fn is_plugin_path(path: &str) -> bool {
    path.strip_prefix(PREFIX)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

async fn forward(state: State, request: Request<Incoming>, peer: PeerAddr) -> Response<PluginBody> {
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
