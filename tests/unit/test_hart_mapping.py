"""HART driver pure parts: command planning, status-bit mapping, config validation."""

from __future__ import annotations

from typing import Any

import pytest

from drivers.hart import plan_commands, status_bits_quality
from edged.config import parse
from edged.errors import ConfigError
from edged.model import Status


@pytest.mark.parametrize(
    ("variables", "commands"),
    [
        (["pv"], (1,)),
        (["loop_current"], (2,)),
        (["percent_range"], (2,)),
        (["pv", "percent_range"], (2, 1)),
        (["pv", "loop_current"], (3,)),
        (["sv"], (3,)),
        (["qv", "percent_range"], (3, 2)),
        (["pv", "sv", "tv", "qv", "loop_current", "percent_range"], (3, 2)),
        ([], ()),
    ],
)
def test_fewest_commands(variables: list[Any], commands: tuple[int, ...]) -> None:
    assert plan_commands(variables) == commands


@pytest.mark.parametrize(
    ("variable", "status_byte", "expected"),
    [
        ("pv", 0x00, Status.GOOD),
        ("pv", 0x80, Status.BAD_DEVICE_FAILURE),
        ("loop_current", 0x80 | 0x08, Status.BAD_DEVICE_FAILURE),
        ("pv", 0x01, Status.UNCERTAIN_ENGINEERING_UNITS_EXCEEDED),
        ("percent_range", 0x01, Status.UNCERTAIN_ENGINEERING_UNITS_EXCEEDED),
        ("sv", 0x01, Status.GOOD),
        ("sv", 0x02, Status.UNCERTAIN_ENGINEERING_UNITS_EXCEEDED),
        ("pv", 0x02, Status.GOOD),
        ("loop_current", 0x08, Status.UNCERTAIN),
        ("pv", 0x08, Status.GOOD),
        ("loop_current", 0x04, Status.UNCERTAIN_ENGINEERING_UNITS_EXCEEDED),
        ("pv", 0x40 | 0x20 | 0x10, Status.GOOD),  # config changed, cold start, more status: informational
    ],
)
def test_status_bits(variable: Any, status_byte: int, expected: Status) -> None:
    assert status_bits_quality(variable, status_byte) == expected


def device(**kw: Any) -> dict[str, Any]:
    return {"name": "pt1", "type": "hart", "port": "/dev/ttyUSB0", "tags": [{"name": "p"}], **kw}


def test_defaults() -> None:
    dev = parse({"devices": [device()]}).devices[0]
    assert dev.transport == "serial" and dev.baudrate == 1200 and dev.preambles == 5
    assert dev.polling_address == 0 and dev.primary_master and not dev.burst
    assert dev.tags[0].variable == "pv"
    hip = parse({"devices": [device(transport="hartip", host="10.0.0.5", port=None)]}).devices[0]
    assert hip.port == 5094 and hip.endpoint == "10.0.0.5:5094"


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"port": None}, "needs port"),
        ({"host": "x"}, "host applies to transport = 'hartip'"),
        ({"transport": "hartip", "port": 5094}, "needs host"),
        ({"transport": "hartip", "host": "h", "port": "/dev/ttyS0"}, "TCP port number"),
        ({"polling_address": 64}, "outside 0..63"),
        ({"unique_id": "12"}, "5 bytes"),
        ({"unique_id": "FF1A123456"}, "at most 3F"),
        ({"preambles": 1}, "preambles"),
        ({"timeout": "5ms"}, "timeout"),
        ({"retries": 11}, "retries"),
        ({"baudrate": 50}, "baudrate"),
        ({"transport": "usb"}, "transport"),
        ({"tags": [{"name": "x", "variable": "fv"}]}, "variable"),
    ],
)
def test_config_errors_name_the_field(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        parse({"devices": [device(**kw)]})
    assert "devices[0] (pt1)" in str(err.value)
