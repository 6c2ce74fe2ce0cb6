"""Register codec: known vectors for the four orders, round trips and fuzzing."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edged.protocols.modbus import (
    DATA_TYPES,
    ORDERS,
    CodecError,
    decode,
    encode,
    register_count,
    set_bit,
    to_engineering,
    to_raw,
)

# big-endian bytes 11 22 33 44 (55 66 77 88) laid out in each order
U32 = 0x11223344
U64 = 0x1122334455667788
VECTORS_32 = {
    "ABCD": [0x1122, 0x3344],
    "CDAB": [0x3344, 0x1122],
    "BADC": [0x2211, 0x4433],
    "DCBA": [0x4433, 0x2211],
}
VECTORS_64 = {
    "ABCD": [0x1122, 0x3344, 0x5566, 0x7788],
    "CDAB": [0x7788, 0x5566, 0x3344, 0x1122],
    "BADC": [0x2211, 0x4433, 0x6655, 0x8877],
    "DCBA": [0x8877, 0x6655, 0x4433, 0x2211],
}


@pytest.mark.parametrize("order", ORDERS)
def test_32_and_64_bit_vectors_in_every_order(order: str) -> None:
    wo, bo = ORDERS[order]
    assert decode(VECTORS_32[order], "uint32", word_order=wo, byte_order=bo) == U32
    assert encode(U32, "uint32", word_order=wo, byte_order=bo) == VECTORS_32[order]
    assert decode(VECTORS_64[order], "uint64", word_order=wo, byte_order=bo) == U64
    assert encode(U64, "uint64", word_order=wo, byte_order=bo) == VECTORS_64[order]
    f32 = struct.unpack(">f", U32.to_bytes(4, "big"))[0]
    assert decode(VECTORS_32[order], "float32", word_order=wo, byte_order=bo) == f32
    f64 = struct.unpack(">d", U64.to_bytes(8, "big"))[0]
    assert decode(VECTORS_64[order], "float64", word_order=wo, byte_order=bo) == f64


def test_common_values() -> None:
    assert decode([0x3F80, 0x0000], "float32") == 1.0
    assert decode([0x0000, 0x3F80], "float32", word_order="little") == 1.0
    assert decode([0xFFFF], "int16") == -1
    assert decode([0xFFFF], "uint16") == 65535
    assert decode([0xFFFF, 0xFFFE], "int32") == -2
    assert decode([0x8000, 0, 0, 0], "int64") == -(2**63)
    assert decode([0x4865, 0x6C6C, 0x6F00], "string", length=6) == "Hello"
    assert decode([0x6548, 0x6C6C, 0x006F], "string", length=6, byte_order="little") == "Hello"
    assert decode([0x4142], "string", length=1) == "A"  # odd length: the last byte is ignored
    assert encode("Hi", "string", length=5) == [0x4869, 0, 0]


def test_bits() -> None:
    assert decode([0b1010], "bool", bit=1) is True
    assert decode([0b1010], "bool", bit=2) is False
    assert decode([0], "bool") is False
    assert decode([7], "bool") is True
    assert decode([0x0001, 0x0000], "uint32", bit=16) is True  # bit 16 is in the high word
    assert decode([0x0000, 0x8000], "int32", bit=15) is True
    assert set_bit([0b1010], "bool", 0, True) == [0b1011]
    assert set_bit([0b1010], "bool", 1, False) == [0b1000]
    assert set_bit([0, 0], "uint32", 31, True, word_order="little") == [0, 0x8000]
    with pytest.raises(CodecError):
        set_bit([0, 0], "float32", 1, True)


def test_register_counts() -> None:
    counts = {"bool": 1, "int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2}
    counts |= {"int64": 4, "uint64": 4, "float64": 4}
    for dtype, n in counts.items():
        assert register_count(dtype) == n  # type: ignore[arg-type]
    assert register_count("string", 7) == 4
    with pytest.raises(CodecError):
        register_count("string")


@pytest.mark.parametrize(
    ("value", "dtype", "match"),
    [
        (70000, "uint16", "outside the uint16 range"),
        (-1, "uint32", "outside"),
        (2**63, "int64", "outside"),
        (1.5, "int16", "not an integer"),
        (True, "int16", "not an integer"),
        ("x", "float32", "not a number"),
        (1e300, "float32", "too large"),
        (2, "bool", "not a boolean"),
        (3, "string", "not a string"),
    ],
)
def test_encode_rejects_values_that_do_not_fit(value: object, dtype: str, match: str) -> None:
    with pytest.raises(CodecError, match=match):
        encode(value, dtype, length=4)  # type: ignore[arg-type]


def test_decode_errors_are_clear() -> None:
    with pytest.raises(CodecError, match="float32 needs 2 register"):
        decode([1], "float32")
    with pytest.raises(CodecError, match="not a 16-bit"):
        decode([70000], "uint16")
    with pytest.raises(CodecError, match="not valid utf-8"):
        decode([0xFFFE], "string", length=2)
    with pytest.raises(CodecError, match="does not fit length 2"):
        encode("toolong", "string", length=2)


def test_scale_and_offset() -> None:
    assert to_engineering(1234, 0.1, 0.0) == pytest.approx(123.4)
    assert to_engineering(100, 1.0, -40.0) == 60.0
    assert to_engineering(7, 1.0, 0.0) == 7
    assert isinstance(to_engineering(7, 1.0, 0.0), int)
    assert to_engineering(True, 10.0, 1.0) is True
    assert to_raw(123.4, "int16", 0.1, 0.0) == 1234
    assert to_raw(60.0, "uint16", 1.0, -40.0) == 100
    assert to_raw(1.5, "float32", 2.0, 0.0) == 0.75
    with pytest.raises(CodecError, match="outside the uint16 range"):
        to_raw(-1.0, "uint16", 1.0, 0.0)
    with pytest.raises(CodecError):
        to_raw(math.nan, "float32", 1.0, 0.0)


# ----------------------------------------------------------------------------------------- properties

orders = st.sampled_from(list(ORDERS.values()))
INT_BITS = {"int16": (16, True), "uint16": (16, False), "int32": (32, True), "uint32": (32, False)}
INT_BITS |= {"int64": (64, True), "uint64": (64, False)}


@settings(max_examples=300)
@given(st.data(), orders)
def test_integers_round_trip(data: st.DataObject, order: tuple[str, str]) -> None:
    dtype = data.draw(st.sampled_from(sorted(INT_BITS)))
    bits, signed = INT_BITS[dtype]
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    value = data.draw(st.integers(lo, hi))
    regs = encode(value, dtype, word_order=order[0], byte_order=order[1])  # type: ignore[arg-type]
    assert len(regs) == bits // 16
    assert all(0 <= r <= 0xFFFF for r in regs)
    assert decode(regs, dtype, word_order=order[0], byte_order=order[1]) == value  # type: ignore[arg-type]


@settings(max_examples=300)
@given(st.data(), orders)
def test_floats_round_trip(data: st.DataObject, order: tuple[str, str]) -> None:
    dtype = data.draw(st.sampled_from(["float32", "float64"]))
    value = data.draw(st.floats(width=32 if dtype == "float32" else 64))
    regs = encode(value, dtype, word_order=order[0], byte_order=order[1])  # type: ignore[arg-type]
    back = decode(regs, dtype, word_order=order[0], byte_order=order[1])  # type: ignore[arg-type]
    assert isinstance(back, float)
    assert (math.isnan(back) and math.isnan(value)) or back == value


@settings(max_examples=100)
@given(st.text(max_size=20).filter(lambda s: not s.endswith("\x00")), st.sampled_from(["big", "little"]))
def test_strings_round_trip(text: str, byte_order: str) -> None:
    length = max(1, len(text.encode()))
    regs = encode(text, "string", byte_order=byte_order, length=length)  # type: ignore[arg-type]
    assert len(regs) == register_count("string", length)
    assert decode(regs, "string", byte_order=byte_order, length=length) == text  # type: ignore[arg-type]


@settings(max_examples=100)
@given(st.integers(0, 0xFFFF), st.integers(0, 15), st.booleans())
def test_bool_bits_round_trip(reg: int, bit: int, on: bool) -> None:
    changed = set_bit([reg], "bool", bit, on)
    assert decode(changed, "bool", bit=bit) is on
    for other in range(16):
        if other != bit:
            assert decode(changed, "bool", bit=other) == decode([reg], "bool", bit=other)


@settings(max_examples=500)
@given(
    st.lists(st.integers(-3, 0x1_0003), max_size=6),
    st.sampled_from([*DATA_TYPES, "nope"]),
    orders,
    st.one_of(st.none(), st.integers(-2, 70)),
    st.one_of(st.none(), st.integers(-1, 12)),
    st.sampled_from(["utf-8", "ascii", "latin-1", "utf-16-le", "no-such-codec"]),
)
def test_decoding_random_payloads_only_raises_codec_error(
    regs: list[int], dtype: str, order: tuple[str, str], bit: int | None, length: int | None, encoding: str
) -> None:
    kwargs = {
        "word_order": order[0],
        "byte_order": order[1],
        "bit": bit,
        "length": length,
        "encoding": encoding,
    }
    try:
        value = decode(regs, dtype, **kwargs)  # type: ignore[arg-type]
    except CodecError as exc:
        message = str(exc)
    else:
        assert isinstance(value, (int, float, bool, str))
        return
    assert message  # a reason, never an empty error


@pytest.mark.parametrize(
    ("regs", "encoding"),
    [
        ([0x4E52, 0x580C, 0x1612], "punycode"),  # "Invalid extended code point": a bare UnicodeError
        ([0x786E, 0x2D2D], "idna"),  # "xn--": an empty label
        ([0x4142], "undefined"),
    ],
)
def test_codecs_raising_plain_unicode_error_give_codec_error(regs: list[int], encoding: str) -> None:
    with pytest.raises(CodecError, match=f"not valid {encoding}"):
        decode(regs, "string", length=2 * len(regs), encoding=encoding)


@pytest.mark.parametrize(("value", "encoding"), [("a..b", "idna"), ("x" * 70, "idna"), ("ab", "undefined")])
def test_encoding_to_a_codec_raising_plain_unicode_error_gives_codec_error(value: str, encoding: str) -> None:
    with pytest.raises(CodecError, match=f"as {encoding}"):
        encode(value, "string", length=80, encoding=encoding)
