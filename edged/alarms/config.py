"""`[alarms]` and `[[alarms.tags]]`: process alarms on measured or computed tags (docs/alarms.md).

One `[[alarms.tags]]` entry is one alarm on one tag. What one entry can check alone is checked here;
`check` resolves the entries against the whole config (the tag exists and holds numbers, the
setpoint tag exists, the sources are uplinks or "cli", names are unique per tag).
"""

from __future__ import annotations

import math
import re
from typing import Any, Final, Literal

import msgspec

from edged.config import NAME_RE, Base, Duration
from edged.errors import ConfigError

AlarmType = Literal["hi", "hihi", "lo", "lolo", "deviation", "rate", "bad_quality", "discrete", "drift"]
LIMIT_TYPES: Final = frozenset({"hi", "hihi", "lo", "lolo", "deviation", "rate"})
# ISA-18.2 priorities as OPC UA severities (1..1000, AlarmConditionType's Severity)
PRIORITIES: Final[dict[str, int]] = {"low": 250, "medium": 500, "high": 700, "urgent": 900}
MARK: Final = "#alarm/"  # an alarm's path: <device>/<tag>#alarm/<name>; a device's flood summary: <device>/#alarm/flood
FLOOD: Final = "flood"
_ALARM_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def alarm_path(tag: str, name: str) -> str:
    return f"{tag}{MARK}{name}"


def flood_path(device: str) -> str:
    """A device's flood summary: `<device>/#alarm/flood`, so it stays the device's (Sparkplug DDATA)."""
    return f"{device}/{MARK}{FLOOD}"


def is_alarm_path(tag: str) -> bool:
    """Whether a stored sample is an alarm event (edged tag names never contain '#')."""
    return MARK in tag


def split_path(path: str) -> tuple[str, str]:
    """(tag, name) of an alarm path; (device, "flood") for a device's flood summary."""
    tag, _, name = path.partition(MARK)
    return tag.removesuffix("/"), name


class AlarmTag(Base):
    """One alarm on one tag."""

    tag: str  # device/tag (measured or computed)
    type: AlarmType
    name: str | None = None  # unique per tag; default: the type
    limit: float | None = None  # hi/hihi/lo/lolo: the value; deviation: |pv - sp|; rate: per `per`
    setpoint: str | None = None  # deviation: the setpoint tag, device/tag
    per: Duration = Duration(1.0)  # rate: the limit is a change per this long ("1m": per minute)
    value: bool | int | str = True  # discrete: the alarm is active while the tag holds this value
    deadband: float = 0.0  # hysteresis, in the tag's unit: back to normal only this far inside the limit
    on_delay: Duration = Duration(0.0)  # the condition must hold this long before the alarm activates
    off_delay: Duration = Duration(0.0)  # ... and be gone this long before it clears
    priority: Literal["low", "medium", "high", "urgent"] | int = "medium"
    message: str = ""
    out_of_service: bool = False  # not evaluated, no events: listed as out of service

    def __post_init__(self) -> None:
        if self.name is None:
            self.name = self.type
        if not _ALARM_NAME.match(self.name):
            raise ValueError(f"invalid alarm name {self.name!r}: letters, digits, _ . - only, at most 64")
        if self.name == FLOOD:
            raise ValueError(f"alarm name {FLOOD!r} is reserved (a device's flood summary)")
        if self.type in LIMIT_TYPES:
            if self.limit is None or not math.isfinite(self.limit):
                raise ValueError(f"a {self.type} alarm needs a finite limit")
            if self.type in ("deviation", "rate") and self.limit <= 0:
                raise ValueError(f"the limit of a {self.type} alarm is a positive magnitude")
        elif self.limit is not None:
            raise ValueError(f"limit does not apply to a {self.type} alarm")
        if (self.setpoint is not None) != (self.type == "deviation"):
            raise ValueError(
                'a deviation alarm needs setpoint = "device/tag"'
                if self.type == "deviation"
                else "setpoint applies to deviation alarms only"
            )
        if self.type != "rate" and self.per != 1.0:
            raise ValueError("per applies to rate alarms only")
        if self.per <= 0:
            raise ValueError("per must be a positive duration")
        if self.type != "discrete" and self.value is not True:
            raise ValueError("value applies to discrete alarms only")
        if not 0.0 <= self.deadband < math.inf:
            raise ValueError("deadband must be >= 0")
        if self.deadband and self.type not in LIMIT_TYPES:
            raise ValueError(f"deadband applies to limit, deviation and rate alarms, not {self.type}")
        for key in ("on_delay", "off_delay"):
            if not 0 <= getattr(self, key) <= 86400:
                raise ValueError(f"{key} must be between 0s and 24h")
        if isinstance(self.priority, int) and not 1 <= self.priority <= 1000:
            raise ValueError("priority is low, medium, high, urgent or a severity 1..1000")
        if len(self.message) > 512:
            raise ValueError("message must be at most 512 characters")

    @property
    def path(self) -> str:
        assert self.name is not None
        return alarm_path(self.tag, self.name)

    @property
    def severity(self) -> int:
        return self.priority if isinstance(self.priority, int) else PRIORITIES[self.priority]


class AlarmsConfig(Base):
    # who may acknowledge and shelve: uplink names, "cli" and "ui" (the web UI's operators)
    sources: list[str] = msgspec.field(default_factory=lambda: ["cli"])
    max_shelve: Duration = Duration(8 * 3600.0)  # the longest a shelve may last
    flood_limit: int = 20  # new alarm events stored per second per device; the rest are summarised
    tags: list[AlarmTag] = []

    def __post_init__(self) -> None:
        if not 1 <= self.flood_limit <= 100_000:
            raise ValueError("flood_limit must be between 1 and 100000 events per second")
        if not 1 <= self.max_shelve <= 30 * 86400:
            raise ValueError("max_shelve must be between 1s and 30 days")
        for src in self.sources:
            if not NAME_RE.match(src):
                raise ValueError(f"invalid source {src!r}: an uplink name, 'cli' or 'ui'")


def check(alarms: AlarmsConfig, devices: list[Any], uplinks: list[Any], file: str) -> None:
    """Every alarm against the devices and computed groups (`devices` holds both)."""
    from edged.config import COMMAND_SOURCE_CLI, COMMAND_SOURCE_UI

    tags = {dev.tag_path(t): (dev, t) for dev in devices for t in dev.tags}
    sources = {u.name for u in uplinks} | {COMMAND_SOURCE_CLI, COMMAND_SOURCE_UI}
    for src in alarms.sources:
        if src not in sources:
            known = ", ".join(sorted(sources))
            raise ConfigError(f"unknown source {src!r} (known: {known})", file=file, path="alarms.sources")
    seen: dict[str, int] = {}
    for i, a in enumerate(alarms.tags):
        label = f"alarms.tags[{i}] ({a.tag} {a.name})"
        found = tags.get(a.tag)
        if found is None:
            raise ConfigError(f"unknown tag {a.tag!r}: no device or computed group has it", file=file,
                              path=f"{label}.tag")  # fmt: skip
        if a.path in seen:
            raise ConfigError(f"a second alarm named {a.name!r} on {a.tag} (also alarms.tags[{seen[a.path]}]): "
                              "give it a name", file=file, path=f"{label}.name")  # fmt: skip
        seen[a.path] = i
        kind = found[1].value_kind()
        if a.type in LIMIT_TYPES and kind in ("bool", "string"):
            raise ConfigError(f"a {a.type} alarm needs a number; {a.tag} holds a {kind}", file=file, path=label)
        if a.setpoint is not None and a.setpoint not in tags:
            raise ConfigError(f"unknown setpoint tag {a.setpoint!r}", file=file, path=f"{label}.setpoint")
        if a.type == "drift":
            cfg = found[1]
            if getattr(cfg, "function", None) not in ("median", "mean") or getattr(cfg, "max_deviation", None) is None:
                raise ConfigError("a drift alarm goes on a computed median or mean with max_deviation",
                                  file=file, path=label)  # fmt: skip
