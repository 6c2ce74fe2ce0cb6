"""Fault suite: disk full, corrupt buffer file, long broker outage. Run alone with `-m fault`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from buffer import Store
from edged.model import Sample
from peers.mosquitto import Mosquitto, free_port
from peers.waiting import wait_until

pytestmark = pytest.mark.fault


def health(port: int) -> tuple[int, dict]:  # type: ignore[type-arg]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=3) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs: a real file system that really runs out of space."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root to mount a size-limited tmpfs")
    mnt = tmp_path / "fs"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_alarms_drops_oldest_and_recovers(tmp_path: Path, small_fs: Path) -> None:
    """Another process fills the disk: the write fails, the alarm is raised and ends once the buffer
    reuses its own file; freed space is taken again and the reserve comes back."""
    from system.test_disk_full import fill

    port = free_port()
    tags = "".join(f'[[devices.tags]]\nname = "t{i}"\nsignal = "counter"\n' for i in range(100))
    cfg = tmp_path / "edged.toml"
    cfg.write_text(
        f'[gateway]\nid = "gw-full"\ndata_dir = "{small_fs}"\nmetrics_listen = "127.0.0.1:{port}"\n'
        '[buffer]\nflush_interval = "50ms"\ntrim_interval = "1s"\nmin_free = "0"\n'
        f'[[devices]]\nname = "line"\ntype = "sim"\ninterval = "10ms"\n{tags}'
        f'[[uplinks]]\nname = "archive"\ntype = "file"\npath = "{tmp_path / "archive.jsonl"}"\nfsync = false\n'
    )
    log = tmp_path / "daemon.log"
    proc = subprocess.Popen([sys.executable, "-m", "edged", "run", "-c", str(cfg)], stderr=log.open("wb"))
    db, reserve = small_fs / "buffer.db", small_fs / "buffer.db.reserve"
    try:
        wait_until(lambda: db.stat().st_size > 2 * 1024 * 1024, 60, "a 2 MiB buffer")
        filler = small_fs / "filler"
        fill(filler)
        wait_until(lambda: "buffer write failed" in log.read_text(), 60, "the disk-full alarm")
        wait_until(lambda: "disk space is available again" in log.read_text(), 60, "writes into the file's free pages")
        assert health(port)[0] == 200, "the alarm is over while the disk is still full"
        assert not reserve.exists(), "the reserve was given up to let the writes through"
        assert proc.poll() is None, "the daemon stays up on a full disk"
        size = db.stat().st_size
        filler.unlink()
        wait_until(lambda: reserve.exists() and db.stat().st_size > size + 1024 * 1024, 60, "freed space used again")
        assert health(port)[0] == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, log.read_text()[-2000:]
    with Store(small_fs / "buffer.db") as store:
        assert store.integrity_ok()
        st = store.status()
        assert st.trimmed_size > 0, "oldest dropped and counted"
        assert st.newest_ns is not None and time.time_ns() - st.newest_ns < 10e9, "new samples kept flowing"
        first = store.first_seq()
        assert first is not None
        oldest, _ = store.read(first, store.head, 1)
        assert oldest[0].ts_ns > (st.newest_ns - 60e9), "what is left is the newest data"


def test_min_free_trims_before_the_disk_fills(tmp_path: Path) -> None:
    store = Store(tmp_path / "b.db")
    store.register_uplink("u")
    for i in range(10):
        store.append([Sample("d/t", i * 1000 + k, float(k)) for k in range(1000)])
    used = store.used_bytes()
    store.free_bytes = lambda: used // 2  # type: ignore[method-assign]  # the file system is nearly full
    res = store.trim(retention_ns=10**30, max_bytes=10**12, now_ns=0, min_free=used // 4)
    assert res.by_size > 0 and store.status().uplinks[0].dropped == res.by_size


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
