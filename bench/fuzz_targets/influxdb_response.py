"""What an InfluxDB server answers a write: status and body (its `{"error": ...}` message), through
the influxdb uplink's error parsing and its narrowing down of a partly refused batch.

Input layout: 2 bytes status, then the body. Every request of the send gets that same answer (the
most hostile server: narrowing must still end), over httpx's MockTransport."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx

from edged.errors import Partial, Permanent, Transient
from edged.model import Batch, Sample
from edged.plugin import PluginContext
from uplink.influxdb import Config, Uplink

ACCEPTS = (Partial, Permanent, Transient)
_log = logging.getLogger("fuzz.influxdb")
_log.disabled = True
_CFG = Config(name="i", type="influxdb", url="http://127.0.0.1:1", database="db", retry_for=0.0, integers="integer")  # type: ignore[arg-type]
_BATCH = Batch("gw", 1, 6, False, [Sample(f"dev/t{i}", i, i if i % 2 else i + 0.5) for i in range(6)])


async def _send(status: int, body: bytes) -> Uplink:
    up = Uplink(_CFG, PluginContext("gw", Path("."), _log))
    up._client = httpx.AsyncClient(transport=httpx.MockTransport(lambda req: httpx.Response(status, content=body)))
    try:
        await up.send(_BATCH)
    finally:
        await up._client.aclose()
    return up


def _check_split(exc: Partial) -> None:
    """Refused and accepted samples partition the batch, with at least one refused."""
    assert exc.rejected and set(exc.accepted).isdisjoint(exc.rejected)
    assert sorted([*exc.accepted, *exc.rejected]) == list(range(len(_BATCH.samples)))


def target(data: bytes) -> None:
    status = 100 + int.from_bytes(data[:2], "big") % 500
    try:
        up = asyncio.run(_send(status, data[2:]))
    except Partial as exc:
        _check_split(exc)
        raise
    assert up.narrowing < 2 * len(_BATCH.samples)


def _status(code: int) -> bytes:
    return (code - 100).to_bytes(2, "big")


def seeds() -> list[bytes]:
    return [
        _status(204),
        _status(400) + b'{"error":"unable to parse \'dev,gateway=gw,tag=t1 value=1i,score=100i,status=0i 1\': bad"}',
        _status(400) + b'{"error":"partial write: points beyond retention policy dropped=2"}',
        _status(400) + b'{"error":"partial write: field type conflict: input field \\"value\\" on measurement '
        b'\\"dev\\" is type integer, already exists as type float dropped=3"}',
        _status(400) + b"<html>proxy</html>",
        _status(413) + b'{"error":"Request Entity Too Large"}',
        _status(401) + b'{"error":"authorization failed"}',
    ]
