"""Fuzz targets, one module per parser of untrusted input; run by bench/fuzz.py (atheris) and
replayed by tests/unit/test_fuzz_regressions.py.

Each module defines `target(data: bytes) -> None`, which feeds `data` to its parser and asserts
what must hold for any input, and `ACCEPTS`, the exceptions that are a proper refusal of bad input
(anything else is a crash). `seeds()` optionally returns valid inputs to start the corpus from.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import NamedTuple, cast


class Target(NamedTuple):
    instrument: tuple[str, ...]  # modules whose coverage guides it (more only slows the run down)
    max_len: int  # the longest input worth trying


TARGETS: dict[str, Target] = {
    "hart": Target(("drivers.hart.protocol",), 320),  # a frame is at most 272 bytes, 20 preambles before
    "modbus": Target(("edged.protocols.modbus",), 64),  # one value: at most 4 registers, strings 12
    "mqtt_command": Target(("uplink.mqtt", "edged.commands"), 1024),
    "sparkplug_command": Target(("uplink.sparkplug", "edged.commands"), 1024),
    "http_response": Target(("uplink.http",), 2048),
    "config": Target(("edged.config", "drivers", "uplink"), 8192),
    "modbus_server_request": Target(("uplink.modbus_server.image", "edged.protocols.modbus"), 280),
    "influxdb_response": Target(("uplink.influxdb",), 2048),
    "s7": Target(("drivers.s7.pdu", "drivers.s7.codec"), 600),  # an answer of a 480-byte PDU, one value
}


def load(name: str) -> ModuleType:
    if name not in TARGETS:
        raise ValueError(f"unknown fuzz target {name!r} (known: {', '.join(TARGETS)})")
    return importlib.import_module(f"bench.fuzz_targets.{name}")


def run_one(module: ModuleType, data: bytes) -> None:
    """One input through a target; an exception not in its ACCEPTS propagates (a crash)."""
    target = cast(Callable[[bytes], None], module.target)
    try:
        target(data)
    except cast(tuple[type[BaseException], ...], module.ACCEPTS):
        pass


def seeds(module: ModuleType) -> list[bytes]:
    fn = getattr(module, "seeds", None)
    return list(fn()) if fn is not None else []
