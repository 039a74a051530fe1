// The Node SDK's own cost, with no Toru host in between: this script plays the host over the
// plugin's Unix socket, as lean as it can, and measures
//   - buffered requests per second (GET /hello-node/, 64 in flight), on protocol 1 and 2;
//   - a streamed download's throughput (protocol 2, credit given back at once);
//   - WebSocket echo round trips (one message at a time), p50 and p99.
//
//   node sdk/node/bench/bench.mjs      # SECONDS_EACH=3 DOWNLOAD_MIB=512 ROUNDS=2000 by default
//
// Figures vary with the machine's load; compare runs made side by side.

import fs from "node:fs";
import { performance } from "node:perf_hooks";
import { EXAMPLE, Host, SHEBANG, install, tempDir, dataFrame, frame } from "../test/host.mjs";

const SECONDS = Number(process.env.SECONDS_EACH ?? 3);
const DOWNLOAD_MIB = Number(process.env.DOWNLOAD_MIB ?? 512);
const ROUNDS = Number(process.env.ROUNDS ?? 2000);
const IN_FLIGHT = 64;

/** Reads frames off `socket` and calls `onMessage(json)` / `onData(stream, flags, length)`. */
function reader(socket, onMessage, onData) {
  let buf = Buffer.alloc(0);
  socket.removeAllListeners("data");
  socket.on("data", (chunk) => {
    buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
    let at = 0;
    while (buf.length - at >= 4) {
      const h = buf.readUInt32BE(at);
      const len = h & 0x7fffffff;
      if (buf.length - at < 4 + len) break;
      if (h >= 0x80000000) onData(Number(buf.readBigUInt64BE(at + 4)), buf[at + 12], len - 9, buf.subarray(at + 13, at + 4 + len));
      else onMessage(JSON.parse(buf.toString("utf8", at + 4, at + 4 + len)));
      at += 4 + len;
    }
    buf = buf.subarray(at);
  });
}

async function requestsPerSecond(max) {
  const host = await Host.ready(EXAMPLE, { max });
  try {
    const payload = (id) =>
      frame(JSON.stringify({ type: "http_request", timestamp: 0, request_id: id, payload: { method: "GET", path: "/hello-node/", query: "", headers: [], end_stream: true } }));
    let next = 1000;
    let done = 0;
    const deadline = performance.now() + SECONDS * 1000;
    const start = performance.now();
    await new Promise((resolve) => {
      const send = () => host.socket.write(payload(next++));
      const complete = () => {
        done++;
        if (performance.now() < deadline) send();
        else if (done === next - 1000) resolve();
      };
      reader(
        host.socket,
        (m) => {
          if (m.type === "http_response" && (max === 1 || m.payload.end_stream)) complete();
        },
        (stream, flags) => {
          if (flags & 1) complete();
        },
      );
      for (let i = 0; i < IN_FLIGHT; i++) send();
    });
    return done / ((performance.now() - start) / 1000);
  } finally {
    await host.cleanup();
  }
}

async function download(dir) {
  const file = install(
    dir,
    "bench-download",
    `${SHEBANG}
import("./toru-plugin.mjs").then(({ Plugin, stream }) => {
  const plugin = new Plugin({ id: "bench", name: "Bench", version: "1.0.0" });
  const chunk = Buffer.alloc(65536, 7);
  plugin.get("/bytes", (req) => stream(async (out) => {
    const n = Number(req.searchParams.get("mib")) * 16;
    for (let i = 0; i < n; i++) await out.write(chunk);
  }));
  plugin.run();
});
`,
  );
  const host = await Host.ready(file, { max: 2 });
  try {
    const start = performance.now();
    let bytes = 0;
    await new Promise((resolve) => {
      reader(
        host.socket,
        () => {},
        (stream, flags, length) => {
          bytes += length;
          if (length) host.socket.write(frame(JSON.stringify({ type: "credit", timestamp: 0, request_id: stream, payload: { bytes: length } })));
          if (flags & 1) resolve();
        },
      );
      host.socket.write(
        frame(JSON.stringify({ type: "http_request", timestamp: 0, request_id: 7, payload: { method: "GET", path: "/bench/bytes", query: `mib=${DOWNLOAD_MIB}`, headers: [], end_stream: true } })),
      );
    });
    const seconds = (performance.now() - start) / 1000;
    if (bytes !== DOWNLOAD_MIB * 1024 * 1024) throw new Error(`downloaded ${bytes} bytes`);
    return bytes / 1e6 / seconds;
  } finally {
    await host.cleanup();
  }
}

async function wsRoundTrips() {
  const host = await Host.ready(EXAMPLE, { max: 2 });
  try {
    host.send("http_request", 9, { method: "GET", path: "/hello-node/ws", query: "", headers: [], end_stream: true, upgrade: "websocket" });
    await host.reply(9);
    const times = [];
    let received = null;
    reader(
      host.socket,
      () => {},
      () => received?.(),
    );
    const message = dataFrame(9, 0x02, Buffer.from("hello there"));
    for (let i = 0; i < ROUNDS; i++) {
      const t0 = performance.now();
      await new Promise((resolve) => {
        received = resolve;
        host.socket.write(message);
      });
      times.push(performance.now() - t0);
      // The plugin credits in batches; give back what it sent now and then.
      if (i % 1000 === 999) host.socket.write(frame(JSON.stringify({ type: "credit", timestamp: 0, request_id: 9, payload: { bytes: 11 * 1000 } })));
    }
    times.sort((a, b) => a - b);
    return { p50: times[Math.floor(times.length / 2)], p99: times[Math.floor(times.length * 0.99)] };
  } finally {
    await host.cleanup();
  }
}

const dir = tempDir();
try {
  console.log(`node ${process.version}, ${IN_FLIGHT} in flight, ${SECONDS} s each`);
  console.log(`buffered GET, protocol 1: ${Math.round(await requestsPerSecond(1))} req/s`);
  console.log(`buffered GET, protocol 2: ${Math.round(await requestsPerSecond(2))} req/s`);
  console.log(`streamed download of ${DOWNLOAD_MIB} MiB, protocol 2: ${Math.round(await download(dir))} MB/s`);
  const ws = await wsRoundTrips();
  console.log(`WebSocket echo round trip (${ROUNDS}): p50 ${ws.p50.toFixed(3)} ms, p99 ${ws.p99.toFixed(3)} ms`);
} finally {
  fs.rmSync(dir, { recursive: true, force: true });
}
