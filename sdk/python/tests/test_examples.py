"""The Python examples as real processes, with this suite playing the host: hello-plugin-python
(on the SDK) over protocol 2, the stdlib-only minimal-v2, and the SDK installed with pip."""

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

from fakehost import END, REPO, SDK, TEXT, WINDOW, FakeHost, within

EXAMPLE = os.path.join(REPO, "examples", "hello-plugin-python", "hello-plugin-python.binary")
MINIMAL = os.path.join(REPO, "examples", "protocol-python", "minimal-v2.binary")


class HelloPython(unittest.IsolatedAsyncioTestCase):
    async def start(self, high=2, settings=None):
        host = await FakeHost.spawn([EXAMPLE])
        self.addAsyncCleanup(host.close)
        reply = await host.init(1, high, settings)
        self.assertEqual(reply["payload"], {"protocol_version": high})
        return host

    async def get_json(self, host, path):
        status, _, body = await host.response(host.http("GET", path))
        return status, json.loads(body)

    async def test_the_greeting_setting_applies_live_and_the_token_is_never_shown(self):
        host = await self.start(settings={"api_token": "tok_s3cret"})
        self.assertEqual((await self.get_json(host, "/hello-python/"))[1]["message"],
                         "Hello from Python!")
        self.assertEqual(await self.get_json(host, "/hello-python/settings"),
                         (200, {"greeting": "Hello", "api_token": "set"}))
        host.send("settings", None, {"settings": {"greeting": "Howdy", "api_token": "tok_n3w"}})
        log = await host.log("the settings applied")
        self.assertEqual(log["level"], "info")
        self.assertIn("'Howdy'", log["message"])
        self.assertEqual((await self.get_json(host, "/hello-python/"))[1]["message"],
                         "Howdy from Python!")
        host.send("shutdown", None, {})
        self.assertEqual(await host.exit_code(), 0)
        everything = json.dumps(list(host.logs._queue)) + "".join(host.stderr)
        self.assertNotIn("tok_", everything, "the token is never logged")

    async def test_ticks_stream_as_server_sent_events(self):
        host = await self.start()
        rid = host.http("GET", "/hello-python/ticks")
        head = await host.head(rid)
        self.assertEqual((head["payload"]["status"], dict(head["payload"]["headers"])[
            "content-type"]), (200, "text/event-stream"))
        self.assertEqual(await host.chunk(rid), (0, b"data: 1\n\n"))
        self.assertEqual(await host.chunk(rid), (0, b"data: 2\n\n"))
        host.cancel(rid)
        ping = host.request("ping", {})
        self.assertEqual((await host.reply(ping))["type"], "pong")

    async def test_the_websocket_upper_cases_text_and_echoes_binary(self):
        host = await self.start()
        rid = host.http("GET", "/hello-python/ws", upgrade="websocket")
        self.assertEqual((await host.head(rid))["payload"]["status"], 101)
        host.send_data(rid, "grüß".encode(), TEXT)
        self.assertEqual(await host.chunk(rid), (TEXT, "GRÜSS".encode()))
        host.send_data(rid, b"\x00\xff", 0)
        self.assertEqual(await host.chunk(rid), (0, b"\x00\xff"))
        host.send("ws_close", rid, {"code": 1000, "reason": ""})

    async def test_echo_reads_a_streamed_body(self):
        host = await self.start()
        status, _, body = await host.response(host.http("GET", "/hello-python/echo",
                                                        body=b"x" * 300_000))
        self.assertEqual(json.loads(body)["body"], "x" * 300_000)

    async def test_with_a_version_1_host_the_websocket_route_answers_426(self):
        host = await self.start(high=1)
        self.assertEqual((await self.get_json(host, "/hello-python/ws"))[0], 426)
        self.assertEqual((await self.get_json(host, "/hello-python/"))[0], 200)


class MinimalV2(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self):
        # Tens of thousands of small frames: asyncio's debug mode (on in these tests) would make
        # this test take half a minute.
        asyncio.get_running_loop().set_debug(False)

    async def start(self):
        host = await FakeHost.spawn([MINIMAL])
        self.addAsyncCleanup(host.close)
        self.assertEqual((await host.init(1, 2))["payload"], {"protocol_version": 2})
        return host

    def test_metadata(self):
        out = subprocess.run([MINIMAL, "--metadata"], capture_output=True, text=True, timeout=30)
        self.assertEqual(json.loads(out.stdout)["protocol"], {"min": 2, "max": 2})
        out = subprocess.run([MINIMAL], capture_output=True, text=True, timeout=30,
                             env={"PATH": os.environ["PATH"]})
        self.assertEqual(out.returncode, 2)
        self.assertIn("TORU_SOCKET_PATH", out.stderr)

    async def test_a_buffered_answer_a_streamed_one_and_a_streamed_upload(self):
        host = await self.start()
        rid = host.http("GET", "/minimal-v2/")
        head = await host.head(rid)
        self.assertEqual(head["payload"]["end_stream"], False)
        self.assertEqual(await host.chunk(rid), (END, b"Hello from protocol 2!\n"))

        host.auto_credit = False
        rid = host.http("GET", "/minimal-v2/lines", query="n=32000")
        await host.head(rid)
        received = 0
        while received < WINDOW - 20:
            received += len((await host.chunk(rid))[1])
        ping = host.request("ping", {})
        await host.reply(ping)
        self.assertLessEqual(host.streams[rid].received, WINDOW, "it waits for credit")
        host.auto_credit = True
        host.give_credit(rid)
        rest = await host.body(rid)
        lines = rest.decode().splitlines()
        self.assertEqual(lines[-1], "line 32000")
        self.assertEqual(host.violations, [])

        data = os.urandom(1_500_000)
        status, _, body = await host.response(host.http("POST", "/minimal-v2/length", body=data))
        self.assertEqual((status, json.loads(body)), (200, {"bytes": 1_500_000}))
        self.assertGreater(host.streams[rid + 1].window, 0)

        status, _, _ = await host.response(host.http("GET", "/minimal-v2/nope"))
        self.assertEqual(status, 404)
        rid = host.request("frobnicate", {})
        self.assertEqual((await host.reply(rid))["payload"]["code"], "unknown_type")
        host.send_raw(b"\x00\x00\x00\x03abc")
        bad = await within("bad_request", host.unsolicited.get())
        self.assertEqual(bad["payload"]["code"], "bad_request")
        host.send("shutdown", None, {})
        self.assertEqual(await host.exit_code(), 0)

    async def test_cancel_stops_a_stream(self):
        host = await self.start()
        host.auto_credit = False
        rid = host.http("GET", "/minimal-v2/lines", query="n=1000000")
        await host.head(rid)
        await host.chunk(rid)
        host.cancel(rid)
        host.give_credit(rid)
        rid2 = host.http("GET", "/minimal-v2/")
        self.assertEqual((await host.response(rid2))[0], 200)
        self.assertLessEqual(host.streams[rid].received_total, 2 * WINDOW)

    async def test_a_version_1_host_is_refused_with_78(self):
        host = await FakeHost.spawn([MINIMAL])
        self.addAsyncCleanup(host.close)
        reply = await host.init(1, 1)
        self.assertEqual(reply["payload"]["code"], "unsupported_protocol_version")
        self.assertEqual(await host.exit_code(), 78)


class PipInstall(unittest.TestCase):
    def test_pip_installs_the_module_and_a_plugin_runs_with_it(self):
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "src")
            os.mkdir(src)
            for name in ("pyproject.toml", "README.md", "toru_plugin.py"):
                shutil.copy(os.path.join(SDK, name), src)
            out = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                                  "--disable-pip-version-check", "--target",
                                  os.path.join(tmp, "site"), src],
                                 capture_output=True, text=True, timeout=300)
            self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
            plugin = os.path.join(tmp, "plugins", "p.binary")
            os.mkdir(os.path.dirname(plugin))
            with open(plugin, "w") as f:
                f.write("from toru_plugin import Plugin\nPlugin('pip-installed').run()\n")
            out = subprocess.run([sys.executable, plugin, "--metadata"], capture_output=True,
                                 text=True, timeout=30,
                                 env={"PATH": os.environ["PATH"],
                                      "PYTHONPATH": os.path.join(tmp, "site")})
            self.assertEqual(json.loads(out.stdout)["id"], "pip-installed", out.stderr)


if __name__ == "__main__":
    unittest.main()
