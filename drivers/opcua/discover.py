"""`edged discover opcua URL`: browse a server's Objects folder and print a `[[devices]]` block with
one tag per variable found (NodeId, data type, EngineeringUnits, EURange), ready for check-config.

Bounded (depth, number of nodes) so a huge server cannot keep it busy forever; the standard Server
object (namespace 0) is skipped. asyncua's exceptions become Transient/Permanent at this boundary.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.object_ids import ObjectIds

from edged.protocols.opcua.errors import map_error

MAX_DEPTH = 8
MAX_NODES = 5000
STORABLE = {"Boolean", "SByte", "Byte", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64", "Float",
            "Double", "String", "DateTime"}  # fmt: skip


@dataclass(slots=True)
class Found:
    path: list[str]
    node: str
    type: str
    unit: str | None = None
    low: float | None = None
    high: float | None = None
    description: str = ""


def tag_name(path: list[str]) -> str:
    """A tag name from browse names: letters, digits and _ . - kept, the rest turned into _."""
    name = ".".join(re.sub(r"[^A-Za-z0-9_.\-]+", "_", p).strip("_") or "_" for p in path)
    return name if re.match(r"^[A-Za-z0-9]", name) else f"t{name}"


async def _property(node: Any, name: str) -> Any:
    try:
        prop = await node.get_child([f"0:{name}"])
        return await prop.read_value()
    except Exception:  # the property is optional: absent or unreadable, either way not shown
        return None


async def browse(client: Client, max_nodes: int = MAX_NODES) -> list[Found]:
    found: list[Found] = []
    seen: set[str] = set()
    stack: list[tuple[Any, list[str]]] = [(client.nodes.objects, [])]
    while stack and len(seen) < max_nodes:
        node, path = stack.pop()
        for child in await node.get_children(refs=ObjectIds.HierarchicalReferences):
            key = child.nodeid.to_string()
            if key in seen or child.nodeid.NamespaceIndex == 0:
                continue
            seen.add(key)
            name = (await child.read_browse_name()).Name
            cls = await child.read_node_class()
            here = [*path, name]
            if cls == ua.NodeClass.Variable:
                if await child.read_value_rank() > 0:  # arrays are not stored
                    continue
                dtype = await client.get_node(await child.read_data_type()).read_browse_name()
                f = Found(here, key, dtype.Name)
                eu = await _property(child, "EngineeringUnits")
                if eu is not None and getattr(eu, "DisplayName", None) is not None and eu.DisplayName.Text:
                    f.unit = eu.DisplayName.Text
                rng = await _property(child, "EURange")
                if rng is not None and hasattr(rng, "Low"):
                    f.low, f.high = float(rng.Low), float(rng.High)
                desc = await child.read_description()
                text = (desc.Text or "") if desc is not None else ""
                f.description = "" if text == name else text  # asyncua's default: the browse name again
                found.append(f)
            elif cls == ua.NodeClass.Object and len(here) < MAX_DEPTH:
                stack.append((child, here))
    found.sort(key=lambda f: f.path)
    return found


def to_toml(url: str, device: str, found: list[Found], security: str) -> str:
    policy, _, mode = security.partition(",")
    q = json.dumps
    lines = [
        f"# discovered by `edged discover opcua {url}`: {len(found)} variables",
        "[[devices]]",
        f"name = {q(device)}",
        'type = "opcua"',
        f"endpoint = {q(url)}",
        f"security_policy = {q(policy)}",
    ]
    if policy != "None":
        lines += [
            f"security_mode = {q(mode or 'SignAndEncrypt')}",
            'certificate = "opcua/client_cert.der"      # edged opcua-cert makes these',
            'private_key = "opcua/client_key.pem"',
            'trusted_server_certificates = ["opcua/trusted"]',
        ]
    lines += ['mode = "subscribe"', 'publishing_interval = "1s"']
    names: set[str] = set()
    for f in found:
        name = tag_name(f.path)
        while name in names:
            name += "_"
        names.add(name)
        lines += ["", "[[devices.tags]]", f"name = {q(name)}", f"node = {q(f.node)}"]
        if f.unit:
            lines.append(f"unit = {q(f.unit)}")
        if f.low is not None and f.high is not None and f.low < f.high:
            lines += [f"low = {f.low!r}", f"high = {f.high!r}"]
        if f.description:
            lines.append(f"description = {q(f.description[:200])}")
        note = "" if f.type in STORABLE else " (not a plain value: check the driver README)"
        lines[-1] += f"  # {f.type}{note}"
    return "\n".join(lines) + "\n"


async def discover(url: str, *, security: str = "None", device: str | None = None, certificate: str | None = None,
                   private_key: str | None = None, username: str | None = None, password: str | None = None,
                   timeout: float = 10.0) -> str:  # fmt: skip
    """The `[[devices]]` TOML for the server at `url`."""
    client = Client(url, timeout=timeout)
    if security != "None":
        if not (certificate and private_key):
            raise ValueError("--security other than None needs --certificate and --private-key (edged opcua-cert)")
        policy, _, mode = security.partition(",")
        client.application_uri = "urn:edged:discover"
        await client.set_security_string(f"{policy},{mode or 'SignAndEncrypt'},{certificate},{private_key}")
    if username:
        client.set_user(username)
        client.set_password(password or "")
    try:
        async with client:
            found = await browse(client)
    except Exception as exc:
        raise map_error(exc, f"discover {url}") from exc
    name = device or re.sub(r"[^A-Za-z0-9_.\-]+", "-", urlparse(url).hostname or "opcua").strip("-") or "opcua"
    return to_toml(url, name, found, security)


async def discover_cli(args: Any) -> str:
    """`edged discover opcua URL ...` (edged.cli)."""
    import os

    return await discover(args.target, security=args.security, device=args.name, certificate=args.certificate,
                          private_key=args.private_key, username=args.username,
                          password=os.environ.get("EDGED_DISCOVER_PASSWORD"))  # fmt: skip
