"""The modbus_server register image: encoding against struct-packed golden registers, the Bad
policies, and any request a master can send (hypothesis) answered or refused, never raising."""

from __future__ import annotations

import contextlib
import math
import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from edged.model import Sample, Status
from edged.protocols import modbus as codec
from uplink.modbus_server.config import Config
from uplink.modbus_server.image import (
    ILLEGAL_ADDRESS,
    ILLEGAL_FUNCTION,
    OUT_OF_RANGE,
    TYPE_MISMATCH,
    WAITING,
    Image,
    written_value,
)


def image(entries: list[dict[str, Any]], **extra: Any) -> Image:
    import msgspec

    cfg = msgspec.convert({"name": "s", "type": "modbus_server", "map": entries, **extra}, Config)
    return Image(cfg)


def words(fmt: str, value: float) -> list[int]:
    raw = struct.pack(fmt, value)
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


MAP = [
    {"tag": "d/f", "address": 0, "type": "float32", "status_register": 10, "quality_coil": 0},
    {"tag": "d/f", "table": "input", "address": 0, "type": "float32", "word_order": "little"},
    {"tag": "d/d", "address": 2, "type": "float64", "byte_order": "little"},
    {"tag": "d/i", "address": 6, "type": "int16", "scale": 0.1, "on_bad": "sentinel"},
    {"tag": "d/u", "address": 7, "type": "uint32", "word_order": "little", "on_bad": "sentinel"},
    {"tag": "d/b", "table": "coil", "address": 1},
    {"tag": "d/r", "address": 9, "type": "bool"},
]


def test_values_are_encoded_as_struct_packs_them() -> None:
    img = image(MAP)
    for tag, value in (("d/f", 1.5), ("d/d", -2.25), ("d/i", -12.34), ("d/u", 70000), ("d/b", True), ("d/r", 1)):
        img.apply(Sample(tag, 1, value, Status.GOOD))
    assert img.read(1, "holding", 0, 2) == words(">f", 1.5)
    assert img.read(1, "input", 0, 2) == words(">f", 1.5)[::-1]
    swapped = [((w & 0xFF) << 8) | (w >> 8) for w in words(">d", -2.25)]
    assert img.read(1, "holding", 2, 4) == swapped
    assert img.read(1, "holding", 6, 1) == [(-123) & 0xFFFF]
    assert img.read(1, "holding", 7, 2) == [70000 & 0xFFFF, 70000 >> 16]
    assert img.read(1, "holding", 9, 1) == [1]
    assert img.read(1, "coil", 0, 2) == [True, True]
    assert img.read(1, "holding", 10, 1) == [0]


def test_before_data_and_while_bad() -> None:
    img = image(MAP)
    assert img.read(1, "holding", 10, 1) == [WAITING >> 16]
    assert img.read(1, "holding", 6, 1) == [0x8000]  # int16 sentinel -32768
    assert img.read(1, "holding", 7, 2) == [0xFFFF, 0xFFFF]  # uint32 sentinel
    assert img.read(1, "coil", 0, 1) == [False]
    img.apply(Sample("d/f", 1, 3.0, Status.GOOD))
    img.apply(Sample("d/f", 2, None, Status.BAD_NO_COMMUNICATION))
    assert img.read(1, "holding", 0, 2) == words(">f", 3.0)  # keep
    assert img.read(1, "holding", 10, 1) == [Status.BAD_NO_COMMUNICATION >> 16]
    nan = image(MAP, on_bad="sentinel")
    nan.apply(Sample("d/f", 2, None, Status.BAD))
    (v,) = struct.unpack(">f", struct.pack(">HH", *nan.read(1, "holding", 0, 2)))  # type: ignore[misc]
    assert math.isnan(v)


def test_values_that_do_not_fit_are_bad() -> None:
    img = image(MAP)
    _, problems = img.apply(Sample("d/i", 1, 4000.0, Status.GOOD))  # 40000 raw: no int16
    assert problems and "map[3]" in problems[0]
    img.apply(Sample("d/f", 1, "text", Status.GOOD))
    assert img.slots[0].status == TYPE_MISMATCH
    assert img.slots[3].status == OUT_OF_RANGE
    _, again = img.apply(Sample("d/i", 2, 5000.0, Status.GOOD))
    assert again == []  # logged once per entry


def test_write_plans() -> None:
    img = image(MAP)
    for s in img.slots:
        s.commandable = s.entry.tag != "d/i"
    assert [s.index for s in img.plan_write(1, "holding", 0, 6)] == [0, 2]  # type: ignore[union-attr]
    assert img.plan_write(1, "holding", 1, 1) == ILLEGAL_ADDRESS  # second half of the float32
    assert img.plan_write(1, "holding", 0, 1) == ILLEGAL_ADDRESS  # first half
    assert img.plan_write(1, "holding", 6, 1) == ILLEGAL_FUNCTION  # not commandable
    assert img.plan_write(1, "holding", 10, 1) == ILLEGAL_FUNCTION  # a status register
    assert img.plan_write(1, "coil", 0, 1) == ILLEGAL_FUNCTION  # a quality coil
    assert img.plan_write(1, "input", 0, 2) == ILLEGAL_ADDRESS
    assert img.plan_write(1, "holding", 11, 1) == ILLEGAL_ADDRESS
    assert written_value(img.slots[0], words(">f", 2.5)) == 2.5
    assert written_value(img.slots[3], [(-5) & 0xFFFF]) == -0.5
    assert written_value(img.slots[4], [1, 2]) == 0x20001


TABLES = st.sampled_from(["holding", "input", "coil", "discrete", "", "x"])


@settings(max_examples=400, deadline=None)
@given(
    unit=st.integers(-1, 256),
    table=TABLES,
    address=st.integers(-2, 65537),
    count=st.integers(-1, 2001),
    values=st.lists(st.integers(0, 0xFFFF), max_size=8),
)
def test_any_request_is_answered_or_refused(unit: int, table: str, address: int, count: int, values: list[int]) -> None:
    img = image(MAP)
    for s in img.slots:
        s.commandable = True
    got = img.read(unit, table, address, count)
    assert isinstance(got, int) or len(got) == count
    plan = img.plan_write(unit, table, address, count)
    if not isinstance(plan, int):
        assert sum(s.entry.size for s in plan) == count
        offset = 0
        for s in plan:
            regs = (values + [0] * 8)[offset : offset + s.entry.size]
            offset += s.entry.size
            with contextlib.suppress(codec.CodecError):  # refused as an illegal value, through the gate
                written_value(s, regs)


@settings(max_examples=300, deadline=None)
@given(value=st.one_of(st.floats(), st.integers(-(2**70), 2**70), st.booleans(), st.text(max_size=3), st.none()))
def test_any_value_is_served_or_marked(value: Any) -> None:
    img = image(MAP)
    for tag in ("d/f", "d/d", "d/i", "d/u", "d/b", "d/r"):
        img.apply(Sample(tag, 1, value, Status.GOOD))
    for s in img.slots:
        assert len(s.words) == s.entry.size and all(0 <= w <= 0xFFFF for w in s.words)
