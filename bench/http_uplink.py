"""HTTP uplink throughput through the real Sender: prints figures, asserts nothing.

A buffer is pre-filled with N samples; the Sender then drains it as historical batches POSTed to
tests/peers/http_server.py running in another process on 127.0.0.1 (so the server does not share
this process's GIL). Reported: batches/s and samples/s until everything is acknowledged, for a few
batch sizes, with and without gzip, and the request body size per sample.

Run: .venv/bin/python bench/http_uplink.py [--samples 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from buffer import Buffer  # noqa: E402
from edged.config import BufferConfig  # noqa: E402
from edged.delivery import Sender  # noqa: E402
from edged.model import Batch, Sample, Status  # noqa: E402
from edged.plugin import PluginContext  # noqa: E402
from uplink.http import Config, Uplink  # noqa: E402

SERVER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from peers.http_server import HttpPeer
with HttpPeer() as p:
    print(p.port, flush=True)
    sys.stdin.read()
"""


async def fill(path: Path, n: int) -> None:
    async with Buffer(path, BufferConfig()) as buf:  # type: ignore[arg-type]
        t0 = time.time_ns() - 3600 * 10**9
        for lo in range(0, n, 10_000):
            buf.put([Sample(f"line1/t{k % 200}", t0 + k * 10**6, k * 0.5, Status.GOOD, 100, "bar")
                     for k in range(lo, min(n, lo + 10_000))])  # fmt: skip
            await buf.flush()


async def drain(path: Path, url: str, n: int, batch_size: int, compression: str) -> tuple[float, int]:
    cfg = Config(name=f"b{batch_size}{compression}", type="http", url=url, batch_size=batch_size,
                 compression=compression)  # type: ignore[arg-type]  # fmt: skip
    ctx = PluginContext("bench", path.parent, logging.getLogger("bench"))
    async with Buffer(path, BufferConfig()) as buf:  # type: ignore[arg-type]
        sender = Sender(buf, cfg, lambda: Uplink(cfg, ctx), gateway_id="bench", log=logging.getLogger("bench"))
        t0 = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(sender.run(), name="sender")
            while sender.stats.sent_historical < n:  # noqa: ASYNC110 - polling a counter is the point
                await asyncio.sleep(0.005)
            task.cancel()
        return time.perf_counter() - t0, sender.stats.batches


def body_bytes(batch_size: int) -> tuple[int, int]:
    plain = Uplink(Config(name="x", type="http", url="http://127.0.0.1/"), plain_ctx())
    gz = Uplink(Config(name="x", type="http", url="http://127.0.0.1/", compression="gzip"), plain_ctx())
    t0 = time.time_ns()
    seq0 = 1_718_000_000_000_000
    samples = [Sample(f"line1/t{k % 200}", t0 + k * 10**6, 12.0 + k * 0.001, 0, 100, "bar", seq0 + k)
               for k in range(batch_size)]  # fmt: skip
    batch = Batch("bench", seq0, seq0 + batch_size - 1, True, samples)
    return len(plain.encode(batch)), len(gz.encode(batch))


def plain_ctx() -> PluginContext:
    return PluginContext("bench", Path("."), logging.getLogger("bench"))


async def run(url: str, n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "buffer.db"
        await fill(path, n)
        print(f"{n} samples, 200 tags, server in another process (http.server, threaded)")
        print(f"{'batch':>6} {'gzip':>5} {'batches/s':>10} {'samples/s':>10} {'B/sample':>9}")
        for batch_size in (100, 500, 2000):
            plain, gz = body_bytes(batch_size)
            for compression in ("none", "gzip"):
                secs, batches = await drain(path, url, n, batch_size, compression)
                size = (gz if compression == "gzip" else plain) / batch_size
                print(f"{batch_size:>6} {compression:>5} {batches / secs:>10.0f} {n / secs:>10.0f} {size:>9.1f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=200_000)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{platform.platform()}")  # fmt: skip
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(ROOT / "tests")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        asyncio.run(run(f"http://127.0.0.1:{server.stdout.readline().strip()}/ingest", args.samples))
    finally:
        if server.stdin:
            server.stdin.close()
        server.wait(5)


if __name__ == "__main__":
    main()
