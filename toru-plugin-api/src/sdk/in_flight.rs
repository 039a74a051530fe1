//! The requests whose handler is running, and how one runs: started on the reading task, and
//! moved to a task of its own only if it has to wait.
//!
//! A handler removes its own entry before it sends its last frame (the whole reply, a
//! response's `END`, a `ws_close`), and `cancel` removes the entry before it aborts the task,
//! both under one lock: so a cancelled request never gets its end, and an end already sent is
//! never followed by an abort. The entry also holds the request's [`Stream`] (protocol 2), once
//! it has one, so the reader can route data frames, `credit` and `ws_close` to it.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Waker};

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
    /// The handler's task, once it has one (a handler that waits).
    abort: Option<AbortHandle>,
    stream: Option<Arc<Stream>>,
}

/// A request's handler, boxed so that one that waits moves to a task of its own as it is.
pub(crate) type Handler = Pin<Box<dyn Future<Output = ()> + Send>>;

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
    /// Admits request `id`, with its `stream` if it has one: from now on `cancel` and data find
    /// it. Its handler is [`start`](Self::start)ed next.
    ///
    /// # Errors
    /// [`Refused`] when the id is in flight already or too many are.
    pub(crate) fn admit(&self, id: RequestId, stream: Option<Arc<Stream>>) -> Result<(), Refused> {
        let mut map = self.lock();
        if map.contains_key(&id) {
            return Err(Refused::Duplicate);
        }
        if map.len() >= MAX_IN_FLIGHT {
            return Err(Refused::TooMany);
        }
        map.insert(
            id,
            Entry {
                abort: None,
                stream,
            },
        );
        Ok(())
    }

    /// Runs request `id`'s handler `task`: polled once here, on the caller's (the reading)
    /// task, and moved to a task of its own in `tasks` only if it has to wait. Most handlers
    /// finish on that first poll, so their reply is made at once, in the reader's batch,
    /// without a task, a wake-up or a hop between threads. A request cancelled since it was
    /// admitted is not started.
    ///
    /// A handler's code up to its first `.await` that waits runs on the reading task: one that
    /// computes for long before that should hand the work to `spawn_blocking`.
    pub(crate) fn start(&self, tasks: &mut JoinSet<()>, id: RequestId, mut task: Handler) {
        if !self.lock().contains_key(&id) {
            return;
        }
        // The first poll gets a waker that does nothing: if the handler waits, its task polls
        // it again at once and registers its own.
        let mut cx = Context::from_waker(Waker::noop());
        if task.as_mut().poll(&mut cx).is_ready() {
            return;
        }
        let abort = tasks.spawn(task);
        // The entry is gone when the handler sent its last frame before it waited (for room
        // in the queue); it has nothing left to cancel then.
        if let Some(entry) = self.lock().get_mut(&id) {
            entry.abort = Some(abort);
        }
    }

    /// Stops request `id`'s handler unless it has ended already. Either way, nothing more is
    /// sent for it.
    pub(crate) fn cancel(&self, id: RequestId) {
        let entry = self.lock().remove(&id);
        if let Some(entry) = entry {
            if let Some(abort) = entry.abort {
                abort.abort();
            }
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
