"""What an HTTP endpoint answers a batch: status, headers (Retry-After, Location, Content-Type) and
body, through the uplink's classification, Retry-After parsing and 2xx acknowledgement decoding.

Input layout: 2 bytes status, then header lines `name: value` up to an empty line, then the body.
Headers are kept only as h11 would deliver them (token names, no control characters in values)."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import httpx

from edged.errors import Partial, Permanent, Transient
from edged.model import Batch, Sample
from edged.plugin import PluginContext
from uplink.http import Config, Uplink, _body_excerpt, _retry_after, _status_error

ACCEPTS = (Partial,)  # a 2xx that refuses some samples
_URL = "http://127.0.0.1:1/ingest"
_NAME = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_VALUE = re.compile(rb"[\x21-\x7e\x80-\xff]([\x20-\x7e\x80-\xff\t]*[\x21-\x7e\x80-\xff])?|")

_log = logging.getLogger("fuzz.http")
_log.disabled = True
_UP = Uplink(Config(name="h", type="http", url=_URL), PluginContext("gw", Path("."), _log))  # type: ignore[arg-type]
_BATCH = Batch("gw", 1, 5, False, [Sample(f"dev/t{i}", 0, i) for i in range(5)])


def _response(data: bytes) -> httpx.Response:
    status = 100 + int.from_bytes(data[:2], "big") % 500
    head, _, body = data[2:].partition(b"\n\n")
    headers = []
    for line in head.split(b"\n"):
        name, sep, value = line.partition(b":")
        value = value.strip(b" \t")
        if sep and _NAME.fullmatch(name) and _VALUE.fullmatch(value):
            headers.append((name, value))
    return httpx.Response(status, headers=headers, content=body, request=httpx.Request("POST", _URL))


def _check_split(exc: Partial) -> None:
    """Refused and accepted samples partition the batch, with at least one refused."""
    assert exc.rejected and set(exc.accepted).isdisjoint(exc.rejected)
    assert sorted([*exc.accepted, *exc.rejected]) == list(range(len(_BATCH.samples)))


def target(data: bytes) -> None:
    resp = _response(data)
    wait = _retry_after(resp, time.time())
    assert wait is None or 0.0 <= wait <= 3600.0, f"Retry-After read as {wait}"
    assert len(_body_excerpt(resp)) <= 1003
    if resp.is_success:
        try:
            _UP._check_partial(resp, _BATCH)
        except Partial as exc:
            _check_split(exc)
            raise
        return
    err = _status_error(resp, _URL)
    assert isinstance(err, Transient | Permanent) and str(err)


def _status(code: int) -> bytes:
    return (code - 100).to_bytes(2, "big")


def seeds() -> list[bytes]:
    return [
        _status(503) + b"Retry-After: 120\n\nbusy",
        _status(429) + b"Retry-After: Wed, 21 Oct 2015 07:28:00 GMT\n\n",
        _status(503) + "Retry-After: ²\n\n".encode(),
        _status(200) + b'Content-Type: application/json\n\n{"rejected": [0, 3], "message": "no"}',
        _status(301) + b"Location: https://elsewhere/ingest\n\n",
        _status(422) + b"Content-Type: text/plain; charset=utf-8\n\nunknown tag",
        _status(503) + b"Content-Type: text/plain; charset=latin-1\n\nWartung \xfc",
    ]
