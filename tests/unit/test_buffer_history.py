"""buffer.history: one tag by source time, in bounded pages, against a brute-force reading."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from buffer.history import Position, TimeMap, read_tag
from buffer.store import Store
from edged.model import Sample, Status


def _fill(store: Store, rng: random.Random, n: int) -> list[Sample]:
    """Three tags, mostly in time order, some stored late (up to 500 s) and a clock jump back."""
    out = []
    t = 10_000_000_000_000
    for i in range(n):
        t += rng.randint(0, 3) * 1_000_000_000  # equal timestamps happen
        ts = t - rng.randint(0, 500) * 1_000_000_000 if rng.random() < 0.05 else t
        if i == n // 2:
            t -= 3_600 * 1_000_000_000  # the gateway clock set back an hour
        out.append(Sample(f"d/t{i % 3}", ts, float(i), Status.GOOD if i % 7 else Status.BAD))
    for k in range(0, n, 37):
        store.append(out[k : k + 37])
    return out


def _all_pages(
    store: Store, tmap: TimeMap, tag: str, lo: int, hi: int, reverse: bool, limit: int, budget: int
) -> list[tuple[int, float]]:
    got: list[tuple[int, float]] = []
    pos: Position | None = None
    for _ in range(10_000):
        page = read_tag(store, tmap, tag, lo, hi, reverse=reverse, start=pos, limit=limit, budget=budget)
        assert len(page.samples) <= limit
        got.extend((s.ts_ns, float(s.value)) for s in page.samples)  # type: ignore[arg-type]
        if page.next is None:
            return got
        assert pos is None or page.next != pos, "no progress"
        pos = page.next
    raise AssertionError("did not finish")


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize(("limit", "budget"), [(1, 1), (7, 40), (10_000, 10_000_000), (50, 1)])
def test_pages_match_brute_force(tmp_path: Path, reverse: bool, limit: int, budget: int) -> None:
    rng = random.Random(7)
    with Store(tmp_path / "b.db") as store:
        samples = _fill(store, rng, 3000)
        stored = store.read(0, store.head, 10_000)[0]
        tmap = TimeMap(block_bits=5)
        ts = sorted(s.ts_ns for s in samples)
        for lo, hi in [(ts[0], ts[-1]), (ts[300], ts[2500]), (ts[1000], ts[1000]), (ts[-1] + 1, ts[-1] + 9)]:
            want = sorted(
                ((s.ts_ns, s.seq or 0), float(s.value))  # type: ignore[arg-type]
                for s in stored
                if s.tag == "d/t1" and lo <= s.ts_ns <= hi
            )
            if reverse:
                want.reverse()
            got = _all_pages(store, tmap, "d/t1", lo, hi, reverse, limit, budget)
            assert got == [(k[0], v) for k, v in want]


def test_trim_and_new_rows_keep_the_map_valid(tmp_path: Path) -> None:
    rng = random.Random(3)
    with Store(tmp_path / "b.db") as store:
        _fill(store, rng, 600)
        tmap = TimeMap(block_bits=4)
        assert read_tag(store, tmap, "d/t0", 0, 2**62).next is None
        store.db.execute("DELETE FROM samples WHERE seq < ?", ((store.first_seq() or 0) + 250,))  # trimmed
        more = [Sample("d/t0", 50_000_000_000_000 + i, float(i)) for i in range(100)]
        store.append(more)
        stored = [s for s in store.read(0, store.head, 10_000)[0] if s.tag == "d/t0"]
        page = read_tag(store, tmap, "d/t0", 0, 2**62, limit=100_000)
        assert [s.seq for s in page.samples] == [s.seq for s in sorted(stored, key=lambda s: (s.ts_ns, s.seq))]
        assert page.samples[-1].value == 99.0


def test_unknown_tag_and_empty_buffer(tmp_path: Path) -> None:
    with Store(tmp_path / "b.db") as store:
        tmap = TimeMap()
        assert read_tag(store, tmap, "d/x", 0, 10).samples == []
        store.append([Sample("d/a", 5, 1.0)])
        assert read_tag(store, tmap, "d/x", 0, 10).samples == []
        assert [s.value for s in read_tag(store, tmap, "d/a", 0, 10).samples] == [1.0]
