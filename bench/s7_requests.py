"""S7 read jobs per poll cycle for a realistic tag list: merged vs one per tag. Prints, asserts nothing.

1. A packaging line's map, as an engineer writes it (runs of tags for the 60 drives): process values
   and setpoints in DBs, status bits, M flags, I/O bits, recipe strings, DTL timestamps, counters.
   For each PDU size a CPU negotiates (240 S7-300/1200, 480 S7-400, 960 S7-1500) and several
   `max_gap` settings: jobs per cycle from the planner, the lower bound no packing beats, one job
   per tag, and the bytes read (holes included).
2. Polls/s and jobs/s of the real driver against python-snap7's server in another process
   (tests/peers/s7_server.py) on 127.0.0.1: the planned map, and the same tags with one item per
   job and no holes bridged (max_items = 1, max_gap = 0; the bits of one byte still share their
   item, so that is fewer jobs than one per tag). The server's memory is zeroed, so the two DTL
   tags read as BadDecodingError (year 0): logged once, as the driver does.

Run: .venv/bin/python bench/s7_requests.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import machine  # noqa: E402

from drivers.s7 import Config, Driver  # noqa: E402
from drivers.s7.plan import Item, Limits, bytes_read, lower_bound, plan  # noqa: E402
from edged.config import parse  # noqa: E402
from edged.plugin import PluginContext  # noqa: E402


def line_map() -> list[dict[str, Any]]:
    """The tags of a packaging line (453 after expansion)."""
    tags: list[dict[str, Any]] = []
    # DB1 process values: 40 REALs, packed, as a UDT array would be
    tags.append({"name": "pv{i:02}", "count": 40, "db": 1, "address": 0, "stride": 4, "type": "real"})
    # DB2 setpoints: 20 REALs then 10 INT modes after a reserved block
    tags.append({"name": "sp{i:02}", "count": 20, "db": 2, "address": 0, "stride": 4, "type": "real"})
    tags.append({"name": "mode{i:02}", "count": 10, "db": 2, "address": 100, "stride": 2, "type": "int"})
    # DB3 status: 64 bits in 8 bytes, and a recipe STRING[32] and two DTL timestamps further on
    for byte in range(8):
        for bit in range(8):
            tags.append({"name": f"st{byte}_{bit}", "db": 3, "address": byte, "bit": bit, "type": "bool"})
    tags.append({"name": "recipe", "db": 3, "address": 20, "type": "string", "length": 32})
    tags.append({"name": "batch_start", "db": 3, "address": 60, "type": "dtl"})
    tags.append({"name": "batch_end", "db": 3, "address": 72, "type": "dtl"})
    # DB4 counters: DINTs, scattered across the block (every 8th DINT is used)
    tags.append({"name": "count{i:02}", "count": 20, "db": 4, "address": 0, "stride": 32, "type": "dint"})
    # 60 drives in DB100, one 20-byte struct each: speed, current, status word (runs per member)
    tags.append({"name": "drive{i:02}/speed", "count": 60, "db": 100, "address": 0, "stride": 20, "type": "real"})
    tags.append({"name": "drive{i:02}/current", "count": 60, "db": 100, "address": 4, "stride": 20, "type": "real"})
    tags.append({"name": "drive{i:02}/status", "count": 60, "db": 100, "address": 8, "stride": 20, "type": "word"})
    tags.append({"name": "drive{i:02}/hours", "count": 60, "db": 100, "address": 12, "stride": 20, "type": "dint",
                 "interval": "10s"})  # fmt: skip
    # M flags, inputs, outputs
    tags.append({"name": "flag{i:02}", "count": 16, "area": "M", "address": 10, "stride": 1, "type": "bool"})
    tags.append({"name": "di{i:02}", "count": 24, "area": "I", "address": 0, "stride": 1, "type": "bool"})
    tags.append({"name": "do{i:02}", "count": 16, "area": "Q", "address": 0, "stride": 1, "type": "bool"})
    return tags


def device(tags: list[dict[str, Any]], port: int = 102, **kw: Any) -> Config:
    raw = {"name": "line", "type": "s7", "host": "127.0.0.1", "port": port, "timeout": "2s", "tags": tags} | kw
    dev = parse({"gateway": {"id": "bench", "data_dir": "/tmp"}, "devices": [raw]}).devices[0]
    assert isinstance(dev, Config)
    return dev


def planning_report(cfg: Config) -> None:
    items = [Item(k, t.area, t.db or 0, t.address, t.size) for k, t in enumerate(cfg.tags)]
    useful = sum(it.size for it in items)
    areas = len({(i.area, i.db) for i in items})
    print(f"tag list: {len(cfg.tags)} tags in {areas} areas/DBs, {useful} bytes of values (a bool counts its byte)")
    print(f"  {'PDU':>4} {'max_gap':>7}  {'jobs':>4}  {'bound':>5}  {'one per tag':>11}  {'bytes read':>10}")
    for pdu in (240, 480, 960):
        for gap in (0, 4, 16, 64):
            limits = Limits(pdu, 20, gap)
            reqs = plan(items, limits)
            note = "  <- default max_gap" if gap == 16 else ""
            print(
                f"  {pdu:>4} {gap:>7}  {len(reqs):>4}  {lower_bound(items, limits):>5}  {len(items):>11}"
                f"  {bytes_read(reqs):>10}{note}"
            )


async def throughput(port: int, tags: list[dict[str, Any]], seconds: float) -> None:
    ctx = PluginContext("bench", Path("/tmp"), logging.getLogger("bench.s7"))
    for label, cfg in (
        ("planned (max_gap 16, 20 items/job)", device(tags, port)),
        ("one item per job (max_items 1, gap 0)", device(tags, port, max_items=1, max_gap=0)),
    ):
        async with Driver(cfg, ctx) as drv:
            await drv.poll()  # warm up: plan cached
            c = drv.counters()
            base_req, base_polls = c["requests"], c["polls"]
            n_tags, t0 = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - t0) < seconds:
                n_tags += len(await drv.poll())
            c = drv.counters()
            reqs, polls = c["requests"] - base_req, c["polls"] - base_polls
            print(
                f"  {label:<38} {polls / elapsed:7.1f} polls/s {reqs / elapsed:7.0f} jobs/s {n_tags / elapsed:8.0f}"
                f" tags/s  ({reqs / max(polls, 1):.0f} jobs/poll, PDU {drv.pdu}, errors {c['errors']})"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    snap7_version = version("python-snap7")
    print(f"machine: {machine(f'python-snap7 {snap7_version}')}")
    tags = line_map()
    planning_report(device(tags))
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "peers" / "s7_server.py"), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={"PYTHONPATH": str(ROOT)},
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if not line.startswith("PORT "):
            raise SystemExit(f"the snap7 server did not start: {line!r}")
        port = int(line.split()[1])
        print(f"driver in this process, python-snap7 server (pid {server.pid}) on 127.0.0.1:{port}:")
        asyncio.run(throughput(port, tags, args.seconds))
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
