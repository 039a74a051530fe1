// Start-up, settings, KV, shutdown, logging, and input that breaks the rules, with small plugins
// written for each behaviour.

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, test } from "node:test";
import { Host, frame, install, pluginSource, runToEnd, tempDir, withPlugin } from "./host.mjs";

const dir = tempDir();
after(() => fs.rmSync(dir, { recursive: true, force: true }));
let count = 0;

/** Installs a test plugin whose body is `body` (see `pluginSource`). */
function plugin(body, options) {
  return install(dir, `p${count++}`, pluginSource(body, options));
}

test("--metadata: the SDK's protocol range, frontend from the bundle, live_settings from the hook", async () => {
  const file = install(
    dir,
    "meta",
    pluginSource(`plugin.onSettings(() => {});`, { settings: [{ name: "mode", type: "choice", choices: ["a", "b"], default: "a" }] }),
  );
  const { code, stdout } = await runToEnd(file, ["--metadata"]);
  assert.equal(code, 0);
  const meta = JSON.parse(stdout);
  assert.deepEqual(meta, {
    id: "t",
    name: "Test",
    version: "1.0.0",
    author: "",
    description: "",
    icon: "",
    route: "/t",
    protocol: { min: 1, max: 2 },
    frontend: false,
    license_required: false,
    settings: [{ name: "mode", type: "choice", choices: ["a", "b"], default: "a" }],
    live_settings: true,
  });
  assert.equal(stdout.split("\n").length, 2, "one line");
});

test("invalid metadata: --metadata names the field, at error level, and exits 1", async () => {
  for (const [meta, why] of [
    [{ id: "Bad Id", name: "x", version: "1" }, /plugin id "Bad Id" is not valid/],
    [{ id: "ok", name: "x", version: "1", route: "/a/b" }, /route "\/a\/b" is not valid/],
    [{ id: "ok", name: " ", version: "1" }, /"name" is empty/],
    [{ id: "ok", name: "x", version: "1", settings: [{ name: "k", type: "secret", default: "s" }] }, /a secret cannot have a default/],
    [{ id: "ok", name: "x", version: "1", settings: [{ name: "n", type: "number", default: "ten" }] }, /default does not fit: expected a number/],
  ]) {
    const source = pluginSource("").replace('new Plugin({"id":"t","name":"Test","version":"1.0.0"})', `new Plugin(${JSON.stringify(meta)})`);
    const file = install(dir, `bad${count++}`, source);
    const { code, stdout, stderr } = await runToEnd(file, ["--metadata"]);
    assert.equal(code, 1, stderr);
    assert.equal(stdout, "");
    assert.match(stderr, /^ERROR /);
    assert.match(stderr, why);
  }
});

test("started by hand, or with arguments it does not know: one sentence, exit 2", async () => {
  const file = plugin("");
  for (const args of [[], ["--help"], ["--metadata", "x"]]) {
    const { code, stderr } = await runToEnd(file, args);
    assert.equal(code, 2);
    assert.match(stderr, /^t is a Toru plugin: .*TORU_SOCKET_PATH.*--metadata.*\.\n$/);
  }
});

test("a required setting missing, or onInit throwing, refuses to start: init_refused, exit 78, an ERROR line", async () => {
  const required = plugin("", { settings: [{ name: "api_token", type: "secret", required: true }] });
  const refusing = plugin(`plugin.onInit(async ({ settings }) => {
    if (!settings.license_key) throw new Error("no license key in the settings");
  });`);
  for (const [file, why] of [
    [required, /setting "api_token": a value is required/],
    [refusing, /no license key in the settings/],
  ]) {
    const host = await Host.start(file);
    try {
      const reply = await host.init({ min: 1, max: 2 }, { api_token: "" });
      assert.deepEqual([reply.type, reply.payload.code], ["error", "init_refused"]);
      assert.match(reply.payload.message, why);
      assert.equal((await host.exit()).code, 78);
      assert.match(host.stderr, /^ERROR t refused to start: /m);
    } finally {
      await host.cleanup();
    }
  }
});

test("a secret is never echoed in a refusal", async () => {
  const file = plugin("", { settings: [{ name: "token", type: "secret" }] });
  const host = await Host.start(file);
  try {
    const reply = await host.init({ min: 1, max: 2 }, { token: ["s3cr3t-value"] });
    assert.equal(reply.payload.code, "init_refused");
    assert.doesNotMatch(reply.payload.message + host.stderr, /s3cr3t-value/);
  } finally {
    await host.cleanup();
  }
});

test("onInit may use KV and log before ready; settings get their defaults", async () => {
  const file = plugin(
    `plugin.onInit(async ({ settings }) => {
    await plugin.kv.set("started", settings.greeting);
    plugin.log.warn("starting with " + settings.greeting);
  });
  plugin.get("/", () => ({ settings: plugin.settings }));`,
    { settings: [{ name: "greeting", type: "string", default: "Hello" }, { name: "n", type: "number" }] },
  );
  await withPlugin(file, { settings: { license_key: "k" } }, async (host) => {
    assert.equal(host.kv.get("started"), "Hello");
    assert.deepEqual(host.logs, [{ level: "warn", message: "starting with Hello" }]);
    const { value } = await host.json(host.http("GET", "/t/"));
    assert.deepEqual(value.settings, { greeting: "Hello", license_key: "k" });
  });
});

test("a settings hook that throws keeps the previous settings, logged as an error", async () => {
  const file = plugin(
    `plugin.onSettings((next) => { if (next.limit > 10) throw new Error("limit too high"); });
  plugin.get("/", () => plugin.settings);`,
    { settings: [{ name: "limit", type: "number", default: 5 }] },
  );
  await withPlugin(file, {}, async (host) => {
    host.send("settings", null, { settings: { limit: 8 } });
    assert.deepEqual((await host.json(host.http("GET", "/t/"))).value, { limit: 8 });
    host.send("settings", null, { settings: { limit: 50 } });
    const log = await host.log("the refusal", (l) => l.level === "error");
    assert.match(log.payload.error, /limit too high/);
    assert.deepEqual((await host.json(host.http("GET", "/t/"))).value, { limit: 8 });
  });
});

test("KV: get, set, delete, a page of list, and keys() through every page", async () => {
  const file = plugin(`plugin.get("/kv", async () => {
    await plugin.kv.set("a", "1");
    const got = await plugin.kv.get("a");
    const missing = await plugin.kv.get("nope");
    const existed = await plugin.kv.delete("a");
    const again = await plugin.kv.delete("a");
    const page = await plugin.kv.list("k:", { after: "k:0005", limit: 3 });
    let all = 0;
    for await (const key of plugin.kv.keys("k:")) all++;
    return { got, missing, existed, again, page, all };
  });
  plugin.get("/bad-value", async () => plugin.kv.set("a", 5));`);
  await withPlugin(file, {}, async (host) => {
    for (let i = 0; i < 2500; i++) host.kv.set(`k:${String(i).padStart(4, "0")}`, "v");
    host.kv.set("other", "v");
    const { value } = await host.json(host.http("GET", "/t/kv"));
    assert.deepEqual(value, { got: "1", missing: null, existed: true, again: false, page: ["k:0006", "k:0007", "k:0008"], all: 2500 });
    const kvIds = host.kvIds;
    assert.deepEqual(kvIds.slice(0, 3), [1, 2, 3], "the plugin numbers its KV requests from 1");
    const bad = await host.reply(host.http("GET", "/t/bad-value"));
    assert.deepEqual([bad.type, bad.payload.code], ["error", "plugin_error"]);
    assert.match(bad.payload.message, /a KV value is a string/);
  });
});

test("shutdown: new requests are refused, in-flight ones finish, the hook runs, exit 0", async () => {
  const file = plugin(`plugin.get("/wait", async (req) => { await plugin.kv.get("gate"); return { done: true }; });
  plugin.onShutdown(async () => { await plugin.kv.set("bye", "1"); });`);
  const host = await Host.ready(file);
  try {
    host.kvHold = true;
    const inFlight = host.http("GET", "/t/wait");
    await host.until("the request's KV call", () => host.heldKv.length === 1);
    host.send("shutdown", 99);
    const late = host.http("GET", "/t/wait");
    assert.equal((await host.reply(late)).payload.code, "shutting_down");
    const bundle = host.request("get_bundle");
    assert.equal((await host.reply(bundle)).payload.code, "shutting_down");
    assert.equal((await host.reply(host.request("ping"))).type, "pong", "pings are still answered");
    await host.until("the shutdown hook's KV call", () => host.heldKv.length === 2);
    host.kvHold = false;
    for (const m of host.heldKv.splice(0)) host.answerKv(m);
    assert.deepEqual((await host.json(inFlight)).value, { done: true });
    assert.equal((await host.exit()).code, 0);
    assert.equal(host.kv.get("bye"), "1");
  } finally {
    await host.cleanup();
  }
});

test("shutdown abandons a download that outlives the grace period", async () => {
  const file = install(
    dir,
    "grace",
    pluginSource(`plugin.get("/endless", (req) => stream(async (out) => { for (;;) { await out.write("x"); await sleep(20, req.signal); } }));`).replace(
      'new Plugin({"id":"t","name":"Test","version":"1.0.0"})',
      'new Plugin({"id":"t","name":"Test","version":"1.0.0"}, { shutdownGraceMs: 300 })',
    ),
  );
  const host = await Host.ready(file);
  try {
    const id = host.http("GET", "/t/endless");
    await host.data(id);
    host.send("shutdown", 50);
    assert.equal((await host.exit()).code, 0);
  } finally {
    await host.cleanup();
  }
});

test("the host hanging up ends the plugin at once with exit 0, whatever is in flight", async () => {
  const file = plugin(`plugin.get("/forever", () => new Promise(() => {}));`);
  const host = await Host.ready(file);
  try {
    host.http("GET", "/t/forever");
    await host.reply(host.request("ping"));
    host.close();
    assert.equal((await host.exit()).code, 0);
  } finally {
    await host.cleanup();
  }
});

test("more requests in flight than maxInFlight are answered 503", async () => {
  const file = install(
    dir,
    "busy",
    pluginSource(`plugin.get("/wait", () => new Promise(() => {}));`).replace(
      'new Plugin({"id":"t","name":"Test","version":"1.0.0"})',
      'new Plugin({"id":"t","name":"Test","version":"1.0.0"}, { maxInFlight: 2 })',
    ),
  );
  await withPlugin(file, {}, async (host) => {
    host.http("GET", "/t/wait");
    host.http("GET", "/t/wait");
    const third = await host.json(host.http("GET", "/t/wait"));
    assert.deepEqual([third.status, third.value], [503, { error: "too many requests in flight" }]);
  });
});

test("a cancelled handler that ignores its signal gives its slot back", async () => {
  const file = install(
    dir,
    "stubborn",
    pluginSource(`plugin.get("/hang", () => new Promise(() => {}));
  plugin.get("/", () => "ok");`).replace(
      'new Plugin({"id":"t","name":"Test","version":"1.0.0"})',
      'new Plugin({"id":"t","name":"Test","version":"1.0.0"}, { maxInFlight: 1 })',
    ),
  );
  await withPlugin(file, {}, async (host) => {
    for (let i = 0; i < 3; i++) {
      const hung = host.http("GET", "/t/hang");
      host.send("cancel", hung);
      const { head, body } = await host.response(host.http("GET", "/t/"));
      assert.deepEqual([head.payload.status, body.toString()], [200, "ok"]);
    }
  });
});

test("hostile input gets bad_request or is ignored, and the connection goes on", async () => {
  const file = plugin(`plugin.get("/", () => "ok");
  plugin.get("/hang", () => new Promise(() => {}));`);
  await withPlugin(file, {}, async (host) => {
    const bad = [
      ["not json", null],
      ['{"type":"http_request","request_id":5,"payload":{"method":"GET"}}', 5],
      ['{"type":"http_request","request_id":6,"payload":{"method":"GET","path":"/t/","body_base64":"!!"}}', 6],
      ['{"type":"ping","request_id":18446744073709551615,"payload":{}}', null],
      ['{"type":"ping","request_id":-1}', null],
      ['[1,2,3]', null],
      ['{"request_id":7}', 7],
      ['{"type":"ping","request_id":8,"timestamp":"now"}', 8],
      ['{"type":"kv","request_id":9,"payload":{"op":"get","key":"a"}}', 9],
    ];
    for (const [json, id] of bad) {
      host.sendRaw(frame(json));
      const reply = await host.take(`bad_request for ${json}`, (m) => m.type === "error" && m.request_id === id);
      assert.equal(reply.payload.code, "bad_request", json);
    }
    const logged = host.logs.filter((l) => l.level === "error" && l.message.startsWith("answered bad_request:"));
    assert.equal(logged.length, bad.length, "each bad frame is logged at error level");
    host.sendRaw(frame('{"type":"frobnicate","request_id":10,"payload":{}}'));
    assert.equal((await host.reply(10)).payload.code, "unknown_type");
    host.sendRaw(Buffer.from([0, 0, 0, 2, 0xc3, 0x28])); // not UTF-8
    assert.equal((await host.take("bad_request for bytes that are not UTF-8", (m) => m.type === "error" && m.request_id === null)).payload.code, "bad_request");
    // Notices and replies nobody asked for: ignored, never answered.
    host.send("frobnicate", null, {});
    host.send("kv_result", 4242, {});
    host.send("credit", 4242, { bytes: 100 });
    host.send("credit", 4242, { bytes: "lots" });
    host.send("ws_close", 4242, { code: 1000 });
    host.send("cancel", 4242);
    host.sendData(4242, 1, Buffer.from("data for no stream"));
    host.sendRaw(Buffer.from([0x80, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0])); // a data frame too short for its header
    await host.log("the short data frame", (l) => l.level === "error" && /at least 9/.test(l.message));
    const id = host.http("GET", "/t/hang");
    host.send("http_request", id, { method: "GET", path: "/t/", end_stream: true });
    const reuse = await host.reply(id);
    assert.deepEqual([reuse.type, reuse.payload.code], ["error", "bad_request"], "an id in flight is not reused");
    assert.equal((await host.reply(host.request("ping"))).type, "pong");
    assert.equal(host.items.filter((m) => m.type === "error").length, 0, `nothing else answered: ${JSON.stringify(host.items)}`);
  });
});

test("before init: requests get bad_request, notices and replies are ignored, then init works", async () => {
  const host = await Host.start(plugin(""));
  try {
    host.send("cancel", 40);
    host.send("credit", 41, { bytes: 10 });
    host.send("ws_close", 42, { code: 1000 });
    assert.equal((await host.reply(host.request("ping"))).payload.code, "bad_request");
    assert.deepEqual(host.items, [], "nothing answers a notice");
    host.send("kv_result", 1, {});
    assert.equal((await host.init({ min: 2, max: 2 })).payload.protocol_version, 2);
    assert.equal((await host.reply(host.request("init", {}))).payload.code, "bad_request", "a second init");
  } finally {
    await host.cleanup();
  }
});

test("an oversized length, a data frame on protocol 1, or the stream ending inside a frame: exit 1 with an ERROR line", async () => {
  const file = plugin("");
  const cases = [
    [2, (host) => host.sendRaw(Buffer.from([0x01, 0x00, 0x00, 0x01])), /over the 16777216-byte limit/],
    [1, (host) => host.sendData(1, 0, Buffer.from("x")), /data frame on a connection that did not agree on protocol 2/],
    [2, (host) => { host.sendRaw(Buffer.from([0, 0, 0, 9, 0x7b])); host.close(); }, /ended inside a frame/],
  ];
  for (const [max, act, why] of cases) {
    const host = await Host.ready(file, { max });
    try {
      act(host);
      assert.equal((await host.exit()).code, 1);
      assert.match(host.stderr, /^ERROR /m);
      assert.match(host.stderr, why);
    } finally {
      await host.cleanup();
    }
  }
});

test("logs go over the socket once connected, and to stderr with a level word before", async () => {
  const file = plugin(`plugin.log.error("before the host", new Error("boom"));
  plugin.get("/", () => { plugin.log.debug("in a request"); return "ok"; });`);
  await withPlugin(file, {}, async (host) => {
    await host.stderrLine("ERROR before the host: Error: boom");
    assert.equal((await host.response(host.http("GET", "/t/"))).body.toString(), "ok");
    const log = await host.log("the request's line", (l) => l.message === "in a request");
    assert.equal(log.payload.level, "debug");
  });
});

test("an exception nobody catches ends the plugin with exit 1 and an ERROR line", async () => {
  const file = plugin(`plugin.get("/", () => { setTimeout(() => { throw new Error("thrown from a timer"); }); return "ok"; });`);
  const host = await Host.ready(file);
  try {
    await host.reply(host.http("GET", "/t/"));
    assert.equal((await host.exit()).code, 1);
    assert.match(host.stderr, /^ERROR t crashed: Error: thrown from a timer/m);
  } finally {
    await host.cleanup();
  }
});

test("the SDK missing beside the .binary is a clear error", async () => {
  const d = tempDir();
  try {
    const file = install(d, "alone", pluginSource(""));
    fs.rmSync(path.join(path.dirname(file), "toru-plugin.mjs"));
    const { code, stderr } = await runToEnd(file, ["--metadata"]);
    assert.notEqual(code, 0);
    assert.match(stderr, /Cannot find module .*toru-plugin\.mjs/);
  } finally {
    fs.rmSync(d, { recursive: true, force: true });
  }
});
