"""A command's value and timestamp: type checks against the tag's kind, equality that keeps booleans
apart from numbers, `edged write`'s VALUE parsing and the `ts` field's two forms."""

from __future__ import annotations

import datetime as dt
import math
import re
import time
from typing import Literal, TypeGuard

from edged.commands.model import INT64, cut
from edged.model import Value

Kind = Literal["number", "bool", "string"]


def type_problem(tag: str, value: object, kind: Kind | None) -> str | None:
    """Why `value` cannot be written to `tag` (of `kind`, None: whatever the device holds), or None."""
    if value is None or not isinstance(value, bool | int | float | str):
        return f"value {value!r} is not a number, a boolean or a string"
    if isinstance(value, float) and not math.isfinite(value):
        return f"value {value!r} is not a finite number"
    if kind == "number" and not is_number(value):
        return f"{tag} takes a number, not {value!r}"
    if kind == "bool" and not isinstance(value, bool):
        return f"{tag} takes a boolean (true/false), not {value!r}"
    if kind == "string" and not isinstance(value, str):
        return f"{tag} takes a string, not {value!r}"
    return None


def same_value(a: object, b: object) -> bool:
    """Equality that keeps True apart from 1 (Python's `True == 1` would let a bool pass for a number)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def is_number(v: object) -> TypeGuard[int | float]:
    """An int or float, never a bool (a bool is an int to Python)."""
    return isinstance(v, int | float) and not isinstance(v, bool)


def parse_value(text: str, kind: Kind | None) -> Value:
    """A command line VALUE as the tag's kind: 'true'/'on'/'1' for booleans; numbers; strings as typed."""
    t = text.strip()
    low = t.lower()
    if kind == "string":
        return text
    if kind == "bool" or (kind is None and low in ("true", "false")):
        if low in ("true", "on", "1"):
            return True
        if low in ("false", "off", "0"):
            return False
        raise ValueError(f"{text!r} is not a boolean: use true or false")
    if re.fullmatch(r"[+-]?\d+", t):
        return int(t)
    try:
        number = float(t)
    except ValueError:
        if kind == "number":
            raise ValueError(f"{text!r} is not a number") from None
        return text
    if not math.isfinite(number):
        raise ValueError(f"{text!r} is not a finite number")
    return number


_MIN_MS = 10**11  # 1973 in unix ms: anything smaller is almost certainly seconds, not milliseconds
_MAX_MS = (INT64 - 1) // 1_000_000  # 2262: the last millisecond a 64-bit nanosecond count holds


def timestamp_ns(value: object) -> int:
    """A command's `ts`: unix milliseconds (number) or ISO 8601 with a time zone, 1973..2262 (what
    a 64-bit nanosecond count, and so SQLite, holds)."""
    if is_number(value):
        if not math.isfinite(value) or not _MIN_MS <= value <= _MAX_MS:
            raise ValueError(f"ts {cut(repr(value), 40)} is not unix milliseconds (e.g. {time.time_ns() // 1_000_000})")
        return int(value * 1_000_000)
    if isinstance(value, str):
        text = cut(value, 40)
        try:
            t = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"ts {text!r} is not ISO 8601 (e.g. 2026-11-24T06:00:00Z)") from None
        if t.tzinfo is None:
            raise ValueError(f"ts {text!r} has no time zone: add Z (UTC) or an offset such as +01:00")
        try:
            seconds = int(t.timestamp())
        except (OverflowError, ValueError):
            seconds = -1
        ns = seconds * 1_000_000_000 + t.microsecond * 1000
        if not _MIN_MS * 1_000_000 <= ns <= _MAX_MS * 1_000_000:
            raise ValueError(f"ts {text!r} is outside 1973..2262")
        return ns
    raise ValueError("ts must be unix milliseconds or an ISO 8601 string")
