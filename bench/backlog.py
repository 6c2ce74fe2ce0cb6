"""Replay drain rate of a large backlog to mosquitto while live data keeps flowing. Prints figures.

    .venv/bin/python bench/backlog.py [--backlog 2000000] [--tags 500]

The target from the issue is a 24 h backlog of 500 tags at 1 Hz (43.2 M samples) drained in under
10 minutes; this measures a scaled backlog and extrapolates linearly (the drain reads by primary-key
range, so its cost per sample does not grow with the backlog). The subscriber runs in another
process; the figure is what it received, so it includes MQTT and JSON decoding on the other core.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from machine import machine

from buffer import Buffer
from edged.config import BufferConfig, ByteSize
from edged.delivery import Sender
from edged.model import Sample, Status
from edged.plugin import Backoff, PluginContext
from peers.mosquitto import Mosquitto
from uplink.mqtt import Config as MqttConfig
from uplink.mqtt import Uplink as MqttUplink

TARGET = 43_200_000


async def run(tmp: Path, backlog: int, n_tags: int, batch_size: int, share: float, extra: dict[str, object]) -> None:
    buf = Buffer(tmp / "buffer.db", BufferConfig(flush_interval=0.05))  # type: ignore[arg-type]
    t_fill = time.perf_counter()
    async with buf:
        t0 = time.time_ns() - 86_400 * 10**9
        names = [f"dev{k // 50}/tag{k}" for k in range(n_tags)]
        for start in range(0, backlog, 10_000):
            buf.put([Sample(names[i % n_tags], t0 + i * 10**6, float(i), Status.GOOD, 100, "bar")
                     for i in range(start, min(start + 10_000, backlog))])  # fmt: skip
            await buf.flush()
        print(f"filled {backlog:,} samples in {time.perf_counter() - t_fill:.1f}s")
        broker = Mosquitto(tmp)
        broker.start()
        try:
            counter = await asyncio.create_subprocess_exec(
                sys.executable, str(Path(__file__).with_name("mqtt_counter.py")), str(broker.port),
                str(10 * backlog), "900", stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            assert counter.stdout is not None
            await counter.stdout.readline()
            cfg = MqttConfig(name="bench", type="mqtt", port=broker.port, batch_size=batch_size, backfill_share=share,
                             **extra)  # type: ignore[arg-type]  # fmt: skip
            ctx = PluginContext("bench", tmp, logging.getLogger("bench"))
            sender = Sender(buf, cfg, lambda: MqttUplink(cfg, ctx), gateway_id="bench",
                            log=logging.getLogger("bench"), backoff=Backoff(0.1, 1.0))  # fmt: skip
            lags: list[float] = []
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(buf.run_writer(), name="writer"), tg.create_task(sender.run(), name="sender")]
                t_start = time.monotonic()
                i = 0
                while sender.stats.sent_historical < backlog:
                    # live data: every tag once per second, as the 24 h scenario
                    buf.put([Sample(n, time.time_ns(), float(i), Status.GOOD, 100, "bar") for n in names])
                    i += 1
                    for _ in range(10):
                        await asyncio.sleep(0.1)
                        if sender.stats.sent_live:
                            lags.append(sender.stats.live_lag_s)
                drain_s = time.monotonic() - t_start
                for t in tasks:
                    t.cancel()
            with contextlib.suppress(ProcessLookupError):
                counter.kill()
            await counter.wait()
        finally:
            broker.stop()
    rate = backlog / drain_s
    print(f"drained {backlog:,} historical samples in {drain_s:.1f}s = {rate:,.0f} samples/s "
          f"(batch {batch_size}, backfill_share {share}), live {sender.stats.sent_live:,} meanwhile")  # fmt: skip
    lags.sort()
    if lags:
        print(f"live lag during the drain (sample time -> broker ack): median {lags[len(lags) // 2] * 1000:.0f} ms,"
              f" max {lags[-1] * 1000:.0f} ms")  # fmt: skip
    print(f"extrapolated: 24 h of {n_tags} tags at 1 Hz ({TARGET / 1e6:.1f} M samples) drains in "
          f"{TARGET / rate / 60:.1f} min (target < 10 min)")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backlog", type=int, default=2_000_000)
    ap.add_argument("--tags", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=5000)
    ap.add_argument("--share", type=float, default=0.5)
    ap.add_argument("--inflight", type=int, default=16, help="max_inflight (1: the stop-and-wait Sender)")
    ap.add_argument("--batch-bytes", default="128KiB", help="batch_bytes")
    args = ap.parse_args()
    batch_bytes = ByteSize.parse(args.batch_bytes)
    extra = {"max_inflight": args.inflight, "batch_bytes": batch_bytes,
             "max_inflight_bytes": ByteSize(max(8 * 1024**2, batch_bytes))}  # fmt: skip
    logging.basicConfig(level=logging.ERROR)
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as d:
        asyncio.run(run(Path(d), args.backlog, args.tags, args.batch_size, args.share, extra))


if __name__ == "__main__":
    main()
