"""Sparkplug NCMD/DCMD payloads (protobuf) and primary host STATE messages, through the uplink's own
handlers.

The handlers are coroutines that never suspend for these inputs (no command gate, not born), so
they are driven with one `send(None)`: no event loop per input."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from edged.plugin import PluginContext
from uplink.sparkplug import Config, Uplink
from uplink.sparkplug import sparkplug_b_pb2 as pb

ACCEPTS: tuple[type[BaseException], ...] = ()
_TAGS = ("dev/setpoint", "dev/run", "dev/name", "other/level", "node_metric")

_log = logging.getLogger("fuzz.sparkplug")
_log.disabled = True
_DIR = Path(tempfile.gettempdir())


def _uplink() -> Uplink:
    cfg = Config(name="sp", type="sparkplug", group_id="plant", primary_host_id="scada")
    up = Uplink(cfg, PluginContext("gw", _DIR, _log))
    for tag in _TAGS:
        up.registry.metric(tag)
    return up


_UP = _uplink()


def _drive(coro: Coroutine[Any, Any, None]) -> None:
    try:
        coro.send(None)
    except StopIteration:
        return
    coro.close()
    raise AssertionError("the handler waited, though nothing here should make it")


def target(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0] % 3, data[1:]
    if mode == 2:
        _drive(_UP.session.on_state(None, body))  # type: ignore[arg-type]
        return
    device = "dev" if mode == 1 else None
    _drive(_UP.commands.on_cmd(None, device, body, retained=False))  # type: ignore[arg-type]
    try:
        p = pb.Payload.FromString(body)
    except Exception:  # protobuf's DecodeError; on_cmd refuses these (checked above)
        return
    for i, m in enumerate(p.metrics):  # what each write would become at the gate
        cmd, refusal = _UP.commands.command(device, p, i, m)
        assert refusal is None or refusal[1], "a refusal says why"
        assert cmd.ts_ns >= 0


def seeds() -> list[bytes]:
    out = [b"\x02" + b'{"online": true, "timestamp": 1767225600000}', b"\x02ONLINE", b"\x02OFFLINE"]
    p = pb.Payload(timestamp=1767225600000, seq=0)
    m = p.metrics.add()
    m.name, m.datatype, m.double_value = "setpoint", pb.Double, 42.5
    m = p.metrics.add()
    m.alias, m.datatype, m.long_value = 2, pb.Int32, 2**64 - 1
    m = p.metrics.add()
    m.name, m.float_value = "run", 0.1
    out.append(b"\x01" + p.SerializeToString())
    n = pb.Payload(timestamp=1767225600000)
    m = n.metrics.add()
    m.name, m.boolean_value = "Node Control/Rebirth", True
    m = n.metrics.add()
    m.name, m.string_value = "node_metric", "x"
    out.append(b"\x00" + n.SerializeToString())
    return out
