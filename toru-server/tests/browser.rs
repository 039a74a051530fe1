//! The web UI end to end: a real `toru-server` with the two example plugins, driven through
//! Debian's headless `chromium` and `chromedriver` with thirtyfour.
//!
//! The tests install `chromium chromium-driver` with apt-get when `/usr/bin/chromedriver` is
//! missing (they run as root in CI). They write screenshots of the main screens into
//! `target/screenshots/` (or `$TORU_SCREENSHOT_DIR`), and copy them into `docs/images/` only with
//! `UPDATE_SCREENSHOTS=1`, so that a test run leaves the tracked images alone. They never sleep:
//! every wait is a thirtyfour query or a condition checked in the page, each with a deadline and
//! a message saying what was expected.

#[path = "browser/page.rs"]
mod page;
#[path = "browser/server.rs"]
mod server;

use page::with_browser;
use server::Server;

/// One browser at a time: the machine has two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The login page: a wrong secret is refused with a clear message, the right one opens the
/// dashboard (which works on a narrow screen too), and logging out ends the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_narrow_screen_and_logout() {
    let _turn = SERIAL.lock().await;
    let server = Server::start();
    with_browser(&server, async |b| {
        b.goto("/login").await;
        b.shot("login.png").await;
        b.type_into("#secret", "not-the-secret").await;
        b.click("#login-submit").await;
        b.wait_text("#login-error", "not the admin secret").await;
        assert!(b.js("return location.pathname").await == "/login");

        b.login().await;

        // A narrow screen: the sidebar is a drawer behind the menu button.
        b.size_viewport(480, 800).await;
        b.wait("#sidebar-toggle", "the menu button").await;
        b.wait_js(
            "the sidebar to be off screen on a narrow screen",
            "return document.getElementById('sidebar').getBoundingClientRect().right <= 0",
        )
        .await;
        b.click("#sidebar-toggle").await;
        b.wait(
            "body.sidebar-open #sidebar-plugin-list [data-plugin-id='hello-rust']",
            "the drawer",
        )
        .await;
        b.wait_js(
            "the drawer to slide in",
            "return document.getElementById('sidebar').getBoundingClientRect().left === 0",
        )
        .await;
        b.shot("narrow-sidebar.png").await;
        b.click("#sidebar-plugin-list [data-plugin-id='hello-rust']")
            .await;
        b.wait(
            "body:not(.sidebar-open) #plugin-view[data-status='mounted']",
            "the view, drawer closed",
        )
        .await;
        b.size_viewport(1280, 800).await;

        b.click("#logout").await;
        b.wait("#login-form", "the login page after logging out")
            .await;
        let session = b.fetch_json("GET", "/api/session").await;
        assert_eq!(session["body"]["authenticated"], false, "{session}");
    })
    .await;
}

/// The Plugin Manager and the sidebar: both plugins green, the details panel, disabling (toast,
/// gone from the sidebar, routes 404) and enabling again, a plugin view counting in KV, unmount
/// on the way out, and the logs modal paged through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_sidebar_plugin_view_and_logs() {
    let _turn = SERIAL.lock().await;
    let server = Server::start();
    with_browser(&server, async |b| {
        b.login().await;
        for id in ["hello-rust", "hello-python"] {
            b.wait(&sidebar_dot(id, "green"), &format!("{id} in the sidebar with a green dot"))
                .await;
        }
        b.wait(".plugin-card[data-plugin-id='hello-python'][data-state='running']", "cards")
            .await;
        b.shot("plugin-manager.png").await;

        // Details panel.
        b.click(".plugin-card[data-plugin-id='hello-rust'] .card-desc").await;
        b.wait("#details-panel[data-plugin-id='hello-rust']", "the details panel").await;
        b.wait_text("#details-panel [data-field='author']", "Toru").await;
        b.wait_text("#details-panel [data-field='route']", "/plugins/hello-rust/").await;
        b.wait("#details-events[data-loading='false'] .event-item", "recent events").await;
        b.clear_toasts().await;
        b.shot("plugin-details.png").await;
        b.click("#details-close").await;
        b.wait_gone("#details-panel", "the details panel to close").await;

        // Disable from the manager: toast, gone from the sidebar, routes answer 404.
        b.click(".plugin-card[data-plugin-id='hello-python'] .switch").await;
        b.wait_text("#toast", "Hello (Python) disabled").await;
        b.wait_gone(
            "#sidebar-plugin-list [data-plugin-id='hello-python']",
            "hello-python to leave the sidebar",
        )
        .await;
        b.wait(".plugin-card[data-plugin-id='hello-python'][data-enabled='false']", "card off")
            .await;
        let route = b.fetch_json("GET", "/plugins/hello-python/").await;
        assert_eq!(route["status"], 404, "a disabled plugin's route: {route}");

        // And enable it again.
        b.click(".plugin-card[data-plugin-id='hello-python'] .switch").await;
        b.wait_text("#toast", "Hello (Python) enabled").await;
        b.wait(&sidebar_dot("hello-python", "green"), "hello-python back, green").await;

        // A plugin view: the counter goes through the server and the plugin to KV and back.
        b.click("#sidebar-plugin-list [data-plugin-id='hello-rust']").await;
        b.wait("#plugin-view[data-status='mounted']", "hello-rust's view mounted").await;
        b.wait_text("#hello-rust-greeting", "Hello from Rust!").await;
        b.click("#hello-rust-increment").await;
        b.wait_text("#hello-rust-count", "1").await;
        b.wait("#hello-rust-increment:not([disabled])", "the button ready again").await;
        b.clear_toasts().await;
        b.click("#hello-rust-increment").await;
        b.wait_text("#hello-rust-count", "2").await;
        b.wait_text("#toast", "Count is now 2").await;
        b.shot("plugin-view.png").await;

        // Navigating away unmounts the bundle.
        b.click("#nav-plugins").await;
        b.wait("#manager", "the Plugin Manager").await;
        let unmounted = b.js("return window.__toruUnmounted ?? null").await;
        assert_eq!(unmounted, "hello-rust", "unmount(container) ran");
        b.wait_gone("#plugin-container", "the plugin container removed").await;

        // The logs modal, paged. Each count logs a line; make sure there are a few pages.
        for _ in 0..12 {
            let r = b.fetch_json("POST", "/plugins/hello-rust/count").await;
            assert_eq!(r["status"], 200, "{r}");
        }
        b.click(".plugin-card[data-plugin-id='hello-rust'] [data-action='logs']").await;
        b.wait("#logs-modal[data-loading='false'] .log-row", "log entries").await;
        b.select("#logs-page-size", "10").await;
        b.wait_count("#logs-modal[data-page='0'][data-loading='false'] .log-row", 10).await;
        let first_page = b.texts("#logs-entries .log-row").await;
        b.clear_toasts().await;
        b.shot("logs-modal.png").await;
        b.click("#logs-next").await;
        b.wait("#logs-modal[data-page='1'][data-loading='false'] .log-row", "page 2").await;
        let second_page = b.texts("#logs-entries .log-row").await;
        assert_ne!(first_page, second_page, "page 2 shows other entries");
        b.click("#logs-prev").await;
        b.wait_count("#logs-modal[data-page='0'][data-loading='false'] .log-row", 10).await;
        assert_eq!(b.texts("#logs-entries .log-row").await[0], first_page[0]);
        b.wait(
            "#logs-modal[data-loading='false'] .log-row[data-level='info'] .log-message",
            "info lines",
        )
        .await;
        b.select("#logs-level", "warn").await;
        b.wait("#logs-modal[data-page='0'][data-loading='false']", "the filtered page").await;
        let levels = b
            .js("return [...document.querySelectorAll('#logs-entries .log-row')].map(r => r.dataset.level)")
            .await;
        let levels = levels.as_array().expect("an array of levels");
        assert!(
            levels.iter().all(|l| l == "warn" || l == "error"),
            "warn and above only: {levels:?}"
        );
        b.click("#logs-close").await;
        b.wait_gone("#logs-modal", "the logs modal to close").await;
    })
    .await;
}

/// A plugin killed from outside: its dot turns red, the open view shows the error card with
/// the plugin's logs, and Retry brings the page back once the plugin has restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_plugin_shows_red_and_an_error_card() {
    let _turn = SERIAL.lock().await;
    let server = Server::start();
    with_browser(&server, async |b| {
        b.login().await;
        b.click("#sidebar-plugin-list [data-plugin-id='hello-python']").await;
        b.wait("#plugin-view[data-status='mounted'] #hello-python-increment", "the view").await;

        // The red state may last only the restart delay: record it as it happens.
        b.js(r##"
            window.__sawRed = false;
            const red = "#sidebar-plugin-list [data-plugin-id='hello-python'] .dot[data-health='red']";
            new MutationObserver(() => {
                if (document.querySelector(red)) window.__sawRed = true;
            }).observe(document.getElementById("sidebar"), { subtree: true, childList: true, attributes: true });
            return null;
        "##)
        .await;
        let info = b.fetch_json("GET", "/api/plugins/hello-python").await;
        let pid = info["body"]["pid"].as_i64().expect("hello-python has a pid") as i32;
        let pid = rustix::process::Pid::from_raw(pid).expect("a positive pid");
        rustix::process::kill_process(pid, rustix::process::Signal::KILL).expect("SIGKILL");

        b.wait(".error-card[data-reason='crashed']", "the crashed error card").await;
        b.wait(".error-card .error-logs[data-loading='false'] .log-row", "its recent logs").await;
        b.wait_js("the sidebar dot to turn red", "return window.__sawRed === true").await;
        b.shot("error-card.png").await;

        // Once the plugin runs again, Retry mounts its page again.
        b.wait(&sidebar_dot("hello-python", "green"), "hello-python restarted").await;
        b.click(".error-card [data-action='retry']").await;
        b.wait("#plugin-view[data-status='mounted'] #hello-python-increment", "the view back")
            .await;
    })
    .await;
}

/// The plugin view says which thing failed: a bundle without `mount`, a `mount` that throws,
/// an unknown plugin, a disabled one (with an Enable button that brings the page back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_view_says_what_went_wrong() {
    let _turn = SERIAL.lock().await;
    let server = Server::start_with(&[
        ("no-mount", "export const notMount = 1;"),
        (
            "throws",
            "export function mount() { throw new Error('boom in mount'); }",
        ),
    ]);
    with_browser(&server, async |b| {
        b.login().await;
        b.wait(&sidebar_dot("no-mount", "green"), "no-mount running")
            .await;
        b.wait(&sidebar_dot("throws", "green"), "throws running")
            .await;

        b.click("#sidebar-plugin-list [data-plugin-id='no-mount']")
            .await;
        b.wait(".error-card[data-reason='no-mount']", "the no-mount card")
            .await;
        b.wait_text(".error-card[data-reason='no-mount']", "notMount")
            .await;
        b.wait(".error-card [data-action='retry']", "a Retry button")
            .await;

        b.click("#sidebar-plugin-list [data-plugin-id='throws']")
            .await;
        b.wait(
            ".error-card[data-reason='mount-threw']",
            "the mount-threw card",
        )
        .await;
        b.wait_text(".error-card[data-reason='mount-threw']", "boom in mount")
            .await;
        b.wait(".error-card .error-logs[data-loading='false']", "its logs")
            .await;

        b.goto("/#/plugin/no-such-plugin").await;
        b.wait(
            ".error-card[data-reason='unknown']",
            "the unknown-plugin card",
        )
        .await;

        b.goto("/#/plugin/hello-python").await;
        b.wait(
            "#plugin-view[data-status='mounted'] #hello-python-increment",
            "the view",
        )
        .await;
        let off = b
            .fetch_json("POST", "/api/plugins/hello-python/disable")
            .await;
        assert_eq!(off["status"], 200, "{off}");
        b.wait(".error-card[data-reason='disabled']", "the disabled card")
            .await;
        assert_eq!(
            b.js("return window.__toruUnmounted ?? null").await,
            "hello-python"
        );
        b.click(".error-card [data-action='enable']").await;
        b.wait_text("#toast", "Hello (Python) enabled").await;
        b.wait(
            "#plugin-view[data-status='mounted'] #hello-python-increment",
            "the view back",
        )
        .await;
    })
    .await;
}

/// The details panel's Limits section: how the plugin is contained, bad values refused under
/// their fields, a memory limit too small for the plugin (which then crashes at it, and its page
/// says which limit), and back to the defaults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_in_the_details_panel_and_a_plugin_stopped_at_one() {
    let _turn = SERIAL.lock().await;
    let server = Server::start();
    with_browser(&server, async |b| {
        b.login().await;
        b.wait(&sidebar_dot("hello-python", "green"), "hello-python running").await;
        b.click(".plugin-card[data-plugin-id='hello-python'] .card-desc").await;
        let section = "#details-panel[data-plugin-id='hello-python'] [data-section='limits']";
        b.wait(&format!("{section}:not([hidden])"), "the Limits section").await;
        b.wait_text(&format!("{section} [data-field='containment']"), "kept together by")
            .await;
        b.wait_text(&format!("{section} [data-hint='memory']"), "default: 512 MiB").await;
        b.wait_text(&format!("{section} [data-hint='open_files']"), "by an rlimit").await;

        let memory = format!("{section} [data-limit='memory']");
        let cpu = format!("{section} [data-limit='cpu']");
        b.type_into(&memory, "lots").await;
        b.type_into(&cpu, "0").await;
        b.click(&format!("{section} [data-action='limits-save']")).await;
        b.wait_text(&format!("{section} [data-error='memory']"), "is not a size").await;
        b.wait_text(&format!("{section} [data-error='cpu']"), "out of range").await;
        let info = b.fetch_json("GET", "/api/plugins/hello-python").await;
        assert_eq!(info["body"]["limit_overrides"], serde_json::json!({}), "{info}");
        b.js("document.querySelector('#details-panel [data-section=limits]').scrollIntoView(); return null")
            .await;
        b.clear_toasts().await;
        b.shot("plugin-limits.png").await;

        // Too little memory for Python: it is stopped at the limit, and its page says so.
        b.type_into(&memory, "4MiB").await;
        b.type_into(&cpu, "50%").await;
        b.click(&format!("{section} [data-action='limits-save']")).await;
        b.wait_text("#toast", "Limits saved").await;
        b.wait_text(&format!("{section} [data-hint='memory']"), "its own: 4 MiB").await;
        b.wait_gone(&format!("{section} [data-error='memory']:not([hidden])"), "the error gone")
            .await;
        b.click("#details-close").await;
        b.goto("/#/plugin/hello-python").await;
        b.wait_text(".error-card[data-reason='crashed']", "exceeded its memory limit of 4 MiB")
            .await;
        b.wait_text(".error-card[data-reason='crashed']", "went over one of its limits").await;
        b.clear_toasts().await;
        b.shot("limit-error-card.png").await;

        // Back to the defaults: it runs again.
        b.goto("/#/plugins").await;
        b.click(".plugin-card[data-plugin-id='hello-python'] .card-desc").await;
        b.click(&format!("{section} [data-action='limits-reset']")).await;
        b.wait_text("#toast", "Limits saved").await;
        b.wait(&sidebar_dot("hello-python", "green"), "hello-python running again").await;
    })
    .await;
}

/// A secret typed into the form: it must never be in the page once saved.
const FORM_SECRET: &str = "tok-5b7e0c91-typed-in-the-form";

/// The settings a copy of the Python example declares for the form test: one of every type.
const FORM_SETTINGS: &str = r#"[
    {"name": "greeting", "label": "Greeting", "type": "string", "default": "Hello",
     "help": "The word GET /hello-form/ greets with."},
    {"name": "retries", "label": "Retries", "type": "number", "default": 3,
     "help": "How often to try again."},
    {"name": "verbose", "label": "Verbose logs", "type": "boolean", "default": False},
    {"name": "mode", "label": "Mode", "type": "choice", "choices": ["fast", "safe"],
     "default": "safe"},
    {"name": "api_token", "label": "API token", "type": "secret", "help": "Never shown again."},
]"#;

/// The details panel's Settings section: hello-python's greeting changed in the form reaches
/// its route without a restart, the secret typed beside it is never in the page, a bad value is
/// refused under its field (nothing saved), and a secret can be cleared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_form_changes_a_live_greeting_and_shows_field_errors() {
    let _turn = SERIAL.lock().await;
    let server = Server::start();
    server.drop_plugin_with_settings("hello-form", FORM_SETTINGS);
    with_browser(&server, async |b| {
        b.login().await;
        b.wait(&sidebar_dot("hello-python", "green"), "hello-python running").await;
        let before = b.fetch_json("GET", "/api/plugins/hello-python").await;
        let pid = before["body"]["pid"].clone();
        assert!(pid.is_number(), "{before}");
        b.click(".plugin-card[data-plugin-id='hello-python'] .card-desc").await;
        let section = "#details-panel[data-plugin-id='hello-python'] [data-section='settings']";
        b.wait(&format!("{section}:not([hidden])"), "the Settings section").await;
        b.wait_text(&format!("{section} [data-help='greeting']"), "greets with").await;
        b.wait_text(&format!("{section} [data-secret-state='api_token']"), "not set").await;
        // The license key has its own section, not a field here.
        b.wait_gone(&format!("{section} [data-setting='license_key']"), "no license field")
            .await;

        b.type_into(&format!("{section} [data-setting='greeting']"), "Howdy").await;
        b.type_into(&format!("{section} [data-setting='api_token']"), FORM_SECRET).await;
        b.click(&format!("{section} [data-action='settings-save']")).await;
        b.wait_text("#toast", "Settings of Hello (Python) saved").await;
        b.wait(
            &format!("{section} [data-secret-state='api_token'][data-set='true']"),
            "the token shown as set",
        )
        .await;

        // Within seconds, without a restart.
        let deadline = std::time::Instant::now() + server::WAIT;
        loop {
            let r = b.fetch_json("GET", "/plugins/hello-python/").await;
            if r["body"]["message"] == "Howdy from Python!" {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the greeting never changed: {r}");
        }
        let after = b.fetch_json("GET", "/api/plugins/hello-python").await;
        assert_eq!(after["body"]["pid"], pid, "the same process: {after}");

        // The secret is nowhere in the page: not in its HTML, not in a field.
        let html = b.js("return document.documentElement.outerHTML").await;
        assert!(!html.as_str().unwrap().contains(FORM_SECRET), "the secret is in the page");
        let typed = b
            .js(&format!(
                "return [...document.querySelectorAll('input, textarea')].some(i => i.value.includes({FORM_SECRET:?}))"
            ))
            .await;
        assert_eq!(typed, false, "the secret is still in a field");
        b.clear_toasts().await;
        b.js("document.querySelector('#details-panel [data-section=settings]').scrollIntoView(); return null")
            .await;
        b.shot("plugin-settings.png").await;

        // Cleared: not set any more.
        b.click(&format!("{section} [data-action='secret-clear']")).await;
        b.wait(
            &format!("{section} [data-secret-state='api_token'][data-set='false']"),
            "the token shown as not set",
        )
        .await;
        b.click("#details-close").await;

        // Every type in a form; a bad number is refused under its field, and nothing is saved.
        b.wait(".plugin-card[data-plugin-id='hello-form'][data-state='running']", "hello-form")
            .await;
        b.click(".plugin-card[data-plugin-id='hello-form'] .card-desc").await;
        let form = "#details-panel[data-plugin-id='hello-form'] [data-section='settings']";
        b.wait(&format!("{form}:not([hidden])"), "hello-form's Settings section").await;
        for (name, kind) in [
            ("greeting", "input[type='text']"),
            ("retries", "input[inputmode='decimal']"),
            ("verbose", "input[type='checkbox']"),
            ("mode", "select"),
            ("api_token", "input[type='password']"),
        ] {
            b.wait(&format!("{form} {kind}[data-setting='{name}']"), name).await;
        }
        b.type_into(&format!("{form} [data-setting='retries']"), "lots").await;
        b.click(&format!("{form} [data-setting='verbose']")).await;
        b.select(&format!("{form} [data-setting='mode']"), "fast").await;
        b.click(&format!("{form} [data-action='settings-save']")).await;
        b.wait_text(&format!("{form} [data-error='retries']"), "expected a number").await;
        b.wait_text("#toast", "Could not save the settings of Test hello-form").await;
        let info = b.fetch_json("GET", "/api/plugins/hello-form").await;
        let stored = info["body"]["settings"].as_array().cloned().unwrap_or_default();
        assert!(stored.iter().all(|s| s["set"] == false), "nothing saved: {info}");

        b.type_into(&format!("{form} [data-setting='retries']"), "5").await;
        b.click(&format!("{form} [data-action='settings-save']")).await;
        b.wait_text("#toast", "Settings of Test hello-form saved").await;
        b.wait_gone(&format!("{form} [data-error='retries']:not([hidden])"), "the error gone")
            .await;
        let info = b.fetch_json("GET", "/api/plugins/hello-form").await;
        let values: Vec<_> = info["body"]["settings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["name"].clone(), s["value"].clone()))
            .collect();
        assert_eq!(
            serde_json::json!(values),
            serde_json::json!([["greeting", "Hello"], ["retries", 5], ["verbose", true],
                               ["mode", "fast"], ["api_token", null]]),
            "{info}"
        );
    })
    .await;
}

fn sidebar_dot(id: &str, health: &str) -> String {
    format!("#sidebar-plugin-list [data-plugin-id='{id}'] .dot[data-health='{health}']")
}

/// The live plugins folder in the Plugin Manager (folder watch off, so that only the button
/// acts): a file dropped in the folder appears after **Rescan**, running; once its file is
/// removed, the next Rescan shows it as missing, with what that means.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rescan_button_finds_a_new_plugin_and_shows_a_removed_one_as_missing() {
    let _turn = SERIAL.lock().await;
    let server = Server::start_args(&[], &["--no-watch", "--rescan-interval=1h"]);
    with_browser(&server, async |b| {
        b.login().await;
        b.wait(
            ".plugin-card[data-plugin-id='hello-python'][data-state='running']",
            "cards",
        )
        .await;
        server.drop_plugin("hello-late");
        b.clear_toasts().await;
        b.click("#rescan").await;
        b.wait_text("#toast", "Rescanned: 1 new plugin").await;
        b.wait(
            ".plugin-card[data-plugin-id='hello-late'][data-state='running']",
            "the new plugin's card, running",
        )
        .await;

        server.remove_plugin("hello-late");
        b.clear_toasts().await;
        b.click("#rescan").await;
        b.wait_text("#toast", "Rescanned: 1 removed").await;
        b.wait(
            ".plugin-card[data-plugin-id='hello-late'][data-state='missing']",
            "the card of the removed plugin, missing",
        )
        .await;
        b.wait_text(
            ".plugin-card[data-plugin-id='hello-late'] .card-problem",
            "put the file back",
        )
        .await;
        b.wait_text(
            ".plugin-card[data-plugin-id='hello-late'] .state-label",
            "Missing",
        )
        .await;
    })
    .await;
}

/// The example plugins' pages are live: each shows the ticks its plugin streams as server-sent
/// events (protocol 2, through toru-server's streamed responses), and the count goes on rising
/// while the page is open, one event at a time, not one buffered answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_pages_show_their_live_ticks() {
    let _turn = SERIAL.lock().await;
    let server = Server::start();
    with_browser(&server, async |b| {
        b.login().await;
        for (id, ticks) in [
            (
                "hello-rust",
                "Number(document.querySelector('#hello-rust-ticks')?.textContent)",
            ),
            (
                "hello-python",
                "Number(document.querySelector('#hello-python-ticks')?.dataset.tick)",
            ),
        ] {
            b.wait(&sidebar_dot(id, "green"), &format!("{id} in the sidebar"))
                .await;
            b.click(&format!("#sidebar-plugin-list [data-plugin-id='{id}']"))
                .await;
            b.wait(
                "#plugin-view[data-status='mounted']",
                &format!("{id}'s view mounted"),
            )
            .await;
            let first = b
                .wait_js(
                    &format!("{id}'s first tick"),
                    &format!("return {ticks} >= 1 && {ticks}"),
                )
                .await;
            let first = first.as_f64().expect("a tick number");
            b.wait_js(
                &format!("{id}'s ticks to go on after {first}"),
                &format!("return {ticks} > {first}"),
            )
            .await;
            b.click("#nav-plugins").await;
            b.wait("#manager", "the Plugin Manager").await;
        }
    })
    .await;
}
