// A test host: spawns a plugin as a real process with TORU_SOCKET_PATH in a temp folder, connects,
// and speaks the protocol from docs/protocol.md with its own framing (not the SDK's), so the
// tests check the SDK against the page rather than against itself. Every wait has a deadline and
// says what it waited for.

import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const SDK = fileURLToPath(new URL("../toru-plugin.mjs", import.meta.url));
export const REPO = fileURLToPath(new URL("../../../", import.meta.url));
export const EXAMPLE = path.join(REPO, "examples/hello-plugin-node/hello-plugin-node.binary");
export const WAIT_MS = 10_000;
export const WINDOW = 262_144;
export const END = 0x01;
export const TEXT = 0x02;
export const MORE = 0x04;
export const INSTANCE_ID = "5b0c1d2e-0000-4000-8000-00000000c0de";
const REPLIES = new Set(["ready", "http_response", "bundle", "pong", "kv_result", "error"]);

/** A fresh temp folder (removed by `cleanup`). */
export function tempDir(prefix = "toru-node-") {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

/**
 * Installs a plugin the way an operator does: `<dir>/plugins/<name>.binary` (from `source`, a
 * path or the file's text) with `toru-plugin.mjs` beside it. Returns the `.binary`'s path.
 */
export function install(dir, name, source) {
  const plugins = path.join(dir, "plugins");
  fs.mkdirSync(plugins, { recursive: true });
  const file = path.join(plugins, `${name}.binary`);
  if (source.startsWith("#!")) fs.writeFileSync(file, source, { mode: 0o755 });
  else fs.copyFileSync(source, file);
  fs.chmodSync(file, 0o755);
  fs.copyFileSync(SDK, path.join(plugins, "toru-plugin.mjs"));
  return file;
}

/** The first line every test plugin starts with (as the example does). */
export const SHEBANG = "#!/usr/bin/env -S node -e module.constructor._load(path.resolve(process.argv[1]))";

/** A test plugin's source: the SDK imported, then `body` with the SDK's exports in scope. */
export function pluginSource(body, { id = "t", settings } = {}) {
  const meta = { id, name: "Test", version: "1.0.0" };
  if (settings) meta.settings = settings;
  return `${SHEBANG}
import("./toru-plugin.mjs").then((sdk) => {
  const { Plugin, HttpError, KvError, json, text, reply, stream, sse, sleep, decodeUtf8 } = sdk;
  const plugin = new Plugin(${JSON.stringify(meta)});
${body}
  plugin.run();
});
`;
}

/** Runs `file` with `args` to its end: `{code, stdout, stderr}`. */
export function runToEnd(file, args = [], { env = {}, cwd } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { env: { PATH: process.env.PATH, ...env }, cwd, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", (d) => (stderr += d));
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`timed out after ${WAIT_MS} ms waiting for ${file} ${args.join(" ")} to exit`));
    }, WAIT_MS);
    child.on("error", reject);
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** Awaits `promise` for at most WAIT_MS; rejects saying what was expected. */
export function within(what, promise, ms = WAIT_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

export function frame(json) {
  const body = Buffer.from(json, "utf8");
  const head = Buffer.alloc(4);
  head.writeUInt32BE(body.length);
  return Buffer.concat([head, body]);
}

export function dataFrame(stream, flags, data) {
  const head = Buffer.alloc(13);
  head.writeUInt32BE((0x80000000 | (9 + data.length)) >>> 0, 0);
  head.writeBigUInt64BE(BigInt(stream), 4);
  head[12] = flags;
  return Buffer.concat([head, data]);
}

/** A running plugin with this test playing its host. */
export class Host {
  child;
  socket;
  dir;
  stderr = "";
  stdout = "";
  items = []; // messages and data frames not yet taken by a test
  logs = [];
  kv = new Map();
  kvIds = [];
  kvFail = null; // [code, message]: every kv request gets this error
  kvHold = false; // kv requests wait in `heldKv` unanswered
  heldKv = [];
  autoCredit = true; // give back each data frame's bytes at once, like a fast client
  received = new Map(); // stream -> bytes of data the plugin sent
  credited = new Map(); // stream -> credit this host gave (beyond the first window)
  violations = [];
  #buffer = Buffer.alloc(0);
  #waiters = [];
  #nextId = 1;
  #exit;
  #closed = false;

  /** Spawns `file` and connects to it. */
  static async start(file, { env = {}, cwd } = {}) {
    const host = new Host();
    host.dir = tempDir("toru-sock-");
    const socketPath = path.join(host.dir, "p.sock");
    host.child = spawn(file, [], {
      env: { PATH: process.env.PATH, TORU_SOCKET_PATH: socketPath, ...env },
      cwd: cwd ?? path.dirname(file),
      stdio: ["ignore", "pipe", "pipe"],
    });
    host.#exit = new Promise((resolve) => host.child.on("close", (code, signal) => resolve({ code, signal })));
    host.child.stdout.on("data", (d) => (host.stdout += d));
    host.child.stderr.on("data", (d) => {
      host.stderr += d;
      host.#wake();
    });
    let exited = null;
    host.#exit.then((status) => (exited = status));
    host.socket = await within(
      "the plugin's socket to accept a connection",
      (async () => {
        for (;;) {
          if (exited) throw new Error(`the plugin exited (${JSON.stringify(exited)}) before listening; stderr: ${host.stderr}`);
          try {
            return await new Promise((resolve, reject) => {
              const s = net.connect(socketPath);
              s.once("connect", () => resolve(s));
              s.once("error", reject);
            });
          } catch {
            await new Promise((r) => setTimeout(r, 5));
          }
        }
      })(),
    );
    host.socket.on("data", (d) => host.#onBytes(d));
    host.socket.on("close", () => {
      host.#closed = true;
      host.#wake();
    });
    host.socket.on("error", () => {});
    return host;
  }

  /** Starts the plugin and completes init/ready with the host offering `min..=max`. */
  static async ready(file, { min = 1, max = 2, settings = {}, env, cwd } = {}) {
    const host = await Host.start(file, { env, cwd });
    const reply = await host.init({ min, max }, settings);
    if (reply.type !== "ready") throw new Error(`expected ready, got ${JSON.stringify(reply)}; stderr: ${host.stderr}`);
    host.version = reply.payload.protocol_version;
    return host;
  }

  get closed() {
    return this.#closed;
  }

  send(type, id, payload = {}) {
    this.sendRaw(frame(JSON.stringify({ type, timestamp: Date.now(), request_id: id, payload })));
  }

  sendRaw(bytes) {
    if (!this.socket.destroyed) this.socket.write(bytes);
  }

  sendData(stream, flags, data) {
    this.sendRaw(dataFrame(stream, flags, Buffer.from(data)));
  }

  /** Sends a request with a fresh id; returns the id. */
  request(type, payload = {}) {
    const id = this.#nextId++;
    this.send(type, id, payload);
    return id;
  }

  init(protocol, settings = {}) {
    const id = this.request("init", {
      protocol,
      instance_id: INSTANCE_ID,
      plugin_id: "under-test",
      socket_path: "/unused",
      log_path: "/unused.log",
      settings,
    });
    return this.reply(id);
  }

  /** Sends an http_request. `body` (version 2) follows as data frames unless `inline`. */
  http(method, p, { query = "", headers = [], body, upgrade, inline = false } = {}) {
    const payload = { method, path: p, query, headers };
    const streamed = this.version === 2 && !inline;
    if (body !== undefined && !streamed) payload.body = body;
    if (this.version === 2) payload.end_stream = !(streamed && body !== undefined);
    if (upgrade) payload.upgrade = upgrade;
    const id = this.request("http_request", payload);
    if (streamed && body !== undefined) this.sendData(id, END, Buffer.from(body));
    return id;
  }

  /** Takes the first item that `pred` accepts, waiting for it. */
  take(what, pred, ms = WAIT_MS) {
    return within(
      what,
      new Promise((resolve, reject) => {
        const attempt = () => {
          const i = this.items.findIndex(pred);
          if (i >= 0) {
            resolve(this.items.splice(i, 1)[0]);
            return true;
          }
          if (this.#closed) {
            reject(new Error(`the plugin closed the connection before ${what}; stderr: ${this.stderr}`));
            return true;
          }
          return false;
        };
        if (!attempt()) this.#waiters.push(attempt);
      }),
      ms,
    );
  }

  /** Waits until `cond()` holds (checked whenever something arrives); consumes nothing. */
  until(what, cond, ms = WAIT_MS) {
    return within(
      what,
      new Promise((resolve, reject) => {
        const attempt = () => {
          if (cond()) resolve();
          else if (this.#closed) reject(new Error(`the plugin closed the connection before ${what}; stderr: ${this.stderr}`));
          else return false;
          return true;
        };
        if (!attempt()) this.#waiters.push(attempt);
      }),
      ms,
    );
  }

  /** The reply to request `id`. */
  reply(id) {
    return this.take(`the reply to request ${id}`, (m) => !m.data && REPLIES.has(m.type) && m.request_id === id);
  }

  /** The next data frame of `stream`. */
  data(stream) {
    return this.take(`a data frame on stream ${stream}`, (m) => m.data && m.stream === stream);
  }

  /** The next message of `type` about `stream` (a notice, e.g. `ws_close`, `credit`). */
  notice(type, stream) {
    return this.take(`${type} on stream ${stream}`, (m) => !m.data && m.type === type && m.request_id === stream);
  }

  /** The next `log` message accepted by `pred`. */
  log(what, pred = () => true) {
    return this.take(`a log message: ${what}`, (m) => !m.data && m.type === "log" && pred(m.payload));
  }

  /** Data frames of `stream` up to and including END, as `{head, body}` with the head first. */
  async response(id) {
    const head = await this.reply(id);
    if (head.type !== "http_response") return { head, body: null };
    if (this.version < 2) return { head, body: Buffer.from(head.payload.body ?? head.payload.body_base64 ?? "", head.payload.body === undefined ? "base64" : "utf8") };
    const parts = [];
    if (!head.payload.end_stream) {
      for (;;) {
        const f = await this.data(id);
        parts.push(f.bytes);
        if (f.flags & END) break;
      }
    }
    return { head, body: Buffer.concat(parts) };
  }

  /** A JSON response's status and value. */
  async json(id) {
    const { head, body } = await this.response(id);
    if (head.type !== "http_response") throw new Error(`expected http_response, got ${JSON.stringify(head)}`);
    const ct = head.payload.headers.find(([n]) => n === "content-type")?.[1] ?? "";
    if (!ct.startsWith("application/json")) throw new Error(`expected JSON, got ${ct}: ${body}`);
    return { status: head.payload.status, value: JSON.parse(body.toString("utf8")), headers: head.payload.headers };
  }

  /** A line on stderr containing `needle`. */
  stderrLine(needle) {
    return within(
      `a line on stderr containing ${JSON.stringify(needle)}`,
      new Promise((resolve) => {
        const attempt = () => {
          const line = this.stderr.split("\n").find((l) => l.includes(needle));
          if (line !== undefined) resolve(line);
          return line !== undefined;
        };
        if (!attempt()) this.#waiters.push(attempt);
      }),
    );
  }

  /** The plugin's exit `{code, signal}`. */
  exit() {
    return within("the plugin to exit", this.#exit);
  }

  /** Closes this host's side: the plugin reads end of stream. */
  close() {
    this.socket.end();
  }

  /** Kills the plugin if it still runs and removes the temp folder. */
  async cleanup() {
    this.socket?.destroy();
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill("SIGKILL");
    await this.#exit;
    fs.rmSync(this.dir, { recursive: true, force: true });
  }

  #wake() {
    this.#waiters = this.#waiters.filter((attempt) => !attempt());
  }

  #onBytes(chunk) {
    this.#buffer = Buffer.concat([this.#buffer, chunk]);
    while (this.#buffer.length >= 4) {
      const h = this.#buffer.readUInt32BE(0);
      const len = h & 0x7fffffff;
      if (this.#buffer.length < 4 + len) break;
      const body = this.#buffer.subarray(4, 4 + len);
      this.#buffer = this.#buffer.subarray(4 + len);
      if (h >= 0x80000000) this.#onData(body);
      else this.#onMessage(JSON.parse(body.toString("utf8")));
    }
    this.#wake();
  }

  #onData(body) {
    const stream = Number(body.readBigUInt64BE(0));
    const bytes = Buffer.from(body.subarray(9));
    const total = (this.received.get(stream) ?? 0) + bytes.length;
    this.received.set(stream, total);
    if (total > WINDOW + (this.credited.get(stream) ?? 0)) {
      this.violations.push(`stream ${stream}: ${total} bytes sent against ${WINDOW + (this.credited.get(stream) ?? 0)} allowed`);
    }
    this.items.push({ data: true, stream, flags: body[8], bytes });
    if (this.autoCredit && bytes.length) this.credit(stream, bytes.length);
  }

  #window = new Map(); // stream -> what the plugin's window still lets this host send

  /**
   * Sends `bytes` on `stream` in data frames of at most `size` bytes, within the plugin's window:
   * when it is used up, waits for the plugin's `credit`. `end` sets END on the last frame; `ws`
   * sends one WebSocket message (MORE on all frames but the last; TEXT on all when `text`).
   */
  async sendStream(stream, bytes, { size = 65_536, end = false, ws = false, text = false } = {}) {
    let offset = 0;
    do {
      let window = this.#window.get(stream) ?? WINDOW;
      while (window === 0 && bytes.length > offset) {
        window += (await this.notice("credit", stream)).payload.bytes;
      }
      const n = Math.min(size, window, bytes.length - offset);
      const last = offset + n === bytes.length;
      let flags = text ? TEXT : 0;
      if (last && end) flags |= END;
      if (!last && ws) flags |= MORE;
      this.sendData(stream, flags, bytes.subarray(offset, offset + n));
      this.#window.set(stream, window - n);
      offset += n;
    } while (offset < bytes.length);
  }

  /** Gives `bytes` of credit on `stream`. */
  credit(stream, bytes) {
    this.credited.set(stream, (this.credited.get(stream) ?? 0) + bytes);
    this.send("credit", stream, { bytes });
  }

  #onMessage(msg) {
    if (msg.type === "kv") {
      this.kvIds.push(msg.request_id);
      if (this.kvHold) this.heldKv.push(msg);
      else this.answerKv(msg);
      return;
    }
    if (msg.type === "log") this.logs.push(msg.payload);
    this.items.push(msg);
  }

  answerKv(msg) {
    const { request_id: id, payload: p } = msg;
    if (this.kvFail) return this.send("error", id, { code: this.kvFail[0], message: this.kvFail[1] });
    const result = {};
    if (p.op === "get") {
      if (this.kv.has(p.key)) result.value = this.kv.get(p.key);
    } else if (p.op === "set") {
      this.kv.set(p.key, p.value);
    } else if (p.op === "delete") {
      result.existed = this.kv.delete(p.key);
    } else if (p.op === "list") {
      const limit = Math.min(p.limit ?? 1000, 1000);
      result.keys = [...this.kv.keys()]
        .filter((k) => k.startsWith(p.prefix) && (p.after === undefined || k > p.after))
        .sort()
        .slice(0, limit);
    }
    this.send("kv_result", id, result);
  }
}

/** Runs `body(host)` against a ready plugin and always cleans up. */
export async function withPlugin(file, options, body) {
  const host = await Host.ready(file, options);
  try {
    return await body(host);
  } finally {
    await host.cleanup();
  }
}
