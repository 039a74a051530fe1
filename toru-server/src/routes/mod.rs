//! The server's routes. Each handler calls one `PluginHost` method; errors become an
//! [`ApiError`] rejection, which [`error::recover`] turns into status and JSON.
//!
//! | path | module |
//! |---|---|
//! | `/healthz`, `/metrics` | here |
//! | `/api/login`, `/api/logout`, `/api/session` | [`session`] |
//! | `/api/...` | [`api`], [`events`] |
//! | `/plugins/<route>/...` | [`plugins`], served by the edge itself ([`PluginRoutes`]) |
//! | `/`, `/login`, `/assets/...` | [`assets`] |

mod access;
mod api;
mod assets;
mod body;
pub(crate) mod error;
mod events;
mod plugins;
mod session;

use std::convert::Infallible;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use toru_host::PluginHost;
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::auth::Auth;
pub(crate) use access::SESSION_COOKIE;
pub(crate) use error::ApiError;
pub(crate) use plugins::PluginRoutes;

/// What every handler may use.
#[derive(Debug)]
pub(crate) struct AppState {
    pub(crate) host: PluginHost,
    pub(crate) auth: Auth,
    /// The largest request body accepted.
    pub(crate) max_body_bytes: u64,
    /// Whether the session cookie is always `Secure`.
    pub(crate) secure_cookies: bool,
    /// Cancelled when the server starts shutting down (ends event streams).
    pub(crate) shutdown: CancellationToken,
}

pub(crate) type State = Arc<AppState>;

pub(crate) fn with_state(
    state: &State,
) -> impl Filter<Extract = (State,), Error = Infallible> + Clone + use<> {
    let state = Arc::clone(state);
    warp::any().map(move || Arc::clone(&state))
}

/// Every route, with errors mapped and each request traced.
pub(crate) fn routes(
    state: State,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone + Send + Sync + 'static {
    crate::metrics::handle();
    let state = &state;
    let api = warp::path("api")
        .and(
            session::routes(state)
                .or(access::authenticated(state).and(api::routes(state)))
                .unify(),
        )
        .boxed();
    access::same_origin()
        .and(
            healthz()
                .or(api)
                .unify()
                .or(metrics(state))
                .unify()
                .or(assets::routes())
                .unify(),
        )
        .recover(error::recover)
        .unify()
        .with(warp::trace::request())
}

fn healthz() -> BoxedFilter<(Response,)> {
    warp::path!("healthz")
        .and(warp::get())
        .map(|| warp::reply::json(&serde_json::json!({"status": "ok"})).into_response())
        .boxed()
}

fn metrics(state: &State) -> BoxedFilter<(Response,)> {
    warp::path!("metrics")
        .and(warp::get())
        .and(access::authenticated(state))
        .and(with_state(state))
        .map(|state: State| {
            let text = crate::metrics::render(&state.host.list());
            warp::reply::with_header(text, "content-type", "text/plain; version=0.0.4")
                .into_response()
        })
        .boxed()
}
