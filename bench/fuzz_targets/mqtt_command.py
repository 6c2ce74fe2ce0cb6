"""MQTT setpoint command payloads (docs/commands.md): decode_command answers anything with a
problem text, so no exception is accepted."""

from __future__ import annotations

from uplink.mqtt import decode_command

ACCEPTS: tuple[type[BaseException], ...] = ()
_PREFIX = "edged/gw/replies/"


def target(data: bytes) -> None:
    d = decode_command(data, "mqtt", reply_prefix=_PREFIX, max_bytes=8192)
    assert (d.code is None) == (d.problem is None), "a refusal has a code and says why"
    assert d.problem is None or d.problem
    assert d.reply_to is None or d.reply_to.startswith(_PREFIX), "replies only under the prefix"
    if d.problem is None:
        assert d.cmd.id and d.cmd.tag
        assert 0 < d.cmd.ts_ns < 2**63


def seeds() -> list[bytes]:
    return [
        b'{"id": "c1", "tag": "boiler/setpoint", "value": 42.5, "ts": "2026-01-01T00:00:00Z", "user": "op"}',
        b'{"id": "c2", "tag": "pump/run", "value": true, "ts": 1767225600000, "reply_to": "edged/gw/replies/a"}',
        b'{"id": "c3", "tag": "x", "value": "on", "ts": "2026-01-01T00:00:00+01:00"}',
        b"[1, 2]",
    ]
