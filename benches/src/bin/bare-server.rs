//! The baseline of the load benchmark (`benches/load/run.sh`): a bare warp server that answers
//! what `hello-plugin-rust` answers through toru-server, byte for byte, itself:
//!
//! - `GET /hello-rust/`: the greeting (a JSON object, from `--body-file` when given);
//! - `POST /hello-rust/sha256`: the SHA-256 of the body, as lowercase hex;
//! - `GET /hello-rust/stats`: how many of each it answered (`{"greetings": N, "hashes": M}`).
//!
//! Each answer carries the headers toru-server adds to a plugin's (`X-Content-Type-Options` and
//! the `Content-Security-Policy` sandbox), so that both servers write the same bytes.
//!
//! `bare-server [--bind 127.0.0.1:0] [--body-file FILE]` prints `listening on http://ADDR` once
//! it listens. Without `--body-file` it answers hello-plugin-rust's greeting with a nil instance
//! id. It stops on SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest as _, Sha256};
use warp::Filter;
use warp::http::header::{CONTENT_SECURITY_POLICY, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};

/// What toru-server adds to every plugin response (toru-host's default sandbox).
const SANDBOX: &str = "sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads";
/// The largest body `POST /hello-rust/sha256` takes.
const MAX_BODY: u64 = 1024 * 1024;

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

/// Answers counted, as the plugin counts them.
#[derive(Default)]
struct Counts {
    greetings: AtomicU64,
    hashes: AtomicU64,
}

async fn serve(bind: SocketAddr, body: Vec<u8>) -> Result<(), Box<dyn std::error::Error>> {
    let body = bytes_of(body);
    let counts = Arc::new(Counts::default());
    let hello = {
        let counts = Arc::clone(&counts);
        warp::path!("hello-rust")
            .and(warp::path::end())
            .and(warp::get())
            .map(move || {
                counts.greetings.fetch_add(1, Ordering::Relaxed);
                answer("application/json", body.clone())
            })
    };
    let sha256 = {
        let counts = Arc::clone(&counts);
        warp::path!("hello-rust" / "sha256")
            .and(warp::post())
            .and(warp::body::content_length_limit(MAX_BODY))
            .and(warp::body::bytes())
            .map(move |body: warp::hyper::body::Bytes| {
                counts.hashes.fetch_add(1, Ordering::Relaxed);
                let hex = format!("{:x}", Sha256::digest(&body));
                answer("text/plain; charset=utf-8", bytes_of(hex.into_bytes()))
            })
    };
    let stats = warp::path!("hello-rust" / "stats")
        .and(warp::get())
        .map(move || {
            let text = serde_json::json!({
                "greetings": counts.greetings.load(Ordering::Relaxed),
                "hashes": counts.hashes.load(Ordering::Relaxed),
            });
            answer("application/json", bytes_of(text.to_string().into_bytes()))
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
    warp::serve(hello.or(sha256).or(stats))
        .incoming(listener)
        .graceful(stop)
        .run()
        .await;
    Ok(())
}

/// A 200 with the headers toru-server's plugin responses carry.
fn answer(
    content_type: &'static str,
    body: warp::hyper::body::Bytes,
) -> warp::http::Response<warp::hyper::body::Bytes> {
    warp::http::Response::builder()
        .header(CONTENT_TYPE, content_type)
        .header(X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(CONTENT_SECURITY_POLICY, SANDBOX)
        .body(body)
        .expect("a valid response")
}

/// The body as a cheaply cloned buffer.
fn bytes_of(body: Vec<u8>) -> warp::hyper::body::Bytes {
    warp::hyper::body::Bytes::from(body)
}
