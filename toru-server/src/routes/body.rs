//! Request bodies, read whole up to the server's limit.

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, TryStreamExt};
use serde::de::DeserializeOwned;
use warp::{Filter, Rejection};

use super::ApiError;

/// The body, at most `limit` bytes (413 beyond, told by `Content-Length` before reading when
/// the client sends one).
pub(crate) fn limited(limit: u64) -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and(warp::body::stream())
        .and_then(move |len: Option<u64>, stream| async move {
            if len.is_some_and(|len| len > limit) {
                return Err(ApiError::too_large(limit).reject());
            }
            collect(stream, limit).await.map_err(ApiError::reject)
        })
}

/// The body as JSON of type `T`, at most `limit` bytes (400 when it is not).
pub(crate) fn json<T: DeserializeOwned + Send>(
    limit: u64,
) -> impl Filter<Extract = (T,), Error = Rejection> + Clone {
    limited(limit).and_then(|body: Bytes| async move {
        serde_json::from_slice::<T>(&body).map_err(|_| {
            ApiError::bad_request("the body is not valid JSON of the expected shape").reject()
        })
    })
}

async fn collect<B: Buf>(
    stream: impl Stream<Item = Result<B, warp::Error>>,
    limit: u64,
) -> Result<Bytes, ApiError> {
    let mut stream = std::pin::pin!(stream);
    let mut first: Option<Bytes> = None;
    let mut rest = BytesMut::new();
    let mut total = 0u64;
    while let Some(mut chunk) = stream
        .try_next()
        .await
        .map_err(|_| ApiError::bad_request("the request body could not be read"))?
    {
        total += chunk.remaining() as u64;
        if total > limit {
            return Err(ApiError::too_large(limit));
        }
        let chunk = chunk.copy_to_bytes(chunk.remaining());
        match first.take() {
            // The usual case, one chunk, is kept without copying.
            None if rest.is_empty() => first = Some(chunk),
            None => rest.extend_from_slice(&chunk),
            Some(head) => {
                rest.extend_from_slice(&head);
                rest.extend_from_slice(&chunk);
            }
        }
    }
    Ok(first.unwrap_or_else(|| rest.freeze()))
}
