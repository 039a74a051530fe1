//! The baseline of the load benchmark (`benches/load/run.sh`): a bare warp server that answers
//! `GET /hello-rust/` itself with the bytes `hello-plugin-rust` answers through toru-server.
//!
//! `bare-server [--bind 127.0.0.1:0] [--body-file FILE]` prints `listening on http://ADDR` once
//! it listens. Without `--body-file` it answers hello-plugin-rust's greeting with a nil instance
//! id. It stops on SIGINT or SIGTERM.

use std::net::SocketAddr;

use warp::Filter;
use warp::http::header::CONTENT_TYPE;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut bind: SocketAddr = "127.0.0.1:0".parse()?;
    let mut body = serde_json::to_vec(&serde_json::json!({
        "message": "Hello from Rust!",
        "plugin": "hello-rust",
        "instance_id": "00000000-0000-0000-0000-000000000000",
    }))?;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--bind", Some(addr)) => bind = addr.parse()?,
            ("--body-file", Some(file)) => body = std::fs::read(file)?,
            _ => {
                return Err(format!(
                    "usage: bare-server [--bind ADDR] [--body-file FILE]; got {arg}"
                )
                .into());
            }
        }
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(bind, body))
}

async fn serve(bind: SocketAddr, body: Vec<u8>) -> Result<(), Box<dyn std::error::Error>> {
    let body = bytes_of(body);
    let hello = warp::path("hello-rust")
        .and(warp::path::end())
        .and(warp::get())
        .map(move || {
            warp::http::Response::builder()
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone())
                .expect("a valid response")
        });
    let listener = tokio::net::TcpListener::bind(bind).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stop = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    warp::serve(hello)
        .incoming(listener)
        .graceful(stop)
        .run()
        .await;
    Ok(())
}

/// The body as a cheaply cloned buffer.
fn bytes_of(body: Vec<u8>) -> warp::hyper::body::Bytes {
    warp::hyper::body::Bytes::from(body)
}
