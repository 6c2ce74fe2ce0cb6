"""`edged export --audit`: the audit trail as CSV or JSON lines, times as ISO 8601 UTC."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec


class AuditExport(msgspec.Struct):
    id: int
    received: str
    source: str
    user: str | None
    cmd_id: str | None
    tag: str | None
    value: Any
    command_ts: str | None
    old: Any
    written: str | None  # when the write went to the device; empty: it never did
    result: str  # accepted | rejected | failed | readback_mismatch | in_flight (no outcome recorded)
    code: str | None
    reason: str | None
    readback: Any
    finished: str | None


def _iso(ns: int | None) -> str | None:
    if ns is None:
        return None
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def export_audit(rows: list[Any], out: Any, fmt: str) -> int:
    """The audit trail as CSV (values as JSON, so true, 1 and "1" stay apart) or JSON lines."""
    import csv

    records = [
        AuditExport(
            r.id,
            _iso(r.received_ns) or "",
            r.source,
            r.user,
            r.cmd_id,
            r.tag,
            r.value,
            _iso(r.cmd_ts_ns),
            r.old,
            _iso(r.written_ns),
            r.result or "in_flight",
            r.code,
            r.reason,
            r.readback,
            _iso(r.finished_ns),
        )
        for r in rows
    ]
    if fmt == "csv":
        w = csv.writer(out)
        w.writerow(AuditExport.__struct_fields__)
        for rec in records:
            row = msgspec.structs.astuple(rec)
            w.writerow(
                [
                    msgspec.json.encode(v).decode() if name in ("value", "old", "readback") and v is not None else v
                    for name, v in zip(AuditExport.__struct_fields__, row, strict=True)
                ]
            )
    else:
        for rec in records:
            out.write(msgspec.json.encode(rec).decode() + "\n")
    return len(records)
