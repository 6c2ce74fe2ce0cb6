"""Modbus request planning and throughput: prints figures, asserts nothing.

1. For a sample register map (200 tags over holding/input registers and coils, with gaps), the
   requests the planner issues per poll cycle against the exact optimum (dynamic programme), the
   bound without any gap limit, and one request per tag; at several `max_gap` settings.
2. Reads/s and tags/s of the real driver against a pymodbus TCP server in another process
   (tests/peers/modbus_server.py) on 127.0.0.1.

Run: .venv/bin/python bench/modbus_requests.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pymodbus  # noqa: E402
from machine import machine  # noqa: E402

from drivers.modbus import Config, Driver  # noqa: E402
from drivers.modbus.plan import Item, Limits, optimal_request_count, plan, registers_read  # noqa: E402
from edged.config import parse  # noqa: E402
from edged.plugin import PluginContext  # noqa: E402

SIZES = {"uint16": 1, "int16": 1, "int32": 2, "float32": 2, "float64": 4}


def sample_map(seed: int = 7) -> list[dict[str, Any]]:
    """200 tags: 110 holding and 50 input registers in clusters with gaps, 40 coils in banks."""
    rng = random.Random(seed)
    tags: list[dict[str, Any]] = []
    for table, n in (("holding_register", 110), ("input_register", 50)):
        addr = 0
        for i in range(n):
            dtype = rng.choice(list(SIZES))
            tags.append({"name": f"{table[:2]}{i}", "table": table, "address": addr, "type": dtype})
            addr += SIZES[dtype]
            # mostly packed, sometimes a small hole, now and then a jump to another block
            addr += rng.choice([0, 0, 0, 0, 1, 2, 3, 6, 15, 40, 120])
    addr = 0
    for i in range(40):
        tags.append({"name": f"co{i}", "table": "coil", "address": addr})
        addr += rng.choice([1, 1, 1, 2, 5, 80])
    return tags


def items_of(tags: list[dict[str, Any]]) -> list[Item]:
    return [Item(i, t["table"], t["address"], SIZES.get(t.get("type", "uint16"), 1)) for i, t in enumerate(tags)]


def planning_report(tags: list[dict[str, Any]]) -> None:
    items = items_of(tags)
    tables = {t["table"] for t in tags}
    per_table = ", ".join(f"{sum(t['table'] == tb for t in tags)} {tb}" for tb in sorted(tables))
    print(f"register map: {len(tags)} tags ({per_table})")
    unbounded = optimal_request_count(items, Limits(max_gap=65535, max_gap_bits=65535))
    print(f"  one request per tag: {len(items)}")
    print(f"  optimum with no gap limit (only 125 registers / 2000 bits per request): {unbounded}")
    useful = sum(it.size for it in items)
    print(f"  {'max_gap':>7} {'_bits':>5}  {'planner':>7}  {'optimal':>7}  {'read (regs+bits)':>16}  useful {useful}")
    for gap, gap_bits in ((0, 0), (2, 16), (5, 32), (10, 64), (20, 128), (50, 400), (125, 2000)):
        limits = Limits(max_gap=gap, max_gap_bits=gap_bits)
        reqs = plan(items, limits)
        t0 = time.perf_counter()
        opt = optimal_request_count(items, limits)
        dp_ms = (time.perf_counter() - t0) * 1e3
        note = "  <- defaults" if (gap, gap_bits) == (10, 64) else ""
        print(
            f"  {gap:>7} {gap_bits:>5}  {len(reqs):>7}  {opt:>7}  {registers_read(reqs):>16}  (DP {dp_ms:.1f} ms){note}"
        )


def device(tags: list[dict[str, Any]], port: int) -> Config:
    raw = {
        "name": "bench",
        "type": "modbus",
        "host": "127.0.0.1",
        "port": port,
        "timeout": "2s",
        "tags": tags,
    }
    dev = parse({"gateway": {"id": "bench", "data_dir": "/tmp"}, "devices": [raw]}).devices[0]
    assert isinstance(dev, Config)
    return dev


async def throughput(port: int, tags: list[dict[str, Any]], seconds: float) -> None:
    ctx = PluginContext("bench", Path("/tmp"), logging.getLogger("bench.modbus"))
    for label, cfg in (
        ("planned map (default max_gap 10)", device(tags, port)),
        ("single uint16 tag", device([{"name": "one", "address": 0}], port)),
    ):
        async with Driver(cfg, ctx) as drv:
            await drv.poll()  # warm up: plan cached, connection settled
            base_req, base_polls = drv.counters["requests"], drv.counters["polls"]
            n_tags, t0 = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - t0) < seconds:
                n_tags += len(await drv.poll())
            reqs = drv.counters["requests"] - base_req
            polls = drv.counters["polls"] - base_polls
            print(
                f"  {label:<34} {polls / elapsed:8.0f} polls/s {reqs / elapsed:8.0f} reads/s"
                f" {n_tags / elapsed:9.0f} tags/s  ({reqs // max(polls, 1)} requests/poll, errors"
                f" {drv.counters['errors']})"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    print(f"machine: {machine(f'pymodbus {pymodbus.__version__}')}")
    tags = sample_map()
    planning_report(tags)
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "peers" / "modbus_server.py"), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if not line.startswith("PORT "):
            raise SystemExit(f"the pymodbus server did not start: {line!r}")
        port = int(line.split()[1])
        print(f"TCP, driver in this process, pymodbus server (pid {server.pid}) on 127.0.0.1:{port}:")
        asyncio.run(throughput(port, tags, args.seconds))
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
