//! The browser: Debian's chromium through chromedriver, and waits that say what they expected.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use futures_util::FutureExt as _;
use serde_json::Value;
use thirtyfour::prelude::*;

use crate::server::{SECRET, Server, WAIT, forward, lines, wait_line};

const POLL: Duration = Duration::from_millis(50);

/// Installs Debian's chromium and chromedriver when they are missing (once per test run).
fn ensure_chromium() {
    static INSTALLED: Mutex<bool> = Mutex::new(false);
    let mut done = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
    if *done || Path::new("/usr/bin/chromedriver").exists() {
        *done = true;
        return;
    }
    eprintln!("browser tests: /usr/bin/chromedriver is missing; installing Debian's chromium");
    for args in [
        &["update"][..],
        &[
            "install",
            "-y",
            "chromium",
            "chromium-driver",
            "fonts-noto-color-emoji",
        ][..],
    ] {
        eprintln!("browser tests: apt-get {}", args.join(" "));
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .expect("apt-get runs");
        assert!(
            status.success(),
            "apt-get {} failed: {status}",
            args.join(" ")
        );
    }
    *done = true;
}

/// Starts chromedriver and headless chromium, runs `body`, and always closes the browser.
pub(crate) async fn with_browser(server: &Server, body: impl AsyncFnOnce(&Browser)) {
    ensure_chromium();
    let mut driver_proc = Command::new("/usr/bin/chromedriver")
        .arg("--port=0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromedriver starts");
    forward("chromedriver", driver_proc.stderr.take().unwrap());
    let lines = lines("chromedriver", driver_proc.stdout.take().unwrap());
    let port: u16 = wait_line(&lines, "chromedriver to start", |line| {
        let rest = line.split("started successfully on port ").nth(1)?;
        rest.trim().trim_end_matches('.').parse().ok()
    });
    std::thread::spawn(move || while lines.recv().is_ok() {});

    let profile = tempfile::tempdir().unwrap();
    let mut caps = DesiredCapabilities::chrome();
    caps.set_binary("/usr/bin/chromium").unwrap();
    for arg in [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,800",
        "--force-device-scale-factor=1",
        "--lang=en-US",
    ] {
        caps.add_arg(arg).unwrap();
    }
    caps.add_arg(&format!("--user-data-dir={}", profile.path().display()))
        .unwrap();
    let driver = WebDriver::new(format!("http://127.0.0.1:{port}"), caps)
        .await
        .expect("a chromium session");
    driver.set_script_timeout(WAIT).await.unwrap();
    let browser = Browser {
        driver,
        base: server.url.clone(),
    };
    browser.size_viewport(1280, 800).await;
    let outcome = std::panic::AssertUnwindSafe(body(&browser))
        .catch_unwind()
        .await;
    if outcome.is_err() {
        // What the page showed when the test failed, for the reader of the failure.
        let thread = std::thread::current();
        let test = thread.name().unwrap_or("browser").replace("::", "-");
        let path = std::env::temp_dir().join(format!("toru-{test}-failure.png"));
        if browser.driver.screenshot(&path).await.is_ok() {
            eprintln!("the page at the failure: {}", path.display());
        }
    }
    let _ = browser.driver.quit().await;
    let _ = driver_proc.kill();
    let _ = driver_proc.wait();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// The page, with waits that fail with a message saying what was expected.
pub(crate) struct Browser {
    driver: WebDriver,
    base: String,
}

impl Browser {
    pub(crate) async fn goto(&self, path: &str) {
        self.driver
            .goto(format!("{}{path}", self.base))
            .await
            .unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
    }

    /// Logs in through the login page and waits for the dashboard.
    pub(crate) async fn login(&self) {
        self.goto("/").await;
        self.wait("#login-form", "a redirect to the login page")
            .await;
        self.type_into("#secret", SECRET).await;
        self.click("#login-submit").await;
        self.wait(
            "#app[data-ready='true'] #manager",
            "the dashboard after logging in",
        )
        .await;
    }

    pub(crate) async fn wait(&self, css: &str, what: &str) -> WebElement {
        self.driver
            .query(By::Css(css))
            .wait(WAIT, POLL)
            .first()
            .await
            .unwrap_or_else(|e| panic!("timed out waiting for {what} ({css}): {e}"))
    }

    pub(crate) async fn wait_gone(&self, css: &str, what: &str) {
        let script = format!("return !document.querySelector({})", js_str(css));
        self.wait_js(what, &script).await;
    }

    pub(crate) async fn wait_count(&self, css: &str, n: usize) {
        let script = format!(
            "return document.querySelectorAll({}).length === {n}",
            js_str(css)
        );
        self.wait_js(&format!("{n} elements matching {css}"), &script)
            .await;
    }

    /// Waits until an element matching `css` contains `text`.
    pub(crate) async fn wait_text(&self, css: &str, text: &str) {
        let script = format!(
            "return [...document.querySelectorAll({})].some(e => e.textContent.includes({}))",
            js_str(css),
            js_str(text)
        );
        self.wait_js(&format!("{css} to say {text:?}"), &script)
            .await;
    }

    /// Waits until `body` (a function body) returns something truthy in the page; returns it.
    pub(crate) async fn wait_js(&self, what: &str, body: &str) -> Value {
        let script = format!(
            "const done = arguments[arguments.length - 1];
             const check = () => {{ {body} }};
             const tick = () => {{
                 let value = null;
                 try {{ value = check(); }} catch (e) {{ value = null; }}
                 if (value) done(value); else setTimeout(tick, {});
             }};
             tick();",
            POLL.as_millis()
        );
        match self.driver.execute_async(script, Vec::new()).await {
            Ok(ret) => ret.json().clone(),
            Err(e) => panic!("timed out waiting for {what}: {e}"),
        }
    }

    pub(crate) async fn js(&self, body: &str) -> Value {
        let ret = self
            .driver
            .execute(body, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{body}"));
        ret.json().clone()
    }

    /// `fetch` from the page, with its session: `{"status": n, "body": json-or-null}`.
    pub(crate) async fn fetch_json(&self, method: &str, path: &str) -> Value {
        let script = format!(
            "const done = arguments[arguments.length - 1];
             fetch({}, {{ method: {}, credentials: 'same-origin' }})
               .then(async r => {{
                   const text = await r.text();
                   let body = null;
                   try {{ body = JSON.parse(text); }} catch (e) {{}}
                   done({{ status: r.status, body }});
               }})
               .catch(e => done({{ status: 0, body: String(e) }}));",
            js_str(path),
            js_str(method)
        );
        self.driver
            .execute_async(script, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("{method} {path} from the page failed: {e}"))
            .json()
            .clone()
    }

    pub(crate) async fn click(&self, css: &str) {
        let element = self.wait(css, &format!("{css} to click")).await;
        element
            .click()
            .await
            .unwrap_or_else(|e| panic!("cannot click {css}: {e}"));
    }

    pub(crate) async fn type_into(&self, css: &str, text: &str) {
        let element = self.wait(css, &format!("{css} to type into")).await;
        element.clear().await.unwrap();
        element.send_keys(text).await.unwrap();
    }

    /// Chooses the option with `value` in the `<select>` at `css`.
    pub(crate) async fn select(&self, css: &str, value: &str) {
        let option = format!("{css} option[value='{value}']");
        self.click(&option).await;
    }

    pub(crate) async fn texts(&self, css: &str) -> Vec<String> {
        let script = format!(
            "return [...document.querySelectorAll({})].map(e => e.textContent)",
            js_str(css)
        );
        serde_json::from_value(self.js(&script).await).expect("a list of texts")
    }

    /// Makes the page area `width` x `height` (the window's own frame comes on top).
    pub(crate) async fn size_viewport(&self, width: u32, height: u32) {
        let frame = self
            .js("return [window.outerWidth - window.innerWidth, window.outerHeight - window.innerHeight]")
            .await;
        let frame: [u32; 2] = serde_json::from_value(frame).expect("two numbers");
        self.driver
            .set_window_rect(0, 0, width + frame[0], height + frame[1])
            .await
            .expect("the window can be resized");
    }

    /// Dismisses every toast (before a screenshot, so earlier toasts do not clutter it).
    pub(crate) async fn clear_toasts(&self) {
        self.js("document.querySelectorAll('#toast .toast').forEach(t => t.remove()); return null")
            .await;
    }

    /// Saves a screenshot into `target/screenshots/` (or `$TORU_SCREENSHOT_DIR`) once every
    /// finite animation (a toast sliding in, a panel opening) has finished; with
    /// `UPDATE_SCREENSHOTS=1`, copies it into `docs/images/` too (the README shows those).
    pub(crate) async fn shot(&self, name: &str) {
        self.wait_js(
            "animations to finish before a screenshot",
            "return document.getAnimations().every(a =>
                 a.playState !== 'running' || a.effect.getComputedTiming().iterations === Infinity)",
        )
        .await;
        let dir = std::env::var_os("TORU_SCREENSHOT_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("../screenshots"));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        if let Err(e) = self.driver.screenshot(&path).await {
            eprintln!("cannot save {}: {e}", path.display());
            return;
        }
        if std::env::var_os("UPDATE_SCREENSHOTS").is_some_and(|v| v == "1") {
            let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/images");
            if let Err(e) = std::fs::copy(&path, docs.join(name)) {
                eprintln!(
                    "cannot copy {} into {}: {e}",
                    path.display(),
                    docs.display()
                );
            }
        }
    }
}

/// `s` as a JavaScript string literal.
fn js_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}
