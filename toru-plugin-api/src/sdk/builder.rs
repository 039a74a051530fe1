//! [`Plugin`]: a whole plugin from its metadata and a [`Router`], with optional hooks.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;

use super::context::PluginContext;
use super::error::{HttpResult, InitError};
use super::plugin::ToruPlugin;
use super::request::Request;
use super::router::Router;
use crate::license::LicensePolicy;
use crate::protocol::PluginMetadata;

type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type InitHook<S> = Box<dyn Fn(Arc<S>, PluginContext) -> Boxed<Result<(), InitError>> + Send + Sync>;
type SettingsHook<S> = Box<dyn Fn(Arc<S>, PluginContext) -> Boxed<()> + Send + Sync>;

/// A plugin made of its metadata and a [`Router`]: the short way to a [`ToruPlugin`].
///
/// ```no_run
/// use serde_json::json;
/// use toru_plugin_api::{HttpResult, Plugin, PluginContext, PluginMetadata, Request, Response, Router};
///
/// async fn hello(_: PluginContext, _: Request) -> HttpResult {
///     Ok(Response::text(200, "Hello!"))
/// }
///
/// async fn count(ctx: PluginContext, _: Request) -> HttpResult {
///     let n = ctx.kv().get("n").await?.and_then(|v| v.parse().ok()).unwrap_or(0u64) + 1;
///     ctx.kv().set("n", &n.to_string()).await?;
///     Ok(Response::json(200, &json!({ "count": n })))
/// }
///
/// fn main() {
///     let meta = PluginMetadata::new("counter", "Counter", "0.1.0", "/counter");
///     let routes = Router::new().get("/", hello).post("/count", count);
///     toru_plugin_api::run(Plugin::new(meta, routes))
/// }
/// ```
pub struct Plugin<S = ()> {
    metadata: PluginMetadata,
    router: Router<S>,
    bundle: Option<Cow<'static, str>>,
    license: Option<LicensePolicy>,
    on_init: Option<InitHook<S>>,
    on_settings: Option<SettingsHook<S>>,
}

impl<S> std::fmt::Debug for Plugin<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("metadata", &self.metadata)
            .field("router", &self.router)
            .field("bundle", &self.bundle.is_some())
            .field("license", &self.license.is_some())
            .finish_non_exhaustive()
    }
}

impl<S: Send + Sync + 'static> Plugin<S> {
    /// A plugin that answers `--metadata` with `metadata` and requests with `router`.
    pub fn new(metadata: PluginMetadata, router: Router<S>) -> Self {
        Plugin {
            metadata,
            router,
            bundle: None,
            license: None,
            on_init: None,
            on_settings: None,
        }
    }

    /// The frontend bundle (see [`ToruPlugin::bundle`]), usually `include_str!("bundle.js")`.
    pub fn with_bundle(mut self, script: impl Into<Cow<'static, str>>) -> Self {
        self.bundle = Some(script.into());
        self
    }

    /// The license keys the plugin accepts (see [`ToruPlugin::license`]).
    pub fn with_license(mut self, policy: LicensePolicy) -> Self {
        self.license = Some(policy);
        self
    }

    /// Runs `hook` once the host has connected, before any request (see
    /// [`ToruPlugin::init`]): an `Err` refuses to start.
    pub fn on_init<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(Arc<S>, PluginContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), InitError>> + Send + 'static,
    {
        self.on_init = Some(Box::new(move |s, ctx| Box::pin(hook(s, ctx))));
        self
    }

    /// Runs `hook` each time the host sends changed settings (see
    /// [`ToruPlugin::settings_changed`]), and says `"live_settings": true` in the metadata, so
    /// the host sends them instead of restarting the plugin.
    pub fn on_settings<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(Arc<S>, PluginContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.metadata.live_settings = true;
        self.on_settings = Some(Box::new(move |s, ctx| Box::pin(hook(s, ctx))));
        self
    }

    /// The router.
    pub fn router(&self) -> &Router<S> {
        &self.router
    }
}

#[async_trait]
impl<S: Send + Sync + 'static> ToruPlugin for Plugin<S> {
    fn metadata(&self) -> PluginMetadata {
        self.metadata.clone()
    }

    async fn init(&self, ctx: &PluginContext) -> Result<(), InitError> {
        match &self.on_init {
            Some(hook) => hook(self.router.state().clone(), ctx.clone()).await,
            None => Ok(()),
        }
    }

    async fn handle_http(&self, ctx: &PluginContext, req: Request) -> HttpResult {
        Ok(self.router.handle(ctx, req).await)
    }

    async fn settings_changed(&self, ctx: &PluginContext) {
        if let Some(hook) = &self.on_settings {
            hook(self.router.state().clone(), ctx.clone()).await;
        }
    }

    fn license(&self) -> Option<&LicensePolicy> {
        self.license.as_ref()
    }

    fn bundle(&self) -> Option<&str> {
        self.bundle.as_deref()
    }
}
