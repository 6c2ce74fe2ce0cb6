"""What the Sparkplug node's QoS 0 confirmation costs: samples/s through the real uplink, per RTT.

    PYTHONPATH=$PWD .venv/bin/python bench/sparkplug_confirm.py [--rtt 0,50,300] [--batch-size 500] [--batches 20]

Each cell sends `--batches` batches of `--batch-size` samples (5 devices, so 5 DDATA per batch) through
the real Sparkplug uplink to a mosquitto on 127.0.0.1, through /work/shared/tools/wanproxy.py adding
the RTT (no bandwidth cap). Modes:
  queued     the previous acknowledgement: `send` returns once paho queued the bytes (confirmation
             off); the clock stops at one confirmation after the last batch, so the figure is the
             rate at which the broker really read the data
  confirmed  `send` returns at the UNSUBACK after its batch (what the Sender gets today, one batch
             at a time): at most one batch per RTT
  window4    four sends overlapping, as a Sender with a window of batches would call it: they share
             the confirmations
Prints samples/s and confirmations per batch.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from machine import machine

from edged.config import Duration
from edged.model import Batch, Sample
from edged.plugin import PluginContext
from peers.mosquitto import Mosquitto, free_port
from uplink.sparkplug import Config, Uplink
from uplink.sparkplug.session import Session

PROXY = Path(os.environ.get("WANPROXY", "/work/shared/tools/wanproxy.py"))
NAMES = [f"dev{k % 5}/tag{k}" for k in range(500)]


def proxy(target: int, rtt_ms: float) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(PROXY), str(port), str(target), "--delay-ms", str(rtt_ms / 2)])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("wanproxy did not start listening")


async def cell(port: int, mode: str, batch_size: int, batches: int, data_dir: Path) -> tuple[float, float]:
    cfg = Config(name="spb", type="sparkplug", group_id="bench", port=port, timeout=Duration(30.0))
    real_confirm = Session.confirm
    if mode == "queued":

        async def no_confirm(self: Session) -> None:
            return

        Session.confirm = no_confirm  # type: ignore[method-assign]
    try:
        async with Uplink(cfg, PluginContext("gw", data_dir, logging.getLogger("bench"))) as up:
            seq = 1
            work: list[Batch] = []
            for _ in range(batches):
                now = time.time_ns()
                samples = [Sample(NAMES[i % len(NAMES)], now, float(i), seq=seq + i) for i in range(batch_size)]
                work.append(Batch("gw", seq, seq + batch_size - 1, False, samples))
                seq += batch_size
            await up.send(work[0])  # births and the first batch out of the way
            before = up.counters()["data_confirmations"]
            start = time.perf_counter()
            if mode == "window4":
                queue = list(work[1:])

                async def worker() -> None:
                    while queue:
                        await up.send(queue.pop(0))

                async with asyncio.TaskGroup() as tg:
                    for n in range(4):
                        tg.create_task(worker(), name=f"bench-send-{n}")
            else:
                for b in work[1:]:
                    await up.send(b)
            await real_confirm(up.session)  # the broker has read everything
            elapsed = time.perf_counter() - start
            rounds = up.counters()["data_confirmations"] - before
    finally:
        Session.confirm = real_confirm  # type: ignore[method-assign]
    return (batches - 1) * batch_size / elapsed, rounds / (batches - 1)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rtt", type=lambda s: [float(x) for x in s.split(",")], default=[0.0, 50.0, 300.0])
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--batches", type=int, default=20)
    args = ap.parse_args()
    print(machine())
    print(f"{'rtt ms':>6} {'mode':>9} {'samples/s':>10} {'confirmations/batch':>20}")
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp))
        broker.start()
        try:
            for rtt in args.rtt:
                prox, port = proxy(broker.port, rtt)
                try:
                    for mode in ("queued", "confirmed", "window4"):
                        rate, per = await cell(port, mode, args.batch_size, args.batches, Path(tmp) / f"{rtt}-{mode}")
                        print(f"{rtt:>6.0f} {mode:>9} {rate:>10,.0f} {per:>20.2f}", flush=True)
                finally:
                    prox.terminate()
                    prox.wait()
        finally:
            broker.stop()


if __name__ == "__main__":
    if not PROXY.exists():
        sys.exit(f"{PROXY} not found (set WANPROXY to the proxy script)")
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main())
