"""The S7 "Read Var" / "Write Var" job PDUs (function 0x04 / 0x05), built and parsed by hand.

Why not python-snap7's own multi-read: it re-plans the items with an optimiser of its own (so the
request count would no longer be the planner's), and it raises on the first item the PLC refuses,
losing the others. Building the PDU here keeps one planned request = one PDU on the wire and gives
every item its own return code. The transport underneath (TPKT, COTP, ISO-on-TCP connect, the PDU
size negotiation) stays python-snap7's: `Client.iso_exchange_buffer` sends one PDU and returns the
answer. Pure, so the bytes are tested against the protocol description and fuzzed.

Layout (S7comm, as in Wireshark's dissector and the snap7 sources):

    job header   0x32 0x01 0000 <pdu ref:2> <param len:2> <data len:2>                 10 bytes
    ack header   0x32 0x03 0000 <pdu ref:2> <param len:2> <data len:2> <class> <code>  12 bytes
    read param   0x04 <n> then n x (0x12 0x0A 0x10 <transport> <count:2> <db:2> <area> <bit address:3>)
    read data    n x (<return code> <transport> <length:2> <data> [fill byte if odd and not last])
    write param  0x05 <n> then n item specs; write data as read data with return code 0x00
    write ack    0x05 <n>; data: n return codes
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

HEADER_JOB = 10
HEADER_ACK = 12
ITEM_SPEC = 12  # bytes of one item in a request's parameters
ITEM_HEADER = 4  # return code, transport size, length in a response's data
READ_OVERHEAD = HEADER_ACK + 2 + ITEM_HEADER  # a single-item read answer: 18 bytes around the data

FUNC_READ = 0x04
FUNC_WRITE = 0x05
TS_BIT = 0x01  # item transport size: one bit
TS_BYTE = 0x02  # item transport size: bytes
DATA_BIT = 0x03  # data transport size: bit, length in bits
DATA_BYTE = 0x04  # data transport size: byte/word/dword, length in bits
DATA_OCTET = 0x09  # data transport size: octet string, length in bytes
OK = 0xFF

AREAS: dict[str, int] = {"I": 0x81, "Q": 0x82, "M": 0x83, "DB": 0x84}

# Item return codes (S7comm "return code" of a data item)
ITEM_CODES: dict[int, str] = {
    0x01: "hardware fault",
    0x03: "access to the object not allowed (S7-1200/1500: allow PUT/GET; DB without optimised access)",
    0x05: "address out of range (check the DB length)",
    0x06: "data type not supported",
    0x07: "data type inconsistent",
    0x0A: "object does not exist (no such DB)",
}


class PduError(ValueError):
    """An answer that is not a well-formed S7 reply to our job."""


class HeaderError(Exception):
    """The PLC refused the whole job: a non-zero error class/code in the ack header."""

    def __init__(self, code: int) -> None:
        super().__init__(f"error 0x{code:04X}")
        self.code = code


@dataclass(frozen=True, slots=True)
class Spec:
    """One item: `size` bytes (or one bit, `bit` set) at byte `start` of an area (and DB)."""

    area: str
    db: int
    start: int
    size: int
    bit: int | None = None


def _item(spec: Spec) -> bytes:
    area = AREAS[spec.area]
    db = spec.db if spec.area == "DB" else 0
    if spec.bit is None:
        ts, count, address = TS_BYTE, spec.size, spec.start * 8
    else:
        ts, count, address = TS_BIT, 1, spec.start * 8 + spec.bit
    if not 0 <= address < 1 << 24:
        raise PduError(f"address {spec.start} is beyond the 3-byte S7 address")
    return struct.pack(">BBBBHHB", 0x12, 0x0A, 0x10, ts, count, db, area) + address.to_bytes(3, "big")


def _job(ref: int, params: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">BBHHHH", 0x32, 0x01, 0, ref, len(params), len(data)) + params + data


def read_request(ref: int, specs: list[Spec]) -> bytes:
    if not 1 <= len(specs) <= 255:
        raise PduError("a read job holds 1..255 items")
    return _job(ref, bytes((FUNC_READ, len(specs))) + b"".join(_item(s) for s in specs))


def write_request(ref: int, spec: Spec, data: bytes) -> bytes:
    """One item; a bit write (spec.bit set) carries one byte 0x00/0x01 with length 1 bit."""
    if spec.bit is not None:
        if len(data) != 1:
            raise PduError("a bit write carries one byte")
        body = struct.pack(">BBH", 0x00, DATA_BIT, 1) + data
    else:
        if len(data) != spec.size:
            raise PduError(f"{len(data)} bytes for an item of {spec.size}")
        body = struct.pack(">BBH", 0x00, DATA_BYTE, 8 * len(data)) + data
    return _job(ref, bytes((FUNC_WRITE, 1)) + _item(spec), body)


def request_size(items: int) -> int:
    return HEADER_JOB + 2 + ITEM_SPEC * items


def reply_size(sizes: list[int]) -> int:
    """Bytes of a read answer for items of these sizes (fill bytes counted)."""
    return HEADER_ACK + 2 + sum(ITEM_HEADER + n + n % 2 for n in sizes[:-1]) + ITEM_HEADER + sizes[-1]


def _ack(reply: bytes, ref: int, function: int) -> tuple[int, bytes]:
    """Check an ack header for our job; returns the item count and the data section."""
    if len(reply) < HEADER_ACK:
        raise PduError(f"answer of {len(reply)} bytes is shorter than an S7 ack header")
    proto, kind, _, got_ref, plen, dlen, eclass, ecode = struct.unpack(">BBHHHHBB", reply[:HEADER_ACK])
    if proto != 0x32:
        raise PduError(f"not an S7 PDU (protocol id 0x{proto:02X})")
    if kind not in (0x02, 0x03):
        raise PduError(f"PDU type 0x{kind:02X} is not an ack")
    if got_ref != ref:
        raise PduError(f"answer to job {got_ref}, expected {ref} (a stale or foreign reply)")
    if eclass or ecode:
        raise HeaderError(eclass << 8 | ecode)
    if HEADER_ACK + plen + dlen != len(reply):
        raise PduError(f"lengths in the header ({plen}+{dlen}) do not match the {len(reply)}-byte answer")
    if plen != 2 or reply[HEADER_ACK] != function:
        raise PduError(f"answer is not to function 0x{function:02X}")
    return reply[HEADER_ACK + 1], reply[HEADER_ACK + 2 :]


def parse_read(reply: bytes, ref: int, specs: list[Spec]) -> list[bytes | int]:
    """Per item, its bytes or its return code (an int) when the PLC refused that item."""
    count, data = _ack(reply, ref, FUNC_READ)
    if count != len(specs):
        raise PduError(f"answer holds {count} items, the job asked {len(specs)}")
    out: list[bytes | int] = []
    pos = 0
    for i, spec in enumerate(specs):
        if pos + ITEM_HEADER > len(data):
            raise PduError(f"answer ends before item {i}")
        code, ts, length = struct.unpack(">BBH", data[pos : pos + ITEM_HEADER])
        pos += ITEM_HEADER
        if code != OK:
            out.append(code)
            continue  # a refused item carries no data (and, where it is not the last, no fill)
        n = length if ts in (DATA_OCTET, 0x07) else (length + 7) // 8
        want = 1 if spec.bit is not None else spec.size
        if n != want or pos + n > len(data):
            raise PduError(f"item {i} holds {n} bytes, {want} were asked")
        out.append(bytes(data[pos : pos + n]))
        pos += n + (n % 2 if i < len(specs) - 1 else 0)
    if pos != len(data):
        raise PduError(f"{len(data) - pos} bytes left over after the last item")
    return out


def parse_write(reply: bytes, ref: int) -> int:
    """The item's return code (0xFF: written)."""
    count, data = _ack(reply, ref, FUNC_WRITE)
    if count != 1 or len(data) != 1:
        raise PduError("a write answer holds one return code")
    return data[0]


def item_reason(code: int) -> str:
    return f"item return code 0x{code:02X}: {ITEM_CODES.get(code, 'unknown')}"
