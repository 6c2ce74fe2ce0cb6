"""The daemon with a locked, newer, misshapen or corrupt buffer: nothing owed is lost or stranded."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from buffer import Store
from edged.model import Sample
from peers.mosquitto import free_port
from peers.waiting import wait_until

NS = 1_000_000_000
OLD = 6000  # samples in the buffer before the daemon starts; the uplink acknowledged none


def make_buffer(data: Path) -> tuple[dict[int, int], int]:
    """A real buffer owing OLD samples to the file uplink "f": {seq: ts_ns}, head."""
    data.mkdir(parents=True, exist_ok=True)
    with Store(data / "buffer.db") as s:
        s.register_uplink("f")
        for i in range(0, OLD, 500):
            s.append([Sample(f"old/t{k % 5}", (1_700_000_000 + i + k) * NS, float(i + k)) for k in range(500)])
        got, _ = s.read(0, s.head, OLD)
        return {x.seq: x.ts_ns for x in got if x.seq is not None}, s.head


def write_config(tmp: Path, port: int) -> Path:
    cfg = tmp / "edged.toml"
    cfg.write_text(
        f'[gateway]\nid = "gw-rec"\ndata_dir = "{tmp / "data"}"\nmetrics_listen = "127.0.0.1:{port}"\n'
        '[buffer]\nflush_interval = "50ms"\n'
        '[[devices]]\nname = "d"\ntype = "sim"\ninterval = "100ms"\n[[devices.tags]]\nname = "a"\n'
        '[[uplinks]]\nname = "f"\ntype = "file"\nfsync = false\nbatch_size = 2000\n'
    )
    return cfg


def start(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "edged", "run", "-c", str(cfg)], stdout=subprocess.DEVNULL, stderr=log.open("ab")
    )


def stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    if proc.poll() is None:
        proc.terminate()
    assert proc.wait(20) == 0, log.read_text()[-3000:]


def delivered(data: Path) -> tuple[dict[int, int], set[int]]:
    """What the file uplink wrote: {seq: ts_ns} of samples, and the seqs gap records cover."""
    out: dict[int, int] = {}
    gaps: set[int] = set()
    path = data / "samples.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        if not line.endswith("}"):
            continue  # a line being written
        doc = json.loads(line)
        if doc.get("type") == "gap":
            gaps.update(range(doc["lo_seq"], doc["hi_seq"] + 1))
        else:
            out[doc["seq"]] = doc["ts_ns"]
    return out, gaps


def health(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=3) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def asides(data: Path) -> list[Path]:
    return [p for p in data.glob("buffer.db.bad-*") if not p.name.endswith(("-wal", "-shm"))]


def edged_status(data: Path) -> str:
    cmd = [sys.executable, "-m", "edged", "status", "--data-dir", str(data)]
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=30).stdout


def hold_lock(db: Path) -> subprocess.Popen[bytes]:
    """A second process with a write lock on the buffer (an sqlite3 shell in BEGIN EXCLUSIVE)."""
    code = (
        "import sqlite3, sys\n"
        f"c = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
        "c.execute('BEGIN EXCLUSIVE')\nprint('locked', flush=True)\nsys.stdin.read()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"locked\n"
    return proc


@pytest.mark.timeout(180)
def test_a_locked_buffer_waits_exits_1_untouched_then_delivers_everything(tmp_path: Path) -> None:
    data, log = tmp_path / "data", tmp_path / "daemon.log"
    old, head = make_buffer(data)
    cfg = write_config(tmp_path, free_port())
    holder = hold_lock(data / "buffer.db")
    try:
        proc = start(cfg, log)
        assert proc.wait(90) == 1, "a lock held past the wait: exit 1, so systemd retries"
    finally:
        holder.communicate(b"")
    text = log.read_text()
    assert "locked by another process" in text and "gave up after 20s" in text, text[-2000:]
    assert not asides(data), "a locked buffer is never set aside"
    with Store(data / "buffer.db", readonly=True, create=False) as s:
        assert s.head == head and s.count(0, head) == OLD

    holder = hold_lock(data / "buffer.db")
    try:
        proc = start(cfg, log)
        wait_until(lambda: log.read_text().count("waiting up to 20s") == 2, 30, "the daemon waiting for the lock")
    finally:
        holder.communicate(b"")  # released while it waits
    try:
        wait_until(lambda: set(old) <= set(delivered(data)[0]), 60, "every owed sample delivered")
        wait_until(lambda: max(delivered(data)[0]) > head, 30, "new samples after the old ones")
        assert "the buffer is available again" in log.read_text()
    finally:
        stop(proc, log)
    got, gaps = delivered(data)
    assert all(got[q] == t for q, t in old.items()) and not gaps and not asides(data)


def test_a_newer_buffer_is_refused_and_left_alone(tmp_path: Path) -> None:
    data, log = tmp_path / "data", tmp_path / "daemon.log"
    make_buffer(data)
    with sqlite3.connect(data / "buffer.db") as con:
        con.execute("PRAGMA user_version=9")
    con.close()
    before = (data / "buffer.db").read_bytes()
    proc = start(write_config(tmp_path, free_port()), log)
    assert proc.wait(60) == 1
    assert "written by a newer edged (buffer schema 9" in log.read_text(), log.read_text()[-2000:]
    assert (data / "buffer.db").read_bytes() == before, "the newer edged's buffer is untouched"
    assert not asides(data) and not (data / "samples.jsonl").exists()


@pytest.mark.parametrize("damage", ["wrong-schema", "corrupt"])
@pytest.mark.timeout(150)
def test_an_unusable_buffer_is_set_aside_and_what_it_owed_is_delivered(tmp_path: Path, damage: str) -> None:
    data, log = tmp_path / "data", tmp_path / "daemon.log"
    old, head = make_buffer(data)
    db = data / "buffer.db"
    if damage == "wrong-schema":  # edged's id, but a samples table appends fail on: it would store nothing
        with sqlite3.connect(db) as con:
            con.execute("ALTER TABLE samples DROP COLUMN kind")
        con.close()
    else:  # pages in the middle overwritten (a torn write, a bad sector)
        size = db.stat().st_size
        with open(db, "r+b") as fh:
            fh.seek((size // 2 // 4096) * 4096)
            fh.write(b"\xa5" * 4096 * 4)
    port = free_port()
    proc = start(write_config(tmp_path, port), log)
    try:
        wait_until(lambda: health(port)[0] == 200, 60, "the daemon healthy on a fresh buffer")

        def owed_all_accounted() -> bool:
            got, gaps = delivered(data)
            return all(q in got or q in gaps for q in old) and max(got, default=0) > head

        wait_until(owed_all_accounted, 60, "every owed seq delivered or reported as a gap, then new data")
        code, doc = health(port)
        assert code == 200 and doc["buffer_set_aside"]["path"] == str(asides(data)[0]), doc
        st = json.loads((data / "status.json").read_text())
        assert st["buffer"]["set_aside"][0]["salvaged"] == doc["buffer_set_aside"]["salvaged"]
    finally:
        stop(proc, log)
    got, gaps = delivered(data)
    salvaged = {q for q in old if q in got}
    assert all(got[q] == old[q] for q in salvaged), "salvaged samples keep their seq and timestamp"
    if damage == "wrong-schema":
        assert salvaged == set(old) and not gaps, "a readable file loses nothing"
    else:
        assert salvaged and gaps and not gaps & salvaged
        assert gaps <= set(range(min(old), head + 1)), "gap records only for the old buffer's seqs"
    assert min(q for q in got if q not in old) == head + 1, "numbering continues above the old head"
    assert "buffer unusable, kept aside as" in log.read_text()
    (kept,) = asides(data)
    assert kept.stat().st_size > 0
    out = edged_status(data)
    assert "set aside" in out and str(kept) in out and f"salvaged {len(salvaged)} samples" in out, out
