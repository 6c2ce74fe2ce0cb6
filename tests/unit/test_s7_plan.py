"""drivers/s7/plan.py: merging into items, packing into PDUs, and the budgets a CPU enforces."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.s7.pdu import read_request, reply_size
from drivers.s7.plan import Item, Limits, bytes_read, lower_bound, plan, ranges


def items(*spec: tuple[str, int, int, int]) -> list[Item]:
    return [Item(k, area, db, start, size) for k, (area, db, start, size) in enumerate(spec)]


def test_neighbours_merge_within_the_gap_and_areas_never_do() -> None:
    its = items(("DB", 1, 0, 4), ("DB", 1, 4, 2), ("DB", 1, 10, 4), ("DB", 2, 0, 2), ("M", 0, 0, 1), ("M", 0, 40, 2))
    rs = ranges(its, Limits(240, max_gap=4))
    assert [(r.area, r.db, r.start, r.end, r.keys) for r in rs] == [
        ("DB", 1, 0, 14, [0, 1, 2]),  # the hole 6..9 is 4 bytes: bridged
        ("DB", 2, 0, 2, [3]),
        ("M", 0, 0, 1, [4]),
        ("M", 0, 40, 42, [5]),  # 39 bytes away: its own item
    ]
    reqs = plan(its, Limits(240, max_gap=4))
    assert len(reqs) == 1  # four items, one PDU
    assert sorted(reqs[0].keys) == list(range(6))


def test_overlapping_tags_share_one_range_even_when_alone() -> None:
    its = [Item(0, "DB", 1, 10, 1, alone=True), Item(1, "DB", 1, 10, 1, alone=True), Item(2, "DB", 1, 11, 1)]
    rs = ranges(its, Limits(240))
    assert [(r.start, r.end, r.keys) for r in rs] == [(10, 11, [0, 1]), (11, 12, [2])]


def test_one_answer_limits_a_range() -> None:
    lim = Limits(240, max_gap=100)
    assert lim.max_range == 222
    rs = ranges(items(("DB", 1, 0, 200), ("DB", 1, 200, 30)), lim)
    assert [(r.start, r.end) for r in rs] == [(0, 200), (200, 230)]
    with pytest.raises(ValueError, match="does not fit one answer"):
        plan(items(("DB", 1, 0, 223)), lim)


def test_item_count_and_both_pdu_budgets_cut_jobs() -> None:
    scattered = items(*(("DB", 1, 100 * i, 2) for i in range(45)))
    assert len(plan(scattered, Limits(960, max_items=20))) == 3  # 20 + 20 + 5 items
    assert Limits(240).items_per_job == 19  # (240 - 12) // 12
    assert len(plan(scattered, Limits(240, max_items=255))) == 3  # 19 + 19 + 7: the request budget
    big = items(*(("DB", 1, 300 * i, 100) for i in range(5)))
    reqs = plan(big, Limits(240))
    assert len(reqs) == 3  # 2 x 100 bytes fill an answer of 240 (14 + 2 * 104 = 222)
    assert all(reply_size([r.size for r in q.ranges]) <= 240 for q in reqs)


def test_the_planned_job_is_one_pdu_within_the_limit() -> None:
    reqs = plan(items(*(("DB", 1 + i % 3, 50 * i, 3) for i in range(60))), Limits(480))
    for ref, q in enumerate(reqs, 1):
        assert len(read_request(ref, [r.spec() for r in q.ranges])) <= 480


def test_lower_bound_and_bytes_read() -> None:
    its = items(*(("DB", 1, 100 * i, 2) for i in range(45)))
    assert lower_bound(its, Limits(960)) == 3
    assert bytes_read(plan(its, Limits(960))) == 90


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["DB", "M", "I", "Q"]), st.integers(1, 3), st.integers(0, 3000), st.integers(1, 60)),
        min_size=1,
        max_size=120,
    ),
    st.sampled_from([240, 480, 960]),
    st.integers(0, 40),
    st.integers(1, 20),
)
def test_every_plan_covers_every_tag_within_every_budget(
    spec: list[tuple[str, int, int, int]], pdu: int, gap: int, max_items: int
) -> None:
    its = [Item(k, a, db if a == "DB" else 0, s, n) for k, (a, db, s, n) in enumerate(spec)]
    lim = Limits(pdu, max_items, gap)
    reqs = plan(its, lim)
    keys = sorted(k for q in reqs for k in q.keys)
    assert keys == list(range(len(its)))  # every tag once
    assert len(reqs) >= lower_bound(its, lim)
    for q in reqs:
        assert 1 <= len(q.ranges) <= lim.items_per_job
        assert reply_size([r.size for r in q.ranges]) <= pdu
        assert len(read_request(1, [r.spec() for r in q.ranges])) <= pdu
        for r in q.ranges:
            for k in r.keys:  # the range holds each of its tags
                assert r.area == its[k].area and r.db == its[k].db
                assert r.start <= its[k].start and its[k].end <= r.end
