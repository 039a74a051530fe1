//! A plugin for the limit_detect bench: `GET /hog/grow` allocates and touches memory without
//! bound, a MiB at a time, until its memory limit stops it; any other request answers 200.

use toru_plugin_api::{PluginContext, PluginMetadata, Request, Response, ToruPlugin, async_trait};

struct Hog;

#[async_trait]
impl ToruPlugin for Hog {
    fn metadata(&self) -> PluginMetadata {
        PluginMetadata {
            id: "hog".into(),
            name: "Hog".into(),
            version: "0.0.1".into(),
            author: "toru benches".into(),
            description: "grows without bound on request".into(),
            icon: "🐗".into(),
            route: "/hog".into(),
            ..Default::default()
        }
    }

    async fn handle_http(&self, _ctx: &PluginContext, req: Request) -> Response {
        if req.subpath() == "/grow" {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
            }
        }
        Response::text(200, "ok")
    }
}

fn main() {
    toru_plugin_api::run(Hog)
}
