//! Calls to plugins: forwarding HTTP requests and fetching bundles.

use std::time::Duration;

use toru_plugin_api::protocol::{Payload, error_code, now_millis};

use crate::builder::PluginHostBuilder;
use crate::connection::{CallFailure, Leased, Reply};
use crate::error::CallError;
use crate::request::{PluginRequest, PluginResponse};
use crate::state::PluginState;

use super::PluginHost;

impl PluginHost {
    /// Forwards an HTTP request to plugin `id` and waits for its response, up to the request
    /// timeout (then the plugin is sent `cancel`, as it is when the caller stops waiting).
    ///
    /// # Errors
    /// [`CallError`] tells an unknown plugin from a disabled one, one that is not running, a
    /// timeout and the plugin's own error.
    pub async fn request(
        &self,
        id: &str,
        request: &PluginRequest,
    ) -> Result<PluginResponse, CallError> {
        let conn = self.connection(id)?;
        let payload = Payload::HttpRequest(request.to_protocol());
        match conn
            .call(payload, self.shared.settings.request_timeout)
            .await
        {
            Ok(Reply::Http(response)) => Ok(response),
            other => Err(self.call_error(id, other)),
        }
    }

    /// The id of the plugin whose route is the first segment of `path` (`/acme/certificate`
    /// belongs to the plugin with route `/acme`).
    pub fn route_owner(&self, path: &str) -> Option<String> {
        let segment = path.trim_start_matches('/').split('/').next()?;
        self.shared
            .registry()
            .by_route(segment)
            .and_then(|e| e.metadata().map(|m| m.id.clone()))
    }

    /// Forwards a request to the plugin that owns its path; the plugin receives the full path.
    ///
    /// # Errors
    /// [`CallError::UnknownPlugin`] when no plugin owns the path, else as [`request`](Self::request).
    pub async fn request_by_path(
        &self,
        request: &PluginRequest,
    ) -> Result<PluginResponse, CallError> {
        let id = self
            .route_owner(&request.path)
            .ok_or_else(|| CallError::UnknownPlugin(request.path.clone()))?;
        self.request(&id, request).await
    }

    /// The plugin's frontend bundle (a JavaScript module).
    ///
    /// # Errors
    /// As [`request`](Self::request); a plugin without a bundle answers
    /// [`CallError::Plugin`] with code `not_found`.
    pub async fn bundle(&self, id: &str) -> Result<String, CallError> {
        let conn = self.connection(id)?;
        let has_frontend = self
            .shared
            .registry()
            .plugins
            .get(id)
            .and_then(|e| e.metadata().map(|m| m.frontend))
            .unwrap_or(false);
        if !has_frontend {
            // Its metadata says there is none: no need to ask (and wait on) the plugin.
            return Err(CallError::Plugin {
                id: id.to_owned(),
                code: error_code::NOT_FOUND.into(),
                message: "the plugin has no frontend bundle".into(),
            });
        }
        match conn
            .call(Payload::GetBundle, self.shared.settings.request_timeout)
            .await
        {
            Ok(Reply::Bundle(script)) => Ok(script),
            other => Err(self.call_error(id, other)),
        }
    }

    /// The connection to a plugin that serves requests now, held for one call (an upgrade's old
    /// version finishes it before it stops).
    fn connection(&self, id: &str) -> Result<Leased, CallError> {
        let reg = self.shared.registry();
        if reg.shutting_down {
            return Err(CallError::ShuttingDown);
        }
        let entry = reg
            .plugins
            .get(id)
            .ok_or_else(|| CallError::UnknownPlugin(id.to_owned()))?;
        if entry.found.result.is_err() || !entry.enabled {
            return Err(CallError::Disabled(id.to_owned()));
        }
        match (&entry.conn, entry.state.serves()) {
            (Some(conn), true) => Ok(conn.lease()),
            _ => Err(CallError::NotRunning {
                id: id.to_owned(),
                retry_after: retry_after(&entry.state, &self.shared.settings),
                state: entry.state.clone(),
            }),
        }
    }

    fn call_error(&self, id: &str, result: Result<Reply, CallFailure>) -> CallError {
        let id = id.to_owned();
        match result {
            Ok(Reply::Error { code, message }) => CallError::Plugin { id, code, message },
            Ok(other) => CallError::Plugin {
                id,
                code: error_code::BAD_REQUEST.into(),
                message: format!("plugin answered with an unexpected reply: {other:?}"),
            },
            Err(CallFailure::Timeout) => CallError::Timeout {
                id,
                after: self.shared.settings.request_timeout,
            },
            Err(CallFailure::Closed) => CallError::ConnectionLost(id),
            Err(CallFailure::TooLarge { len, max }) => CallError::TooLarge { len, max },
        }
    }
}

/// When a plugin that is not serving is worth trying again.
fn retry_after(state: &PluginState, settings: &PluginHostBuilder) -> Option<Duration> {
    match state {
        PluginState::BackingOff { next_attempt_ms }
        | PluginState::OutOfResources {
            next_attempt_ms, ..
        } => Some(Duration::from_millis(
            next_attempt_ms.saturating_sub(now_millis()).max(1000),
        )),
        PluginState::Starting | PluginState::Stopping | PluginState::Upgrading { .. } => {
            Some(settings.start_timeout.min(Duration::from_secs(5)))
        }
        _ => None,
    }
}
