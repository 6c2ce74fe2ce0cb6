"""asyncua structs and OPC UA times from and to plain Python values."""

from __future__ import annotations

import datetime as dt
from typing import Any, Final, TypeVar

T = TypeVar("T")

_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def ua_struct(cls: type[T], **fields: Any) -> T:
    """Build an asyncua struct from plain values. asyncua annotates its fields with int/float
    subclasses and a non-bool `Boolean` (UInt32, Duration, Counter, ...) that it never requires at
    run time; this is the one place that bridges its annotations and ordinary Python values."""
    return cls(**fields)


def datetime_ns(t: dt.datetime) -> int:
    """Exact integer ns (no float rounding); OPC UA times are UTC, naive ones included."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    d = t - _EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000_000 + d.microseconds * 1_000


def ns_datetime(ns: int) -> dt.datetime:
    """An edged time (ns since the epoch) as an OPC UA DateTime (µs resolution, truncated)."""
    return _EPOCH + dt.timedelta(microseconds=ns // 1000)
