//! Logging in and out: `POST /api/login`, `POST /api/logout`, `GET /api/session`.

use std::net::SocketAddr;

use serde::Deserialize;
use serde_json::json;
use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::access::{SESSION_COOKIE, is_authenticated};
use super::{ApiError, State, body, with_state};
use crate::auth::{Denied, SESSION_TTL};

/// The largest login body read.
const LOGIN_BODY_LIMIT: u64 = 4096;

#[derive(Deserialize)]
struct Login {
    secret: String,
}

/// The routes under `/api` that need no session.
pub(crate) fn routes(state: &State) -> BoxedFilter<(Response,)> {
    let login = warp::path!("login")
        .and(warp::post())
        .and(super::access::peer())
        .and(forwarded_https())
        .and(body::json::<Login>(LOGIN_BODY_LIMIT))
        .and(with_state(state))
        .and_then(login);
    let logout = warp::path!("logout")
        .and(warp::post())
        .and(warp::cookie::optional::<String>(SESSION_COOKIE))
        .and(forwarded_https())
        .and(with_state(state))
        .map(logout);
    let session = warp::path!("session")
        .and(warp::get())
        .and(is_authenticated(state))
        .map(|authenticated: bool| {
            warp::reply::json(&json!({ "authenticated": authenticated })).into_response()
        });
    login
        .or(logout)
        .unify()
        .or(session)
        .unify()
        .recover(super::error::settle)
        .unify()
        .boxed()
}

/// Whether a proxy in front says the client used HTTPS.
fn forwarded_https() -> impl Filter<Extract = (bool,), Error = Rejection> + Clone {
    warp::header::optional::<String>("x-forwarded-proto")
        .map(|proto: Option<String>| proto.is_some_and(|p| p.eq_ignore_ascii_case("https")))
}

async fn login(
    remote: Option<SocketAddr>,
    https: bool,
    body: Login,
    state: State,
) -> Result<Response, Rejection> {
    match state
        .auth
        .check_secret(&body.secret, remote.map(|a| a.ip()))
        .await
    {
        Ok(()) => {
            let token = state.auth.new_session().map_err(|e| {
                tracing::error!(error = %e, "cannot make a session token");
                ApiError::internal().reject()
            })?;
            tracing::info!(remote = ?remote, "admin logged in");
            let cookie = cookie(&token, SESSION_TTL.as_secs(), https || state.secure_cookies);
            Ok(with_cookie(
                warp::reply::json(&json!({"ok": true})),
                &cookie,
            ))
        }
        Err(Denied::Wrong) => {
            tracing::warn!(remote = ?remote, "failed login");
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "wrong_secret",
                "that is not the admin secret",
            )
            .reject())
        }
        Err(Denied::TooMany(wait)) => Err(ApiError::too_many_attempts(wait).reject()),
    }
}

fn logout(session: Option<String>, https: bool, state: State) -> Response {
    if let Some(token) = session {
        state.auth.end_session(&token);
    }
    let cookie = cookie("", 0, https || state.secure_cookies);
    with_cookie(StatusCode::NO_CONTENT, &cookie)
}

fn cookie(value: &str, max_age: u64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!(
        "{SESSION_COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{secure}"
    )
}

fn with_cookie(reply: impl Reply, cookie: &str) -> Response {
    let mut response = reply.into_response();
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_when_asked() {
        let c = cookie("tok", 60, false);
        assert_eq!(
            c,
            "toru_session=tok; HttpOnly; SameSite=Strict; Path=/; Max-Age=60"
        );
        assert!(cookie("tok", 60, true).ends_with("; Secure"));
    }
}
