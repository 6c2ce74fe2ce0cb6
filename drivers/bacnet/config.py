"""The `[[devices]]` entry of a BACnet/IP device and its tags.

One entry is one BACnet device reached at one address (an IPv4 `host[:port]`, or `net:mac` behind a
BACnet router). Every entry with the same `local_address` shares one UDP socket and one bacpypes3
application (client.Stacks): BACnet answers to the port a request came from, so one port per host
serves every device, exactly as a BACnet workstation does.
"""

from __future__ import annotations

import re
from typing import Final

from edged.config import DeviceBase, Duration, TagBase, ValueKind, ValueType

# Object types whose present-value this driver reads, and what kind of value that is.
OBJECT_KINDS: Final[dict[str, ValueKind]] = {
    "analog-input": "number",
    "analog-output": "number",
    "analog-value": "number",
    "large-analog-value": "number",
    "integer-value": "number",
    "positive-integer-value": "number",
    "multi-state-input": "number",
    "multi-state-output": "number",
    "multi-state-value": "number",
    "binary-input": "bool",
    "binary-output": "bool",
    "binary-value": "bool",
    "characterstring-value": "string",
}
# The exact integer type of the present-value, for the OPC UA server's DataType.
_SOURCE_TYPES: Final[dict[str, ValueType]] = {
    "integer-value": "int32",
    "positive-integer-value": "uint32",
    "multi-state-input": "uint32",
    "multi-state-output": "uint32",
    "multi-state-value": "uint32",
}
# Object types that are commandable (a priority array) by the standard; the others (a value object
# without one) take a write without a priority.
COMMANDABLE: Final = frozenset({"analog-output", "binary-output", "multi-state-output"})
MAX_INSTANCE: Final = 4194302  # 4194303 is the "any instance" wildcard
_OBJECT_RE: Final = re.compile(r"^([a-z][a-z-]*)[,:](\d+)$")


def parse_object(text: str) -> tuple[str, int]:
    """`"analog-input,3"` (or `analog-input:3`) -> ("analog-input", 3); ValueError with a reason."""
    m = _OBJECT_RE.match(text.strip())
    if m is None:
        raise ValueError(f"object {text!r} must be 'type,instance', e.g. 'analog-input,3'")
    otype, inst = m.group(1), int(m.group(2))
    if otype not in OBJECT_KINDS:
        raise ValueError(f"object type {otype!r} is not supported; one of {', '.join(OBJECT_KINDS)}")
    if inst > MAX_INSTANCE:
        raise ValueError(f"object instance {inst} is outside 0..{MAX_INSTANCE}")
    return otype, inst


def parse_address(text: str) -> str:
    """A device address bacpypes3 can use: IPv4 `host[:port]` or `net:mac` (routed)."""
    from bacpypes3.pdu import Address, IPv4Address, RemoteStation

    try:
        addr = Address(text)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{text!r} is not a BACnet address ('192.168.1.20[:47808]', '2:5'): {exc}") from None
    if not isinstance(addr, IPv4Address | RemoteStation) or text.strip() in ("host", "*"):
        raise ValueError(f"{text!r} is not a device address ('192.168.1.20[:47808]' or 'net:mac' behind a router)")
    return text.strip()


def parse_local(text: str) -> str:
    """The local BACnet/IP address: `ip[/prefix][:port]`; the prefix gives the broadcast address."""
    from bacpypes3.pdu import Address, IPv4Address

    try:
        addr = Address(text)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{text!r} is not an IPv4 address ('0.0.0.0:47808', '192.168.1.5/24'): {exc}") from None
    if not isinstance(addr, IPv4Address) or text.strip() == "host":
        raise ValueError(f"{text!r} is not an IPv4 address ('0.0.0.0:47808', '192.168.1.5/24')")
    return text.strip()


class Tag(TagBase, kw_only=True):
    """The present-value of one object (its status-flags and reliability give the sample's status)."""

    object: str  # "analog-input,3"
    writable: bool = False  # allow Driver.write() through the command gate
    priority: int | None = None  # write priority 1..16; default: the device's write_priority
    cov: bool | None = None  # None: the device's `cov`; False: always poll this object

    def __post_init__(self) -> None:
        super().__post_init__()
        parse_object(self.object)
        if self.priority is not None and not 1 <= self.priority <= 16:
            raise ValueError(f"priority {self.priority} is outside 1..16")
        if self.priority is not None and not self.writable:
            raise ValueError("priority applies to writable tags only")

    @property
    def object_type(self) -> str:
        return parse_object(self.object)[0]

    @property
    def instance(self) -> int:
        return parse_object(self.object)[1]

    def value_kind(self) -> ValueKind:
        return OBJECT_KINDS[self.object_type]

    def source_type(self) -> ValueType:
        return _SOURCE_TYPES.get(self.object_type, super().source_type() or "double")

    def accepts_writes(self) -> bool:
        return self.writable


class Config(DeviceBase, kw_only=True):
    """A BACnet/IP device."""

    address: str  # required: "192.168.1.20", "192.168.1.20:47809" or "net:mac" (routed)
    device_instance: int | None = None  # checked against the device's I-Am when set
    local_address: str = "0.0.0.0:47808"  # our socket; shared by every device that names the same
    local_instance: int = 4194300  # our own device object's instance (devices may see it)
    timeout: Duration = Duration(3.0)  # per request attempt
    retries: int = 1  # extra attempts after a timeout
    interval: Duration = Duration(5.0)  # poll interval of the objects not served by COV
    max_objects: int = 16  # objects per ReadPropertyMultiple; lowered by itself when the device aborts
    cov: bool = True  # subscribe to COV where the device supports it
    cov_lifetime: Duration = Duration(300.0)  # subscription lifetime; renewed at half of it
    cov_confirmed: bool = False  # ask for confirmed notifications
    write_priority: int = 8  # 1..16 (8: manual operator)
    max_failed_polls: int = 3  # polls in a row without any answer before reconnecting
    tags: list[Tag] = []

    def __post_init__(self) -> None:
        super().__post_init__()
        parse_address(self.address)
        parse_local(self.local_address)
        if self.device_instance is not None and not 0 <= self.device_instance <= MAX_INSTANCE:
            raise ValueError(f"device_instance must be 0..{MAX_INSTANCE}")
        if not 0 <= self.local_instance <= MAX_INSTANCE:
            raise ValueError(f"local_instance must be 0..{MAX_INSTANCE}")
        if not 0.01 <= self.timeout <= 60:
            raise ValueError("timeout must be between 10ms and 60s")
        if not 0 <= self.retries <= 10:
            raise ValueError("retries must be 0..10")
        if self.interval < 0.01:
            raise ValueError("interval must be at least 10ms")
        if not 1 <= self.max_objects <= 256:
            raise ValueError("max_objects must be 1..256")
        if not 10 <= self.cov_lifetime <= 86400:
            raise ValueError("cov_lifetime must be between 10s and 24h (it is renewed at half of it)")
        if not 1 <= self.write_priority <= 16:
            raise ValueError("write_priority must be 1..16")
        if self.max_failed_polls < 1:
            raise ValueError("max_failed_polls must be at least 1")
        seen: dict[str, str] = {}
        for i, t in enumerate(self.tags):
            key = ",".join(map(str, parse_object(t.object)))
            if key in seen:
                raise ValueError(f"tags[{i}] ({t.name}): object {key} is already tag {seen[key]!r}")
            seen[key] = t.name

    def read_interval(self, tag: TagBase) -> float | None:
        return None if self.cov else float(self.interval)

    def priority_of(self, tag: Tag) -> int:
        return tag.priority if tag.priority is not None else self.write_priority
