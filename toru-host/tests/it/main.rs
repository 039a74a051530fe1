//! toru-host's integration tests: real plugin processes, real sockets, real redb files.
#![allow(unreachable_pub)]

mod check;
mod discovery;
mod forwarding;
mod kv;
mod lifecycle;
mod logs;
mod orphans;
mod store_crash;
mod supervision;
mod util;
