//! The REST API under `/api` (behind authentication): plugins, their settings, license keys,
//! limits, bundles, logs and events, and the instance.

use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use toru_host::{EventQuery, Level, LimitOverrides, LogQuery};
use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::{ApiError, State, body, events, with_state};

/// The longest license key accepted, in characters.
const MAX_LICENSE_KEY_CHARS: usize = 4096;
/// The largest license body read (a key of the longest length, escaped, fits well).
const LICENSE_BODY_LIMIT: u64 = 64 * 1024;
/// The largest limits body read (four short values fit many times over).
const LIMITS_BODY_LIMIT: u64 = 16 * 1024;
/// The largest settings body read: every setting a plugin may declare at its longest text.
const SETTINGS_BODY_LIMIT: u64 =
    (toru_host::MAX_SETTINGS * (toru_host::MAX_TEXT_SETTING + 256)) as u64;

pub(crate) fn routes(state: &State) -> BoxedFilter<(Response,)> {
    let list = warp::path!("plugins")
        .and(warp::get())
        .and(with_state(state))
        .map(|state: State| json(&json!({ "plugins": state.host.list() })));
    let rescan = warp::path!("plugins" / "rescan")
        .and(warp::post())
        .and(with_state(state))
        .and_then(rescan);
    let get = warp::path!("plugins" / PluginId)
        .and(warp::get())
        .and(with_state(state))
        .and_then(|PluginId(id), state: State| async move {
            state.host.get(&id).map(|info| json(&info)).map_err(reject)
        });
    let enable = warp::path!("plugins" / PluginId / "enable")
        .and(warp::post())
        .and(with_state(state))
        .and_then(|PluginId(id), state: State| async move {
            tracing::info!(plugin.id = %id, "enabling plugin");
            state
                .host
                .enable(&id)
                .await
                .map(|i| json(&i))
                .map_err(reject)
        });
    let disable = warp::path!("plugins" / PluginId / "disable")
        .and(warp::post())
        .and(with_state(state))
        .and_then(|PluginId(id), state: State| async move {
            tracing::info!(plugin.id = %id, "disabling plugin");
            state
                .host
                .disable(&id)
                .await
                .map(|i| json(&i))
                .map_err(reject)
        });
    let license = warp::path!("plugins" / PluginId / "license")
        .and(warp::put())
        .and(body::json::<serde_json::Map<String, serde_json::Value>>(
            LICENSE_BODY_LIMIT.min(state.max_body_bytes),
        ))
        .and(with_state(state))
        .and_then(set_license)
        .recover(super::error::settle)
        .unify();
    let limits = warp::path!("plugins" / PluginId / "limits")
        .and(warp::put())
        .and(body::json::<serde_json::Value>(
            LIMITS_BODY_LIMIT.min(state.max_body_bytes),
        ))
        .and(with_state(state))
        .and_then(set_limits)
        .recover(super::error::settle)
        .unify();
    let settings = warp::path!("plugins" / PluginId / "settings")
        .and(warp::put())
        .and(body::json::<serde_json::Value>(
            SETTINGS_BODY_LIMIT.min(state.max_body_bytes),
        ))
        .and(with_state(state))
        .and_then(set_settings)
        .recover(super::error::settle)
        .unify();
    let bundle = warp::path!("plugins" / PluginId / "bundle.js")
        .and(warp::get())
        .and(warp::header::optional::<String>("if-none-match"))
        .and(with_state(state))
        .and_then(bundle);
    let logs = warp::path!("plugins" / PluginId / "logs")
        .and(warp::get())
        .and(warp::query::<LogParams>())
        .and(with_state(state))
        .and_then(logs);
    let plugin_events = warp::path!("plugins" / PluginId / "events")
        .and(warp::get())
        .and(warp::query::<EventParams>())
        .and(with_state(state))
        .and_then(plugin_events);
    let instance = warp::path!("instance")
        .and(warp::get())
        .and(with_state(state))
        .map(|state: State| {
            json(&json!({
                "instance_id": state.host.instance_id(),
                "version": env!("CARGO_PKG_VERSION"),
                "containment": state.host.containment(),
                "default_limits": state.host.default_limits(),
            }))
        });
    list.or(rescan)
        .unify()
        .or(get)
        .unify()
        .or(enable)
        .unify()
        .or(disable)
        .unify()
        .or(license)
        .unify()
        .or(limits)
        .unify()
        .or(settings)
        .unify()
        .or(bundle)
        .unify()
        .or(logs)
        .unify()
        .or(plugin_events)
        .unify()
        .or(instance)
        .unify()
        .or(events::route(state))
        .unify()
        .boxed()
}

/// A plugin id from the path, percent-decoded: a plugin that failed to load is listed by its
/// file name, which may hold spaces, `#`, `%` or any other character, and the dashboard encodes
/// ids with `encodeURIComponent`. A path whose decoding is not UTF-8 matches no route.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PluginId(String);

impl FromStr for PluginId {
    type Err = std::str::Utf8Error;

    fn from_str(segment: &str) -> Result<Self, Self::Err> {
        let id = percent_encoding::percent_decode_str(segment).decode_utf8()?;
        Ok(PluginId(id.into_owned()))
    }
}

fn json(value: &impl Serialize) -> Response {
    warp::reply::json(value).into_response()
}

fn reject(e: impl Into<ApiError>) -> Rejection {
    e.into().reject()
}

/// `POST /api/plugins/rescan`: scans the plugins folder now (as the folder watcher does on its
/// own) and answers what the scan did, with the plugins as they are after it.
async fn rescan(state: State) -> Result<Response, Rejection> {
    tracing::info!("rescanning the plugins folder");
    let report = state.host.rescan().await.map_err(reject)?;
    Ok(json(
        &json!({ "report": report, "plugins": state.host.list() }),
    ))
}

/// `PUT /api/plugins/:id/license` with `{"license_key": "..."}` stores a key, and with `null` or
/// a blank string removes it; the plugin is restarted, so that it checks the key at once.
async fn set_license(
    PluginId(id): PluginId,
    body: serde_json::Map<String, serde_json::Value>,
    state: State,
) -> Result<Response, Rejection> {
    use serde_json::Value;
    let key = match (body.len(), body.get("license_key")) {
        (1, Some(Value::String(key))) => Some(key.trim()).filter(|k| !k.is_empty()),
        (1, Some(Value::Null)) => None,
        _ => {
            return Err(ApiError::bad_request(
                "the body must be {\"license_key\": \"...\"}, or null to remove the key",
            )
            .reject());
        }
    };
    if let Some(key) = key {
        let chars = key.chars().count();
        if chars > MAX_LICENSE_KEY_CHARS {
            return Err(ApiError::bad_request(format!(
                "the license key is {chars} characters long; the limit is {MAX_LICENSE_KEY_CHARS}"
            ))
            .reject());
        }
    }
    tracing::info!(plugin.id = %id, stored = key.is_some(), "setting the license key");
    state
        .host
        .set_license_key(&id, key)
        .await
        .map(|i| json(&i))
        .map_err(reject)
}

/// `PUT /api/plugins/:id/settings` with `{"greeting": "Howdy", "api_token": "..."}` changes the
/// named settings (`null` removes a value, so its default applies; settings left out keep
/// theirs), checked against the plugin's declarations: a bad value or an unknown name is a 400
/// naming every bad field (`error.fields`), and nothing is changed. Then the plugin gets them,
/// live or by a restart, and the answer is the plugin (secrets shown only as set or not).
async fn set_settings(
    PluginId(id): PluginId,
    body: serde_json::Value,
    state: State,
) -> Result<Response, Rejection> {
    let serde_json::Value::Object(changes) = body else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_settings",
            "the body must be a JSON object of settings by name, like {\"greeting\": \"Howdy\"}",
        )
        .reject());
    };
    // Names only: values may be secret.
    let names: Vec<&str> = changes.keys().take(20).map(String::as_str).collect();
    tracing::info!(plugin.id = %id, settings = ?names, count = changes.len(), "changing the plugin's settings");
    state
        .host
        .set_settings(&id, &changes)
        .await
        .map(|i| json(&i))
        .map_err(reject)
}

/// `PUT /api/plugins/:id/limits` with `{"memory": "128MiB", "processes": 64, "open_files": 256,
/// "cpu": "50%"}` sets the plugin's own limits (a limit left out, or `null`, is the host's
/// default; `{}` goes back to the defaults) and restarts it, so that they apply at once. A
/// value that is not valid is a 400 naming every bad field (`error.fields`).
async fn set_limits(
    PluginId(id): PluginId,
    body: serde_json::Value,
    state: State,
) -> Result<Response, Rejection> {
    let limits = LimitOverrides::from_json(&body).map_err(|e| {
        let mut error = ApiError::new(StatusCode::BAD_REQUEST, "bad_limits", e.to_string());
        error.fields = Some(Box::new(
            e.0.into_iter()
                .map(|(field, message)| (field, serde_json::Value::String(message)))
                .collect(),
        ));
        error.reject()
    })?;
    tracing::info!(plugin.id = %id, limits = %serde_json::to_string(&limits).unwrap_or_default(), "setting the plugin's limits");
    state
        .host
        .set_limits(&id, limits)
        .await
        .map(|i| json(&i))
        .map_err(reject)
}

/// The plugin's JavaScript module, with an ETag; 304 when the client has it.
async fn bundle(
    PluginId(id): PluginId,
    if_none_match: Option<String>,
    state: State,
) -> Result<Response, Rejection> {
    let script = state.host.bundle(&id).await.map_err(reject)?;
    let digest = Sha256::digest(script.as_bytes());
    let etag: String = std::iter::once("\"".to_owned())
        .chain(digest[..16].iter().map(|b| format!("{b:02x}")))
        .chain(std::iter::once("\"".to_owned()))
        .collect();
    let fresh = if_none_match.is_some_and(|v| etag_matches(&v, &etag));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = script.into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/javascript; charset=utf-8"),
        );
        r
    };
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Ok(response)
}

/// Whether an `If-None-Match` value names `etag` (weak or strong) or is `*`.
pub(crate) fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    if_none_match
        .split(',')
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == "*" || t == etag)
}

#[derive(Debug, Deserialize)]
struct LogParams {
    #[serde(default)]
    page: u32,
    #[serde(default = "default_log_page_size")]
    page_size: u32,
    level: Option<Level>,
}

fn default_log_page_size() -> u32 {
    LogQuery::DEFAULT_PAGE_SIZE
}

async fn logs(
    PluginId(id): PluginId,
    params: LogParams,
    state: State,
) -> Result<Response, Rejection> {
    let mut query = LogQuery::new(params.page, params.page_size);
    query.min_level = params.level;
    let page = state.host.logs(&id, &query).await.map_err(reject)?;
    Ok(json(&page))
}

#[derive(Debug, Deserialize)]
struct EventParams {
    #[serde(default)]
    page: u32,
    #[serde(default)]
    page_size: u32,
}

async fn plugin_events(
    PluginId(id): PluginId,
    params: EventParams,
    state: State,
) -> Result<Response, Rejection> {
    let query = EventQuery::plugin(id).with_page(params.page, params.page_size);
    let events = state.host.events(&query).await.map_err(reject)?;
    Ok(json(&json!({ "events": events })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_ids_are_percent_decoded() {
        let id = |s: &str| s.parse::<PluginId>().map(|PluginId(id)| id);
        assert_eq!(id("hello-rust").unwrap(), "hello-rust");
        assert_eq!(
            id("broken%20plugin%20%231%25.binary").unwrap(),
            "broken plugin #1%.binary"
        );
        assert_eq!(id("caf%C3%A9.binary").unwrap(), "café.binary");
        // A stray `%` stays as it is, as browsers send it.
        assert_eq!(id("100%.binary").unwrap(), "100%.binary");
        assert!(id("%FF.binary").is_err(), "not UTF-8");
    }

    #[test]
    fn if_none_match_lists_and_weak_tags_match() {
        let tag = "\"abc\"";
        assert!(etag_matches("\"abc\"", tag));
        assert!(etag_matches("W/\"abc\"", tag));
        assert!(etag_matches("\"x\", \"abc\"", tag));
        assert!(etag_matches("*", tag));
        assert!(!etag_matches("\"abcd\"", tag));
    }
}
