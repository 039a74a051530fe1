//! The routes as hyper sees them: each request is counted as in flight from its head to the end
//! of its response body, and goes to the edge's own [`Direct`] routes, else (with the client's
//! address as an extension) to the service.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::{Request, Response};

use super::conn::ConnState;
use super::{Direct, PeerAddr};

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

/// The routes, each request counted.
#[derive(Debug, Clone)]
pub(crate) struct EdgeService<S, D> {
    pub(crate) inner: S,
    pub(crate) direct: D,
    pub(crate) conn: Arc<ConnState>,
    pub(crate) peer: PeerAddr,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, D> hyper::service::Service<Request<Incoming>> for EdgeService<S, D>
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body + Unpin + Send + 'static,
    D: Direct,
{
    type Response = Response<TrackedBody<Either<B, D::Body>>>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let guard = RequestGuard::new(&self.conn);
        let tracked = |body| TrackedBody {
            body,
            guard: Some(guard),
        };
        if self.direct.takes(&request) {
            let response = self.direct.serve(request, self.peer);
            Box::pin(async move {
                let response = response.await;
                Ok(response.map(|body| tracked(Either::Right(body))))
            })
        } else {
            let mut request = request;
            request.extensions_mut().insert(self.peer);
            // warp's service is always ready.
            let response = self.inner.clone().call(request);
            Box::pin(async move {
                let response = response.await?;
                Ok(response.map(|body| tracked(Either::Left(body))))
            })
        }
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
