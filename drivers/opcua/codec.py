"""What the server sends, as a Sample's parts: its time, its value and the score of its status."""

from __future__ import annotations

import datetime as dt
import uuid

from asyncua import ua

from edged.model import Severity, Value, severity
from edged.protocols.opcua.values import datetime_ns

_INT64 = range(-(2**63), 2**63)


def sample_ts(dv: ua.DataValue, received_ns: int) -> int:
    """Source timestamp, else the server's, else when we received it (a year <= 1601 is OPC UA's 'unset')."""
    for t in (dv.SourceTimestamp, dv.ServerTimestamp):
        if t is not None and t.year > 1601:
            return datetime_ns(t)
    return received_ns


def to_value(v: object) -> tuple[Value, bool]:
    """A Variant's value as a Sample value; False for what a Sample cannot hold (arrays, structures)."""
    if v is None or isinstance(v, bool | str | float):
        return v, True
    if isinstance(v, int):
        return (int(v), True) if v in _INT64 else (float(v), True)
    if isinstance(v, dt.datetime):
        return v.isoformat(), True
    if isinstance(v, ua.LocalizedText):
        return v.Text, True
    if isinstance(v, ua.NodeId | ua.QualifiedName):
        return v.to_string(), True
    if isinstance(v, ua.StatusCode):
        return v.value, True
    if isinstance(v, uuid.UUID):
        return str(v), True
    if isinstance(v, bytes | bytearray):
        return bytes(v).hex(), True
    return None, False


def score_for(status: int) -> int:
    sev = severity(status)
    return 100 if sev == Severity.GOOD else 60 if sev == Severity.UNCERTAIN else 0
