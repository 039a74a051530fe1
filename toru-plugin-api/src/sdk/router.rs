//! A small router: handlers by method and path, with 404 and 405 answered for you.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::context::PluginContext;
use super::error::HttpError;
use super::request::Request;
use super::response::Response;

/// What a handler may return: a [`Response`], an [`HttpError`], or a `Result` of them (so `?`
/// works in the handler).
pub trait IntoResponse {
    /// The response to send.
    fn into_response(self) -> Response;

    /// The response, or the error it is made from (which the [`Router`] logs when it is a
    /// 5xx).
    fn into_result(self) -> Result<Response, HttpError>
    where
        Self: Sized,
    {
        Ok(self.into_response())
    }
}

impl IntoResponse for Response {
    fn into_response(self) -> Response {
        self
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        HttpError::into_response(self)
    }

    fn into_result(self) -> Result<Response, HttpError> {
        Err(self)
    }
}

impl<T: IntoResponse, E: Into<HttpError>> IntoResponse for Result<T, E> {
    fn into_response(self) -> Response {
        match self {
            Ok(res) => res.into_response(),
            Err(e) => e.into().into_response(),
        }
    }

    fn into_result(self) -> Result<Response, HttpError> {
        match self {
            Ok(res) => res.into_result(),
            Err(e) => Err(e.into()),
        }
    }
}

/// What a handler's future is boxed as.
type BoxedResponse = Pin<Box<dyn Future<Output = Result<Response, HttpError>> + Send>>;

/// An `async fn` the [`Router`] can call: one that takes `(PluginContext, Request)`, or
/// `(Arc<S>, PluginContext, Request)` to get the router's state, and returns anything
/// [`IntoResponse`]. `Args` only tells the two shapes apart; you never name it.
pub trait Handler<S, Args>: Send + Sync + 'static {
    /// Calls the handler.
    fn call(&self, state: Arc<S>, ctx: PluginContext, req: Request) -> BoxedResponse;
}

impl<S, F, Fut, R> Handler<S, (PluginContext, Request)> for F
where
    F: Fn(PluginContext, Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: IntoResponse,
{
    fn call(&self, _state: Arc<S>, ctx: PluginContext, req: Request) -> BoxedResponse {
        let fut = self(ctx, req);
        Box::pin(async move { fut.await.into_result() })
    }
}

impl<S, F, Fut, R> Handler<S, (Arc<S>, PluginContext, Request)> for F
where
    F: Fn(Arc<S>, PluginContext, Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: IntoResponse,
{
    fn call(&self, state: Arc<S>, ctx: PluginContext, req: Request) -> BoxedResponse {
        let fut = self(state, ctx, req);
        Box::pin(async move { fut.await.into_result() })
    }
}

type BoxedHandler<S> = Box<dyn Fn(Arc<S>, PluginContext, Request) -> BoxedResponse + Send + Sync>;

struct Route<S> {
    pattern: Vec<Segment>,
    /// The pattern as written, for logs.
    text: String,
    methods: Vec<(String, BoxedHandler<S>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `{name}`: one segment.
    Param(String),
    /// `{*name}`: the rest of the path, possibly empty.
    Rest(String),
}

/// Handlers by method and path, for [`Plugin`](super::Plugin) or a
/// [`ToruPlugin::handle_http`](super::ToruPlugin::handle_http) of your own.
///
/// Paths are matched against the part after the plugin's route ([`Request::subpath`]): `"/"`
/// is the plugin's root (`/acme` and `/acme/`), `"/count"` is `/acme/count`. A segment
/// `{name}` matches any one segment and `{*name}` the rest of the path; handlers read them
/// with [`Request::param`]. Routes are tried in the order they were added. A path no route
/// matches is answered 404 `{"error": "not found"}`; a path that matches with another method,
/// 405 `{"error": "method not allowed"}` with an `allow` header. `HEAD` is served by the `GET`
/// handler when there is no `HEAD` one.
///
/// Handlers are `async fn`s of `(PluginContext, Request)`, or `(Arc<S>, PluginContext,
/// Request)` for a router made [`with_state`](Router::with_state). They return anything that
/// is [`IntoResponse`], usually [`HttpResult`](super::HttpResult), so `?` answers an error: a
/// KV failure is a 500, a body that is not the JSON expected a 400. A 5xx is also logged.
///
/// ```
/// use toru_plugin_api::{HttpResult, PluginContext, Request, Response, Router};
///
/// async fn hello(_: PluginContext, _: Request) -> HttpResult {
///     Ok(Response::text(200, "Hello!"))
/// }
///
/// async fn item(_: PluginContext, req: Request) -> HttpResult {
///     let id = req.param("id").unwrap_or_default();
///     Ok(Response::json(200, &serde_json::json!({ "id": id })))
/// }
///
/// let router = Router::new().get("/", hello).get("/items/{id}", item);
/// ```
pub struct Router<S = ()> {
    state: Arc<S>,
    routes: Vec<Route<S>>,
}

impl<S> std::fmt::Debug for Router<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let routes: Vec<_> = self
            .routes
            .iter()
            .map(|r| {
                let methods: Vec<_> = r.methods.iter().map(|(m, _)| m.as_str()).collect();
                format!("{} {}", methods.join(","), r.text)
            })
            .collect();
        f.debug_struct("Router").field("routes", &routes).finish()
    }
}

impl Router<()> {
    /// A router with no routes and no state.
    pub fn new() -> Self {
        Router::with_state(())
    }
}

impl Default for Router<()> {
    fn default() -> Self {
        Router::new()
    }
}

impl<S: Send + Sync + 'static> Router<S> {
    /// A router whose handlers may take `Arc<S>` as their first argument.
    pub fn with_state(state: S) -> Self {
        Router {
            state: Arc::new(state),
            routes: Vec::new(),
        }
    }

    /// The state.
    pub fn state(&self) -> &Arc<S> {
        &self.state
    }

    /// Adds `handler` for `method` (upper case, `"GET"`) at `path`.
    ///
    /// # Panics
    /// When `path` does not start with `/`, or `{*name}` is not its last segment: a
    /// programming error, found the first time the plugin runs.
    pub fn route<Args>(mut self, method: &str, path: &str, handler: impl Handler<S, Args>) -> Self {
        let pattern = parse_pattern(path);
        let handler: BoxedHandler<S> = Box::new(move |s, ctx, req| handler.call(s, ctx, req));
        let method = method.to_ascii_uppercase();
        match self.routes.iter_mut().find(|r| r.pattern == pattern) {
            Some(route) => {
                route.methods.retain(|(m, _)| *m != method);
                route.methods.push((method, handler));
            }
            None => self.routes.push(Route {
                pattern,
                text: path.to_owned(),
                methods: vec![(method, handler)],
            }),
        }
        self
    }

    /// [`route`](Self::route) for `GET` (and `HEAD`).
    pub fn get<Args>(self, path: &str, handler: impl Handler<S, Args>) -> Self {
        self.route("GET", path, handler)
    }

    /// [`route`](Self::route) for `POST`.
    pub fn post<Args>(self, path: &str, handler: impl Handler<S, Args>) -> Self {
        self.route("POST", path, handler)
    }

    /// [`route`](Self::route) for `PUT`.
    pub fn put<Args>(self, path: &str, handler: impl Handler<S, Args>) -> Self {
        self.route("PUT", path, handler)
    }

    /// [`route`](Self::route) for `PATCH`.
    pub fn patch<Args>(self, path: &str, handler: impl Handler<S, Args>) -> Self {
        self.route("PATCH", path, handler)
    }

    /// [`route`](Self::route) for `DELETE`.
    pub fn delete<Args>(self, path: &str, handler: impl Handler<S, Args>) -> Self {
        self.route("DELETE", path, handler)
    }

    /// Answers one request: the matching handler's response, an error response for the
    /// handler's error (logged when it is a 5xx), or 404 or 405.
    pub async fn handle(&self, ctx: &PluginContext, mut req: Request) -> Response {
        let subpath = match req.subpath() {
            "" => "/",
            other => other,
        };
        let mut allowed: Vec<&str> = Vec::new();
        for route in &self.routes {
            let Some(params) = match_pattern(&route.pattern, subpath) else {
                continue;
            };
            let handler = route
                .methods
                .iter()
                .find(|(m, _)| *m == req.method)
                .or_else(|| {
                    let head = req.method == "HEAD";
                    route.methods.iter().find(|(m, _)| head && m == "GET")
                });
            let Some((_, handler)) = handler else {
                allowed.extend(route.methods.iter().map(|(m, _)| m.as_str()));
                continue;
            };
            req.set_params(params);
            return match handler(self.state.clone(), ctx.clone(), req).await {
                Ok(res) => res,
                Err(e) => {
                    if e.status() >= 500 {
                        ctx.error(format!("{} failed: {e}", route.text));
                    }
                    e.into_response()
                }
            };
        }
        if allowed.is_empty() {
            return Response::error(404, "not found");
        }
        if allowed.contains(&"GET") && !allowed.contains(&"HEAD") {
            allowed.push("HEAD");
        }
        Response::error(405, "method not allowed").with_header("allow", allowed.join(", "))
    }
}

fn parse_pattern(path: &str) -> Vec<Segment> {
    assert!(
        path.starts_with('/'),
        "a route's path starts with '/': {path:?}"
    );
    let segments: Vec<Segment> = path[1..]
        .split('/')
        .filter(|s| !s.is_empty())
        .map(
            |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(rest) if rest.starts_with('*') => Segment::Rest(rest[1..].to_owned()),
                Some(name) => Segment::Param(name.to_owned()),
                None => Segment::Literal(s.to_owned()),
            },
        )
        .collect();
    let rest_at = segments.iter().position(|s| matches!(s, Segment::Rest(_)));
    assert!(
        rest_at.is_none_or(|i| i == segments.len() - 1),
        "{{*name}} must be the last segment of a route: {path:?}"
    );
    segments
}

/// The parameters when `path` matches `pattern`. A trailing slash is ignored (`/a/` matches
/// `/a`).
fn match_pattern(pattern: &[Segment], path: &str) -> Option<Vec<(String, String)>> {
    let path = path.strip_prefix('/').unwrap_or(path);
    let path = path.strip_suffix('/').unwrap_or(path);
    let mut params = Vec::new();
    let mut rest = path;
    for segment in pattern {
        if let Segment::Rest(name) = segment {
            params.push((name.clone(), rest.to_owned()));
            return Some(params);
        }
        if rest.is_empty() {
            return None;
        }
        let (part, tail) = rest.split_once('/').unwrap_or((rest, ""));
        match segment {
            Segment::Literal(lit) if lit == part => {}
            Segment::Param(name) => params.push((name.clone(), part.to_owned())),
            _ => return None,
        }
        rest = tail;
    }
    rest.is_empty().then_some(params)
}

#[cfg(test)]
mod tests;
