//! The web UI's files from `toru-web-assets`: `/` and `/index.html`, `/login`, and
//! `/assets/<path>`, with ETags and the security headers (a Content-Security-Policy that keeps
//! scripts to this origin).

use warp::filters::BoxedFilter;
use warp::filters::path::Tail;
use warp::http::StatusCode;
use warp::http::header::{self, HeaderMap, HeaderValue};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::api::etag_matches;

/// The policy for the UI's pages.
pub(crate) const CSP: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; \
    frame-ancestors 'none'";

pub(crate) fn routes() -> BoxedFilter<(Response,)> {
    let index = warp::path::end()
        .or(warp::path!("index.html"))
        .unify()
        .map(|| "index.html".to_owned());
    let login = warp::path!("login")
        .or(warp::path!("login.html"))
        .unify()
        .map(|| "login.html".to_owned());
    let favicon = warp::path!("favicon.svg").map(|| "favicon.svg".to_owned());
    let asset = warp::path("assets")
        .and(warp::path::tail())
        .map(|tail: Tail| tail.as_str().to_owned());
    warp::get()
        .and(
            index
                .or(login)
                .unify()
                .or(favicon)
                .unify()
                .or(asset)
                .unify(),
        )
        .and(warp::header::optional::<String>("if-none-match"))
        .and_then(file)
        .boxed()
}

async fn file(path: String, if_none_match: Option<String>) -> Result<Response, Rejection> {
    let asset = toru_web_assets::get(&path).ok_or_else(warp::reject::not_found)?;
    let fresh = if_none_match.is_some_and(|v| etag_matches(&v, &asset.etag));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = asset.bytes.into_owned().into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        r
    };
    let headers = response.headers_mut();
    if let Ok(etag) = HeaderValue::from_str(&asset.etag) {
        headers.insert(header::ETAG, etag);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    security_headers(headers);
    Ok(response)
}

/// The headers every page and file of the UI carries.
pub(crate) fn security_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

#[cfg(test)]
mod tests {
    /// The text of `const NAME = { ... };` in `source`.
    fn js_table<'a>(source: &'a str, name: &str) -> &'a str {
        let start = source
            .find(&format!("const {name} = {{"))
            .unwrap_or_else(|| panic!("{name} in format.js"));
        let end = source[start..].find("};").expect("the end of the table");
        &source[start..start + end]
    }

    /// The UI labels every state and event kind the host has: a new one added to the host
    /// without its label fails here, not in front of an operator.
    #[test]
    fn the_ui_labels_every_plugin_state_and_event_kind() {
        let asset = toru_web_assets::get("format.js").expect("format.js");
        let source = std::str::from_utf8(&asset.bytes).expect("UTF-8");
        let states = js_table(source, "STATE_LABELS");
        for name in toru_host::PluginState::NAMES {
            assert!(
                states.contains(&format!("\n  {name}:")),
                "no label for state {name}"
            );
        }
        let kinds = js_table(source, "EVENT_LABELS");
        for kind in toru_host::EventKind::ALL {
            let name = kind.as_str();
            assert!(
                kinds.contains(&format!("\n  {name}:")),
                "no label for event {name}"
            );
        }
    }
}
