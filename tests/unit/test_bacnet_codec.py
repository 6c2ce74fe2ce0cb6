"""drivers.bacnet.codec: any value a device sends maps to a value and a status, or a CodecError."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from drivers.bacnet import codec
from drivers.bacnet.config import parse_object
from edged.model import Status

ANY = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(), st.lists(st.integers(0, 1)))


@given(kind=st.sampled_from(["number", "bool", "string"]), raw=ANY, real=st.booleans())
def test_to_value_returns_a_value_or_codec_error(kind: str, raw: object, real: bool) -> None:
    try:
        v = codec.to_value(kind, raw, real=real)
    except codec.CodecError:
        return
    assert isinstance(v, {"number": (int, float), "bool": bool, "string": str}[kind])


@given(flags=st.one_of(st.none(), st.lists(st.integers(0, 1), max_size=6)), rel=st.one_of(st.none(), st.text()))
def test_quality_never_keeps_a_value_with_bad_status(flags: list[int] | None, rel: str | None) -> None:
    try:
        value, status = codec.quality(1.5, flags, rel)
    except codec.CodecError:
        assert flags is not None and len(flags) < 4
        return
    assert (value is None) == (status >= 0x80000000)


def test_status_precedence() -> None:
    assert codec.quality(1.0, [0, 1, 1, 1], "open-loop") == (None, Status.BAD_SENSOR_FAILURE)
    assert codec.quality(1.0, [0, 1, 0, 0], None) == (None, Status.BAD_DEVICE_FAILURE)
    assert codec.quality(1.0, [0, 0, 1, 1], None) == (None, Status.BAD_OUT_OF_SERVICE)
    assert codec.quality(1.0, [1, 0, 1, 0], "no-fault-detected") == (1.0, Status.GOOD_LOCAL_OVERRIDE)
    assert codec.quality(1.0, [1, 0, 0, 0], None) == (1.0, Status.GOOD)


@given(st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_shortest_real_is_the_same_real(x: float) -> None:
    y = codec.shortest_real(x)
    assert struct.pack(">f", y) == struct.pack(">f", x)
    assert len(repr(y)) <= len(repr(x))


def test_shortest_real_example() -> None:
    assert codec.shortest_real(struct.unpack(">f", struct.pack(">f", 33.3))[0]) == 33.3


@given(st.text(max_size=40))
def test_parse_object_accepts_or_explains(text: str) -> None:
    try:
        otype, inst = parse_object(text)
    except ValueError as exc:
        reason = str(exc)
        assert reason.startswith(("object", "object type"))
        return
    assert 0 <= inst <= 4194302 and otype
