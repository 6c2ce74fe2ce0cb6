"""MQTT setpoint command payloads (docs/commands.md): decode_command answers anything with a
problem text, so no exception is accepted. Another engineer owns this path: crashes are reported."""

from __future__ import annotations

from uplink.mqtt import decode_command

ACCEPTS: tuple[type[BaseException], ...] = ()
_TOPIC = "edged/gw/cmd"


def target(data: bytes) -> None:
    cmd, reply_to, problem = decode_command(data, "mqtt", _TOPIC)
    assert problem is None or problem, "a refusal says why"
    assert reply_to is None or reply_to != _TOPIC
    if problem is None:
        assert cmd.id and cmd.tag


def seeds() -> list[bytes]:
    return [
        b'{"id": "c1", "tag": "boiler/setpoint", "value": 42.5, "ts": "2026-01-01T00:00:00Z", "user": "op"}',
        b'{"id": "c2", "tag": "pump/run", "value": true, "ts": 1767225600000, "reply_to": "plant/replies"}',
        b'{"id": "c3", "tag": "x", "value": "on", "ts": "2026-01-01T00:00:00+01:00"}',
        b"[1, 2]",
    ]
