"""The OPC UA uplink's UNECE unit table and the UnitId packing, against golden values taken from
the specification: OPC 10000-8 5.6.3 (the formula) and the OPC Foundation's UNECE_to_OPCUA.csv
(UA-Nodeset/Schema, its UNECECode/UnitId columns), and the tag value types from the config."""

from __future__ import annotations

import pytest

from edged import config as edged_config
from uplink.opcua import units

# (edged spelling, UNECE common code, UnitId) rows of UNECE_to_OPCUA.csv; "%" -> P1 from Rec 20
# (not in the CSV), its UnitId computed by hand: 'P' = 0x50, '1' = 0x31 -> 0x5031 = 20529.
GOLDEN = [
    ("degC", "CEL", 4408652),
    ("bar", "BAR", 4342098),
    ("%", "P1", 20529),
    ("m3/h", "MQH", 5067080),
    ("t/h", "E18", 4534584),
    ("kPa", "KPA", 4935745),
    ("mA", "4K", 13387),
    ("K", "KEL", 4932940),
    ("degF", "FAH", 4604232),
    ("mbar", "MBR", 5063250),
    ("Pa", "PAL", 5259596),
    ("MPa", "MPA", 5066817),
    ("psi", "PS", 20563),
    ("l/min", "L2", 19506),
    ("kg/h", "E93", 4536627),
    ("m", "MTR", 5067858),
    ("mm", "MMT", 5066068),
    ("kWh", "KWH", 4937544),
    ("kW", "KWT", 4937556),
    ("MW", "MAW", 5062999),
    ("A", "AMP", 4279632),
    ("V", "VLT", 5655636),
    ("mV", "2Z", 12890),
    ("Hz", "HTZ", 4740186),
    ("rpm", "RPM", 5394509),
    ("s", "SEC", 5457219),
    ("h", "HUR", 4740434),
    ("ohm", "OHM", 5195853),
    ("mm/s", "C16", 4403510),
    ("MJ", "3B", 13122),
    ("pH", "Q30", 5321520),
]


def spec_unit_id(code: str) -> int:
    """OPC 10000-8 5.6.3, written out: for up to three characters, UnitId = c0 << 16 | c1 << 8 | c2
    for three, c0 << 8 | c1 for two (the ASCII codes, the last character lowest)."""
    chars = [ord(c) for c in code]
    total = 0
    for position, value in enumerate(reversed(chars)):
        total += value * 256**position
    return total


@pytest.mark.parametrize(("unit", "code", "unit_id"), GOLDEN)
def test_unece_codes_and_unit_ids_match_the_spec(unit: str, code: str, unit_id: int) -> None:
    found = units.lookup(unit)
    assert found is not None and found.code == code
    assert units.unit_id(code) == unit_id
    assert spec_unit_id(code) == unit_id


def test_every_code_in_the_table_packs_like_the_spec_formula() -> None:
    for spelling, unit in units.UNITS.items():
        assert 1 <= len(unit.code) <= 3 and unit.code.isascii(), spelling
        assert units.unit_id(unit.code) == spec_unit_id(unit.code) == int.from_bytes(unit.code.encode(), "big")
    with pytest.raises(ValueError, match="1 to 3"):
        units.unit_id("ABCD")  # four characters do not fit the packing


def test_unknown_units_have_none() -> None:
    assert units.lookup("%span") is None
    assert units.lookup("furlongs per fortnight") is None


def tags(raw: list[dict[str, object]], device: dict[str, object]) -> list[edged_config.TagBase]:
    cfg = edged_config.parse({"gateway": {"id": "gw"}, "devices": [{"name": "d", **device, "tags": raw}]})
    return list(cfg.devices[0].tags)


def test_value_types_from_the_config() -> None:
    modbus = {"type": "modbus", "host": "127.0.0.1", "interval": "500ms"}
    got = tags(
        [
            {"name": "a", "address": 0, "type": "int16"},
            {"name": "b", "address": 1, "type": "uint32"},
            {"name": "c", "address": 3, "type": "int16", "scale": 0.1},  # scaled: a float
            {"name": "d", "address": 4, "type": "float32"},
            {"name": "e", "address": 6, "table": "coil"},
            {"name": "f", "address": 7, "type": "string", "length": 4},
            {"name": "g", "address": 9, "type": "uint16", "bit": 3},
            {"name": "h", "address": 10, "type": "int64", "interval": "2s"},
            {"name": "i", "address": 14},  # uint16 by default
            {"name": "j", "address": 15, "type": "int32", "calibration": {"kind": "linear", "offset": 1.5}},
        ],
        modbus,
    )
    assert [t.value_type() for t in got] == [
        "int16", "uint32", "double", "double", "bool", "string", "bool", "int64", "uint16", "double",
    ]  # fmt: skip
    dev = edged_config.parse({"gateway": {"id": "gw"}, "devices": [{"name": "d", **modbus, "tags": []}]}).devices[0]
    assert dev.read_interval(got[0]) == 0.5 and dev.read_interval(got[7]) == 2.0
    sim = tags([{"name": "n", "signal": "counter"}, {"name": "b", "signal": "bool"}, {"name": "s"}], {"type": "sim"})
    assert [t.value_type() for t in sim] == ["int64", "bool", "double"]
    opcua = tags([{"name": "x", "node": "ns=2;s=X"}], {"type": "opcua", "endpoint": "opc.tcp://h:4840/",
                                                          "security_policy": "None"})  # fmt: skip
    assert opcua[0].value_type() is None  # only the server knows: BaseDataType
