//! The routes as hyper sees them: each request gets the client's address and is counted as in
//! flight from its head to the end of its response body.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::{Request, Response};

use super::PeerAddr;
use super::conn::ConnState;

/// Counts one request as in flight until dropped.
#[derive(Debug)]
pub(crate) struct RequestGuard(Arc<ConnState>);

impl RequestGuard {
    pub(crate) fn new(conn: &Arc<ConnState>) -> RequestGuard {
        conn.request_started();
        RequestGuard(Arc::clone(conn))
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// The routes, with the client's address in each request's extensions and each request counted.
#[derive(Debug, Clone)]
pub(crate) struct EdgeService<S> {
    pub(crate) inner: S,
    pub(crate) conn: Arc<ConnState>,
    pub(crate) peer: PeerAddr,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> hyper::service::Service<Request<Incoming>> for EdgeService<S>
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body + Unpin + Send + 'static,
{
    type Response = Response<TrackedBody<B>>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        request.extensions_mut().insert(self.peer);
        let guard = RequestGuard::new(&self.conn);
        // warp's service is always ready.
        let response = self.inner.clone().call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| TrackedBody {
                body,
                guard: Some(guard),
            }))
        })
    }
}

/// A response body that ends its request when its last frame is out (or it is dropped).
#[derive(Debug)]
pub(crate) struct TrackedBody<B> {
    body: B,
    guard: Option<RequestGuard>,
}

impl<B: Body + Unpin> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        if matches!(frame, Poll::Ready(None)) {
            self.guard = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
