//! toru-host's integration tests: real plugin processes, real sockets, real redb files.
#![allow(unreachable_pub)]

mod check;
mod contain;
mod discovery;
mod embed;
mod forwarding;
mod kv;
mod lifecycle;
mod live;
mod logs;
mod orphans;
mod settings;
mod store_crash;
mod streams;
mod supervision;
mod util;
mod websocket;
