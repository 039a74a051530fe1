//! The trait a Rust plugin implements.

use async_trait::async_trait;

use super::context::PluginContext;
use super::error::{HttpResult, InitError};
use super::request::Request;
use crate::license::LicensePolicy;
use crate::protocol::PluginMetadata;

/// A Toru plugin. Implement it and hand the value to [`run`](crate::run) from `main`; or build
/// a [`Plugin`](super::Plugin) from metadata and a [`Router`](super::Router), which implements
/// it for you.
///
/// The SDK calls [`init`](Self::init) once, when the host has connected, and then
/// [`handle_http`](Self::handle_http) for every request, many at once, each in its own task. A
/// request the host cancels (because it timed out, or the client went away) is dropped at its
/// next `.await`.
///
/// The trait uses [`async_trait`](macro@async_trait::async_trait): put `#[async_trait]` on the
/// `impl` block too.
#[async_trait]
pub trait ToruPlugin: Send + Sync + 'static {
    /// What `--metadata` prints. The SDK fills in `protocol` (when `None`) with the versions it
    /// speaks, and sets `frontend` when [`bundle`](Self::bundle) returns a script.
    fn metadata(&self) -> PluginMetadata;

    /// Called once the host has sent `init`, before any request. Returning an error refuses to
    /// start: the host gets an `error` with code `init_refused` and the reason, the reason goes to
    /// stderr, and [`run`](crate::run) exits with [`EXIT_CONFIG`](crate::protocol::EXIT_CONFIG)
    /// (78), which the host reads as "do not restart". Check license keys and settings here.
    ///
    /// The default accepts any settings.
    async fn init(&self, ctx: &PluginContext) -> Result<(), InitError> {
        let _ = ctx;
        Ok(())
    }

    /// Answers one HTTP request for the plugin's route. `req.path` is the full path
    /// (`/hello-rust/count`); [`Request::subpath`] is the part after the route. Only paths at or
    /// below the route reach the handler: the SDK answers any other with 404
    /// `{"error": "not found"}`. An `Err` is answered as JSON `{"error": message}` with its
    /// status (and logged when it is a 5xx); a panic becomes an `error` reply with code
    /// `plugin_error` (the client gets 502). [`Router::handle`](super::Router::handle) answers
    /// from a table of routes.
    async fn handle_http(&self, ctx: &PluginContext, req: Request) -> HttpResult;

    /// Called after a `settings` message changed the settings, which
    /// [`PluginContext::settings`] already returns: apply what needs more than reading them.
    /// The host sends `settings` only to a plugin whose metadata says `live_settings`; the
    /// others are restarted with the new values in `init`.
    ///
    /// The default does nothing.
    async fn settings_changed(&self, ctx: &PluginContext) {
        let _ = ctx;
    }

    /// The license keys this plugin accepts, for a plugin that needs a license. When it returns
    /// a policy, the SDK checks the `license_key` setting against it, this plugin's id and the
    /// host's instance id before [`init`](Self::init): a key that is missing or refused makes the
    /// plugin refuse to start (exit 78) with the reason, and an accepted key's claims are in
    /// [`PluginContext::license`]. `--metadata` then says `"license_required": true`.
    ///
    /// The default, `None`, is a plugin that needs no license (a community plugin).
    fn license(&self) -> Option<&LicensePolicy> {
        None
    }

    /// The frontend bundle, an ES module that exports `mount(container, api)` and
    /// `unmount(container)`, served to the host's `get_bundle`. `None` (the default) answers
    /// `not_found`.
    fn bundle(&self) -> Option<&str> {
        None
    }
}
