//! The streaming benchmark's client (`benches/load/streams.sh` starts the servers and runs it).
//!
//! ```text
//! stream-bench --toru http://ADDR --secret S --toru-pid PID --bare http://ADDR
//! ```
//!
//! Side by side, one server at a time: a download through toru-server (`toru-test-plugin v2`
//! installed as `bench`) against the bare warp server serving the same bytes from memory; the
//! server's resident set while a client reads a download at 10 MB/s; WebSocket echo round trips,
//! one message at a time; and many concurrent server-sent-event clients on one plugin. Sizes come
//! from the environment: `BYTES` (1 GiB), `RUNS` (3 downloads each, alternating; the median
//! counts), `SLOW_BYTES` (1 GiB), `WS_MESSAGES` (5000), `SSE_CLIENTS` (1000), `SSE_TICKS` (5).

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Error = Box<dyn std::error::Error + Send + Sync>;

struct Server {
    name: &'static str,
    addr: String,
    auth: Option<String>,
    prefix: &'static str,
}

impl Server {
    fn headers(&self) -> String {
        self.auth
            .as_ref()
            .map(|a| format!("Authorization: Bearer {a}\r\n"))
            .unwrap_or_default()
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Sends `GET path` and reads the head; returns the socket, the body bytes read with the head,
/// and the `Content-Length`.
async fn get(server: &Server, path: &str) -> Result<(TcpStream, Vec<u8>, Option<u64>), Error> {
    let mut tcp = TcpStream::connect(&server.addr).await?;
    tcp.set_nodelay(true)?;
    let request = format!(
        "GET {}{path} HTTP/1.1\r\nHost: {}\r\n{}Connection: close\r\n\r\n",
        server.prefix,
        server.addr,
        server.headers()
    );
    tcp.write_all(request.as_bytes()).await?;
    let mut buf = Vec::with_capacity(8192);
    let end = loop {
        let mut chunk = [0u8; 4096];
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            return Err("the server closed before the head".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "{} answered {}",
            server.name,
            head.lines().next().unwrap_or("")
        )
        .into());
    }
    let length = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())
            .flatten()
    });
    Ok((tcp, buf[end..].to_vec(), length))
}

/// Downloads `n` bytes and returns the time it took; `pace` throttles the reads to that many
/// bytes a second and calls `sample` once a megabyte.
async fn download(
    server: &Server,
    n: u64,
    pace: Option<f64>,
    mut sample: impl FnMut(),
) -> Result<Duration, Error> {
    let started = Instant::now();
    let (mut tcp, first, length) = get(server, &format!("/bytes?n={n}")).await?;
    if length != Some(n) {
        return Err(format!("{} sent Content-Length {length:?} for {n}", server.name).into());
    }
    let block: Vec<u8> = (0..(1 << 20) + 251).map(|i| (i % 251) as u8).collect();
    if first.iter().enumerate().any(|(i, b)| *b != block[i % 251]) {
        return Err("the body is not the pattern".into());
    }
    let mut got = first.len() as u64;
    let mut buf = vec![0u8; if pace.is_some() { 64 * 1024 } else { 1 << 20 }];
    let mut next_sample = 1 << 20;
    while got < n {
        let k = tcp.read(&mut buf).await?;
        if k == 0 {
            return Err(format!("{} ended at {got} of {n} bytes", server.name).into());
        }
        // Spot check: the first bytes of each read.
        let from = (got % 251) as usize;
        let check = k.min(64);
        if buf[..check] != block[from..from + check] {
            return Err(format!("byte {got} differs from the pattern").into());
        }
        got += k as u64;
        if let Some(rate) = pace {
            let due = started + Duration::from_secs_f64(got as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        if got >= next_sample {
            sample();
            next_sample += 1 << 20;
        }
    }
    Ok(started.elapsed())
}

/// `VmRSS` of a process, in bytes.
fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().strip_suffix("kB"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

/// CPU time a process has used (user + system).
fn cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // After the name: state is field 3, utime 14 and stime 15 (1-based in proc(5)).
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    let per_second = rustix::param::clock_ticks_per_second();
    Duration::from_secs_f64(ticks as f64 / per_second as f64)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Round trips of one small message at a time; returns them sorted.
async fn echo(server: &Server, path: &str, messages: u64) -> Result<Vec<Duration>, Error> {
    let url = format!("ws://{}{}{path}", server.addr, server.prefix);
    let mut request = url.into_client_request()?;
    if let Some(auth) = &server.auth {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {auth}").parse()?);
    }
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(request, None, true).await?;
    let mut times = Vec::with_capacity(messages as usize);
    for i in 0..messages + 200 {
        let text = format!("message {i:08} of the echo bench");
        let started = Instant::now();
        ws.send(Message::text(text.clone())).await?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    if t.as_str() != text.to_uppercase() {
                        return Err(format!("{} echoed {t:?} for {text:?}", server.name).into());
                    }
                    break;
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
                None => return Err("the WebSocket closed".into()),
            }
        }
        // The first 200 warm up.
        if i >= 200 {
            times.push(started.elapsed());
        }
    }
    let _ = ws.close(None).await;
    times.sort();
    Ok(times)
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// One SSE client: reads the whole event stream and returns how many events it got.
async fn sse_client(server: &Server, ticks: u64) -> Result<u64, Error> {
    let (mut tcp, first, _) = get(server, &format!("/ticks?every=1000&count={ticks}")).await?;
    let mut text = first;
    tcp.read_to_end(&mut text).await?;
    let text = String::from_utf8_lossy(&text);
    Ok(text.matches("data: ").count() as u64)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut toru_url = None;
    let mut bare_url = None;
    let mut secret = None;
    let mut pid = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next();
        match (arg.as_str(), value) {
            ("--toru", Some(v)) => toru_url = Some(v),
            ("--bare", Some(v)) => bare_url = Some(v),
            ("--secret", Some(v)) => secret = Some(v),
            ("--toru-pid", Some(v)) => pid = Some(v.parse::<u32>()?),
            _ => {
                return Err(
                    "usage: stream-bench --toru URL --secret S --toru-pid PID --bare URL".into(),
                );
            }
        }
    }
    let (Some(toru_url), Some(bare_url), Some(secret), Some(pid)) =
        (toru_url, bare_url, secret, pid)
    else {
        return Err("usage: stream-bench --toru URL --secret S --toru-pid PID --bare URL".into());
    };
    let strip = |u: &str| {
        u.trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned()
    };
    let toru = Server {
        name: "toru-server",
        addr: strip(&toru_url),
        auth: Some(secret),
        prefix: "/plugins/bench",
    };
    let bare = Server {
        name: "bare warp",
        addr: strip(&bare_url),
        auth: None,
        prefix: "",
    };
    let bytes = env("BYTES", 1 << 30);
    let slow = env("SLOW_BYTES", 1 << 30);
    let messages = env("WS_MESSAGES", 5000);
    let clients = env("SSE_CLIENTS", 1000);
    let ticks = env("SSE_TICKS", 5);
    let runs = env("RUNS", 3).max(1);

    println!(
        "== download of {} MiB, {runs} runs each, alternating (after a 64 MiB warm-up each)",
        mib(bytes)
    );
    for server in [&toru, &bare] {
        download(server, 64 << 20, None, || {}).await?;
    }
    let mut samples = [Vec::new(), Vec::new()];
    for _ in 0..runs {
        for (i, server) in [&toru, &bare].into_iter().enumerate() {
            let took = download(server, bytes, None, || {}).await?;
            samples[i].push(bytes as f64 / took.as_secs_f64() / 1e6);
        }
    }
    let mut rates = Vec::new();
    for (i, server) in [&toru, &bare].into_iter().enumerate() {
        let s = &mut samples[i];
        s.sort_by(f64::total_cmp);
        let median = s[s.len() / 2];
        let all: Vec<String> = s.iter().map(|r| format!("{r:.0}")).collect();
        println!(
            "{:>12}: median {median:6.0} MB/s, best {:6.0} MB/s (runs, sorted: {})",
            server.name,
            s[s.len() - 1],
            all.join(", ")
        );
        rates.push(median);
    }
    let ratio = rates[0] / rates[1];
    println!(
        "ratio of medians {ratio:.2}x; target >= 1000 MB/s and >= 0.5x: {}",
        if rates[0] >= 1000.0 && ratio >= 0.5 {
            "met"
        } else {
            "NOT met"
        }
    );

    println!(
        "\n== toru-server's resident set while a client reads {} MiB at 10 MB/s",
        mib(slow)
    );
    let before = rss(pid);
    let mut peak = before;
    let took = download(&toru, slow, Some(10e6), || peak = peak.max(rss(pid))).await?;
    let growth = peak.saturating_sub(before);
    println!(
        "RSS {:.1} MiB before, {:.1} MiB at most ({:.1} s): +{:.1} MiB; target <= 32 MiB: {}",
        mib(before),
        mib(peak),
        took.as_secs_f64(),
        mib(growth),
        if growth <= 32 << 20 { "met" } else { "NOT met" }
    );

    println!("\n== WebSocket echo, one message at a time, {messages} messages (after 200)");
    let mut p50s = Vec::new();
    for (server, path) in [(&toru, "/ws"), (&bare, "/ws")] {
        let times = echo(server, path, messages).await?;
        let (p50, p99) = (quantile(&times, 0.5), quantile(&times, 0.99));
        println!(
            "{:>12}: p50 {:7.1} us, p99 {:7.1} us",
            server.name,
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6
        );
        p50s.push(p50);
    }
    let ratio = p50s[0].as_secs_f64() / p50s[1].as_secs_f64();
    println!(
        "p50 ratio {ratio:.2}x; target within 2x: {}",
        if ratio <= 2.0 { "met" } else { "NOT met" }
    );

    println!(
        "\n== {clients} server-sent-event clients on one plugin, {ticks} ticks a second apart"
    );
    let before = rss(pid);
    let cpu_before = cpu(pid);
    let started = Instant::now();
    let toru = std::sync::Arc::new(toru);
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let toru = std::sync::Arc::clone(&toru);
            tokio::spawn(async move { sse_client(&toru, ticks).await })
        })
        .collect();
    let mut peak = before;
    let all = futures_util::future::join_all(tasks);
    tokio::pin!(all);
    let results = loop {
        tokio::select! {
            results = &mut all => break results,
            _ = tokio::time::sleep(Duration::from_millis(200)) => peak = peak.max(rss(pid)),
        }
    };
    let took = started.elapsed();
    let used = cpu(pid).saturating_sub(cpu_before);
    let mut complete = 0;
    let mut failed = 0;
    for r in results {
        match r? {
            Ok(n) if n == ticks => complete += 1,
            Ok(_) | Err(_) => failed += 1,
        }
    }
    println!(
        "{complete} of {clients} clients got all {ticks} ticks ({failed} did not) in {:.1} s",
        took.as_secs_f64()
    );
    println!(
        "toru-server: RSS {:.1} MiB before, {:.1} MiB at most (+{:.1} MiB, {:.1} KiB a client); CPU {:.2} s ({:.0}% of one core)",
        mib(before),
        mib(peak),
        mib(peak.saturating_sub(before)),
        peak.saturating_sub(before) as f64 / 1024.0 / clients as f64,
        used.as_secs_f64(),
        used.as_secs_f64() / took.as_secs_f64() * 100.0
    );
    Ok(())
}
