"""`edged discover bacnet`: Who-Is (broadcast, or directed to given addresses), and optionally each
device's object list as a ready-to-paste `[[devices]]` entry."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence

from bacpypes3.primitivedata import ObjectIdentifier

from drivers.bacnet import codec
from drivers.bacnet.client import Failure, IAm, LinkDown, Stack
from drivers.bacnet.config import OBJECT_KINDS
from edged.errors import Transient


async def who_is(
    local: str, addresses: Sequence[str], low: int | None, high: int | None, wait: float, instance: int = 4194301
) -> tuple[Stack, list[IAm]]:
    """Every device that answered; the stack stays open for `describe` (close it)."""
    try:
        stack = Stack(local, instance)
    except LinkDown as exc:
        raise Transient(str(exc)) from None
    found: dict[int, IAm] = {}
    targets: list[str | None] = list(addresses) or [None]  # None: global broadcast
    for batch in await asyncio.gather(*(stack.who_is(a, low, high, wait) for a in targets)):
        found |= {d.instance: d for d in batch}
    return stack, sorted(found.values(), key=lambda d: d.instance)


async def describe(stack: Stack, dev: IAm, timeout: float) -> str:
    """A `[[devices]]` entry for one device: a tag per object of a supported type."""
    oid = ObjectIdentifier(("device", dev.instance))
    objects = await stack.read(dev.address, oid, "object-list", timeout, 1)
    lines = ["[[devices]]", f'name = "device{dev.instance}"', 'type = "bacnet"', f'address = "{dev.address}"',
             f"device_instance = {dev.instance}"]  # fmt: skip
    if isinstance(objects, Failure):
        return "\n".join([*lines, f"# object-list not readable: {objects.reason}"])
    used: set[str] = set()
    for obj in objects:
        otype, inst = str(obj[0]), int(obj[1])
        if otype not in OBJECT_KINDS:
            continue
        props = ["object-name"] + (["units"] if OBJECT_KINDS[otype] == "number" else [])
        got = await stack.read_multiple(dev.address, [(ObjectIdentifier((otype, inst)), props)], timeout, 1)
        name = f"{otype.replace('-', '_')}_{inst}"
        unit = None
        if not isinstance(got, Failure):
            raw = got.get((ObjectIdentifier((otype, inst)), "object-name"))
            if isinstance(raw, str) and raw:
                name = re.sub(r"[^A-Za-z0-9_.-]+", "_", raw).strip("_") or name
            u = got.get((ObjectIdentifier((otype, inst)), "units"))
            unit = codec.unit_symbol(str(u)) if u is not None and not isinstance(u, Failure) else None
        while name in used:
            name += f"_{inst}"
        used.add(name)
        lines += ["", "[[devices.tags]]", f'name = "{name}"', f'object = "{otype},{inst}"']
        if unit:
            lines.append(f'unit = "{unit}"')
    return "\n".join(lines)


async def run(
    local: str, addresses: Sequence[str], low: int | None, high: int | None, wait: float, objects: bool
) -> list[str]:
    """The lines `edged discover bacnet` prints."""
    stack, found = await who_is(local, addresses, low, high, wait)
    try:
        out = [f"device {d.instance} at {d.address}: vendor {d.vendor}, max APDU {d.max_apdu}, segmentation"
               f" {d.segmentation}" for d in found]  # fmt: skip
        if not found:
            out.append("no device answered" + ("" if addresses else " (broadcast: check --local's /prefix)"))
        if objects:
            for d in found:
                out += ["", await describe(stack, d, wait)]
        return out
    finally:
        stack.close()
