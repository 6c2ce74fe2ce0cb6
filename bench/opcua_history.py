"""HistoryRead from the buffer: how long one tag's 1 h and 24 h take from a 500-tag buffer.

Fills a buffer with `--tags` tags x `--hours` at `--rate` Hz (default 500 x 24 h x 1 Hz = 43.2 M
rows, ~1.5 GB, a few minutes to write), then reads one tag the way the OPC UA server does (pages
of up to 10,000 values, ROW_BUDGET rows of work each, uplink/opcua/history.py) and prints the
time-map build, each range's total time and pages. Also measures the WAL bytes written per sample
with and without an index on (tag_id, ts_ns), the alternative this design avoids.

    PYTHONPATH=$PWD .venv/bin/python bench/opcua_history.py [--tags 500] [--hours 24] [--rate 1]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time
from pathlib import Path

from buffer.history import Position, TimeMap, read_tag
from buffer.store import Store
from edged.model import Sample
from uplink.opcua.history import MAX_VALUES, ROW_BUDGET

SEC = 1_000_000_000


def fill(store: Store, tags: int, seconds: int, rate: float, t0: int) -> int:
    step = int(SEC / rate)
    rows = 0
    batch: list[Sample] = []
    for k in range(int(seconds * rate)):
        ts = t0 + k * step
        batch.extend(Sample(f"dev{j // 50}/tag{j}", ts, float(k % 1000) / 7) for j in range(tags))
        if len(batch) >= 5000:
            store.append(batch)
            rows += len(batch)
            batch = []
    if batch:
        store.append(batch)
        rows += len(batch)
    return rows


def read_all(store: Store, tmap: TimeMap, tag: str, lo: int, hi: int) -> tuple[int, int, float, float]:
    """(values, pages, total s, slowest page s) reading [lo, hi] in HistoryRead pages."""
    pos: Position | None = None
    n = pages = 0
    slowest = 0.0
    t = time.perf_counter()
    while True:
        p0 = time.perf_counter()
        page = read_tag(store, tmap, tag, lo, hi, start=pos, limit=MAX_VALUES, budget=ROW_BUDGET)
        slowest = max(slowest, time.perf_counter() - p0)
        n += len(page.samples)
        pages += 1
        if page.next is None:
            return n, pages, time.perf_counter() - t, slowest
        pos = page.next


def wal_bytes_per_sample(index: bool, tags: int, rows: int) -> float:
    """WAL bytes written per sample at the writer's default flush (0.1 s: rate x tags / 10 rows)."""
    with tempfile.TemporaryDirectory() as d:
        store = Store(Path(d) / "w.db")
        if index:
            store.db.execute("CREATE INDEX by_tag_time ON samples(tag_id, ts_ns)")
        fill(store, tags, 60, 1.0, 1_700_000_000 * SEC)  # a minute already there
        store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        store.db.execute("PRAGMA wal_autocheckpoint=0")  # the WAL keeps every frame written
        per_flush = max(1, tags // 10)
        t = 1_800_000_000 * SEC
        for k in range(rows // per_flush):
            store.append([Sample(f"dev{j // 50}/tag{j}", t + k * SEC // 10, 1.0) for j in range(k % 10, tags, 10)])
        size = os.path.getsize(Path(d) / "w.db-wal")
        store.db.close()
        return size / rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tags", type=int, default=500)
    ap.add_argument("--hours", type=float, default=24)
    ap.add_argument("--rate", type=float, default=1.0, help="samples per second per tag")
    ap.add_argument("--dir", default=None)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        store = Store(Path(d) / "buffer.db")
        t0 = 1_700_000_000 * SEC
        seconds = int(a.hours * 3600)
        t = time.perf_counter()
        rows = fill(store, a.tags, seconds, a.rate, t0)
        took, mib = time.perf_counter() - t, store.file_bytes() / 2**20
        print(f"filled {rows:,} rows ({a.tags} tags x {a.hours:g} h x {a.rate:g} Hz) in {took:.0f} s, {mib:.0f} MiB")
        tmap = TimeMap()
        t = time.perf_counter()
        while not tmap.refresh(store):
            pass
        print(f"time map of the whole buffer: {time.perf_counter() - t:.2f} s (once per start, in steps)")
        tag = f"dev0/tag{a.tags // 2 % 50}"
        end = t0 + seconds * SEC
        for label, span in (("1 h", 3600), (f"{a.hours:g} h", seconds)):
            n, pages, total, slowest = read_all(store, tmap, tag, end - span * SEC, end - 1)
            print(
                f"{label} of one tag: {n:,} values in {pages} pages, {total:.2f} s"
                f" ({slowest * 1000:.0f} ms slowest page)"
            )
        store.close()
    for index in (False, True):
        b = wal_bytes_per_sample(index, a.tags, 100_000)
        print(
            f"WAL bytes written per sample at 0.1 s flushes,"
            f" {'with' if index else 'without'} an index on (tag_id, ts_ns): {b:,.0f}"
        )


if __name__ == "__main__":
    try:
        main()
    except sqlite3.Error as exc:
        raise SystemExit(f"bench failed: {exc}") from exc
