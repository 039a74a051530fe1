// toru-plugin.mjs: the Toru plugin SDK for Node.js 18 and later. One ES module, no dependencies.
//
// A plugin declares its metadata and routes, then calls run():
//
//   const plugin = new Plugin({ id: "counter", name: "Counter", version: "0.1.0" });
//   plugin.get("/", () => ({ message: "Hello!" }));
//   plugin.post("/count", async () => ({ count: Number(await plugin.kv.update("n", (v) => String(Number(v ?? 0) + 1))) }));
//   plugin.run();
//
// run() does the rest of docs/protocol.md: `--metadata`, the socket, init/ready and version
// negotiation (1 and 2), requests handled concurrently, ping, cancel (an AbortSignal per request),
// shutdown, settings, KV and log messages, and protocol 2's streams: request bodies as async
// iterators with flow control, streamed responses, server-sent events and WebSockets. With a host
// that offers only version 1 everything still works as that version allows (bodies whole).
//
// The guide is docs/plugin-guide.md ("In Node.js"); the reference is sdk/node/README.md.

import { Buffer } from "node:buffer";
import fs from "node:fs";
import net from "node:net";
import { setTimeout as delay } from "node:timers/promises";

/** The protocol versions this SDK speaks, both ends included. */
export const PROTOCOL = Object.freeze({ min: 1, max: 2 });

/** Data frame flags (docs/protocol.md, section 16). */
export const FLAGS = Object.freeze({ END: 0x01, TEXT: 0x02, MORE: 0x04 });

/** The defaults of the options `new Plugin(metadata, options)` takes. */
export const DEFAULTS = Object.freeze({
  /** The largest frame read or written, in bytes (the protocol's default limit). */
  maxFrameBytes: 16 * 1024 * 1024,
  /** How long in-flight requests may run on after `shutdown`. */
  shutdownGraceMs: 5000,
  /** How long a KV call waits for the host's answer. */
  kvTimeoutMs: 30_000,
  /** What `req.readAll()`, `req.text()` and `req.json()` accept when given no limit. */
  maxBodyBytes: 10 * 1024 * 1024,
  /** The largest WebSocket message received (larger: closed with 1009) or sent (RangeError). */
  wsMaxMessageBytes: 1024 * 1024,
  /** Requests handled at once; more are answered 503 without reaching a handler. */
  maxInFlight: 4096,
});

const WINDOW = 256 * 1024; // every stream's window, both ways (section 16)
const CREDIT_BATCH = WINDOW / 2; // credit is given back in batches of at least this much
const MAX_DATA = 64 * 1024; // the most data this SDK puts in one data frame
const DATA_BIT = 0x80000000;
const HIGH_WATER = 1024 * 1024; // bytes queued on the socket before data writers wait for it
const EXIT_CONFIG = 78;
const EXIT_USAGE = 2;
const ENV_SOCKET_PATH = "TORU_SOCKET_PATH";
const ENV_PLUGIN_ID = "TORU_PLUGIN_ID";
const LEVELS = ["trace", "debug", "info", "warn", "error"];
const MAX_LOG_BYTES = 64 * 1024;
const MAX_ERROR_BYTES = 4096;
const REPLY_TYPES = new Set(["ready", "http_response", "bundle", "pong", "kv_result", "error"]);
// Notices: never answered, even when they carry an id (a stream's, or a fresh one).
const NOTICE_TYPES = new Set(["cancel", "shutdown", "settings", "credit", "ws_close", "log"]);
const SLUG = /^[a-z0-9][a-z0-9-]{0,62}$/;
const SETTING_NAME = /^[a-z][a-z0-9_]{0,63}$/;
const SETTING_TYPES = new Set(["string", "number", "boolean", "choice", "secret"]);
const MAX_SETTINGS = 64;
const MAX_TEXT_SETTING = 64 * 1024;
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
const METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
const INTERNAL = Symbol("toru-plugin internals"); // the connection's view of a Plugin

// ---------------------------------------------------------------------------------------------
// Errors

/** Thrown by a handler: answered as `{"error": message}` with `status` (and `headers`). */
export class HttpError extends Error {
  constructor(status, message, { headers } = {}) {
    super(message);
    this.name = "HttpError";
    this.status = checkStatus(status);
    this.headers = headerPairs(headers);
  }
}

/** A KV call the host refused (`code` is the host's, e.g. `kv_too_large`) or that failed. */
export class KvError extends Error {
  constructor(code, detail) {
    super(`${code}: ${detail}`);
    this.name = "KvError";
    this.code = code;
    this.detail = detail;
  }
}

/** The connection broke a rule that ends it (an oversized frame, a data frame on version 1). */
class ProtocolBreak extends Error {}

/** A frame that is not a valid message; answered `bad_request`, and the connection goes on. */
class BadMessage extends Error {
  constructor(reason, id = null) {
    super(reason);
    this.id = id;
  }
}

function abortError(why) {
  return new DOMException(why, "AbortError");
}

function isAbort(e) {
  return e?.name === "AbortError";
}

// ---------------------------------------------------------------------------------------------
// Small helpers

function isUint(v) {
  return Number.isSafeInteger(v) && v >= 0;
}

function isObject(v) {
  return v !== null && typeof v === "object" && !Array.isArray(v);
}

function isString(v) {
  return typeof v === "string";
}

function optional(v, test) {
  return v === undefined || v === null || test(v);
}

function describe(v) {
  return v === null ? "null" : Array.isArray(v) ? "an array" : `a ${typeof v}`;
}

/** `text` cut to at most `max` bytes of UTF-8, on a character boundary. */
function truncate(text, max) {
  const s = String(text);
  if (s.length * 3 <= max || Buffer.byteLength(s) <= max) return s;
  return Buffer.from(s).subarray(0, max).toString("utf8").replace(/\uFFFD+$/, "") + "…";
}

function describeRange(r) {
  return r.min === r.max ? `${r.min}` : `${r.min}..=${r.max}`;
}

const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** The bytes as a string when they are valid UTF-8, else `null`. */
export function decodeUtf8(bytes) {
  try {
    return utf8.decode(bytes);
  } catch {
    return null;
  }
}

/** Resolves after `ms` milliseconds; rejects with an AbortError as soon as `signal` aborts. */
export function sleep(ms, signal) {
  return delay(ms, undefined, signal ? { signal } : undefined);
}

/** A chunk of a body as a Buffer (strings are UTF-8). */
function toBuffer(chunk) {
  if (typeof chunk === "string") return Buffer.from(chunk, "utf8");
  if (Buffer.isBuffer(chunk)) return chunk;
  if (ArrayBuffer.isView(chunk)) return Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  if (chunk instanceof ArrayBuffer) return Buffer.from(chunk);
  throw new TypeError(`a body chunk must be a string or bytes, not ${describe(chunk)}`);
}

function checkStatus(status) {
  if (!Number.isInteger(status) || status < 100 || status > 999) {
    throw new RangeError(`HTTP status ${status} is not a number from 100 to 999`);
  }
  return status;
}

const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

/** Headers as `[name, value]` pairs with lower-case names, from pairs, a Map or an object. */
function headerPairs(headers) {
  if (headers === undefined || headers === null) return [];
  const entries = Array.isArray(headers)
    ? headers
    : headers instanceof Map || typeof headers[Symbol.iterator] === "function"
      ? [...headers]
      : Object.entries(headers);
  const out = [];
  for (const entry of entries) {
    if (!Array.isArray(entry) || entry.length !== 2) {
      throw new TypeError("headers are [name, value] pairs");
    }
    const [name, value] = entry;
    for (const v of Array.isArray(value) ? value : [value]) {
      const text = String(v);
      if (!TOKEN.test(String(name)) || /[\r\n\0]/.test(text)) {
        throw new TypeError(`header ${JSON.stringify(String(name))} has a name or value that HTTP does not allow`);
      }
      out.push([String(name).toLowerCase(), text]);
    }
  }
  return out;
}

/** Races `promise` against `signal`: rejects with an AbortError when the signal aborts first. */
function unlessAborted(promise, signal) {
  if (!signal) return promise;
  if (signal.aborted) return Promise.reject(abortError("cancelled"));
  return new Promise((resolve, reject) => {
    const onAbort = () => reject(abortError("cancelled"));
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(
      (v) => {
        signal.removeEventListener("abort", onAbort);
        resolve(v);
      },
      (e) => {
        signal.removeEventListener("abort", onAbort);
        reject(e);
      },
    );
  });
}

// ---------------------------------------------------------------------------------------------
// Frames (section 3): a 4-byte big-endian length, then JSON; with the top bit set (version 2),
// an 8-byte stream id, one byte of flags and raw data.

/** Splits the bytes read from the socket into frames, refusing an oversized length at once. */
class FrameDecoder {
  #chunks = [];
  #length = 0;
  #max;

  constructor(maxFrame) {
    this.#max = maxFrame;
  }

  get buffered() {
    return this.#length;
  }

  push(chunk) {
    if (chunk.length === 0) return;
    this.#chunks.push(chunk);
    this.#length += chunk.length;
  }

  /** The next whole frame `{ data, body }`, or null while it is incomplete. */
  next() {
    if (this.#length < 4) return null;
    const head = this.#peekHeader();
    const len = head & 0x7fffffff;
    if (len > this.#max) {
      throw new ProtocolBreak(
        `the host sent a frame of ${len} bytes, over the ${this.#max}-byte limit; closing the connection`,
      );
    }
    if (this.#length < 4 + len) return null;
    this.#take(4);
    return { data: head >= DATA_BIT, body: this.#take(len) };
  }

  #peekHeader() {
    const first = this.#chunks[0];
    if (first.length >= 4) return first.readUInt32BE(0);
    const four = Buffer.alloc(4);
    let at = 0;
    for (const chunk of this.#chunks) {
      at += chunk.copy(four, at, 0, Math.min(chunk.length, 4 - at));
      if (at === 4) break;
    }
    return four.readUInt32BE(0);
  }

  #take(n) {
    this.#length -= n;
    const first = this.#chunks[0];
    if (n === 0) return Buffer.alloc(0);
    if (first.length >= n) {
      const out = first.subarray(0, n);
      if (first.length === n) this.#chunks.shift();
      else this.#chunks[0] = first.subarray(n);
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    let at = 0;
    while (at < n) {
      const chunk = this.#chunks[0];
      const part = Math.min(chunk.length, n - at);
      chunk.copy(out, at, 0, part);
      at += part;
      if (part === chunk.length) this.#chunks.shift();
      else this.#chunks[0] = chunk.subarray(part);
    }
    return out;
  }
}

/** One JSON message as a frame: `type` first, as senders should. */
function encodeMessage(type, requestId, payload, maxFrame) {
  const json = JSON.stringify({ type, timestamp: Date.now(), request_id: requestId ?? null, payload });
  // Buffer.from writes a lone surrogate as U+FFFD, so the frame is always valid UTF-8.
  const body = Buffer.from(json, "utf8");
  if (body.length > maxFrame) {
    throw new RangeError(`a ${type} of ${body.length} bytes does not fit the ${maxFrame}-byte frame limit`);
  }
  const frame = Buffer.allocUnsafe(4 + body.length);
  frame.writeUInt32BE(body.length, 0);
  body.copy(frame, 4);
  return frame;
}

/** The 13-byte header of a data frame carrying `dataLength` bytes. */
function dataHeader(streamId, flags, dataLength) {
  const header = Buffer.allocUnsafe(13);
  header.writeUInt32BE((DATA_BIT | (9 + dataLength)) >>> 0, 0);
  header.writeBigUInt64BE(BigInt(streamId), 4);
  header.writeUInt8(flags, 12);
  return header;
}

/** Parses one JSON frame into `{ type, id, payload }`, or throws BadMessage. */
function parseMessage(body) {
  let value;
  try {
    value = JSON.parse(utf8.decode(body));
  } catch (e) {
    throw new BadMessage(`the frame is not UTF-8 JSON: ${e.message}`);
  }
  if (!isObject(value)) throw new BadMessage("the frame is not a JSON object");
  const id = value.request_id ?? null;
  if (id !== null && !isUint(id)) {
    throw new BadMessage("request_id must be null or an unsigned integer below 2^53");
  }
  if (!isString(value.type)) throw new BadMessage('the message has no string "type"', id);
  if (!optional(value.timestamp, (t) => Number.isInteger(t) && t >= 0)) {
    throw new BadMessage("timestamp must be an unsigned integer", id);
  }
  const payload = value.payload ?? {};
  if (!isObject(payload)) throw new BadMessage(`the payload of ${value.type} must be an object`, id);
  return { type: value.type, id, payload };
}

const isHeaderList = (h) =>
  Array.isArray(h) && h.every((p) => Array.isArray(p) && p.length === 2 && isString(p[0]) && isString(p[1]));

/** Why a payload of `type` is not valid, or null. Only the types this SDK reads. */
function payloadProblem(type, p) {
  switch (type) {
    case "init": {
      const r = p.protocol;
      if (!isObject(r) || !isUint(r.min) || !isUint(r.max)) return "init.protocol must be {min, max}";
      for (const f of ["instance_id", "plugin_id", "socket_path", "log_path"]) {
        if (!isString(p[f])) return `init.${f} must be a string`;
      }
      return optional(p.settings, isObject) ? null : "init.settings must be an object";
    }
    case "http_request":
      if (!isString(p.method) || !isString(p.path)) return "http_request needs method and path strings";
      if (!optional(p.query, isString)) return "http_request.query must be a string";
      if (!optional(p.headers, isHeaderList)) return "http_request.headers must be [name, value] string pairs";
      if (!optional(p.body, isString)) return "http_request.body must be a string";
      if (!optional(p.body_base64, (b) => isString(b) && BASE64.test(b))) {
        return "http_request.body_base64 must be padded standard base64";
      }
      if (!optional(p.end_stream, (b) => typeof b === "boolean")) return "http_request.end_stream must be a boolean";
      return optional(p.upgrade, isString) ? null : "http_request.upgrade must be a string";
    case "settings":
      return isObject(p.settings) ? null : "settings.settings must be an object";
    case "credit":
      return isUint(p.bytes) ? null : "credit.bytes must be an unsigned integer";
    case "ws_close":
      if (!optional(p.code, (c) => Number.isInteger(c) && c >= 0 && c <= 65535)) return "ws_close.code must be 0 to 65535";
      return optional(p.reason, isString) ? null : "ws_close.reason must be a string";
    case "kv_result":
      if (!optional(p.value, isString)) return "kv_result.value must be a string";
      if (!optional(p.existed, (b) => typeof b === "boolean")) return "kv_result.existed must be a boolean";
      return optional(p.keys, (k) => Array.isArray(k) && k.every(isString)) ? null : "kv_result.keys must be strings";
    case "error":
      return isString(p.code) && isString(p.message) ? null : "error needs code and message strings";
    default:
      return null;
  }
}

// ---------------------------------------------------------------------------------------------
// Responses

/** What a handler answers: a status, headers and a body (see `reply`). */
export class Reply {
  constructor(status = 200, body = null, headers = []) {
    this.status = checkStatus(status);
    this.headers = headerPairs(headers);
    this.body = body;
  }
}

/**
 * A response. `body` is null (none), a string (UTF-8), bytes, an async or sync iterable of
 * chunks (streamed), or an async function `(out) => {...}` that writes with `await out.write(chunk)`
 * (streamed; each write waits for the host's credit).
 */
export function reply(status, body = null, headers = []) {
  return new Reply(status, body, headers);
}

/** A JSON response: `json(200, {count: 1})`. */
export function json(status, value, headers = []) {
  return new Reply(status, JSON.stringify(value) ?? "null", [
    ["content-type", "application/json"],
    ...headerPairs(headers),
  ]);
}

/** A plain text response. */
export function text(status, body, headers = []) {
  return new Reply(status, String(body), [["content-type", "text/plain; charset=utf-8"], ...headerPairs(headers)]);
}

/** A streamed response from an iterable of chunks or a writer function (see `reply`). */
export function stream(source, { status = 200, headers = [] } = {}) {
  const pairs = headerPairs(headers);
  if (!pairs.some(([n]) => n === "content-type")) pairs.unshift(["content-type", "application/octet-stream"]);
  return new Reply(status, source, pairs);
}

/** One server-sent event as text. `ev` is a string, a number, or `{data, event, id, retry, comment}`. */
export function formatEvent(ev) {
  const e = isObject(ev) ? ev : { data: ev };
  const oneLine = (v) => String(v).replace(/[\r\n\0]/g, " ");
  let out = "";
  if (e.comment !== undefined) out += formatComment(e.comment);
  if (e.event !== undefined) out += `event: ${oneLine(e.event)}\n`;
  if (e.id !== undefined) out += `id: ${oneLine(e.id)}\n`;
  if (e.retry !== undefined) out += `retry: ${Math.max(0, Math.floor(Number(e.retry)) || 0)}\n`;
  if (e.data !== undefined) {
    const data = isString(e.data) ? e.data : JSON.stringify(e.data) ?? "null";
    for (const line of data.split(/\r\n|\r|\n/)) out += `data: ${line}\n`;
  }
  return `${out}\n`;
}

function formatComment(text) {
  return String(text)
    .split(/\r\n|\r|\n/)
    .map((line) => `: ${line}\n`)
    .join("");
}

/**
 * A `text/event-stream` response. `source` is an async iterable of events (see `formatEvent`), or
 * an async function `(events) => {...}` calling `await events.send(ev)` and
 * `await events.comment(text)`, with `events.signal` aborted when the client goes away. A comment
 * line is sent after `keepAliveMs` without an event, so that quiet streams stay open.
 */
export function sse(source, { headers = [], keepAliveMs = 15_000 } = {}) {
  const pairs = [["content-type", "text/event-stream"], ["cache-control", "no-cache"], ...headerPairs(headers)];
  return new Reply(
    200,
    async (out) => {
      const events = {
        signal: out.signal,
        send: (ev) => out.write(formatEvent(ev)),
        comment: (note) => out.write(`${formatComment(note)}\n`),
      };
      let timer = null;
      if (out.streaming && keepAliveMs > 0) {
        timer = setInterval(() => {
          if (Date.now() - out.lastWrite >= keepAliveMs) out.write(": keep-alive\n\n").catch(() => {});
        }, keepAliveMs);
        timer.unref();
      }
      try {
        if (typeof source === "function") await source(events);
        else for await (const ev of source) await events.send(ev);
      } finally {
        clearInterval(timer);
      }
    },
    pairs,
  );
}

function isEventStream(headers) {
  return headers.some(([n, v]) => n === "content-type" && v.toLowerCase().startsWith("text/event-stream"));
}

/** A handler's return value as a Reply. */
function toReply(value) {
  if (value instanceof Reply) return value;
  if (value === undefined || value === null) return new Reply(204);
  if (isString(value)) return text(200, value);
  if (ArrayBuffer.isView(value) || value instanceof ArrayBuffer) return stream(toBuffer(value));
  if (typeof value[Symbol.asyncIterator] === "function") return stream(value);
  return json(200, value);
}

// ---------------------------------------------------------------------------------------------
// Routes

function splitPath(path) {
  return path.split("/").slice(1);
}

function decodeSegment(s) {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

/** Patterns: `/`, `/count`, `/items/:id` (one non-empty segment), `/files/*` (the rest). */
class Router {
  #routes = [];

  add(method, pattern, handler, kind) {
    if (!isString(pattern) || !pattern.startsWith("/")) {
      throw new TypeError(`route pattern ${JSON.stringify(pattern)} must start with "/"`);
    }
    if (typeof handler !== "function") throw new TypeError(`the handler of ${method} ${pattern} is not a function`);
    const segments = splitPath(pattern);
    if (segments.slice(0, -1).includes("*")) throw new TypeError(`"*" may only end a pattern (${pattern})`);
    this.#routes.push({ method, segments, handler, kind });
  }

  /** `{route, params}`, `{allowed}` when only the method differs, or null. */
  match(method, subpath) {
    const segments = splitPath(subpath);
    const allowed = new Set();
    let fallback = null;
    for (const route of this.#routes) {
      const params = matchSegments(route.segments, segments);
      if (params === null) continue;
      if (route.method === method) return { route, params };
      if (method === "HEAD" && route.method === "GET" && !fallback) fallback = { route, params };
      allowed.add(route.method);
    }
    if (fallback) return fallback;
    return allowed.size ? { allowed: [...allowed] } : null;
  }
}

function matchSegments(pattern, segments) {
  const params = {};
  for (let i = 0; i < pattern.length; i++) {
    const p = pattern[i];
    if (p === "*") {
      params["*"] = segments.slice(i).map(decodeSegment).join("/");
      return params;
    }
    if (i >= segments.length) return null;
    if (p.startsWith(":")) {
      if (segments[i] === "") return null;
      params[p.slice(1)] = decodeSegment(segments[i]);
    } else if (p !== decodeSegment(segments[i])) {
      return null;
    }
  }
  return segments.length === pattern.length ? params : null;
}

// ---------------------------------------------------------------------------------------------
// Metadata and settings

/** Why a setting's value does not fit its declaration, or null. Never quotes a secret. */
function settingProblem(spec, value) {
  if (value === undefined || value === null) return spec.required ? "a value is required" : null;
  switch (spec.type) {
    case "string":
    case "secret":
      if (!isString(value)) return "expected text";
      if (Buffer.byteLength(value) > MAX_TEXT_SETTING) return `at most ${MAX_TEXT_SETTING} bytes of text are accepted`;
      return spec.required && !value.trim() ? "a value is required" : null;
    case "number":
      return typeof value === "number" && Number.isFinite(value) ? null : "expected a number";
    case "boolean":
      return typeof value === "boolean" ? null : "expected true or false";
    case "choice":
      if (!isString(value)) return "expected one of the choices";
      return spec.choices.includes(value) ? null : `${JSON.stringify(value)} is not one of ${spec.choices.join(", ")}`;
    default:
      return `unknown type ${spec.type}`;
  }
}

/** Why a metadata object breaks the rules of section 2, or null. */
function metadataProblem(m) {
  if (!isString(m.id) || !SLUG.test(m.id)) {
    return `plugin id ${JSON.stringify(m.id)} is not valid: use 1 to 63 characters of a-z, 0-9 and '-', starting with a letter or digit`;
  }
  if (!isString(m.route) || !m.route.startsWith("/") || !SLUG.test(m.route.slice(1))) {
    return `route ${JSON.stringify(m.route)} is not valid: use '/' and one segment of a-z, 0-9 and '-' (for example "/acme")`;
  }
  for (const [field, max] of [["name", 100], ["version", 64], ["author", 200], ["description", 2000], ["icon", 64]]) {
    if (!isString(m[field])) return `metadata field "${field}" must be a string`;
    const len = Buffer.byteLength(m[field]);
    if (len > max) return `metadata field "${field}" is ${len} bytes long; the limit is ${max}`;
  }
  if (!m.name.trim()) return 'metadata field "name" is empty';
  if (!m.version.trim()) return 'metadata field "version" is empty';
  if (m.settings.length > MAX_SETTINGS) return `the plugin declares ${m.settings.length} settings; the limit is ${MAX_SETTINGS}`;
  const seen = new Set();
  for (const s of m.settings) {
    const bad = (why) => `setting ${JSON.stringify(s?.name)} is declared wrongly: ${why}`;
    if (!isObject(s) || !isString(s.name) || !SETTING_NAME.test(s.name)) {
      return bad("use 1 to 64 characters of a-z, 0-9 and '_', starting with a letter");
    }
    if (seen.has(s.name)) return bad("the name is declared twice");
    seen.add(s.name);
    if (!SETTING_TYPES.has(s.type)) return bad("type must be string, number, boolean, choice or secret");
    if (s.type === "choice" && !(Array.isArray(s.choices) && s.choices.length && s.choices.every(isString))) {
      return bad("a choice needs at least one of `choices`");
    }
    if (s.type !== "choice" && s.choices !== undefined) return bad("only a choice has `choices`");
    if (Buffer.byteLength(s.label ?? "") > 200 || Buffer.byteLength(s.help ?? "") > 2000) {
      return bad("the label is limited to 200 bytes and the help to 2000");
    }
    if (s.default !== undefined && s.type === "secret") return bad("a secret cannot have a default");
    if (s.default !== undefined) {
      const why = settingProblem({ ...s, required: false }, s.default);
      if (why) return bad(`its default does not fit: ${why}`);
    }
  }
  return null;
}

// ---------------------------------------------------------------------------------------------
// The plugin

/**
 * A Toru plugin: metadata, routes, hooks; `run()` serves it.
 *
 * `metadata`: `{id, name, version, route?, author?, description?, icon?, settings?,
 * licenseRequired?, bundle?}`; `route` defaults to `/` + id, `bundle` is the frontend script (its
 * presence sets `frontend`). `options`: see `DEFAULTS`.
 */
export class Plugin {
  #meta;
  #bundle;
  #router = new Router();
  #options;
  #initHook = null;
  #settingsHook = null;
  #shutdownHook = null;
  #conn = null;
  #settings = {};
  #instanceId = null;
  #kv;
  #log;

  constructor(metadata, options = {}) {
    if (!isObject(metadata)) throw new TypeError("new Plugin(metadata): metadata must be an object");
    this.#options = { ...DEFAULTS, ...options };
    this.#bundle = metadata.bundle ?? null;
    if (this.#bundle !== null && !isString(this.#bundle)) throw new TypeError("metadata.bundle must be a string");
    this.#meta = {
      id: metadata.id,
      name: metadata.name,
      version: metadata.version,
      author: metadata.author ?? "",
      description: metadata.description ?? "",
      icon: metadata.icon ?? "",
      route: metadata.route ?? `/${metadata.id}`,
      licenseRequired: Boolean(metadata.licenseRequired ?? metadata.license_required),
      settings: metadata.settings ?? [],
      liveSettings: metadata.liveSettings ?? metadata.live_settings,
    };
    if (!Array.isArray(this.#meta.settings)) throw new TypeError("metadata.settings must be an array");
    this.#kv = new Kv(this);
    this.#log = new Log(this);
    const self = this;
    this[INTERNAL] = {
      get meta() {
        return self.#meta;
      },
      get bundle() {
        return self.#bundle;
      },
      get router() {
        return self.#router;
      },
      get conn() {
        return self.#conn;
      },
      get initHook() {
        return self.#initHook;
      },
      get settingsHook() {
        return self.#settingsHook;
      },
      get shutdownHook() {
        return self.#shutdownHook;
      },
      setInstanceId(v) {
        self.#instanceId = v;
      },
      setSettings(values) {
        self.#settings = values;
      },
      /** Values for every declared setting (defaults filled in) plus undeclared ones; problems. */
      checkSettings(incoming, previous) {
        const values = { ...incoming };
        const problems = [];
        for (const spec of self.#meta.settings) {
          let value = incoming[spec.name];
          if (value === undefined || value === null) value = spec.default;
          const why = settingProblem(spec, value);
          if (why) {
            problems.push(`setting ${JSON.stringify(spec.name)}: ${why}`);
            if (previous && spec.name in previous) values[spec.name] = previous[spec.name];
            else delete values[spec.name];
          } else if (value === undefined || value === null) {
            delete values[spec.name];
          } else {
            values[spec.name] = value;
          }
        }
        return { values: Object.freeze(values), problems };
      },
    };
  }

  /** The plugin's id. */
  get id() {
    return this.#meta.id;
  }

  /** The route requests arrive under (`/hello-node`). */
  get route() {
    return this.#meta.route;
  }

  /** The plugin's key-value store on the host (see `Kv`). */
  get kv() {
    return this.#kv;
  }

  /** Logging to the host's log for this plugin (see `Log`). */
  get log() {
    return this.#log;
  }

  /** The current settings by name (declared defaults filled in); replaced when they change. */
  get settings() {
    return this.#settings;
  }

  /** The host installation's id (from `init`); null before it. */
  get instanceId() {
    return this.#instanceId;
  }

  /** The protocol version agreed with the host (1 or 2); null before `ready`. */
  get protocolVersion() {
    return this.#conn?.version ?? null;
  }

  /** Routes `method` requests for `pattern` (relative to the plugin's route) to `handler(req)`. */
  handle(method, pattern, handler) {
    const m = String(method).toUpperCase();
    if (!METHODS.includes(m)) throw new TypeError(`unknown HTTP method ${JSON.stringify(method)}`);
    this.#router.add(m, pattern, handler, "http");
    return this;
  }

  get(pattern, handler) {
    return this.handle("GET", pattern, handler);
  }

  post(pattern, handler) {
    return this.handle("POST", pattern, handler);
  }

  put(pattern, handler) {
    return this.handle("PUT", pattern, handler);
  }

  patch(pattern, handler) {
    return this.handle("PATCH", pattern, handler);
  }

  delete(pattern, handler) {
    return this.handle("DELETE", pattern, handler);
  }

  options(pattern, handler) {
    return this.handle("OPTIONS", pattern, handler);
  }

  /** A WebSocket at `pattern`: `handler(ws, req)` (see `WebSocket`). Needs protocol 2. */
  ws(pattern, handler) {
    this.#router.add("GET", pattern, handler, "ws");
    return this;
  }

  /** `fn({settings, instanceId})` runs before `ready`; throwing refuses to start (exit 78). */
  onInit(fn) {
    this.#initHook = fn;
    return this;
  }

  /** `fn(settings, previous)` runs when an operator changes the settings; sets `live_settings`. */
  onSettings(fn) {
    this.#settingsHook = fn;
    return this;
  }

  /** `fn()` runs on `shutdown`, alongside the requests still in flight (within the grace). */
  onShutdown(fn) {
    this.#shutdownHook = fn;
    return this;
  }

  /** The metadata object `--metadata` prints. */
  metadata() {
    const m = this.#meta;
    const out = {
      id: m.id,
      name: m.name,
      version: m.version,
      author: m.author,
      description: m.description,
      icon: m.icon,
      route: m.route,
      protocol: { ...PROTOCOL },
      frontend: this.#bundle !== null,
      license_required: m.licenseRequired,
    };
    if (m.settings.length) out.settings = m.settings;
    out.live_settings = Boolean(m.liveSettings ?? this.#settingsHook !== null);
    return out;
  }

  /**
   * Runs the plugin as a Toru host expects, then exits the process: `--metadata` prints the
   * metadata; with TORU_SOCKET_PATH set it listens there and serves the host's one connection;
   * otherwise (started by hand) one sentence on stderr and exit code 2.
   */
  run() {
    const args = process.argv.slice(2);
    const id = String(this.#meta.id);
    const socketPath = process.env[ENV_SOCKET_PATH];
    if (args.length === 1 && args[0] === "--metadata") {
      const problem = metadataProblem(this.#meta);
      if (problem) {
        stderrLine("error", `${id}: the plugin's metadata is not valid: ${problem}`);
        return exit(1);
      }
      process.stdout.write(`${JSON.stringify(this.metadata())}\n`, () => exit(0));
      return;
    }
    if (args.length > 0 || !socketPath) {
      process.stderr.write(
        `${id} is a Toru plugin: a Toru host starts it with ${ENV_SOCKET_PATH} set to the socket it ` +
          "should listen on, and running it with --metadata prints its metadata.\n",
      );
      return exit(EXIT_USAGE);
    }
    const problem = metadataProblem(this.#meta);
    if (problem) {
      stderrLine("error", `${id}: the plugin's metadata is not valid: ${problem}`);
      return exit(1);
    }
    const hostId = process.env[ENV_PLUGIN_ID];
    if (hostId && hostId !== id) stderrLine("warn", `the host calls this plugin ${JSON.stringify(hostId)}; its id is ${JSON.stringify(id)}`);
    process.on("uncaughtException", (e) => {
      stderrLine("error", `${id} crashed: ${e?.stack ?? e}`);
      exit(1);
    });
    process.on("unhandledRejection", (e) => this.#log.error("a promise was rejected and nobody handled it", e));
    acceptOne(socketPath).then(
      (socket) => this.serve(socket).then(exit),
      (e) => {
        stderrLine("error", `${id}: cannot listen on ${socketPath}: ${e.message}`);
        exit(1);
      },
    );
  }

  /**
   * Serves one connected host socket (`run()` does this after accepting it). Resolves to the exit
   * code: 0 after `shutdown` or when the host hangs up, 78 when it refused to start, 1 when the
   * connection broke.
   */
  serve(socket) {
    const problem = metadataProblem(this.#meta);
    if (problem) throw new TypeError(`the plugin's metadata is not valid: ${problem}`);
    if (this.#conn) throw new Error("a plugin serves one connection");
    this.#conn = new Connection(this, socket, this.#options);
    return this.#conn.finished;
  }

}

function exit(code) {
  process.exit(code);
}

/** A log line on stderr: the host reads a leading level word (`ERROR ...`) as the line's level. */
function stderrLine(level, message) {
  const word = level.toUpperCase();
  const lines = String(message).split(/\r\n|\r|\n/);
  process.stderr.write(`${lines.map((l) => `${word} ${l}`).join("\n")}\n`);
}

/** Listens at `path` (replacing a stale file), accepts one connection, stops listening. */
function acceptOne(path) {
  return new Promise((resolve, reject) => {
    try {
      fs.rmSync(path, { force: true });
    } catch (e) {
      reject(e);
      return;
    }
    const server = net.createServer({ pauseOnConnect: true });
    server.once("error", reject);
    server.once("connection", (socket) => {
      server.on("connection", (other) => other.destroy()); // one host, one connection
      server.close();
      fs.rm(path, { force: true }, () => {});
      resolve(socket);
    });
    server.listen({ path, backlog: 1 });
  });
}

// ---------------------------------------------------------------------------------------------
// KV and logging

/** The plugin's key-value store on the host: string keys and values (section 5, `kv`). */
class Kv {
  #plugin;
  #locks = new Map();

  constructor(plugin) {
    this.#plugin = plugin;
  }

  #call(payload) {
    const conn = this.#plugin[INTERNAL].conn;
    if (!conn) return Promise.reject(new KvError("internal", "the plugin is not connected to a host yet"));
    return conn.kv(payload);
  }

  static #key(key) {
    if (!isString(key)) throw new TypeError(`a KV key is a string, not ${describe(key)}`);
    return key;
  }

  /** The value of `key`, or null when it is not set. */
  async get(key) {
    const r = await this.#call({ op: "get", key: Kv.#key(key) });
    return r.value ?? null;
  }

  /** Sets `key` to `value` (a string); resolves once the write is durable. */
  async set(key, value) {
    if (!isString(value)) throw new TypeError(`a KV value is a string, not ${describe(value)}`);
    await this.#call({ op: "set", key: Kv.#key(key), value });
  }

  /** Deletes `key`; resolves to whether it was set. */
  async delete(key) {
    const r = await this.#call({ op: "delete", key: Kv.#key(key) });
    return r.existed ?? false;
  }

  /** One page of keys starting with `prefix`, after `after`, at most `limit` (host cap 1000). */
  async list(prefix = "", { after, limit } = {}) {
    const payload = { op: "list", prefix: String(prefix) };
    if (after !== undefined) payload.after = Kv.#key(after);
    if (limit !== undefined) payload.limit = Math.max(0, Math.floor(limit));
    const r = await this.#call(payload);
    return r.keys ?? [];
  }

  /** Every key starting with `prefix`, a page at a time. */
  async *keys(prefix = "") {
    let after;
    for (;;) {
      const page = await this.list(prefix, after === undefined ? {} : { after });
      yield* page;
      if (page.length === 0) return;
      after = page[page.length - 1];
    }
  }

  /**
   * Reads `key`, calls `fn(value)` (null when unset) and stores what it returns (a string; null
   * deletes; undefined leaves it). Updates of one key run one after the other in this process,
   * so concurrent requests never lose a count. Resolves to the new value.
   */
  update(key, fn) {
    Kv.#key(key);
    const previous = this.#locks.get(key) ?? Promise.resolve();
    const run = previous.then(async () => {
      const value = await this.get(key);
      const next = await fn(value);
      if (next === undefined) return value;
      if (next === null) {
        await this.delete(key);
        return null;
      }
      await this.set(key, next);
      return next;
    });
    const settled = run.then(
      () => {},
      () => {},
    );
    this.#locks.set(key, settled);
    settled.then(() => {
      if (this.#locks.get(key) === settled) this.#locks.delete(key);
    });
    return run;
  }
}

/** Log lines for the host's log of this plugin: over the socket once connected, else stderr. */
class Log {
  #plugin;

  constructor(plugin) {
    this.#plugin = plugin;
  }

  /** Logs `message` at `level` (trace, debug, info, warn, error), with an optional error. */
  write(level, message, error) {
    const lvl = LEVELS.includes(level) ? level : "info";
    const text = truncate(message, MAX_LOG_BYTES);
    const err = error === undefined || error === null ? undefined : truncate(error.stack ?? error.message ?? error, MAX_LOG_BYTES);
    const conn = this.#plugin[INTERNAL].conn;
    if (conn?.canLog) {
      const payload = { level: lvl, message: text };
      if (err !== undefined) payload.error = err;
      if (conn.send("log", null, payload)) return;
    }
    stderrLine(lvl, err === undefined ? text : `${text}: ${err}`);
  }

  trace(message, error) {
    this.write("trace", message, error);
  }

  debug(message, error) {
    this.write("debug", message, error);
  }

  info(message, error) {
    this.write("info", message, error);
  }

  warn(message, error) {
    this.write("warn", message, error);
  }

  error(message, error) {
    this.write("error", message, error);
  }
}

// ---------------------------------------------------------------------------------------------
// Requests

/** An HTTP request for one of the plugin's routes, given to handlers. */
export class Request {
  #ex;
  #bodyUsed = false;

  constructor(ex, p, subpath, params, protocol) {
    this.#ex = ex;
    /** The host's id for this request (and its stream). */
    this.id = ex.id;
    /** `GET`, `POST`, ... */
    this.method = p.method;
    /** The full path (`/hello-node/count`), percent-encoding as the client sent it. */
    this.path = p.path;
    /** The path below the plugin's route (`/count`; `/` for the route itself). */
    this.subpath = subpath;
    /** The raw query string without `?` (`""` when none). */
    this.query = p.query ?? "";
    /** `[name, value]` pairs in order, names in lower case. */
    this.headers = p.headers ?? [];
    /** Values of the route pattern's `:name` and `*` parts. */
    this.params = params;
    /** `"websocket"` when the client asks for a WebSocket, else null. */
    this.upgrade = p.upgrade ?? null;
    /** Aborts when the host cancels the request (the client went away, or it timed out). */
    this.signal = ex.signal;
    /** The protocol version of the connection (1 or 2). */
    this.protocol = protocol;
  }

  /** The first value of header `name` (any case), or null. */
  header(name) {
    const n = String(name).toLowerCase();
    return this.headers.find(([k]) => k === n)?.[1] ?? null;
  }

  /** The query string parsed. */
  get searchParams() {
    return new URLSearchParams(this.query);
  }

  /**
   * The body as an async iterable of Buffers, read as the client sends it (version 2) or whole
   * (version 1). Credit goes back to the host as chunks are taken, so a slow reader slows the
   * uploader. It can be read once.
   */
  get body() {
    if (this.#bodyUsed) throw new Error("the request body has already been read");
    this.#bodyUsed = true;
    const ex = this.#ex;
    return {
      async *[Symbol.asyncIterator]() {
        for (;;) {
          const chunk = await ex.readChunk();
          if (chunk === null) return;
          yield chunk;
        }
      },
    };
  }

  /** The whole body as one Buffer; over `limit` bytes, an HttpError 413. */
  async readAll(limit = this.#ex.conn.options.maxBodyBytes) {
    const chunks = [];
    let size = 0;
    for await (const chunk of this.body) {
      size += chunk.length;
      if (size > limit) throw new HttpError(413, `the request body is over ${limit} bytes`);
      chunks.push(chunk);
    }
    return chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, size);
  }

  /** The whole body as UTF-8 text; HttpError 400 when it is not UTF-8. */
  async text(limit) {
    const text = decodeUtf8(await this.readAll(limit));
    if (text === null) throw new HttpError(400, "the request body is not UTF-8 text");
    return text;
  }

  /** The whole body parsed as JSON; HttpError 400 when it is not. */
  async json(limit) {
    const body = await this.text(limit);
    try {
      return JSON.parse(body);
    } catch (e) {
      throw new HttpError(400, `the request body is not JSON: ${e.message}`);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// One request's stream (version 2), or its plain exchange (version 1)

class Exchange {
  conn;
  id;
  #controller = new AbortController();
  // Host -> plugin: the body, or WebSocket messages.
  #chunks = [];
  #ended = false; // the body's END arrived
  #inboundOpen = true; // data for this stream is still wanted
  #readWaiter = null;
  #recvWindow = WINDOW; // what the host may still send
  #uncredited = 0; // consumed but not yet credited
  // Plugin -> host.
  #sendWindow = WINDOW;
  #creditWaiter = null;
  #tail = Promise.resolve();
  headSent = false;
  finished = false; // ended for good: response complete, cancelled, aborted
  endless = false; // an open WebSocket or event stream: shutdown ends it at once
  ws = null;
  done = null;

  constructor(conn, id) {
    this.conn = conn;
    this.id = id;
  }

  get signal() {
    return this.#controller.signal;
  }

  get cancelled() {
    return this.#controller.signal.aborted;
  }

  /** A whole body (version 1, or a version 2 request that carried one). */
  setWholeBody(buf) {
    if (buf.length) this.#chunks.push(buf);
    this.#ended = true;
  }

  /** The body has no more data (none was announced). */
  setNoBody() {
    this.#ended = true;
  }

  onData(flags, data) {
    if (this.finished || !this.#inboundOpen) return;
    if (data.length > this.#recvWindow) {
      const why = `the host sent ${data.length} bytes on stream ${this.id} with ${this.#recvWindow} left in its window`;
      this.conn.plugin.log.error(`aborted a stream: ${why}`);
      this.conn.abortStream(this, "bad_request", why);
      return;
    }
    this.#recvWindow -= data.length;
    if (this.ws) {
      this.ws.onData(flags, data);
      return;
    }
    if (this.#ended) return;
    if (data.length) this.#chunks.push(data);
    if (flags & FLAGS.END) this.#ended = true;
    this.#wakeReader();
  }

  #wakeReader() {
    const w = this.#readWaiter;
    this.#readWaiter = null;
    w?.();
  }

  /** The next body chunk, or null at its end. Throws an AbortError once cancelled. */
  async readChunk() {
    for (;;) {
      if (this.cancelled) throw abortError("the request was cancelled");
      if (this.#chunks.length) {
        const chunk = this.#chunks.shift();
        this.consumed(chunk.length);
        return chunk;
      }
      if (this.#ended || !this.#inboundOpen) return null;
      await new Promise((resolve) => {
        this.#readWaiter = resolve;
      });
    }
  }

  /** `n` bytes were handed on: give them back to the host in batches. */
  consumed(n) {
    if (n === 0 || this.finished || !this.#inboundOpen || this.conn.version < 2) return;
    this.#uncredited += n;
    if (this.#uncredited >= CREDIT_BATCH) {
      this.conn.send("credit", this.id, { bytes: this.#uncredited });
      this.#recvWindow += this.#uncredited;
      this.#uncredited = 0;
    }
  }

  /** No more data is wanted for this stream (the response has ended). */
  closeInbound() {
    this.#inboundOpen = false;
    this.#chunks = [];
    this.#wakeReader();
  }

  onCredit(bytes) {
    if (this.finished) return;
    this.#sendWindow = Math.min(this.#sendWindow + bytes, Number.MAX_SAFE_INTEGER);
    const w = this.#creditWaiter;
    this.#creditWaiter = null;
    w?.resolve();
  }

  /** The host cancelled the request, or the connection ended: stop, send nothing more. */
  cancel(why) {
    if (this.finished && this.cancelled) return;
    this.finished = true;
    this.#controller.abort(abortError(why));
    this.closeInbound();
    this.#creditWaiter?.reject(abortError(why));
    this.#creditWaiter = null;
    this.ws?.onCancel(why);
  }

  /** Ends the stream from this side: nothing more is sent or read. */
  finish() {
    this.finished = true;
    this.closeInbound();
    this.#creditWaiter?.reject(abortError("the stream has ended"));
    this.#creditWaiter = null;
  }

  /**
   * Writes `buf` as data frames: split to the window and 64 KiB, waiting for credit and for the
   * socket to drain. `mode.end` sets END on the last frame; `mode.ws` marks a WebSocket message
   * (TEXT when `mode.text`, MORE on all but the last frame). Writes run one after the other.
   */
  write(buf, mode) {
    const run = this.#tail.then(() => this.#writeNow(buf, mode));
    this.#tail = run.catch(() => {});
    return run;
  }

  /** Resolves when every write queued so far has been sent (or failed). */
  flushed() {
    return this.#tail;
  }

  async #writeNow(buf, { end = false, ws = false, text = false } = {}) {
    let offset = 0;
    do {
      await this.conn.writable();
      if (this.finished) throw abortError(this.cancelled ? "the request was cancelled" : "the stream has ended");
      const left = buf.length - offset;
      if (left > 0 && this.#sendWindow === 0) {
        await new Promise((resolve, reject) => {
          this.#creditWaiter = { resolve, reject };
        });
        continue;
      }
      const n = Math.min(left, this.#sendWindow, MAX_DATA);
      const last = offset + n === buf.length;
      let flags = text ? FLAGS.TEXT : 0;
      if (last && end) flags |= FLAGS.END;
      if (!last && ws) flags |= FLAGS.MORE;
      this.conn.sendData(this.id, flags, buf.subarray(offset, offset + n));
      this.#sendWindow -= n;
      offset += n;
    } while (offset < buf.length);
  }
}

// ---------------------------------------------------------------------------------------------
// WebSockets (version 2)

const CLOSE_CODES_ALLOWED = (c) => (c >= 1000 && c <= 1003) || (c >= 1007 && c <= 1014) || (c >= 3000 && c <= 4999);

/**
 * One WebSocket, given to a `plugin.ws(pattern, handler)` handler as `ws`. Receive with
 * `for await (const message of ws)` (a string for text, a Buffer for binary) or
 * `await ws.receive()` (null once closed); send with `await ws.send(message)`, which waits for
 * the host's credit; close with `ws.close(code, reason)`. It is accepted at the first send,
 * receive or close, or explicitly with `await ws.accept({protocol})`; a handler that returns a
 * reply (or throws an HttpError) before that refuses it with that response.
 */
export class WebSocket {
  #ex;
  #conn;
  #req;
  #queue = []; // complete messages: {message, uncredited}
  #parts = [];
  #partBytes = 0;
  #partUncredited = 0;
  #partText = false;
  #waiter = null;
  #closedResolve;
  accepted = false;
  /** True once either side has closed, or the host cancelled the stream. */
  isClosed = false;
  /** The close code and reason, once closed (1006 when the connection was lost). */
  closeCode = null;
  closeReason = null;
  /** Resolves to `{code, reason}` when the WebSocket has closed. */
  closed;

  constructor(ex, conn, req) {
    this.#ex = ex;
    this.#conn = conn;
    this.#req = req;
    this.closed = new Promise((resolve) => {
      this.#closedResolve = resolve;
    });
  }

  /** The subprotocols the client offered (`sec-websocket-protocol`). */
  get protocols() {
    const h = this.#req.header("sec-websocket-protocol");
    return h ? h.split(",").map((s) => s.trim()).filter(Boolean) : [];
  }

  /** Aborts when the host cancels the stream (the client's connection dropped). */
  get signal() {
    return this.#ex.signal;
  }

  /** Accepts the WebSocket (status 101), optionally choosing one of the client's subprotocols. */
  async accept({ protocol, headers } = {}) {
    if (this.accepted) return;
    if (this.#ex.finished) throw abortError("the WebSocket request was cancelled");
    const pairs = headerPairs(headers);
    if (protocol !== undefined) {
      if (!this.protocols.includes(protocol)) throw new Error(`the client did not offer subprotocol ${JSON.stringify(protocol)}`);
      pairs.push(["sec-websocket-protocol", protocol]);
    }
    this.accepted = true;
    this.#ex.headSent = true;
    this.#ex.endless = true;
    this.#conn.send("http_response", this.#ex.id, { status: 101, headers: pairs, end_stream: false });
    if (this.#conn.shuttingDown) this.goAway(); // accepted after shutdown began
  }

  /** Sends a message: a string as text, bytes as binary. Waits for credit. */
  async send(message) {
    await this.accept();
    if (this.isClosed) throw abortError(`the WebSocket is closed (${this.closeCode})`);
    const textual = isString(message);
    const buf = toBuffer(message);
    const max = this.#conn.options.wsMaxMessageBytes;
    if (buf.length > max) throw new RangeError(`a WebSocket message of ${buf.length} bytes is over the ${max}-byte limit`);
    await this.#ex.write(buf, { ws: true, text: textual });
  }

  /** Closes the WebSocket with `code` (1000, 1001-1003, 1007-1014, 3000-4999) and `reason`. */
  async close(code = 1000, reason = "") {
    if (!CLOSE_CODES_ALLOWED(code)) throw new RangeError(`${code} is not a close code a WebSocket endpoint may send`);
    if (this.isClosed) return;
    await this.accept();
    if (this.isClosed) return;
    await this.#ex.flushed(); // after the messages already queued
    if (this.isClosed || this.#ex.finished) return;
    this.#conn.send("ws_close", this.#ex.id, { code, reason: truncate(reason, 123) });
    this.#setClosed(code, String(reason));
    this.#ex.finish();
  }

  /** The next message (a string or a Buffer), or null once the WebSocket is closed. */
  async receive() {
    await this.accept();
    for (;;) {
      if (this.#queue.length) {
        const { message, uncredited } = this.#queue.shift();
        this.#ex.consumed(uncredited);
        if (this.#queue.length === 0 && this.#partUncredited) {
          this.#ex.consumed(this.#partUncredited);
          this.#partUncredited = 0;
        }
        return message;
      }
      if (this.isClosed) return null;
      await new Promise((resolve) => {
        this.#waiter = resolve;
      });
    }
  }

  async *[Symbol.asyncIterator]() {
    for (;;) {
      const message = await this.receive();
      if (message === null) return;
      yield message;
    }
  }

  #wake() {
    const w = this.#waiter;
    this.#waiter = null;
    w?.();
  }

  #setClosed(code, reason) {
    if (this.isClosed) return;
    this.isClosed = true;
    this.closeCode = code;
    this.closeReason = reason;
    this.#closedResolve({ code, reason });
    this.#wake();
  }

  /** A data frame from the client. Fragments of a message are credited as they arrive while no
   * whole message waits, so a message larger than the window can complete; the memory held is
   * at most one message plus one window. */
  onData(flags, data) {
    if (this.isClosed) return;
    if (this.#parts.length === 0) this.#partText = Boolean(flags & FLAGS.TEXT);
    this.#parts.push(data);
    this.#partBytes += data.length;
    const max = this.#conn.options.wsMaxMessageBytes;
    if (this.#partBytes > max) {
      this.#parts = [];
      this.#closeFromHere(1009, `a message over ${max} bytes`);
      return;
    }
    if (this.#queue.length === 0) this.#ex.consumed(data.length);
    else this.#partUncredited += data.length;
    if (flags & FLAGS.MORE) return;
    const bytes = this.#parts.length === 1 ? this.#parts[0] : Buffer.concat(this.#parts, this.#partBytes);
    const uncredited = this.#partUncredited;
    this.#parts = [];
    this.#partBytes = 0;
    this.#partUncredited = 0;
    let message = bytes;
    if (this.#partText) {
      message = decodeUtf8(bytes);
      if (message === null) {
        this.#closeFromHere(1007, "a text message that is not UTF-8");
        return;
      }
    }
    this.#queue.push({ message, uncredited });
    this.#wake();
  }

  #closeFromHere(code, reason) {
    this.#conn.send("ws_close", this.#ex.id, { code, reason });
    this.#setClosed(code, reason);
    this.#ex.finish();
  }

  /** The client closed (`ws_close` from the host). Nobody answers it. */
  onClose(code, reason) {
    this.#setClosed(code ?? 1005, reason ?? "");
    this.#ex.finish();
  }

  onCancel(why) {
    this.#setClosed(1006, why);
  }

  /**
   * Shutdown (docs/protocol.md section 7): `ws_close` 1001 at once, without waiting for messages
   * still queued. `receive()` returns the messages that already came, then null; `send()` rejects.
   */
  goAway() {
    if (this.isClosed || this.#ex.finished) return;
    const reason = "the plugin is shutting down";
    this.#ex.finish(); // a message being sent stops before its next frame
    this.#conn.send("ws_close", this.#ex.id, { code: 1001, reason });
    this.#setClosed(1001, reason);
  }
}

// ---------------------------------------------------------------------------------------------
// The connection to the host

class Connection {
  plugin;
  options;
  version = null;
  finished;
  #internals;
  #socket;
  #decoder;
  #phase = "awaiting-init"; // then "initializing", "ready"
  #exchanges = new Map();
  #pending = new Map(); // our kv ids -> {resolve, reject, timer}
  #nextKvId = 1;
  #shuttingDown = false;
  #closed = false;
  #resolveFinished;
  #drained = null;

  constructor(plugin, socket, options) {
    this.plugin = plugin;
    this.options = options;
    this.#internals = plugin[INTERNAL];
    this.#socket = socket;
    this.#decoder = new FrameDecoder(options.maxFrameBytes);
    this.finished = new Promise((resolve) => {
      this.#resolveFinished = resolve;
    });
    socket.on("data", (chunk) => this.#onBytes(chunk));
    socket.on("end", () => {
      if (this.#decoder.buffered > 0) {
        stderrLine("error", `${this.#id}: the host's stream ended inside a frame`);
        this.#finish(1);
      } else {
        this.#finish(0); // the host hung up: nobody can receive replies any more
      }
    });
    socket.on("error", () => this.#finish(0));
    socket.on("close", () => this.#finish(0));
    socket.on("drain", () => this.#wakeWriters());
    socket.resume();
  }

  get #id() {
    return String(this.#internals.meta.id);
  }

  /** Log messages may go over the socket (from `init` on). */
  get canLog() {
    return !this.#closed && this.#phase !== "awaiting-init";
  }

  /** `shutdown` has come: no new requests, and open WebSockets and event streams end. */
  get shuttingDown() {
    return this.#shuttingDown;
  }

  // Writing

  /** Writes one JSON message; false when the connection is gone. Throws RangeError when too big. */
  send(type, id, payload) {
    if (this.#closed || this.#socket.destroyed) return false;
    this.#socket.write(encodeMessage(type, id, payload, this.options.maxFrameBytes));
    return true;
  }

  sendData(streamId, flags, data) {
    if (this.#closed || this.#socket.destroyed) return;
    this.#socket.cork();
    this.#socket.write(dataHeader(streamId, flags, data.length));
    if (data.length) this.#socket.write(data);
    this.#socket.uncork();
  }

  /** Resolves when the socket has room for more data (bounded memory when the host reads slowly). */
  async writable() {
    while (!this.#closed && this.#socket.writableLength > HIGH_WATER) {
      this.#drained ??= new Promise((resolve) => {
        this.#wakeDrained = resolve;
      });
      await this.#drained;
    }
  }

  #wakeDrained = null;

  #wakeWriters() {
    const wake = this.#wakeDrained;
    this.#drained = null;
    this.#wakeDrained = null;
    wake?.();
  }

  /** Answers `bad_request`, and logs it at error level: the host sent something it should not. */
  #badRequest(id, why) {
    this.plugin.log.error(`answered bad_request: ${why}`);
    this.#sendError(id, "bad_request", why);
  }

  #sendError(id, code, message) {
    this.send("error", id, { code, message: truncate(message, MAX_ERROR_BYTES) });
  }

  // Reading

  #onBytes(chunk) {
    if (this.#closed) return;
    this.#decoder.push(chunk);
    try {
      for (let frame = this.#decoder.next(); frame && !this.#closed; frame = this.#decoder.next()) {
        if (frame.data) this.#onDataFrame(frame.body);
        else this.#onJson(frame.body);
      }
    } catch (e) {
      if (!(e instanceof ProtocolBreak)) throw e;
      stderrLine("error", `${this.#id}: ${e.message}`);
      this.#socket.destroy();
      this.#finish(1);
    }
  }

  #onDataFrame(body) {
    if (this.version !== 2) {
      throw new ProtocolBreak("the host sent a data frame on a connection that did not agree on protocol 2; closing the connection");
    }
    if (body.length < 9) {
      this.plugin.log.error(`ignoring a data frame of ${body.length} bytes: a data frame has at least 9`);
      return;
    }
    const stream = body.readBigUInt64BE(0);
    if (stream > BigInt(Number.MAX_SAFE_INTEGER)) return;
    this.#exchanges.get(Number(stream))?.onData(body[8], body.subarray(9));
  }

  #onJson(body) {
    let msg;
    try {
      msg = parseMessage(body);
    } catch (e) {
      if (!(e instanceof BadMessage)) throw e;
      this.#badRequest(e.id, e.message);
      return;
    }
    const { type, id, payload } = msg;
    const problem = payloadProblem(type, payload);
    if (problem) {
      if (REPLY_TYPES.has(type)) this.#failPending(id, new KvError("internal", `the host's ${type} is not valid: ${problem}`));
      else if (id !== null && !NOTICE_TYPES.has(type)) {
        this.#badRequest(id, problem);
      } else this.plugin.log.error(`ignoring a ${type} message that is not valid: ${problem}`);
      return;
    }
    if (this.#phase === "awaiting-init") this.#beforeInit(type, id, payload);
    else this.#dispatch(type, id, payload);
  }

  #beforeInit(type, id, payload) {
    if (type === "init") {
      if (id === null) this.#badRequest(null, "init has no request_id");
      else this.#onInit(id, payload).catch((e) => this.#fatal(e));
    } else if (id !== null && !REPLY_TYPES.has(type) && !NOTICE_TYPES.has(type)) {
      this.#badRequest(id, `expected init first, got ${JSON.stringify(type)}`);
    }
  }

  #dispatch(type, id, p) {
    const ready = this.#phase === "ready";
    switch (type) {
      case "kv_result":
        return this.#settlePending(id, p, null);
      case "error":
        return this.#settlePending(id, null, new KvError(p.code, p.message));
      case "ping":
        return this.send("pong", id, {});
      case "init":
        return this.#badRequest(id, `${this.#id} is already initialised`);
      case "http_request":
      case "get_bundle":
        if (id === null) return this.#badRequest(null, `${type} has no request_id`);
        if (this.#shuttingDown) return this.#sendError(id, "shutting_down", `${this.#id} is shutting down`);
        if (!ready) return this.#badRequest(id, `${this.#id} is not ready yet`);
        return type === "get_bundle" ? this.#onGetBundle(id) : this.#onHttpRequest(id, p);
      case "cancel": {
        // Forgotten at once: the request's slot and id are free for the next one.
        const ex = this.#exchanges.get(id);
        ex?.cancel("cancelled by the host");
        this.#exchanges.delete(id);
        return;
      }
      case "shutdown":
        return this.#beginShutdown();
      case "settings":
        return ready && this.#onSettings(p.settings);
      case "credit":
        return this.#exchanges.get(id)?.onCredit(p.bytes);
      case "ws_close":
        return this.#exchanges.get(id)?.ws?.onClose(p.code, p.reason);
      case "kv":
      case "log":
        if (id !== null) this.#badRequest(id, `${type} is sent by plugins, not by the host`);
        return;
      default:
        if (REPLY_TYPES.has(type)) return; // a reply to nothing we asked: ignored
        if (id !== null) this.#sendError(id, "unknown_type", `${this.#id} does not handle ${JSON.stringify(type)} messages`);
    }
  }

  // Start-up

  async #onInit(id, p) {
    this.#phase = "initializing";
    const offered = p.protocol;
    const low = Math.max(offered.min, PROTOCOL.min);
    const high = Math.min(offered.max, PROTOCOL.max);
    if (low > high) {
      const message = `plugin ${this.#id} speaks protocol ${describeRange(PROTOCOL)}, the host offered ${describeRange(offered)}`;
      stderrLine("error", message);
      this.#sendError(id, "unsupported_protocol_version", message);
      return this.#finish(EXIT_CONFIG);
    }
    this.#internals.setInstanceId(p.instance_id);
    const { values, problems } = this.#internals.checkSettings(p.settings ?? {}, null);
    if (problems.length) return this.#refuse(id, `its settings are not valid: ${problems.join("; ")}`);
    this.#internals.setSettings(values);
    if (this.#internals.initHook) {
      try {
        await this.#internals.initHook({ settings: values, instanceId: p.instance_id, plugin: this.plugin });
      } catch (e) {
        return this.#refuse(id, e?.message ?? String(e));
      }
    }
    if (this.#closed) return;
    this.version = high;
    this.send("ready", id, { protocol_version: high });
    this.#phase = "ready";
    process.stderr.write(`${this.#id} ready (protocol ${high})\n`);
  }

  #refuse(id, reason) {
    stderrLine("error", `${this.#id} refused to start: ${reason}`);
    this.#sendError(id, "init_refused", reason);
    this.#finish(EXIT_CONFIG);
  }

  #onSettings(incoming) {
    const previous = this.plugin.settings;
    const { values, problems } = this.#internals.checkSettings(incoming, previous);
    for (const problem of problems) this.plugin.log.error(`ignoring a changed setting: ${problem}`);
    this.#internals.setSettings(values);
    const hook = this.#internals.settingsHook;
    if (!hook) return;
    Promise.resolve()
      .then(() => hook(values, previous))
      .catch((e) => {
        this.plugin.log.error("the new settings were refused; keeping the previous ones", e);
        if (this.plugin.settings === values) this.#internals.setSettings(previous);
      });
  }

  // KV

  kv(payload) {
    if (this.#closed) return Promise.reject(new KvError("internal", "the connection to the host has closed"));
    if (this.#phase === "awaiting-init") return Promise.reject(new KvError("internal", "KV is available from init on"));
    const id = this.#nextKvId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new KvError("timeout", `the host did not answer within ${this.options.kvTimeoutMs} ms`));
      }, this.options.kvTimeoutMs);
      this.#pending.set(id, { resolve, reject, timer });
      try {
        this.send("kv", id, payload);
      } catch (e) {
        this.#failPending(id, new KvError("kv_too_large", e.message));
      }
    });
  }

  #settlePending(id, result, error) {
    const p = this.#pending.get(id);
    if (!p) return; // an id we do not know (or that timed out): ignored
    this.#pending.delete(id);
    clearTimeout(p.timer);
    if (error) p.reject(error);
    else p.resolve(result);
  }

  #failPending(id, error) {
    this.#settlePending(id, null, error);
  }

  // Requests

  #onGetBundle(id) {
    const script = this.#internals.bundle;
    if (script === null) return this.#sendError(id, "not_found", `plugin ${this.#id} has no frontend bundle`);
    try {
      this.send("bundle", id, { script });
    } catch (e) {
      this.#sendError(id, "internal", e.message);
    }
  }

  #onHttpRequest(id, p) {
    if (this.#exchanges.has(id)) return this.#badRequest(id, `http_request ${id} reuses an id that is in flight`);
    const ex = new Exchange(this, id);
    if (isString(p.body)) ex.setWholeBody(Buffer.from(p.body, "utf8"));
    else if (isString(p.body_base64)) ex.setWholeBody(Buffer.from(p.body_base64, "base64"));
    else if (this.version < 2 || p.end_stream !== false) ex.setNoBody();
    this.#exchanges.set(id, ex);
    if (this.#exchanges.size > this.options.maxInFlight) {
      ex.done = this.#respond(ex, json(503, { error: "too many requests in flight" }), false).finally(() => this.#forget(ex));
      return;
    }
    ex.done = this.#handle(ex, p).finally(() => this.#forget(ex));
  }

  #forget(ex) {
    ex.finish();
    if (this.#exchanges.get(ex.id) === ex) this.#exchanges.delete(ex.id);
  }

  async #handle(ex, p) {
    const route = this.#internals.meta.route;
    const inRoute = p.path === route || p.path.startsWith(`${route}/`);
    const subpath = inRoute ? p.path.slice(route.length) || "/" : null;
    const found = inRoute ? this.#internals.router.match(p.method, subpath) : null;
    const req = new Request(ex, p, subpath ?? p.path, found?.params ?? {}, this.version);
    const head = p.method === "HEAD";
    try {
      if (!found) return await this.#respond(ex, json(404, { error: "not found" }), head);
      if (found.allowed) {
        return await this.#respond(ex, json(405, { error: "method not allowed" }, [["allow", found.allowed.join(", ")]]), head);
      }
      if (found.route.kind === "ws") return await this.#handleWs(ex, req, found.route.handler);
      // A handler that ignores its signal must not hold the request's slot after a cancel.
      const result = await unlessAborted(Promise.resolve(found.route.handler(req)), ex.signal);
      if (ex.cancelled) return;
      await this.#respond(ex, toReply(result), head);
    } catch (e) {
      await this.#failed(ex, req, e);
    }
  }

  async #handleWs(ex, req, handler) {
    if (req.upgrade !== "websocket" || this.version < 2) {
      const why = this.version < 2 ? "WebSockets need protocol 2, and the host speaks 1" : "this path is a WebSocket: connect with Upgrade: websocket";
      return this.#respond(ex, json(426, { error: why }), false);
    }
    const ws = new WebSocket(ex, this, req);
    ex.ws = ws;
    const result = await unlessAborted(Promise.resolve(handler(ws, req)), ex.signal);
    if (ex.cancelled) return;
    if (!ws.accepted && result instanceof Reply) return this.#respond(ex, result, false);
    if (!ws.isClosed) await ws.close(1000, "");
  }

  /** A handler failed: an HttpError or KvError is an HTTP answer; anything else `plugin_error`. */
  async #failed(ex, req, e) {
    if (ex.cancelled || (isAbort(e) && ex.finished)) return;
    const what = `${req.method} ${req.path}`;
    if (e instanceof HttpError && !ex.headSent) {
      if (e.status >= 500) this.plugin.log.error(`${what} failed: ${e.message}`);
      await this.#respond(ex, json(e.status, { error: e.message }, e.headers), false).catch(() => {});
      return;
    }
    if (e instanceof KvError && !ex.headSent) {
      this.plugin.log.error(`${what} failed: ${e.message}`);
      await this.#respond(ex, json(500, { error: e.message }), false).catch(() => {});
      return;
    }
    this.plugin.log.error(`${what} failed`, e);
    this.abortStream(ex, "plugin_error", `${this.#id} failed: ${e?.message ?? e}`);
  }

  /** Sends `error` for the stream: before the head a 502, after it the host aborts the response. */
  abortStream(ex, code, message) {
    if (ex.finished) return; // already ended (cancelled, closed, complete): nothing to abort
    ex.finish();
    this.#sendError(ex.id, code, message);
  }

  /** Sends a reply: whole in version 1; head and data frames in version 2. */
  async #respond(ex, r, headOnly) {
    if (ex.finished) return;
    const { status, body } = r;
    if (this.version < 2) return this.#respondWhole(ex, r, headOnly);
    const isWhole = body === null || isString(body) || ArrayBuffer.isView(body) || body instanceof ArrayBuffer;
    const whole = isWhole ? (body === null ? Buffer.alloc(0) : toBuffer(body)) : null;
    const empty = headOnly || (whole !== null && whole.length === 0);
    await this.writable();
    if (ex.finished) return;
    ex.headSent = true;
    this.send("http_response", ex.id, { status, headers: r.headers, end_stream: empty });
    if (empty) {
      if (!isWhole) cancelSource(body);
      return;
    }
    if (whole !== null) {
      await ex.write(whole, { end: true });
      ex.closeInbound();
      return;
    }
    ex.endless = isEventStream(r.headers);
    if (ex.endless && this.#shuttingDown) {
      cancelSource(body); // began after shutdown: ends at once
      this.#endEventStream(ex);
      return;
    }
    const out = new BodyWriter(ex, true, 0);
    await pump(body, out, ex.signal);
    if (ex.finished) return;
    await ex.write(Buffer.alloc(0), { end: true });
    ex.closeInbound();
  }

  async #respondWhole(ex, r, headOnly) {
    const { status, body } = r;
    let bytes;
    if (body === null || headOnly) {
      bytes = Buffer.alloc(0);
      if (body !== null && !isString(body) && !ArrayBuffer.isView(body)) cancelSource(body);
    } else if (isString(body) || ArrayBuffer.isView(body) || body instanceof ArrayBuffer) {
      bytes = toBuffer(body);
    } else {
      const out = new BodyWriter(ex, false, this.options.maxFrameBytes);
      await pump(body, out, ex.signal);
      bytes = out.collected();
    }
    await this.writable();
    if (ex.finished) return;
    const headers = r.headers.filter(([n]) => n !== "content-length" && n !== "transfer-encoding");
    const payload = { status, headers };
    const text = bytes.length ? decodeUtf8(bytes) : null;
    if (text !== null) payload.body = text;
    else if (bytes.length) payload.body_base64 = bytes.toString("base64");
    try {
      this.send("http_response", ex.id, payload);
    } catch (e) {
      this.plugin.log.error(`the response to ${ex.id} does not fit in a frame`, e);
      this.#sendError(ex.id, "plugin_error", e.message);
    }
    ex.headSent = true;
  }

  // Shutdown and the end

  /**
   * `shutdown` (section 7): new requests are refused; open WebSockets get `ws_close` 1001 and
   * event streams their END at once; other requests have the grace period to finish. Then the
   * connection closes and the process exits 0.
   */
  #beginShutdown() {
    if (this.#shuttingDown) return;
    this.#shuttingDown = true;
    for (const ex of this.#exchanges.values()) {
      if (this.version < 2 || ex.finished || !ex.endless) continue;
      if (ex.ws) ex.ws.goAway();
      else this.#endEventStream(ex);
    }
    const work = [...this.#exchanges.values()].map((ex) => ex.done);
    const hook = this.#internals.shutdownHook;
    if (hook) work.push(Promise.resolve().then(hook).catch((e) => this.plugin.log.error("the shutdown hook failed", e)));
    const grace = delay(this.options.shutdownGraceMs, undefined, { ref: false });
    Promise.race([Promise.allSettled(work), grace]).then(() => this.#finish(0));
  }

  /** Ends an event stream with END, then aborts its signal so that its producer stops. */
  #endEventStream(ex) {
    if (ex.finished) return;
    ex.finish(); // a write in progress stops before its next frame
    this.sendData(ex.id, FLAGS.END, Buffer.alloc(0));
    ex.cancel("the plugin is shutting down");
  }

  #fatal(e) {
    stderrLine("error", `${this.#id}: ${e?.stack ?? e}`);
    this.#finish(1);
  }

  /** Ends the connection: every stream ends, pending KV calls fail, the socket closes. */
  #finish(code) {
    if (this.#closed) return;
    this.#closed = true;
    for (const ex of this.#exchanges.values()) ex.cancel("the connection to the host has closed");
    for (const id of [...this.#pending.keys()]) this.#failPending(id, new KvError("internal", "the connection to the host has closed"));
    this.#wakeWriters();
    const socket = this.#socket;
    const done = () => this.#resolveFinished(code);
    if (socket.destroyed) return done();
    const timer = setTimeout(() => socket.destroy(), 2000);
    timer.unref();
    socket.once("close", () => {
      clearTimeout(timer);
      done();
    });
    socket.end();
  }
}

/** A streamed body's writer: to data frames (version 2), or collected up to `max` (version 1). */
class BodyWriter {
  #ex;
  #parts = [];
  #size = 0;
  #max;
  lastWrite = Date.now();

  constructor(ex, streaming, max) {
    this.#ex = ex;
    this.streaming = streaming;
    this.#max = max;
  }

  get signal() {
    return this.#ex.signal;
  }

  /** Writes a chunk (a string or bytes); resolves when the host's window had room for it. */
  async write(chunk) {
    const buf = toBuffer(chunk);
    this.lastWrite = Date.now();
    if (this.streaming) {
      if (buf.length) await this.#ex.write(buf, {});
      return;
    }
    if (this.#ex.finished) throw abortError("the request was cancelled");
    this.#size += buf.length;
    if (this.#size > this.#max) {
      throw new RangeError(`a streamed response over ${this.#max} bytes cannot be sent whole to a protocol 1 host`);
    }
    this.#parts.push(buf);
  }

  collected() {
    return Buffer.concat(this.#parts, this.#size);
  }
}

/** Feeds `source` (an iterable or a writer function) into `out`; stops at once on abort. */
async function pump(source, out, signal) {
  if (typeof source === "function") {
    await unlessAborted(Promise.resolve().then(() => source(out)), signal);
    return;
  }
  const iterator = source?.[Symbol.asyncIterator]?.() ?? source?.[Symbol.iterator]?.();
  if (!iterator) throw new TypeError(`a response body cannot be ${describe(source)}`);
  let done = false;
  try {
    while (!done) {
      const step = await unlessAborted(Promise.resolve(iterator.next()), signal);
      done = step.done;
      if (!done) await out.write(step.value);
    }
  } finally {
    if (!done) Promise.resolve(iterator.return?.()).catch(() => {});
  }
}

/** A streamed body that will not be read (a HEAD request, or an empty answer). */
function cancelSource(source) {
  if (typeof source === "function") return;
  const iterator = source?.[Symbol.asyncIterator]?.() ?? source?.[Symbol.iterator]?.();
  Promise.resolve(iterator?.return?.()).catch(() => {});
}
