//! A plugin for the limit_detect bench: `GET /hog/grow` allocates and touches memory without
//! bound, a MiB at a time, until its memory limit stops it; any other request answers 200.

use toru_plugin_api::{
    HttpResult, PluginContext, PluginMetadata, Request, Response, ToruPlugin, async_trait,
};

struct Hog;

#[async_trait]
impl ToruPlugin for Hog {
    fn metadata(&self) -> PluginMetadata {
        PluginMetadata::new("hog", "Hog", "0.0.1", "/hog")
            .with_author("toru benches")
            .with_description("grows without bound on request")
            .with_icon("🐗")
    }

    async fn handle_http(&self, _ctx: &PluginContext, req: Request) -> HttpResult {
        if req.subpath() == "/grow" {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
            }
        }
        Ok(Response::text(200, "ok"))
    }
}

fn main() {
    toru_plugin_api::run(Hog)
}
