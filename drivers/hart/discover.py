"""`edged discover hart PORT|HOST`: poll polling addresses 0-63 with command 0 and print a
`[[devices]]` block per device found, with its PV/SV/TV/QV and their units (command 3) and, when
the device implements command 13, its tag and descriptor. The output passes check-config as it is.

Everything on the wire is the driver's own code (drivers.hart.Driver: links, framing, retries);
this module only walks the addresses and writes TOML.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers.hart import Driver, Failure
from drivers.hart.config import Config
from drivers.hart.protocol import HARTIP_PORT, DeviceIdentity, decode_dynamic, decode_tag_descriptor
from edged.config import NAME_RE, parse
from edged.plugin import PluginContext

log = logging.getLogger("edged.discover.hart")
VARIABLES = ("pv", "sv", "tv", "qv")


@dataclass(slots=True)
class Found:
    polling_address: int
    identity: DeviceIdentity
    tag: str = ""
    descriptor: str = ""
    units: dict[str, str | None] = field(default_factory=dict)  # variable -> unit (None: no unit)
    notes: list[str] = field(default_factory=list)


def transport_of(target: str) -> dict[str, Any]:
    """A serial device path (`/dev/ttyUSB0`, `COM3`) or a HART-IP `host[:port]`."""
    if target.startswith("/") or re.fullmatch(r"(?i)com\d+", target):
        return {"transport": "serial", "port": target}
    host, sep, port = target.rpartition(":") if target.count(":") == 1 else ("", "", "")
    if not sep:
        host, port = target.strip("[]"), str(HARTIP_PORT)
    if not port.isdigit():
        raise ValueError(f"{target!r}: a serial device (/dev/ttyUSB0) or a HART-IP host[:port]")
    return {"transport": "hartip", "host": host, "port": int(port)}


async def scan(
    target: str,
    *,
    addresses: range = range(64),
    timeout: float = 0.8,
    retries: int = 0,
    primary_master: bool = True,
) -> tuple[dict[str, Any], list[Found]]:
    """The transport settings and every device that answers command 0 at one of `addresses`."""
    where = transport_of(target)
    entry = {"name": "discover", "type": "hart", **where, "timeout": f"{timeout}s", "retries": retries,
             "primary_master": primary_master}  # fmt: skip
    cfg = parse({"devices": [entry]}).devices[0]
    assert isinstance(cfg, Config)
    driver = Driver(cfg, PluginContext("discover", Path("."), log))
    found: list[Found] = []
    await driver.open_link()
    try:
        for a in addresses:
            res = await driver.probe(a)
            if isinstance(res, Failure):
                if res.answered:  # something answered, but not usably: say so, keep walking
                    log.warning("polling address %d: %s", a, res.reason)
                continue
            ident, _ = res
            dev = Found(a, ident)
            await _details(driver, dev)
            found.append(dev)
    finally:
        await driver.__aexit__(None, None, None)
    return where, found


async def _details(driver: Driver, dev: Found) -> None:
    """Command 13 (tag, descriptor) when implemented, command 3 for the variables and their units."""
    res = await driver.request(13)
    if not isinstance(res, Failure):
        try:
            dev.tag, dev.descriptor = decode_tag_descriptor(res.payload)
        except ValueError as exc:
            dev.notes.append(f"command 13: {exc}")
    res = await driver.request(3)
    if isinstance(res, Failure):
        dev.notes.append(f"command 3 (dynamic variables): {res.reason}; only the loop current is listed")
        return
    try:
        dyn = decode_dynamic(res.payload)
    except ValueError as exc:
        dev.notes.append(f"command 3: {exc}")
        return
    for name, var in zip(VARIABLES, dyn.variables, strict=False):
        if var.unit_code != 250:  # 250: the device does not have it
            dev.units[name] = var.unit


def _name(dev: Found, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.\-]+", "_", dev.tag.strip()).strip("_.-").lower()
    if not base or not NAME_RE.match(base):
        base = f"hart_{dev.identity.address.unique_id.hex()}"
    name, i = base, 2
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


def _q(text: str) -> str:
    """A TOML basic string."""
    import json

    return json.dumps(text, ensure_ascii=False)


def to_toml(target: str, where: dict[str, Any], found: list[Found]) -> str:
    """`[[devices]]` per device found. Several devices on one serial modem (multidrop) cannot be
    polled by several entries at once (the driver owns its port), so all but the first are
    commented out there; behind a HART-IP server each is its own entry."""
    lines = [f"# edged discover hart {target}: {len(found)} device(s) at polling addresses 0-63", ""]
    if not found:
        lines.append("# no device answered command 0: check the modem, the loop resistor (250 ohm) and the address")
        return "\n".join(lines) + "\n"
    taken: set[str] = set()
    serial = where["transport"] == "serial"
    for i, dev in enumerate(found):
        block = _block(dev, _name(dev, taken), where)
        if serial and i > 0:
            lines.append("# another device on the same modem: the driver polls one device per serial port")
            lines.append("# (drivers/hart/README.md); swap it with the entry above to read this one instead")
            block = [f"# {ln}" if ln else "#" for ln in block]
        lines.extend(block)
        lines.append("")
    return "\n".join(lines)


def _block(dev: Found, name: str, where: dict[str, Any]) -> list[str]:
    ident = dev.identity
    out = [f"# polling address {dev.polling_address}: {ident}"]
    if dev.tag or dev.descriptor:
        out.append(f"# HART tag {dev.tag!r}, descriptor {dev.descriptor!r}")
    out.extend(f"# note: {n}" for n in dev.notes)
    out += ["[[devices]]", f"name = {_q(name)}", 'type = "hart"', f"transport = {_q(where['transport'])}"]
    if where["transport"] == "serial":
        out.append(f"port = {_q(where['port'])}")
    else:
        out += [f"host = {_q(where['host'])}", f"port = {where['port']}"]
    out.append(f"unique_id = {_q(ident.address.unique_id.hex().upper())}  # polling address {dev.polling_address}")
    for var, unit in dev.units.items():
        out += ["", "[[devices.tags]]", f"name = {_q(var)}", f"variable = {_q(var)}"]
        out.append(f"unit = {_q(unit)}" if unit is not None else "# no unit")
        if var == "pv" and dev.descriptor:
            out.append(f"description = {_q(dev.descriptor)}")
    out += ["", "[[devices.tags]]", 'name = "loop_current"', 'variable = "loop_current"', 'unit = "mA"']
    return out


def parse_addresses(text: str) -> range:
    """`0-63`, `5` or `0-15`."""
    lo, _, hi = text.partition("-")
    try:
        a, b = int(lo), int(hi or lo)
    except ValueError:
        raise ValueError(f"--addresses {text!r}: a polling address or a range, e.g. 0-15") from None
    if not 0 <= a <= b <= 63:
        raise ValueError(f"--addresses {text!r}: polling addresses are 0..63")
    return range(a, b + 1)


async def discover_cli(args: Any) -> str:
    """`edged discover hart PORT|HOST ...` (edged.cli)."""
    where, found = await scan(args.target, addresses=parse_addresses(args.addresses), timeout=args.timeout,
                              retries=args.retries)  # fmt: skip
    return to_toml(args.target, where, found)
