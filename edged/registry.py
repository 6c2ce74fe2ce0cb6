"""Resolve a config `type` to its plugin package by import, so adding a plugin edits no list.

`type = "modbus"` under `[[devices]]` is the package `drivers.modbus`; under `[[uplinks]]` it is
`uplink.modbus`. A plugin package declares `plugin = DriverSpec(...)` or `UplinkSpec(...)`
(edged.plugin): its Config struct and its Driver/Uplink, typed, so mypy checks each plugin against
the contract. Its heavy library is imported by the package itself, so only configured plugins pay.
"""

from __future__ import annotations

import importlib
import re
from types import ModuleType
from typing import Any

from edged.config import DeviceBase, UplinkBase
from edged.errors import ConfigError
from edged.plugin import DriverSpec, UplinkSpec

_TYPE_RE = re.compile(r"^[a-z][a-z0-9_]{0,40}$")

# The extra that brings each plugin's library, for a helpful message when it is missing.
_EXTRAS = {"aiomqtt": "mqtt", "pymodbus": "modbus", "serial": "modbus", "asyncua": "opcua", "httpx": "http",
           "google": "sparkplug", "numpy": "numerics", "scipy": "numerics", "pint": "numerics",
           "bacpypes3": "bacnet", "pycomm3": "cip", "nats": "nats", "nkeys": "nats", "snap7": "s7"}  # fmt: skip


def _load(package: str, type_name: str) -> ModuleType:
    if not _TYPE_RE.match(type_name):
        raise ConfigError(f"invalid type {type_name!r}: lowercase letters, digits and _ only")
    modname = f"{package}.{type_name}"
    try:
        return importlib.import_module(modname)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if exc.name in (modname, package) or (exc.name or "").startswith(modname):
            raise ConfigError(
                f"unknown {package[:-1] if package.endswith('s') else package} type {type_name!r}"
            ) from None
        extra = _EXTRAS.get(missing)
        hint = f": install it with pip install 'edged[{extra}]'" if extra else ""
        raise ConfigError(f"type {type_name!r} needs the Python package {missing!r}{hint}") from None


def driver_module(type_name: str) -> ModuleType:
    return _load("drivers", type_name)


def uplink_module(type_name: str) -> ModuleType:
    return _load("uplink", type_name)


def driver_spec(type_name: str) -> DriverSpec[Any]:
    """The package's `plugin` declaration, which mypy checked against the driver contract."""
    spec = getattr(driver_module(type_name), "plugin", None)
    if not isinstance(spec, DriverSpec) or not issubclass(spec.config, DeviceBase):
        raise ConfigError(f"drivers.{type_name} does not declare `plugin = DriverSpec(...)` (docs/plugins.md)")
    return spec


def uplink_spec(type_name: str) -> UplinkSpec[Any]:
    spec = getattr(uplink_module(type_name), "plugin", None)
    if not isinstance(spec, UplinkSpec) or not issubclass(spec.config, UplinkBase):
        raise ConfigError(f"uplink.{type_name} does not declare `plugin = UplinkSpec(...)` (docs/plugins.md)")
    return spec


def driver_config(type_name: str) -> type[DeviceBase]:
    return driver_spec(type_name).config


def uplink_config(type_name: str) -> type[UplinkBase]:
    return uplink_spec(type_name).config
