// Flow control, cancel and failures of streams (protocol 2), and what a version 1 host gets
// instead, with small plugins written for each behaviour.

import assert from "node:assert/strict";
import fs from "node:fs";
import { after, before, test } from "node:test";
import { END, Host, MORE, TEXT, WINDOW, install, pluginSource, tempDir, withPlugin } from "./host.mjs";

let dir;
let file;

before(() => {
  dir = tempDir();
  file = install(
    dir,
    "streams",
    pluginSource(`
  // Reads the body a chunk at a time, waiting for a KV reply (which the test may hold) after each.
  plugin.post("/slow-reader", async (req) => {
    let total = 0;
    for await (const chunk of req.body) {
      total += chunk.length;
      await plugin.kv.get("gate");
    }
    return { total };
  });
  plugin.post("/sum", async (req) => ({ total: (await req.readAll(2 * 1024 * 1024)).length }));
  plugin.post("/small", async (req) => ({ total: (await req.readAll(10)).length }));
  // Writes ?n= bytes as fast as the window allows, byte i being i % 251.
  plugin.get("/bytes", (req) => stream(async (out) => {
    const n = Number(req.searchParams.get("n"));
    for (let at = 0; at < n; at += 50_000) {
      const len = Math.min(50_000, n - at);
      await out.write(Buffer.from(Array.from({ length: len }, (_, i) => (at + i) % 251)));
    }
  }));
  // Produces until cancelled, then says so in the log.
  plugin.get("/endless", (req) => stream(async function* () {
    try {
      for (;;) {
        yield "tick ";
        await sleep(5, req.signal);
      }
    } finally {
      plugin.log.info("producer stopped");
    }
  }()));
  plugin.get("/fails-midway", () => stream(async function* () {
    yield "some of the body ";
    throw new Error("the disk went away");
  }()));
  plugin.get("/throws", () => {
    throw new Error("a bug in the handler");
  });
  plugin.get("/teapot", () => {
    throw new HttpError(418, "short and stout");
  });
  plugin.get("/kv-fails", async () => plugin.kv.get("x"));
  plugin.get("/events", () => sse([{ data: "one" }, { event: "note", id: 7, data: { n: 2 } }, "three\\nlines\\nhere"]));
  plugin.get("/empty", () => undefined);
  plugin.get("/big", () => "x".repeat(300 * 1024));
  plugin.get("/items/:id", (req) => ({ id: req.params.id }));
  plugin.get("/files/*", (req) => ({ rest: req.params["*"] }));
  plugin.put("/items/:id", (req) => ({ put: req.params.id }));
  plugin.ws("/ws-close", async (ws) => {
    await ws.send("closing");
    await ws.close(4000, "done here");
  });
  plugin.ws("/ws-refuse", () => json(403, { error: "not you" }));
  plugin.ws("/ws-proto", async (ws) => {
    await ws.accept({ protocol: "chat" });
    for await (const m of ws) await ws.send(m);
  });
  plugin.ws("/ws-flood", async (ws) => {
    for (let i = 0; i < 8; i++) await ws.send(Buffer.alloc(100 * 1024, i));
    plugin.log.info("flood sent");
    await ws.receive();
  });
  plugin.ws("/ws-throws", async (ws) => {
    await ws.accept();
    throw new Error("the ws handler broke");
  });
`),
  );
});

after(() => fs.rmSync(dir, { recursive: true, force: true }));

test("a slow reader slows the uploader: credit comes back only as the handler consumes", () =>
  withPlugin(file, {}, async (host) => {
    host.kvHold = true;
    const id = host.request("http_request", { method: "POST", path: "/t/slow-reader", query: "", headers: [], end_stream: false });
    const chunk = Buffer.alloc(64 * 1024, 1);
    for (let i = 0; i < 4; i++) host.sendData(id, 0, chunk); // the whole window
    // The handler has taken one chunk and waits on KV: nothing is credited yet.
    await host.until("the handler's first KV call", () => host.heldKv.length === 1);
    await host.reply(host.request("ping"));
    assert.equal(host.items.filter((m) => m.type === "credit").length, 0, "no credit before the handler consumes");
    // Let it take a second chunk: 128 KiB consumed, one credit of 131072.
    host.answerKv(host.heldKv.shift());
    const credit = await host.notice("credit", id);
    assert.equal(credit.payload.bytes, 131_072);
    host.kvHold = false;
    for (const m of host.heldKv.splice(0)) host.answerKv(m);
    host.sendData(id, END, Buffer.alloc(0));
    const { value } = await host.json(id);
    assert.equal(value.total, 4 * 64 * 1024);
  }));

test("data beyond the plugin's window aborts that stream, and the connection goes on", () =>
  withPlugin(file, {}, async (host) => {
    host.kvHold = true;
    const id = host.request("http_request", { method: "POST", path: "/t/slow-reader", query: "", headers: [], end_stream: false });
    for (let i = 0; i < 4; i++) host.sendData(id, 0, Buffer.alloc(64 * 1024));
    host.sendData(id, 0, Buffer.alloc(1));
    const reply = await host.reply(id);
    assert.equal(reply.type, "error");
    assert.equal(reply.payload.code, "bad_request");
    assert.match(reply.payload.message, /window/);
    host.kvHold = false;
    for (const m of host.heldKv.splice(0)) host.answerKv(m);
    assert.equal((await host.reply(host.request("ping"))).type, "pong");
  }));

test("readAll gives 413 over its limit; a 1.5 MiB upload within the limit is read whole", () =>
  withPlugin(file, {}, async (host) => {
    const small = host.http("POST", "/t/small", { body: "more than ten bytes" });
    assert.equal((await host.json(small)).status, 413);
    const id = host.request("http_request", { method: "POST", path: "/t/sum", query: "", headers: [], end_stream: false });
    await host.sendStream(id, Buffer.alloc(1536 * 1024, 7), { end: true });
    assert.deepEqual((await host.json(id)).value, { total: 1536 * 1024 });
  }));

test("a streamed response stops at the window and goes on with each credit", () =>
  withPlugin(file, {}, async (host) => {
    host.autoCredit = false;
    const n = 600_000;
    const id = host.http("GET", "/t/bytes", { query: `n=${n}` });
    const head = await host.reply(id);
    assert.equal(head.payload.end_stream, false);
    await host.until("the first window of data", () => host.received.get(id) === WINDOW);
    await host.reply(host.request("ping"));
    assert.equal(host.received.get(id), WINDOW, "nothing beyond the window");
    host.credit(id, 100_000);
    await host.until("100000 more bytes", () => host.received.get(id) === WINDOW + 100_000);
    await host.reply(host.request("ping"));
    assert.equal(host.received.get(id), WINDOW + 100_000);
    host.credit(id, n);
    await host.until("the END", () => host.items.some((m) => m.data && m.stream === id && m.flags & END));
    const body = Buffer.concat(host.items.filter((m) => m.data && m.stream === id).map((m) => m.bytes));
    assert.equal(body.length, n);
    for (let i = 0; i < n; i += 7919) assert.equal(body[i], i % 251, `byte ${i}`);
    assert.deepEqual(host.violations, []);
  }));

test("the bytes of a streamed response arrive complete and in order", () =>
  withPlugin(file, {}, async (host) => {
    const n = 1_000_003;
    const { head, body } = await host.response(host.http("GET", "/t/bytes", { query: `n=${n}` }));
    assert.equal(head.payload.status, 200);
    assert.equal(body.length, n);
    for (let i = 0; i < n; i += 9973) assert.equal(body[i], i % 251, `byte ${i}`);
    assert.deepEqual(host.violations, []);
  }));

test("cancel stops the producer and nothing more is sent for the stream", () =>
  withPlugin(file, {}, async (host) => {
    const id = host.http("GET", "/t/endless");
    await host.reply(id);
    await host.data(id);
    host.send("cancel", id);
    await host.log("the producer's stop", (l) => l.message === "producer stopped");
    await host.reply(host.request("ping"));
    const late = host.items.filter((m) => !m.data && m.request_id === id);
    assert.deepEqual(late, [], "no END and no error after a cancel");
  }));

test("a failure after the head aborts the stream with error; before it, plugin_error", () =>
  withPlugin(file, {}, async (host) => {
    const id = host.http("GET", "/t/fails-midway");
    assert.equal((await host.reply(id)).payload.status, 200);
    assert.equal((await host.data(id)).bytes.toString(), "some of the body ");
    const abort = await host.reply(id);
    assert.deepEqual([abort.type, abort.payload.code], ["error", "plugin_error"]);
    const logged = await host.log("the failure, at error level", (l) => l.level === "error");
    assert.match(logged.payload.message, /GET \/t\/fails-midway failed/);
    assert.match(logged.payload.error, /the disk went away/);

    const early = host.http("GET", "/t/throws");
    const reply = await host.reply(early);
    assert.deepEqual([reply.type, reply.payload.code], ["error", "plugin_error"]);
    assert.match(reply.payload.message, /a bug in the handler/);
    await host.log("the handler's bug, at error level", (l) => l.level === "error" && /a bug/.test(l.error));
  }));

test("HttpError and KvError become JSON answers", () =>
  withPlugin(file, {}, async (host) => {
    assert.deepEqual(await host.json(host.http("GET", "/t/teapot")).then((r) => [r.status, r.value]), [418, { error: "short and stout" }]);
    host.kvFail = ["kv_too_large", "that is a lot"];
    const r = await host.json(host.http("GET", "/t/kv-fails"));
    assert.deepEqual([r.status, r.value], [500, { error: "kv_too_large: that is a lot" }]);
    await host.log("the KV failure, at error level", (l) => l.level === "error" && /kv_too_large/.test(l.message));
  }));

test("server-sent events are formatted one per data frame, multi-line data split", () =>
  withPlugin(file, {}, async (host) => {
    const id = host.http("GET", "/t/events");
    const head = await host.reply(id);
    assert.ok(head.payload.headers.some(([n, v]) => n === "cache-control" && v === "no-cache"));
    assert.equal((await host.data(id)).bytes.toString(), "data: one\n\n");
    assert.equal((await host.data(id)).bytes.toString(), 'event: note\nid: 7\ndata: {"n":2}\n\n');
    assert.equal((await host.data(id)).bytes.toString(), "data: three\ndata: lines\ndata: here\n\n");
    const end = await host.data(id);
    assert.deepEqual([end.flags, end.bytes.length], [END, 0]);
  }));

test("routes: params, a rest pattern, 405 with allow, empty and large answers", () =>
  withPlugin(file, {}, async (host) => {
    assert.deepEqual((await host.json(host.http("GET", "/t/items/a%20b"))).value, { id: "a b" });
    assert.deepEqual((await host.json(host.http("GET", "/t/files/x/y.txt"))).value, { rest: "x/y.txt" });
    assert.equal((await host.json(host.http("GET", "/t/items/"))).status, 404);
    const r = await host.json(host.http("POST", "/t/items/1"));
    assert.equal(r.status, 405);
    assert.deepEqual(r.headers.find(([n]) => n === "allow"), ["allow", "GET, PUT"]);
    const empty = await host.reply(host.http("GET", "/t/empty"));
    assert.deepEqual([empty.payload.status, empty.payload.end_stream], [204, true]);
    const { body } = await host.response(host.http("GET", "/t/big"));
    assert.equal(body.length, 300 * 1024);
  }));

test("a version 1 host gets streamed bodies whole, and whole request bodies", () =>
  withPlugin(file, { max: 1 }, async (host) => {
    assert.equal(host.version, 1);
    const { head, body } = await host.response(host.http("GET", "/t/bytes", { query: "n=1000" }));
    assert.equal(head.payload.status, 200);
    assert.ok(head.payload.body_base64, "bytes that are not UTF-8 travel as base64");
    assert.equal(body.length, 1000);
    assert.equal(body[300], 300 % 251);
    const events = await host.reply(host.http("GET", "/t/events"));
    assert.match(events.payload.body, /^data: one\n\nevent: note\n/);
    const sum = await host.json(host.http("POST", "/t/sum", { body: "hello" }));
    assert.deepEqual(sum.value, { total: 5 });
  }));

function upgrade(host, p, headers = []) {
  return host.request("http_request", { method: "GET", path: p, query: "", headers, end_stream: true, upgrade: "websocket" });
}

test("ws: the plugin closes with its code and reason after its last message", () =>
  withPlugin(file, {}, async (host) => {
    const id = upgrade(host, "/t/ws-close");
    assert.equal((await host.reply(id)).payload.status, 101);
    assert.equal((await host.data(id)).bytes.toString(), "closing");
    const close = await host.notice("ws_close", id);
    assert.deepEqual(close.payload, { code: 4000, reason: "done here" });
  }));

test("ws: a handler may refuse with any response, or accept a subprotocol", () =>
  withPlugin(file, {}, async (host) => {
    const refused = await host.json(upgrade(host, "/t/ws-refuse"));
    assert.deepEqual([refused.status, refused.value], [403, { error: "not you" }]);
    const id = upgrade(host, "/t/ws-proto", [["sec-websocket-protocol", "superchat, chat"]]);
    const head = await host.reply(id);
    assert.equal(head.payload.status, 101);
    assert.deepEqual(head.payload.headers, [["sec-websocket-protocol", "chat"]]);
  }));

test("ws: the plugin's sends wait for credit", () =>
  withPlugin(file, {}, async (host) => {
    host.autoCredit = false;
    const id = upgrade(host, "/t/ws-flood");
    await host.reply(id);
    await host.until("a window of messages", () => host.received.get(id) === WINDOW);
    await host.reply(host.request("ping"));
    assert.equal(host.received.get(id), WINDOW);
    assert.equal(host.logs.some((l) => l.message === "flood sent"), false);
    host.credit(id, 8 * 100 * 1024);
    await host.log("all sent", (l) => l.message === "flood sent");
    const frames = host.items.filter((m) => m.data && m.stream === id);
    const messages = [];
    let current = [];
    for (const f of frames) {
      current.push(f.bytes);
      if (!(f.flags & MORE)) {
        messages.push(Buffer.concat(current));
        current = [];
      }
    }
    assert.equal(messages.length, 8);
    messages.forEach((m, i) => assert.ok(m.length === 100 * 1024 && m.every((b) => b === i), `message ${i}`));
    assert.deepEqual(host.violations, []);
  }));

test("ws: a handler that fails after accepting sends error (the client gets 1011)", () =>
  withPlugin(file, {}, async (host) => {
    const id = upgrade(host, "/t/ws-throws");
    assert.equal((await host.reply(id)).payload.status, 101);
    const abort = await host.reply(id);
    assert.deepEqual([abort.type, abort.payload.code], ["error", "plugin_error"]);
  }));

test("ws: cancel (the client's connection dropped) ends the handler quietly", () =>
  withPlugin(file, {}, async (host) => {
    const id = upgrade(host, "/t/ws-proto", [["sec-websocket-protocol", "chat"]]);
    await host.reply(id);
    host.sendData(id, TEXT, Buffer.from("ping"));
    assert.equal((await host.data(id)).bytes.toString(), "ping");
    host.send("cancel", id);
    await host.reply(host.request("ping"));
    assert.deepEqual(host.items.filter((m) => m.request_id === id || m.stream === id), []);
  }));

test("a version 1 host sees WebSocket routes answer 426", async () => {
  const host = await Host.ready(file, { max: 1 });
  try {
    assert.equal((await host.json(host.http("GET", "/t/ws-close"))).status, 426);
  } finally {
    await host.cleanup();
  }
});
