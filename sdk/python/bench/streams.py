"""Rough throughput of the SDK's protocol 2 streams: `python3 sdk/python/bench/streams.py`.

The test host (tests/fakehost.py) runs in the same process, on the same event loop, so the figures
are the SDK's cost plus the test host's; a host in Rust costs far less per byte.
"""

import asyncio
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from fakehost import FakeHost  # noqa: E402
from toru_plugin import Plugin, Response  # noqa: E402

SIZE = 64 * 1024 * 1024
CHUNK = b"x" * 65536

plugin = Plugin("bench")


@plugin.get("/download")
async def download(req):
    async def chunks():
        for _ in range(SIZE // len(CHUNK)):
            yield CHUNK
    return Response(chunks())


@plugin.post("/upload")
async def upload(req):
    size = 0
    async for chunk in req.body:
        size += len(chunk)
    return {"bytes": size}


async def main():
    host = await FakeHost.serve(plugin)
    await host.init(1, 2)
    start = time.perf_counter()
    _, _, body = await host.response(host.http("GET", "/bench/download"))
    took = time.perf_counter() - start
    print(f"download of {len(body) >> 20} MiB: {len(body) / took / 1e6:.0f} MB/s")
    start = time.perf_counter()
    await host.response(host.http("POST", "/bench/upload", body=b"y" * SIZE))
    took = time.perf_counter() - start
    print(f"upload of {SIZE >> 20} MiB: {SIZE / took / 1e6:.0f} MB/s")
    await host.close()


if __name__ == "__main__":
    asyncio.run(main())
