"""toru_plugin: write Toru plugins in Python, with the standard library only (Python 3.9+).

A complete plugin with two routes and a counter in its key-value store::

    #!/usr/bin/env python3
    from toru_plugin import Plugin

    plugin = Plugin("counter", name="Counter")

    @plugin.get("/")
    def hello(req):                      # a plain function runs in a thread: KV calls block
        return {"count": int(plugin.kv.get("count") or 0)}

    @plugin.post("/count")
    async def count(req):                # an async function awaits them
        n = await plugin.kv.update("count", lambda v: int(v or 0) + 1)
        return {"count": n}

    plugin.run()

Copy this file next to the plugin's `.binary` script (Python finds a module in the script's own
folder), or `pip install` it. `plugin.run()` does the rest of docs/protocol.md: `--metadata`,
the socket, `init`/`ready` and the version (1 or 2), many requests at once, `ping`, `cancel`,
`shutdown`, settings, logging, streamed bodies, server-sent events and WebSockets. Handlers may be
`async def` (run on the event loop) or plain functions (run in a thread pool); the KV, body,
response-writer and WebSocket calls are awaitables in the first and blocking calls in the second.

The user guide is sdk/python/README.md and docs/plugin-guide.md in the Toru repository.
"""

import asyncio
import collections
import concurrent.futures
import contextvars
import functools
import inspect
import json
import os
import re
import socket
import struct
import sys
import threading
import time
import traceback
import urllib.parse

__version__ = "0.2.0"
__all__ = [
    "Plugin", "Request", "Response", "ResponseWriter", "WebSocket", "Event", "sse", "format_event",
    "HTTPError", "KvError", "Refuse", "StreamClosed", "WebSocketClosed", "Cancelled",
]

# --- The protocol's numbers (docs/protocol.md) -------------------------------------------------

PROTOCOL_MIN, PROTOCOL_MAX = 1, 2
MAX_FRAME = 16 * 1024 * 1024  # bytes after a frame's 4-byte header (section 3)
DATA_BIT = 0x80000000  # a header with this bit is a data frame (version 2)
LEN_MASK = 0x7FFFFFFF
END, TEXT, MORE = 0x01, 0x02, 0x04  # data frame flags (section 16)
WINDOW = 256 * 1024  # each direction of each stream starts with this much credit
CREDIT_BATCH = WINDOW // 2  # credit is given back once this much has been consumed
CHUNK = 64 * 1024  # the most data this SDK puts in one data frame
EX_CONFIG = 78  # "my configuration is wrong, do not restart me"

# --- This SDK's own bounds ----------------------------------------------------------------------

SHUTDOWN_GRACE = 5.0  # seconds in-flight requests may run on after `shutdown`
KV_TIMEOUT = 30.0  # seconds a KV call waits for the host's answer
DEFAULT_BODY_LIMIT = 10 * 1024 * 1024  # read_all() without a limit
V1_BODY_LIMIT = 12 * 1024 * 1024  # the largest response body a version 1 frame holds (base64)
MAX_IN_FLIGHT = 1024  # requests handled at once; more are answered 503
MAX_WS_MESSAGE = 1024 * 1024  # the largest WebSocket message received (the host's default)
MAX_PENDING_LOGS = 1000  # log messages waiting for the socket; more are counted and dropped
MAX_LOG_BYTES = 64 * 1024  # a longer log message is cut

LEVELS = ("trace", "debug", "info", "warn", "error")
SETTING_TYPES = ("string", "number", "boolean", "choice", "secret")
ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
SETTING_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
REPLY_TYPES = {"ready", "http_response", "bundle", "pong", "kv_result", "error"}
# Never answered, even with a request_id (a stream's, or a fresh one): section 5's notices.
NOTICE_TYPES = {"cancel", "shutdown", "settings", "credit", "ws_close", "log"}
PLUGIN_ONLY = {"kv", "log"}  # requests only a plugin sends
_INIT_FIELDS = ("instance_id", "plugin_id", "socket_path", "log_path")
_current_request = contextvars.ContextVar("toru_current_request", default=None)


# --- Errors -------------------------------------------------------------------------------------

class HTTPError(Exception):
    """Raise from a handler to answer `status` with `{"error": message}`."""

    def __init__(self, status, message=None, headers=None):
        super().__init__(message or str(status))
        self.status = status
        self.message = message if message is not None else _reason(status)
        self.headers = headers

    def response(self):
        return Response.json({"error": self.message}, status=self.status, headers=self.headers)


class BodyTooLarge(HTTPError):
    """The request body is larger than the limit given to `read_all` (answered 413)."""

    def __init__(self, limit):
        super().__init__(413, f"the request body is larger than {limit} bytes")
        self.limit = limit


class KvError(Exception):
    """The host refused a KV request (`kv_too_large`, `kv_quota_exceeded`, ...) or did not answer.

    A handler that lets it escape answers 500 `{"error": "<code>: <message>"}`."""

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Refuse(Exception):
    """Raise from an `on_init` hook to refuse to start: the host gets `init_refused` with the
    reason, and the plugin exits 78 (the host marks it failed and does not restart it)."""


class StreamClosed(Exception):
    """The stream ended (the client went away, the request was cancelled, or it was closed)."""


class WebSocketClosed(StreamClosed):
    """The WebSocket is closed; `code` and `reason` are the close frame's."""

    def __init__(self, code=1006, reason=""):
        super().__init__(f"WebSocket closed ({code}{': ' + reason if reason else ''})")
        self.code = code
        self.reason = reason


class Cancelled(Exception):
    """Raised in a plain (threaded) handler by an SDK call once its request was cancelled."""


class _Fatal(Exception):
    """The connection cannot go on (an oversized frame, or the stream ended inside one)."""


class _BadMessage(Exception):
    def __init__(self, reason, request_id=None):
        super().__init__(reason)
        self.reason = reason
        self.request_id = request_id


# --- Small helpers ------------------------------------------------------------------------------

def _now_ms():
    return int(time.time() * 1000)


def _is_uint(value, bits=64):
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2 ** bits


def _reason(status):
    try:
        from http import HTTPStatus
        return HTTPStatus(status).phrase.lower()
    except ValueError:
        return f"status {status}"


def _stderr(line):
    """Stderr is the plugin's log: the host reads it line by line, with a level prefix."""
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def _in_loop():
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        return False


def _headers(value):
    """Headers as `[[name, value], ...]` from a list of pairs or a dict; TypeError otherwise."""
    if value is None:
        return []
    items = value.items() if isinstance(value, dict) else value
    out = []
    for item in items:
        if not (isinstance(item, (list, tuple)) and len(item) == 2
                and all(isinstance(x, str) for x in item)):
            raise TypeError(f"a header must be a (name, value) pair of strings, not {item!r}")
        out.append([item[0], item[1]])
    return out


def _has_header(headers, name):
    return any(n.lower() == name for n, _ in headers)


def _truncate_utf8(text, limit):
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", "ignore")


def _b64encode(data):
    import base64
    return base64.b64encode(data).decode("ascii")


def _b64decode(text):
    import base64
    import binascii
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("body_base64 is not base64") from None


def _reject_constant(name):
    raise ValueError(f"{name} is not JSON")


# --- Responses ----------------------------------------------------------------------------------

class Response:
    """An HTTP response. `body` may be:

    - `bytes`, or `str` (sent as UTF-8; `text/plain` unless `content_type` says otherwise),
    - a `dict` or `list` (sent as JSON, `application/json`),
    - `None` (an empty body),
    - an async iterable (an async generator, say) or a plain iterable of `bytes`/`str` chunks:
      the body is streamed, each chunk sent as it comes, waiting for the host's credit (with a
      version 1 host the chunks are collected and sent whole).
    """

    def __init__(self, body=None, status=200, headers=None, content_type=None):
        if not (isinstance(status, int) and not isinstance(status, bool) and 100 <= status <= 999):
            raise ValueError(f"status {status!r} is not an HTTP status (100 to 999)")
        self.status = status
        self.headers = _headers(headers)
        if isinstance(body, (dict, list)):
            body = json.dumps(body, ensure_ascii=False).encode("utf-8")
            content_type = content_type or "application/json"
        elif isinstance(body, str):
            body = body.encode("utf-8")
            content_type = content_type or "text/plain; charset=utf-8"
        elif isinstance(body, (bytearray, memoryview)):
            body = bytes(body)
        elif body is not None and not isinstance(body, bytes):
            if not (hasattr(body, "__aiter__") or hasattr(body, "__iter__")):
                raise TypeError(f"a response body cannot be {type(body).__name__}")
        if isinstance(body, bytes) and body:
            content_type = content_type or "application/octet-stream"
        if body is not None and not isinstance(body, bytes):
            content_type = content_type or "application/octet-stream"
        if content_type and not _has_header(self.headers, "content-type"):
            self.headers.insert(0, ["content-type", content_type])
        self.body = body

    @property
    def streamed(self):
        return self.body is not None and not isinstance(self.body, bytes)

    @classmethod
    def json(cls, value, status=200, headers=None):
        return cls(json.dumps(value, ensure_ascii=False).encode("utf-8"), status, headers,
                   "application/json")

    @classmethod
    def text(cls, text, status=200, headers=None):
        return cls(str(text), status, headers)


def _to_response(value):
    """What a handler returned, as a Response; TypeError for anything else."""
    if isinstance(value, Response):
        return value
    if value is None:
        return Response(None, 204)
    if isinstance(value, (dict, list, str, bytes, bytearray, memoryview)):
        return Response(value)
    if hasattr(value, "__aiter__") or inspect.isgenerator(value):
        return Response(value)
    raise TypeError(f"a handler returned {type(value).__name__}, not a response "
                    "(return a dict, str, bytes, None, an async generator or a Response)")


class Event:
    """One server-sent event. `data` is text (several lines allowed); anything else is sent as
    JSON. `event`, `id` and `retry` (milliseconds) are optional."""

    def __init__(self, data=None, event=None, id=None, retry=None, comment=None):
        self.data, self.event, self.id, self.retry, self.comment = data, event, id, retry, comment


def format_event(data=None, event=None, id=None, retry=None, comment=None):
    """The bytes of one server-sent event (`data: ...` lines and a blank line)."""
    if isinstance(data, Event):
        data, event, id, retry, comment = data.data, data.event, data.id, data.retry, data.comment
    lines = []

    def one_line(value, what):
        value = str(value)
        if "\n" in value or "\r" in value:
            raise ValueError(f"an event's {what} cannot hold a line break")
        return value

    if comment is not None:
        lines += [": " + line for line in str(comment).splitlines() or [""]]
    if event is not None:
        lines.append("event: " + one_line(event, "name"))
    if id is not None:
        lines.append("id: " + one_line(id, "id"))
    if retry is not None:
        lines.append(f"retry: {int(retry)}")
    if data is not None:
        if isinstance(data, (bytes, bytearray)):
            data = bytes(data).decode("utf-8", "replace")
        elif not isinstance(data, str):
            data = json.dumps(data, ensure_ascii=False)
        lines += ["data: " + line for line in data.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def sse(events, keepalive=15.0):
    """A `text/event-stream` response from an async iterable of events (each an `Event`, text,
    or any JSON value). When `events` is quiet for `keepalive` seconds, a `: keep-alive` comment
    is sent, so that the host's idle timeout never ends a quiet stream."""

    async def body():
        source = _async_iter(events)
        pending = None
        try:
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(_next_of(source))
                done, _ = await asyncio.wait({pending}, timeout=keepalive)
                if not done:
                    yield b": keep-alive\n\n"
                    continue
                step, pending = pending, None
                try:
                    item = step.result()
                except StopAsyncIteration:
                    return
                yield format_event(item)
        finally:
            if pending is not None:
                pending.cancel()
            close = getattr(source, "aclose", None)
            if close is not None:
                try:
                    await close()
                except (Exception, asyncio.CancelledError):
                    pass

    return Response(body(), headers=[["cache-control", "no-cache"]],
                    content_type="text/event-stream")


async def _next_of(source):
    return await source.__anext__()


def _async_iter(source):
    """An async iterator over `source`; a plain iterable's `next()` runs in the plugin's thread
    pool."""
    if hasattr(source, "__aiter__"):
        return source.__aiter__()
    req = _current_request.get()
    executor = req._plugin._executor if req is not None else None

    async def from_sync():
        it = iter(source)
        loop = asyncio.get_running_loop()
        done = object()
        while True:
            item = await loop.run_in_executor(executor, next, it, done)
            if item is done:
                return
            yield item

    return from_sync()


# --- Streams (version 2) ------------------------------------------------------------------------

class _Stream:
    """Both directions of one request's stream, on the plugin's side."""

    def __init__(self, sid, conn):
        self.sid = sid
        self.conn = conn
        self.inbox = collections.deque()  # (data, flags) received, not yet consumed
        self.outstanding = 0  # bytes received minus bytes credited back: at most WINDOW
        self.uncredited = 0  # bytes consumed but not yet credited back
        self.in_ended = False  # END received (a body) or ws_close received
        self.arrived = asyncio.Event()
        self.window = WINDOW  # bytes we may still send
        self.credited = asyncio.Event()
        self.send_lock = asyncio.Lock()
        self.head_sent = False
        self.closed = False  # nothing more may be sent: ended, cancelled or aborted
        self.ws_close = None  # (code, reason) from the host
        self.is_ws = False  # a WebSocket: messages both ways, ended by ws_close
        self.endless = False  # an open WebSocket or event stream: ended at once on shutdown
        self.task = None

    def end(self):
        """Nothing more goes either way; wakes every waiter."""
        self.closed = True
        self.arrived.set()
        self.credited.set()

    async def next_frame(self):
        """The next (data, flags) received, or None at the end of this direction."""
        while not self.inbox:
            if self.in_ended or self.closed:
                return None
            self.arrived.clear()
            await self.arrived.wait()
        data, flags = self.inbox.popleft()
        await self.conn._consumed(self, len(data))
        return data, flags

    async def send(self, data, last_flags, every_flags=0, ws=False):
        """Sends `data` in data frames of at most CHUNK bytes, each when the window allows. The
        last frame gets `last_flags`; for a WebSocket message, the others get MORE."""
        view = memoryview(bytes(data))
        async with self.send_lock:
            while True:
                while len(view) and self.window <= 0 and not self.closed:
                    self.credited.clear()
                    await self.credited.wait()
                if self.closed:
                    raise StreamClosed(f"stream {self.sid} has ended")
                n = min(len(view), CHUNK, self.window)
                piece, view = view[:n], view[n:]
                self.window -= n
                flags = every_flags | (last_flags if not len(view) else (MORE if ws else 0))
                await self.conn._write(_data_frame(self.sid, flags, piece))
                if not len(view):
                    return


def _data_frame(sid, flags, data):
    return struct.pack(">IQB", (9 + len(data)) | DATA_BIT, sid, flags) + bytes(data)


class Body:
    """A request body: `async for chunk in req.body` (or `for chunk in req.body` in a plain
    handler) yields its bytes as they arrive. Each chunk taken gives the host credit back."""

    def __init__(self, req):
        self._req = req

    def __aiter__(self):
        return self

    async def __anext__(self):
        chunk = await self._req._next_chunk()
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    def __iter__(self):
        return self

    def __next__(self):
        chunk = self._req._plugin._blocking(self._req._next_chunk)
        if chunk is None:
            raise StopIteration
        return chunk


class Request:
    """One HTTP request.

    `method`, `path` (the full path, `/route/...`), `subpath` (after the route, starting with
    `/`), `query` (raw), `args` (the query parsed: first value of each name), `headers`
    (`[name, value]` pairs, names lower case), `params` (path parameters), `body` (the body's
    chunks), `protocol` (1 or 2), `id`.
    """

    def __init__(self, plugin, rid, payload, stream, subpath):
        self._plugin = plugin
        self.id = rid
        self.method = payload["method"]
        self.path = payload["path"]
        self.query = payload["query"]
        self.headers = payload["headers"]
        self.upgrade = payload.get("upgrade")
        self.subpath = subpath
        self.params = {}
        self.protocol = stream.conn.protocol
        self.body = Body(self)
        self._stream = stream
        self._writer = None
        self.cancelled = False

    def __repr__(self):
        return f"<Request {self.id} {self.method} {self.path}>"

    def header(self, name, default=None):
        """The first value of header `name` (any case), or `default`."""
        name = name.lower()
        return next((v for n, v in self.headers if n.lower() == name), default)

    @property
    def args(self):
        parsed = urllib.parse.parse_qs(self.query, keep_blank_values=True)
        return {k: v[0] for k, v in parsed.items()}

    async def _next_chunk(self):
        while True:
            frame = await self._stream.next_frame()
            if frame is None:
                return None
            if frame[0]:
                return frame[0]

    async def _read_all(self, limit):
        limit = DEFAULT_BODY_LIMIT if limit is None else limit
        parts, size = [], 0
        while True:
            chunk = await self._next_chunk()
            if chunk is None:
                return b"".join(parts)
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(limit)
            parts.append(chunk)

    def read_all(self, limit=None):
        """The whole body as bytes; raises BodyTooLarge (answered 413) past `limit` bytes
        (10 MiB by default). Await it in an async handler; call it in a plain one."""
        return self._plugin._dual(self._read_all, limit)

    def text(self, limit=None):
        """The whole body decoded as UTF-8 (400 when it is not)."""
        async def text():
            try:
                return (await self._read_all(limit)).decode("utf-8")
            except UnicodeDecodeError:
                raise HTTPError(400, "the body is not UTF-8 text") from None
        return self._plugin._dual(text)

    def json(self, limit=None):
        """The whole body parsed as JSON (400 when it is not)."""
        async def parse():
            try:
                return json.loads(await self._read_all(limit), parse_constant=_reject_constant)
            except (UnicodeDecodeError, ValueError):
                raise HTTPError(400, "the body is not JSON") from None
        return self._plugin._dual(parse)

    def respond(self, status=200, headers=None, content_type=None):
        """A writer for a streamed response: `w.write(chunk)` sends each chunk when the host
        has credit for it (await it in an async handler), `w.close()` ends the body. The head is
        sent with the first write. What the handler returns afterwards is ignored."""
        if self._writer is not None:
            raise RuntimeError("this request already has a response writer")
        self._writer = ResponseWriter(self, Response(None, status, headers, content_type))
        return self._writer


class ResponseWriter:
    """A response sent piece by piece; made by `Request.respond`."""

    def __init__(self, req, head):
        self._req = req
        self._head = head
        self._buffer = []  # version 1: the body, sent whole at close
        self._size = 0
        self.closed = False

    async def _write(self, data):
        if self.closed:
            raise StreamClosed("the response is already complete")
        if isinstance(data, str):
            data = data.encode("utf-8")
        data = bytes(data)
        conn, st = self._req._stream.conn, self._req._stream
        if conn.protocol == 1:
            self._size += len(data)
            if self._size > V1_BODY_LIMIT:
                raise ValueError("a response body over 12 MiB cannot be sent to a protocol 1 "
                                 "host")
            self._buffer.append(data)
            return
        if not st.head_sent:
            await conn._send_head(st, self._head, end_stream=False,
                                  endless=_is_event_stream(self._head.headers))
        if data:
            await st.send(data, 0)

    async def _close(self):
        if self.closed:
            return
        conn, st = self._req._stream.conn, self._req._stream
        if conn.protocol == 1:
            self.closed = True
            await conn._send_response(st, Response(b"".join(self._buffer), self._head.status,
                                                   self._head.headers), self._req.method)
            return
        if not st.head_sent:
            self.closed = True
            await conn._send_head(st, self._head, end_stream=True)
        else:
            await st.send(b"", END)
            self.closed = True
        conn._finish(st)

    def write(self, data):
        """Sends `data` (bytes or str) as the next part of the body."""
        return self._req._plugin._dual(self._write, data)

    def send_event(self, data=None, event=None, id=None, retry=None, comment=None):
        """Sends one server-sent event (see `format_event`)."""
        return self.write(format_event(data, event, id, retry, comment))

    def close(self):
        """Ends the body. The SDK closes a writer its handler left open."""
        return self._req._plugin._dual(self._close)


class WebSocket:
    """A WebSocket, for handlers registered with `@plugin.websocket(path)`.

    `accept()` (optional: the first receive or send accepts), `receive()` returns the next
    message (`str` for text, `bytes` for binary) and raises WebSocketClosed once closed,
    `async for msg in ws` (or `for` in a plain handler) iterates until the close, `send(msg)`
    waits for credit, `close(code, reason)`. Return a Response before accepting to refuse.
    """

    def __init__(self, req, max_message):
        self.request = req
        self.max_message = max_message
        self.accepted = False
        self.refused = False
        self.subprotocol = None
        self.close_code = None
        self.close_reason = None

    @property
    def _st(self):
        return self.request._stream

    async def _accept(self, subprotocol=None, headers=None):
        if self.accepted:
            return
        if self.refused:
            raise StreamClosed("the WebSocket was refused")
        headers = _headers(headers)
        if subprotocol is not None:
            headers.append(["sec-websocket-protocol", subprotocol])
            self.subprotocol = subprotocol
        self.accepted = True
        await self._st.conn._send_head(self._st, Response(None, 101, headers), end_stream=False,
                                       endless=True)

    async def _refuse(self, status=403, body=None):
        if self.accepted:
            raise RuntimeError("the WebSocket is already accepted; close it instead")
        if not self.refused:
            self.refused = True
            if not isinstance(body, Response):
                body = Response({"error": "WebSocket refused"} if body is None else body, status)
            await self._st.conn._send_response(self._st, body, "GET")

    def _closed_error(self):
        if self._st.ws_close is not None:
            return WebSocketClosed(*self._st.ws_close)
        if self.close_code is not None:
            return WebSocketClosed(self.close_code, self.close_reason or "")
        return WebSocketClosed(1006, "the connection went away")

    async def _receive(self):
        await self._accept()
        st, parts, size = self._st, [], 0
        while True:
            if self.close_code is not None:
                raise self._closed_error()
            frame = await st.next_frame()
            if frame is None:
                if st.ws_close is not None and self.close_code is None:
                    self.close_code, self.close_reason = st.ws_close
                raise self._closed_error()
            data, flags = frame
            size += len(data)
            if size > self.max_message:
                await self._close(1009, "message too big")
                raise self._closed_error()
            parts.append(data)
            if not flags & MORE:
                message = b"".join(parts)
                if not flags & TEXT:
                    return message
                try:
                    return message.decode("utf-8")
                except UnicodeDecodeError:
                    await self._close(1007, "text message is not UTF-8")
                    raise self._closed_error() from None

    async def _send(self, message):
        await self._accept()
        if self.close_code is not None or self._st.ws_close is not None:
            raise self._closed_error()
        if isinstance(message, str):
            data, flags = message.encode("utf-8"), TEXT
        elif isinstance(message, (bytes, bytearray, memoryview)):
            data, flags = bytes(message), 0
        else:
            raise TypeError(f"a WebSocket message is str or bytes, not {type(message).__name__}")
        try:
            await self._st.send(data, 0, flags, ws=True)
        except StreamClosed:  # closed while waiting for credit (by the client, or shutdown)
            raise self._closed_error() from None

    async def _close(self, code=1000, reason=""):
        if not (isinstance(code, int) and 1000 <= code <= 4999):
            raise ValueError(f"close code {code!r} is not 1000 to 4999")
        if self.close_code is not None or self._st.closed:
            return
        if not self.accepted:
            await self._accept()
            if self._st.closed:  # accepted after shutdown began: closed with 1001 already
                return
        self.close_code, self.close_reason = code, _truncate_utf8(str(reason), 123)
        if self._st.ws_close is None:
            conn = self._st.conn
            await conn._send("ws_close", self._st.sid, {"code": code, "reason": self.close_reason})
            conn._finish(self._st)

    def accept(self, subprotocol=None, headers=None):
        return self.request._plugin._dual(self._accept, subprotocol, headers)

    def refuse(self, status=403, body=None):
        return self.request._plugin._dual(self._refuse, status, body)

    def receive(self):
        return self.request._plugin._dual(self._receive)

    def send(self, message):
        return self.request._plugin._dual(self._send, message)

    def close(self, code=1000, reason=""):
        return self.request._plugin._dual(self._close, code, reason)

    def __aiter__(self):
        return self

    async def __anext__(self):
        try:
            return await self._receive()
        except WebSocketClosed:
            raise StopAsyncIteration from None

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return self.receive()
        except WebSocketClosed:
            raise StopIteration from None


# --- KV and logging -----------------------------------------------------------------------------

class KV:
    """The plugin's own key-value store on the host. Keys and values are strings (store binary
    data base64-encoded). Each method is awaitable in an async handler and blocking in a plain
    one; each raises KvError when the host refuses."""

    def __init__(self, plugin):
        self._plugin = plugin
        self._locks = {}  # key -> [lock, users], for update()

    async def _call(self, payload):
        conn = self._plugin._conn
        if conn is None or conn.closing:
            raise KvError("internal", "the plugin is not connected to a host")
        return await conn._kv(payload)

    @staticmethod
    def _key(key):
        if not isinstance(key, str) or not key:
            raise ValueError(f"a KV key is a non-empty string, not {key!r}")
        return key

    async def _get(self, key):
        value = (await self._call({"op": "get", "key": self._key(key)})).get("value")
        return value

    async def _set(self, key, value):
        if not isinstance(value, str):
            raise TypeError(f"a KV value is a string, not {type(value).__name__}")
        await self._call({"op": "set", "key": self._key(key), "value": value})

    async def _delete(self, key):
        return bool((await self._call({"op": "delete", "key": self._key(key)})).get("existed"))

    async def _list(self, prefix="", after=None, limit=None):
        payload = {"op": "list", "prefix": prefix}
        if after is not None:
            payload["after"] = after
        if limit is not None:
            payload["limit"] = limit
        return list((await self._call(payload)).get("keys") or [])

    async def _keys(self, prefix=""):
        keys, after = [], None
        while True:
            page = await self._list(prefix, after, 1000)
            keys += page
            if len(page) < 1000:
                return keys
            after = page[-1]

    async def _update(self, key, fn):
        self._key(key)
        entry = self._locks.setdefault(key, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                new = fn(await self._get(key))
                if inspect.isawaitable(new):
                    new = await new
                await self._set(key, str(new))
                return new
        finally:
            entry[1] -= 1
            if not entry[1]:
                self._locks.pop(key, None)

    def get(self, key):
        """The value of `key`, or None when it is not set."""
        return self._plugin._dual(self._get, key)

    def set(self, key, value):
        """Stores `value` (a str); returns once the host has it on disk."""
        return self._plugin._dual(self._set, key, value)

    def delete(self, key):
        """Removes `key`; returns whether it was set."""
        return self._plugin._dual(self._delete, key)

    def list(self, prefix="", after=None, limit=None):
        """One page of keys starting with `prefix`, in byte order, after `after`; at most
        `limit` (the host caps it at 1000). Fewer than `limit` means the listing is complete."""
        return self._plugin._dual(self._list, prefix, after, limit)

    def keys(self, prefix=""):
        """Every key starting with `prefix` (pages through `list`)."""
        return self._plugin._dual(self._keys, prefix)

    def update(self, key, fn):
        """Reads `key`, stores `str(fn(old))` and returns `fn(old)` (`old` is None when unset).
        Updates of one key by this process run one after another, so concurrent requests never
        lose a count. `fn` runs on the event loop: keep it quick."""
        return self._plugin._dual(self._update, key, fn)


class Log:
    """Structured log lines, sent over the socket (to stderr, with a level prefix, when there is
    no connection). Each call returns at once, from any thread."""

    def __init__(self, plugin):
        self._plugin = plugin

    def __call__(self, level, message, error=None):
        if level == "warning":
            level = "warn"
        if level not in LEVELS:
            raise ValueError(f"log level {level!r} is not one of {', '.join(LEVELS)}")
        message = _truncate_utf8(str(message), MAX_LOG_BYTES)
        error = None if error is None else _truncate_utf8(str(error), MAX_LOG_BYTES)
        conn = self._plugin._conn
        if conn is None or conn.closing:
            _stderr(f"{level.upper()}: {message}" + (f" ({error})" if error else ""))
        else:
            conn._log_threadsafe(level, message, error)

    def trace(self, message, error=None):
        self("trace", message, error)

    def debug(self, message, error=None):
        self("debug", message, error)

    def info(self, message, error=None):
        self("info", message, error)

    def warn(self, message, error=None):
        self("warn", message, error)

    warning = warn

    def error(self, message, error=None):
        self("error", message, error)


class Init:
    """What `init` said: `instance_id`, `plugin_id`, `settings` (checked, defaults filled in),
    `protocol_version` (the one chosen), `log_path`."""

    def __init__(self, payload, settings, version):
        self.instance_id = payload["instance_id"]
        self.plugin_id = payload["plugin_id"]
        self.log_path = payload["log_path"]
        self.settings = settings
        self.protocol_version = version


# --- Routing ------------------------------------------------------------------------------------

class _Route:
    def __init__(self, path, methods, handler, websocket=False):
        if not (isinstance(path, str) and path.startswith("/")):
            raise ValueError(f"a route path starts with '/', not {path!r}")
        self.path = path
        self.methods = {m.upper() for m in methods}
        self.handler = handler
        self.websocket = websocket
        pattern = ""
        for segment in path.strip("/").split("/") if path != "/" else []:
            match = re.fullmatch(r"\{([A-Za-z_][A-Za-z0-9_]*)(:path)?\}", segment)
            if match:
                body = ".+" if match.group(2) else "[^/]+"
                pattern += f"/(?P<{match.group(1)}>{body})"
            else:
                pattern += "/" + re.escape(segment)
        self.regex = re.compile(pattern or "/")

    def match(self, subpath):
        found = self.regex.fullmatch(subpath)
        if found is None:
            return None
        return {k: urllib.parse.unquote(v) for k, v in found.groupdict().items()}


# --- The plugin ---------------------------------------------------------------------------------

class Plugin:
    """A plugin: its metadata, routes and hooks. `run()` serves it.

    `id` names it (`a-z`, `0-9`, `-`); `route` defaults to `/<id>`; `name` to the id; `version`
    to `0.1.0`. `settings` declares its settings (dicts as in docs/protocol.md section 2).
    `bundle` is the frontend script (an ES module text); `threads` sizes the pool that runs plain
    (non-async) handlers.
    """

    def __init__(self, id, name=None, version="0.1.0", route=None, author="", description="",
                 icon="", settings=(), bundle=None, license_required=False, threads=16,
                 max_in_flight=MAX_IN_FLIGHT, max_ws_message=MAX_WS_MESSAGE):
        if not (isinstance(id, str) and ID_PATTERN.fullmatch(id)):
            raise ValueError(f"plugin id {id!r}: use 1 to 63 of a-z, 0-9 and '-', not starting "
                             "with '-'")
        route = route if route is not None else "/" + id
        if not (isinstance(route, str) and route.startswith("/")
                and ID_PATTERN.fullmatch(route[1:])):
            raise ValueError(f"route {route!r}: '/' and one segment of a-z, 0-9 and '-'")
        name = id if name is None else name
        for field, value, most in (("name", name, 100), ("version", version, 64)):
            if not (isinstance(value, str) and value.strip()) or len(value.encode()) > most:
                raise ValueError(f"{field} {value!r}: not blank, at most {most} bytes")
        self.id, self.route, self.name, self.version = id, route, name, version
        self.author, self.description, self.icon = author, description, icon
        self.license_required = license_required
        self.settings_spec = [self._check_setting(s) for s in settings]
        names = [s["name"] for s in self.settings_spec]
        if len(set(names)) != len(names):
            raise ValueError(f"setting names repeat: {names}")
        self.bundle = bundle
        self.threads = threads
        self.max_in_flight = max_in_flight
        self.max_ws_message = max_ws_message
        self.kv = KV(self)
        self.log = Log(self)
        self.settings = self._defaults()
        self.instance_id = None
        self._routes = []
        self._on_init = None
        self._on_settings = None
        self._conn = None
        self._executor = None

    # Declaring -----------------------------------------------------------------------------

    @staticmethod
    def _check_setting(spec):
        spec = dict(spec)
        name, kind = spec.get("name"), spec.get("type")
        if not (isinstance(name, str) and SETTING_NAME.fullmatch(name)):
            raise ValueError(f"setting name {name!r}: a-z, 0-9 and '_', starting with a letter")
        if kind not in SETTING_TYPES:
            raise ValueError(f"setting {name!r}: type {kind!r} is not one of {SETTING_TYPES}")
        if (kind == "choice") != bool(spec.get("choices")):
            raise ValueError(f"setting {name!r}: `choices` goes with type choice, and only there")
        if "default" in spec and spec["default"] is not None:
            if kind == "secret":
                raise ValueError(f"setting {name!r}: a secret has no default")
            if _setting_problem(spec, spec["default"]):
                raise ValueError(f"setting {name!r}: default {spec['default']!r} does not fit")
        spec.setdefault("label", name)
        spec.setdefault("required", False)
        spec.setdefault("help", "")
        return spec

    def _defaults(self):
        return {s["name"]: s["default"] for s in self.settings_spec if s.get("default") is not None}

    def metadata(self):
        """The metadata `--metadata` prints."""
        meta = {
            "id": self.id, "name": self.name, "version": self.version, "author": self.author,
            "description": self.description, "icon": self.icon, "route": self.route,
            "protocol": {"min": PROTOCOL_MIN, "max": PROTOCOL_MAX},
            "frontend": self.bundle is not None, "license_required": self.license_required,
        }
        if self.settings_spec:
            meta["settings"] = self.settings_spec
        meta["live_settings"] = self._on_settings is not None
        return meta

    def handle(self, path, methods=("GET",)):
        """Registers a handler for `path` (relative to the plugin's route; `/items/{id}` puts
        the segment in `req.params["id"]`, `{rest:path}` takes the rest) and `methods`."""
        def register(fn):
            self._routes.append(_Route(path, methods, fn))
            return fn
        return register

    def get(self, path):
        return self.handle(path, ("GET",))

    def post(self, path):
        return self.handle(path, ("POST",))

    def put(self, path):
        return self.handle(path, ("PUT",))

    def patch(self, path):
        return self.handle(path, ("PATCH",))

    def delete(self, path):
        return self.handle(path, ("DELETE",))

    def websocket(self, path):
        """Registers a WebSocket handler: `fn(ws)` gets a WebSocket (`ws.request` is the
        request). With a version 1 host, or a request that is not an upgrade, the route answers
        426."""
        def register(fn):
            self._routes.append(_Route(path, ("GET",), fn, websocket=True))
            return fn
        return register

    def on_init(self, fn):
        """Registers `fn(init)`, run once before `ready` (KV works there). It may raise
        `Refuse(reason)` to refuse to start (the plugin exits 78)."""
        self._on_init = fn
        return fn

    def on_settings(self, fn):
        """Registers `fn(settings)`, called when an operator changes the settings while the
        plugin runs. With it, the metadata says `live_settings: true`, so the host sends the
        change instead of restarting the plugin. `plugin.settings` is already updated."""
        self._on_settings = fn
        return fn

    # Running -------------------------------------------------------------------------------

    def run(self, argv=None):
        """Serves the plugin as the host asks, and exits the process with the right code."""
        argv = sys.argv[1:] if argv is None else argv
        if "--metadata" in argv:
            sys.stdout.buffer.write(json.dumps(self.metadata(), ensure_ascii=False).encode() + b"\n")
            sys.stdout.flush()
            sys.exit(0)
        path = os.environ.get("TORU_SOCKET_PATH")
        if not path:
            _stderr(f"{self.id} is a Toru plugin: a Toru host starts it with TORU_SOCKET_PATH set "
                    "to the socket it should listen on, and `--metadata` prints its metadata.")
            sys.exit(2)
        host_id = os.environ.get("TORU_PLUGIN_ID")
        if host_id and host_id != self.id:
            _stderr(f"WARN: the host calls this plugin {host_id!r}; its id is {self.id!r}")
        code = asyncio.run(self._listen_and_serve(path))
        sys.stdout.flush()
        sys.stderr.flush()
        # A plain handler still running in a thread would hold the interpreter's exit: the host
        # has gone or asked us to stop, so nobody is waiting for it.
        os._exit(code)

    async def _listen_and_serve(self, path):
        try:
            if os.path.lexists(path):
                os.unlink(path)  # a stale socket from an earlier run
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(path)
            listener.listen(1)
            listener.setblocking(False)
        except OSError as e:
            _stderr(f"ERROR: cannot listen on {path!r}: {e}")
            return 1
        try:
            conn, _ = await asyncio.get_running_loop().sock_accept(listener)
        finally:
            listener.close()  # one host, one connection
            try:
                os.unlink(path)
            except OSError:
                pass
        return await self.serve(conn)

    async def serve(self, sock):
        """Serves one host connection on a connected stream socket; returns the exit code.
        (`run()` calls it; tests call it with one end of a `socket.socketpair()`.)"""
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            self.threads, thread_name_prefix=f"{self.id}-handler")
        conn = _Connection(self, reader, writer)
        self._conn = conn
        try:
            return await conn.run()
        finally:
            self._conn = None
            self._executor.shutdown(wait=False, cancel_futures=True)

    # Calls that are awaitables on the loop and blocking in threads ------------------------

    def _dual(self, fn, *args):
        if _in_loop():
            return fn(*args)
        return self._blocking(fn, *args)

    def _blocking(self, fn, *args):
        req = _current_request.get()
        if req is not None and req.cancelled:
            raise Cancelled(f"request {req.id} was cancelled")
        conn = self._conn
        if conn is None:
            raise RuntimeError("the plugin is not serving a host")
        future = asyncio.run_coroutine_threadsafe(fn(*args), conn.loop)
        return future.result()

    async def _call_handler(self, fn, *args):
        """Calls a handler or hook: awaited when async, in the thread pool otherwise."""
        if inspect.iscoroutinefunction(fn):
            return await fn(*args)
        if inspect.isasyncgenfunction(fn):
            return fn(*args)
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()
        result = await loop.run_in_executor(self._executor, functools.partial(ctx.run, fn, *args))
        if inspect.isawaitable(result):
            result = await result
        return result

    # Settings ------------------------------------------------------------------------------

    def _checked_settings(self, raw):
        """The settings from the host, each checked against its declaration: a value that does
        not fit is logged at error level and replaced by the default."""
        settings = dict(raw)
        for spec in self.settings_spec:
            name = spec["name"]
            value = settings.get(name)
            if value is None:
                settings.pop(name, None)
            elif _setting_problem(spec, value):
                # The value itself is never logged: it may be a secret.
                self.log.error(f"setting {name!r} is not a valid {spec['type']}: "
                               f"{_setting_problem(spec, value)}; using its default")
                settings.pop(name)
            if name not in settings and spec.get("default") is not None:
                settings[name] = spec["default"]
        return settings


def _setting_problem(spec, value):
    kind = spec["type"]
    if kind in ("string", "secret", "choice") and not isinstance(value, str):
        return "expected text"
    if kind == "choice" and value not in spec.get("choices", ()):
        return "not one of the choices"
    if kind == "number" and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return "expected a number"
    if kind == "boolean" and not isinstance(value, bool):
        return "expected true or false"
    return None


# --- The connection -----------------------------------------------------------------------------

class _Connection:
    """One host connection: a reader loop, a task per request, writes serialised by one lock."""

    def __init__(self, plugin, reader, writer):
        self.plugin = plugin
        self.reader = reader
        self.writer = writer
        self.loop = asyncio.get_running_loop()
        self.write_lock = asyncio.Lock()
        self.protocol = None  # agreed in init
        self.ready = False
        self.initialising = False
        self.closing = False
        self.shutting_down = False
        self.next_id = 1  # our own request ids (kv)
        self.pending = {}  # our kv id -> future
        self.streams = {}  # host request id -> _Stream (every request in flight)
        self.tasks = set()  # every task we started, cancelled when the connection ends
        self.finished = self.loop.create_future()  # the exit code, once decided
        self.pending_logs = 0
        self.dropped_logs = 0
        self.log_tasks = set()  # log messages on their way: given a moment at the end

    # Writing -------------------------------------------------------------------------------

    async def _write(self, *frames):
        async with self.write_lock:
            for frame in frames:
                self.writer.write(frame)
            await self.writer.drain()

    @staticmethod
    def _encode(type_name, rid, payload):
        data = json.dumps({"type": type_name, "timestamp": _now_ms(), "request_id": rid,
                           "payload": payload}, ensure_ascii=False, separators=(",", ":"))
        # "replace": a lone surrogate (from a \udXXX escape) must not kill the plugin.
        data = data.encode("utf-8", "replace")
        if len(data) > MAX_FRAME:
            raise ValueError(f"{type_name} of {len(data)} bytes exceeds the {MAX_FRAME}-byte "
                             "frame limit")
        return struct.pack(">I", len(data)) + data

    async def _send(self, type_name, rid, payload):
        await self._write(self._encode(type_name, rid, payload))

    async def _send_error(self, rid, code, message):
        await self._send("error", rid, {"code": code, "message": message})

    def _spawn(self, coro):
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task):
        self.tasks.discard(task)
        self.log_tasks.discard(task)
        if task.cancelled():
            return
        e = task.exception()
        if e is not None and not isinstance(e, (_Fatal, ConnectionError, OSError)):
            _stderr(f"ERROR: {self.plugin.id}: an internal task failed: {e!r}\n"
                    + "".join(traceback.format_exception(type(e), e, e.__traceback__)))

    # Logging -------------------------------------------------------------------------------

    def _log_threadsafe(self, level, message, error):
        try:
            if _in_loop() and asyncio.get_running_loop() is self.loop:
                self._log_now(level, message, error)
            else:
                self.loop.call_soon_threadsafe(self._log_now, level, message, error)
        except RuntimeError:  # the loop has closed
            _stderr(f"{level.upper()}: {message}")

    def _log_now(self, level, message, error):
        if self.closing:
            _stderr(f"{level.upper()}: {message}")
            return
        if self.pending_logs >= MAX_PENDING_LOGS:
            self.dropped_logs += 1
            return
        payload = {"level": level, "message": message}
        if error is not None:
            payload["error"] = error
        self.pending_logs += 1
        self.log_tasks.add(self._spawn(self._send_log(payload)))

    async def _send_log(self, payload):
        try:
            await self._send("log", None, payload)
        except (ConnectionError, OSError):
            pass
        finally:
            self.pending_logs -= 1
        if self.dropped_logs and not self.pending_logs:
            dropped, self.dropped_logs = self.dropped_logs, 0
            self._log_now("warn", f"{dropped} log lines were dropped: the plugin logged faster "
                                  "than the host read them", None)

    # Reading -------------------------------------------------------------------------------

    async def _read_frame(self):
        """The next frame as ("json", bytes) or ("data", sid, flags, bytes); None at the end."""
        try:
            header = await self.reader.readexactly(4)
        except asyncio.IncompleteReadError as e:
            if e.partial:
                raise _Fatal("the host's stream ended inside a frame header") from None
            return None
        except (ConnectionError, OSError):
            return None
        (word,) = struct.unpack(">I", header)
        is_data = self.protocol == 2 and word & DATA_BIT
        length = word & LEN_MASK if self.protocol == 2 else word
        if length > MAX_FRAME:
            raise _Fatal(f"the host sent a frame of {length} bytes, over the {MAX_FRAME}-byte "
                         "limit; closing the connection")
        try:
            body = await self.reader.readexactly(length)
        except asyncio.IncompleteReadError:
            raise _Fatal("the host's stream ended inside a frame") from None
        except (ConnectionError, OSError):
            return None
        if is_data:
            if length < 9:
                raise _Fatal(f"the host sent a data frame of {length} bytes; the shortest is 9")
            sid, flags = struct.unpack_from(">QB", body)
            return ("data", sid, flags, body[9:])
        return ("json", body)

    async def run(self):
        code = 1
        reading = self._spawn(self._read_loop())
        try:
            await asyncio.wait({reading, self.finished}, return_when=asyncio.FIRST_COMPLETED)
            code = self.finished.result() if self.finished.done() else reading.result()
        except _Fatal as e:
            _stderr(f"ERROR: {e}")
            code = 1
        except (ConnectionError, OSError):  # the host went away while we wrote
            code = 0
        except BaseException:
            code = 1
            raise
        finally:
            if self.log_tasks and code != 1:
                await asyncio.wait(set(self.log_tasks), timeout=1.0)
            self.closing = True
            for st in self.streams.values():
                st.end()
            for task in list(self.tasks):
                task.cancel()
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(KvError("internal", "the connection to the host closed"))
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except (ConnectionError, OSError):
                pass
        return code

    async def _read_loop(self):
        while True:
            frame = await self._read_frame()
            if frame is None:
                return 0
            if frame[0] == "data":
                await self._on_data(*frame[1:])
                continue
            try:
                type_name, rid, payload = _parse(frame[1])
            except _BadMessage as e:
                await self._send_error(e.request_id, "bad_request", e.reason)
                continue
            if type_name in REPLY_TYPES:
                self._on_reply(type_name, rid, payload)
            elif not self.ready:
                await self._before_ready(type_name, rid, payload)
            else:
                await self._dispatch(type_name, rid, payload)

    # Start-up ------------------------------------------------------------------------------

    async def _before_ready(self, type_name, rid, payload):
        if type_name == "init" and not self.initialising:
            self.initialising = True
            self._spawn(self._init(rid, payload))
        elif type_name == "shutdown" and self.initialising:
            self._finish_with(0)  # stop starting: nobody waits for `ready` any more
        elif rid is not None and type_name not in NOTICE_TYPES:
            # Requests are answered; notices are ignored.
            why = "init is in progress" if self.initialising else "expected init first"
            await self._send_error(rid, "bad_request", f"{why}, got {type_name!r}")

    async def _init(self, rid, payload):
        plugin = self.plugin
        host_min, host_max = payload["protocol"]["min"], payload["protocol"]["max"]
        low, high = max(host_min, PROTOCOL_MIN), min(host_max, PROTOCOL_MAX)
        if low > high:
            message = (f"plugin {plugin.id} speaks protocol {_range(PROTOCOL_MIN, PROTOCOL_MAX)}, "
                       f"the host offered {_range(host_min, host_max)}")
            return await self._refuse(rid, "unsupported_protocol_version", message)
        self.protocol = high
        plugin.instance_id = payload["instance_id"]
        plugin.settings = plugin._checked_settings(payload["settings"])
        if plugin._on_init is not None:
            try:
                await plugin._call_handler(plugin._on_init,
                                           Init(payload, plugin.settings, self.protocol))
            except Refuse as e:
                return await self._refuse(rid, "init_refused", str(e))
            except asyncio.CancelledError:
                raise
            except Exception as e:
                _stderr(f"ERROR: {plugin.id}'s on_init failed: {e!r}\n" + traceback.format_exc())
                await self._send_error(rid, "internal", f"{plugin.id} failed to start: {e}")
                return self._finish_with(1)
        await self._send("ready", rid, {"protocol_version": self.protocol})
        self.ready = True
        _stderr(f"{plugin.id} ready (protocol {self.protocol})")

    async def _refuse(self, rid, code, message):
        # A prefixed stderr line is stored at level error: the reader filtering for errors sees
        # why the plugin will not start.
        _stderr(f"ERROR: {message}")
        await self._send_error(rid, code, message)
        self._finish_with(EX_CONFIG)

    def _finish_with(self, code):
        if not self.finished.done():
            self.finished.set_result(code)

    # Running -------------------------------------------------------------------------------

    async def _dispatch(self, type_name, rid, payload):
        if type_name == "ping":
            await self._send("pong", rid, {})
        elif type_name == "cancel":
            self._cancel(rid)
        elif type_name == "credit":
            st = self.streams.get(rid)
            if st is not None and self.protocol == 2:
                st.window += payload["bytes"]
                st.credited.set()
        elif type_name == "ws_close":
            st = self.streams.get(rid)
            if st is not None and st.ws_close is None:
                st.ws_close = (payload["code"], payload["reason"])
                st.in_ended = True
                st.arrived.set()
        elif type_name == "shutdown":
            if not self.shutting_down:
                self.shutting_down = True
                self._spawn(self._drain())
        elif type_name == "settings":
            await self._apply_settings(payload["settings"])
        elif type_name in ("http_request", "get_bundle") and self.shutting_down:
            await self._send_error(rid, "shutting_down", f"{self.plugin.id} is shutting down")
        elif type_name == "http_request":
            await self._on_request(rid, payload)
        elif type_name == "get_bundle":
            if self.plugin.bundle is None:
                await self._send_error(rid, "not_found", f"plugin {self.plugin.id} has no "
                                                         "frontend bundle")
            else:
                await self._send("bundle", rid, {"script": self.plugin.bundle})
        elif type_name == "init":
            await self._send_error(rid, "bad_request", f"{self.plugin.id} is already initialised")
        elif type_name in PLUGIN_ONLY and rid is not None:
            await self._send_error(rid, "bad_request", f"{type_name} is sent by plugins, "
                                                       "not by the host")
        elif rid is not None:
            await self._send_error(rid, "unknown_type", f"{self.plugin.id} does not handle "
                                                        f"{type_name!r} messages")

    def _on_reply(self, type_name, rid, payload):
        future = self.pending.get(rid)
        if future is None or future.done():
            return  # a reply to nothing we asked (or gave up on): ignored
        if type_name == "kv_result":
            future.set_result(payload)
        elif type_name == "error":
            future.set_exception(KvError(payload["code"], payload["message"]))
        else:
            future.set_exception(KvError("internal", f"the host answered kv with {type_name}"))

    async def _kv(self, payload):
        rid, self.next_id = self.next_id, self.next_id + 1
        future = self.loop.create_future()
        self.pending[rid] = future
        try:
            await self._send("kv", rid, payload)
            try:
                result = await asyncio.wait_for(asyncio.shield(future), KV_TIMEOUT)
            except asyncio.TimeoutError:
                raise KvError("timeout", f"the host did not answer kv {payload['op']} within "
                                         f"{KV_TIMEOUT:g} s") from None
        finally:
            self.pending.pop(rid, None)
        problem = _kv_result_problem(payload["op"], result)
        if problem:
            raise KvError("internal", f"the host's kv_result is malformed: {problem}")
        return result

    def _cancel(self, rid):
        st = self.streams.pop(rid, None)
        if st is None:
            return  # already answered, or unknown: ignored
        st.end()
        if st.task is not None:
            st.task.cancel()

    async def _drain(self):
        """`shutdown` (section 7): open WebSockets get `ws_close` 1001 and event streams their
        `END` at once; everything else in flight has SHUTDOWN_GRACE to finish, then is cancelled.
        Then the connection closes and `run` returns 0."""
        streams = list(self.streams.values())
        work = [st.task for st in streams if st.task is not None]
        work += [self._spawn(self._end_at_shutdown(st)) for st in streams if st.endless]
        if work:
            _, late = await asyncio.wait(work, timeout=SHUTDOWN_GRACE)
            for task in late:
                task.cancel()
        self._finish_with(0)

    async def _end_at_shutdown(self, st, stop_handler=True):
        """Ends a stream that would never end by itself. A WebSocket: `ws_close` 1001, and its
        handler's receive raises WebSocketClosed(1001) (messages that already came are received
        first). An event stream: `END`, and its handler is cancelled (`stop_handler`), as when
        the client leaves. Nothing more is sent on the stream."""
        if st.closed or not st.endless or self.protocol != 2:
            return
        reason = "the plugin is shutting down"
        if st.is_ws:
            st.ws_close = (1001, reason)
        self._finish(st)  # before any await: frames already being sent stop at their next one
        if stop_handler and not st.is_ws and st.task not in (None, asyncio.current_task()):
            st.task.cancel()
        async with st.send_lock:  # after a data frame already being written
            if st.is_ws:
                await self._send("ws_close", st.sid, {"code": 1001, "reason": reason})
            else:
                await self._write(_data_frame(st.sid, END, b""))

    async def _apply_settings(self, raw):
        plugin = self.plugin
        plugin.settings = plugin._checked_settings(raw)
        if plugin._on_settings is not None:
            self._spawn(self._settings_hook(plugin.settings))

    async def _settings_hook(self, settings):
        try:
            await self.plugin._call_handler(self.plugin._on_settings, settings)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.plugin.log.error(f"on_settings failed: {e!r}", traceback.format_exc())

    # Streams -------------------------------------------------------------------------------

    async def _on_data(self, sid, flags, data):
        st = self.streams.get(sid)
        if st is None or st.in_ended or st.closed:
            return  # after the stream's end (or never known): ignored
        if st.outstanding + len(data) > WINDOW:
            self.plugin.log.error(f"the host sent more than the window on stream {sid}; "
                                  "ending the stream")
            await self._abort(st, "bad_request", "more data than the window allows")
            return
        st.outstanding += len(data)
        st.inbox.append((data, flags))
        if flags & END and not st.is_ws:
            st.in_ended = True
        st.arrived.set()

    async def _consumed(self, st, n):
        if self.protocol != 2 or st.in_ended or st.closed or not n:
            return
        st.uncredited += n
        if st.uncredited >= CREDIT_BATCH:
            n, st.uncredited = st.uncredited, 0
            st.outstanding -= n
            await self._send("credit", st.sid, {"bytes": n})

    def _finish(self, st):
        """The stream is over: our response or close is sent."""
        st.end()
        if self.streams.get(st.sid) is st:
            del self.streams[st.sid]

    async def _abort(self, st, code, message):
        """Ends a stream with `error` (before the head: a 502; after it: the client's response
        is cut off, a WebSocket closed with 1011)."""
        if st.closed:
            return
        self._finish(st)
        if st.task is not None and st.task is not asyncio.current_task():
            st.task.cancel()
        await self._send_error(st.sid, code, message)

    async def _send_head(self, st, response, end_stream, endless=False):
        """Sends a response head. `endless`: a WebSocket's 101 or an event stream's head, which
        shutdown ends at once (and does here, when it has already begun)."""
        if st.closed:
            raise StreamClosed(f"stream {st.sid} has ended")
        if st.head_sent:
            raise RuntimeError("the response head was already sent")
        st.head_sent = True
        st.endless = endless and not end_stream
        await self._send("http_response", st.sid, {"status": response.status,
                                                   "headers": response.headers,
                                                   "end_stream": end_stream})
        if end_stream:
            self._finish(st)
        elif st.endless and self.shutting_down:
            await self._end_at_shutdown(st, stop_handler=False)

    async def _send_response(self, st, response, method):
        """Sends a whole response (streaming its body when it is an iterable)."""
        body = response.body
        if method == "HEAD" and response.streamed:
            await _close_iterable(body)
            body = None
        elif method == "HEAD":
            body = None
        if self.protocol == 1:
            if response.streamed:
                body = await self._collect(body)
            # Version 1 bodies travel whole and the host frames them (section 5).
            headers = [h for h in response.headers
                       if h[0].lower() not in ("content-length", "transfer-encoding")]
            payload = {"status": response.status, "headers": headers}
            if body:
                try:
                    payload["body"] = body.decode("utf-8")
                except UnicodeDecodeError:
                    payload["body_base64"] = _b64encode(body)
            if st.closed:
                return
            frame = self._encode("http_response", st.sid, payload)  # may be too large
            self._finish(st)
            await self._write(frame)
            return
        if not body:
            await self._send_head(st, response, end_stream=True)
        elif not response.streamed:
            if len(body) <= min(CHUNK, st.window):
                # The usual case: head and body written together, as two frames.
                st.head_sent = True
                st.window -= len(body)
                head = self._encode("http_response", st.sid, {
                    "status": response.status, "headers": response.headers, "end_stream": False})
                self._finish(st)
                await self._write(head, _data_frame(st.sid, END, body))
            else:
                await self._send_head(st, response, end_stream=False)
                await st.send(body, END)
                self._finish(st)
        else:
            await self._send_head(st, response, end_stream=False,
                                  endless=_is_event_stream(response.headers))
            if st.closed:  # cancelled, or an event stream that began after shutdown (ended)
                await _close_iterable(body)
                return
            source = _async_iter(body)
            try:
                async for chunk in source:
                    if isinstance(chunk, str):
                        chunk = chunk.encode("utf-8")
                    if not isinstance(chunk, (bytes, bytearray, memoryview)):
                        raise TypeError(f"a body chunk is bytes or str, not {type(chunk).__name__}")
                    if len(chunk):
                        await st.send(chunk, 0)
            finally:
                await _close_iterable(source)
            await st.send(b"", END)
            self._finish(st)

    async def _collect(self, body):
        parts, size = [], 0
        source = _async_iter(body)
        try:
            async for chunk in source:
                if isinstance(chunk, str):
                    chunk = chunk.encode("utf-8")
                size += len(chunk)
                if size > V1_BODY_LIMIT:
                    raise ValueError("a streamed response over 12 MiB cannot be sent to a "
                                     "protocol 1 host")
                parts.append(bytes(chunk))
        finally:
            await _close_iterable(source)
        return b"".join(parts)

    # Requests ------------------------------------------------------------------------------

    async def _on_request(self, rid, payload):
        if rid is None or rid in self.streams:
            why = "has no request_id" if rid is None else f"reuses id {rid}, which is in flight"
            await self._send_error(rid, "bad_request", f"the http_request {why}")
            return
        st = _Stream(rid, self)
        if self.protocol == 1:
            payload.pop("upgrade", None)  # no WebSockets in version 1
            try:
                body = payload.get("body")
                data = body.encode("utf-8", "replace") if body is not None else (
                    _b64decode(payload["body_base64"]) if payload.get("body_base64") else b"")
            except ValueError as e:
                await self._send_error(rid, "bad_request", str(e))
                return
            if data:
                st.inbox.append((data, END))
            st.in_ended = True
        elif payload.get("upgrade") is not None:
            st.is_ws = True  # messages follow until ws_close
        elif payload.get("end_stream") is not False:
            st.in_ended = True  # no body
        self.streams[rid] = st
        if len(self.streams) > self.plugin.max_in_flight:
            await self._send_response(st, Response.json(
                {"error": f"{self.plugin.id} is busy"}, 503, [["retry-after", "1"]]), "GET")
            return
        st.task = self._spawn(self._handle(st, payload))

    async def _handle(self, st, payload):
        plugin = self.plugin
        path, method = payload["path"], payload["method"]
        upgrade = payload.get("upgrade")
        req = None
        try:
            subpath = _subpath(path, plugin.route)
            route, found = _find_route(plugin._routes, subpath, method, upgrade)
            req = Request(plugin, st.sid, payload, st, subpath or "/")
            _current_request.set(req)
            if route is None:
                await self._send_response(st, found, method)
                return
            req.params = found
            if route.websocket:
                await self._handle_websocket(st, route, req)
                return
            result = await plugin._call_handler(route.handler, req)
            if req._writer is not None:
                await req._writer._close()
            elif not st.closed:
                await self._send_response(st, _to_response(result), method)
        except asyncio.CancelledError:
            if req is not None:
                req.cancelled = True
            raise
        except StreamClosed as e:
            if not st.closed:  # a handler's own misuse (a write after close, say)
                await self._failed(st, method, path, e)
        except (ConnectionError, OSError) as e:
            if not self.closing:
                plugin.log.error(f"{method} {path}: the connection failed: {e!r}")
        except Exception as e:
            await self._failed(st, method, path, e)
        finally:
            if self.streams.get(st.sid) is st:
                del self.streams[st.sid]
            st.end()

    async def _failed(self, st, method, path, e):
        if isinstance(e, HTTPError):
            response = e.response()
        elif isinstance(e, KvError):
            self.plugin.log.error(f"{method} {path} failed: KV {e.code}", e.message)
            response = Response.json({"error": f"{e.code}: {e.message}"}, 500)
        else:
            self.plugin.log.error(f"{method} {path} failed: {e!r}", traceback.format_exc())
            response = None
        if st.closed:
            return
        try:
            if response is not None and not st.head_sent:
                await self._send_response(st, response, method)
            else:
                await self._abort(st, "plugin_error", f"{self.plugin.id} failed: {e}")
        except (StreamClosed, ConnectionError, OSError):
            pass

    async def _handle_websocket(self, st, route, req):
        ws = WebSocket(req, self.plugin.max_ws_message)
        try:
            result = await self.plugin._call_handler(route.handler, ws)
        except WebSocketClosed:
            result = None
        except (asyncio.CancelledError, StreamClosed):
            raise
        except Exception as e:
            self.plugin.log.error(f"WebSocket {req.path} failed: {e!r}", traceback.format_exc())
            if ws.accepted and not st.closed:
                await ws._close(1011, "internal error")
                return
            raise
        if ws.accepted:
            if result is not None:
                self.plugin.log.warn(f"WebSocket {req.path}: the handler's return value is "
                                     "ignored after accept")
            if not st.closed and ws.close_code is None and st.ws_close is None:
                await ws._close(1000, "")
        elif not ws.refused and not st.closed:
            response = _to_response(result) if result is not None else Response.json(
                {"error": "WebSocket refused"}, 403)
            await self._send_response(st, response, "GET")


async def _close_iterable(source):
    close = getattr(source, "aclose", None) or getattr(source, "close", None)
    if close is None:
        return
    try:
        result = close()
        if inspect.isawaitable(result):
            await result
    except (Exception, asyncio.CancelledError):
        pass


def _is_event_stream(headers):
    return any(n.lower() == "content-type" and v.lower().startswith("text/event-stream")
               for n, v in headers)


def _subpath(path, route):
    """The path after the plugin's route ("" or "/..."), or None for a path outside it."""
    if path == route or path.startswith(route + "/"):
        return path[len(route):]
    return None


def _find_route(routes, subpath, method, upgrade):
    """(route, params) for the request, or (None, the response that says why not)."""
    if subpath is None:
        return None, Response.json({"error": "not found"}, 404)
    subpath = subpath or "/"
    matched, allowed = False, set()
    for route in routes:
        params = route.match(subpath)
        if params is None:
            continue
        matched = True
        if route.websocket:
            if upgrade == "websocket" and method == "GET":
                return route, params
        elif upgrade is None:
            if method in route.methods or (method == "HEAD" and "GET" in route.methods):
                return route, params
            allowed |= route.methods
    if not matched:
        return None, Response.json({"error": "not found"}, 404)
    if upgrade is not None:
        return None, Response.json({"error": "this route does not take WebSockets"}, 400)
    if allowed:
        allowed |= {"HEAD"} if "GET" in allowed else set()
        return None, Response.json({"error": "method not allowed"}, 405,
                                   [["allow", ", ".join(sorted(allowed))]])
    return None, Response.json({"error": "this route is a WebSocket: connect with a WebSocket "
                                         "client"}, 426, [["upgrade", "websocket"]])


def _range(low, high):
    return str(low) if low == high else f"{low}..={high}"


# --- Parsing what the host sends ----------------------------------------------------------------

def _require(cond, reason, rid):
    if not cond:
        raise _BadMessage(reason, rid)


def _parse(data):
    """(type, request_id, payload) of one JSON frame; _BadMessage when it is not valid."""
    try:
        obj = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _BadMessage(f"frame is not UTF-8 JSON: {e}") from None
    if not isinstance(obj, dict):
        raise _BadMessage("frame is not a JSON object")
    rid = obj.get("request_id")
    if rid is not None and not _is_uint(rid):
        raise _BadMessage("request_id must be null or an unsigned integer")
    type_name = obj.get("type")
    _require(isinstance(type_name, str), 'message has no string "type"', rid)
    _require(_is_uint(obj.get("timestamp", 0)), "timestamp must be an unsigned integer", rid)
    payload = obj.get("payload")
    payload = {} if payload is None else payload
    _require(isinstance(payload, dict), f"{type_name}'s payload must be an object", rid)
    return type_name, rid, _check_payload(type_name, dict(payload), rid)


def _check_payload(type_name, p, rid):
    """Checks the payloads this SDK reads, filling in defaults."""
    def strings(*fields):
        for field in fields:
            _require(isinstance(p.get(field), str), f"{type_name}.{field} must be a string", rid)

    if type_name == "init":
        proto = p.get("protocol")
        _require(isinstance(proto, dict) and _is_uint(proto.get("min"), 32)
                 and _is_uint(proto.get("max"), 32), "init.protocol must be {min, max}", rid)
        strings(*_INIT_FIELDS)
        if p.get("settings") is None:
            p["settings"] = {}
        _require(isinstance(p["settings"], dict), "init.settings must be an object", rid)
    elif type_name == "http_request":
        strings("method", "path")
        p.setdefault("query", "")
        _require(isinstance(p["query"], str), "http_request.query must be a string", rid)
        if p.get("headers") is None:
            p["headers"] = []
        headers = p["headers"]
        _require(isinstance(headers, list) and all(
            isinstance(h, list) and len(h) == 2 and all(isinstance(x, str) for x in h)
            for h in headers), "http_request.headers must be [name, value] string pairs", rid)
        for field in ("body", "body_base64", "upgrade"):
            _require(p.get(field) is None or isinstance(p[field], str),
                     f"http_request.{field} must be a string", rid)
        _require(p.get("end_stream") is None or isinstance(p["end_stream"], bool),
                 "http_request.end_stream must be a boolean", rid)
    elif type_name == "kv_result":
        _require(p.get("value") is None or isinstance(p["value"], str), "bad kv_result.value", rid)
        _require(p.get("existed") is None or isinstance(p["existed"], bool),
                 "bad kv_result.existed", rid)
        keys = p.get("keys")
        _require(keys is None or (isinstance(keys, list) and all(isinstance(k, str) for k in keys)),
                 "bad kv_result.keys", rid)
    elif type_name == "error":
        strings("code", "message")
    elif type_name == "credit":
        _require(_is_uint(p.get("bytes"), 32), "credit.bytes must be an unsigned integer", rid)
        _require(rid is not None, "credit needs the stream's request_id", rid)
    elif type_name == "ws_close":
        _require(_is_uint(p.get("code"), 16), "ws_close.code must be an unsigned integer", rid)
        p.setdefault("reason", "")
        _require(isinstance(p["reason"], str), "ws_close.reason must be a string", rid)
    elif type_name == "settings":
        _require(isinstance(p.get("settings"), dict), "settings.settings must be an object", rid)
    return p


def _kv_result_problem(op, result):
    if op == "list" and not isinstance(result.get("keys"), list):
        return "a list reply has no keys"
    if op == "delete" and not isinstance(result.get("existed"), bool):
        return "a delete reply has no existed"
    return None
