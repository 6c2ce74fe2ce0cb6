"""What an S7 CPU answers: a Read Var / Write Var ack PDU through drivers.s7.pdu, and item bytes
through the codec for every data type (a PLC's memory holds whatever its program put there)."""

from __future__ import annotations

from drivers.s7.codec import DATA_TYPES, CodecError, decode, encode, size
from drivers.s7.pdu import HeaderError, PduError, Spec, parse_read, parse_write

ACCEPTS = (CodecError, PduError, HeaderError)
_SPECS = [Spec("DB", 1, 0, 3), Spec("M", 0, 10, 1, bit=2), Spec("Q", 0, 0, 4)]


def target(data: bytes) -> None:
    if len(data) < 3:
        return
    mode, specs, body = data[0] % 3, _SPECS[: data[0] // 3 % 3 + 1], data[1:]
    if mode == 0:
        items = parse_read(body, 1, specs)
        assert all(isinstance(x, int) or len(x) in (1, 3, 4) for x in items)
        return
    if mode == 1:
        assert 0 <= parse_write(body, 1) <= 0xFF
        return
    dtype = DATA_TYPES[data[1] % len(DATA_TYPES)]
    length = data[2] % 40 + 1 if dtype in ("string", "wstring") else None
    raw = body[2:].ljust(size(dtype, length), b"\x00")[: size(dtype, length)]
    value = decode(raw, dtype, bit=data[2] % 8, length=length)  # type: ignore[arg-type]
    if dtype not in ("bool", "string", "wstring", "char"):
        again = decode(encode(value, dtype), dtype)  # type: ignore[arg-type]
        assert again == value or again != again, f"{dtype} must round-trip"


def seeds() -> list[bytes]:
    ack = bytes.fromhex(
        "32030000000100020016000004 03 ff0400182a0b0c00 ff03000101 00 ff04002012345678".replace(" ", "")
    )
    write = bytes.fromhex("3203000000010002000100000501ff")
    return [bytes([6]) + ack, b"\x01" + write] + [
        bytes([2, i, 4]) + bytes.fromhex("0102030405060708090a0b0c") for i in range(len(DATA_TYPES))
    ]
