//! Rebuilds the crate when a file under `web/` is added, removed or changed: rust-embed's derive
//! reads the folder at compile time, and cargo would not notice a new file on its own.

fn main() {
    println!("cargo::rerun-if-changed=web");
}
