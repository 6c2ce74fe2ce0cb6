"""The `[[devices]]` entry of a Siemens S7 PLC and its tags (pure: no snap7 import).

Tags are addressed the way STEP 7 absolute addresses are: an area (DB, M, I, Q), the DB number for
a DB, the byte offset and, for a BOOL, the bit: `DB10.DBX4.2` is area "DB", db 10, address 4, bit 2;
`MW20` is area "M", address 20, type "int" or "word"; `Q1.7` is area "Q", address 1, bit 7.
"""

from __future__ import annotations

import math
from typing import Literal

from drivers.s7.codec import INTEGER_TYPES, DataType, check_encoding, size
from drivers.s7.plan import MAX_ITEMS, MAX_PDU, MIN_PDU, Limits
from edged.config import DeviceBase, Duration, TagBase, ValueKind, ValueType

Area = Literal["DB", "M", "I", "Q"]
ConnectionType = Literal["pg", "op", "basic"]
CONNECTION_TYPES: dict[str, int] = {"pg": 1, "op": 2, "basic": 3}
MAX_ADDRESS = (1 << 21) - 1  # the 3-byte bit address of an S7 item: bytes 0..2097151

_TEXT = frozenset({"char", "string", "wstring", "date", "tod", "dt", "dtl"})
_SOURCE_TYPES: dict[str, ValueType] = {
    "sint": "int16", "usint": "uint16", "byte": "uint16", "int": "int16", "uint": "uint16", "word": "uint16",
    "dint": "int32", "time": "int32", "udint": "uint32", "dword": "uint32",
    "lint": "int64", "ulint": "uint64", "lword": "uint64",
}  # fmt: skip


class Tag(TagBase, kw_only=True):
    """One value in the PLC's memory."""

    area: Area = "DB"
    db: int | None = None  # the DB number, for area "DB" only
    address: int  # byte offset in the area (or DB); required
    type: DataType  # required: bool, int, real, string, dt ...
    bit: int | None = None  # BOOL: the bit of the byte, 0..7 (default 0)
    length: int | None = None  # STRING[n] / WSTRING[n]: n, the declared length (default 254)
    encoding: str = "latin-1"  # STRING and CHAR bytes
    scale: float = 1.0  # numbers: engineering value = raw * scale + offset
    offset: float = 0.0
    interval: Duration | None = None  # defaults to the device's interval
    writable: bool = False  # allow Driver.write() (areas DB, M and Q)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.area == "DB":
            if self.db is None or not 1 <= self.db <= 65535:
                raise ValueError("a DB tag needs db = 1..65535 (the DB number)")
        elif self.db is not None:
            raise ValueError(f"db applies to area DB, not {self.area}")
        if not 0 <= self.address <= MAX_ADDRESS:
            raise ValueError(f"address {self.address} is outside 0..{MAX_ADDRESS} (byte offset)")
        if self.type == "bool":
            if self.bit is None:
                self.bit = 0
            if not 0 <= self.bit <= 7:
                raise ValueError(f"bit {self.bit} is outside 0..7")
        elif self.bit is not None:
            raise ValueError(f"bit applies to type bool, not {self.type}")
        if self.type in ("string", "wstring"):
            if self.length is None:
                self.length = 254
            limit = 254 if self.type == "string" else 16382
            if not 1 <= self.length <= limit:
                raise ValueError(f"length of a {self.type} must be 1..{limit} (the declared {self.type.upper()}[n])")
        elif self.length is not None:
            raise ValueError("length applies to string and wstring only")
        check_encoding(self.encoding)
        if not (math.isfinite(self.scale) and self.scale != 0.0 and math.isfinite(self.offset)):
            raise ValueError("scale must be a non-zero number and offset a number")
        if (self.scale, self.offset) != (1.0, 0.0) and self.value_kind() != "number":
            raise ValueError(f"scale/offset do not apply to a {self.type}")
        if self.address + self.size - 1 > MAX_ADDRESS:
            raise ValueError(f"{self.type} at {self.address} runs past byte {MAX_ADDRESS}")
        if self.interval is not None and self.interval < 0.001:
            raise ValueError("interval must be at least 1ms")
        if self.writable and self.area == "I":
            raise ValueError("area I (inputs) is read-only: the PLC overwrites it every cycle")

    @property
    def size(self) -> int:
        """Bytes read for this tag (a BOOL reads its byte)."""
        return size(self.type, self.length)

    def value_kind(self) -> ValueKind:
        if self.type == "bool":
            return "bool"
        return "string" if self.type in _TEXT else "number"

    def source_type(self) -> ValueType:
        kind = self.value_kind()
        if kind != "number":
            return kind
        if self.type in INTEGER_TYPES | {"time"} and (self.scale, self.offset) == (1.0, 0.0):
            return _SOURCE_TYPES[self.type]
        return "double"

    def accepts_writes(self) -> bool:
        return self.writable


class Config(DeviceBase, kw_only=True):
    """An S7-300/400/1200/1500 CPU reached over ISO-on-TCP (RFC 1006)."""

    host: str  # required
    port: int = 102
    rack: int = 0
    slot: int = 1  # S7-1200/1500: 1 (or 0); S7-300: 2; S7-400: as configured in HW Config
    connection_type: ConnectionType = "pg"
    pdu_size: int = 480  # requested; the CPU answers with what it supports (240 .. 960)
    timeout: Duration = Duration(2.0)  # per job
    interval: Duration = Duration(1.0)  # default poll interval of the tags
    max_gap: int = 16  # unused bytes read to merge two neighbouring tags into one item
    max_items: int = MAX_ITEMS  # items per read job
    tags: list[Tag] = []

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.host:
            raise ValueError("host must not be empty")
        if not 1 <= self.port <= 65535:
            raise ValueError("port must be 1..65535")
        if not 0 <= self.rack <= 7:
            raise ValueError("rack must be 0..7")
        if not 0 <= self.slot <= 31:
            raise ValueError("slot must be 0..31")
        if not MIN_PDU <= self.pdu_size <= MAX_PDU:
            raise ValueError(f"pdu_size must be {MIN_PDU}..{MAX_PDU}")
        if not 0.01 <= self.timeout <= 60:
            raise ValueError("timeout must be between 10ms and 60s")
        if self.interval < 0.001:
            raise ValueError("interval must be at least 1ms")
        if not 0 <= self.max_gap <= 1024:
            raise ValueError("max_gap must be 0..1024 bytes")
        if not 1 <= self.max_items <= MAX_ITEMS:
            raise ValueError(f"max_items must be 1..{MAX_ITEMS}")
        room = Limits(self.pdu_size).max_range  # one item of one answer; checked again against the CPU's PDU
        for i, tag in enumerate(self.tags):
            if tag.size > room:
                raise ValueError(
                    f"tags[{i}] ({tag.name}): {tag.size} bytes do not fit one answer of a {self.pdu_size}-byte PDU"
                    f" ({room} bytes): use a shorter length or a larger pdu_size"
                )

    def read_interval(self, tag: TagBase) -> float | None:
        own = tag.interval if isinstance(tag, Tag) else None
        return float(own if own is not None else self.interval)

    def limits(self, pdu: int) -> Limits:
        """The planner's limits for the PDU size the CPU negotiated."""
        return Limits(pdu, self.max_items, self.max_gap)

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port} rack {self.rack} slot {self.slot}"
