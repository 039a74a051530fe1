//! The requests whose handler is running, and the task that runs one.
//!
//! A handler removes its own entry before it replies, and `cancel` removes the entry before it
//! aborts the task, both under one lock: so a cancelled request never gets a reply, and a reply
//! already sent is never followed by an abort.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures_util::FutureExt as _;
use tokio::task::{AbortHandle, JoinSet};

use super::context::{Link, PluginContext};
use super::http::Request;
use super::plugin::ToruPlugin;
use crate::protocol::{Message, Payload, RequestId, error_code};

/// The running handlers, by the host's request id.
#[derive(Debug, Clone, Default)]
pub(crate) struct InFlight(Arc<Mutex<HashMap<RequestId, AbortHandle>>>);

impl InFlight {
    /// Runs `plugin`'s handler for request `id` as a task in `tasks`. Returns false, and runs
    /// nothing, when a request with that id is already in flight.
    pub(crate) fn spawn<P: ToruPlugin>(
        &self,
        tasks: &mut JoinSet<()>,
        id: RequestId,
        plugin: Arc<P>,
        ctx: PluginContext,
        req: Request,
        link: Arc<Link>,
    ) -> bool {
        let mut map = self.lock();
        if map.contains_key(&id) {
            return false;
        }
        let task = handle(plugin, ctx, req, id, link, self.clone());
        // Spawned under the lock, so the handler cannot look for its entry before it exists.
        map.insert(id, tasks.spawn(task));
        true
    }

    /// Stops request `id`'s handler unless it has replied already. Either way, nothing more is
    /// sent for it.
    pub(crate) fn cancel(&self, id: RequestId) {
        if let Some(handle) = self.lock().remove(&id) {
            handle.abort();
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<RequestId, AbortHandle>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Runs one handler and sends its reply, unless a `cancel` came first. A panic becomes an
/// `error` reply with code `plugin_error`.
async fn handle<P: ToruPlugin>(
    plugin: Arc<P>,
    ctx: PluginContext,
    req: Request,
    id: RequestId,
    link: Arc<Link>,
    in_flight: InFlight,
) {
    let outcome = AssertUnwindSafe(plugin.handle_http(&ctx, req))
        .catch_unwind()
        .await;
    let reply = match outcome {
        Ok(res) => Message::with_id(id, Payload::HttpResponse(res.into_wire())),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let text = format!("the handler panicked: {what}");
            Message::error(Some(id), error_code::PLUGIN_ERROR, text)
        }
    };
    let mut map = in_flight.lock();
    if map.remove(&id).is_some() {
        link.send(reply);
    }
}
