"""Modbus device/tag configuration: defaults, the shipped sample, and errors a plant engineer can act on."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from drivers.modbus import Config
from edged.config import parse
from edged.errors import ConfigError

SAMPLE = Path(__file__).parents[2] / "drivers" / "modbus" / "sample.toml"


def load(dev: dict[str, Any]) -> Config:
    cfg = parse({"gateway": {"id": "gw", "data_dir": "/tmp"}, "devices": [{"name": "plc", "type": "modbus", **dev}]})
    out = cfg.devices[0]
    assert isinstance(out, Config)
    return out


def test_sample_toml_is_valid() -> None:
    raw = tomllib.loads(SAMPLE.read_text())
    cfg = parse({"gateway": {"id": "gw", "data_dir": "/tmp"}, **raw}, file=str(SAMPLE))
    devices = [d for d in cfg.devices if isinstance(d, Config)]
    assert [d.is_tcp for d in devices] == [True, False, False]
    assert devices[1].port == devices[2].port  # two unit ids on one RTU line
    assert {d.unit_id for d in devices[1:]} == {1, 7}


def test_defaults() -> None:
    dev = load(
        {"host": "10.0.0.5", "tags": [{"name": "a", "address": 3}, {"name": "c", "address": 1, "table": "coil"}]}
    )
    assert (dev.port, dev.unit_id, float(dev.timeout), dev.retries) == (502, 1, 1.0, 1)
    assert dev.endpoint == "10.0.0.5:502"
    assert [t.dtype for t in dev.tags] == ["uint16", "bool"]
    assert dev.limits.max_registers == 125
    bit = load({"host": "h", "tags": [{"name": "b", "address": 3, "bit": 7}]}).tags[0]
    assert bit.dtype == "bool"
    assert bit.size == 1
    text = load({"host": "h", "tags": [{"name": "s", "address": 0, "type": "string", "length": 9}]}).tags[0]
    assert text.size == 5


@pytest.mark.parametrize(
    ("dev", "where", "reason"),
    [
        ({"tags": []}, "devices[0] (plc)", "set host (Modbus TCP) or port"),
        ({"host": "h", "port": "/dev/ttyS0"}, "devices[0] (plc)", "port is the TCP port number"),
        ({"port": "/dev/ttyS0", "unit_id": 0}, "devices[0] (plc)", "1..247"),
        ({"host": "h", "timeout": "1m"}, "devices[0] (plc)", "timeout must be between"),
        ({"host": "h", "max_registers": 200}, "devices[0] (plc)", "max_registers must be between 1 and 125"),
        ({"host": "h", "tags": [{"name": "a"}]}, "tags[0]", "missing required key `address`"),
        ({"host": "h", "tags": [{"name": "a", "address": 65536}]}, "tags[0]", "outside 0..65535"),
        ({"host": "h", "tags": [{"name": "a", "address": 65535, "type": "float32"}]}, "tags[0]", "runs past"),
        ({"host": "h", "tags": [{"name": "a", "address": 0, "table": "coil", "type": "uint16"}]}, "tags[0]", "bool"),
        ({"host": "h", "tags": [{"name": "a", "address": 0, "type": "float32", "bit": 1}]}, "tags[0]", "integer type"),
        ({"host": "h", "tags": [{"name": "a", "address": 0, "bit": 16}]}, "tags[0]", "outside 0..15"),
        ({"host": "h", "tags": [{"name": "a", "address": 0, "type": "string"}]}, "tags[0]", "needs length"),
        ({"host": "h", "tags": [{"name": "a", "address": 0, "length": 4}]}, "tags[0]", "strings only"),
        ({"host": "h", "tags": [{"name": "a", "address": 0, "scale": 0.0}]}, "tags[0]", "non-zero"),
        ({"host": "h", "tags": [{"name": "a", "address": 0, "bit": 1, "scale": 2.0}]}, "tags[0]", "do not apply"),
        (
            {"host": "h", "tags": [{"name": "a", "address": 0, "table": "input_register", "writable": True}]},
            "tags[0]",
            "read-only",
        ),
        ({"host": "h", "tags": [{"name": "a", "address": 0, "table": "holding"}]}, "tags[0].table", "Invalid enum"),
        (
            {"host": "h", "max_registers": 10, "tags": [{"name": "s", "address": 0, "type": "string", "length": 40}]},
            "devices[0] (plc)",
            "20 registers do not fit one request",
        ),
    ],
)
def test_errors_name_the_entry_and_the_reason(dev: dict[str, Any], where: str, reason: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(dev)
    assert where in str(err.value)
    assert reason in str(err.value)
