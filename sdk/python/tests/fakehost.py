"""A host for tests: plays Toru's side of docs/protocol.md over a real socket.

It runs a plugin either in this process (`Plugin.serve` on one end of a `socket.socketpair()`)
or as a real process (spawned with TORU_SOCKET_PATH in a temp dir), answers the plugin's KV
requests from a dict, collects its logs, and checks the plugin's side of flow control: a plugin
that sends more data than the window allows fails the test.
"""

import asyncio
import collections
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile

WAIT = 10.0  # every wait ends after this long, with a message saying what was expected
DATA_BIT = 0x80000000
END, TEXT, MORE = 0x01, 0x02, 0x04
WINDOW = 256 * 1024
CLOSED = {"type": "closed"}  # the "reply" to every request still open when the plugin closes
HERE = os.path.dirname(os.path.abspath(__file__))
SDK = os.path.dirname(HERE)
REPO = os.path.dirname(os.path.dirname(SDK))

sys.path.insert(0, SDK)


async def within(what, awaitable, timeout=WAIT):
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"timed out after {timeout} s waiting for {what}") from None


class Stream:
    """What the host knows of one request's stream."""

    def __init__(self):
        self.head = asyncio.get_running_loop().create_future()
        self.data = asyncio.Queue()  # (flags, bytes) from the plugin
        self.window = WINDOW  # what the host may still send
        self.credit = asyncio.Event()
        self.received = 0  # bytes from the plugin not yet credited back
        self.received_total = 0
        self.credited_by_host = 0
        self.ws_close = asyncio.get_running_loop().create_future()


class FakeHost:
    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.next_id = 1
        self.protocol = None
        self.replies = {}  # request id -> future of the reply message
        self.streams = collections.defaultdict(Stream)
        self.kv = {}
        self.kv_ids = []
        self.kv_fail = None  # (code, message): every kv request fails so
        self.kv_hold = None  # an Event: kv answers wait for it
        self.logs = asyncio.Queue()
        self.unsolicited = asyncio.Queue()  # replies with a null id, errors for unknown ids
        self.auto_credit = True  # credit data back as it arrives
        self.violations = []
        self.order = []  # ("data", stream, flags) and ("ws_close", stream), as they arrived
        self.closed = asyncio.get_running_loop().create_future()
        self.process = None
        self.plugin_task = None
        self._reading = asyncio.ensure_future(self._read_loop())

    # Starting ------------------------------------------------------------------------------

    @classmethod
    async def serve(cls, plugin):
        """Runs `plugin` in this process over a socketpair."""
        ours, theirs = socket.socketpair()
        task = asyncio.ensure_future(plugin.serve(theirs))
        reader, writer = await asyncio.open_connection(sock=ours)
        host = cls(reader, writer)
        host.plugin_task = task
        return host

    @classmethod
    async def spawn(cls, argv, env=None, cwd=None):
        """Starts a plugin process with a socket in a temp dir and connects to it."""
        tmp = tempfile.mkdtemp(prefix="toru-py-")
        path = os.path.join(tmp, "p.sock")
        full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONUNBUFFERED": "1",
                    "TORU_SOCKET_PATH": path}
        full_env.update(env or {})
        process = await asyncio.create_subprocess_exec(
            *argv, env=full_env, cwd=cwd, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        stderr = []

        async def collect():
            async for line in process.stderr:
                stderr.append(line.decode("utf-8", "replace"))

        collecting = asyncio.ensure_future(collect())

        async def connect():
            while True:
                try:
                    return await asyncio.open_unix_connection(path)
                except (FileNotFoundError, ConnectionRefusedError):
                    if process.returncode is not None:
                        raise AssertionError(f"the plugin exited ({process.returncode}) before "
                                             f"listening: {''.join(stderr)}") from None
                    await asyncio.sleep(0.005)  # polling a socket path: there is no event

        reader, writer = await within("the plugin's socket to accept", connect())
        host = cls(reader, writer)
        host.process = process
        host.stderr = stderr
        host._collecting = collecting
        return host

    async def exit_code(self):
        if self.plugin_task is not None:
            return await within("the plugin to finish", self.plugin_task)
        code = await within("the plugin to exit", self.process.wait())
        await within("the plugin's stderr to close", self._collecting)
        return code

    async def close(self):
        """Ends the connection (the plugin reads EOF) and cleans up."""
        try:
            self.writer.close()
        except Exception:
            pass
        self._reading.cancel()
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        if self.plugin_task is not None and not self.plugin_task.done():
            self.plugin_task.cancel()
            try:
                await self.plugin_task
            except (asyncio.CancelledError, Exception):
                pass

    # Sending -------------------------------------------------------------------------------

    def send(self, type_name, rid, payload):
        data = json.dumps({"type": type_name, "timestamp": 0, "request_id": rid,
                           "payload": payload}).encode()
        self.writer.write(struct.pack(">I", len(data)) + data)

    def send_raw(self, data):
        self.writer.write(data)

    def send_data(self, sid, data, flags=0, check_window=True):
        st = self.streams[sid]
        if check_window:
            assert len(data) <= st.window, f"the host's window on {sid} is {st.window}"
        st.window -= len(data)
        self.writer.write(struct.pack(">IQB", (9 + len(data)) | DATA_BIT, sid, flags) + data)

    async def send_body(self, sid, data, chunk=64 * 1024):
        """Sends `data` as the request body, waiting for the plugin's credit; END at the end."""
        st = self.streams[sid]
        view = memoryview(data)
        while len(view):
            while st.window <= 0:
                st.credit.clear()
                await within(f"credit from the plugin on stream {sid}", st.credit.wait())
            n = min(len(view), chunk, st.window)
            self.send_data(sid, bytes(view[:n]))
            view = view[n:]
            await self.writer.drain()
        self.send_data(sid, b"", END)

    def request(self, type_name, payload):
        rid = self.next_id
        self.next_id += 1
        self.replies[rid] = asyncio.get_running_loop().create_future()
        self.send(type_name, rid, payload)
        return rid

    async def reply(self, rid, what=None):
        msg = await within(what or f"the reply to request {rid}", self.replies[rid])
        if msg is CLOSED:
            raise AssertionError(f"the plugin closed the connection before answering {rid}")
        return msg

    def answered(self, rid):
        """Whether the plugin has answered request `rid` (so far)."""
        future = self.replies[rid]
        return future.done() and future.result() is not CLOSED

    async def init(self, low=1, high=2, settings=None, instance="inst-1"):
        rid = self.request("init", {
            "protocol": {"min": low, "max": high}, "instance_id": instance,
            "plugin_id": "test", "socket_path": "/s", "log_path": "/l",
            "settings": settings or {}})
        reply = await self.reply(rid, "the reply to init")
        if reply["type"] == "ready":
            self.protocol = reply["payload"]["protocol_version"]
        return reply

    def http(self, method, path, query="", headers=(), body=None, upgrade=None, end_stream=None):
        """Sends an http_request. Version 1: `body` travels in the message. Version 2: the
        message says whether a body follows (`end_stream`); send it with send_body."""
        payload = {"method": method, "path": path, "query": query,
                   "headers": [list(h) for h in headers]}
        if self.protocol == 2:
            payload["end_stream"] = (body is None) if end_stream is None else end_stream
            if upgrade:
                payload["upgrade"] = upgrade
                payload["end_stream"] = True
        elif body is not None:
            try:
                payload["body"] = body.decode("utf-8")
            except UnicodeDecodeError:
                import base64
                payload["body_base64"] = base64.b64encode(body).decode()
        rid = self.request("http_request", payload)
        if self.protocol == 2 and body is not None and end_stream is None:
            asyncio.ensure_future(self.send_body(rid, body))
        return rid

    async def response(self, rid):
        """(status, headers dict, body bytes) of a whole response, either version."""
        head = await self.head(rid)
        p = head["payload"]
        headers = {n.lower(): v for n, v in p.get("headers", [])}
        if self.protocol == 1 or head["type"] == "error":
            if head["type"] == "error":
                return ("error", p, b"")
            body = p.get("body")
            if body is not None:
                return p["status"], headers, body.encode("utf-8")
            import base64
            return p["status"], headers, base64.b64decode(p.get("body_base64") or "")
        if p.get("end_stream"):
            return p["status"], headers, b""
        return p["status"], headers, await self.body(rid)

    async def head(self, rid):
        return await self.reply(rid, f"the response head of {rid}")

    async def chunk(self, rid):
        """The next (flags, data) frame of stream `rid`."""
        return await within(f"a data frame on stream {rid}", self.streams[rid].data.get())

    def after_end(self, sid):
        """What came on stream `sid` after its END or ws_close (nothing may)."""
        ends = [i for i, e in enumerate(self.order) if e[1] == sid
                and (e[0] == "ws_close" or e[2] & END)]
        if not ends:
            return None
        return [e for e in self.order[ends[0] + 1:] if e[1] == sid]

    async def body(self, rid):
        parts = []
        while True:
            flags, data = await self.chunk(rid)
            parts.append(data)
            if flags & END:
                return b"".join(parts)

    async def log(self, what="a log message"):
        return await within(what, self.logs.get())

    def cancel(self, rid):
        self.send("cancel", rid, {})

    def credit(self, sid, n):
        self.send("credit", sid, {"bytes": n})

    # Reading -------------------------------------------------------------------------------

    async def _read_loop(self):
        try:
            while True:
                header = await self.reader.readexactly(4)
                (word,) = struct.unpack(">I", header)
                if self.protocol == 2 and word & DATA_BIT:
                    body = await self.reader.readexactly(word & 0x7FFFFFFF)
                    sid, flags = struct.unpack_from(">QB", body)
                    self._on_data(sid, flags, body[9:])
                    continue
                body = await self.reader.readexactly(word)
                self._on_message(json.loads(body))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if not self.closed.done():
                self.closed.set_result(True)
            for future in self.replies.values():
                if not future.done():
                    future.set_result(CLOSED)

    def _on_data(self, sid, flags, data):
        st = self.streams[sid]
        st.received += len(data)
        st.received_total += len(data)
        if st.received > WINDOW:
            self.violations.append(f"stream {sid}: {st.received} bytes past the last credit")
        st.data.put_nowait((flags, data))
        self.order.append(("data", sid, flags))
        if self.auto_credit and st.received >= WINDOW // 2:
            self.give_credit(sid)

    def give_credit(self, sid):
        st = self.streams[sid]
        if st.received:
            self.credit(sid, st.received)
            st.received = 0

    def _on_message(self, msg):
        t, rid, p = msg["type"], msg.get("request_id"), msg.get("payload", {})
        if t == "kv":
            asyncio.ensure_future(self._answer_kv(rid, p))
        elif t == "log":
            self.logs.put_nowait(p)
        elif t == "credit":
            st = self.streams[rid]
            st.window += p["bytes"]
            st.credited_by_host += p["bytes"]
            st.credit.set()
        elif t == "ws_close":
            st = self.streams[rid]
            self.order.append(("ws_close", rid))
            if not st.ws_close.done():
                st.ws_close.set_result(p)
        elif rid in self.replies and not self.replies[rid].done():
            self.replies[rid].set_result(msg)
        else:
            self.unsolicited.put_nowait(msg)

    async def _answer_kv(self, rid, p):
        self.kv_ids.append(rid)
        if self.kv_hold is not None:
            await self.kv_hold.wait()
        if self.kv_fail:
            self.send("error", rid, {"code": self.kv_fail[0], "message": self.kv_fail[1]})
            return
        op = p["op"]
        result = {}
        if op == "get":
            if p["key"] in self.kv:
                result["value"] = self.kv[p["key"]]
        elif op == "set":
            self.kv[p["key"]] = p["value"]
        elif op == "delete":
            result["existed"] = self.kv.pop(p["key"], None) is not None
        elif op == "list":
            limit = min(p.get("limit", 1000), 1000)
            keys = sorted(k for k in self.kv if k.startswith(p.get("prefix", ""))
                          and (p.get("after") is None or k > p["after"]))
            result["keys"] = keys[:limit]
        self.send("kv_result", rid, result)
