"""The cip planner and config: every tag read exactly once, arrays merged, bad names refused."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.cip.config import Config, element_of, parse_tag
from drivers.cip.plan import Item, plan
from edged.errors import ConfigError


def _item(name: str) -> Item:
    base, bit = parse_tag(name)
    return Item(base, bit, element_of(base))


@given(
    st.lists(st.tuples(st.sampled_from(["A", "B", "Program:P.C"]), st.integers(0, 40)), min_size=1, max_size=30),
    st.integers(1, 12),
    st.integers(0, 3),
)
def test_every_element_is_read_once_at_its_offset(elems: list[tuple[str, int]], max_elements: int, gap: int) -> None:
    names = sorted({f"{a}[{i}]" for a, i in elems})
    items = [_item(n) for n in names]
    reads = plan(items, max_elements=max_elements, max_gap=gap)
    seen: dict[int, tuple[str, int]] = {}
    for r in reads:
        assert 1 <= r.elements <= max_elements
        array, lo = element_of(r.name.split("{")[0]) or ("", 0)
        for i, off, bit in r.members:
            assert i not in seen and bit is None and 0 <= off < r.elements
            seen[i] = (array, lo + off)
    assert {i: seen[i] for i in range(len(names))} == {i: element_of(n) for i, n in enumerate(names)}


def test_neighbours_merge_and_scalars_share_a_read() -> None:
    reads = plan([_item(n) for n in ["T[0]", "T[1]", "T[2]", "T[5]", "S.1", "S.2", "X"]], max_elements=100)
    assert sorted((r.name, len(r.members)) for r in reads) == [("S", 2), ("T[0]{3}", 3), ("T[5]", 1), ("X", 1)]


def _cfg(**extra: Any) -> Config:
    import msgspec

    raw = {"name": "p", "type": "cip", "host": "10.0.0.1", "upload_tags": False, "tags": []} | extra
    return msgspec.convert(raw, Config)


@pytest.mark.parametrize(
    ("tag", "reason"),
    [
        ({"name": "a", "tag": "1bad"}, "not a Logix tag name"),
        ({"name": "a", "tag": "X"}, "type is required"),
        ({"name": "a", "tag": "M.Speed", "type": "REAL"}, "structure member needs upload_tags"),
        ({"name": "a", "tag": "B[3]", "type": "BOOL"}, "BOOL array element"),
        ({"name": "a", "tag": "S.40", "type": "DINT"}, "outside 0..31"),
        ({"name": "a", "tag": "S.4", "type": "REAL"}, "integer type"),
        ({"name": "a", "tag": "S.4", "type": "DINT", "writable": True}, "single bit"),
    ],
)
def test_bad_tags_are_refused_with_a_reason(tag: dict[str, Any], reason: str) -> None:
    import msgspec

    with pytest.raises((ValueError, msgspec.ValidationError, ConfigError), match=reason):
        _cfg(tags=[tag])


def test_program_scoped_and_good_names_load() -> None:
    cfg = _cfg(
        tags=[{"name": "a", "tag": "Program:Main.Count", "type": "DINT"}, {"name": "b", "tag": "T[2].3", "type": "INT"}]
    )
    assert [(t.base, t.bit) for t in cfg.tags] == [("Program:Main.Count", None), ("T[2]", 3)]
