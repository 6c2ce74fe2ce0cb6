"""The `[[devices]]` entry of a Logix controller over EtherNet/IP and its tags (pure: no pycomm3).

One entry is one CIP connection to one controller (a ControlLogix in `slot`, a CompactLogix, a
Micro800). A tag names a controller tag as RSLogix/Studio 5000 shows it: `Speed`, `Temps[3]`,
`Status.4` (a bit of an integer), `Program:Main.Count`, `Motor.Speed` (a member, with the tag list
uploaded).
"""

from __future__ import annotations

import re
from typing import Final, Literal

from edged.config import DeviceBase, Duration, TagBase, ValueKind, ValueType

# CIP elementary types a tag can declare (pycomm3's names), and what the sample holds.
CipType = Literal[
    "BOOL", "SINT", "INT", "DINT", "LINT", "USINT", "UINT", "UDINT", "ULINT", "REAL", "LREAL", "STRING",
    "SHORT_STRING",
]  # fmt: skip
_KINDS: Final[dict[str, ValueKind]] = {
    "BOOL": "bool", "REAL": "number", "LREAL": "number", "STRING": "string", "SHORT_STRING": "string",
}  # fmt: skip
_SOURCE: Final[dict[str, ValueType]] = {
    "SINT": "int16", "INT": "int16", "DINT": "int32", "LINT": "int64", "USINT": "uint16", "UINT": "uint16",
    "UDINT": "uint32", "ULINT": "uint64",
}  # fmt: skip
INTEGER_BITS: Final[dict[str, int]] = {
    "SINT": 8, "INT": 16, "DINT": 32, "LINT": 64, "USINT": 8, "UINT": 16, "UDINT": 32, "ULINT": 64,
}  # fmt: skip
MAX_INDEX: Final = 2**31 - 1
# Logix names: letters, digits, _ ; an optional Program:<name>. scope; members after dots; one
# element index per dimension; a trailing .N is a bit of an integer.
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_INDEX = r"(?:\[\d+(?:,\d+){0,2}\])?"
_TAG_RE: Final = re.compile(rf"^(?:Program:{_NAME}\.)?{_NAME}{_INDEX}(?:\.{_NAME}{_INDEX})*(?:\.(\d+))?$")
_ELEMENT_RE: Final = re.compile(rf"^((?:Program:{_NAME}\.)?{_NAME})\[(\d+)\]$")


def parse_tag(text: str) -> tuple[str, int | None]:
    """Check a controller tag name; returns (the name without a trailing bit, the bit or None)."""
    m = _TAG_RE.match(text)
    if m is None:
        raise ValueError(
            f"tag {text!r} is not a Logix tag name (e.g. 'Speed', 'Temps[3]', 'Status.4', 'Program:Main.Count')"
        )
    if m.group(1) is None:
        return text, None
    return text.rsplit(".", 1)[0], int(m.group(1))


def _unscoped(name: str) -> str:
    """The name without its `Program:<name>.` scope."""
    return name.split(".", 1)[1] if name.startswith("Program:") else name


def element_of(text: str) -> tuple[str, int] | None:
    """`Temps[3]` -> ("Temps", 3): an element of a one-dimensional array at the top level of its
    scope (what the planner can read with its neighbours in one request), else None."""
    m = _ELEMENT_RE.match(text)
    return (m.group(1), int(m.group(2))) if m else None


class Tag(TagBase, kw_only=True):
    """One controller tag (or array element, or bit), read by name."""

    tag: str  # the controller's name: "Speed", "Temps[3]", "Status.4", "Program:Main.Count"
    type: CipType | None = None  # required without upload_tags; checked against the controller's answer
    writable: bool = False  # allow Driver.write() through the command gate

    def __post_init__(self) -> None:
        super().__post_init__()
        _, bit = parse_tag(self.tag)
        if bit is not None:
            if self.type is not None and self.type not in INTEGER_BITS:
                raise ValueError(f"{self.tag}: a bit needs an integer type (SINT..ULINT), not {self.type}")
            if self.type is not None and bit >= INTEGER_BITS[self.type]:
                raise ValueError(f"{self.tag}: bit {bit} is outside 0..{INTEGER_BITS[self.type] - 1}")
        if self.writable and bit is not None:
            raise ValueError(f"{self.tag}: writing a single bit is not supported (write the whole integer)")

    @property
    def base(self) -> str:
        """The name read from the controller (without a trailing bit)."""
        return parse_tag(self.tag)[0]

    @property
    def bit(self) -> int | None:
        return parse_tag(self.tag)[1]

    def value_kind(self) -> ValueKind | None:
        if self.bit is not None:
            return "bool"
        if self.type is None:
            return None  # the uploaded tag list says
        return _KINDS.get(self.type, "number")

    def source_type(self) -> ValueType | None:
        if self.bit is None and self.type in _SOURCE:
            return _SOURCE[self.type]
        return super().source_type()

    def accepts_writes(self) -> bool:
        return self.writable


class Config(DeviceBase, kw_only=True):
    """A Logix controller (or another CIP device that serves Logix tag services)."""

    host: str  # required: IP address or host name
    port: int = 44818
    slot: int = 0  # ControlLogix: the controller's slot in the chassis (ignored by a Micro800)
    timeout: Duration = Duration(5.0)  # socket timeout of every request
    interval: Duration = Duration(1.0)  # poll interval
    connection_size: int = 4000  # bytes per packet: > 511 asks for a Large Forward Open (falls back to 500)
    upload_tags: bool = True  # read the controller's tag list at connect (types, structures)
    max_failed_polls: int = 3  # polls in a row without any answer before reconnecting
    tags: list[Tag] = []

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.host.strip() or any(c in self.host for c in "/ "):
            raise ValueError(f"host {self.host!r} must be an IP address or host name (route with slot)")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is outside 1..65535")
        if not 0 <= self.slot <= 255:
            raise ValueError(f"slot {self.slot} is outside 0..255")
        if not 0.05 <= self.timeout <= 60:
            raise ValueError("timeout must be between 50ms and 60s")
        if self.interval < 0.01:
            raise ValueError("interval must be at least 10ms")
        if not 100 <= self.connection_size <= 65535:
            raise ValueError("connection_size must be 100..65535 bytes (500 classic, 4000 large forward open)")
        if self.max_failed_polls < 1:
            raise ValueError("max_failed_polls must be at least 1")
        seen: dict[str, str] = {}
        for i, t in enumerate(self.tags):
            if t.tag in seen:
                raise ValueError(f"tags[{i}] ({t.name}): tag {t.tag!r} is already tag {seen[t.tag]!r}")
            seen[t.tag] = t.name
            if not self.upload_tags:
                if t.type is None:
                    raise ValueError(f"tags[{i}] ({t.name}): type is required when upload_tags = false")
                if "." in _unscoped(t.base):
                    raise ValueError(f"tags[{i}] ({t.name}): a structure member needs upload_tags = true")
                if t.type == "BOOL" and "[" in t.base:
                    raise ValueError(f"tags[{i}] ({t.name}): a BOOL array element needs upload_tags = true")

    def read_interval(self, tag: TagBase) -> float | None:
        return float(self.interval)
