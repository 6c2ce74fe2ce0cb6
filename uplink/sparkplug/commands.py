"""NCMD and DCMD: Node Control (Rebirth) and setpoint writes, each through the daemon's command gate.

Sparkplug authenticates no sender, so the node takes as little as it can: payloads above
`max_command_bytes` are dropped undecoded, only device metrics announced in a birth are writable,
writes only while the primary host is online (`commands_require_primary_host`), and a command's id
is derived from the message, so a replay is a duplicate for the gate. Handlers run as tasks beside
the listener, never under the publish lock; an accepted write is answered by a DDATA read-back.

An alarm metric (`<tag>#alarm/<name>`, String, in the DBIRTH) takes "ack", "shelve 1h" or
"unshelve" the same way: the gate (edged.alarms) decides and audits; the answer is the alarm event
the engine stores, which comes as the metric's next DDATA like every event (no read-back).
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
from collections.abc import Iterable

from edged.alarms.config import is_alarm_path
from edged.commands import Command, CommandGate, CommandResult, new_id
from edged.errors import Transient
from edged.model import Sample, Status, Value
from edged.plugin import PluginContext
from edged.protocols import mqtt
from uplink.sparkplug import sparkplug_b_pb2 as pb
from uplink.sparkplug.config import Config
from uplink.sparkplug.metrics import BDSEQ, GAP_KEY, GAP_METRIC, REBIRTH, Registry, split_tag
from uplink.sparkplug.session import REPORT_S, Burst, Session

NODE_CONTROL = "Node Control/"
_CMD_RUNNING = 4  # commands at the gate at once (it serialises the writes per device anyway)
_CMD_WAITING = 64  # commands received and not finished; beyond it the listener waits (a flood)
_CMD_DRAIN_S = 5.0  # a closing session waits this long at most for writes already at the gate
_MAX_TS_MS = (2**63 - 1) // 1_000_000  # year 2262: the most an int64 of nanoseconds (SQLite, Sample) holds
_MAX_STRING = 1024  # characters of a string command value; a longer one is refused
_SHOWN = 64  # characters of an overlong value or name kept in log lines and the audit trail
_SCALAR_VALUES = {"int_value", "long_value", "float_value", "double_value", "boolean_value", "string_value"}
_UNSIGNED = {pb.UInt8, pb.UInt16, pb.UInt32, pb.UInt64}


def _float32(v: float) -> float:
    """A Float metric's value as the shortest decimal with the same 32 bits: the 0.1 the operator
    typed, not the 0.10000000149011612 that float32 holds."""
    for digits in range(1, 10):  # 9 significant digits always round-trip a float32
        shorter = float(f"{v:.{digits}g}")
        try:
            if struct.unpack("<f", struct.pack("<f", shorter))[0] == v:
                return shorter
        except OverflowError:  # near FLT_MAX the rounded decimal is beyond float32: keep looking
            continue
    return v


def command_value(m: pb.Payload.Metric, datatype: int) -> tuple[Value, str | None]:
    """(value, problem) of a CMD metric. Integers travel as unsigned protobuf fields holding two's
    complement: the metric's datatype (else `datatype`, the birth's) says whether to read them signed."""
    which = m.WhichOneof("value")
    if m.is_null:
        return None, "the value is null"
    if which is None:
        return None, "the metric has no value"
    if which not in _SCALAR_VALUES:
        return None, f"{which.removesuffix('_value')} values are not supported (a number, a boolean or a string)"
    value: Value = getattr(m, which)
    kind = m.datatype if m.HasField("datatype") else datatype
    if which == "int_value" and kind not in _UNSIGNED:
        assert isinstance(value, int)
        value = value - 2**32 if value >= 2**31 else value
    elif which == "long_value" and kind not in _UNSIGNED:
        assert isinstance(value, int)
        value = value - 2**64 if value >= 2**63 else value
    elif which == "float_value":
        assert isinstance(value, float)
        value = _float32(value)
    elif which == "string_value" and isinstance(value, str) and len(value) > _MAX_STRING:
        return _clip(value), f"a string of {len(value)} characters (at most {_MAX_STRING})"
    return value, None


def _clip(text: str) -> str:
    """An overlong name or value as kept in log lines and the audit trail."""
    return text if len(text) <= _SHOWN else f"{text[:_SHOWN]}... ({len(text)} characters)"


def _name(m: pb.Payload.Metric) -> str | None:
    """A CMD metric's name; None when it is not UTF-8 (the protobuf runtime then hands out bytes)."""
    name: object = m.name
    return name if isinstance(name, str) else None


def _raw_name(m: pb.Payload.Metric) -> bytes:
    name: object = m.name
    return name if isinstance(name, bytes) else str(name).encode()


def _label(m: pb.Payload.Metric) -> str:
    """How a CMD metric is named in log lines and refusals."""
    name = _name(m)
    if name is None:
        return f"name {_raw_name(m)[:_SHOWN]!r} (not UTF-8)"
    return repr(_clip(name)) if name else f"alias {m.alias}"


def command_id(device: str | None, p: pb.Payload, index: int, m: pb.Payload.Metric) -> str:
    """A CMD metric's command id, from the payload's timestamp, the device, the metric's position and
    the metric itself (name or alias, timestamp, value): a replayed message gives the same ids, so the
    gate refuses it as a duplicate (by source and id); `seq` cannot tell commands apart (it wraps at 256)."""
    digest = hashlib.blake2b(f"{device or ''}\0{index}\0".encode() + m.SerializeToString(), digest_size=8)
    ts = m.timestamp if m.HasField("timestamp") else "-"
    return f"spb-{p.timestamp}-{ts}-{digest.hexdigest()}"


class Commands:
    """The NCMD/DCMD side of one session. `gate` None: every write is refused (with a log line)."""

    def __init__(self, config: Config, ctx: PluginContext, registry: Registry, session: Session) -> None:
        self.config = config
        self.log = ctx.log
        self._gate: CommandGate | None = ctx.commands
        self._registry = registry
        self._session = session
        self._cmd_running = asyncio.Semaphore(_CMD_RUNNING)
        self._cmd_waiting = asyncio.Semaphore(_CMD_WAITING)
        self.running: set[asyncio.Task[None]] = set()  # handlers not finished yet
        # DCMD subscribed: the gate lets this uplink write some tag, or act on alarms ([alarms] sources)
        alarms = ctx.config.alarms if ctx.config is not None else None
        acks = alarms is not None and bool(alarms.tags) and config.name in alarms.sources
        gate = self._gate
        self.dcmd = gate is not None and (bool(gate.tags_for(config.name)) or (acks and gate.enabled))
        self.oversized = Burst()
        self.bad_metrics = 0  # CMD metrics refused as malformed (unreadable names, values, timestamps)

    async def on_cmd(self, tg: asyncio.TaskGroup, device: str | None, raw: object, retained: bool) -> None:
        """An NCMD (device None) or DCMD: Node Control first, then one gated write per other metric.

        Sparkplug authenticates nobody, so an oversized payload is dropped before it is decoded or
        anything is stored; a metric that cannot be read is refused on its own, the others stand.
        """
        kind = "DCMD" if device is not None else "NCMD"
        size = len(raw) if isinstance(raw, bytes | bytearray | str) else 0
        if size > self.config.max_command_bytes:
            n = self.oversized.hit()
            if n is not None:
                self.log.warning("uplink %s: %d oversized NCMD/DCMD payload(s) dropped undecoded (latest: %s of %d "
                                 "bytes, max_command_bytes %d); %d in this session, reported at most every %gs",
                                 self.config.name, n, kind, size, self.config.max_command_bytes,
                                 self.oversized.total, REPORT_S)  # fmt: skip
            return
        payload = mqtt.payload_bytes(raw)
        try:
            p = pb.Payload.FromString(payload)
        except Exception as exc:  # protobuf's DecodeError, whose module differs between runtimes
            if self._gate is None:
                self.log.warning("uplink %s: undecodable %s ignored: %s", self.config.name, kind, exc)
            else:  # logged and recorded by the gate, like any malformed command
                what = Command(new_id(), self.config.name, self.config.primary_host_id or None, "", None, 0)
                await self._spawn(tg, self._gate, what, ("malformed", f"undecodable {kind} payload: {exc}"))
            return
        metrics = list(p.metrics) if device is not None else self._node_control(tg, p.metrics)
        if metrics and self._gate is None:
            names = ", ".join(_label(m) for m in metrics)
            self.log.warning("uplink %s: %s write to %s refused: commands are not available here (no command "
                             "gate)", self.config.name, kind, names)  # fmt: skip
            return
        host = self.config.primary_host_id
        host_needed = host is not None and self.config.commands_require_primary_host and not self._session.host_online
        for i, m in enumerate(metrics):
            assert self._gate is not None
            try:
                cmd, refusal = self.command(device, p, i, m)
            except Exception as exc:  # an unreadable metric is refused alone, never the whole message
                cmd = Command(new_id(), self.config.name, host, "", None, 0)
                refusal = ("malformed", f"{kind} metric #{i + 1} cannot be read: {type(exc).__name__}: {exc}")
            if refusal is not None and refusal[0] == "malformed":
                self.bad_metrics += 1
            if retained and refusal is None:
                why = f"retained {kind} refused: a command must not be retained (it would repeat on every subscribe)"
                refusal = ("malformed", why)
            elif host_needed and refusal is None:
                refusal = ("unauthorised", f"primary host {host} is not online: writes are taken only while it is "
                                           "(commands_require_primary_host)")  # fmt: skip
            await self._spawn(tg, self._gate, cmd, refusal)

    def _node_control(self, tg: asyncio.TaskGroup, metrics: Iterable[pb.Payload.Metric]) -> list[pb.Payload.Metric]:
        """Handle `Node Control/Rebirth` (before anything else); the other metrics are writes."""
        writes: list[pb.Payload.Metric] = []
        rebirth = False
        for m in metrics:
            name = _name(m)
            if name == REBIRTH:
                rebirth = rebirth or (m.WhichOneof("value") == "boolean_value" and m.boolean_value)
            elif name is not None and (name.startswith(NODE_CONTROL) or name == BDSEQ):
                self.log.warning("uplink %s: NCMD metric %s not supported, ignored", self.config.name, _label(m))
            else:
                writes.append(m)
        if rebirth:
            self._session.rebirth_requested(tg)
        return writes

    def command(
        self, device: str | None, p: pb.Payload, index: int, m: pb.Payload.Metric
    ) -> tuple[Command, tuple[str, str] | None]:
        """The Command a CMD metric asks for, and (code, reason) when the uplink refuses it itself."""
        c = self.config
        path, refusal = self._resolve(device, m)
        metric = self._registry.metrics.get(path)
        value, problem = command_value(m, metric.datatype if metric is not None else pb.Unknown)
        ts_ms = m.timestamp if m.HasField("timestamp") and m.timestamp else p.timestamp
        if refusal is None and problem is not None:
            refusal = ("malformed", f"{_label(m)}: {problem}")
        if refusal is None and not 0 < ts_ms < _MAX_TS_MS:
            why = "no timestamp (neither the metric nor the payload)" if not ts_ms else f"timestamp {ts_ms}"
            refusal = ("malformed", f"{why}: a command must carry when it was issued, in Unix milliseconds")
        ts_ns = ts_ms * 1_000_000 if 0 < ts_ms < _MAX_TS_MS else 0
        tag = GAP_METRIC if path == GAP_KEY else path
        return Command(command_id(device, p, index, m), c.name, c.primary_host_id or None, tag, value, ts_ns), refusal

    def _resolve(self, device: str | None, m: pb.Payload.Metric) -> tuple[str, tuple[str, str] | None]:
        """The tag path a CMD metric names (by name, else by alias), and why it cannot be written.

        Only metrics this node announced in its births are writable, and only device metrics: every
        tag the command gate can write is `device/tag`, so a node metric (NCMD) never is.
        """
        where = f"device {device}" if device is not None else "the node"
        label = _label(m)
        name = _name(m)
        if name is None:
            return "", ("malformed", f"metric {label}: a name must be UTF-8 text")
        if name:
            path = f"{device}/{name}" if device is not None else GAP_KEY if name == GAP_METRIC else name
        elif m.HasField("alias"):
            path = self._registry.by_alias.get(m.alias, "")
        else:
            return "", ("malformed", "a metric without a name or an alias")
        owner = None if path == GAP_KEY else split_tag(path)[0]
        if path not in self._registry.metrics or owner != device:
            if device is None and owner is not None and path in self._registry.metrics:
                return path, ("unknown_tag", f"{label} is not a node metric: write it with a DCMD to device {owner}")
            return (_clip(path) if name else ""), ("unknown_tag", f"{label} is not a metric of {where} in its birth")
        if device is None:
            return path, ("not_writable", f"{label} is a node metric: only device metrics take writes (DCMD)")
        return path, None

    async def _spawn(
        self, tg: asyncio.TaskGroup, gate: CommandGate, cmd: Command, refusal: tuple[str, str] | None
    ) -> None:
        await self._cmd_waiting.acquire()  # waits only under a flood of commands
        task = tg.create_task(self._run_command(gate, cmd, refusal), name=f"sparkplug:{self.config.name}:command")
        self.running.add(task)
        task.add_done_callback(self.running.discard)

    async def _run_command(self, gate: CommandGate, cmd: Command, refusal: tuple[str, str] | None) -> None:
        """One write through the gate (which logs and audits it); never raises but cancellation."""
        try:
            async with self._cmd_running:
                if refusal is not None:
                    await gate.refuse(cmd, *refusal)
                    return
                result = await gate.submit(cmd)
            if result.ok:
                await self._publish_readback(cmd.tag, result)
        except Exception:
            self.log.exception("uplink %s: command %s for %s failed unexpectedly", self.config.name, cmd.id, cmd.tag)
        finally:
            self._cmd_waiting.release()

    async def _publish_readback(self, path: str, result: CommandResult) -> None:
        """The answer to an accepted write: a DDATA with the device's read-back value right away (the
        next poll carries it too). Skipped while nothing can be published, or when the value does not
        fit the born datatype (the data flow then announces the new type in a rebirth)."""
        m = self._registry.metrics.get(path)
        device = split_tag(path)[0]
        if is_alarm_path(path):
            return  # the alarm event the engine stored is the answer: it comes as the next DDATA
        if m is None or device is None or result.readback is None or not m.fits(result.readback):
            return
        s = Sample(path, result.ts_ns, result.readback, Status.GOOD, 100, m.unit)
        try:
            async with self._session.lock:
                if not self._session.born or self._session.dead is not None or not self._session.host_online:
                    return
                payload, current = self._registry.data([s])
                await self._session.publish(self._session.device_topic("DDATA", device), payload, self.config.data_qos)
                self._registry.hold(current)
        except Transient as exc:  # the session is dead now; the Sender starts a new one
            self.log.warning("uplink %s: read-back of %s not published: %s", self.config.name, path, exc)

    async def drain(self) -> None:
        """Let writes already at the gate finish when the session ends (bounded), so the audit
        records what the device did rather than an interrupted write."""
        running = [t for t in self.running if not t.done()]
        if running and self._gate is not None:
            await asyncio.wait(running, timeout=min(_CMD_DRAIN_S, float(self._gate.config.timeout)))
