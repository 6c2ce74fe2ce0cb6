"""Modbus register contents (whatever a device answers) through the codec, for every data type,
order and text encoding codecs.lookup accepts (the tag's `encoding` is only checked that way)."""

from __future__ import annotations

import encodings
import pkgutil
import struct

from edged.protocols.modbus import DATA_TYPES, ORDERS, CodecError, decode, encode, is_integer_type, set_bit

ACCEPTS = (CodecError,)
_CODECS = sorted(m.name for m in pkgutil.iter_modules(encodings.__path__))
_ENCODINGS = ("utf-8", "ascii", "latin-1", "utf-16-le", *_CODECS)
_ORDERS = tuple(ORDERS.values())


def target(data: bytes) -> None:
    if len(data) < 5:
        return
    dtype = DATA_TYPES[data[0] % len(DATA_TYPES)]
    word_order, byte_order = _ORDERS[data[1] % 4]
    bit = None if data[2] >= 0x80 else data[2] % 70
    length = data[3] % 24 or None
    encoding = _ENCODINGS[data[4] % len(_ENCODINGS)]
    body = data[5:]
    regs = [int.from_bytes(body[i : i + 2], "big") for i in range(0, len(body) - 1, 2)]
    kw = {"word_order": word_order, "byte_order": byte_order}
    if dtype == "string":
        try:
            text = decode(regs, dtype, byte_order=byte_order, length=length, encoding=encoding)
        finally:  # a write of any text must be refused or fit, too
            encode(body.decode("utf-8", "replace"), dtype, byte_order=byte_order, length=length, encoding=encoding)
        assert isinstance(text, str)
        return
    value = decode(regs, dtype, bit=bit, **kw)  # type: ignore[arg-type]
    if bit is None and is_integer_type(dtype):
        assert encode(value, dtype, **kw) == regs, "an integer must round-trip"  # type: ignore[arg-type]
    if bit is not None and (dtype == "bool" or is_integer_type(dtype)):
        changed = set_bit(regs, dtype, bit, not value, **kw)  # type: ignore[arg-type]
        assert decode(changed, dtype, bit=bit, **kw) is (not value)  # type: ignore[arg-type]
    if dtype == "float64" and bit is None:
        assert struct.pack(">d", value) == struct.pack(">d", decode(encode(value, dtype, **kw), dtype, **kw))  # type: ignore[arg-type]


def seeds() -> list[bytes]:
    return [bytes([i, 0, 0xFF, 4, 0]) + bytes.fromhex("41c80000deadbeef") for i in range(len(DATA_TYPES))]
