// The Node.js code in docs/plugin-guide.md ("In Node.js") is run, so the guide cannot drift from
// the SDK: the complete plugin as written, and each snippet inside a small plugin of its own.

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, test } from "node:test";
import { END, Host, REPO, SHEBANG, TEXT, install, runToEnd, tempDir, withPlugin } from "./host.mjs";

const guide = fs.readFileSync(path.join(REPO, "docs/plugin-guide.md"), "utf8");
const section = guide.slice(guide.indexOf("## In Node.js"), guide.indexOf("\n## ", guide.indexOf("## In Node.js") + 1));
const blocks = [...section.matchAll(/```js\n([\s\S]*?)```/g)].map((m) => m[1]);
const dir = tempDir();
after(() => fs.rmSync(dir, { recursive: true, force: true }));

/** The snippet that contains `needle`. */
function snippet(needle) {
  const found = blocks.filter((b) => b.includes(needle));
  assert.equal(found.length, 1, `one snippet in the guide's Node section contains ${needle}`);
  return found[0];
}

/** A snippet inside a plugin of its own (it may declare the plugin itself). */
function snippetPlugin(name, code) {
  const declare = code.includes("new Plugin(") ? "" : `const plugin = new Plugin({ id: "doc", name: "Doc", version: "1.0.0" });\n`;
  return install(
    dir,
    name,
    `${SHEBANG}
import("./toru-plugin.mjs").then(({ Plugin, HttpError, json, stream, sse, sleep }) => {
${declare}${code}
plugin.run();
});
`,
  );
}

test("the complete plugin: at most 20 lines, two routes, a counter that never loses a count", async () => {
  const code = blocks[0];
  assert.ok(code.startsWith(`${SHEBANG}\n`), "the first block is the complete plugin, with the example's first line");
  const lines = code.trimEnd().split("\n").length;
  assert.ok(lines <= 20, `the smallest complete plugin is ${lines} lines`);
  const file = install(dir, "counter", code);
  const meta = JSON.parse((await runToEnd(file, ["--metadata"])).stdout);
  assert.equal(meta.route, "/counter");
  for (const max of [1, 2]) {
    await withPlugin(file, { max }, async (host) => {
      assert.deepEqual((await host.json(host.http("GET", "/counter/"))).value, { message: "Hello from Node!" });
      const ids = Array.from({ length: 20 }, () => host.http("POST", "/counter/count"));
      const counts = [];
      for (const id of ids) counts.push((await host.json(id)).value.count);
      assert.deepEqual(counts.sort((a, b) => a - b), Array.from({ length: 20 }, (_, i) => i + 1));
      assert.equal(host.kv.get("count"), "20");
    });
  }
});

test("the settings snippet: declared settings, live, and onInit refusing a bad token", async () => {
  const file = snippetPlugin("weather", snippet("onInit"));
  const meta = JSON.parse((await runToEnd(file, ["--metadata"])).stdout);
  assert.deepEqual(meta.settings.map((s) => s.name), ["city", "api_token"]);
  assert.equal(meta.live_settings, true);
  await withPlugin(file, { settings: { api_token: "tok_1" } }, async (host) => {
    host.send("settings", null, { settings: { city: "Bergen", api_token: "tok_1" } });
    await host.log("the hook's line", (l) => l.message === "city is now Bergen");
  });
  const host = await Host.start(file);
  try {
    const reply = await host.init({ min: 1, max: 2 }, { api_token: "nope" });
    assert.equal(reply.payload.code, "init_refused");
    assert.equal((await host.exit()).code, 78);
  } finally {
    await host.cleanup();
  }
});

test("the streaming snippet: an upload counted as it arrives, a download written chunk by chunk", async () => {
  const file = snippetPlugin("streaming", snippet("/upload"));
  await withPlugin(file, {}, async (host) => {
    const up = host.request("http_request", { method: "POST", path: "/doc/upload", query: "", headers: [], end_stream: false });
    await host.sendStream(up, Buffer.alloc(500_000, 1), { end: true });
    assert.deepEqual((await host.json(up)).value, { bytes: 500_000 });
    const { head, body } = await host.response(host.http("GET", "/doc/download"));
    assert.deepEqual(head.payload.headers, [["content-type", "application/octet-stream"]]);
    assert.equal(body.length, 100 * 65536);
    assert.equal(body[99 * 65536], 99);
  });
});

test("the SSE snippet: ticks from 1", async () => {
  const file = snippetPlugin("ticks", snippet("/ticks"));
  await withPlugin(file, {}, async (host) => {
    const id = host.http("GET", "/doc/ticks");
    await host.reply(id);
    const first = await host.data(id);
    assert.equal(first.bytes.toString(), "data: 1\n\n");
    assert.equal(first.flags & END, 0);
    host.send("cancel", id);
  });
});

test("the WebSocket snippet: text upper-cased, binary echoed", async () => {
  const file = snippetPlugin("ws", snippet("plugin.ws("));
  await withPlugin(file, {}, async (host) => {
    const id = host.request("http_request", { method: "GET", path: "/doc/ws", query: "", headers: [], end_stream: true, upgrade: "websocket" });
    assert.equal((await host.reply(id)).payload.status, 101);
    host.sendData(id, TEXT, Buffer.from("quiet"));
    assert.equal((await host.data(id)).bytes.toString(), "QUIET");
    host.sendData(id, 0, Buffer.from([1, 2]));
    assert.deepEqual([...(await host.data(id)).bytes], [1, 2]);
  });
});
