"""The SQLite ring buffer: sequence, acknowledged ranges, trimming with gap records, recovery."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from buffer import Store, subtract
from buffer.store import open_or_recover
from edged.errors import BufferRefused, BufferUnavailable, BufferUnusable, StorageError
from edged.model import Sample, Status

NS = 1_000_000_000


def samples(n: int, t0: int = 0, tag: str = "d/t") -> list[Sample]:
    return [Sample(tag, t0 + i * NS, float(i), Status.GOOD, 100, "bar") for i in range(n)]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "b.db")


def test_append_and_read_round_trip(store: Store) -> None:
    mixed = [
        Sample("a/f", 1, 1.5), Sample("a/i", 2, 7), Sample("a/b", 3, True), Sample("a/b", 4, False),
        Sample("a/s", 5, "RUN"), Sample("a/n", 6, None, Status.BAD_NO_COMMUNICATION, 0),
        Sample("a/u", 7, 2.0, unit="degC"),
    ]  # fmt: skip
    lo, hi = store.append(mixed)
    assert hi - lo + 1 == len(mixed)
    got, covered = store.read(lo, hi, 100)
    assert covered == hi
    assert [(s.tag, s.ts_ns, s.value, s.status, s.unit) for s in got] == [
        (s.tag, s.ts_ns, s.value, s.status, s.unit) for s in mixed
    ]
    assert [type(s.value) for s in got] == [type(s.value) for s in mixed]
    assert [s.seq for s in got] == list(range(lo, hi + 1))


def test_read_limit_reports_covered_window(store: Store) -> None:
    lo, hi = store.append(samples(10))
    got, covered = store.read(lo, hi, 4)
    assert len(got) == 4 and covered == lo + 3


def test_seq_never_reused_across_restart_and_empty_buffer(tmp_path: Path) -> None:
    s = Store(tmp_path / "b.db")
    _, hi = s.append(samples(5))
    s.register_uplink("u")
    s.trim(retention_ns=1, max_bytes=1 << 30, now_ns=10**18)  # delete everything
    assert s.first_seq() is None
    s.close()
    s2 = Store(tmp_path / "b.db")
    lo2, _ = s2.append(samples(1))
    assert lo2 == hi + 1


def test_fresh_buffer_starts_above_an_older_one(tmp_path: Path) -> None:
    a = Store(tmp_path / "a.db")
    _, hi = a.append(samples(1000))
    b = Store(tmp_path / "b.db")  # e.g. the old file was corrupt and kept aside
    lo, _ = b.append(samples(1))
    assert lo > hi


def test_acks_merge_and_unacked(store: Store) -> None:
    lo, hi = store.append(samples(100))
    store.register_uplink("u")
    store.ack("u", lo + 10, lo + 19)
    store.ack("u", lo + 30, lo + 39)
    store.ack("u", lo + 20, lo + 29)  # bridges the two
    assert store.acked("u") == [(lo + 10, lo + 39)]
    assert store.unacked("u", hi) == [(lo, lo + 9), (lo + 40, hi)]
    store.ack("u", lo, lo + 9)
    store.ack("u", lo + 40, hi)
    assert store.acked("u") == [(lo, hi)]
    assert store.unacked("u", hi) == []


def test_register_latest_skips_the_past(store: Store) -> None:
    lo, hi = store.append(samples(10))
    store.register_uplink("new", "latest")
    assert store.unacked("new", hi) == []
    store.register_uplink("new", "earliest")  # already known: unchanged
    assert store.unacked("new", hi) == []
    store.register_uplink("old", "earliest")
    assert store.unacked("old", hi) == [(lo, hi)]


def test_trim_by_age_records_gaps_only_for_what_was_not_sent(store: Store) -> None:
    lo, hi = store.append(samples(100, t0=0))
    store.register_uplink("fast")
    store.register_uplink("slow")
    store.ack("fast", lo, hi)
    store.ack("slow", lo, lo + 19)
    # retention 50 s at t = 100 s: samples with ts < 50 s (the first 50) go
    res = store.trim(retention_ns=50 * NS, max_bytes=1 << 30, now_ns=100 * NS)
    assert res.deleted == 50 and res.by_age == 50 and res.by_size == 0
    assert store.first_seq() == lo + 50
    assert store.pending_gaps("fast") == []
    gaps = store.pending_gaps("slow")
    assert len(gaps) == 1
    gap = gaps[0][1]
    assert (gap.lo_seq, gap.hi_seq, gap.count) == (lo + 20, lo + 49, 30)
    assert (gap.lo_ts_ns, gap.hi_ts_ns) == (20 * NS, 49 * NS)
    st_ = {u.name: u for u in store.status().uplinks}
    assert st_["slow"].dropped == 30 and st_["fast"].dropped == 0
    assert store.unacked("slow", hi) == [(lo + 50, hi)]
    store.ack("slow", 1, 0, gap_ids=[gaps[0][0]])
    assert store.pending_gaps("slow") == []
    assert store.status().trimmed_age == 50


def test_trim_by_size_drops_oldest_first(tmp_path: Path) -> None:
    s = Store(tmp_path / "b.db")
    s.register_uplink("u")
    for i in range(20):
        s.append(samples(5000, t0=i * 5000 * NS))
    used = s.used_bytes()
    cap = used // 2
    total = 0
    while (res := s.trim(retention_ns=10**30, max_bytes=cap, now_ns=0)).deleted:
        total += res.deleted
        assert res.by_size == res.deleted
    assert s.used_bytes() <= cap
    assert total > 0
    st = s.status()
    assert st.trimmed_size == total
    assert st.uplinks[0].dropped == total  # never acknowledged: all of it is a gap for "u"
    first = s.first_seq()
    assert first is not None
    kept, _ = s.read(first, s.head, 1)
    assert kept[0].ts_ns == total * NS  # exactly the oldest went


def test_foreign_and_corrupt_files_are_kept_aside(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.db"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE customers(id)")
    con.commit()
    con.close()
    with pytest.raises(StorageError, match="foreign SQLite database"):
        Store(foreign)
    s = open_or_recover(foreign)
    s.append(samples(1))
    assert list(tmp_path.glob("foreign.db.bad-*"))
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not sqlite" * 1000)
    s2 = open_or_recover(corrupt)
    assert s2.integrity_ok()
    kept = list(tmp_path.glob("corrupt.db.bad-*"))
    assert kept and kept[0].read_bytes().startswith(b"this is not sqlite")


def test_readonly_status_while_writer_open(tmp_path: Path) -> None:
    w = Store(tmp_path / "b.db")
    w.register_uplink("u")
    lo, hi = w.append(samples(10))
    w.ack("u", lo, lo + 3)
    r = Store(tmp_path / "b.db", readonly=True, create=False)
    st = r.status()
    assert st.samples == 10 and st.head == hi
    assert st.uplinks[0].backlog == 6
    assert st.uplinks[0].oldest_unsent_ns == 4 * NS


ranges = st.lists(st.tuples(st.integers(0, 200), st.integers(0, 30)), max_size=12)


@given(ranges, st.integers(0, 100), st.integers(0, 120))
def test_subtract_is_exact_complement(raw: list[tuple[int, int]], lo: int, width: int) -> None:
    hi = lo + width
    merged: list[tuple[int, int]] = []
    for a, n in sorted(raw):
        b = a + n
        if merged and a <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    covered = {x for a, b in merged for x in range(a, b + 1)}
    holes = subtract(lo, hi, merged)
    in_holes = [x for a, b in holes for x in range(a, b + 1)]
    assert in_holes == sorted(in_holes) and len(in_holes) == len(set(in_holes))
    assert set(in_holes) == {x for x in range(lo, hi + 1) if x not in covered}


def test_latest_per_tag_within_a_window(store: Store) -> None:
    store.append([Sample("a/x", 1, 1.0), Sample("a/y", 2, True), Sample("a/x", 3, 2.0)])
    store.append([Sample(f"b/t{i}", 10 + i, float(i)) for i in range(100)])
    got = {s.tag: s.value for s in store.latest()}
    assert got["a/x"] == 2.0 and got["a/y"] is True and got["b/t99"] == 99.0
    assert len(got) == 102
    recent = {s.tag for s in store.latest(window=50)}
    assert "a/x" not in recent and "b/t99" in recent, "a tag silent for longer than the window is left out"


# ----------------------------------------------------------------------------------------- recovery


def _buffer_with_history(path: Path, n: int = 20_000) -> tuple[dict[int, int], int]:
    """A real buffer: n samples of 10 tags, uplink "a" acknowledged the first quarter, "b" nothing."""
    s = Store(path)
    s.register_uplink("a")
    s.register_uplink("b")
    for i in range(0, n, 1000):
        s.append([Sample(f"d/t{k % 10}", (i + k) * NS, float(i + k), Status.GOOD, 100, "bar") for k in range(1000)])
    first = s.first_seq()
    assert first is not None
    s.ack("a", first, first + n // 4 - 1)
    ts = {x.seq: x.ts_ns for x in s.read(first, s.head, n)[0] if x.seq is not None}
    head = s.head
    s.close()
    return ts, head


def _corrupt_middle(path: Path, pages: int = 6) -> None:
    """Overwrite whole pages in the middle of the file with garbage (a torn write, a bad sector)."""
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.seek((size // 2 // 4096) * 4096)
        fh.write(b"\xa5" * 4096 * pages)


def _asides(d: Path) -> list[Path]:
    return [k for k in d.glob("b.db.bad-*") if not k.name.endswith(("-wal", "-shm"))]


def _hold_lock(path: Path) -> subprocess.Popen[bytes]:
    """A second process holding a write lock on the buffer (BEGIN EXCLUSIVE), until killed."""
    code = (
        "import sqlite3, sys, time\n"
        f"c = sqlite3.connect({str(path)!r}, isolation_level=None)\n"
        "c.execute('BEGIN EXCLUSIVE')\nprint('locked', flush=True)\nsys.stdin.read()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"locked\n"
    return proc


def test_a_locked_buffer_is_waited_for_and_never_set_aside(tmp_path: Path) -> None:
    p = tmp_path / "b.db"
    _, head = _buffer_with_history(p, 2000)
    holder = _hold_lock(p)
    try:
        with pytest.raises(BufferUnavailable, match=r"locked by another process.*gave up after 1s"):
            open_or_recover(p, wait_s=1.0)
    finally:
        holder.communicate(b"")
    assert not list(tmp_path.glob("b.db.bad-*")), "a healthy buffer is never set aside for a lock"
    with open_or_recover(p) as s:
        assert s.head == head and s.count(0, head) == 2000 and not s.set_aside_events()


def test_a_newer_buffer_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    p = tmp_path / "b.db"
    _buffer_with_history(p, 100)
    con = sqlite3.connect(p)
    con.execute("PRAGMA user_version=7")
    con.close()
    before = p.read_bytes()
    with pytest.raises(BufferRefused, match=r"newer edged \(buffer schema 7"):
        open_or_recover(p)
    assert p.read_bytes() == before and not list(tmp_path.glob("b.db.bad-*"))


def test_a_missing_additive_table_is_repaired_in_place(tmp_path: Path) -> None:
    p = tmp_path / "b.db"
    _, head = _buffer_with_history(p, 100)
    con = sqlite3.connect(p)
    con.execute("DROP TABLE gaps")
    con.close()
    with open_or_recover(p) as s:
        assert s.head == head and s.pending_gaps("b") == [] and not list(tmp_path.glob("b.db.bad-*"))


def test_a_misshapen_core_table_is_set_aside_and_every_sample_salvaged(tmp_path: Path) -> None:
    p = tmp_path / "b.db"
    ts, head = _buffer_with_history(p, 3000)
    con = sqlite3.connect(p)
    con.execute("ALTER TABLE samples DROP COLUMN kind")  # appends would fail: "storing nothing"
    con.close()
    with pytest.raises(BufferUnusable, match="table samples has a shape this edged cannot use"):
        Store(p)
    with open_or_recover(p) as s:
        got = {x.seq: x.ts_ns for x in s.read(0, s.head, 10_000)[0]}
        assert got == ts, "every sample kept its seq and timestamp"
        assert s.head == head, "numbering continues after the old head"
        assert s.unacked("a", head) == [(min(ts) + 750, head)] and s.unacked("b", head) == [(min(ts), head)]
        (ev,) = s.set_aside_events()
        assert (ev.salvaged, ev.lost, ev.gaps) == (3000, 0, 0) and "samples has a shape" in ev.reason
        assert s.append(samples(1))[0] == head + 1
    assert len(_asides(tmp_path)) == 1


def test_corrupt_pages_are_salvaged_and_the_rest_owed_as_gap_records(tmp_path: Path) -> None:
    p = tmp_path / "b.db"
    ts, head = _buffer_with_history(p)
    _corrupt_middle(p)
    with open_or_recover(p) as s:
        (ev,) = s.set_aside_events()
        got = {x.seq: x.ts_ns for x in s.read(0, s.head, 100_000)[0]}
        assert all(ts[q] == t for q, t in got.items()), "salvaged samples keep seq and timestamp"
        assert 0 < ev.lost < len(ts) and ev.salvaged == len(got) and ev.salvaged + ev.lost == len(ts)
        first = min(ts)
        for up, acked_to in (("a", first + len(ts) // 4 - 1), ("b", first - 1)):
            gaps = [g for _, g in s.pending_gaps(up, 1000)]
            covered = {q for g in gaps for q in range(g.lo_seq, g.hi_seq + 1)}
            owed = {q for a, b in s.unacked(up, head) for q in range(a, b + 1)}
            for q in ts:
                if q > acked_to:
                    assert q in got or q in covered, f"seq {q} owed to {up} is neither salvaged nor a gap"
                    assert q not in covered or q not in got
            assert not covered & set(range(first, acked_to + 1)), "no gap for what the uplink already had"
            assert owed == {q for q in got if q > acked_to}, "exactly the salvaged, unacknowledged part is owed"
            assert all(g.lo_ts_ns <= g.hi_ts_ns for g in gaps)
        assert ev.gaps >= 1 and s.head == head and s.integrity_ok()
    aside = _asides(tmp_path)
    assert len(aside) == 1 and aside[0].stat().st_size > 0, "the damaged file is kept, never deleted"
    assert not (tmp_path / "b.db.salvage").exists()


def test_aside_names_never_collide(tmp_path: Path) -> None:
    p = tmp_path / "b.db"
    for _ in range(3):  # three recoveries within the same second
        p.write_bytes(b"not sqlite" * 100)
        open_or_recover(p).close()
    assert len(_asides(tmp_path)) == 3
    with Store(p) as s:
        (ev,) = s.set_aside_events()  # the garbage held no history of earlier set-asides
        assert ev.path == str(sorted(_asides(tmp_path))[-1]) and ev.note == "nothing in it could be read"


def test_an_interrupted_salvage_resumes_at_the_next_start(tmp_path: Path) -> None:
    from buffer import recovery

    p = tmp_path / "b.db"
    ts, _ = _buffer_with_history(p, 5000)
    _corrupt_middle(p, 2)
    real = recovery.salvage
    recovery.salvage = lambda *a: (_ for _ in ()).throw(KeyboardInterrupt())  # type: ignore[assignment]
    try:
        with pytest.raises(KeyboardInterrupt):
            open_or_recover(p)  # killed right after the file was set aside
    finally:
        recovery.salvage = real
    assert (tmp_path / "b.db.salvage").exists()
    with open_or_recover(p) as s:
        (ev,) = s.set_aside_events()
        assert ev.salvaged + ev.lost == len(ts) and ev.salvaged > 0
    assert not (tmp_path / "b.db.salvage").exists()
