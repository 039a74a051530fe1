//! toru-server end to end: a real server process on 127.0.0.1:0 with real plugins (both
//! examples, and `toru-test-plugin` for plugins that hang, crash or fail), driven over HTTP.

mod api;
mod auth;
mod check;
mod contain;
mod edge;
mod errors;
mod files;
mod license;
mod lifecycle;
mod live;
mod routes;
mod settings;
mod streams;
mod util;
