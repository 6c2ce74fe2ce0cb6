"""Register <-> value conversion for every Modbus data type and the four word/byte orders, shared by
the modbus driver (reading and writing devices) and the modbus_server uplink (serving SCADA masters).

Pure and dependency-free so it can be fuzzed: decoding any register payload either returns a value
or raises `CodecError` (a ValueError) with a message a plant engineer can act on.

Orders, for a 32-bit value whose big-endian bytes are A B C D:

    word_order  byte_order  registers on the wire
    big         big         AB CD   ("ABCD", the Modbus default)
    little      big         CD AB   ("CDAB", word swap, common on PLCs)
    big         little      BA DC   ("BADC", byte swap)
    little      little      DC BA   ("DCBA", fully little-endian)

`word_order` reverses the register sequence (for 64-bit types all four words), `byte_order` swaps
the two bytes inside each register. Strings only use `byte_order`.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Literal, get_args

DataType = Literal["bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string"]
Order = Literal["big", "little"]

DATA_TYPES: tuple[str, ...] = get_args(DataType)
ORDERS: dict[str, tuple[Order, Order]] = {
    "ABCD": ("big", "big"),
    "CDAB": ("little", "big"),
    "BADC": ("big", "little"),
    "DCBA": ("little", "little"),
}

# struct format and register count of each fixed-size numeric type
_FORMATS: dict[str, tuple[str, int]] = {
    "int16": ("h", 1),
    "uint16": ("H", 1),
    "int32": ("i", 2),
    "uint32": ("I", 2),
    "int64": ("q", 4),
    "uint64": ("Q", 4),
    "float32": ("f", 2),
    "float64": ("d", 4),
}
_INT_RANGES: dict[str, tuple[int, int]] = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}
_UNSIGNED: dict[int, DataType] = {16: "uint16", 32: "uint32", 64: "uint64"}


class CodecError(ValueError):
    """A register payload that cannot be decoded, or a value that cannot be encoded."""


def register_count(dtype: DataType, length: int | None = None) -> int:
    """Registers one value occupies; `length` is the string length in bytes (characters)."""
    if dtype == "bool":
        return 1
    if dtype == "string":
        if length is None or length < 1:
            raise CodecError("a string needs a length of at least 1 character")
        return (length + 1) // 2
    return _FORMATS[dtype][1]


def is_integer_type(dtype: DataType) -> bool:
    return dtype in _INT_RANGES


def _to_bytes(regs: Sequence[int], word_order: Order, byte_order: Order) -> bytes:
    for r in regs:
        if not isinstance(r, int) or isinstance(r, bool) or not 0 <= r <= 0xFFFF:
            raise CodecError(f"register value {r!r} is not a 16-bit unsigned integer")
    words = list(regs) if word_order == "big" else list(reversed(regs))
    endian: Literal["big", "little"] = "big" if byte_order == "big" else "little"
    return b"".join(w.to_bytes(2, endian) for w in words)


def _from_bytes(data: bytes, word_order: Order, byte_order: Order) -> list[int]:
    endian: Literal["big", "little"] = "big" if byte_order == "big" else "little"
    words = [int.from_bytes(data[i : i + 2], endian) for i in range(0, len(data), 2)]
    return words if word_order == "big" else words[::-1]


def decode(
    regs: Sequence[int],
    dtype: DataType,
    *,
    word_order: Order = "big",
    byte_order: Order = "big",
    bit: int | None = None,
    length: int | None = None,
    encoding: str = "utf-8",
) -> int | float | bool | str:
    """Decode the registers of one value. Raises CodecError for a payload that does not fit."""
    if dtype not in DATA_TYPES:
        raise CodecError(f"unknown data type {dtype!r}")
    need = register_count(dtype, length)
    if len(regs) != need:
        raise CodecError(f"{dtype} needs {need} register(s), got {len(regs)}")
    if dtype == "bool":
        (reg,) = regs
        if not isinstance(reg, int) or isinstance(reg, bool) or not 0 <= reg <= 0xFFFF:
            raise CodecError(f"register value {reg!r} is not a 16-bit unsigned integer")
        if bit is None:
            return reg != 0
        if not 0 <= bit <= 15:
            raise CodecError(f"bit index {bit} is outside 0..15")
        return bool((reg >> bit) & 1)
    if dtype == "string":
        assert length is not None  # register_count checked it
        raw = _to_bytes(regs, "big", byte_order)[:length].rstrip(b"\x00")
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError as exc:
            raise CodecError(f"string is not valid {encoding}: {exc.reason} at byte {exc.start}") from None
        except UnicodeError as exc:  # the idna, punycode and undefined codecs raise the base class
            raise CodecError(f"string is not valid {encoding}: {exc}") from None
        except LookupError:
            raise CodecError(f"unknown text encoding {encoding!r}") from None
    fmt, _ = _FORMATS[dtype]
    value: int | float = struct.unpack(">" + fmt, _to_bytes(regs, word_order, byte_order))[0]
    if bit is not None:
        if not isinstance(value, int) or not 0 <= bit < 16 * need:
            raise CodecError(f"bit index {bit} does not fit a {dtype}")
        return bool((value >> bit) & 1)
    return value


def encode(
    value: int | float | bool | str,
    dtype: DataType,
    *,
    word_order: Order = "big",
    byte_order: Order = "big",
    length: int | None = None,
    encoding: str = "utf-8",
) -> list[int]:
    """Encode one raw (unscaled) value to registers. Raises CodecError if it does not fit the type."""
    if dtype not in DATA_TYPES:
        raise CodecError(f"unknown data type {dtype!r}")
    if dtype == "bool":
        if not isinstance(value, bool) and value not in (0, 1):
            raise CodecError(f"{value!r} is not a boolean")
        return [1 if value else 0]
    if dtype == "string":
        if not isinstance(value, str):
            raise CodecError(f"{value!r} is not a string")
        n = register_count(dtype, length)
        try:
            data = value.encode(encoding)
        except UnicodeEncodeError as exc:
            raise CodecError(f"cannot encode {value!r} as {encoding}: {exc.reason}") from None
        except UnicodeError as exc:  # idna: an empty or too long label; undefined: always
            raise CodecError(f"cannot encode {value!r} as {encoding}: {exc}") from None
        except LookupError:
            raise CodecError(f"unknown text encoding {encoding!r}") from None
        if length is not None and len(data) > length:
            raise CodecError(f"string of {len(data)} bytes does not fit length {length}")
        return _from_bytes(data.ljust(2 * n, b"\x00"), "big", byte_order)
    fmt, _ = _FORMATS[dtype]
    packed: bytes
    if dtype in _INT_RANGES:
        if isinstance(value, bool) or not isinstance(value, int):
            raise CodecError(f"{value!r} is not an integer (a {dtype} needs one)")
        lo, hi = _INT_RANGES[dtype]
        if not lo <= value <= hi:
            raise CodecError(f"{value} is outside the {dtype} range {lo}..{hi}")
        packed = struct.pack(">" + fmt, value)
    else:
        if isinstance(value, (bool, str)) or not isinstance(value, (int, float)):
            raise CodecError(f"{value!r} is not a number")
        try:
            packed = struct.pack(">" + fmt, float(value))
        except OverflowError:
            raise CodecError(f"{value} is too large for a {dtype}") from None
    return _from_bytes(packed, word_order, byte_order)


def to_engineering(raw: int | float | bool | str, scale: float, offset: float) -> int | float | bool | str:
    """raw * scale + offset; integers stay integers when no scaling is configured."""
    if isinstance(raw, (bool, str)) or (scale == 1.0 and offset == 0.0):
        return raw
    return raw * scale + offset


def to_raw(value: float | int, dtype: DataType, scale: float, offset: float) -> int | float:
    """Invert `to_engineering` for a write: integer types are rounded to the nearest step."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CodecError(f"{value!r} is not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise CodecError(f"{value} cannot be written")
    raw: int | float = value if (scale == 1.0 and offset == 0.0) else (value - offset) / scale
    if dtype in _INT_RANGES:
        if isinstance(raw, float):
            if not math.isfinite(raw):
                raise CodecError(f"{value} cannot be written as {dtype}")
            raw = round(raw)
        lo, hi = _INT_RANGES[dtype]
        if not lo <= raw <= hi:
            raise CodecError(f"{value} is {raw} raw, outside the {dtype} range {lo}..{hi}")
    return raw


def set_bit(
    regs: Sequence[int],
    dtype: DataType,
    bit: int,
    on: bool,
    *,
    word_order: Order = "big",
    byte_order: Order = "big",
) -> list[int]:
    """Registers with one bit of a bool/integer value changed, for a read-modify-write."""
    if dtype == "bool":
        if len(regs) != 1 or not 0 <= bit <= 15:
            raise CodecError(f"bit {bit} does not fit one register")
        return [(regs[0] | (1 << bit)) if on else (regs[0] & ~(1 << bit) & 0xFFFF)]
    if dtype not in _INT_RANGES:
        raise CodecError(f"a bit cannot be set in a {dtype}")
    width = 16 * _FORMATS[dtype][1]
    if not 0 <= bit < width or len(regs) != width // 16:
        raise CodecError(f"bit {bit} does not fit a {dtype}")
    unsigned = _UNSIGNED[width]
    value = int(decode(regs, unsigned, word_order=word_order, byte_order=byte_order))
    value = (value | (1 << bit)) if on else (value & ~(1 << bit))
    return encode(value, unsigned, word_order=word_order, byte_order=byte_order)
