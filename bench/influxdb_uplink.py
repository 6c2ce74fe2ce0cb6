"""InfluxDB uplink throughput: line encoding alone, then the real Sender draining a pre-filled
buffer into Debian's influxd on 127.0.0.1 (tests/peers/influxdb.py). Prints figures, asserts nothing.

Run: .venv/bin/python bench/influxdb_uplink.py [--samples 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from buffer import Buffer  # noqa: E402
from edged.config import BufferConfig  # noqa: E402
from edged.delivery import Sender  # noqa: E402
from edged.model import Batch, Sample, Status  # noqa: E402
from edged.plugin import PluginContext  # noqa: E402
from peers.influxdb import Influxd  # noqa: E402
from peers.waiting import eventually  # noqa: E402
from uplink.influxdb import Config, Uplink  # noqa: E402

LOG = logging.getLogger("bench")


def samples(n: int, t0: int) -> list[Sample]:
    return [Sample(f"dev{i % 10}/t{i % 200}", t0 + i * 1000, i * 0.5, Status.GOOD, 100) for i in range(n)]


def encode_rate(n: int) -> None:
    up = Uplink(Config(name="i", type="influxdb", database="db"), PluginContext("gw", Path("."), LOG))  # type: ignore[arg-type]
    batch = Batch("gw", 1, n, False, samples(n, 1_700_000_000_000_000_000))
    t = time.perf_counter()
    lines, _ = up.encode(batch)
    enc = time.perf_counter() - t
    body = up.body(lines, list(range(n)))
    gz = time.perf_counter() - t - enc
    raw = sum(len(line.text) + 1 for line in lines if line is not None)
    print(f"encode: {n / enc:,.0f} lines/s, gzip {n / gz:,.0f} lines/s")
    print(f"bytes per line: {raw / n:.0f} raw, {len(body) / n:.1f} gzip")


async def drain(server: Influxd, tmp: Path, n: int, batch_size: int, inflight: int) -> None:
    db = f"b{batch_size}_{inflight}"
    server.create_database(db)
    buf = Buffer(tmp / f"{db}.db", BufferConfig(flush_interval=0.05))  # type: ignore[arg-type]
    async with buf:
        buf.put(samples(n, time.time_ns() - n * 1000))
        await buf.flush()
        c = Config(name="i", type="influxdb", url=server.url, database=db, batch_size=batch_size,
                   batch_bytes=16 * 1024**2, max_inflight=inflight, max_inflight_bytes=64 * 1024**2)  # type: ignore[arg-type]  # fmt: skip
        sender = Sender(buf, c, lambda: Uplink(c, PluginContext("gw", tmp, LOG)), gateway_id="gw", log=LOG)
        t = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(sender.run(), name="sender")
            await eventually(lambda: not buf.store.unacked("i", buf.head), 600, "the buffer drained", interval=0.05)
            task.cancel()
        dt = time.perf_counter() - t
    stored = sum(r["count"] for r in server.rows('SELECT count("value") FROM /.*/', db))
    print(f"batch {batch_size:5d} x {inflight:2d} in flight: {n / dt:9,.0f} samples/s  (stored {stored})")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=200_000)
    args = ap.parse_args()
    encode_rate(args.samples)
    with tempfile.TemporaryDirectory() as d, Influxd(Path(d)) as server:
        for batch_size, inflight in [(1000, 1), (5000, 1), (5000, 4)]:
            await drain(server, Path(d), args.samples, batch_size, inflight)


if __name__ == "__main__":
    asyncio.run(main())
