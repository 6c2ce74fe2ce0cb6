"""The `[[uplinks]]` entry of the Modbus server and its register map (pure: no pymodbus import).

Every address is checked at load: two entries (or an entry's status register or quality coil) on
the same unit, table and address are refused, naming both keys, so a SCADA never reads a register
that two tags fight over.
"""

from __future__ import annotations

import ipaddress
import math
from typing import Final, Literal

import msgspec

from edged.config import Base, ListenAddress, UplinkBase, parse_listen
from edged.protocols.modbus import Order, is_integer_type, register_count

Table = Literal["holding", "input", "coil", "discrete"]
MapType = Literal["bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"]
OnBad = Literal["keep", "sentinel"]
BIT_TABLES: Final = frozenset({"coil", "discrete"})
WRITABLE_TABLES: Final = frozenset({"holding", "coil"})
MAX_CONNECTIONS: Final = 1000


class MapEntry(Base):
    """One tag in the served map. Addresses are 0-based protocol addresses ("40001" = holding 0)."""

    tag: str  # device/tag
    address: int
    table: Table = "holding"
    type: MapType | None = None  # default: bool in coil/discrete, else float32
    word_order: Order = "big"  # "little": least significant register first (CDAB / DCBA)
    byte_order: Order = "big"  # "little": the two bytes of every register swapped (BADC / DCBA)
    scale: float = 1.0  # registers hold (value - offset) / scale; a write is value = raw * scale + offset
    offset: float = 0.0
    unit_id: int | None = None  # only on this unit id; default every one of `unit_ids`
    status_register: int | None = None  # a register holding the upper 16 bits of the OPC UA StatusCode
    status_table: Literal["holding", "input"] | None = None  # default: `table`, or input for a bit
    quality_coil: int | None = None  # a coil that is 1 while the value is Good
    on_bad: OnBad | None = None  # default: the uplink's `on_bad`
    sentinel: float | None = None  # raw register value under on_bad = "sentinel"; default per type

    def __post_init__(self) -> None:
        if "/" not in self.tag or not self.tag.strip():
            raise ValueError(f"tag {self.tag!r}: write the full path, device/tag")
        if self.type is None:
            self.type = "bool" if self.table in BIT_TABLES else "float32"
        if self.table in BIT_TABLES and self.type != "bool":
            raise ValueError(f"a {self.table} holds one bit: type must be bool, not {self.type}")
        for key, addr in (("address", self.address), ("status_register", self.status_register)):
            if addr is not None and not 0 <= addr <= 65535:
                raise ValueError(f"{key} {addr} is outside 0..65535 (0-based protocol address)")
        if self.quality_coil is not None and not 0 <= self.quality_coil <= 65535:
            raise ValueError(f"quality_coil {self.quality_coil} is outside 0..65535")
        if self.address + self.size > 65536:
            raise ValueError(f"a {self.type} at {self.address} runs past address 65535")
        if not (math.isfinite(self.scale) and self.scale != 0.0 and math.isfinite(self.offset)):
            raise ValueError("scale must be a non-zero number and offset a number")
        if self.type == "bool" and (self.scale != 1.0 or self.offset != 0.0):
            raise ValueError("scale/offset do not apply to a bool")
        if self.type == "bool" and (self.word_order, self.byte_order) != ("big", "big"):
            raise ValueError("word_order/byte_order do not apply to a bool")
        if self.unit_id is not None and not 0 <= self.unit_id <= 255:
            raise ValueError("unit_id must be 0..255")
        if self.status_table is not None and self.status_register is None:
            raise ValueError("status_table needs status_register")
        if self.sentinel is not None:
            if self.type == "bool":
                raise ValueError("a bool has no sentinel: under on_bad = 'sentinel' it reads 0")
            self.raw_sentinel()  # ValueError names the range

    @property
    def dtype(self) -> MapType:
        assert self.type is not None  # set by __post_init__
        return self.type

    @property
    def size(self) -> int:
        """Registers (or bits) the value occupies."""
        return 1 if self.dtype == "bool" else register_count(self.dtype)

    @property
    def status_in(self) -> Literal["holding", "input"]:
        if self.status_table is not None:
            return self.status_table
        return "input" if self.table in BIT_TABLES else self.table  # type: ignore[return-value]

    def raw_sentinel(self) -> int | float:
        """What the value's registers hold while the tag is Bad under on_bad = "sentinel": the raw
        (unscaled) value; by default NaN for floats, the most negative value for signed integers and
        the largest for unsigned ones (the "no value" codes PLCs use)."""
        t = self.dtype
        if self.sentinel is None:
            if t in ("float32", "float64"):
                return math.nan
            if t == "bool":
                return 0
            bits = 16 * register_count(t)
            return -(1 << (bits - 1)) if t.startswith("int") else (1 << bits) - 1
        if is_integer_type(t):
            bits = 16 * register_count(t)
            lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if t.startswith("int") else (0, (1 << bits) - 1)
            if self.sentinel != int(self.sentinel) or not lo <= self.sentinel <= hi:
                raise ValueError(f"sentinel {self.sentinel} is not a {t} (an integer {lo}..{hi})")
            return int(self.sentinel)
        return float(self.sentinel)


class Config(UplinkBase):
    """A Modbus TCP server for SCADA masters: the map's tags as registers and coils."""

    listen: ListenAddress = ListenAddress("127.0.0.1:502")
    unit_ids: list[int] = msgspec.field(default_factory=lambda: [1])  # answered; others get exception 0x0B
    max_connections: int = 16  # masters connected at once; one more is closed at once
    on_bad: OnBad = "keep"  # what a Bad tag's value registers hold: the last good value, or `sentinel`
    command_clients: list[str] = []  # IP addresses / networks whose writes reach the command gate
    map: list[MapEntry] = []
    # a server of current values: a new uplink starts at the newest samples, not the buffer's history
    start_from: Literal["earliest", "latest"] = "latest"

    def __post_init__(self) -> None:
        super().__post_init__()
        parse_listen(self.listen)
        if not self.unit_ids or len(set(self.unit_ids)) != len(self.unit_ids):
            raise ValueError("unit_ids must list each unit id once (at least one)")
        for uid in self.unit_ids:
            if not 0 <= uid <= 255:
                raise ValueError(f"unit_ids: {uid} is outside 0..255")
        if not 1 <= self.max_connections <= MAX_CONNECTIONS:
            raise ValueError(f"max_connections must be between 1 and {MAX_CONNECTIONS}")
        for i, net in enumerate(self.command_clients):
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(
                    f"command_clients[{i}]: {net!r} is not an IP address or network (10.0.0.5, 10.0.0.0/24)"
                ) from None
        if not self.map:
            raise ValueError("map is empty: add [[uplinks.map]] entries (tag, table, address, type)")
        self._check_addresses()
        if not self.tags:  # forward only what the map serves
            self.tags = sorted({m.tag for m in self.map})

    def units_of(self, entry: MapEntry) -> list[int]:
        return [entry.unit_id] if entry.unit_id is not None else list(self.unit_ids)

    def _check_addresses(self) -> None:
        """Each (unit, table, address) belongs to one thing: a value, a status register or a
        quality coil. The error names both keys."""
        owner: dict[tuple[int, str, int], str] = {}

        def claim(unit: int, table: str, first: int, count: int, key: str) -> None:
            for a in range(first, first + count):
                other = owner.setdefault((unit, table, a), key)
                if other != key:
                    raise ValueError(f"{key}: {table} {a} on unit {unit} is already used by {other}")

        for i, m in enumerate(self.map):
            if m.unit_id is not None and m.unit_id not in self.unit_ids:
                raise ValueError(f"map[{i}].unit_id: {m.unit_id} is not one of unit_ids {self.unit_ids}")
            for unit in self.units_of(m):
                claim(unit, m.table, m.address, m.size, f"map[{i}] ({m.tag}).address")
                if m.status_register is not None:
                    claim(unit, m.status_in, m.status_register, 1, f"map[{i}] ({m.tag}).status_register")
                if m.quality_coil is not None:
                    claim(unit, "coil", m.quality_coil, 1, f"map[{i}] ({m.tag}).quality_coil")

    def on_bad_of(self, entry: MapEntry) -> OnBad:
        return entry.on_bad or self.on_bad
