"""Request planning: fewest requests, protocol limits, gap merging, learned isolation."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus.plan import (
    BIT_TABLES,
    MAX_BITS,
    MAX_REGISTERS,
    TABLES,
    Isolation,
    Item,
    Limits,
    Request,
    optimal_request_count,
    plan,
    registers_read,
)


def regs(*spans: tuple[int, int], table: str = "holding_register") -> list[Item]:
    return [Item(i, table, a, n) for i, (a, n) in enumerate(spans)]  # type: ignore[arg-type]


def covered(items: list[Item], requests: list[Request]) -> None:
    """Every item is served by exactly one request that fully contains it."""
    by_key = {it.key: it for it in items}
    served = [k for r in requests for k in r.keys]
    assert sorted(served) == sorted(by_key)
    for r in requests:
        for k in r.keys:
            it = by_key[k]
            assert it.table == r.table
            assert r.address <= it.address
            assert it.end <= r.end


def test_contiguous_tags_are_one_request() -> None:
    items = regs((0, 1), (1, 2), (3, 2), (5, 4))
    assert plan(items) == [Request("holding_register", 0, 9, (0, 1, 2, 3))]


def test_near_contiguous_tags_merge_within_the_gap() -> None:
    items = regs((0, 2), (12, 2), (30, 1))  # holes of 10 and 16
    reqs = plan(items, Limits(max_gap=10))
    assert [(r.address, r.count) for r in reqs] == [(0, 14), (30, 1)]
    assert len(plan(items, Limits(max_gap=16))) == 1
    assert len(plan(items, Limits(max_gap=0))) == 3


def test_a_request_never_exceeds_125_registers() -> None:
    items = regs(*[(a, 2) for a in range(0, 400, 2)])  # 400 contiguous registers
    reqs = plan(items)
    assert all(r.count <= MAX_REGISTERS for r in reqs)
    assert len(reqs) == 4  # ceil(400 / 125) rounded to whole float32 pairs: 124+124+124+28
    covered(items, reqs)


def test_a_request_never_exceeds_2000_coils() -> None:
    items = [Item(i, "coil", i) for i in range(5000)]
    reqs = plan(items)
    assert [r.count for r in reqs] == [2000, 2000, 1000]


def test_configurable_request_size() -> None:
    items = regs(*[(a, 1) for a in range(100)])
    assert [r.count for r in plan(items, Limits(max_registers=30))] == [30, 30, 30, 10]


def test_tables_are_never_mixed_and_come_out_in_a_stable_order() -> None:
    items = [
        Item(0, "holding_register", 0),
        Item(1, "input_register", 0),
        Item(2, "coil", 0),
        Item(3, "discrete_input", 1),
        Item(4, "holding_register", 1),
    ]
    reqs = plan(items)
    assert [(r.table, r.keys) for r in reqs] == [
        ("coil", (2,)),
        ("discrete_input", (3,)),
        ("input_register", (1,)),
        ("holding_register", (0, 4)),
    ]


def test_overlapping_tags_share_their_registers() -> None:
    # 16 bits of one status word plus the word itself, and a float across two registers
    items = [Item(i, "holding_register", 7) for i in range(16)] + [Item(16, "holding_register", 7, 2)]
    (req,) = plan(items)
    assert (req.address, req.count) == (7, 2)
    assert sorted(req.keys) == list(range(17))


def test_isolation_levels() -> None:
    items = [
        Item(0, "holding_register", 0, 1, Isolation.ADJACENT),
        Item(1, "holding_register", 1, 1, Isolation.ADJACENT),
    ]
    items.append(Item(2, "holding_register", 5, 1, Isolation.ADJACENT))
    assert [r.keys for r in plan(items)] == [(0, 1), (2,)]
    alone = [Item(k, "holding_register", k, 1, Isolation.ALONE) for k in range(3)]
    assert [r.keys for r in plan(alone)] == [(0,), (1,), (2,)]


def test_invalid_items_and_limits_are_rejected() -> None:
    with pytest.raises(ValueError, match="more than one request"):
        plan([Item(0, "holding_register", 0, 126)])
    with pytest.raises(ValueError, match="address space"):
        plan([Item(0, "holding_register", 65535, 2)])
    with pytest.raises(ValueError, match="size 1"):
        plan([Item(0, "coil", 0, 2)])
    with pytest.raises(ValueError, match="max_registers"):
        Limits(max_registers=126)
    with pytest.raises(ValueError, match="max_bits"):
        Limits(max_bits=2001)


def test_sample_map_is_optimal_and_cheap() -> None:
    # a realistic map: float32 pairs, a few scattered status words, coils in two banks
    items = regs(*[(a, 2) for a in range(0, 60, 2)], (100, 1), (103, 1), (140, 4), (300, 1), (302, 2))
    items += [Item(100 + i, "coil", a) for i, a in enumerate([*range(0, 40), *range(500, 520)])]
    reqs = plan(items)
    covered(items, reqs)
    # holding: 0..59 | 100..103 | 140..143 | 300..303 ; coils: 0..39 | 500..519
    assert len(reqs) == optimal_request_count(items) == 6
    assert registers_read(reqs) == 60 + 4 + 4 + 4 + 40 + 20


# ----------------------------------------------------------------------------------------- properties


@st.composite
def item_lists(draw: st.DrawFn, overlap: bool = True, levels: bool = True) -> list[Item]:
    n = draw(st.integers(0, 40))
    out: list[Item] = []
    for key in range(n):
        table = draw(st.sampled_from(TABLES))
        size = 1 if table in BIT_TABLES else draw(st.sampled_from([1, 1, 2, 4, 10]))
        address = draw(st.integers(0, 400))
        level = draw(st.sampled_from(list(Isolation))) if levels else Isolation.MERGE
        out.append(Item(key, table, address, size, level))
    if not overlap:  # keep the first of any overlapping items per table
        taken: dict[str, set[int]] = {}
        kept = []
        for it in out:
            cells = set(range(it.address, it.end))
            if not cells & taken.setdefault(it.table, set()):
                taken[it.table] |= cells
                kept.append(it)
        out = kept
    return out


limits_st = st.builds(
    Limits,
    max_registers=st.integers(10, MAX_REGISTERS),
    max_bits=st.integers(16, MAX_BITS),
    max_gap=st.integers(0, 20),
    max_gap_bits=st.integers(0, 80),
)


@settings(max_examples=200, deadline=None)
@given(item_lists(), limits_st)
def test_plan_is_optimal_and_within_the_limits(items: list[Item], limits: Limits) -> None:
    reqs = plan(items, limits)
    covered(items, reqs)
    for r in reqs:
        assert 1 <= r.count <= limits.span(r.table)
    assert len(reqs) == optimal_request_count(items, limits)


@settings(max_examples=100, deadline=None)
@given(item_lists(overlap=False, levels=False), limits_st)
def test_plan_is_optimal_on_plain_maps(items: list[Item], limits: Limits) -> None:
    assert len(plan(items, limits)) == optimal_request_count(items, limits)


def brute_force(items: list[Item], span: int, gap: int) -> int:
    """Fewest arbitrary [s, e) ranges covering every item, each at most `span` long and with no
    unread hole longer than `gap` inside it. Exponential: tiny inputs only.

    Overlapping tags (bits of one word, a register inside a string) are read in one request by
    design, so a snapshot of them is consistent: they are merged into one block first, exactly as
    the planner documents (a chain longer than `span` is cut)."""
    blocks: list[Item] = []
    for it in sorted(items, key=lambda i: (i.address, i.end)):
        if blocks and it.address < blocks[-1].end and max(blocks[-1].end, it.end) - blocks[-1].address <= span:
            last = blocks[-1]
            blocks[-1] = Item(last.key, last.table, last.address, max(last.end, it.end) - last.address)
        else:
            blocks.append(it)
    items = blocks
    cells = {a for it in items for a in range(it.address, it.end)}
    hi = max(it.end for it in items)
    ranges = []
    for s in range(hi):
        for e in range(s + 1, min(hi, s + span) + 1):
            holes = [len(list(g)) for k, g in itertools.groupby(range(s, e), key=lambda a: a in cells) if not k]
            if all(h <= gap for h in holes):
                ranges.append((s, e))
    for k in range(1, len(items) + 1):
        for combo in itertools.combinations(ranges, k):
            if all(any(s <= it.address and it.end <= e for s, e in combo) for it in items):
                return k
    raise AssertionError("unreachable")


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 14), st.sampled_from([1, 2])), min_size=1, max_size=5),
    st.integers(2, 6),
    st.integers(0, 3),
)
def test_plan_matches_brute_force_on_tiny_maps(spans: list[tuple[int, int]], span: int, gap: int) -> None:
    items = [Item(i, "holding_register", a, n) for i, (a, n) in enumerate(spans)]
    limits = Limits(max_registers=span, max_gap=gap)
    if any(it.size > span for it in items):
        return
    assert len(plan(items, limits)) == brute_force(items, span, gap)
