//! Every error a client sees: a status and `{"error": {"code", "message"}}`, with the details
//! in the server's log and never in the response.

use std::convert::Infallible;
use std::time::Duration;

use serde_json::json;
use toru_host::{CallError, ManageError};
use warp::Rejection;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;

/// A failed request, as the client will see it.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
    pub(crate) retry_after: Option<Duration>,
    /// For a form's errors: each field's message.
    pub(crate) fields: Option<Box<serde_json::Map<String, serde_json::Value>>>,
}

impl warp::reject::Reject for ApiError {}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            fields: None,
        }
    }

    pub(crate) fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub(crate) fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "log in, or send the admin secret as a bearer token",
        )
    }

    pub(crate) fn too_many_attempts(wait: Duration) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_attempts",
            "too many failed attempts; try again later",
        )
        .with_retry_after(wait)
    }

    pub(crate) fn too_large(limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is larger than {limit} bytes"),
        )
    }

    pub(crate) fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server could not do that; its log says why",
        )
    }

    pub(crate) fn reject(self) -> Rejection {
        warp::reject::custom(self)
    }

    pub(crate) fn into_response(self) -> Response {
        self.into_http().map(Into::into)
    }

    /// The response, its body as bytes (for the routes the edge serves itself).
    pub(crate) fn into_http(self) -> warp::http::Response<bytes::Bytes> {
        let mut body = json!({"error": {"code": self.code, "message": self.message}});
        if let Some(fields) = self.fields {
            body["error"]["fields"] = serde_json::Value::Object(*fields);
        }
        let mut response = warp::http::Response::new(bytes::Bytes::from(body.to_string()));
        *response.status_mut() = self.status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(after) = self.retry_after {
            // Whole seconds, rounded up, at least one.
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response
    }
}

impl From<CallError> for ApiError {
    /// The library's table: one source for every caller (`toru_host::HTTP_ERRORS`).
    fn from(e: CallError) -> Self {
        if e.status().is_server_error() {
            tracing::warn!(error = %e, "plugin call failed");
        } else {
            tracing::debug!(error = %e, "plugin call refused");
        }
        ApiError {
            status: e.status(),
            code: e.code(),
            message: e.public_message(),
            retry_after: e.retry_after(),
            fields: None,
        }
    }
}

impl From<ManageError> for ApiError {
    fn from(e: ManageError) -> Self {
        match &e {
            ManageError::Config(_) => {
                tracing::error!(error = %chain(&e), "cannot save a plugin change")
            }
            e if e.status().is_server_error() => {
                tracing::error!(error = %chain(e), "managing a plugin failed")
            }
            _ => {}
        }
        let fields = match &e {
            ManageError::InvalidSettings(errors) => Some(Box::new(
                errors
                    .0
                    .iter()
                    .map(|(field, message)| {
                        (field.clone(), serde_json::Value::String(message.clone()))
                    })
                    .collect(),
            )),
            _ => None,
        };
        ApiError {
            status: e.status(),
            code: e.code(),
            message: e.public_message(),
            retry_after: e.retry_after(),
            fields,
        }
    }
}

/// An error and its causes, `: `-separated, for the log.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The one place rejections become responses.
pub(crate) async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    Ok(from_rejection(&rejection).into_response())
}

/// Answers this server's own errors at once, passing every other rejection on (so that a route
/// that matched can fail without the next route's rejection hiding its error).
pub(crate) async fn settle(rejection: Rejection) -> Result<Response, Rejection> {
    match rejection.find::<ApiError>() {
        Some(_) => Ok(from_rejection(&rejection).into_response()),
        None => Err(rejection),
    }
}

fn from_rejection(rejection: &Rejection) -> ApiError {
    use StatusCode as S;
    use warp::reject as r;
    if let Some(e) = rejection.find::<ApiError>() {
        return ApiError {
            status: e.status,
            code: e.code,
            message: e.message.clone(),
            retry_after: e.retry_after,
            fields: e.fields.clone(),
        };
    }
    if rejection.is_not_found() {
        ApiError::new(S::NOT_FOUND, "not_found", "there is nothing here")
    } else if rejection.find::<r::MethodNotAllowed>().is_some() {
        ApiError::new(
            S::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this method is not allowed here",
        )
    } else if rejection.find::<r::PayloadTooLarge>().is_some() {
        ApiError::new(
            S::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the body is too large",
        )
    } else if rejection.find::<r::InvalidQuery>().is_some() {
        ApiError::bad_request("the query string is not valid here")
    } else if rejection
        .find::<warp::filters::body::BodyDeserializeError>()
        .is_some()
    {
        ApiError::bad_request("the body is not valid JSON of the expected shape")
    } else if let Some(e) = rejection.find::<r::InvalidHeader>() {
        ApiError::bad_request(format!("header {} is not valid", e.name()))
    } else if let Some(e) = rejection.find::<r::MissingHeader>() {
        ApiError::bad_request(format!("header {} is missing", e.name()))
    } else if rejection.find::<r::UnsupportedMediaType>().is_some() {
        ApiError::new(
            S::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "this content type is not supported here",
        )
    } else {
        tracing::error!(?rejection, "unhandled rejection");
        ApiError::internal()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        let r = ApiError::unauthorized()
            .with_retry_after(Duration::from_millis(1500))
            .into_response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
        let r = ApiError::unauthorized()
            .with_retry_after(Duration::ZERO)
            .into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn a_config_that_cannot_be_saved_says_why() {
        let e = ManageError::Config(toru_host::ConfigError::Io {
            path: "/srv/plugins/.metadata/config.json".into(),
            source: std::io::Error::from_raw_os_error(28),
        });
        assert!(
            chain(&e).contains("No space left on device"),
            "{}",
            chain(&e)
        );
        let api = ApiError::from(e);
        assert_eq!(api.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(api.code, "config_not_saved");
        assert!(
            api.message.contains("No space left on device"),
            "{}",
            api.message
        );
        assert!(!api.message.contains("/srv"), "{}", api.message);
    }

    #[test]
    fn call_errors_keep_the_librarys_status_and_hide_internals() {
        let e = ApiError::from(CallError::Plugin {
            id: "a".into(),
            code: "x".into(),
            message: "the item is locked".into(),
        });
        assert_eq!(e.status, StatusCode::BAD_GATEWAY);
        assert_eq!(e.code, "plugin_error");
        // The plugin's own words reach the client; the host's do not.
        assert!(e.message.ends_with("the item is locked"), "{}", e.message);
        let e = ApiError::from(CallError::BadResponse {
            id: "a".into(),
            reason: "secret internals".into(),
        });
        assert!(!e.message.contains("internals"), "{}", e.message);
        let e = ApiError::from(CallError::ShuttingDown);
        assert_eq!(e.retry_after, Some(Duration::from_secs(1)));
    }
}
