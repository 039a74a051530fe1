//! The requests whose handler is running, and the task that runs one.
//!
//! A handler removes its own entry before it sends its last frame (the whole reply, a
//! response's `END`, a `ws_close`), and `cancel` removes the entry before it aborts the task,
//! both under one lock: so a cancelled request never gets its end, and an end already sent is
//! never followed by an abort. The entry also holds the request's [`Stream`] (protocol 2), once
//! it has one, so the reader can route data frames, `credit` and `ws_close` to it.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures_util::FutureExt as _;
use tokio::task::{AbortHandle, JoinSet};

use super::context::PluginContext;
use super::link::Link;
use super::plugin::ToruPlugin;
use super::request::Request;
use super::respond::{Responder, panic_text, respond};
use super::stream::{Ended, Stream};
use crate::protocol::{Message, RequestId, error_code};

/// The most requests the plugin runs at once; the host keeps far fewer streams open (2048 by
/// default), so this only stops a host gone wrong from growing the plugin without limit.
pub(crate) const MAX_IN_FLIGHT: usize = 16_384;

#[derive(Debug)]
struct Entry {
    abort: AbortHandle,
    stream: Option<Arc<Stream>>,
}

/// Why a request was not started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// A request with that id is in flight already.
    Duplicate,
    /// [`MAX_IN_FLIGHT`] requests are in flight.
    TooMany,
}

/// The running handlers, by the host's request id.
#[derive(Debug, Clone, Default)]
pub(crate) struct InFlight(Arc<Mutex<HashMap<RequestId, Entry>>>);

impl InFlight {
    /// Runs `task` for request `id` in `tasks`, with the request's `stream` if it has one.
    ///
    /// # Errors
    /// [`Refused`], and nothing runs, when the id is in flight already or too many are.
    pub(crate) fn spawn(
        &self,
        tasks: &mut JoinSet<()>,
        id: RequestId,
        stream: Option<Arc<Stream>>,
        task: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Refused> {
        let mut map = self.lock();
        if map.contains_key(&id) {
            return Err(Refused::Duplicate);
        }
        if map.len() >= MAX_IN_FLIGHT {
            return Err(Refused::TooMany);
        }
        // Spawned under the lock, so the handler cannot look for its entry before it exists.
        let abort = tasks.spawn(task);
        map.insert(id, Entry { abort, stream });
        Ok(())
    }

    /// Stops request `id`'s handler unless it has ended already. Either way, nothing more is
    /// sent for it.
    pub(crate) fn cancel(&self, id: RequestId) {
        let entry = self.lock().remove(&id);
        if let Some(entry) = entry {
            entry.abort.abort();
            if let Some(stream) = entry.stream {
                stream.end(Ended::Cancelled);
            }
        }
    }

    /// Request `id`'s stream, if it is in flight and has one.
    pub(crate) fn stream(&self, id: RequestId) -> Option<Arc<Stream>> {
        self.lock().get(&id).and_then(|e| e.stream.clone())
    }

    /// Request `id`'s stream, made now if it has none yet; `None` when it is no longer in flight
    /// (it was cancelled).
    pub(crate) fn attach(&self, id: RequestId, link: &Arc<Link>) -> Option<Arc<Stream>> {
        let mut map = self.lock();
        let entry = map.get_mut(&id)?;
        let stream = entry
            .stream
            .get_or_insert_with(|| Stream::new(id, link.clone(), false));
        Some(stream.clone())
    }

    /// Removes request `id`'s entry. Returns whether it was there: false when a `cancel` came
    /// first, and then nothing more may be sent for it.
    pub(crate) fn finish(&self, id: RequestId) -> bool {
        self.lock().remove(&id).is_some()
    }

    /// Ends every stream: the connection is gone, so producers that outlive their handler
    /// (moved to a task of their own) stop at their next send.
    pub(crate) fn end_all(&self) {
        let streams: Vec<_> = self.lock().drain().filter_map(|(_, e)| e.stream).collect();
        for stream in streams {
            stream.end(Ended::Cancelled);
        }
    }

    /// Every WebSocket still open.
    pub(crate) fn websockets(&self) -> Vec<Arc<Stream>> {
        self.lock()
            .values()
            .filter_map(|e| e.stream.clone())
            .filter(|s| s.is_websocket())
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<RequestId, Entry>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One request for [`handle`].
pub(crate) struct Call<P> {
    pub(crate) plugin: Arc<P>,
    pub(crate) ctx: PluginContext,
    pub(crate) req: Request,
    pub(crate) id: RequestId,
    pub(crate) link: Arc<Link>,
    pub(crate) in_flight: InFlight,
}

/// Runs one handler and sends its response, unless a `cancel` came first. A handler's
/// [`HttpError`](super::HttpError) becomes its JSON response (logged when it is a 5xx); a panic
/// becomes an `error` reply with code `plugin_error`.
///
/// Not an `async fn`, which would hold `call` twice in the state of the task every request
/// spawns.
pub(crate) fn handle<P: ToruPlugin>(call: Call<P>) -> impl Future<Output = ()> + Send {
    let Call {
        plugin,
        ctx,
        req,
        id,
        link,
        in_flight,
    } = call;
    async move {
        let head_only = req.method == "HEAD";
        let outcome = AssertUnwindSafe(plugin.handle_http(&ctx, req))
            .catch_unwind()
            .await;
        let res = match outcome {
            Ok(Ok(res)) => res,
            Ok(Err(e)) => {
                if e.status() >= 500 {
                    ctx.error(format!("request {id} failed: {e}"));
                }
                e.into_response()
            }
            Err(panic) => {
                let text = format!("the handler panicked: {}", panic_text(&*panic));
                if in_flight.finish(id) {
                    link.send(&Message::error(Some(id), error_code::PLUGIN_ERROR, text))
                        .await;
                }
                return;
            }
        };
        let responder = Responder {
            id,
            link,
            in_flight,
            ctx,
            head_only,
        };
        respond(res, responder).finish().await;
    }
}
