// `shutdown` and open streams (docs/protocol.md section 7): WebSockets get `ws_close` 1001 and
// event streams their END at once, while other work keeps the grace period to finish; then the
// plugin exits 0.

import assert from "node:assert/strict";
import fs from "node:fs";
import { after, before, test } from "node:test";
import { END, Host, TEXT, install, pluginSource, tempDir, withPlugin } from "./host.mjs";

const REASON = "the plugin is shutting down";
let dir;
let file;

before(() => {
  dir = tempDir();
  file = install(
    dir,
    "shutdown",
    pluginSource(`
  // Answers once the host answers its KV call (the test holds it to keep the request in flight).
  plugin.get("/slow", async () => ({ done: await plugin.kv.get("gate") }));
  plugin.ws("/echo", async (ws) => {
    for await (const m of ws) await ws.send(m);
    plugin.log.info(\`echo ended \${ws.closeCode} \${ws.closeReason}\`);
  });
  plugin.ws("/flood", async (ws) => {
    try {
      for (;;) await ws.send(Buffer.alloc(64 * 1024));
    } catch (e) {
      plugin.log.info(\`flood stopped: \${e.name} \${ws.closeCode}\`);
    }
  });
  // Accepted only once the host answers a KV call (held until after shutdown).
  plugin.ws("/late", async (ws) => {
    await plugin.kv.get("gate");
    await ws.accept();
    const m = await ws.receive();
    plugin.log.info(\`late ws: \${m} \${ws.closeCode}\`);
  });
  plugin.get("/ticks", () => sse(async (events) => {
    try {
      await events.send("1");
      await sleep(60_000, events.signal);
    } finally {
      plugin.log.info(\`ticks stopped \${events.signal.aborted}\`);
    }
  }));
  plugin.get("/iterated", () => sse((async function* () {
    yield "first";
    await new Promise(() => {});
  })()));
  plugin.get("/late-events", async () => {
    await plugin.kv.get("gate");
    return sse(["never sent"]);
  });
  // A download: keeps its grace period, finishing when the host answers its KV call.
  plugin.get("/download", () => stream(async (out) => {
    await out.write("part 1,");
    await plugin.kv.get("gate");
    await out.write("part 2");
  }));
`),
  );
});

after(() => fs.rmSync(dir, { recursive: true, force: true }));

function upgrade(host, p) {
  return host.request("http_request", { method: "GET", path: p, query: "", headers: [], end_stream: true, upgrade: "websocket" });
}

/** Everything left unread about `stream`: after its END or ws_close there must be nothing. */
function leftOn(host, stream) {
  return host.items.filter((m) => (m.data ? m.stream === stream : m.request_id === stream));
}

test("shutdown closes WebSockets with 1001 at once; their handlers see the close", () =>
  withPlugin(file, {}, async (host) => {
    const ws = upgrade(host, "/t/echo");
    assert.equal((await host.reply(ws)).payload.status, 101);
    host.sendData(ws, TEXT, Buffer.from("hi"));
    assert.equal((await host.data(ws)).bytes.toString(), "hi");
    host.kvHold = true;
    const slow = host.http("GET", "/t/slow");
    await host.until("the slow request's KV call", () => host.heldKv.length === 1);
    host.send("shutdown", null);
    assert.deepEqual((await host.notice("ws_close", ws)).payload, { code: 1001, reason: REASON });
    await host.log("the handler's end", (l) => l.message === `echo ended 1001 ${REASON}`);
    await host.reply(host.request("ping"));
    assert.equal(host.items.some((m) => m.request_id === slow), false, "closed while the slow request still runs");
    host.kvHold = false;
    for (const m of host.heldKv.splice(0)) host.answerKv(m);
    assert.equal((await host.json(slow)).status, 200);
    assert.equal((await host.exit()).code, 0);
    assert.deepEqual(leftOn(host, ws), []);
  }));

test("shutdown closes a WebSocket whose sender waits for credit; the send rejects", () =>
  withPlugin(file, {}, async (host) => {
    host.autoCredit = false;
    const ws = upgrade(host, "/t/flood");
    await host.reply(ws);
    await host.until("a window of messages", () => host.received.get(ws) === 262_144);
    host.send("shutdown", null);
    assert.equal((await host.notice("ws_close", ws)).payload.code, 1001);
    await host.log("the sender's end", (l) => l.message === "flood stopped: AbortError 1001");
    assert.equal((await host.exit()).code, 0);
    assert.deepEqual(host.violations, []);
    assert.deepEqual(
      leftOn(host, ws).filter((m) => !m.data),
      [],
      "nothing after the ws_close",
    );
  }));

test("shutdown ends event streams with END at once and stops their producers; a download gets the grace", () =>
  withPlugin(file, {}, async (host) => {
    host.kvHold = true;
    const ticks = host.http("GET", "/t/ticks");
    const iterated = host.http("GET", "/t/iterated");
    const download = host.http("GET", "/t/download");
    for (const id of [ticks, iterated, download]) assert.equal((await host.reply(id)).payload.status, 200);
    assert.equal((await host.data(ticks)).bytes.toString(), "data: 1\n\n");
    assert.equal((await host.data(iterated)).bytes.toString(), "data: first\n\n");
    assert.equal((await host.data(download)).bytes.toString(), "part 1,");
    await host.until("the download's KV call", () => host.heldKv.length === 1);
    host.send("shutdown", null);
    for (const id of [ticks, iterated]) {
      const end = await host.data(id);
      assert.deepEqual([end.flags, end.bytes.length], [END, 0]);
    }
    await host.log("the producer's end", (l) => l.message === "ticks stopped true");
    await host.reply(host.request("ping"));
    assert.deepEqual(leftOn(host, download), [], "the download is still running");
    host.kvHold = false;
    for (const m of host.heldKv.splice(0)) host.answerKv(m);
    const rest = await host.data(download);
    assert.equal(rest.bytes.toString(), "part 2");
    assert.equal((await host.data(download)).flags, END);
    assert.equal((await host.exit()).code, 0);
    assert.deepEqual([...leftOn(host, ticks), ...leftOn(host, iterated)], [], "no error, nothing after END");
  }));

test("a WebSocket or event stream that opens after shutdown ends at once", () =>
  withPlugin(file, {}, async (host) => {
    host.kvHold = true;
    const ws = upgrade(host, "/t/late");
    const events = host.http("GET", "/t/late-events");
    await host.until("both handlers' KV calls", () => host.heldKv.length === 2);
    host.send("shutdown", null);
    await host.reply(host.request("ping")); // the shutdown has been read
    host.kvHold = false;
    for (const m of host.heldKv.splice(0)) host.answerKv(m);
    assert.equal((await host.reply(ws)).payload.status, 101);
    assert.equal((await host.notice("ws_close", ws)).payload.code, 1001);
    await host.log("the handler's receive", (l) => l.message === "late ws: null 1001");
    const head = await host.reply(events);
    assert.deepEqual([head.payload.status, head.payload.end_stream], [200, false]);
    const end = await host.data(events);
    assert.deepEqual([end.flags, end.bytes.length], [END, 0]);
    assert.equal((await host.exit()).code, 0);
  }));

test("with a version 1 host, shutdown lets requests finish as before", async () => {
  const host = await Host.ready(file, { max: 1 });
  try {
    host.kvHold = true;
    const slow = host.http("GET", "/t/slow");
    await host.until("the slow request's KV call", () => host.heldKv.length === 1);
    host.send("shutdown", null);
    host.kvHold = false;
    for (const m of host.heldKv.splice(0)) host.answerKv(m);
    assert.equal((await host.json(slow)).status, 200);
    assert.equal((await host.exit()).code, 0);
  } finally {
    await host.cleanup();
  }
});
