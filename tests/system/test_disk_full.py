"""The buffer on a small, really full file system (a size-limited tmpfs; needs root, skipped otherwise).

Issue 12: after a disk-full episode the gateway must come back to healthy by itself, with nothing lost
beyond the counted oldest drops, and must not keep deleting its own history; a small file system
with the default min_free must not empty the buffer.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from buffer import Store
from contract.test_mqtt import Collector
from peers.mosquitto import Mosquitto, free_port
from peers.waiting import wait_until

pytestmark = pytest.mark.fault

MiB = 1024 * 1024


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mount size-limited tmpfs file systems: real ones that really run out of space."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root to mount a size-limited tmpfs")
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        mnt = tmp_path / f"fs{len(mounted)}"
        mnt.mkdir()
        if subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True
        ).returncode:
            pytest.skip("cannot mount tmpfs here")
        mounted.append(mnt)
        return mnt

    try:
        yield mount
    finally:
        for mnt in mounted:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def daemon_config(tmp_path: Path, data: Path, metrics: int, broker: int, *, n_tags: int = 200) -> Path:
    tags = "".join(f'[[devices.tags]]\nname = "t{i}"\nsignal = "counter"\n' for i in range(n_tags))
    cfg = tmp_path / "edged.toml"
    cfg.write_text(
        f'[gateway]\nid = "gw-full"\ndata_dir = "{data}"\nmetrics_listen = "127.0.0.1:{metrics}"\n'
        '[buffer]\nflush_interval = "50ms"\ntrim_interval = "1s"\n'  # min_free: the default
        f'[[devices]]\nname = "line"\ntype = "sim"\ninterval = "10ms"\n{tags}'
        f'[[uplinks]]\nname = "broker"\ntype = "mqtt"\nhost = "127.0.0.1"\nport = {broker}\n'
        'batch_size = 1000\ntimeout = "2s"\n'
    )
    return cfg


def start(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "edged", "run", "-c", str(cfg)], stdout=subprocess.DEVNULL, stderr=log.open("ab")
    )


def stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, log.read_text()[-3000:]


def http_health(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=3) as r:
            json.loads(r.read())
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def cli_health(data: Path) -> int:
    cmd = [sys.executable, "-m", "edged", "health", "--data-dir", str(data), "--quiet"]
    return subprocess.run(cmd, capture_output=True, timeout=30).returncode


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as r:
        text = r.read().decode()
    m = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def buffer_rows(db: Path) -> tuple[int, int]:
    """(samples, live bytes) read beside the running daemon, briefly (a reader holds the WAL back)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        rows = con.execute("SELECT count(*) FROM samples").fetchone()[0]
        pages = con.execute("PRAGMA page_count").fetchone()[0] - con.execute("PRAGMA freelist_count").fetchone()[0]
        return int(rows), int(pages * con.execute("PRAGMA page_size").fetchone()[0])
    finally:
        con.close()


def fill(path: Path) -> int:
    """Take every byte the file system has left, as another process (logs, a core dump) would."""
    written = 0
    with open(path, "wb", buffering=0) as fh:
        for chunk in (MiB, 64 * 1024, 4096):
            block = b"\xff" * chunk
            while True:
                try:
                    written += fh.write(block) or 0
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    return written


async def until(pred: Callable[[], object], timeout: float, what: str) -> None:
    """`wait_until` off the event loop, so the collector keeps receiving meanwhile."""
    await asyncio.to_thread(wait_until, pred, timeout, what, interval=0.3)


@pytest.mark.timeout(300)
async def test_full_disk_recovers_nothing_lost_beyond_counted_drops_and_no_cycle(
    tmp_path: Path, tmpfs: Callable[[str], Path], mosquitto: Mosquitto
) -> None:
    data = tmpfs("16m")
    port = free_port()
    log = tmp_path / "daemon.log"
    col = Collector(mosquitto.port)
    async with asyncio.TaskGroup() as tg:
        col_task = tg.create_task(col.run(), name="collector")
        await until(col.connected.is_set, 10, "the collector")
        proc = start(daemon_config(tmp_path, data, port, mosquitto.port), log)
        try:
            await until(lambda: col.seqs(), 30, "live data at the subscriber")
            lo = min(col.seqs())
            mosquitto.stop()  # from here everything is owed to the broker uplink

            db = data / "buffer.db"
            await until(lambda: db.stat().st_size > 3 * MiB, 60, "a 3 MiB backlog")
            filled = await asyncio.to_thread(fill, data / "filler")  # the disk is full now
            assert filled > 0
            await until(lambda: metric(port, "edged_buffer_write_errors_total") >= 1, 60, "a failed buffer write")
            assert "buffer write failed" in log.read_text()

            # the disk stays full and the broker stays down: the buffer reuses its own file
            await until(lambda: http_health(port) == 200, 60, "/health healthy again on the still-full disk")
            await until(lambda: cli_health(data) == 0, 60, "`edged health` healthy again")
            assert "buffer writes recovered" in log.read_text()
            assert proc.poll() is None
            errors_at_recovery = metric(port, "edged_buffer_write_errors_total")

            mosquitto.start()
            head = int(metric(port, "edged_buffer_head_seq"))

            def covered() -> set[int]:
                got = {s for s in col.seqs() if lo <= s <= head}
                for g in gaps():
                    got.update(range(max(lo, g["lo_seq"]), min(head, g["hi_seq"]) + 1))
                return got

            def gaps() -> list[dict[str, int]]:
                return [g for m in col.messages for g in m.doc.get("gaps", [])]

            await until(lambda: len(covered()) == head - lo + 1, 120, "every sample received or in a gap record")
            dropped = [g for g in gaps() if g["hi_seq"] >= lo and g["lo_seq"] <= head]
            assert dropped, "the full disk cost the oldest samples (and they are reported)"
            for g in dropped:
                assert g["count"] == g["hi_seq"] - g["lo_seq"] + 1, f"a gap record counts every sample in it: {g}"
            received = {s for s in col.seqs() if lo <= s <= head}
            gapped: set[int] = set()
            for g in dropped:
                gapped.update(range(max(lo, g["lo_seq"]), min(head, g["hi_seq"]) + 1))
            assert len(received - gapped) + len(gapped) == head - lo + 1, "received + dropped == produced"
            assert max(gapped) < max(received), "the oldest were dropped, the newest delivered"

            # nothing owed now: the ring rotates on the full disk but keeps its size
            await until(lambda: metric(port, "edged_uplink_backlog_samples") < 50_000, 60, "the backlog drained")
            rows0, _ = buffer_rows(db)
            start_head = metric(port, "edged_buffer_head_seq")
            await until(
                lambda: metric(port, "edged_buffer_head_seq") - start_head >= rows0, 120, "a full turn of the ring"
            )
            rows1, _ = buffer_rows(db)
            assert rows1 >= 0.9 * rows0, f"the buffer keeps deleting its own history: {rows0} -> {rows1} rows"
            assert metric(port, "edged_buffer_write_errors_total") == errors_at_recovery, "no new disk-full cycle"
            assert http_health(port) == 200 and cli_health(data) == 0
        finally:
            try:
                stop(proc, log)
            finally:
                col_task.cancel()
    with Store(data / "buffer.db") as store:
        assert store.integrity_ok()
        up = {u.name: u for u in store.status().uplinks}["broker"]
        assert up.dropped == sum(g["count"] for g in gaps()), "the buffer's drop counter matches the gap records"


@pytest.mark.timeout(240)
def test_small_file_system_with_default_min_free_keeps_a_full_buffer(
    tmp_path: Path, tmpfs: Callable[[str], Path]
) -> None:
    """The old fixed 64 MiB min_free made the cap 0 on a small disk: every trim emptied the buffer."""
    data = tmpfs("12m")
    port = free_port()
    cfg = daemon_config(tmp_path, data, port, free_port())  # nobody listens: everything stays owed
    check = subprocess.run([sys.executable, "-m", "edged", "check-config", str(cfg)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert "far below max_bytes" in check.stderr, check.stderr
    log = tmp_path / "daemon.log"
    proc = start(cfg, log)
    db = data / "buffer.db"
    try:
        wait_until(lambda: "far below max_bytes" in log.read_text(), 30, "the start-up warning")

        def trimmed() -> int:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
            try:
                return int(con.execute("SELECT value FROM meta WHERE key='trimmed_size'").fetchone()[0])
            finally:
                con.close()

        wait_until(lambda: trimmed() > 0, 120, "the file system's cap reached")
        rows0, used0 = buffer_rows(db)
        assert used0 > 6 * MiB, f"the buffer holds only {used0} bytes of a 12 MiB file system"
        head0 = metric(port, "edged_buffer_head_seq")
        wait_until(lambda: metric(port, "edged_buffer_head_seq") - head0 >= rows0, 120, "a full turn of the ring")
        rows1, used1 = buffer_rows(db)
        assert rows1 >= 0.9 * rows0 and used1 > 6 * MiB, (rows0, rows1, used1)
        assert metric(port, "edged_buffer_write_errors_total") == 0, "the cap keeps the disk from filling"
        assert http_health(port) == 200
    finally:
        stop(proc, log)
    with Store(db) as store:
        st = store.status()
        assert st.samples >= 0.9 * rows0
        assert st.uplinks[0].dropped == st.trimmed_size, "every dropped sample is counted for the uplink"


def test_disk_full_alarms_drops_oldest_and_recovers(tmp_path: Path, tmpfs: Callable[[str], Path]) -> None:
    """Another process fills the disk: the write fails, the alarm is raised and ends once the buffer
    reuses its own file; freed space is taken again and the reserve comes back."""
    small_fs = tmpfs("16m")
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
        assert http_health(port) == 200, "the alarm is over while the disk is still full"
        assert not reserve.exists(), "the reserve was given up to let the writes through"
        assert proc.poll() is None, "the daemon stays up on a full disk"
        size = db.stat().st_size
        filler.unlink()
        wait_until(lambda: reserve.exists() and db.stat().st_size > size + 1024 * 1024, 60, "freed space used again")
        assert http_health(port) == 200
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
