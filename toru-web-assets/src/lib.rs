//! The Toru dashboard's static files, embedded in the binary.
//!
//! The dashboard is plain HTML, CSS and ES modules (no build step, nothing fetched at run time)
//! from this crate's `web/` folder, embedded at compile time in debug and release builds alike.
//! [`get`] looks a file up by its path relative to that folder and returns its bytes, a
//! `Content-Type` and a strong ETag.
//!
//! The server maps URLs to paths: `/` to `index.html`, `/login` to `login.html`, and
//! `/assets/<path>` to `<path>` (the pages load everything else from `/assets/`).
//!
//! ```
//! let page = toru_web_assets::get("index.html").expect("the dashboard is embedded");
//! assert_eq!(page.content_type, "text/html; charset=utf-8");
//! assert!(page.etag.starts_with('"'));
//! assert!(toru_web_assets::get("no-such-file.js").is_none());
//! ```
#![deny(missing_docs)]

// The README's examples are compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

use std::borrow::Cow;
use std::fmt::Write as _;

use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "web/"]
struct Web;

/// One embedded file.
#[derive(Debug, Clone)]
pub struct Asset {
    /// The file's bytes.
    pub bytes: Cow<'static, [u8]>,
    /// The `Content-Type` to serve it with, from the file's extension.
    pub content_type: &'static str,
    /// A strong ETag, quotes included: the first 16 bytes of the SHA-256 of the bytes, in hex.
    pub etag: String,
}

/// The file at `path` (relative to the `web/` folder, e.g. `index.html`, `app.js`), or `None`
/// when there is no such file.
///
/// A leading `/` is ignored. Paths with `..`, `.` or empty segments, or a backslash, are never
/// found, so a path taken from a URL cannot leave the folder.
pub fn get(path: &str) -> Option<Asset> {
    let path = path.strip_prefix('/').unwrap_or(path);
    if path.contains('\\')
        || path
            .split('/')
            .any(|segment| matches!(segment, "" | "." | ".."))
    {
        return None;
    }
    let file = Web::get(path)?;
    let mut etag = String::with_capacity(34);
    etag.push('"');
    for byte in &file.metadata.sha256_hash()[..16] {
        let _ = write!(etag, "{byte:02x}");
    }
    etag.push('"');
    Some(Asset {
        bytes: file.data,
        content_type: content_type(path),
        etag,
    })
}

/// The paths of every embedded file, sorted.
pub fn paths() -> Vec<String> {
    let mut paths: Vec<String> = Web::iter().map(Cow::into_owned).collect();
    paths.sort();
    paths
}

/// The `Content-Type` for a path, from its extension.
fn content_type(path: &str) -> &'static str {
    let ext = path.rsplit_once('.').map_or("", |(_, ext)| ext);
    match ext.to_ascii_lowercase().as_str() {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_html_is_found() {
        let index = get("index.html").expect("index.html is embedded");
        assert_eq!(index.content_type, "text/html; charset=utf-8");
        let text = std::str::from_utf8(&index.bytes).expect("index.html is UTF-8");
        assert!(
            text.contains(r#"src="/assets/app.js""#),
            "index.html loads app.js"
        );
    }

    #[test]
    fn a_leading_slash_is_ignored() {
        assert!(get("/index.html").is_some());
    }

    #[test]
    fn content_types_follow_the_extension() {
        assert_eq!(
            get("app.js").unwrap().content_type,
            "text/javascript; charset=utf-8"
        );
        assert_eq!(
            get("style.css").unwrap().content_type,
            "text/css; charset=utf-8"
        );
        assert_eq!(get("favicon.svg").unwrap().content_type, "image/svg+xml");
        assert_eq!(
            get("login.html").unwrap().content_type,
            "text/html; charset=utf-8"
        );
        assert_eq!(content_type("LICENSE"), "application/octet-stream");
        assert_eq!(content_type("x.JSON"), "application/json");
    }

    #[test]
    fn unknown_paths_are_none() {
        assert!(get("missing.js").is_none());
        assert!(get("").is_none());
        assert!(get("/").is_none());
    }

    #[test]
    fn paths_cannot_escape_the_folder() {
        assert!(get("../Cargo.toml").is_none());
        assert!(get("../src/lib.rs").is_none());
        assert!(get("./index.html").is_none());
        assert!(get("a//index.html").is_none());
        assert!(get("..\\Cargo.toml").is_none());
    }

    #[test]
    fn etags_are_stable_and_differ_between_files() {
        let a = get("app.js").unwrap().etag;
        assert_eq!(a, get("app.js").unwrap().etag);
        assert_eq!(a.len(), 34, "quotes around 32 hex digits: {a}");
        assert!(a.starts_with('"') && a.ends_with('"'));
        assert_ne!(a, get("style.css").unwrap().etag);
    }

    #[test]
    fn every_module_the_pages_import_is_embedded() {
        let all = paths();
        for path in &all {
            if !path.ends_with(".js") && !path.ends_with(".html") {
                continue;
            }
            let text = String::from_utf8(get(path).unwrap().bytes.into_owned()).unwrap();
            for import in text
                .split(['"', '\''])
                .filter_map(|s| s.strip_prefix("/assets/"))
            {
                let import = import.split(['?', '#']).next().unwrap();
                assert!(
                    all.iter().any(|p| p == import),
                    "{path} refers to /assets/{import}, which is not embedded"
                );
            }
            for relative in text.split(['"', '\'']).filter(|s| s.starts_with("./")) {
                let target = relative.trim_start_matches("./");
                assert!(
                    all.iter().any(|p| p == target),
                    "{path} imports {relative}, which is not embedded"
                );
            }
        }
    }
}
