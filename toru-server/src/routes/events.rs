//! `GET /api/events`: the host's lifecycle events as server-sent events, for live updates.
//!
//! Each event is `event: plugin` with the [`PluginEvent`](toru_host::PluginEvent) as JSON data;
//! a client that falls too far behind gets `event: lagged` with `{"skipped": n}` and should
//! reload the list. The stream ends when the server shuts down.

use std::convert::Infallible;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::sse::Event;
use warp::{Filter, Reply};

use super::{State, with_state};

const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub(crate) fn route(state: &State) -> BoxedFilter<(Response,)> {
    warp::path!("events")
        .and(warp::get())
        .and(with_state(state))
        .map(|state: State| stream(&state))
        .boxed()
}

fn stream(state: &State) -> Response {
    // Subscribed before the response goes out: a client that has the headers misses nothing.
    let mut events = state.host.subscribe();
    let shutdown = state.shutdown.clone();
    let (tx, mut rx) = mpsc::channel::<Event>(64);
    tokio::spawn(async move {
        if tx
            .send(Event::default().comment("connected"))
            .await
            .is_err()
        {
            return;
        }
        loop {
            let event = tokio::select! {
                () = shutdown.cancelled() => return,
                () = tx.closed() => return,
                received = events.recv() => match received {
                    Ok(event) => match Event::default().event("plugin").json_data(&event) {
                        Ok(e) => e,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot encode a plugin event");
                            continue;
                        }
                    },
                    Err(RecvError::Lagged(skipped)) => Event::default()
                        .event("lagged")
                        .data(format!("{{\"skipped\":{skipped}}}")),
                    Err(RecvError::Closed) => return,
                },
            };
            if tx.send(event).await.is_err() {
                return;
            }
        }
    });
    let events = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|e| e.map(Ok::<_, Infallible>))
    });
    warp::sse::reply(warp::sse::keep_alive().interval(KEEP_ALIVE).stream(events)).into_response()
}
