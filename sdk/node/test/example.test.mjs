// examples/hello-plugin-node over protocol 2 (the conformance suite covers protocol 1): streamed
// bodies both ways, server-sent events, WebSockets, settings, and installing it under a
// package.json. Each test runs the example as a real process with this file playing the host.

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { END, EXAMPLE, Host, MORE, TEXT, install, runToEnd, tempDir, withPlugin } from "./host.mjs";

test("a buffered answer is a head and one data frame with END", () =>
  withPlugin(EXAMPLE, {}, async (host) => {
    assert.equal(host.version, 2);
    const id = host.http("GET", "/hello-node/");
    const head = await host.reply(id);
    assert.equal(head.type, "http_response");
    assert.equal(head.payload.end_stream, false);
    assert.equal(head.payload.body, undefined);
    const data = await host.data(id);
    assert.equal(data.flags, END);
    assert.deepEqual(JSON.parse(data.bytes), {
      message: "Hello from Node!",
      plugin: "hello-node",
      instance_id: "5b0c1d2e-0000-4000-8000-00000000c0de",
    });
  }));

test("HEAD answers the head alone, with end_stream", () =>
  withPlugin(EXAMPLE, {}, async (host) => {
    const id = host.http("HEAD", "/hello-node/");
    const head = await host.reply(id);
    assert.equal(head.payload.status, 200);
    assert.equal(head.payload.end_stream, true);
  }));

test("a request body arrives in chunks and is read whole, raw bytes included", () =>
  withPlugin(EXAMPLE, {}, async (host) => {
    const id = host.request("http_request", { method: "GET", path: "/hello-node/echo", query: "", headers: [], end_stream: false });
    host.sendData(id, 0, Buffer.from("hé"));
    host.sendData(id, 0, Buffer.from("llo "));
    host.sendData(id, END, Buffer.from("world"));
    const { status, value } = await host.json(id);
    assert.equal(status, 200);
    assert.equal(value.body, "héllo world");
    assert.equal(value.body_base64, null);

    const binary = host.request("http_request", { method: "GET", path: "/hello-node/echo", query: "", headers: [], end_stream: false });
    host.sendData(binary, END, Buffer.from([0xff, 0x00, 0xfe]));
    const echoed = await host.json(binary);
    assert.deepEqual([echoed.value.body, echoed.value.body_base64], [null, "/wD+"]);
  }));

test("a 600 KiB body streams through the window, the plugin giving credit as it reads", () =>
  withPlugin(EXAMPLE, {}, async (host) => {
    const body = Buffer.alloc(600 * 1024, "a");
    const id = host.request("http_request", { method: "GET", path: "/hello-node/echo", query: "", headers: [], end_stream: false });
    await host.sendStream(id, body, { end: true });
    const { value } = await host.json(id);
    assert.equal(value.body.length, body.length);
  }));

test("ticks: a text/event-stream whose events arrive one by one, counting from 1", () =>
  withPlugin(EXAMPLE, {}, async (host) => {
    const id = host.http("GET", "/hello-node/ticks");
    const head = await host.reply(id);
    assert.equal(head.payload.status, 200);
    assert.equal(head.payload.end_stream, false);
    assert.deepEqual(head.payload.headers.find(([n]) => n === "content-type"), ["content-type", "text/event-stream"]);
    const first = await host.data(id);
    assert.equal(first.bytes.toString(), "data: 1\n\n");
    assert.equal(first.flags & END, 0, "the first event comes before the stream ends");
    const second = await host.data(id);
    assert.equal(second.bytes.toString(), "data: 2\n\n");
    host.send("cancel", id);
    const ping = host.request("ping");
    assert.equal((await host.reply(ping)).type, "pong");
    const after = host.http("GET", "/hello-node/");
    assert.equal((await host.json(after)).status, 200, "requests after the cancel still work");
  }));

function wsRequest(host, headers = []) {
  return host.request("http_request", {
    method: "GET",
    path: "/hello-node/ws",
    query: "",
    headers,
    end_stream: true,
    upgrade: "websocket",
  });
}

test("ws: accepted with 101; text comes back upper-cased, binary as it was", () =>
  withPlugin(EXAMPLE, {}, async (host) => {
    const id = wsRequest(host);
    const head = await host.reply(id);
    assert.deepEqual([head.payload.status, head.payload.end_stream], [101, false]);
    host.sendData(id, TEXT, Buffer.from("hello"));
    let f = await host.data(id);
    assert.deepEqual([f.flags, f.bytes.toString()], [TEXT, "HELLO"]);
    host.sendData(id, 0, Buffer.from([0, 1, 255]));
    f = await host.data(id);
    assert.deepEqual([f.flags, [...f.bytes]], [0, [0, 1, 255]]);
    // A message in fragments: MORE on all but the last frame.
    host.sendData(id, TEXT | MORE, Buffer.from("frag"));
    host.sendData(id, TEXT | MORE, Buffer.from("men"));
    host.sendData(id, TEXT, Buffer.from("ted"));
    f = await host.data(id);
    assert.deepEqual([f.flags, f.bytes.toString()], [TEXT, "FRAGMENTED"]);
    // An empty message is a message too.
    host.sendData(id, TEXT, Buffer.alloc(0));
    f = await host.data(id);
    assert.deepEqual([f.flags, f.bytes.length], [TEXT, 0]);
    // The client closes: the plugin's handler ends and it sends nothing more on the stream.
    host.send("ws_close", id, { code: 1000, reason: "bye" });
    const ping = host.request("ping");
    await host.reply(ping);
    assert.equal(host.items.filter((m) => m.request_id === id || m.stream === id).length, 0);
  }));

test("ws: a message larger than the window travels in fragments both ways", () =>
  withPlugin(EXAMPLE, {}, async (host) => {
    const id = wsRequest(host);
    await host.reply(id);
    const message = Buffer.alloc(700 * 1024, "x");
    await host.sendStream(id, message, { ws: true, text: true });
    const parts = [];
    for (;;) {
      const f = await host.data(id);
      assert.ok(f.flags & TEXT, "every fragment of a text message has TEXT");
      parts.push(f.bytes);
      if (!(f.flags & MORE)) break;
    }
    const echoed = Buffer.concat(parts);
    assert.equal(echoed.length, message.length);
    assert.ok(echoed.every((b) => b === "X".charCodeAt(0)));
    assert.ok(parts.length > 1, "split into several frames");
    assert.deepEqual(host.violations, []);
  }));

test("ws: text that is not UTF-8 closes with 1007, an oversized message with 1009", () =>
  withPlugin(EXAMPLE, {}, async (host) => {
    const id = wsRequest(host);
    await host.reply(id);
    host.sendData(id, TEXT, Buffer.from([0xc3, 0x28]));
    assert.equal((await host.notice("ws_close", id)).payload.code, 1007);

    const big = wsRequest(host);
    await host.reply(big);
    await host.sendStream(big, Buffer.alloc(1024 * 1024 + 1), { ws: true });
    assert.equal((await host.notice("ws_close", big)).payload.code, 1009);
  }));

test("ws: a plain GET of the WebSocket path gets 426", () =>
  withPlugin(EXAMPLE, {}, async (host) => {
    const { status } = await host.json(host.http("GET", "/hello-node/ws"));
    assert.equal(status, 426);
  }));

test("ws: a version 1 host cannot upgrade, and gets 426", () =>
  withPlugin(EXAMPLE, { max: 1 }, async (host) => {
    assert.equal(host.version, 1);
    const id = host.request("http_request", { method: "GET", path: "/hello-node/ws", query: "", headers: [], upgrade: "websocket" });
    const { status } = await host.json(id);
    assert.equal(status, 426);
  }));

test("settings: the greeting comes from init, and changes live", () =>
  withPlugin(EXAMPLE, { settings: { greeting: "Howdy" } }, async (host) => {
    const greet = async () => (await host.json(host.http("GET", "/hello-node/"))).value.message;
    assert.equal(await greet(), "Howdy from Node!");
    host.send("settings", null, { settings: { greeting: "Hi" } });
    await host.log("the new greeting", (l) => l.message.includes('"Hi"'));
    assert.equal(await greet(), "Hi from Node!");
    host.send("settings", null, { settings: { greeting: 7 } });
    const refused = await host.log("the refused value", (l) => l.level === "error");
    assert.match(refused.payload.message, /greeting.*expected text/);
    assert.equal(await greet(), "Hi from Node!", "a value the plugin cannot use is ignored");
  }));

test("settings: a greeting of the wrong type refuses to start, logged as an error", async () => {
  const host = await Host.start(EXAMPLE);
  try {
    const reply = await host.init({ min: 1, max: 2 }, { greeting: 42 });
    assert.equal(reply.type, "error");
    assert.equal(reply.payload.code, "init_refused");
    assert.match(reply.payload.message, /greeting/);
    assert.equal((await host.exit()).code, 78);
    assert.match(host.stderr, /^ERROR hello-node refused to start: .*greeting/m);
  } finally {
    await host.cleanup();
  }
});

test("installed under a package.json (type module, or broken), the example still runs", async () => {
  for (const pkg of ['{"type": "module"}', "{ not json", '{"type": "commonjs", "name": "x", "exports": "./nothing.js"}']) {
    const dir = tempDir();
    try {
      fs.writeFileSync(path.join(dir, "package.json"), pkg);
      const file = install(dir, "hello-node", EXAMPLE);
      fs.writeFileSync(path.join(path.dirname(file), "package.json"), pkg);
      const meta = await runToEnd(file, ["--metadata"], { cwd: path.dirname(file) });
      assert.equal(meta.code, 0, `--metadata under ${pkg}: ${meta.stderr}`);
      assert.equal(JSON.parse(meta.stdout).id, "hello-node");
      await withPlugin(file, {}, async (host) => {
        assert.equal((await host.json(host.http("GET", "/hello-node/"))).status, 200);
      });
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }
});

test("without toru-plugin.mjs beside it, the example says so in one ERROR line and exits 1", async () => {
  const dir = tempDir();
  try {
    const file = path.join(dir, "hello-node.binary");
    fs.copyFileSync(EXAMPLE, file);
    fs.chmodSync(file, 0o755);
    const { code, stdout, stderr } = await runToEnd(file, ["--metadata"]);
    assert.equal(code, 1);
    assert.equal(stdout, "");
    assert.match(stderr, /^ERROR hello-node cannot start: Cannot find module .*toru-plugin\.mjs.*\n$/);
    assert.equal(stderr.trim().split("\n").length, 1);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
