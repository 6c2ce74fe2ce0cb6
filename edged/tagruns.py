"""The compact form of a run of same-typed tags: one `[[devices.tags]]` entry with `count`.

A meter map of 500 registers is 500 tags that differ only in their number and address. Written
one entry per tag that is 500 entries (521 lines for the Modbus example of issue 20); as a run it
is one entry per kind of value:

    [[devices.tags]]
    name = "meter{i}/power"     # {i} is the tag's number; {i:03} pads it to three digits
    count = 50                  # meter1/power .. meter50/power
    address = 100               # the first tag's address ...
    stride = 2                  # ... and the step from one tag to the next (registers, bytes, ...)
    type = "float32"

The run is expanded here, before the driver's Tag struct sees anything, into `count` ordinary
entries, each individually named: the driver, the core, commands and uplinks never know a run
existed, and every check of a tag (address range, type, duplicate names) applies to each one.
Generic on purpose: any driver whose tags have an integer `address` gets runs for free. The keys
`count`, `stride` and `first` are therefore reserved for runs in every driver's tags.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from edged.errors import ConfigError

RUN_KEYS = ("count", "stride", "first")
MAX_RUN = 10_000  # tags one run may expand to: a typo of 1000000 must not build a million structs
MAX_DEVICE_TAGS = 100_000  # tags of one device after expansion
_PLACEHOLDER = re.compile(r"\{i(?::0?([1-9]))?\}")  # {i}, {i:3}, {i:03}


class _KeyError(Exception):
    """A bad run key: `key` goes into the error path."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(reason)
        self.key = key
        self.reason = reason


def _int(entry: Mapping[str, Any], key: str) -> int | None:
    value = entry.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _KeyError(key, f"{key} must be an integer, not {value!r}")
    return value


def _pattern(name: object, key: str, *, once: bool = True) -> str:
    """Check a pattern: {i} exactly `once` (a name, else the tags would share it), no other braces."""
    if not isinstance(name, str):
        raise _KeyError(key, f"{key} must be a string")
    if once and len(_PLACEHOLDER.findall(name)) != 1:
        raise _KeyError(key, f"{key} of a run needs exactly one {{i}} (the tag's number), e.g. 'meter{{i}}/power'")
    rest = _PLACEHOLDER.sub("", name)
    if "{" in rest or "}" in rest:
        raise _KeyError(key, f"{key}: only {{i}} or {{i:03}} may stand in braces")
    return name


def _fill(pattern: str, number: int) -> str:
    return _PLACEHOLDER.sub(lambda m: str(number).zfill(int(m.group(1) or 0)), pattern)


class Origins:
    """Where each expanded tag came from, to put the author's entry into error paths."""

    def __init__(self) -> None:
        self._labels: dict[int, str] = {}

    def add(self, expanded: int, label: str) -> None:
        self._labels[expanded] = label

    def relabel(self, exc: ConfigError) -> ConfigError:
        """The error with `tags[57]` replaced by the run entry it came from and the tag's name."""
        if not self._labels or exc.path is None:
            return exc
        m = re.search(r"\.tags\[(\d+)\]", exc.path)
        if m is None or int(m.group(1)) not in self._labels:
            return exc
        path = exc.path[: m.start()] + "." + self._labels[int(m.group(1))] + exc.path[m.end() :]
        return ConfigError(exc.reason, file=exc.file, path=path)


def expand_runs(entry: Mapping[str, Any], *, file: str, label: str) -> tuple[Mapping[str, Any], Origins]:
    """The `[[devices]]` entry with every run in its `tags` expanded (the entry itself when it has
    none). Errors name the run's key: `devices[0] (plc).tags[3].count: ...`."""
    origins = Origins()
    tags = entry.get("tags")
    if not isinstance(tags, list) or not any(isinstance(t, dict) and set(RUN_KEYS) & set(t) for t in tags):
        return entry, origins
    out: list[Any] = []
    for ti, tag in enumerate(tags):
        where = f"{label}.tags[{ti}]"
        if not isinstance(tag, dict) or not set(RUN_KEYS) & set(tag):
            out.append(tag)
            continue
        try:
            expanded = _expand(tag)
        except _KeyError as exc:
            raise ConfigError(exc.reason, file=file, path=f"{where}.{exc.key}") from None
        if len(out) + len(expanded) > MAX_DEVICE_TAGS:
            raise ConfigError(f"the runs expand to more than {MAX_DEVICE_TAGS} tags in one device", file=file,
                              path=f"{where}.count")  # fmt: skip
        for one in expanded:
            origins.add(len(out), f"tags[{ti}] ({tag['name']}: {one['name']})")
            out.append(one)
    return {**entry, "tags": out}, origins


def _expand(tag: Mapping[str, Any]) -> list[dict[str, Any]]:
    def check(key: str, test: bool, reason: str) -> None:
        if not test:
            raise _KeyError(key, reason)

    count = _int(tag, "count")
    stride = _int(tag, "stride")
    first = _int(tag, "first")
    check("count", count is not None, "`stride` and `first` belong to a run: set `count` (the number of tags)")
    assert count is not None
    check("count", 1 <= count <= MAX_RUN, f"count must be 1..{MAX_RUN}, not {count}")
    first = 1 if first is None else first
    check("first", 0 <= first <= 1_000_000_000, "first (the number of the first tag) must be 0..1000000000")
    name = _pattern(tag.get("name"), "name")
    description = tag.get("description")
    if isinstance(description, str) and "{" in description:
        description = _pattern(description, "description", once=False)
    address = tag.get("address")
    if count > 1:
        check("stride", stride is not None, "a run of more than one tag needs `stride`: the address step between tags")
        check(
            "address",
            isinstance(address, int) and not isinstance(address, bool),
            "a run steps an integer `address` by `stride`; set the first tag's address",
        )
    check("stride", stride is None or stride >= 1, "stride must be at least 1 (tags of a run must not overlap)")
    base = {k: v for k, v in tag.items() if k not in RUN_KEYS}
    out: list[dict[str, Any]] = []
    for n in range(count):
        one = dict(base, name=_fill(name, first + n))
        if isinstance(description, str):
            one["description"] = _fill(description, first + n)
        if stride is not None and isinstance(address, int):
            one["address"] = address + n * stride
        out.append(one)
    return out
