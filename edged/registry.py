"""Resolve a config `type` to its plugin package by import, so adding a plugin edits no list.

`type = "modbus"` under `[[devices]]` is the package `drivers.modbus`; under `[[uplinks]]` it is
`uplink.modbus`. A plugin package exports `Config` (a DeviceBase/UplinkBase subclass) and `Driver`
or `Uplink`. Its heavy library is imported by the package itself, so only configured plugins pay.
"""

from __future__ import annotations

import importlib
import re
from types import ModuleType
from typing import Any

from edged.config import DeviceBase, UplinkBase
from edged.errors import ConfigError

_TYPE_RE = re.compile(r"^[a-z][a-z0-9_]{0,40}$")

# The extra that brings each plugin's library, for a helpful message when it is missing.
_EXTRAS = {"aiomqtt": "mqtt", "pymodbus": "modbus", "serial": "modbus", "asyncua": "opcua", "httpx": "http",
           "google": "sparkplug", "numpy": "numerics", "scipy": "numerics", "pint": "numerics"}  # fmt: skip


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


def driver_config(type_name: str) -> type[Any]:
    cfg = getattr(driver_module(type_name), "Config", None)
    if not (isinstance(cfg, type) and issubclass(cfg, DeviceBase)):
        raise ConfigError(f"drivers.{type_name} does not export a DeviceBase Config")
    return cfg


def uplink_config(type_name: str) -> type[Any]:
    cfg = getattr(uplink_module(type_name), "Config", None)
    if not (isinstance(cfg, type) and issubclass(cfg, UplinkBase)):
        raise ConfigError(f"uplink.{type_name} does not export an UplinkBase Config")
    return cfg
