"""The `[[devices]]` entry of a Modbus device and its tags (pure: no pymodbus import).

One entry is one unit id, reached over TCP (`host`, `port` number) or over an RTU serial line
(`port` = the device path). Several entries with the same serial `port` share the line.
"""

from __future__ import annotations

import codecs
import math
from typing import Literal

from drivers.modbus.plan import BIT_TABLES, MAX_BITS, MAX_REGISTERS, Limits, Table
from edged.config import DeviceBase, Duration, TagBase, ValueKind, ValueType
from edged.protocols.modbus import DataType, Order, is_integer_type, register_count

Parity = Literal["N", "E", "O"]


class Tag(TagBase, kw_only=True):
    """One value in the device's register map. Addresses are 0-based protocol addresses (the
    "40001" of a manual is holding_register 0)."""

    address: int  # required
    table: Table = "holding_register"
    type: DataType | None = None  # default: bool for coils/discrete inputs and with `bit`, else uint16
    word_order: Order = "big"  # "little" = least significant register first (CDAB / DCBA)
    byte_order: Order = "big"  # "little" = the two bytes of each register swapped (BADC / DCBA)
    scale: float = 1.0  # engineering value = raw * scale + offset
    offset: float = 0.0
    bit: int | None = None  # a single bit of a register (or of an integer) read as bool
    length: int | None = None  # strings: characters (bytes), two per register
    encoding: str = "utf-8"  # strings
    interval: Duration | None = None  # defaults to the device's interval
    writable: bool = False  # allow Driver.write() on this tag (coils and holding registers only)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.address <= 65535:
            raise ValueError(f"address {self.address} is outside 0..65535 (0-based protocol address)")
        bits = self.table in BIT_TABLES
        if self.type is None:
            self.type = "bool" if bits or self.bit is not None else "uint16"
        if bits and self.type != "bool":
            raise ValueError(f"a {self.table} holds one bit: type must be bool, not {self.type}")
        if bits and self.bit is not None:
            raise ValueError(f"bit applies to registers, not to a {self.table}")
        if self.bit is not None:
            if self.type == "bool":
                width = 16
            elif is_integer_type(self.type):
                width = 16 * register_count(self.type)
            else:
                raise ValueError(f"bit needs type bool or an integer type, not {self.type}")
            if not 0 <= self.bit < width:
                raise ValueError(f"bit {self.bit} is outside 0..{width - 1}")
        if self.type == "string":
            if self.length is None or not 1 <= self.length <= 2 * MAX_REGISTERS:
                raise ValueError(f"a string needs length = 1..{2 * MAX_REGISTERS} (characters)")
            if self.word_order != "big":
                raise ValueError("word_order does not apply to strings; use byte_order to swap bytes")
            try:
                codecs.lookup(self.encoding)
            except LookupError:
                raise ValueError(f"unknown encoding {self.encoding!r}") from None
        elif self.length is not None:
            raise ValueError("length applies to strings only")
        if not (math.isfinite(self.scale) and self.scale != 0.0 and math.isfinite(self.offset)):
            raise ValueError("scale must be a non-zero number and offset a number")
        if (self.scale != 1.0 or self.offset != 0.0) and (self.type in ("bool", "string") or self.bit is not None):
            raise ValueError(f"scale/offset do not apply to a {self.type}")
        if self.address + self.size > 65536:
            raise ValueError(f"{self.type} at {self.address} runs past address 65535")
        if self.interval is not None and self.interval < 0.001:
            raise ValueError("interval must be at least 1ms")
        if self.writable and self.table not in ("coil", "holding_register"):
            raise ValueError(f"table {self.table} is read-only: writable needs a coil or holding_register")

    @property
    def dtype(self) -> DataType:
        assert self.type is not None  # set by __post_init__
        return self.type

    @property
    def size(self) -> int:
        """Registers (or bits) this tag occupies."""
        return 1 if self.table in BIT_TABLES else register_count(self.dtype, self.length)

    def value_kind(self) -> ValueKind:
        if self.table in ("coil", "discrete_input") or self.bit is not None or self.type == "bool":
            return "bool"
        return "string" if self.type == "string" else "number"

    def source_type(self) -> ValueType:
        """Integers stay integers of their register type unless scaled; floats are doubles."""
        kind = self.value_kind()
        if kind != "number":
            return kind
        if is_integer_type(self.dtype) and self.scale == 1.0 and self.offset == 0.0:
            return self.dtype  # type: ignore[return-value]  # an integer DataType is a ValueType
        return "double"

    def accepts_writes(self) -> bool:
        return self.writable


class Config(DeviceBase):
    """A Modbus TCP or RTU device (one unit id)."""

    host: str | None = None  # TCP: hostname or IP
    port: int | str | None = None  # TCP port number (default 502), or the serial device for RTU
    baudrate: int = 19200  # RTU line settings; every device on one port must agree
    parity: Parity = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    unit_id: int = 1
    timeout: Duration = Duration(1.0)  # per attempt
    retries: int = 1  # extra attempts after a timeout or a garbled answer
    interval: Duration = Duration(1.0)  # default poll interval of the tags
    max_gap: int = 10  # unused registers read to merge two requests into one
    max_gap_bits: int = 64
    max_registers: int = MAX_REGISTERS  # per request; lower it for devices that refuse 125
    max_bits: int = MAX_BITS
    max_failed_polls: int = 3  # consecutive polls without any answer before reconnecting
    tags: list[Tag] = []

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.host is not None:
            if not self.host:
                raise ValueError("host must not be empty")
            if self.port is None:
                self.port = 502
            if isinstance(self.port, str) or not 1 <= self.port <= 65535:
                raise ValueError("with host, port is the TCP port number (1..65535)")
            if not 0 <= self.unit_id <= 255:
                raise ValueError("unit_id must be 0..255")
        else:
            if not isinstance(self.port, str) or not self.port:
                raise ValueError("set host (Modbus TCP) or port = '/dev/ttyUSB0' (Modbus RTU)")
            if not 1 <= self.unit_id <= 247:
                raise ValueError("unit_id on a serial line must be 1..247")
            if not 300 <= self.baudrate <= 4_000_000:
                raise ValueError("baudrate must be between 300 and 4000000")
        if not 0.001 <= self.timeout <= 30:
            raise ValueError("timeout must be between 1ms and 30s")
        if not 0 <= self.retries <= 10:
            raise ValueError("retries must be 0..10")
        if self.interval < 0.001:
            raise ValueError("interval must be at least 1ms")
        if self.max_failed_polls < 1:
            raise ValueError("max_failed_polls must be at least 1")
        limits = self.limits  # validates max_* ranges
        for i, tag in enumerate(self.tags):
            if tag.size > limits.span(tag.table):
                raise ValueError(
                    f"tags[{i}] ({tag.name}): {tag.size} registers do not fit one request"
                    f" (max_registers = {limits.max_registers})"
                )

    def read_interval(self, tag: TagBase) -> float | None:
        own = tag.interval if isinstance(tag, Tag) else None
        return float(own if own is not None else self.interval)

    @property
    def limits(self) -> Limits:
        return Limits(self.max_registers, self.max_bits, self.max_gap, self.max_gap_bits)

    @property
    def is_tcp(self) -> bool:
        return self.host is not None

    @property
    def endpoint(self) -> str:
        """Where the device is, for messages: host:port or the serial port."""
        return f"{self.host}:{self.port}" if self.is_tcp else str(self.port)
