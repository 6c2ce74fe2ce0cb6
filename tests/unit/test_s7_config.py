"""drivers/s7 config: every refusal names the key and says why; defaults and types as documented."""

from __future__ import annotations

from typing import Any

import pytest

from drivers.s7 import Config
from edged.config import parse
from edged.errors import ConfigError


def load(tags: list[dict[str, Any]], **kw: Any) -> Config:
    dev = {"name": "plc", "type": "s7", "host": "10.0.0.5", "tags": tags} | kw
    cfg = parse({"gateway": {"id": "gw", "data_dir": "/tmp"}, "devices": [dev]}).devices[0]
    assert isinstance(cfg, Config)
    return cfg


def test_defaults_and_value_types() -> None:
    cfg = load(
        [
            {"name": "flag", "area": "M", "address": 3, "type": "bool"},
            {"name": "text", "db": 1, "address": 0, "type": "string"},
            {"name": "count", "db": 1, "address": 256, "type": "dint"},
            {"name": "scaled", "db": 1, "address": 260, "type": "int", "scale": 0.1},
            {"name": "stamp", "db": 1, "address": 262, "type": "dtl"},
        ]
    )
    assert (cfg.port, cfg.rack, cfg.slot, cfg.connection_type, cfg.pdu_size) == (102, 0, 1, "pg", 480)
    flag, text, count, scaled, stamp = cfg.tags
    assert (flag.bit, flag.size, flag.value_type()) == (0, 1, "bool")
    assert (text.length, text.size, text.value_type()) == (254, 256, "string")
    assert (count.value_type(), scaled.value_type(), stamp.value_type()) == ("int32", "double", "string")
    assert cfg.read_interval(count) == 1.0


@pytest.mark.parametrize(
    ("tag", "reason"),
    [
        ({"name": "x", "address": 0, "type": "int"}, "needs db = 1..65535"),
        ({"name": "x", "area": "M", "db": 1, "address": 0, "type": "int"}, "db applies to area DB"),
        ({"name": "x", "db": 1, "address": 0, "type": "int", "bit": 1}, "bit applies to type bool"),
        ({"name": "x", "db": 1, "address": 0, "type": "bool", "bit": 8}, "outside 0..7"),
        ({"name": "x", "db": 1, "address": -1, "type": "int"}, "outside 0..2097151"),
        ({"name": "x", "db": 1, "address": 0, "type": "string", "length": 255}, "1..254"),
        ({"name": "x", "db": 1, "address": 0, "type": "real", "length": 4}, "length applies to string"),
        ({"name": "x", "area": "I", "address": 0, "type": "bool", "writable": True}, "read-only"),
        ({"name": "x", "db": 1, "address": 0, "type": "bool", "scale": 2.0}, "do not apply to a bool"),
        ({"name": "x", "db": 1, "address": 0, "type": "string", "encoding": "klingon"}, "unknown encoding"),
        ({"name": "x", "db": 1, "address": 0, "type": "float"}, "Invalid enum value 'float'"),
        ({"name": "x", "db": 1, "address": 0}, "missing required key `type`"),
        ({"name": "x", "area": "T", "address": 0, "type": "int"}, "Invalid enum value 'T'"),
    ],
)
def test_bad_tags(tag: dict[str, Any], reason: str) -> None:
    with pytest.raises(ConfigError, match="devices\\[0\\] \\(plc\\)\\.tags\\[0\\]") as exc:
        load([tag])
    assert reason in exc.value.reason


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"pdu_size": 100}, "pdu_size must be 240..960"),
        ({"slot": 32}, "slot must be 0..31"),
        ({"rack": 8}, "rack must be 0..7"),
        ({"max_items": 21}, "max_items must be 1..20"),
        ({"timeout": "1ms"}, "timeout"),
        ({"connection_type": "hmi"}, "Invalid enum value"),
        ({"pdu_size": 240, "tags": [{"name": "s", "db": 1, "address": 0, "type": "string"}]}, "use a shorter length"),
    ],
)
def test_bad_device_settings(kw: dict[str, Any], reason: str) -> None:
    tags = kw.pop("tags", [])
    with pytest.raises(ConfigError) as exc:
        load(tags, **kw)
    assert reason in exc.value.reason
