"""A master's request to the modbus_server uplink, after pymodbus parsed it: any unit id, function
code, address, count and register values against a map of every type and order. The image answers
values of the right length or an exception code, plans a write of whole values only, and decodes
any registers into a value or a CodecError (the gate then refuses it, exception 03)."""

from __future__ import annotations

import msgspec

from edged.protocols.modbus import CodecError
from uplink.modbus_server._pymodbus import TABLES
from uplink.modbus_server.config import Config
from uplink.modbus_server.image import Image, written_value

ACCEPTS = (CodecError,)
_TYPES = ("bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64")


def _entry(i: int, t: str, o: int) -> dict[str, object]:
    order = ("big", "little")[o and t != "bool"]
    return {
        "tag": f"d/{t}{o}", "address": 8 * i + 4 * o, "type": t, "word_order": order, "byte_order": order,
        "scale": 1.0 if t == "bool" else 0.5, "status_register": 1000 + 2 * i + o,
    }  # fmt: skip


_MAP = [_entry(i, t, o) for i, t in enumerate(_TYPES) for o in (0, 1)]
_MAP.append({"tag": "d/c", "table": "coil", "address": 3, "quality_coil": 4})
_IMAGE = Image(msgspec.convert({"name": "f", "type": "modbus_server", "unit_ids": [1, 2], "map": _MAP}, Config))
for _slot in _IMAGE.slots:
    _slot.commandable = True
_CODES = (*TABLES, 0, 7, 99)


def target(data: bytes) -> None:
    if len(data) < 6:
        return
    unit, fc = data[0] % 4, _CODES[data[1] % len(_CODES)]
    address = int.from_bytes(data[2:4], "big") % 1100
    count = data[4] % 130
    body = data[6:]
    values = [int.from_bytes(body[i : i + 2], "big") for i in range(0, len(body) - 1, 2)]
    table = TABLES.get(fc, "")
    got = _IMAGE.read(unit, table, address, count)
    assert isinstance(got, int) or len(got) == count
    plan = _IMAGE.plan_write(unit, table, address, count)
    if isinstance(plan, int):
        assert plan in (1, 2)
        return
    assert sum(s.entry.size for s in plan) == count
    offset = 0
    for slot in plan:
        regs = (values + [0] * count)[offset : offset + slot.entry.size]
        offset += slot.entry.size
        written_value(slot, regs)


def seeds() -> list[bytes]:
    return [bytes([1, 3, 0, 0, 8, 0]) + bytes(16), bytes([1, 16, 0, 8, 2, 0]) + bytes.fromhex("41c80000")]
