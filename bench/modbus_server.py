"""Modbus server uplink: the cost of keeping N mapped tags current, and reads per second served.

    PYTHONPATH=$PWD .venv/bin/python bench/modbus_server.py [--tags 10000] [--seconds 5]

N float32 tags packed in holding registers 0..2N-1 (as dense as a SCADA map gets), each with a
status register in the input table. Prints: `Uplink.__aenter__` time, `Uplink.send` of one round of
all N samples (in batches of 1000, as the Sender hands them) per sample, and the requests/s one
pymodbus client gets reading 125-register blocks (62 floats each) round-robin over the map. The
client runs in the same process and event loop as the server, so the figure is the pair's (the
client's decoding included): a lower bound of what the server alone serves.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine
from pymodbus.client import AsyncModbusTcpClient

from edged.config import parse
from edged.model import Batch, Sample, Status
from edged.plugin import PluginContext
from uplink.modbus_server import Config, Uplink


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run(tags: int, seconds: float) -> None:
    entries = [
        {"tag": f"dev{i // 100:03d}/t{i % 100:03d}", "address": 2 * i, "status_register": i, "status_table": "input"}
        for i in range(tags)
    ]
    listen = f"127.0.0.1:{free_port()}"
    raw = {"gateway": {"data_dir": "/tmp"}, "uplinks": [{"name": "b", "type": "modbus_server", "listen": listen}]}
    raw["uplinks"][0]["map"] = entries  # type: ignore[index]
    cfg = parse(raw).uplinks[0]
    assert isinstance(cfg, Config)
    ctx = PluginContext("bench", Path("/tmp"), logging.getLogger("bench"))
    t0 = time.perf_counter()
    async with Uplink(cfg, ctx) as up:
        started = time.perf_counter() - t0
        rounds = []
        for r in range(5):
            now = time.time_ns()
            samples = [Sample(e["tag"], now, float(r * 1000 + i) / 7, Status.GOOD) for i, e in enumerate(entries)]
            t = time.perf_counter()
            for k in range(0, len(samples), 1000):
                await up.send(Batch("bench", 0, 0, True, samples[k : k + 1000]))
            rounds.append(time.perf_counter() - t)
        per_sample = statistics.median(rounds) / tags * 1e6
        client = AsyncModbusTcpClient("127.0.0.1", port=int(listen.rpartition(":")[2]), timeout=5)
        await client.connect()
        blocks = max(1, (2 * tags) // 124)
        n, t, deadline = 0, time.perf_counter(), time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            got = await client.read_holding_registers((n % blocks) * 124, count=124, device_id=1)
            assert not got.isError(), got
            n += 1
        rate = n / (time.perf_counter() - t)
        client.close()
    print(machine())
    print(f"tags {tags}: start {started * 1000:.0f} ms; send {per_sample:.1f} us/sample (median of 5 rounds)")
    print(f"reads of 124 registers (62 float32): {rate:.0f} requests/s = {rate * 62:.0f} values/s, one client")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tags", type=int, default=10000)
    p.add_argument("--seconds", type=float, default=5.0)
    a = p.parse_args()
    asyncio.run(run(a.tags, a.seconds))


if __name__ == "__main__":
    main()
