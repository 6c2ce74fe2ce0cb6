"""Ingest rate into the buffer and end-to-end rate to a local mosquitto. Prints figures; asserts nothing.

    .venv/bin/python bench/throughput.py [--seconds 5]

Runs on loopback only: a mosquitto it starts itself on 127.0.0.1 (needs the mosquitto binary).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from machine import machine

from buffer import Buffer, Store
from edged.config import BufferConfig
from edged.delivery import Sender
from edged.model import Sample, Status
from edged.plugin import Backoff, PluginContext
from peers.mosquitto import Mosquitto
from uplink.mqtt import Config as MqttConfig
from uplink.mqtt import Uplink as MqttUplink


def batch(n: int, i0: int, n_tags: int = 500) -> list[Sample]:
    ts = time.time_ns()
    return [Sample(f"dev{(i0 + k) % n_tags // 50}/tag{(i0 + k) % n_tags}", ts, float(i0 + k), Status.GOOD, 100, "bar")
            for k in range(n)]  # fmt: skip


def bench_store(tmp: Path, seconds: float) -> float:
    """Raw Store.append, 5000 rows per transaction, no event loop."""
    store = Store(tmp / "raw.db")
    rows = [batch(5000, i * 5000) for i in range(20)]
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        store.append(rows[n // 5000 % 20])
        n += 5000
    rate = n / (time.perf_counter() - t0)
    store.close()
    return rate


async def bench_ingest(tmp: Path, seconds: float) -> float:
    """Through Buffer.put and the writer task, as the daemon does it (1000-sample driver batches)."""
    buf = Buffer(tmp / "ingest.db", BufferConfig())
    pre = [batch(1000, i * 1000) for i in range(50)]
    async with buf, asyncio.TaskGroup() as tg:
        writer = tg.create_task(buf.run_writer(), name="writer")
        t0 = time.perf_counter()
        i = 0
        while time.perf_counter() - t0 < seconds:
            buf.put(pre[i % 50])
            i += 1
            if len(buf._pending) > 50_000:  # let the writer catch up, as a bounded queue would
                await asyncio.sleep(0.001)
            elif i % 5 == 0:
                await asyncio.sleep(0)
        await buf.flush()
        elapsed = time.perf_counter() - t0
        writer.cancel()
    return buf.stored / elapsed


async def bench_end_to_end(tmp: Path, seconds: float, rate: float | None, batch_size: int) -> dict[str, float]:
    """Producer -> buffer -> Sender -> mosquitto -> a subscriber in another process.

    rate=None produces as fast as the buffer takes it; the figure is what reached the subscriber
    per second from the first sample produced to the last one received.
    """
    broker = Mosquitto(tmp)
    broker.start()
    try:
        buf = Buffer(tmp / "e2e.db", BufferConfig(flush_interval=0.02))  # type: ignore[arg-type]
        cfg = MqttConfig(name="bench", type="mqtt", port=broker.port, batch_size=batch_size)
        ctx = PluginContext("bench", tmp, logging.getLogger("bench"))
        total = int((rate or 60_000) * seconds) // 500 * 500
        counter = await asyncio.create_subprocess_exec(
            sys.executable, str(Path(__file__).with_name("mqtt_counter.py")), str(broker.port), str(total),
            str(seconds * 10 + 30), stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert counter.stdout is not None
        await counter.stdout.readline()  # "ready"
        async with buf:
            sender = Sender(buf, cfg, lambda: MqttUplink(cfg, ctx), gateway_id="bench",
                            log=logging.getLogger("bench"), backoff=Backoff(0.1, 1.0))  # fmt: skip
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(buf.run_writer(), name="writer"), tg.create_task(sender.run(), name="sender")]
                t0 = time.monotonic()
                produced = 0
                while produced < total:
                    if rate is not None and produced > rate * (time.monotonic() - t0):
                        await asyncio.sleep(0.005)
                        continue
                    buf.put(batch(500, produced))
                    produced += 500
                    # bounded producer: wait while the writer is behind, as a driver's poll would
                    await asyncio.sleep(0.001 if len(buf._pending) > 20_000 else 0)
                line = await counter.stdout.readline()
                for t in tasks:
                    t.cancel()
        await counter.wait()
        res: dict[str, float] = json.loads(line)
        res["produced"] = produced
        res["rate"] = res["count"] / (res["last"] - t0) if res["last"] else 0.0
        return res
    finally:
        broker.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        print(f"buffer, raw Store.append (5000 rows/txn): {bench_store(tmp, args.seconds):>12,.0f} points/s")
        ingest = asyncio.run(bench_ingest(tmp, args.seconds))
        print(f"buffer, Buffer.put + writer task:          {ingest:>12,.0f} points/s")
        (tmp / "a").mkdir()
        e2e = asyncio.run(bench_end_to_end(tmp / "a", args.seconds, None, 2000))
        print(f"end to end to mosquitto (QoS 1, 2000/batch, as fast as possible): {e2e['rate']:>10,.0f} points/s"
              f" ({e2e['count']:,}/{e2e['produced']:,} delivered)")  # fmt: skip
        (tmp / "b").mkdir()
        lat = asyncio.run(bench_end_to_end(tmp / "b", args.seconds, 5000.0, 1000))
        print(f"latency at 5k points/s, sample timestamp -> subscriber: p50 {lat['p50_ms']:.1f} ms, "
              f"p99 {lat['p99_ms']:.1f} ms (flush interval 20 ms)")  # fmt: skip


if __name__ == "__main__":
    main()
