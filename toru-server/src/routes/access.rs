//! Who gets in: a session cookie or bearer secret, and a same-origin check for requests that
//! change state; as warp filters for the API, and as plain functions of a request's headers for
//! the plugin routes the edge serves itself ([`admit`]).

use std::convert::Infallible;
use std::net::SocketAddr;

use warp::http::{HeaderMap, Method};
use warp::{Filter, Rejection};

use super::{ApiError, State, with_state};
use crate::auth::Denied;
use crate::edge::PeerAddr;

/// The session cookie's name.
pub(crate) const SESSION_COOKIE: &str = "toru_session";

/// Passes a request with a live session cookie or the admin secret as a bearer token; else
/// rejects with 401 (or 429 when the client has failed too often).
pub(crate) fn authenticated(
    state: &State,
) -> impl Filter<Extract = (), Error = Rejection> + Clone + use<> {
    credentials()
        .and(with_state(state))
        .and_then(
            |session: Option<String>, bearer: Option<String>, remote, state: State| async move {
                match check(&state, session.as_deref(), bearer.as_deref(), remote).await {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(ApiError::unauthorized().reject()),
                    Err(wait) => Err(ApiError::too_many_attempts(wait).reject()),
                }
            },
        )
        .untuple_one()
}

/// Whether the request is authenticated, never rejecting (for `GET /api/session`).
pub(crate) fn is_authenticated(
    state: &State,
) -> impl Filter<Extract = (bool,), Error = Rejection> + Clone + use<> {
    credentials().and(with_state(state)).then(
        |session: Option<String>, bearer: Option<String>, remote, state: State| async move {
            check(&state, session.as_deref(), bearer.as_deref(), remote)
                .await
                .unwrap_or(false)
        },
    )
}

/// The session cookie, the bearer token and the client's address.
fn credentials()
-> impl Filter<Extract = (Option<String>, Option<String>, Option<SocketAddr>), Error = Rejection> + Clone
{
    warp::cookie::optional::<String>(SESSION_COOKIE)
        .and(warp::header::optional::<String>("authorization"))
        .map(|session, authorization: Option<String>| {
            (
                session,
                authorization.and_then(|a| bearer(&a).map(str::to_owned)),
            )
        })
        .untuple_one()
        .and(peer())
}

/// The client's address: the TCP peer the edge put in the request (behind a reverse proxy, the
/// proxy's address).
pub(crate) fn peer() -> impl Filter<Extract = (Option<SocketAddr>,), Error = Infallible> + Clone {
    warp::ext::optional::<PeerAddr>().map(|peer: Option<PeerAddr>| peer.map(|p| p.0))
}

/// What the filters check, as one function of the request: the same-origin checks (403) of
/// [`same_origin`], then [`authenticated`]'s (401, 429), then the same-origin check of a
/// WebSocket upgrade (403).
///
/// # Errors
/// The refusal, as the filters would have answered it.
pub(crate) async fn admit(
    state: &State,
    method: &Method,
    headers: &HeaderMap,
    remote: SocketAddr,
) -> Result<(), ApiError> {
    let site = header_text(headers, "sec-fetch-site")?;
    let origin = header_text(headers, "origin")?;
    let host = header_text(headers, "host")?;
    if is_cross_origin(method, site, origin, host) {
        return Err(cross_origin(
            "requests that change state must come from this server's own pages",
        ));
    }
    let session = session_cookie(headers);
    let bearer = header_text(headers, "authorization")?.and_then(bearer);
    match check(state, session, bearer, Some(remote)).await {
        Ok(true) => {}
        Ok(false) => return Err(ApiError::unauthorized()),
        Err(wait) => return Err(ApiError::too_many_attempts(wait)),
    }
    // A WebSocket is refused from another site although it is a `GET`: a browser sends the
    // session cookie with a cross-site WebSocket, and its answers are readable (cross-site
    // WebSocket hijacking). Clients that send no `Origin` (not a browser) pass.
    let upgrade = header_text(headers, "upgrade")?;
    let is_upgrade = upgrade.is_some_and(|u| u.trim().eq_ignore_ascii_case("websocket"));
    if is_upgrade && is_cross_site(site, origin, host) {
        return Err(cross_origin(
            "WebSockets must come from this server's own pages",
        ));
    }
    Ok(())
}

/// A header's value as text (the first, when there are several); 400 when it is not text, as
/// warp's header filters answer.
fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("header {name} is not valid"))),
    }
}

/// The session cookie's value, read as warp's cookie filter reads it (no cookie at all when a
/// `Cookie` header is not text).
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    let mut values = Vec::new();
    for value in headers.get_all(warp::http::header::COOKIE) {
        values.push(value.to_str().ok()?);
    }
    values
        .into_iter()
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            Some((name.trim(), value.trim()))
        })
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value)
}

fn cross_origin(message: &'static str) -> ApiError {
    ApiError::new(warp::http::StatusCode::FORBIDDEN, "cross_origin", message)
}

/// `Ok(true)` when in, `Ok(false)` when not, `Err(wait)` when the client must wait.
async fn check(
    state: &State,
    session: Option<&str>,
    bearer: Option<&str>,
    remote: Option<SocketAddr>,
) -> Result<bool, std::time::Duration> {
    if session.is_some_and(|token| state.auth.session_valid(token)) {
        return Ok(true);
    }
    let Some(secret) = bearer else {
        return Ok(false);
    };
    match state
        .auth
        .check_secret(secret, remote.map(|a| a.ip()))
        .await
    {
        Ok(()) => Ok(true),
        Err(Denied::Wrong) => Ok(false),
        Err(Denied::TooMany(wait)) => Err(wait),
    }
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Refuses (403 `cross_origin`) a state-changing request that a browser says comes from another
/// site, or whose `Origin` is not this server.
pub(crate) fn same_origin() -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::method()
        .and(warp::header::optional::<String>("sec-fetch-site"))
        .and(warp::header::optional::<String>("origin"))
        .and(warp::header::optional::<String>("host"))
        .and_then(
            |method: Method,
             site: Option<String>,
             origin: Option<String>,
             host: Option<String>| async move {
                if is_cross_origin(&method, site.as_deref(), origin.as_deref(), host.as_deref()) {
                    Err(cross_origin(
                        "requests that change state must come from this server's own pages",
                    )
                    .reject())
                } else {
                    Ok(())
                }
            },
        )
        .untuple_one()
}

fn is_cross_origin(
    method: &Method,
    site: Option<&str>,
    origin: Option<&str>,
    host: Option<&str>,
) -> bool {
    if matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    ) {
        return false;
    }
    is_cross_site(site, origin, host)
}

/// Whether the browser says the request comes from another site, or its `Origin` is not this
/// server.
fn is_cross_site(site: Option<&str>, origin: Option<&str>, host: Option<&str>) -> bool {
    if site
        .is_some_and(|s| !s.eq_ignore_ascii_case("same-origin") && !s.eq_ignore_ascii_case("none"))
    {
        return true;
    }
    match origin {
        None => false,
        Some(origin) => {
            let origin_host = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                .map(|h| h.trim_end_matches('/'));
            !matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Bearer"), None);
    }

    #[test]
    fn only_state_changing_cross_site_requests_are_refused() {
        let host = Some("127.0.0.1:3000");
        let post = Method::POST;
        assert!(!is_cross_origin(
            &Method::GET,
            Some("cross-site"),
            Some("http://evil"),
            host
        ));
        assert!(!is_cross_origin(&post, None, None, host));
        assert!(!is_cross_origin(&post, Some("same-origin"), None, host));
        assert!(!is_cross_origin(&post, Some("none"), None, host));
        assert!(!is_cross_origin(
            &post,
            None,
            Some("http://127.0.0.1:3000"),
            host
        ));
        assert!(is_cross_origin(&post, Some("cross-site"), None, host));
        assert!(is_cross_origin(&post, Some("same-site"), None, host));
        assert!(is_cross_origin(
            &Method::DELETE,
            None,
            Some("http://evil.example"),
            host
        ));
        assert!(is_cross_origin(&post, None, Some("null"), host));
        assert!(is_cross_origin(
            &post,
            None,
            Some("http://127.0.0.1:3000"),
            None
        ));
    }

    #[test]
    fn cross_site_checks_ignore_the_method() {
        let host = Some("127.0.0.1:3000");
        assert!(is_cross_site(None, Some("http://evil.example"), host));
        assert!(is_cross_site(None, Some("null"), host));
        assert!(is_cross_site(Some("cross-site"), None, host));
        assert!(!is_cross_site(None, Some("http://127.0.0.1:3000"), host));
        assert!(!is_cross_site(None, None, host));
    }
}
