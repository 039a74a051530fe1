//! The baseline of the streaming benchmark (`benches/load/streams.sh`): a bare warp server that
//! serves what `toru-test-plugin v2` serves through toru-server, itself:
//!
//! - `GET /bytes?n=N`: N bytes, byte i being `i % 251`, with `Content-Length`, from one block in
//!   memory (no copy per request);
//! - `GET /ws`: a WebSocket echo, text upper-cased and binary as it is.
//!
//! `bare-stream-server [--bind 127.0.0.1:0]` prints `listening on http://ADDR` once it listens.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use warp::http::header::CONTENT_LENGTH;
use warp::ws::{Message, Ws};
use warp::{Filter, Reply};

const CHUNK: usize = 64 * 1024;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut bind: SocketAddr = "127.0.0.1:0".parse()?;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--bind", Some(addr)) => bind = addr.parse()?,
            _ => return Err(format!("usage: bare-stream-server [--bind ADDR]; got {arg}").into()),
        }
    }
    let block = Bytes::from(
        (0..CHUNK + 251)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    let bytes = warp::path!("bytes")
        .and(warp::query::<HashMap<String, String>>())
        .map(move |q: HashMap<String, String>| {
            let n: u64 = q.get("n").and_then(|n| n.parse().ok()).unwrap_or(0);
            let block = block.clone();
            let chunks = (0..n).step_by(CHUNK).map(move |start| {
                let len = (n - start).min(CHUNK as u64) as usize;
                let from = (start % 251) as usize;
                Ok::<_, Infallible>(block.slice(from..from + len))
            });
            let mut response =
                warp::reply::stream(futures_util::stream::iter(chunks)).into_response();
            response.headers_mut().insert(CONTENT_LENGTH, n.into());
            response
        });
    let ws = warp::path!("ws").and(warp::ws()).map(|ws: Ws| {
        ws.on_upgrade(|socket| async move {
            let (mut tx, mut rx) = socket.split();
            while let Some(Ok(m)) = rx.next().await {
                let reply = if let Ok(text) = m.to_str() {
                    Message::text(text.to_uppercase())
                } else if m.is_binary() {
                    m
                } else if m.is_close() {
                    break;
                } else {
                    continue;
                };
                if tx.send(reply).await.is_err() {
                    break;
                }
            }
        })
    });
    let listener = tokio::net::TcpListener::bind(bind).await?;
    println!(
        "bare-stream-server listening on http://{}",
        listener.local_addr()?
    );
    warp::serve(bytes.or(ws)).incoming(listener).run().await;
    Ok(())
}
