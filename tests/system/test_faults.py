"""Fault suite: min_free, corrupt buffer file, long broker outage; disk full is in test_disk_full.py.

Run alone with `-m fault`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from buffer import Store
from edged.model import Sample
from peers.mosquitto import Mosquitto
from peers.waiting import wait_until

pytestmark = pytest.mark.fault


def test_min_free_trims_before_the_disk_fills(tmp_path: Path) -> None:
    store = Store(tmp_path / "b.db")
    store.register_uplink("u")
    for i in range(10):
        store.append([Sample("d/t", i * 1000 + k, float(k)) for k in range(1000)])
    used = store.used_bytes()
    store.free_bytes = lambda: used // 2  # type: ignore[method-assign]  # the file system is nearly full
    res = store.trim(retention_ns=10**30, max_bytes=10**12, now_ns=0, min_free=used // 4)
    assert res.by_size > 0 and store.status().uplinks[0].dropped == res.by_size


def test_trim_on_a_full_disk_deletes_just_enough_then_nothing(tmp_path: Path) -> None:
    """A full file system: the first trim frees ~2 % for new rows; with those free pages in the file
    the buffer is not full any more and the next trims delete nothing (the file does not shrink)."""
    store = Store(tmp_path / "b.db")
    store.register_uplink("u")
    for i in range(50):
        store.append([Sample("d/t", i * 10_000 + k, float(k)) for k in range(10_000)])
    store.free_bytes = lambda: 0  # type: ignore[method-assign]  # another process filled the disk
    res = store.trim(retention_ns=10**30, max_bytes=10**12, now_ns=0)
    assert 0 < res.by_size <= 500_000 * 0.03, res
    for _ in range(3):
        assert store.trim(retention_ns=10**30, max_bytes=10**12, now_ns=0).deleted == 0, "no cycle"
    store.append([Sample("d/t", 10**12 + k, 1.0) for k in range(res.by_size // 4)])  # reuses free pages
    assert store.trim(retention_ns=10**30, max_bytes=10**12, now_ns=0).deleted == 0
    assert store.status().uplinks[0].dropped == res.by_size


def test_corrupt_buffer_is_kept_aside_and_the_daemon_starts_fresh(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "buffer.db").write_bytes(b"SQLite format 3\0" + os.urandom(8192))
    cfg = tmp_path / "edged.toml"
    cfg.write_text(
        f'[gateway]\ndata_dir = "{data}"\n[[devices]]\nname = "d"\ntype = "sim"\ninterval = "100ms"\n'
        '[[devices.tags]]\nname = "a"\n[[uplinks]]\nname = "f"\ntype = "file"\n'
    )
    log = tmp_path / "daemon.log"
    proc = subprocess.Popen([sys.executable, "-m", "edged", "run", "-c", str(cfg)], stderr=log.open("wb"))
    try:
        wait_until(lambda: (data / "samples.jsonl").stat().st_size > 0, 15, "samples from the fresh buffer")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    kept = list(data.glob("buffer.db.bad-*"))
    assert kept, "the unusable file is kept aside, never deleted"
    assert "buffer unusable, kept aside as" in log.read_text()
    with Store(data / "buffer.db") as s:
        assert s.integrity_ok() and s.head > 0


async def test_broker_down_for_long_then_everything_in_order(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """A 20 s outage at 1k samples/s: all of it arrives afterwards, in order per tag per stream."""
    import asyncio

    from contract.test_mqtt import Collector, check_order, produce, running
    from peers.waiting import eventually

    col = Collector(mosquitto.port)
    async with asyncio.TaskGroup() as tg:
        col_task = tg.create_task(col.run(), name="collector")
        await asyncio.wait_for(col.connected.wait(), 5)
        async with running(tmp_path, mosquitto.port, batch_size=1000) as (buf, _sender):
            stop, produced = asyncio.Event(), [0]
            prod = tg.create_task(produce(buf, 50, 20, produced, stop), name="producer")
            await eventually(lambda: col.seqs(), 10, "live data")
            mosquitto.stop()
            await asyncio.sleep(20)
            mosquitto.start()
            await asyncio.sleep(2)
            stop.set()
            await prod
            await asyncio.sleep(0.2)
            head = buf.head
            await eventually(
                lambda: max(col.seqs(), default=0) >= head and not buf.store.unacked("broker", head), 60, "all"
            )
        col_task.cancel()
    seqs = set(col.seqs())
    assert seqs == set(range(min(seqs), min(seqs) + buf.stored))
    check_order(col.messages, "live")
    check_order(col.messages, "historical")
