"""The register image the server answers from: every map entry's registers, status register and
quality coil, per unit id and table, kept current by the uplink's `send`. Pure (no pymodbus), so
every request a master can make is tested without a network.

A value slot is shared by every unit it is served on. Reads and writes either cover mapped
addresses only or fail as a whole with a Modbus exception code, as a device does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final, Literal

from edged.model import Sample, Severity, Status, Value, severity
from edged.protocols import modbus as codec
from uplink.modbus_server.config import BIT_TABLES, Config, MapEntry, OnBad

# Modbus exception codes (Modbus Application Protocol V1.1b3, 7)
ILLEGAL_FUNCTION: Final = 0x01
ILLEGAL_ADDRESS: Final = 0x02
ILLEGAL_VALUE: Final = 0x03
DEVICE_FAILURE: Final = 0x04
DEVICE_BUSY: Final = 0x06
GATEWAY_NO_RESPONSE: Final = 0x0B

WAITING: Final = 0x80320000  # BadWaitingForInitialData: no sample yet
OUT_OF_RANGE: Final = 0x803C0000  # BadOutOfRange: the value does not fit the register type
TYPE_MISMATCH: Final = 0x80740000  # BadTypeMismatch: a string, or a number for a bool
Role = Literal["value", "status", "quality"]


@dataclass(slots=True)
class Slot:
    """One map entry's served state."""

    index: int  # in config.map
    entry: MapEntry
    on_bad: OnBad
    words: list[int]  # the value's registers (a bit: [0] or [1])
    status: int = WAITING  # the full OPC UA StatusCode; the status register holds its upper 16 bits
    ts_ns: int = -1  # source time of the sample shown; never moves back
    warned: bool = False  # a value that did not fit was logged once
    commandable: bool = False  # writes go to the command gate

    @property
    def good(self) -> bool:
        return severity(self.status) == Severity.GOOD


@dataclass(slots=True)
class Image:
    """Cells by (unit, table) -> address -> (slot, role, word index)."""

    config: Config
    slots: list[Slot] = field(default_factory=list)
    by_tag: dict[str, list[Slot]] = field(default_factory=dict)
    cells: dict[tuple[int, str], dict[int, tuple[Slot, Role, int]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        c = self.config
        for i, m in enumerate(c.map):
            slot = Slot(i, m, c.on_bad_of(m), [0] * m.size)
            slot.words = bad_words(slot)
            self.slots.append(slot)
            self.by_tag.setdefault(m.tag, []).append(slot)
            for unit in c.units_of(m):
                for k in range(m.size):
                    self._cell(unit, m.table)[m.address + k] = (slot, "value", k)
                if m.status_register is not None:
                    self._cell(unit, m.status_in)[m.status_register] = (slot, "status", 0)
                if m.quality_coil is not None:
                    self._cell(unit, "coil")[m.quality_coil] = (slot, "quality", 0)

    def _cell(self, unit: int, table: str) -> dict[int, tuple[Slot, Role, int]]:
        return self.cells.setdefault((unit, table), {})

    # ------------------------------------------------------------------ data path

    def apply(self, s: Sample) -> tuple[int, list[str]]:
        """Show a sample in every slot of its tag: (slots skipped as older, problems to log once)."""
        skipped, problems = 0, []
        for slot in self.by_tag.get(s.tag, ()):
            if s.ts_ns < slot.ts_ns:
                skipped += 1
                continue
            problem = show(slot, s.value, s.status)
            slot.ts_ns = s.ts_ns
            if problem and not slot.warned:
                slot.warned = True
                problems.append(f"map[{slot.index}] ({s.tag}): {problem}")
        return skipped, problems

    # ------------------------------------------------------------------ requests

    def read(self, unit: int, table: str, address: int, count: int) -> list[int] | list[bool] | int:
        """The registers (or bits) address..address+count-1, or the exception code: 02 when any of
        them is not mapped."""
        cells = self.cells.get((unit, table))
        if cells is None or count < 1:
            return ILLEGAL_ADDRESS
        bits = table in BIT_TABLES
        out: list[int] = []
        for a in range(address, address + count):
            cell = cells.get(a)
            if cell is None:
                return ILLEGAL_ADDRESS
            slot, role, k = cell
            if role == "value":
                out.append(slot.words[k])
            elif role == "status":
                out.append(slot.status >> 16)
            else:
                out.append(1 if slot.good else 0)
        return [bool(v) for v in out] if bits else out

    def plan_write(self, unit: int, table: str, address: int, count: int) -> list[Slot] | int:
        """The slots a write of address..address+count-1 sets, in address order, or the exception
        code refusing it as a whole: 02 when an address is not mapped or a multi-register value is
        covered only in part; 01 when it covers a status register, a quality coil or a value whose
        tag does not take commands from this uplink."""
        cells = self.cells.get((unit, table))
        if cells is None or count < 1 or table not in ("holding", "coil"):
            return ILLEGAL_ADDRESS
        out: list[Slot] = []
        a, end = address, address + count
        while a < end:
            cell = cells.get(a)
            if cell is None:
                return ILLEGAL_ADDRESS
            slot, role, k = cell
            if role != "value":
                return ILLEGAL_FUNCTION
            size = slot.entry.size
            if k != 0 or a + size > end:
                return ILLEGAL_ADDRESS  # one register of a float32: never half a value
            if not slot.commandable:
                return ILLEGAL_FUNCTION
            out.append(slot)
            a += size
        return out


def written_value(slot: Slot, words: list[int] | list[bool]) -> Value:
    """The engineering value a master wrote into a slot's registers (raises codec.CodecError)."""
    m = slot.entry
    if m.table in BIT_TABLES:
        return bool(words[0])
    regs = [int(w) for w in words]
    raw = codec.decode(regs, m.dtype, word_order=m.word_order, byte_order=m.byte_order)
    return codec.to_engineering(raw, m.scale, m.offset)


def encode(entry: MapEntry, value: Value) -> list[int]:
    """The registers (a bit: [0/1]) of an engineering value; raises codec.CodecError when it does
    not fit the type. NaN and infinities travel as themselves in a float; a bool is 0 or 1."""
    t = entry.dtype
    if isinstance(value, str) or value is None:
        raise codec.CodecError(f"a {type(value).__name__} value cannot be served as {t}")
    if t == "bool":
        if isinstance(value, bool) or value in (0, 1):
            return [1 if value else 0]
        raise codec.CodecError(f"{value!r} is not a boolean (0 or 1)")
    number: int | float = int(value) if isinstance(value, bool) else value
    if isinstance(number, float) and not math.isfinite(number) and t in ("float32", "float64"):
        raw: int | float = number
    else:
        raw = codec.to_raw(number, t, entry.scale, entry.offset)
    return codec.encode(raw, t, word_order=entry.word_order, byte_order=entry.byte_order)


def bad_words(slot: Slot) -> list[int]:
    """What a Bad (or not yet seen) tag's registers hold: the last value kept, or the sentinel."""
    m = slot.entry
    if slot.on_bad == "keep":
        return slot.words
    if m.dtype == "bool":
        return [0]
    return codec.encode(m.raw_sentinel(), m.dtype, word_order=m.word_order, byte_order=m.byte_order)


def show(slot: Slot, value: Value, status: int) -> str | None:
    """Put one value and status into a slot; the problem when the value cannot be served (then
    the slot is Bad: BadOutOfRange or BadTypeMismatch)."""
    if value is None or severity(status) == Severity.BAD:
        slot.status = status if severity(status) == Severity.BAD else Status.BAD
        slot.words = bad_words(slot)
        return None
    try:
        slot.words = encode(slot.entry, value)
    except codec.CodecError as exc:
        slot.status = TYPE_MISMATCH if isinstance(value, str) or slot.entry.dtype == "bool" else OUT_OF_RANGE
        slot.words = bad_words(slot)
        return f"{value!r} cannot be served as {slot.entry.dtype}: {exc} (shown as Bad)"
    slot.status = status
    return None
