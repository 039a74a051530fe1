"""The SDK's behaviour that does not need streams: metadata, start-up, routes, handlers, KV,
logging, settings, cancel, shutdown and bad input. Each test runs a plugin in this process and
plays the host over a socketpair (fakehost.py); both protocol versions where it matters."""

import asyncio
import json
import os
import struct
import subprocess
import sys
import tempfile
import threading
import unittest

from fakehost import SDK, FakeHost, within

import toru_plugin
from toru_plugin import HTTPError, KvError, Plugin, Refuse, Response


def counter_plugin():
    plugin = Plugin("counter", name="Counter")

    @plugin.get("/")
    def hello(req):
        return {"count": int(plugin.kv.get("count") or 0)}

    @plugin.post("/count")
    async def count(req):
        n = await plugin.kv.update("count", lambda v: int(v or 0) + 1)
        plugin.log.info(f"count is now {n}")
        return {"count": n}

    return plugin


class Case(unittest.IsolatedAsyncioTestCase):
    async def start(self, plugin, low=1, high=2, settings=None):
        host = await FakeHost.serve(plugin)
        self.addAsyncCleanup(host.close)
        if high is not None:
            reply = await host.init(low, high, settings)
            self.assertEqual(reply["type"], "ready", reply)
        return host

    async def get_json(self, host, method, path, **kw):
        status, headers, body = await host.response(host.http(method, path, **kw))
        self.assertEqual(headers.get("content-type"), "application/json", (status, body))
        return status, json.loads(body)


class Metadata(unittest.TestCase):
    def run_script(self, source, *args, env=None):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "p.binary")
            with open(path, "w") as f:
                f.write(source)
            full_env = {"PATH": os.environ["PATH"], "PYTHONPATH": SDK}
            full_env.update(env or {})
            return subprocess.run([sys.executable, path, *args], capture_output=True, text=True,
                                  env=full_env, timeout=30)

    def test_metadata_is_printed_from_the_declaration(self):
        out = self.run_script(
            "from toru_plugin import Plugin\n"
            "p = Plugin('weather', name='Weather', icon='x', settings=[\n"
            "    {'name': 'city', 'type': 'string', 'default': 'Oslo'},\n"
            "    {'name': 'token', 'type': 'secret', 'label': 'Token'}], bundle='export {}')\n"
            "@p.on_settings\n"
            "def changed(s): pass\n"
            "p.run()\n", "--metadata")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(len(out.stdout.strip().splitlines()), 1)
        meta = json.loads(out.stdout)
        self.assertEqual(meta["id"], "weather")
        self.assertEqual(meta["route"], "/weather")
        self.assertEqual(meta["protocol"], {"min": 1, "max": 2})
        self.assertTrue(meta["frontend"])
        self.assertTrue(meta["live_settings"])
        self.assertEqual([s["name"] for s in meta["settings"]], ["city", "token"])
        self.assertEqual(meta["settings"][1]["label"], "Token")
        self.assertEqual(meta["settings"][0]["label"], "city")

    def test_without_on_settings_the_host_restarts_the_plugin(self):
        self.assertFalse(Plugin("a").metadata()["live_settings"])
        self.assertFalse(Plugin("a").metadata()["frontend"])

    def test_started_by_hand_says_how_it_is_started(self):
        out = self.run_script("from toru_plugin import Plugin\nPlugin('hand').run()\n")
        self.assertEqual(out.returncode, 2)
        line = out.stderr.strip()
        self.assertEqual(len(line.splitlines()), 1, line)
        for needle in ("Toru", "TORU_SOCKET_PATH", "--metadata"):
            self.assertIn(needle, line)

    def test_bad_declarations_fail_at_once_with_the_field(self):
        for kwargs, needle in [
            ({"id": "Bad"}, "plugin id"),
            ({"id": "ok", "route": "/a/b"}, "route"),
            ({"id": "ok", "name": " "}, "name"),
            ({"id": "ok", "settings": [{"name": "A", "type": "string"}]}, "setting name"),
            ({"id": "ok", "settings": [{"name": "a", "type": "colour"}]}, "type"),
            ({"id": "ok", "settings": [{"name": "a", "type": "choice"}]}, "choices"),
            ({"id": "ok", "settings": [{"name": "a", "type": "secret", "default": "x"}]}, "secret"),
            ({"id": "ok", "settings": [{"name": "a", "type": "number", "default": "1"}]}, "default"),
            ({"id": "ok", "settings": [{"name": "a", "type": "string"}] * 2}, "repeat"),
        ]:
            with self.subTest(kwargs=kwargs):
                with self.assertRaises(ValueError) as caught:
                    Plugin(**kwargs)
                self.assertIn(needle, str(caught.exception))
        with self.assertRaises(ValueError):
            Plugin("ok").get("no-slash")(lambda req: None)

    def test_the_module_is_python_3_9(self):
        import ast
        with open(toru_plugin.__file__) as f:
            ast.parse(f.read(), feature_version=(3, 9))

    def test_the_python_in_the_docs_parses(self):
        import ast
        import re
        repo = os.path.dirname(os.path.dirname(SDK))
        for doc in ("docs/plugin-guide.md", "sdk/python/README.md"):
            with open(os.path.join(repo, doc)) as f:
                blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
            self.assertTrue(blocks, doc)
            for block in blocks:
                with self.subTest(doc=doc, block=block[:60]):
                    ast.parse(block, feature_version=(3, 9))

    def test_the_example_ships_the_same_module(self):
        example = os.path.join(os.path.dirname(os.path.dirname(SDK)),
                               "examples", "hello-plugin-python", "toru_plugin.py")
        with open(example, "rb") as a, open(toru_plugin.__file__, "rb") as b:
            self.assertEqual(a.read(), b.read(), "examples/hello-plugin-python/toru_plugin.py "
                             "differs from sdk/python/toru_plugin.py: it should be a link to it")


class StartUp(Case):
    async def test_the_highest_common_version_is_chosen(self):
        for (low, high), chosen in [((1, 1), 1), ((1, 2), 2), ((1, 9), 2), ((2, 3), 2)]:
            host = await FakeHost.serve(counter_plugin())
            reply = await host.init(low, high)
            self.assertEqual(reply["payload"], {"protocol_version": chosen})
            await host.close()

    async def test_no_common_version_is_refused_with_78(self):
        host = await FakeHost.serve(counter_plugin())
        reply = await host.init(3, 4)
        self.assertEqual(reply["payload"]["code"], "unsupported_protocol_version")
        self.assertIn("3..=4", reply["payload"]["message"])
        self.assertEqual(await host.exit_code(), 78)
        await host.close()

    async def test_requests_before_init_are_bad_requests(self):
        host = await self.start(counter_plugin(), high=None)
        rid = host.http("GET", "/counter/")
        reply = await host.reply(rid)
        self.assertEqual(reply["payload"]["code"], "bad_request")
        self.assertEqual((await host.init())["type"], "ready")
        rid = host.request("init", {})
        self.assertEqual((await host.reply(rid))["payload"]["code"], "bad_request")

    async def test_notices_before_init_are_ignored_even_with_an_id(self):
        host = await self.start(counter_plugin(), high=None)
        for notice, payload in [("cancel", {}), ("credit", {"bytes": 1}), ("shutdown", {}),
                                ("ws_close", {"code": 1000, "reason": ""}),
                                ("settings", {"settings": {}})]:
            host.send(notice, 40, payload)
        rid = host.http("GET", "/counter/")  # a request is answered, in order after them
        self.assertEqual((await host.reply(rid))["payload"]["code"], "bad_request")
        self.assertTrue(host.unsolicited.empty(), "nothing answers a notice")
        self.assertEqual((await host.init())["type"], "ready")

    async def test_shutdown_while_starting_exits_0_without_ready(self):
        plugin = Plugin("starting")
        started = asyncio.Event()

        @plugin.on_init
        async def never_done(init):
            started.set()
            await asyncio.sleep(60)

        host = await FakeHost.serve(plugin)
        self.addAsyncCleanup(host.close)
        rid = host.request("init", {"protocol": {"min": 1, "max": 2}, "instance_id": "i",
                                    "plugin_id": "starting", "socket_path": "/s",
                                    "log_path": "/l"})
        await within("on_init to run", started.wait())
        host.send("shutdown", None, {})
        self.assertEqual(await host.exit_code(), 0)
        self.assertFalse(host.answered(rid), "no ready after shutdown")

    async def test_on_init_may_refuse_and_the_plugin_exits_78(self):
        plugin = Plugin("picky")

        @plugin.on_init
        async def check(init):
            await plugin.kv.get("state")  # KV works before ready
            if init.settings.get("license_key") != "good":
                raise Refuse("no license key: set the license_key setting")

        host = await FakeHost.serve(plugin)
        reply = await host.init(settings={"license_key": "bad"})
        self.assertEqual(reply["payload"], {
            "code": "init_refused", "message": "no license key: set the license_key setting"})
        self.assertEqual(await host.exit_code(), 78)
        self.assertEqual(host.kv_ids, [1])
        await host.close()

        host = await FakeHost.serve(plugin)
        self.assertEqual((await host.init(settings={"license_key": "good"}))["type"], "ready")
        await host.close()

    async def test_a_failing_on_init_is_an_internal_error_and_exit_1(self):
        plugin = Plugin("buggy")

        @plugin.on_init
        def boom(init):
            raise RuntimeError("boom")

        host = await FakeHost.serve(plugin)
        reply = await host.init()
        self.assertEqual(reply["payload"]["code"], "internal")
        self.assertEqual(await host.exit_code(), 1)
        await host.close()


class Routes(Case):
    async def test_routes_methods_and_path_parameters(self):
        plugin = Plugin("r")

        @plugin.get("/")
        def root(req):
            return "root"

        @plugin.get("/items/{id}")
        def item(req):
            return {"id": req.params["id"], "sub": req.subpath}

        @plugin.handle("/files/{rest:path}", methods=("GET", "PUT"))
        async def files(req):
            return {"rest": req.params["rest"], "method": req.method}

        for version in (1, 2):
            host = await self.start(plugin, high=version)
            for path in ("/r", "/r/"):
                status, headers, body = await host.response(host.http("GET", path))
                self.assertEqual((status, body), (200, b"root"))
                self.assertEqual(headers["content-type"], "text/plain; charset=utf-8")
            self.assertEqual(await self.get_json(host, "GET", "/r/items/a%20b"),
                             (200, {"id": "a b", "sub": "/items/a%20b"}))
            self.assertEqual(await self.get_json(host, "PUT", "/r/files/x/y.txt"),
                             (200, {"rest": "x/y.txt", "method": "PUT"}))
            for path in ("/r/items", "/r/items/a/b", "/rx", "/elsewhere", "/r/nope"):
                self.assertEqual(await self.get_json(host, "GET", path),
                                 (404, {"error": "not found"}), path)
            status, headers, body = await host.response(host.http("POST", "/r/items/1"))
            self.assertEqual((status, json.loads(body)), (405, {"error": "method not allowed"}))
            self.assertEqual(headers["allow"], "GET, HEAD")
            status, headers, body = await host.response(host.http("HEAD", "/r/items/1"))
            self.assertEqual((status, body), (200, b""))
            self.assertEqual(headers["content-type"], "application/json")

    async def test_return_values_become_responses(self):
        plugin = Plugin("v")
        values = {
            "dict": {"a": 1}, "list": [1, 2], "str": "héllo", "bytes": b"\x00\xff",
            "none": None, "response": Response("made", 201, {"x-made": "yes"}, "text/x-made"),
        }
        for name, value in values.items():
            plugin.get("/" + name)(lambda req, value=value: value)

        @plugin.get("/teapot")
        def teapot(req):
            raise HTTPError(418, "short and stout")

        @plugin.get("/bad-status")
        def bad_status(req):
            return Response("x", status=1000)

        @plugin.get("/object")
        def an_object(req):
            return object()

        for version in (1, 2):
            host = await self.start(plugin, high=version)
            expect = {
                "dict": (200, "application/json", b'{"a": 1}'),
                "list": (200, "application/json", b"[1, 2]"),
                "str": (200, "text/plain; charset=utf-8", "héllo".encode()),
                "bytes": (200, "application/octet-stream", b"\x00\xff"),
                "none": (204, None, b""),
                "response": (201, "text/x-made", b"made"),
                "teapot": (418, "application/json", b'{"error": "short and stout"}'),
            }
            for name, (status, content_type, body) in expect.items():
                got = await host.response(host.http("GET", "/v/" + name))
                self.assertEqual((got[0], got[1].get("content-type"), got[2]),
                                 (status, content_type, body), (version, name))
            self.assertEqual((await host.response(host.http("GET", "/v/response")))[1]["x-made"],
                             "yes")
            for name in ("bad-status", "object"):
                reply = await host.head(host.http("GET", "/v/" + name))
                self.assertEqual((reply["type"], reply["payload"]["code"]),
                                 ("error", "plugin_error"), name)
                log = await host.log()
                self.assertEqual(log["level"], "error")
                self.assertIn(f"GET /v/{name} failed", log["message"])

    async def test_a_failing_handler_answers_plugin_error_and_logs_it(self):
        plugin = Plugin("f")

        @plugin.get("/")
        def boom(req):
            raise ValueError("it broke")

        host = await self.start(plugin)
        reply = await host.head(host.http("GET", "/f/"))
        self.assertEqual(reply["payload"]["code"], "plugin_error")
        self.assertIn("it broke", reply["payload"]["message"])
        log = await host.log()
        self.assertEqual(log["level"], "error")
        self.assertIn("Traceback", log["error"])
        self.assertEqual((await self.get_json(host, "GET", "/f/nope"))[0], 404, "still serving")

    async def test_request_fields_and_bodies_in_version_1(self):
        plugin = Plugin("e")

        @plugin.handle("/", methods=("POST",))
        async def echo(req):
            body = await req.read_all()
            return {"args": req.args, "query": req.query, "accept": req.header("Accept"),
                    "body": body.hex(), "protocol": req.protocol}

        @plugin.post("/json")
        def parse(req):
            return {"got": req.json()}

        @plugin.post("/small")
        async def small(req):
            return {"n": len(await req.read_all(limit=4))}

        host = await self.start(plugin, high=1)
        status, body = await self.get_json(host, "POST", "/e/", query="a=1&b=x%20y&a=2",
                                           headers=[("accept", "*/*")], body=b"\x00\x01\xff")
        self.assertEqual(body, {"args": {"a": "1", "b": "x y"}, "query": "a=1&b=x%20y&a=2",
                                "accept": "*/*", "body": "0001ff", "protocol": 1})
        self.assertEqual(await self.get_json(host, "POST", "/e/json", body=b'{"k": [1]}'),
                         (200, {"got": {"k": [1]}}))
        self.assertEqual(await self.get_json(host, "POST", "/e/json", body=b"nope"),
                         (400, {"error": "the body is not JSON"}))
        self.assertEqual((await self.get_json(host, "POST", "/e/small", body=b"12345"))[0], 413)
        self.assertEqual(await self.get_json(host, "POST", "/e/small", body=b"1234"),
                         (200, {"n": 4}))

    async def test_websocket_routes_answer_426_to_plain_requests(self):
        plugin = Plugin("w")

        @plugin.websocket("/ws")
        async def ws(ws):
            await ws.send("hi")

        for version in (1, 2):
            host = await self.start(plugin, high=version)
            status, headers, _ = await host.response(host.http("GET", "/w/ws"))
            self.assertEqual((status, headers["upgrade"]), (426, "websocket"))


class Kv(Case):
    async def test_get_set_delete_list_and_keys(self):
        plugin = Plugin("k")

        @plugin.post("/")
        async def run(req):
            kv = plugin.kv
            out = {"missing": await kv.get("a")}
            for i in range(5):
                await kv.set(f"s:{i}", str(i))
            await kv.set("other", "x")
            out["get"] = await kv.get("s:3")
            out["page"] = await kv.list("s:", after="s:1", limit=2)
            out["keys"] = await kv.keys("s:")
            out["deleted"] = [await kv.delete("s:0"), await kv.delete("s:0")]
            return out

        @plugin.post("/sync")
        def run_sync(req):  # the same calls, blocking, from a thread
            plugin.kv.set("t", "1")
            return {"t": plugin.kv.get("t"), "list": plugin.kv.list("t"),
                    "thread": threading.current_thread().name}

        host = await self.start(plugin)
        self.assertEqual(await self.get_json(host, "POST", "/k/"), (200, {
            "missing": None, "get": "3", "page": ["s:2", "s:3"],
            "keys": ["s:0", "s:1", "s:2", "s:3", "s:4"], "deleted": [True, False]}))
        status, body = await self.get_json(host, "POST", "/k/sync")
        self.assertEqual((body["t"], body["list"]), ("1", ["t"]))
        self.assertTrue(body["thread"].startswith("k-handler"), body)
        self.assertEqual(host.kv_ids, list(range(1, len(host.kv_ids) + 1)), "ids count from 1")

    async def test_keys_pages_through_more_than_one_list(self):
        plugin = Plugin("k")

        @plugin.get("/")
        async def count(req):
            return {"n": len(await plugin.kv.keys("p:"))}

        host = await self.start(plugin)
        host.kv.update({f"p:{i:05}": "x" for i in range(2500)})
        self.assertEqual(await self.get_json(host, "GET", "/k/"), (200, {"n": 2500}))

    async def test_concurrent_updates_lose_no_count(self):
        host = await self.start(counter_plugin(), high=1)
        rids = [host.http("POST", "/counter/count") for _ in range(50)]
        counts = sorted([json.loads((await host.response(r))[2])["count"] for r in rids])
        self.assertEqual(counts, list(range(1, 51)))
        self.assertEqual(host.kv["count"], "50")
        self.assertEqual(await self.get_json(host, "GET", "/counter/"), (200, {"count": 50}))

    async def test_a_kv_error_answers_500_with_its_code(self):
        host = await self.start(counter_plugin())
        host.kv_fail = ("kv_quota_exceeded", "quota full")
        self.assertEqual(await self.get_json(host, "POST", "/counter/count"),
                         (500, {"error": "kv_quota_exceeded: quota full"}))
        log = await host.log()
        self.assertEqual(log["level"], "error")

    async def test_bad_keys_and_values_are_refused_before_sending(self):
        plugin = Plugin("k")

        @plugin.get("/")
        async def bad(req):
            errors = []
            for call in (lambda: plugin.kv.get(""), lambda: plugin.kv.set("a", 1)):
                try:
                    await call()
                except (ValueError, TypeError) as e:
                    errors.append(type(e).__name__)
            return errors

        host = await self.start(plugin)
        self.assertEqual(await self.get_json(host, "GET", "/k/"), (200, ["ValueError", "TypeError"]))
        self.assertEqual(host.kv_ids, [])


class Logging(Case):
    async def test_levels_from_the_loop_and_from_threads(self):
        plugin = Plugin("l")

        @plugin.get("/")
        def log_all(req):
            for level in ("trace", "debug", "info", "warn", "error"):
                getattr(plugin.log, level)(f"{level} line")
            plugin.log.warning("a warning", error="why")
            return None

        host = await self.start(plugin)
        await host.response(host.http("GET", "/l/"))
        got = [await host.log() for _ in range(6)]
        self.assertEqual([g["level"] for g in got], ["trace", "debug", "info", "warn", "error",
                                                      "warn"])
        self.assertEqual(got[-1], {"level": "warn", "message": "a warning", "error": "why"})
        with self.assertRaises(ValueError):
            plugin.log("loud", "x")

    async def test_a_flood_of_logs_is_bounded(self):
        plugin = Plugin("l")

        @plugin.get("/")
        def flood(req):
            for i in range(toru_plugin.MAX_PENDING_LOGS * 3):
                plugin.log.info(f"line {i}")

        host = await self.start(plugin)
        host.writer.transport.pause_reading()  # the host stops reading: the socket fills
        rid = host.http("GET", "/l/")
        await asyncio.sleep(0)  # let the request go out
        conn = plugin._conn
        await within("the plugin to log", _until(lambda: conn.dropped_logs > 0))
        self.assertLessEqual(conn.pending_logs, toru_plugin.MAX_PENDING_LOGS)
        host.writer.transport.resume_reading()
        await host.response(rid)
        last = None
        while last is None or "dropped" not in last["message"]:
            last = await host.log("the dropped-lines warning")
        self.assertEqual(last["level"], "warn")


async def _until(cond):
    while not cond():
        await asyncio.sleep(0.01)


class Settings(Case):
    SPEC = [{"name": "greeting", "type": "string", "default": "Hello"},
            {"name": "token", "type": "secret"},
            {"name": "mode", "type": "choice", "choices": ["a", "b"], "default": "a"},
            {"name": "limit", "type": "number"}]

    async def test_init_settings_with_defaults_and_live_changes(self):
        plugin = Plugin("s", settings=self.SPEC)
        changes = []

        @plugin.on_settings
        async def changed(settings):
            changes.append(dict(settings))

        @plugin.get("/")
        def show(req):
            return plugin.settings

        host = await self.start(plugin, settings={"token": "t0p", "extra": 1})
        self.assertEqual(await self.get_json(host, "GET", "/s/"), (200, {
            "greeting": "Hello", "token": "t0p", "mode": "a", "extra": 1}))
        host.send("settings", None, {"settings": {"greeting": "Howdy", "mode": "b", "limit": 3}})
        await within("on_settings", _until(lambda: changes))
        self.assertEqual(changes, [{"greeting": "Howdy", "mode": "b", "limit": 3}])
        self.assertEqual((await self.get_json(host, "GET", "/s/"))[1]["greeting"], "Howdy")

    async def test_a_value_that_does_not_fit_is_logged_without_its_value(self):
        plugin = Plugin("s", settings=self.SPEC)
        host = await self.start(plugin, settings={"token": 12345, "mode": "c", "limit": True})
        logs = [await host.log() for _ in range(3)]
        self.assertEqual({l["level"] for l in logs}, {"error"})
        text = json.dumps(logs)
        self.assertNotIn("12345", text, "a secret's value is never logged")
        self.assertIn("'token'", text)
        self.assertEqual(plugin.settings, {"greeting": "Hello", "mode": "a"})


class CancelAndShutdown(Case):
    def slow_plugin(self):
        plugin = Plugin("slow")
        self.events = []

        @plugin.get("/async")
        async def slow_async(req):
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                self.events.append("cancelled")
                raise

        @plugin.get("/sync")
        def slow_sync(req):
            self.release.wait(10)
            try:
                plugin.kv.get("x")
            except toru_plugin.Cancelled:
                self.events.append("sync cancelled")
                raise

        @plugin.get("/ms")
        async def ms(req):
            await asyncio.sleep(int(req.args["ms"]) / 1000)
            return {"slept": req.args["ms"]}

        self.release = threading.Event()
        return plugin

    async def test_cancel_stops_the_handler_and_nothing_is_sent(self):
        for version in (1, 2):
            plugin = self.slow_plugin()
            host = await self.start(plugin, high=version)
            a, s = host.http("GET", "/slow/async"), host.http("GET", "/slow/sync")
            await within("both handlers to start", _until(lambda: len(plugin._conn.streams) == 2))
            host.cancel(s)
            host.cancel(a)  # after s's: once a's handler sees it, s is cancelled too
            host.cancel(999)  # unknown: ignored
            await within("the async handler to see the cancel", _until(lambda: self.events))
            self.release.set()
            await within("the plain handler to see the cancel",
                         _until(lambda: len(self.events) == 2))
            self.assertEqual(sorted(self.events), ["cancelled", "sync cancelled"])
            self.assertEqual((await self.get_json(host, "GET", "/slow/ms", query="ms=1"))[0], 200)
            host.send("shutdown", None, {})
            self.assertEqual(await host.exit_code(), 0)
            self.assertFalse(host.answered(a) or host.answered(s))

    async def test_shutdown_refuses_new_work_and_finishes_what_runs(self):
        host = await self.start(self.slow_plugin())
        slow = host.http("GET", "/slow/ms", query="ms=300")
        host.send("shutdown", 77, {})
        late = host.http("GET", "/slow/ms", query="ms=1")
        self.assertEqual((await host.reply(late))["payload"]["code"], "shutting_down")
        ping = host.request("ping", {})
        self.assertEqual((await host.reply(ping))["type"], "pong")
        self.assertEqual((await host.response(slow))[0], 200)
        self.assertEqual(await host.exit_code(), 0)

    async def test_shutdown_abandons_work_after_the_grace(self):
        old = toru_plugin.SHUTDOWN_GRACE
        toru_plugin.SHUTDOWN_GRACE = 0.1
        try:
            host = await self.start(self.slow_plugin())
            slow = host.http("GET", "/slow/async")
            await asyncio.sleep(0.05)
            host.send("shutdown", None, {})
            self.assertEqual(await host.exit_code(), 0)
            self.assertEqual(self.events, ["cancelled"])
            self.assertFalse(host.answered(slow))
        finally:
            toru_plugin.SHUTDOWN_GRACE = old

    async def test_end_of_stream_exits_0_at_once(self):
        host = await self.start(self.slow_plugin())
        host.http("GET", "/slow/async")
        host.writer.write_eof()
        self.assertEqual(await host.exit_code(), 0)

    async def test_too_many_requests_at_once_get_503(self):
        plugin = self.slow_plugin()
        plugin.max_in_flight = 3
        host = await self.start(plugin)
        for _ in range(3):
            host.http("GET", "/slow/async")
        status, headers, _ = await host.response(host.http("GET", "/slow/ms", query="ms=1"))
        self.assertEqual((status, headers["retry-after"]), (503, "1"))


class BadInput(Case):
    async def test_bad_frames_are_answered_and_the_plugin_carries_on(self):
        host = await self.start(counter_plugin())
        for raw, rid in [(b"not json", None), (b"[1]", None), (b'{"type": 5}', None),
                         (b'{"type":"http_request","request_id":9,"payload":{"method":7}}', 9),
                         (b'{"type":"http_request","request_id":8,"payload":{"method":"GET",'
                          b'"path":"/x","headers":[["a"]]}}', 8),
                         (b'{"type":"kv","request_id":10,"payload":{}}', 10),
                         (b'{"type":"frobnicate","request_id":11,"payload":{}}', 11),
                         (b'{"type":"http_request","request_id":-1,"payload":{}}', None),
                         (b'{"type":"ping","request_id":12,"payload":{},"timestamp":1.5}', 12),
                         (b"\xff\xfe", None)]:
            host.send_raw(struct.pack(">I", len(raw)) + raw)
            reply = await within(f"the reply to {raw!r}", host.unsolicited.get()) \
                if rid is None else await within(f"the reply to {raw!r}", _reply_to(host, rid))
            self.assertEqual(reply["type"], "error", raw)
            expected = {10: "bad_request", 11: "unknown_type"}.get(rid, "bad_request")
            self.assertEqual(reply["payload"]["code"], expected, raw)
        host.send("frobnicate", None, {})  # an unknown notice: ignored
        host.send("kv_result", 4242, {})  # a reply to nothing: ignored
        self.assertEqual((await self.get_json(host, "GET", "/counter/"))[0], 200)

    async def test_a_reused_request_id_is_refused(self):
        plugin = Plugin("d")

        @plugin.get("/")
        async def wait(req):
            await asyncio.sleep(60)

        host = await self.start(plugin)
        host.send("http_request", 50, {"method": "GET", "path": "/d/"})
        host.send("http_request", 50, {"method": "GET", "path": "/d/"})
        reply = await within("the refusal", host.unsolicited.get())
        self.assertEqual(reply["payload"]["code"], "bad_request")

    async def test_an_oversized_frame_ends_the_connection_with_exit_1(self):
        for version in (1, 2):
            host = await self.start(counter_plugin(), high=version)
            host.send_raw(struct.pack(">I", 0x7FFFFFFF))
            self.assertEqual(await host.exit_code(), 1)

    async def test_a_data_frame_on_a_version_1_connection_ends_it(self):
        host = await self.start(counter_plugin(), high=1)
        host.send_raw(struct.pack(">IQB", 0x80000009 + 3, 1, 0) + b"abc")
        self.assertEqual(await host.exit_code(), 1)


async def _reply_to(host, rid):
    while True:
        msg = await host.unsolicited.get()
        if msg.get("request_id") == rid:
            return msg


if __name__ == "__main__":
    unittest.main()
