"""Bytes <-> value for the S7 elementary data types (pure, dependency-free, fuzzed).

S7 memory is big-endian (Motorola) whatever the CPU: INT/DINT are two's complement, REAL/LREAL
IEEE 754 binary32/binary64, all most significant byte first. The layouts below are the ones of the
Siemens "STEP 7 / TIA Portal: data types" documentation and are checked against its byte
examples in tests/unit/test_s7_codec.py:

    STRING[n]      n + 2 bytes: maximum length (n), current length, then n characters (one byte each)
    WSTRING[n]     2n + 4 bytes: maximum and current length as WORDs, then n UTF-16 characters
    DATE           WORD: days since 1990-01-01
    TIME           DINT: milliseconds (signed)
    TIME_OF_DAY    UDINT: milliseconds since midnight
    DATE_AND_TIME  8 bytes BCD: year (90..99 = 1990.., 00..89 = 2000..), month, day, hour, minute,
                   second, then three BCD digits of milliseconds and the weekday (1 = Sunday) in
                   the last nibble
    DTL            12 bytes: year UINT, month, day, weekday (1 = Sunday), hour, minute, second as
                   USINT, nanoseconds UDINT

Date and time values become ISO 8601 strings (the PLC's local time, no zone: an S7 clock has
none), TIME an integer of milliseconds. Decoding any bytes either returns a value or raises
`CodecError` with a reason; encoding refuses what the type cannot hold.
"""

from __future__ import annotations

import codecs
import datetime
import re
import struct
from typing import Literal, get_args

DataType = Literal[
    "bool", "byte", "word", "dword", "lword", "sint", "usint", "int", "uint", "dint", "udint", "lint", "ulint",
    "real", "lreal", "char", "string", "wstring", "time", "date", "tod", "dt", "dtl",
]  # fmt: skip
DATA_TYPES: tuple[str, ...] = get_args(DataType)

# struct format of each fixed-size number (bit strings BYTE/WORD/DWORD/LWORD read as unsigned)
_FORMATS: dict[str, str] = {
    "byte": "B", "word": "H", "dword": "I", "lword": "Q",
    "sint": "b", "usint": "B", "int": "h", "uint": "H", "dint": "i", "udint": "I", "lint": "q", "ulint": "Q",
    "real": "f", "lreal": "d", "time": "i", "tod": "I", "date": "H",
}  # fmt: skip
_FIXED_SIZE: dict[str, int] = {k: struct.calcsize(">" + f) for k, f in _FORMATS.items()} | {
    "bool": 1,
    "char": 1,
    "dt": 8,
    "dtl": 12,
}
INTEGER_TYPES: frozenset[str] = frozenset(
    {"byte", "word", "dword", "lword", "sint", "usint", "int", "uint", "dint", "udint", "lint", "ulint"}
)
DATE_TYPES: frozenset[str] = frozenset({"date", "tod", "dt", "dtl"})
MAX_STRING = 254  # STRING[254] is the largest S7 STRING
MAX_WSTRING = 16382
_DAY_MS = 86_400_000
_EPOCH = datetime.date(1990, 1, 1)


class CodecError(ValueError):
    """Bytes that do not decode as the type, or a value the type cannot hold."""


def size(dtype: DataType, length: int | None = None) -> int:
    """Bytes one value occupies; `length` is the declared STRING[n] / WSTRING[n] length."""
    if dtype == "string":
        return 2 + _length(length, MAX_STRING)
    if dtype == "wstring":
        return 4 + 2 * _length(length, MAX_WSTRING)
    return _FIXED_SIZE[dtype]


def _length(length: int | None, limit: int) -> int:
    if length is None or not 1 <= length <= limit:
        raise CodecError(f"a string needs a length of 1..{limit} characters")
    return length


def _range(dtype: str) -> tuple[int, int]:
    bits = 8 * _FIXED_SIZE[dtype]
    signed = _FORMATS[dtype].islower()
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def _bcd(b: int, what: str) -> int:
    hi, lo = b >> 4, b & 0x0F
    if hi > 9 or lo > 9:
        raise CodecError(f"DATE_AND_TIME {what} byte 0x{b:02X} is not BCD")
    return hi * 10 + lo


def _to_bcd(n: int) -> int:
    return (n // 10) << 4 | n % 10


def _weekday(d: datetime.date) -> int:
    """S7 weekday: 1 = Sunday .. 7 = Saturday."""
    return d.isoweekday() % 7 + 1


def _clock(ms: int) -> str:
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02}:{m:02}:{s:02}.{ms:03}"


def decode(data: bytes, dtype: DataType, *, bit: int = 0, length: int | None = None, encoding: str = "latin-1") -> (
    int | float | bool | str
):  # fmt: skip
    """Decode one value from exactly `size(dtype, length)` bytes."""
    if dtype not in DATA_TYPES:
        raise CodecError(f"unknown data type {dtype!r}")
    need = size(dtype, length)
    if len(data) != need:
        raise CodecError(f"{dtype} needs {need} bytes, got {len(data)}")
    if dtype == "bool":
        if not 0 <= bit <= 7:
            raise CodecError(f"bit {bit} is outside 0..7")
        return bool(data[0] >> bit & 1)
    if dtype == "char":
        return _text(data, encoding)
    if dtype in ("string", "wstring"):
        return _decode_string(data, dtype, encoding)
    if dtype == "dt":
        return _decode_dt(data)
    if dtype == "dtl":
        return _decode_dtl(data)
    value: int | float = struct.unpack(">" + _FORMATS[dtype], data)[0]
    if dtype == "date":
        return (_EPOCH + datetime.timedelta(days=int(value))).isoformat()
    if dtype == "tod":
        if not 0 <= int(value) < _DAY_MS:
            raise CodecError(f"TIME_OF_DAY {value} ms is not within one day")
        return _clock(int(value))
    return value


def _text(raw: bytes, encoding: str) -> str:
    try:
        return raw.decode(encoding)
    except UnicodeError as exc:
        raise CodecError(f"string is not valid {encoding}: {exc}") from None
    except LookupError:
        raise CodecError(f"unknown text encoding {encoding!r}") from None


def _decode_string(data: bytes, dtype: str, encoding: str) -> str:
    if dtype == "string":
        declared, current, body = data[0], data[1], data[2:]
    else:
        declared, current = struct.unpack(">HH", data[:4])
        body = data[4:]
    room = len(body) if dtype == "string" else len(body) // 2
    if current > declared or current > room:
        raise CodecError(f"{dtype.upper()} header says {current} characters of {declared}, the tag holds {room}")
    if dtype == "string":
        return _text(body[:current], encoding)
    return _text(body[: 2 * current], "utf-16-be")


def _decode_dt(data: bytes) -> str:
    yy = _bcd(data[0], "year")
    month, day = _bcd(data[1], "month"), _bcd(data[2], "day")
    hour, minute, second = _bcd(data[3], "hour"), _bcd(data[4], "minute"), _bcd(data[5], "second")
    ms = _bcd(data[6], "millisecond") * 10 + _bcd(data[7] >> 4, "millisecond")
    if data[7] & 0x0F > 9:
        raise CodecError(f"DATE_AND_TIME weekday nibble {data[7] & 0x0F} is not BCD")
    try:
        t = datetime.datetime(1900 + yy if yy >= 90 else 2000 + yy, month, day, hour, minute, second, ms * 1000)
    except ValueError as exc:
        raise CodecError(f"DATE_AND_TIME is not a valid date: {exc}") from None
    return t.isoformat(timespec="milliseconds")


def _decode_dtl(data: bytes) -> str:
    year, month, day, _, hour, minute, second, ns = struct.unpack(">HBBBBBBI", data)
    if ns > 999_999_999:
        raise CodecError(f"DTL nanoseconds {ns} exceed one second")
    try:
        t = datetime.datetime(year, month, day, hour, minute, second)
    except ValueError as exc:
        raise CodecError(f"DTL is not a valid date: {exc}") from None
    return f"{t.isoformat()}.{ns:09}"


def encode(value: int | float | bool | str, dtype: DataType, *, length: int | None = None,
           encoding: str = "latin-1") -> bytes:  # fmt: skip
    """Encode one value (a BOOL as the byte 0x01/0x00, written with a bit access)."""
    if dtype not in DATA_TYPES:
        raise CodecError(f"unknown data type {dtype!r}")
    if dtype == "bool":
        if not isinstance(value, bool) and value not in (0, 1):
            raise CodecError(f"{value!r} is not a boolean")
        return b"\x01" if value else b"\x00"
    if dtype in ("char", "string", "wstring"):
        if not isinstance(value, str):
            raise CodecError(f"{value!r} is not a string")
        return _encode_text(value, dtype, length, encoding)
    if dtype in DATE_TYPES:
        if not isinstance(value, str):
            raise CodecError(f"{value!r} is not an ISO 8601 {dtype} string")
        return _encode_date(value, dtype)
    if isinstance(value, (bool, str)):
        raise CodecError(f"{value!r} is not a number")
    fmt = _FORMATS[dtype]
    if dtype in INTEGER_TYPES or dtype == "time":
        if isinstance(value, float):
            if not value.is_integer():
                raise CodecError(f"{value} is not an integer (a {dtype} needs one)")
            value = int(value)
        lo, hi = _range(dtype)
        if not lo <= value <= hi:
            raise CodecError(f"{value} is outside the {dtype} range {lo}..{hi}")
        return struct.pack(">" + fmt, value)
    try:
        return struct.pack(">" + fmt, float(value))
    except OverflowError:
        raise CodecError(f"{value} is too large for a {dtype}") from None


def _encode_text(value: str, dtype: str, length: int | None, encoding: str) -> bytes:
    try:
        raw = value.encode("utf-16-be" if dtype == "wstring" else encoding)
    except UnicodeError as exc:
        raise CodecError(f"cannot encode {value!r} as {encoding}: {exc}") from None
    except LookupError:
        raise CodecError(f"unknown text encoding {encoding!r}") from None
    if dtype == "char":
        if len(raw) != 1:
            raise CodecError(f"a CHAR holds one byte, {value!r} is {len(raw)}")
        return raw
    n = _length(length, MAX_STRING if dtype == "string" else MAX_WSTRING)
    chars = len(raw) if dtype == "string" else len(raw) // 2
    if chars > n:
        raise CodecError(f"{value!r} has {chars} characters, the {dtype.upper()}[{n}] holds {n}")
    if dtype == "string":
        return bytes((n, chars)) + raw.ljust(n, b"\x00")
    return struct.pack(">HH", n, chars) + raw.ljust(2 * n, b"\x00")


_ISO = re.compile(r"^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?)?$")
_TOD = re.compile(r"^(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,3}))?$")


def _encode_date(value: str, dtype: str) -> bytes:
    if dtype == "tod":
        m = _TOD.match(value)
        if m is None:
            raise CodecError(f"{value!r} is not a time of day (HH:MM:SS.mmm)")
        h, mi, s = int(m[1]), int(m[2]), int(m[3])
        if h > 23 or mi > 59 or s > 59:
            raise CodecError(f"{value!r} is not a time of day")
        return struct.pack(">I", ((h * 60 + mi) * 60 + s) * 1000 + int((m[4] or "0").ljust(3, "0")))
    m = _ISO.match(value)
    if m is None or (dtype == "date") != (m[4] is None):
        want = "YYYY-MM-DD" if dtype == "date" else "YYYY-MM-DDTHH:MM:SS.fff"
        raise CodecError(f"{value!r} is not a {dtype.upper()} ({want})")
    try:
        d = datetime.date(int(m[1]), int(m[2]), int(m[3]))
        if m[4] is not None:
            datetime.time(int(m[4]), int(m[5]), int(m[6]))
    except ValueError as exc:
        raise CodecError(f"{value!r}: {exc}") from None
    frac = (m[7] or "").ljust(9, "0")
    if dtype == "date":
        days = (d - _EPOCH).days
        if not 0 <= days <= 0xFFFF:
            raise CodecError(f"{value!r} is outside DATE's 1990-01-01..2168-12-31")
        return struct.pack(">H", days)
    hour, minute, second = int(m[4]), int(m[5]), int(m[6])
    if dtype == "dt":
        if not 1990 <= d.year <= 2089:
            raise CodecError(f"{value!r} is outside DATE_AND_TIME's 1990..2089")
        ms = int(frac[:3])
        if frac[3:].strip("0"):
            raise CodecError(f"{value!r}: DATE_AND_TIME holds milliseconds, not finer")
        head = [d.year % 100, d.month, d.day, hour, minute, second, ms // 10]
        return bytes(_to_bcd(b) for b in head) + bytes(((ms % 10) << 4 | _weekday(d),))
    if not 1970 <= d.year <= 2262:
        raise CodecError(f"{value!r} is outside DTL's 1970..2262")
    return struct.pack(">HBBBBBBI", d.year, d.month, d.day, _weekday(d), hour, minute, second, int(frac))


def check_encoding(encoding: str) -> None:
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise ValueError(f"unknown encoding {encoding!r}") from None
