"""The SQLite ring buffer: sequence, acknowledged ranges, trimming with gap records, recovery."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from buffer import Store, subtract
from buffer.store import open_or_recover
from edged.errors import StorageError
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
