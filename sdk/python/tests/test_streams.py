"""Protocol 2 in the SDK: bodies as data frames, flow control both ways, streamed responses,
the writer, server-sent events and WebSockets; and what the same handlers do with a version 1
host."""

import asyncio
import hashlib
import json
import threading
import unittest

from fakehost import END, MORE, TEXT, WINDOW, FakeHost, within

import toru_plugin
from toru_plugin import Event, Plugin, Response, format_event, sse


async def _until(cond):
    while not cond():
        await asyncio.sleep(0.005)


class Case(unittest.IsolatedAsyncioTestCase):
    async def start(self, plugin, high=2):
        host = await FakeHost.serve(plugin)
        self.addAsyncCleanup(host.close)
        reply = await host.init(1, high)
        self.assertEqual(reply["payload"], {"protocol_version": high})
        return host

    def assertNoViolations(self, host):
        self.assertEqual(host.violations, [], "the plugin sent more than its window")


class Bodies(Case):
    def plugin(self):
        plugin = Plugin("b")
        self.chunks_seen = []

        @plugin.post("/sha256")
        async def digest(req):
            h = hashlib.sha256()
            async for chunk in req.body:
                self.chunks_seen.append(len(chunk))
                h.update(chunk)
            return h.hexdigest()

        @plugin.post("/sync-sha256")
        def digest_sync(req):
            h = hashlib.sha256()
            for chunk in req.body:
                h.update(chunk)
            return h.hexdigest()

        @plugin.post("/early")
        async def early(req):
            return "answered before the body ended"

        @plugin.post("/limited")
        async def limited(req):
            return {"n": len(await req.read_all(limit=100_000))}

        return plugin

    async def test_a_large_body_streams_in_with_credit_given_back(self):
        host = await self.start(self.plugin())
        data = bytes(range(256)) * 8192  # 2 MiB: eight windows
        for path in ("/b/sha256", "/b/sync-sha256"):
            status, headers, body = await host.response(host.http("POST", path, body=data))
            self.assertEqual((status, body.decode()), (200, hashlib.sha256(data).hexdigest()))
        # The host could only send it all because the plugin gave credit back as it read.
        self.assertGreater(len(self.chunks_seen), 8)
        self.assertNoViolations(host)

    async def test_the_plugin_credits_only_what_its_handler_consumed(self):
        plugin = Plugin("b")
        gate = asyncio.Event()

        @plugin.post("/")
        async def slow_reader(req):
            await gate.wait()
            return {"n": len(await req.read_all())}

        host = await self.start(plugin)
        rid = host.http("POST", "/b/", end_stream=False)
        host.send_data(rid, b"x" * WINDOW)  # the whole window, unread
        await host.writer.drain()
        ping = host.request("ping", {})
        await host.reply(ping)  # the data frame was read before the ping
        self.assertEqual(host.streams[rid].credited_by_host, 0, "no credit before reading")
        gate.set()
        await within("credit", _until(lambda: host.streams[rid].credited_by_host >= WINDOW // 2))
        host.send_data(rid, b"y" * 10, END)
        self.assertEqual(json.loads((await host.response(rid))[2]), {"n": WINDOW + 10})

    async def test_more_data_than_the_window_aborts_the_stream(self):
        plugin = Plugin("b")

        @plugin.post("/")
        async def never_reads(req):
            await asyncio.sleep(60)

        host = await self.start(plugin)
        rid = host.http("POST", "/b/", end_stream=False)
        host.send_data(rid, b"x" * WINDOW)
        host.send_data(rid, b"x", check_window=False)
        reply = await host.head(rid)
        self.assertEqual((reply["type"], reply["payload"]["code"]), ("error", "bad_request"))
        self.assertEqual((await host.log())["level"], "error")
        ping = host.request("ping", {})
        self.assertEqual((await host.reply(ping))["type"], "pong", "the connection goes on")

    async def test_an_answer_before_the_body_ends_and_a_body_limit(self):
        host = await self.start(self.plugin())
        rid = host.http("POST", "/b/early", end_stream=False)
        host.send_data(rid, b"part")
        status, _, body = await host.response(rid)
        self.assertEqual((status, body), (200, b"answered before the body ended"))
        host.send_data(rid, b"late", END)  # after the stream's end: ignored
        status, _, _ = await host.response(host.http("POST", "/b/limited", body=b"z" * 200_000))
        self.assertEqual(status, 413)
        status, _, body = await host.response(host.http("POST", "/b/limited", body=b"z" * 1000))
        self.assertEqual(json.loads(body), {"n": 1000})


class Responses(Case):
    def plugin(self):
        plugin = Plugin("s")

        @plugin.get("/bytes")
        async def many_bytes(req):
            n = int(req.args["n"])

            async def gen():
                sent = 0
                while sent < n:
                    size = min(100_000, n - sent)
                    yield bytes((sent + i) % 251 for i in range(size))
                    sent += size
            return Response(gen(), content_type="application/octet-stream",
                            headers=[["content-length", str(n)]])

        @plugin.get("/big")
        def big(req):
            return b"b" * (WINDOW * 2 + 7)  # buffered, larger than the window

        @plugin.get("/gen")
        async def agen(req):  # an async generator handler streams its chunks
            for word in ("one ", "two ", "three"):
                yield word

        @plugin.get("/sync-gen")
        def sync_gen(req):
            return (f"{i}," for i in range(3))

        @plugin.get("/writer")
        async def writer(req):
            w = req.respond(201, content_type="text/plain")
            for i in range(3):
                await w.write(f"part {i}\n")
            await w.close()

        @plugin.get("/sync-writer")
        def sync_writer(req):
            w = req.respond(200, {"x-kind": "sync"})
            w.write(b"a")
            w.write("b")
            # left open: the SDK closes it

        @plugin.get("/empty")
        def empty(req):
            return Response(b"", 200, content_type="text/plain")

        @plugin.get("/fails-midway")
        async def fails(req):
            async def gen():
                yield b"first"
                raise RuntimeError("the source broke")
            return Response(gen())

        return plugin

    async def test_a_buffered_answer_is_a_head_and_one_data_frame(self):
        host = await self.start(Plugin("x"))
        host2 = await self.start(self.plugin())
        rid = host2.http("GET", "/s/nope")
        head = await host2.head(rid)
        self.assertEqual(head["payload"]["end_stream"], False)
        self.assertNotIn("body", head["payload"])
        flags, data = await host2.chunk(rid)
        self.assertEqual((flags, data), (END, b'{"error": "not found"}'))
        rid = host2.http("GET", "/s/empty")
        head = await host2.head(rid)
        self.assertEqual(head["payload"]["end_stream"], True)
        await host.close()

    async def test_streamed_bodies_respect_the_window(self):
        host = await self.start(self.plugin())
        host.auto_credit = False
        rid = host.http("GET", "/s/bytes", query="n=1000000")
        head = await host.head(rid)
        headers = dict(head["payload"]["headers"])
        self.assertEqual(headers["content-length"], "1000000")
        received = 0
        while received < WINDOW:
            received += len((await host.chunk(rid))[1])
        self.assertEqual(received, WINDOW, "exactly one window, then the plugin waits")
        ping = host.request("ping", {})
        await host.reply(ping)
        self.assertTrue(host.streams[rid].data.empty(), "nothing past the window")
        host.auto_credit = True
        host.give_credit(rid)
        body = await host.body(rid)
        whole = bytes(i % 251 for i in range(1_000_000))
        self.assertEqual(len(body) + WINDOW, 1_000_000)
        self.assertEqual(body, whole[WINDOW:])
        self.assertNoViolations(host)

    async def test_generators_writers_and_big_buffers(self):
        host = await self.start(self.plugin())
        cases = {
            "/s/big": (200, b"b" * (WINDOW * 2 + 7)),
            "/s/gen": (200, b"one two three"),
            "/s/sync-gen": (200, b"0,1,2,"),
            "/s/writer": (201, b"part 0\npart 1\npart 2\n"),
            "/s/sync-writer": (200, b"ab"),
        }
        for path, expected in cases.items():
            status, headers, body = await host.response(host.http("GET", path))
            self.assertEqual((status, body), expected, path)
        self.assertNoViolations(host)

    async def test_a_source_that_fails_after_the_head_aborts_the_stream(self):
        host = await self.start(self.plugin())
        rid = host.http("GET", "/s/fails-midway")
        head = await host.head(rid)
        self.assertEqual(head["payload"]["status"], 200)
        self.assertEqual(await host.chunk(rid), (0, b"first"))
        error = await within("the abort", host.unsolicited.get())
        self.assertEqual((error["type"], error["request_id"], error["payload"]["code"]),
                         ("error", rid, "plugin_error"))
        self.assertEqual((await host.log())["level"], "error")

    async def test_cancel_stops_a_producer_waiting_for_credit(self):
        plugin = Plugin("c")
        stopped = asyncio.Event()

        @plugin.get("/")
        async def forever(req):
            async def gen():
                try:
                    while True:
                        yield b"z" * 65536
                finally:
                    stopped.set()
            return Response(gen())

        host = await self.start(plugin)
        host.auto_credit = False
        rid = host.http("GET", "/c/")
        await host.head(rid)
        await host.chunk(rid)
        host.cancel(rid)
        await within("the generator to be closed", stopped.wait())
        ping = host.request("ping", {})
        await host.reply(ping)
        sent = host.streams[rid].received_total
        self.assertLessEqual(sent, WINDOW)
        self.assertNoViolations(host)

    async def test_a_writer_past_what_version_1_can_carry_is_a_plugin_error(self):
        plugin = Plugin("w")

        @plugin.get("/")
        async def huge(req):
            w = req.respond()
            for _ in range(13):
                await w.write(b"h" * (1024 * 1024))

        host = await self.start(plugin, high=1)
        reply = await host.head(host.http("GET", "/w/"))
        self.assertEqual((reply["type"], reply["payload"]["code"]), ("error", "plugin_error"))
        self.assertIn("12 MiB", reply["payload"]["message"])

    async def test_version_1_gets_the_same_responses_whole(self):
        host = await self.start(self.plugin(), high=1)
        for path, expected in {"/s/gen": b"one two three", "/s/writer": b"part 0\npart 1\npart 2\n",
                               "/s/sync-writer": b"ab"}.items():
            self.assertEqual((await host.response(host.http("GET", path)))[2], expected, path)
        status, headers, body = await host.response(host.http("GET", "/s/bytes", query="n=300000"))
        self.assertEqual(body, bytes(i % 251 for i in range(300_000)))
        self.assertNotIn("content-length", headers, "the host frames a version 1 body itself")


class ServerSentEvents(Case):
    async def test_events_are_formatted_and_flushed_one_by_one(self):
        plugin = Plugin("e")
        release = asyncio.Event()

        @plugin.get("/")
        def events(req):
            async def source():
                yield 1
                await release.wait()
                yield Event({"a": 1}, event="update", id="7")
                yield "two\nlines"
            return sse(source())

        host = await self.start(plugin)
        rid = host.http("GET", "/e/")
        head = await host.head(rid)
        headers = dict(head["payload"]["headers"])
        self.assertEqual(headers["content-type"], "text/event-stream")
        self.assertEqual(headers["cache-control"], "no-cache")
        self.assertEqual(await host.chunk(rid), (0, b"data: 1\n\n"), "the first event at once")
        release.set()
        self.assertEqual(await host.chunk(rid), (0, b'event: update\nid: 7\ndata: {"a": 1}\n\n'))
        self.assertEqual(await host.chunk(rid), (0, b"data: two\ndata: lines\n\n"))
        self.assertEqual(await host.chunk(rid), (END, b""))

    async def test_a_quiet_stream_sends_keep_alive_comments(self):
        plugin = Plugin("e")

        @plugin.get("/")
        def quiet(req):
            async def source():
                await asyncio.sleep(60)
                yield "never"
            return sse(source(), keepalive=0.05)

        host = await self.start(plugin)
        rid = host.http("GET", "/e/")
        await host.head(rid)
        self.assertEqual(await host.chunk(rid), (0, b": keep-alive\n\n"))
        self.assertEqual(await host.chunk(rid), (0, b": keep-alive\n\n"))

    def test_format_event(self):
        self.assertEqual(format_event("x", retry=100, comment="hi"), b": hi\nretry: 100\ndata: x\n\n")
        self.assertEqual(format_event(b"\xff"), "data: \ufffd\n\n".encode())
        with self.assertRaises(ValueError):
            format_event("x", event="a\nb")


class WebSockets(Case):
    def plugin(self, **kw):
        plugin = Plugin("w", **kw)
        self.closed_with = []

        @plugin.websocket("/echo")
        async def echo(ws):
            try:
                async for message in ws:
                    await ws.send(message.upper() if isinstance(message, str) else message)
            finally:
                self.closed_with.append((ws.close_code, ws.close_reason))

        @plugin.websocket("/sync")
        def sync_echo(ws):
            for message in ws:
                ws.send(message)
            self.closed_with.append((ws.close_code, ws.close_reason))

        @plugin.websocket("/chat")
        async def chat(ws):
            offered = ws.request.header("sec-websocket-protocol", "")
            if "chat" not in offered:
                return Response.json({"error": "say chat"}, 403)
            await ws.accept(subprotocol="chat")
            await ws.send("welcome")
            await ws.close(4001, "done here")

        @plugin.websocket("/boom")
        async def boom(ws):
            await ws.receive()
            raise RuntimeError("handler bug")

        @plugin.websocket("/big")
        async def big(ws):
            await ws.send(b"m" * (WINDOW + 1000))
            await ws.send("é" * 40000)
            await ws.receive()

        return plugin

    async def open(self, host, path, headers=()):
        rid = host.http("GET", path, headers=headers, upgrade="websocket")
        head = await host.head(rid)
        return rid, head

    async def test_text_is_upper_cased_and_binary_echoed(self):
        host = await self.start(self.plugin())
        for path in ("/w/echo", "/w/sync"):
            rid, head = await self.open(host, path)
            self.assertEqual((head["payload"]["status"], head["payload"]["end_stream"]),
                             (101, False))
            host.send_data(rid, b"hello", TEXT)
            self.assertEqual(await host.chunk(rid),
                             (TEXT, b"HELLO" if path == "/w/echo" else b"hello"))
            host.send_data(rid, b"\x00\x01", 0)
            self.assertEqual(await host.chunk(rid), (0, b"\x00\x01"))
            host.send("ws_close", rid, {"code": 1000, "reason": "bye"})
            await within("the handler to end", _until(lambda: self.closed_with))
            self.assertEqual(self.closed_with.pop(), (1000, "bye"))
            ping = host.request("ping", {})
            await host.reply(ping)
            self.assertFalse(host.streams[rid].ws_close.done(), "nobody answers ws_close")

    async def test_fragments_are_assembled_and_large_messages_split(self):
        host = await self.start(self.plugin())
        rid, _ = await self.open(host, "/w/echo")
        host.send_data(rid, b"frag", TEXT | MORE)
        host.send_data(rid, b"ments", TEXT)
        self.assertEqual(await host.chunk(rid), (TEXT, b"FRAGMENTS"))

        rid, _ = await self.open(host, "/w/big")
        frames = []
        while not frames or frames[-1][0] & MORE:
            frames.append(await host.chunk(rid))
        self.assertTrue(all(f == MORE for f, _ in frames[:-1]), [f for f, _ in frames])
        self.assertEqual(b"".join(d for _, d in frames), b"m" * (WINDOW + 1000))
        text = []
        while not text or text[-1][0] & MORE:
            text.append(await host.chunk(rid))
        self.assertTrue(all(f & TEXT for f, _ in text))
        self.assertEqual(b"".join(d for _, d in text).decode(), "é" * 40000)
        self.assertNoViolations(host)

    async def test_accept_with_a_subprotocol_refuse_and_close_codes(self):
        host = await self.start(self.plugin())
        rid, head = await self.open(host, "/w/chat")
        self.assertEqual(head["payload"]["status"], 403)
        self.assertEqual(await host.chunk(rid), (END, b'{"error": "say chat"}'))
        rid, head = await self.open(host, "/w/chat", [("sec-websocket-protocol", "chat, x")])
        self.assertEqual(head["payload"]["headers"], [["sec-websocket-protocol", "chat"]])
        self.assertEqual(await host.chunk(rid), (TEXT, b"welcome"))
        close = await within("ws_close", host.streams[rid].ws_close)
        self.assertEqual(close, {"code": 4001, "reason": "done here"})

    async def test_a_failing_handler_closes_with_1011(self):
        host = await self.start(self.plugin())
        rid, _ = await self.open(host, "/w/boom")
        host.send_data(rid, b"x", TEXT)
        close = await within("ws_close", host.streams[rid].ws_close)
        self.assertEqual(close["code"], 1011)
        self.assertEqual((await host.log())["level"], "error")

    async def test_a_message_over_the_limit_closes_with_1009(self):
        host = await self.start(self.plugin(max_ws_message=1000))
        rid, _ = await self.open(host, "/w/echo")
        host.send_data(rid, b"a" * 600, MORE)
        host.send_data(rid, b"a" * 600, 0)
        close = await within("ws_close", host.streams[rid].ws_close)
        self.assertEqual(close["code"], 1009)

    async def test_invalid_utf8_text_closes_with_1007(self):
        host = await self.start(self.plugin())
        rid, _ = await self.open(host, "/w/echo")
        host.send_data(rid, b"\xff", TEXT)
        self.assertEqual((await within("ws_close", host.streams[rid].ws_close))["code"], 1007)

    async def test_sending_waits_for_credit(self):
        plugin = Plugin("w")
        sent = []

        @plugin.websocket("/flood")
        async def flood(ws):
            for i in range(10):
                await ws.send(b"f" * 65536)
                sent.append(i)
            await ws.receive()

        host = await self.start(plugin)
        host.auto_credit = False
        rid, _ = await self.open(host, "/w/flood")
        for _ in range(4):
            await host.chunk(rid)
        ping = host.request("ping", {})
        await host.reply(ping)
        self.assertEqual(len(sent), 4, "a window's worth, then the sender waits")
        host.give_credit(rid)
        host.auto_credit = True
        for _ in range(6):
            await host.chunk(rid)
        self.assertNoViolations(host)

    async def test_the_client_going_away_cancels_the_handler(self):
        host = await self.start(self.plugin())
        rid, _ = await self.open(host, "/w/echo")
        host.cancel(rid)
        await within("the handler to end", _until(lambda: self.closed_with))
        self.assertEqual(self.closed_with, [(None, None)])

    async def test_upgrades_to_a_plain_route_are_refused(self):
        plugin = self.plugin()
        plugin.get("/plain")(lambda req: "plain")
        host = await self.start(plugin)
        _, head = await self.open(host, "/w/plain")
        self.assertEqual(head["payload"]["status"], 400)
        _, head = await self.open(host, "/w/nothing")
        self.assertEqual(head["payload"]["status"], 404)


class Shutdown(Case):
    """`shutdown` ends the streams that would never end by themselves at once (WebSockets get
    `ws_close` 1001, event streams their END), lets other work finish within the grace, then
    the plugin exits 0 (docs/protocol.md section 7)."""

    def plugin(self):
        plugin = Plugin("d")
        self.seen = []  # what the handlers saw, in order
        self.release = asyncio.Event()  # lets the download and the slow request finish

        @plugin.websocket("/ws")
        async def ws_async(ws):
            try:
                async for message in ws:
                    await ws.send(message)
            finally:
                self.seen.append(("async ws", ws.close_code, ws.close_reason))

        @plugin.websocket("/sync-ws")
        def ws_sync(ws):
            try:
                ws.receive()
            except toru_plugin.WebSocketClosed as e:
                self.seen.append(("sync ws", e.code, e.reason))

        @plugin.websocket("/flood")
        async def flood(ws):
            try:
                while True:
                    await ws.send(b"f" * 65536)
            except toru_plugin.WebSocketClosed as e:
                self.seen.append(("flood", e.code))

        @plugin.get("/events")
        def events(req):
            async def source():
                try:
                    yield 1
                    await asyncio.sleep(60)
                    yield 2
                finally:
                    self.seen.append("events closed")
            return sse(source(), keepalive=60)

        @plugin.get("/writer-events")
        async def writer_events(req):
            w = req.respond(content_type="text/event-stream")
            try:
                await w.send_event("first")
                await asyncio.sleep(60)
                await w.send_event("never")
            except asyncio.CancelledError:
                self.seen.append("writer cancelled")
                raise

        self.tick = threading.Event()  # lets the plain handler below write again

        @plugin.get("/sync-writer-events")
        def sync_writer_events(req):
            w = req.respond(content_type="text/event-stream; charset=utf-8")
            w.send_event("first")
            self.tick.wait(10)
            try:
                w.send_event("never")
            except toru_plugin.Cancelled:
                self.seen.append("sync writer cancelled")

        @plugin.get("/download")
        async def download(req):
            async def gen():
                yield b"part 1,"
                await self.release.wait()
                yield b"part 2"
            return Response(gen(), content_type="application/octet-stream")

        @plugin.get("/slow")
        async def slow(req):
            await self.release.wait()
            return {"done": True}

        return plugin

    async def open_ws(self, host, path):
        rid = host.http("GET", path, upgrade="websocket")
        self.assertEqual((await host.head(rid))["payload"]["status"], 101)
        return rid

    async def test_websockets_get_1001_at_once_and_their_handlers_see_it(self):
        host = await self.start(self.plugin())
        a, b = await self.open_ws(host, "/d/ws"), await self.open_ws(host, "/d/sync-ws")
        host.send_data(a, b"hi", TEXT)
        self.assertEqual(await host.chunk(a), (TEXT, b"hi"))
        slow = host.http("GET", "/d/slow")
        host.send("shutdown", None, {})
        for rid in (a, b):
            close = await within(f"ws_close on {rid}", host.streams[rid].ws_close)
            self.assertEqual(close, {"code": 1001, "reason": "the plugin is shutting down"})
        await within("both handlers to see the close", _until(lambda: len(self.seen) == 2))
        self.assertCountEqual(self.seen, [("async ws", 1001, "the plugin is shutting down"),
                                          ("sync ws", 1001, "the plugin is shutting down")])
        self.assertFalse(host.answered(slow), "closed while other work still runs")
        self.release.set()
        self.assertEqual((await host.response(slow))[0], 200)
        self.assertEqual(await host.exit_code(), 0)
        self.assertEqual((host.after_end(a), host.after_end(b)), ([], []))

    async def test_a_sender_waiting_for_credit_is_closed_too(self):
        host = await self.start(self.plugin())
        host.auto_credit = False
        rid = await self.open_ws(host, "/d/flood")
        for _ in range(4):  # the window, then the handler waits for credit
            await host.chunk(rid)
        host.send("shutdown", None, {})
        self.assertEqual((await within("ws_close", host.streams[rid].ws_close))["code"], 1001)
        self.assertEqual(await host.exit_code(), 0)
        self.assertEqual(self.seen, [("flood", 1001)])
        self.assertEqual(host.after_end(rid), [])
        self.assertNoViolations(host)

    async def test_event_streams_end_at_once_and_downloads_get_the_grace(self):
        host = await self.start(self.plugin())
        events, writer = host.http("GET", "/d/events"), host.http("GET", "/d/writer-events")
        sync_writer = host.http("GET", "/d/sync-writer-events")
        download = host.http("GET", "/d/download")
        self.assertEqual(await host.chunk(events), (0, b"data: 1\n\n"))
        self.assertEqual(await host.chunk(writer), (0, b"data: first\n\n"))
        self.assertEqual(await host.chunk(sync_writer), (0, b"data: first\n\n"))
        self.assertEqual(await host.chunk(download), (0, b"part 1,"))
        host.send("shutdown", None, {})
        for rid in (events, writer, sync_writer):
            self.assertEqual(await host.chunk(rid), (END, b""))
        self.tick.set()
        await within("the producers to stop", _until(lambda: len(self.seen) == 3))
        self.assertCountEqual(self.seen, ["events closed", "writer cancelled",
                                          "sync writer cancelled"])
        self.assertTrue(host.streams[download].data.empty(), "the download goes on")
        self.release.set()
        self.assertEqual(await host.body(download), b"part 2")
        self.assertEqual(await host.exit_code(), 0)
        self.assertEqual([host.after_end(rid) for rid in (events, writer, sync_writer)],
                         [[], [], []])
        unsolicited = []
        while not host.unsolicited.empty():
            unsolicited.append(host.unsolicited.get_nowait())
        self.assertEqual(unsolicited, [], "no error for the ended streams")

    async def test_streams_that_open_after_shutdown_end_at_once(self):
        plugin = Plugin("late")
        go = asyncio.Event()
        seen = []

        @plugin.websocket("/ws")
        async def late_ws(ws):
            await go.wait()
            await ws.accept()
            try:
                await ws.receive()
            except toru_plugin.WebSocketClosed as e:
                seen.append(e.code)

        @plugin.get("/events")
        async def late_events(req):
            await go.wait()

            async def source():
                yield "never sent"
            return sse(source())

        host = await self.start(plugin)
        ws = host.http("GET", "/late/ws", upgrade="websocket")
        events = host.http("GET", "/late/events")
        host.send("shutdown", None, {})
        ping = host.request("ping", {})
        await host.reply(ping)  # the shutdown has been read: the handlers go on after it
        go.set()
        self.assertEqual((await host.head(ws))["payload"]["status"], 101)
        self.assertEqual((await within("ws_close", host.streams[ws].ws_close))["code"], 1001)
        head = await host.head(events)
        self.assertEqual((head["payload"]["status"], head["payload"]["end_stream"]), (200, False))
        self.assertEqual(await host.chunk(events), (END, b""))
        self.assertEqual(await host.exit_code(), 0)
        self.assertEqual(seen, [1001])

    async def test_version_1_has_no_streams_to_end(self):
        host = await self.start(self.plugin(), high=1)
        slow = host.http("GET", "/d/slow")
        host.send("shutdown", None, {})
        self.release.set()
        self.assertEqual((await host.response(slow))[0], 200)
        self.assertEqual(await host.exit_code(), 0)


if __name__ == "__main__":
    unittest.main()
