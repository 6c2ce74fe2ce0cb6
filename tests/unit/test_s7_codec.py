"""drivers/s7 codec and PDUs against golden bytes written independently of python-snap7.

The peer in the contract tests is python-snap7's own server, so these bytes are the independent
check: the data type layouts from the Siemens STEP 7 / TIA Portal documentation (its own examples
where it gives one) and the S7comm job layout as Wireshark's dissector shows it.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.s7 import codec, pdu
from drivers.s7.codec import CodecError, decode, encode

# (type, value, bytes): big-endian IEEE 754 and two's complement, as S7 memory holds them
GOLDEN: list[tuple[str, object, bytes, dict[str, object]]] = [
    ("real", 1.0, bytes.fromhex("3F800000"), {}),
    ("real", 21.5, bytes.fromhex("41AC0000"), {}),
    ("real", -2.5, bytes.fromhex("C0200000"), {}),
    ("lreal", 1.0, bytes.fromhex("3FF0000000000000"), {}),
    ("lreal", math.pi, bytes.fromhex("400921FB54442D18"), {}),
    ("int", -1, bytes.fromhex("FFFF"), {}),
    ("int", 27648, bytes.fromhex("6C00"), {}),  # an analog input's nominal full scale
    ("dint", -2, bytes.fromhex("FFFFFFFE"), {}),
    ("udint", 0xDEADBEEF, bytes.fromhex("DEADBEEF"), {}),
    ("sint", -128, bytes.fromhex("80"), {}),
    ("word", 0xBEEF, bytes.fromhex("BEEF"), {}),
    ("lint", -(2**63), bytes.fromhex("8000000000000000"), {}),
    ("ulint", 2**64 - 1, bytes.fromhex("FFFFFFFFFFFFFFFF"), {}),
    # TIME is a DINT of ms: T#-24D_20H_31M_23S_648MS is the smallest
    ("time", -2147483648, bytes.fromhex("80000000"), {}),
    ("time", 1500, bytes.fromhex("000005DC"), {}),
    # TIME_OF_DAY: ms since midnight
    ("tod", "23:59:59.999", bytes.fromhex("05265BFF"), {}),
    ("tod", "00:00:00.000", bytes.fromhex("00000000"), {}),
    # DATE: days since 1990-01-01; D#2168-12-31 = 16#FF62 is the largest
    ("date", "1990-01-01", bytes.fromhex("0000"), {}),
    ("date", "2168-12-31", bytes.fromhex("FF62"), {}),
    # DATE_AND_TIME, BCD; Siemens' example DT#1993-12-25-8:12:34.567, a Saturday (weekday 7)
    ("dt", "1993-12-25T08:12:34.567", bytes.fromhex("9312250812345677"), {}),
    # years 00..89 are 2000..2089; 2024-02-29 was a Thursday (weekday 5)
    ("dt", "2024-02-29T23:59:59.999", bytes.fromhex("2402292359599995"), {}),
    # DTL, Siemens' example DTL#2008-12-16-20:30:20.250 (a Tuesday, weekday 3)
    ("dtl", "2008-12-16T20:30:20.250000000", bytes.fromhex("07D80C1003141E140EE6B280"), {}),
    # STRING[n]: maximum length, current length, then n bytes
    ("string", "AB", bytes.fromhex("040241420000"), {"length": 4}),
    ("string", "", bytes.fromhex("0100") + b"\x00", {"length": 1}),
    ("string", "Grüße", bytes.fromhex("0A05") + "Grüße".encode("latin-1") + bytes(5), {"length": 10}),
    # WSTRING[n]: WORD maximum, WORD current, UTF-16 characters
    ("wstring", "Ω", bytes.fromhex("0002000103A90000"), {"length": 2}),
    ("char", "A", b"A", {}),
]


@pytest.mark.parametrize(("dtype", "value", "raw", "kw"), GOLDEN, ids=[f"{g[0]}-{g[1]}" for g in GOLDEN])
def test_golden_bytes(dtype: codec.DataType, value: object, raw: bytes, kw: dict[str, int]) -> None:
    assert codec.size(dtype, kw.get("length")) == len(raw)
    assert decode(raw, dtype, **kw) == value  # type: ignore[arg-type]
    assert encode(value, dtype, **kw) == raw  # type: ignore[arg-type]


def test_bool_reads_its_bit() -> None:
    assert [decode(b"\x05", "bool", bit=b) for b in range(8)] == [True, False, True] + [False] * 5
    assert encode(True, "bool") == b"\x01"


@pytest.mark.parametrize(
    ("raw", "dtype", "kw", "reason"),
    [
        (bytes.fromhex("0405414243444546"), "string", {"length": 6}, "5 characters of 4"),
        (bytes.fromhex("0A07414243"), "string", {"length": 3}, "the tag holds 3"),
        (bytes.fromhex("9A12250812345677"), "dt", {}, "not BCD"),
        (bytes.fromhex("9313250812345677"), "dt", {}, "not a valid date"),
        (bytes.fromhex("07D80C1003141E14FFFFFFFF"), "dtl", {}, "nanoseconds"),
        (bytes.fromhex("05265C00"), "tod", {}, "within one day"),
        (b"\x01", "int", {}, "needs 2 bytes"),
    ],
)
def test_bad_bytes_are_codec_errors(raw: bytes, dtype: codec.DataType, kw: dict[str, int], reason: str) -> None:
    with pytest.raises(CodecError, match=reason):
        decode(raw, dtype, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "dtype", "kw", "reason"),
    [
        (40000, "int", {}, "outside the int range"),
        (1.5, "dint", {}, "not an integer"),
        ("toolong", "string", {"length": 4}, "holds 4"),
        ("1989-12-31", "date", {}, "1990"),
        ("2090-01-01T00:00:00", "dt", {}, "1990..2089"),
        ("2024-01-01T00:00:00.0001", "dt", {}, "milliseconds"),
        ("24:00:00", "tod", {}, "not a time of day"),
        ("2024-01-01", "dt", {}, "not a DT"),
        ("€", "string", {"length": 4}, "latin-1"),
        (1e39, "real", {}, "too large"),
    ],
)
def test_values_the_type_cannot_hold(value: object, dtype: codec.DataType, kw: dict[str, int], reason: str) -> None:
    with pytest.raises(CodecError, match=reason):
        encode(value, dtype, **kw)  # type: ignore[arg-type]


@given(st.binary(min_size=0, max_size=300), st.sampled_from(codec.DATA_TYPES), st.integers(1, 40))
def test_any_bytes_decode_or_fail_cleanly(raw: bytes, dtype: codec.DataType, length: int) -> None:
    kw = {"length": length} if dtype in ("string", "wstring") else {}
    with contextlib.suppress(CodecError):  # anything else fails the test
        decode(raw, dtype, **kw)  # type: ignore[arg-type]


@given(st.floats(width=32, allow_nan=False), st.integers(-(2**31), 2**31 - 1))
def test_numbers_round_trip(f: float, i: int) -> None:
    assert decode(encode(f, "real"), "real") == f
    assert decode(encode(i, "dint"), "dint") == i
    assert encode(f, "real") == struct.pack(">f", f)


@given(st.datetimes(min_value=datetime.datetime(1990, 1, 1), max_value=datetime.datetime(2089, 12, 31)))
def test_date_and_time_round_trips(t: datetime.datetime) -> None:
    iso = t.isoformat(timespec="milliseconds")
    assert decode(encode(iso, "dt"), "dt") == iso
    dtl = iso + "000000"
    assert decode(encode(dtl, "dtl"), "dtl") == dtl


# ----------------------------------------------------------------------------------------- PDUs


def test_read_request_bytes() -> None:
    # DB1.DBB0, 4 bytes, and M10..M11: the S7comm job as Wireshark dissects it
    req = pdu.read_request(1, [pdu.Spec("DB", 1, 0, 4), pdu.Spec("M", 0, 10, 2)])
    assert req == bytes.fromhex(
        "32 01 0000 0001 001a 0000"  # job header: ref 1, 26 bytes of parameters, no data
        "04 02"  # read var, two items
        "12 0a 10 02 0004 0001 84 000000"  # S7ANY, BYTE x4, DB1, area DB, bit address 0
        "12 0a 10 02 0002 0000 83 000050"  # BYTE x2, area M, bit address 80 = byte 10
    )
    assert len(req) == pdu.request_size(2)


def test_bit_write_request_bytes() -> None:
    # DB1.DBX10.2 := TRUE
    req = pdu.write_request(2, pdu.Spec("DB", 1, 10, 1, bit=2), b"\x01")
    assert req == bytes.fromhex("32 01 0000 0002 000e 0005  05 01  12 0a 10 01 0001 0001 84 000052  00 03 0001 01")


def test_byte_write_request_bytes() -> None:
    req = pdu.write_request(3, pdu.Spec("Q", 0, 0, 2), b"\x12\x34")
    assert req == bytes.fromhex("32 01 0000 0003 000e 0006  05 01  12 0a 10 02 0002 0000 82 000000  00 04 0010 1234")


def test_read_answer_with_fill_byte_and_a_refused_item() -> None:
    specs = [pdu.Spec("DB", 1, 0, 1), pdu.Spec("DB", 2, 0, 2), pdu.Spec("M", 0, 0, 2)]
    reply = bytes.fromhex("32 03 0000 0007 0002 0010 00 00  04 03  ff 04 0008 2a 00  0a 00 0000  ff 04 0010 beef")
    assert pdu.parse_read(reply, 7, specs) == [b"\x2a", 0x0A, b"\xbe\xef"]
    assert pdu.reply_size([1, 2]) == 12 + 2 + 4 + 1 + 1 + 4 + 2


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        ("32 03 0000 0008 0002 0005 00 00 04 01 ff 04 0008 2a", "expected 7"),  # another job's answer
        ("32 03 0000 0007 0002 0006 00 00 04 01 ff 04 0008 2a", "do not match"),
        ("32 03 0000 0007 0002 0005 00 00 04 01 ff 04 0010 2a", "holds 2 bytes"),
        ("72 03 0000 0007 0002 0005 00 00 04 01 ff 04 0008 2a", "protocol id"),
        ("32 03 00", "shorter"),
        ("32 03 0000 0007 0002 0005 00 00 05 01 ff 04 0008 2a", "function"),
    ],
)
def test_malformed_answers(reply: str, error: str) -> None:
    with pytest.raises(pdu.PduError, match=error):
        pdu.parse_read(bytes.fromhex(reply), 7, [pdu.Spec("DB", 1, 0, 1)])


def test_refused_job_carries_the_header_error() -> None:
    with pytest.raises(pdu.HeaderError) as exc:
        pdu.parse_read(bytes.fromhex("32 02 0000 0007 0000 0000 81 04"), 7, [pdu.Spec("DB", 1, 0, 1)])
    assert exc.value.code == 0x8104


def test_the_library_builds_the_same_read_job() -> None:
    """python-snap7's own builder agrees byte for byte (same items, same reference)."""
    from snap7.s7protocol import S7Protocol

    proto = S7Protocol()
    theirs = proto.build_multi_read_request([(0x84, 1, 0, 4), (0x83, 0, 10, 2)])
    ref = int.from_bytes(theirs[4:6], "big")
    assert pdu.read_request(ref, [pdu.Spec("DB", 1, 0, 4), pdu.Spec("M", 0, 10, 2)]) == theirs


@given(st.binary(max_size=200))
def test_any_answer_parses_or_fails_cleanly(reply: bytes) -> None:
    with contextlib.suppress(pdu.PduError, pdu.HeaderError):  # anything else fails the test
        pdu.parse_read(reply, 1, [pdu.Spec("DB", 1, 0, 3), pdu.Spec("M", 0, 0, 1)])
