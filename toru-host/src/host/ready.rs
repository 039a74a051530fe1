//! One call per job: switching a plugin on or off, and waiting until it serves (or has failed,
//! and why).

use std::time::Duration;

use tokio::sync::broadcast::{self, error::RecvError};

use crate::error::{ManageError, lookup};
use crate::events::{EventKind, ExitStatus, PluginEvent};
use crate::state::{PluginInfo, PluginState};

use super::PluginHost;

/// A plugin did not become ready: [`PluginHost::wait_ready`] and
/// [`PluginHost::enable_and_wait`] say why.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotReady {
    /// The plugin cannot be managed: [`ManageError::UnknownPlugin`],
    /// [`ManageError::NotLoadable`], [`ManageError::ShuttingDown`], or (enabling it)
    /// [`ManageError::Config`].
    #[error(transparent)]
    Manage(#[from] ManageError),
    /// The plugin is disabled (by an operator, or by the supervisor after ten crashes in a row,
    /// which a [`Crashed`](Self::Crashed) reports first when it happens during the wait).
    #[error("plugin {0:?} is disabled")]
    Disabled(String),
    /// The plugin's file is gone (it is `missing`); it starts again when its file is back.
    #[error("plugin {0:?} is missing: its file was removed")]
    Missing(String),
    /// The plugin failed and is not restarted until something changes (exit code 78, a refused
    /// `init`, an incompatible protocol).
    #[error("plugin {id:?} failed: {reason}")]
    Failed {
        /// The plugin.
        id: String,
        /// Why, as [`PluginState::Failed`] says.
        reason: String,
    },
    /// The plugin crashed while it was waited for (it is restarted after a delay, or disabled
    /// after ten crashes in a row).
    #[error("plugin {id:?} crashed: {reason}")]
    Crashed {
        /// The plugin.
        id: String,
        /// What happened, as the `crashed` event says.
        reason: String,
        /// How its process ended, when it did.
        exit: Option<ExitStatus>,
        /// Its last lines on stderr.
        stderr_tail: Vec<String>,
    },
    /// The plugin was still not serving when the time was up.
    #[error("plugin {id:?} was not ready within {after:?} ({state})")]
    Timeout {
        /// The plugin.
        id: String,
        /// How long was waited.
        after: Duration,
        /// Its state then.
        state: PluginState,
    },
}

impl NotReady {
    /// The error code clients get (a row of [`HTTP_ERRORS`](crate::HTTP_ERRORS)): a plugin that
    /// is down is `plugin_unavailable` (503), as a request to it would be.
    pub fn code(&self) -> &'static str {
        match self {
            NotReady::Manage(e) => e.code(),
            NotReady::Disabled(_) => "plugin_disabled",
            NotReady::Missing(_)
            | NotReady::Failed { .. }
            | NotReady::Crashed { .. }
            | NotReady::Timeout { .. } => "plugin_unavailable",
        }
    }

    /// The HTTP status for this error (see [`HTTP_ERRORS`](crate::HTTP_ERRORS)).
    pub fn status(&self) -> http::StatusCode {
        lookup(self.code()).status
    }

    /// When the client may try again (`Retry-After`), for the errors that pass.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            NotReady::Manage(e) => e.retry_after(),
            NotReady::Disabled(_) => None,
            _ => Some(Duration::from_secs(1)),
        }
    }

    /// A sentence for the client. A plugin's own failure is the operator's to read, and this
    /// is for operators: the reason is included, as the plugin's details show it.
    pub fn public_message(&self) -> String {
        match self {
            NotReady::Manage(e) => e.public_message(),
            other => other.to_string(),
        }
    }

    /// The JSON error answer for this error (see [`error_response`](crate::error_response)).
    pub fn to_response(&self) -> http::Response<crate::PluginBody> {
        crate::error_response(
            self.status(),
            self.code(),
            &self.public_message(),
            self.retry_after(),
        )
    }
}

impl PluginHost {
    /// Enables (`true`) or disables (`false`) a plugin: [`enable`](Self::enable) or
    /// [`disable`](Self::disable), for a switch in a user interface.
    ///
    /// # Errors
    /// As [`enable`](Self::enable) and [`disable`](Self::disable).
    pub async fn set_enabled(&self, id: &str, enabled: bool) -> Result<PluginInfo, ManageError> {
        if enabled {
            self.enable(id).await
        } else {
            self.disable(id).await
        }
    }

    /// Waits until plugin `id` serves requests, at most `timeout`, and returns it then. A
    /// plugin that serves already returns at once; one that is starting, backing off after a
    /// crash or waiting for resources is waited for through its next start.
    ///
    /// ```no_run
    /// # async fn demo(host: toru_host::PluginHost) -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// host.discovered().await;
    /// match host.wait_ready("hello-rust", Duration::from_secs(10)).await {
    ///     Ok(info) => println!("running as pid {:?}", info.pid),
    ///     Err(e) => println!("not ready: {e}"), // crashed: ..., failed: ..., disabled, ...
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// As soon as the outcome is known: [`NotReady::Crashed`] when it crashes meanwhile (with
    /// the reason, the exit and its last stderr lines), [`NotReady::Failed`],
    /// [`NotReady::Disabled`], [`NotReady::Missing`], [`NotReady::Timeout`] with the state it
    /// is in, and [`NotReady::Manage`] for an unknown plugin, a file that failed to load or a
    /// host shutting down.
    pub async fn wait_ready(&self, id: &str, timeout: Duration) -> Result<PluginInfo, NotReady> {
        // Subscribed before looking: nothing that happens in between is missed.
        let mut events = self.subscribe();
        self.await_ready(id, timeout, &mut events).await
    }

    /// Enables plugin `id` and waits until it serves, at most `timeout` (counted once the
    /// enable is done): [`enable`](Self::enable), then [`wait_ready`](Self::wait_ready), with
    /// nothing missed between the two.
    ///
    /// # Errors
    /// What [`enable`](Self::enable) refuses, as [`NotReady::Manage`]; then as
    /// [`wait_ready`](Self::wait_ready).
    pub async fn enable_and_wait(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<PluginInfo, NotReady> {
        let mut events = self.subscribe();
        self.enable(id).await?;
        self.await_ready(id, timeout, &mut events).await
    }

    async fn await_ready(
        &self,
        id: &str,
        timeout: Duration,
        events: &mut broadcast::Receiver<PluginEvent>,
    ) -> Result<PluginInfo, NotReady> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(outcome) = self.readiness(id) {
                return outcome;
            }
            let received = tokio::select! {
                received = events.recv() => received,
                () = tokio::time::sleep_until(deadline) => {
                    let state = self.get(id).map(|i| i.state).unwrap_or(PluginState::Missing);
                    return Err(NotReady::Timeout { id: id.to_owned(), after: timeout, state });
                }
                () = self.shared.shutdown.cancelled() => {
                    return Err(ManageError::ShuttingDown.into());
                }
            };
            match received {
                Ok(event) if event.plugin_id == id && event.kind == EventKind::Crashed => {
                    return Err(NotReady::Crashed {
                        id: id.to_owned(),
                        reason: event.reason.unwrap_or_else(|| "it crashed".into()),
                        exit: event.exit,
                        stderr_tail: event.stderr_tail,
                    });
                }
                // Anything else: the state says where the plugin is now.
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return Err(ManageError::ShuttingDown.into()),
            }
        }
    }

    /// The outcome of waiting for plugin `id` to be ready, when its state decides it.
    fn readiness(&self, id: &str) -> Option<Result<PluginInfo, NotReady>> {
        let state = {
            let reg = self.shared.registry();
            if reg.shutting_down {
                return Some(Err(ManageError::ShuttingDown.into()));
            }
            let Some(entry) = reg.plugins.get(id) else {
                return Some(Err(ManageError::UnknownPlugin(id.to_owned()).into()));
            };
            if let Err(reason) = &entry.found.result {
                return Some(Err(ManageError::NotLoadable {
                    id: id.to_owned(),
                    reason: reason.to_string(),
                }
                .into()));
            }
            if !entry.enabled {
                return Some(Err(NotReady::Disabled(id.to_owned())));
            }
            entry.state.clone()
        };
        let id = id.to_owned();
        match state {
            s if s.serves() => Some(self.get(&id).map_err(NotReady::from)),
            PluginState::Failed { reason } => Some(Err(NotReady::Failed { id, reason })),
            PluginState::Disabled => Some(Err(NotReady::Disabled(id))),
            PluginState::Missing => Some(Err(NotReady::Missing(id))),
            // Starting, backing off, out of resources, stopping (a restart): its next start
            // decides.
            _ => None,
        }
    }
}
