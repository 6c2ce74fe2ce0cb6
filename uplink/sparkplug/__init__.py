"""MQTT Sparkplug B edge node (Sparkplug 3.0): the gateway is one edge node, its devices are Sparkplug devices.

One connection is one Sparkplug session: CONNECT with the NDEATH as Will (carrying a bdSeq persisted
across restarts), subscribe to NCMD and the primary host's STATE, wait until that host is online,
NBIRTH (seq 0) and one DBIRTH per device, then NDATA/DDATA by alias. `send` acknowledges a batch once
its DATA messages are published. While the host is offline or the broker is gone the batch raises
Transient and stays in the buffer; after the next birth it comes back as historical batches, sent
with `is_historical = true` on every metric. Topics, metrics and persisted files: README.md.

Writes: DCMD metrics (and NCMD metrics other than Node Control) are setpoint commands. Each goes
through the daemon's command gate (edged.commands: allow-list, limits, staleness, duplicates, audit),
which is closed without one. Sparkplug authenticates no sender, so the node takes as little as it can:
DCMD is subscribed only when the gate lets this uplink write some tag, writes only while the primary
host is online, payloads above `max_command_bytes` are dropped undecoded, and Rebirth requests are
rate-limited. A command's id is derived from its timestamps and metric, so a replayed DCMD is a
duplicate for the gate. The command handlers run beside the listener, never under the publish lock,
so STATE and rebirth handling never wait on a device. Sparkplug has no reply channel: an accepted
write is answered by a DDATA carrying the read-back value; every outcome is in the gate's log and audit.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import re
import socket
import ssl
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Self

import aiomqtt
import msgspec
from aiomqtt.exceptions import MqttConnectError

from edged.aio import honour_cancel
from edged.commands import Command, CommandGate, CommandResult, new_id
from edged.config import Config as DaemonConfig
from edged.config import Duration, Secret, UplinkBase, tag_matcher
from edged.errors import EdgedError, Permanent, Transient
from edged.model import Batch, Gap, Sample, Status, Value, severity
from edged.plugin import PluginContext, UplinkSpec
from edged.tls import client_context
from uplink.sparkplug import sparkplug_b_pb2 as pb

NAMESPACE = "spBv1.0"
REBIRTH = "Node Control/Rebirth"
BDSEQ = "bdSeq"
GAP_METRIC = "edged/gap"  # node metric: samples retention deleted before delivery (README)
_GAP_KEY = "@node/edged/gap"  # its key among tag paths; "@" cannot start a tag name
_ID_BAD = re.compile(r"[/+#]")
_INT64 = (-(2**63), 2**63 - 1)
_U64 = 0xFFFF_FFFF_FFFF_FFFF
_U32 = 0xFFFF_FFFF
# Quality property values by severity (Good, Uncertain, Bad). "opc_da" is the classic Sparkplug/Tahu
# convention; Ignition 8 reads its own QualityCode, where 0 would mean Good_Unspecified.
_QUALITY_CODES = {"opc_da": (192, 64, 0), "ignition8": (192, 0x40000100, 0x80000200)}
# CONNACK codes that retrying will not fix (MQTT 3.1.1 and the MQTT 5 reason codes paho maps them to).
_PERMANENT_CONNACK = {1, 2, 4, 5, 0x84, 0x85, 0x86, 0x87, 0x8A, 0x8C}
NODE_CONTROL = "Node Control/"
_CMD_RUNNING = 4  # commands at the gate at once (it serialises the writes per device anyway)
_CMD_WAITING = 64  # commands received and not finished; beyond it the listener waits (a flood)
_CMD_DRAIN_S = 5.0  # a closing session waits this long at most for writes already at the gate
_MAX_TS_MS = (2**63 - 1) // 1_000_000  # year 2262: the most an int64 of nanoseconds (SQLite, Sample) holds
_MAX_STRING = 1024  # characters of a string command value; a longer one is refused
_SHOWN = 64  # characters of an overlong value or name kept in log lines and the audit trail
_REPORT_S = 60.0  # a recurring problem (oversized payloads, rebirth floods) is logged at most this often
_SCALAR_VALUES = {"int_value", "long_value", "float_value", "double_value", "boolean_value", "string_value"}
_UNSIGNED = {pb.UInt8, pb.UInt16, pb.UInt32, pb.UInt64}


def _check_id(what: str, value: str) -> None:
    if not value or _ID_BAD.search(value):
        raise ValueError(f"{what} {value!r} must be non-empty without '/', '+' or '#'")


class Config(UplinkBase, kw_only=True):
    group_id: str
    edge_node_id: str | None = None  # default: the gateway id
    primary_host_id: str | None = None  # publish only while spBv1.0/STATE/<id> says online
    host: str = "127.0.0.1"
    port: int | None = None  # 1883, or 8883 with TLS
    client_id: str | None = None  # default: edged-<gateway>-<uplink>
    username: str | None = None
    password: Secret | None = None
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    key_password: Secret | None = None
    tls_insecure_skip_verify: bool = False
    data_qos: Literal[0, 1] = 0  # Sparkplug says 0 for NDATA/DDATA; 1 waits for the broker's PUBACK
    quality_codes: Literal["opc_da", "ignition8"] = "opc_da"
    keepalive: Duration = Duration(30.0)
    timeout: Duration = Duration(10.0)
    max_command_bytes: int = 65536  # a larger NCMD/DCMD payload is dropped before it is decoded
    commands_require_primary_host: bool = True  # with primary_host_id: writes only while it is online
    rebirth_min_interval: Duration = Duration(5.0)  # Rebirth NCMDs closer together are coalesced; 0: off

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_command_bytes < 256:
            raise ValueError(f"max_command_bytes {self.max_command_bytes} is below 256")
        if self.rebirth_min_interval < 0:
            raise ValueError("rebirth_min_interval must not be negative")
        _check_id("group_id", self.group_id)
        if self.edge_node_id is not None:
            _check_id("edge_node_id", self.edge_node_id)
        if self.primary_host_id is not None:
            _check_id("primary_host_id", self.primary_host_id)
        if self.port is not None and not 0 < self.port < 65536:
            raise ValueError(f"port {self.port} out of range")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if (self.cert_file or self.ca_file or self.tls_insecure_skip_verify) and not self.tls:
            raise ValueError("TLS options are set but tls = false")


# ----------------------------------------------------------------------------------------- metrics


@dataclass(slots=True)
class Metric:
    """One Sparkplug metric: an edged tag (or edged's own gap metric) under a node or device."""

    name: str  # within the node or device
    alias: int
    datatype: int  # pb.DataType; fixed until the next birth
    unit: str | None = None
    last: Sample | None = None  # the newest sample seen, for the value in births
    typed: bool = False  # datatype learnt from a value (not the Double default of a configured tag)
    mixed: bool = False  # values of incompatible types: String from then on, so no rebirth per flip

    def fits(self, value: Value) -> bool:
        return value is None or self.mixed or fits(self.datatype, value)

    def retype(self, value: Value) -> None:
        """First value, or Int64 widening to Double: take the value's type; any other clash: String."""
        new = datatype_of(value)
        if new is None:
            return
        if not self.typed or (self.datatype == pb.Int64 and new == pb.Double):
            self.datatype = new
        else:
            self.datatype, self.mixed = pb.String, True
        self.typed = True


class _State(msgspec.Struct):
    """What survives a reconnect or restart: aliases (stable names -> numbers) and last values."""

    aliases: dict[str, int] = {}
    last: list[Sample] = []


class _HostState(msgspec.Struct):
    online: bool
    timestamp: int | None = None


def split_tag(tag: str) -> tuple[str | None, str]:
    """`device/metric...` -> (device, metric); a tag without '/' is a node metric."""
    device, sep, name = tag.partition("/")
    return (device, name) if sep and name else (None, tag)


def datatype_of(value: Value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return pb.Boolean
    if isinstance(value, int):
        return pb.Int64 if _INT64[0] <= value <= _INT64[1] else pb.Double
    if isinstance(value, float):
        return pb.Double
    return pb.String


def fits(datatype: int, value: Value) -> bool:
    """Whether a value can be published under a metric's birth datatype without a rebirth."""
    if value is None:
        return True
    if datatype == pb.Double:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return datatype_of(value) == datatype


def _set_value(m: pb.Payload.Metric, datatype: int, value: Value) -> None:
    if value is None:
        m.is_null = True
    elif datatype == pb.Boolean:
        m.boolean_value = bool(value)
    elif datatype == pb.Int64:
        m.long_value = int(value) & _U64  # two's complement, as Sparkplug carries signed integers
    elif datatype == pb.Double:
        m.double_value = float(value)
    else:
        m.string_value = str(value)


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


@dataclass(slots=True)
class _Burst:
    """Counts a recurring problem and says when to log it: the first time, then at most once per
    `_REPORT_S` with how many there were meanwhile, so a flood costs one log line, not one per message."""

    total: int = 0
    unreported: int = 0
    reported_at: float = -math.inf

    def hit(self) -> int | None:
        """Count one; the number to report when a log line is due, else None."""
        self.total += 1
        self.unreported += 1
        now = time.monotonic()
        if now - self.reported_at < _REPORT_S:
            return None
        self.reported_at, n, self.unreported = now, self.unreported, 0
        return n


def _bytes(raw: object) -> bytes:
    """An MQTT message's payload as bytes (aiomqtt hands out bytes, or str/int/float/None)."""
    return bytes(raw) if isinstance(raw, bytes | bytearray) else str(raw or "").encode()


def _ms(ts_ns: int) -> int:
    return ts_ns // 1_000_000


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _write_atomic(path: Path, data: bytes, *, fsync: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)


def _mqtt_error(exc: Exception, host: str) -> EdgedError:
    """aiomqtt/paho/socket errors -> Transient, except a CONNACK refusal retrying will not fix."""
    if isinstance(exc, MqttConnectError):
        code = getattr(exc.rc, "value", exc.rc)
        if code in _PERMANENT_CONNACK:
            return Permanent(f"broker {host} refused the connection: {exc}")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return Permanent(f"TLS certificate verification failed for {host}: {exc.verify_message}")
    return Transient(f"MQTT {host}: {type(exc).__name__}: {exc}")


# ----------------------------------------------------------------------------------------- uplink


class Uplink:
    """One Sparkplug session per instance; the Sender makes a new one after each failure."""

    def __init__(self, config: Config, ctx: PluginContext) -> None:
        self.config = config
        self.log = ctx.log
        self.gateway = ctx.gateway_id
        self.node_id = config.edge_node_id or ctx.gateway_id
        _check_id("edge_node_id", self.node_id)
        self.daemon_config: DaemonConfig | None = ctx.config
        self._gate: CommandGate | None = ctx.commands  # None: every write is refused
        self.bdseq_path = ctx.data_dir / f"sparkplug-{config.name}.bdseq"
        self.state_path = ctx.data_dir / f"sparkplug-{config.name}.state.json"
        self.bdseq = 0
        self.seq = 0  # of the next message in this session
        self.published = 0  # messages published in this session (births included)
        self._keep = tag_matcher(config.tags)
        self._codes = _QUALITY_CODES[config.quality_codes]
        self._metrics: dict[str, Metric] = {}  # by tag path (or _GAP_KEY)
        self._aliases: dict[str, int] = {}
        self._by_alias: dict[int, str] = {}  # alias -> tag path, of the metrics of this session
        self._next_alias = 1
        self._lock = asyncio.Lock()  # one publisher at a time, so seq order is publish order
        self._changed = asyncio.Event()  # host state or session state changed
        self._host_online = config.primary_host_id is None
        self._host_ts: int | None = None
        self._born = False
        self._ndeath_sent = False
        self._dead: str | None = None  # why this session can no longer publish
        self._client: aiomqtt.Client | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._cmd_running = asyncio.Semaphore(_CMD_RUNNING)
        self._cmd_waiting = asyncio.Semaphore(_CMD_WAITING)
        self._commands: set[asyncio.Task[None]] = set()  # handlers not finished yet
        self._dcmd = False  # DCMD subscribed: the gate lets this uplink write some tag
        self._last_birth = -math.inf  # loop time the last birth started
        self._rebirth_wanted = -math.inf  # loop time of the newest Rebirth request
        self._rebirth_pending: asyncio.Task[None] | None = None  # the coalesced answer to a Rebirth flood
        self._rebirth_requests = 0
        self._rebirths_coalesced = _Burst()
        self._oversized = _Burst()
        self._bad_metrics = 0  # CMD metrics refused as malformed (unreadable names, values, timestamps)
        base = f"{NAMESPACE}/{config.group_id}"
        self._topic = {k: f"{base}/{k}/{self.node_id}" for k in ("NBIRTH", "NDEATH", "NDATA", "NCMD")}
        self._topic["DCMD"] = f"{base}/DCMD/{self.node_id}/+"
        self._state_topic = f"{NAMESPACE}/STATE/{config.primary_host_id}" if config.primary_host_id else None

    def _device_topic(self, kind: str, device: str) -> str:
        return f"{NAMESPACE}/{self.config.group_id}/{kind}/{self.node_id}/{device}"

    # ------------------------------------------------------------------ persisted state

    def _advance_bdseq(self) -> int:
        """The next bdSeq (0..255, +1 per CONNECT), written to disk before it is used."""
        try:
            last = int(self.bdseq_path.read_text().strip())
            nxt = (last + 1) % 256 if 0 <= last <= 255 else 0
        except FileNotFoundError:
            nxt = 0
        except (OSError, ValueError) as exc:
            self.log.warning(
                "uplink %s: cannot read %s (%s); bdSeq starts at 0", self.config.name, self.bdseq_path, exc
            )
            nxt = 0
        try:
            _write_atomic(self.bdseq_path, f"{nxt}\n".encode(), fsync=True)
        except OSError as exc:
            raise Transient(f"cannot persist bdSeq in {self.bdseq_path}: {exc.strerror}") from exc
        return nxt

    def _load_state(self) -> _State:
        try:
            return msgspec.json.decode(self.state_path.read_bytes(), type=_State)
        except FileNotFoundError:
            return _State()
        except (OSError, msgspec.DecodeError) as exc:
            self.log.warning("uplink %s: ignoring %s (%s): aliases are reassigned", self.config.name,
                             self.state_path, exc)  # fmt: skip
            return _State()

    def _save_state(self) -> None:
        last = [m.last for m in self._metrics.values() if m.last is not None]
        try:
            _write_atomic(self.state_path, msgspec.json.encode(_State(dict(self._aliases), last)), fsync=False)
        except OSError as exc:  # aliases are rebound by every birth: losing them costs no data
            self.log.warning("uplink %s: cannot save %s: %s", self.config.name, self.state_path, exc.strerror)

    # ------------------------------------------------------------------ metrics

    def _metric(self, key: str, unit: str | None = None) -> Metric:
        """The metric for a tag path, created (with a stable alias) on first sight."""
        m = self._metrics.get(key)
        if m is None:
            alias = self._aliases.get(key)
            if alias is None:
                alias = self._next_alias
                self._aliases[key] = alias
            self._next_alias = max(self._next_alias, alias + 1)
            name = GAP_METRIC if key == _GAP_KEY else split_tag(key)[1]
            m = Metric(name, alias, pb.Int64 if key == _GAP_KEY else pb.Double, unit)
            self._metrics[key] = m
            self._by_alias[alias] = key
        return m

    def _build_metrics(self, state: _State) -> None:
        """Births list every configured tag (that the uplink's `tags` patterns keep), with last values."""
        self._aliases = dict(state.aliases)
        self._next_alias = max(self._aliases.values(), default=0) + 1
        self._metric(_GAP_KEY)
        cfg = self.daemon_config
        for dev in cfg.devices if cfg is not None else []:
            if dev.enabled:
                for tag in dev.tags:
                    path = dev.tag_path(tag)
                    if self._keep(path):
                        self._metric(path, tag.unit)
        for s in state.last:
            # a tag dropped from the config is not born again; without a config, all known ones are
            if s.tag in self._metrics or (cfg is None and self._keep(s.tag)):
                m = self._metric(s.tag, s.unit)
                m.retype(s.value)
                self._remember(m, s)

    @staticmethod
    def _remember(m: Metric, s: Sample) -> None:
        """Keep the newest sample (a historical batch does not replace a newer value)."""
        if m.last is None or s.ts_ns >= m.last.ts_ns:
            m.last = s
            m.unit = s.unit or m.unit

    def _absorb(self, samples: Iterable[Sample]) -> bool:
        """Register the batch's tags and types; True when a rebirth must announce a change first."""
        changed = False
        for s in samples:
            m = self._metrics.get(s.tag)
            if m is None:
                m = self._metric(s.tag, s.unit)
                m.retype(s.value)
                changed = True
            elif not m.fits(s.value):
                m.retype(s.value)
                m.last = None  # the old value does not fit the new type: the birth says null
                changed = True
            elif not m.typed and s.value is not None:
                m.typed = True  # a configured tag's first value fits the Double default: keep it
        return changed

    def _properties(self, ps: pb.Payload.PropertySet, status: int | None, unit: str | None) -> None:
        if status is not None:
            ps.keys.append("Quality")
            ps.values.add(type=pb.Int32, int_value=self._codes[severity(status)] & _U32)
            ps.keys.append("OpcUaStatusCode")
            ps.values.add(type=pb.UInt32, int_value=status & _U32)
        if unit:
            ps.keys.append("engUnit")
            ps.values.add(type=pb.String, string_value=unit)

    def _birth_metric(self, p: pb.Payload, m: Metric) -> None:
        pm = p.metrics.add(name=m.name, alias=m.alias, datatype=m.datatype)
        s = m.last
        if s is not None:
            pm.timestamp = _ms(s.ts_ns)
            _set_value(pm, m.datatype, s.value)
            self._properties(pm.properties, s.status, m.unit)
        else:
            pm.timestamp = p.timestamp
            if m.name == GAP_METRIC:
                pm.long_value = 0
            else:
                pm.is_null = True
                self._properties(pm.properties, None, m.unit)
        if not pm.properties.keys:
            pm.ClearField("properties")

    # ------------------------------------------------------------------ payloads

    def _ndeath(self) -> bytes:
        p = pb.Payload(timestamp=_now_ms())
        p.metrics.add(name=BDSEQ, datatype=pb.Int64, long_value=self.bdseq, timestamp=p.timestamp)
        data: bytes = p.SerializeToString()
        return data

    def _data(self, samples: list[Sample], historical: bool) -> pb.Payload:
        p = pb.Payload(timestamp=_now_ms())
        for s in samples:
            m = self._metrics[s.tag]
            pm = p.metrics.add(alias=m.alias, timestamp=_ms(s.ts_ns))
            if historical:
                pm.is_historical = True
            _set_value(pm, m.datatype, s.value)
            self._properties(pm.properties, s.status, None)
        return p

    def _gaps(self, gaps: list[Gap]) -> pb.Payload:
        p = pb.Payload(timestamp=_now_ms())
        alias = self._metrics[_GAP_KEY].alias
        for g in gaps:
            pm = p.metrics.add(alias=alias, timestamp=p.timestamp, long_value=g.count)
            props = (("lo_seq", pb.UInt64, g.lo_seq), ("hi_seq", pb.UInt64, g.hi_seq),
                     ("lo_ts", pb.DateTime, _ms(g.lo_ts_ns)), ("hi_ts", pb.DateTime, _ms(g.hi_ts_ns)))  # fmt: skip
            for key, typ, value in props:
                pm.properties.keys.append(key)
                pm.properties.values.add(type=typ, long_value=value & _U64)
        return p

    # ------------------------------------------------------------------ publishing

    async def _publish(self, topic: str, payload: pb.Payload, qos: int) -> None:
        """Stamp the session's next seq and publish; called with the lock held."""
        client = self._client
        if client is None or self._dead is not None:
            raise Transient(self._dead or "not connected")
        payload.seq = self.seq
        self.seq = (self.seq + 1) % 256
        try:
            await honour_cancel(client.publish(topic, payload.SerializeToString(), qos=qos, retain=False))
        except (aiomqtt.MqttError, OSError) as exc:
            self._kill(f"publish failed: {exc}")
            raise Transient(f"publish to {self.config.host} failed: {exc}") from exc
        self.published += 1

    async def _birth(self) -> None:
        """NBIRTH (seq 0, bdSeq, rebirth control) and a DBIRTH per device; called with the lock held."""
        self.seq = 0
        self._last_birth = asyncio.get_running_loop().time()  # a Rebirth request from now on needs another
        devices: dict[str | None, list[Metric]] = {None: []}
        for key, m in self._metrics.items():
            devices.setdefault(None if key == _GAP_KEY else split_tag(key)[0], []).append(m)
        nb = pb.Payload(timestamp=_now_ms())
        nb.metrics.add(name=BDSEQ, datatype=pb.Int64, long_value=self.bdseq, timestamp=nb.timestamp)
        nb.metrics.add(name=REBIRTH, datatype=pb.Boolean, boolean_value=False, timestamp=nb.timestamp)
        for m in devices.pop(None):
            self._birth_metric(nb, m)
        await self._publish(self._topic["NBIRTH"], nb, 0)
        for device, metrics in devices.items():
            assert device is not None
            db = pb.Payload(timestamp=_now_ms())
            for m in metrics:
                self._birth_metric(db, m)
            await self._publish(self._device_topic("DBIRTH", device), db, 0)
        self._born = True
        self.log.info("uplink %s: Sparkplug session born (bdSeq %d, %d devices, %d metrics)", self.config.name,
                      self.bdseq, len(devices), len(self._metrics))  # fmt: skip

    def _kill(self, reason: str) -> None:
        if self._dead is None:
            self._dead = reason
        self._changed.set()

    # ------------------------------------------------------------------ session

    def _tls_context(self) -> ssl.SSLContext | None:
        return client_context(self.config, self.log) if self.config.tls else None

    async def __aenter__(self) -> Self:
        stack = contextlib.AsyncExitStack()
        try:
            await self._start(stack)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def __aexit__(self, *exc: object) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            # Unwinds listener, NDEATH + state, DISCONNECT. The caller's exception is not passed in: the
            # TaskGroup would wrap it in an ExceptionGroup, and it propagates by itself anyway.
            await stack.aclose()

    async def _start(self, stack: contextlib.AsyncExitStack) -> None:
        c = self.config
        self._build_metrics(await asyncio.to_thread(self._load_state))
        self.bdseq = await asyncio.to_thread(self._advance_bdseq)
        client = aiomqtt.Client(
            c.host,
            c.port or (8883 if c.tls else 1883),
            username=c.username,
            password=c.password.reveal() if c.password else None,
            identifier=c.client_id or f"edged-{self.gateway}-{c.name}",
            keepalive=int(c.keepalive),
            timeout=float(c.timeout),
            tls_context=self._tls_context(),
            will=aiomqtt.Will(self._topic["NDEATH"], self._ndeath(), qos=1, retain=False),
            clean_session=True,  # required by Sparkplug
            # No Nagle: a DATA right after a small packet (the PUBACK of a DCMD) would otherwise wait ~40 ms
            # for the broker's delayed ACK; our payloads are whole messages, so nothing is left to coalesce.
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            logger=logging.getLogger("aiomqtt"),
        )
        client.pending_calls_threshold = 10_000
        try:
            await honour_cancel(self._connect(client, stack))
        except (aiomqtt.MqttError, OSError) as exc:
            raise _mqtt_error(exc, c.host) from exc
        self._client = client
        stack.push_async_callback(self._end_session)
        tg = await stack.enter_async_context(asyncio.TaskGroup())
        self._dcmd = self._gate is not None and bool(self._gate.tags_for(c.name))
        if not self._dcmd:
            self.log.info("uplink %s: DCMD not subscribed: no [[commands.tags]] entry lets source %r write (or "
                          "commands are disabled)", c.name, c.name)  # fmt: skip
        try:  # STATE first: its retained message says whether the host is online before any command
            if self._state_topic:
                await honour_cancel(client.subscribe(self._state_topic, qos=1))
            await honour_cancel(client.subscribe(self._topic["NCMD"], qos=1))
            if self._dcmd:
                await honour_cancel(client.subscribe(self._topic["DCMD"], qos=1))
        except (aiomqtt.MqttError, OSError) as exc:
            raise _mqtt_error(exc, c.host) from exc
        listener = tg.create_task(self._listen(client), name=f"sparkplug:{c.name}:listen")
        stack.callback(listener.cancel)
        stack.push_async_callback(self._drain_commands)  # before the cancel (last in, first out)
        if not self._host_online:
            self.log.info("uplink %s: waiting for primary host %s to be online", c.name, c.primary_host_id)
        while not self._host_online:
            if self._dead is not None:
                raise Transient(self._dead)
            self._changed.clear()
            await self._changed.wait()
        async with self._lock:
            await self._birth()
        await asyncio.to_thread(self._save_state)  # aliases handed out by this birth

    async def _connect(self, client: aiomqtt.Client, stack: contextlib.AsyncExitStack) -> None:
        """CONNECT, with the DISCONNECT registered at once: a cancellation aiomqtt swallowed (and
        honour_cancel re-raises) still closes the connection it made."""
        await client.__aenter__()
        stack.push_async_callback(self._disconnect, client)

    async def _disconnect(self, client: aiomqtt.Client) -> None:
        with contextlib.suppress(aiomqtt.MqttError):  # timed out: the session is over either way
            await honour_cancel(client.__aexit__(None, None, None))

    async def _end_session(self) -> None:
        """Intentional disconnect: NDEATH first (Sparkplug requires it), then DISCONNECT follows.

        Also after a failed publish: a clean DISCONNECT makes the broker drop the Will, so without this
        NDEATH a host would keep the node online. Never born: nothing to retract, no NDEATH.
        """
        self._kill("session closed")
        if self._client is not None and self._born:
            await self._send_ndeath(self._client)
        await asyncio.to_thread(self._save_state)

    async def _send_ndeath(self, client: aiomqtt.Client) -> None:
        if self._ndeath_sent:
            return
        self._ndeath_sent = True
        with contextlib.suppress(aiomqtt.MqttError, OSError, TimeoutError):  # a lost connection sent the Will
            async with asyncio.timeout(2.0):
                await honour_cancel(client.publish(self._topic["NDEATH"], self._ndeath(), qos=1, retain=False))

    async def _listen(self, client: aiomqtt.Client) -> None:
        """NCMD, DCMD and STATE; ends, marking the session dead, when the connection is lost.

        Writes run as tasks of `commands`, so this loop goes on reading STATE and rebirth requests
        while a device answers; a session that ends lets the writes already running finish.
        """
        async with asyncio.TaskGroup() as commands:
            try:
                async for msg in client.messages:
                    raw = msg.payload
                    try:
                        if msg.topic.matches(self._topic["NCMD"]):
                            await self._on_cmd(commands, None, raw, msg.retain)
                        elif self._dcmd and msg.topic.matches(self._topic["DCMD"]):
                            await self._on_cmd(commands, str(msg.topic).split("/")[4], raw, msg.retain)
                        elif self._state_topic and msg.topic.matches(self._state_topic):
                            await self._on_state(client, _bytes(raw))
                    except (aiomqtt.MqttError, OSError, Transient) as exc:
                        self._kill(f"connection lost: {exc}")
                        return
                    except Exception:  # a malformed command must never take the uplink down
                        self.log.exception("uplink %s: cannot handle a message on %s", self.config.name, msg.topic)
                    if self._dead is not None:
                        return
            except aiomqtt.MqttError as exc:
                self._kill(f"connection lost: {exc}")

    async def _on_cmd(self, tg: asyncio.TaskGroup, device: str | None, raw: object, retained: bool) -> None:
        """An NCMD (device None) or DCMD: Node Control first, then one gated write per other metric.

        Sparkplug authenticates nobody, so an oversized payload is dropped before it is decoded or
        anything is stored; a metric that cannot be read is refused on its own, the others stand.
        """
        kind = "DCMD" if device is not None else "NCMD"
        size = len(raw) if isinstance(raw, bytes | bytearray | str) else 0
        if size > self.config.max_command_bytes:
            n = self._oversized.hit()
            if n is not None:
                self.log.warning("uplink %s: %d oversized NCMD/DCMD payload(s) dropped undecoded (latest: %s of %d "
                                 "bytes, max_command_bytes %d); %d in this session, reported at most every %gs",
                                 self.config.name, n, kind, size, self.config.max_command_bytes,
                                 self._oversized.total, _REPORT_S)  # fmt: skip
            return
        payload = _bytes(raw)
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
        host_needed = host is not None and self.config.commands_require_primary_host and not self._host_online
        for i, m in enumerate(metrics):
            assert self._gate is not None
            try:
                cmd, refusal = self._command(device, p, i, m)
            except Exception as exc:  # an unreadable metric is refused alone, never the whole message
                cmd = Command(new_id(), self.config.name, host, "", None, 0)
                refusal = ("malformed", f"{kind} metric #{i + 1} cannot be read: {type(exc).__name__}: {exc}")
            if refusal is not None and refusal[0] == "malformed":
                self._bad_metrics += 1
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
            self._rebirth_requested(tg)
        return writes

    def _rebirth_requested(self, tg: asyncio.TaskGroup) -> None:
        """A Rebirth NCMD: at most one rebirth per `rebirth_min_interval`; the requests in between
        are counted and answered together by one rebirth when the interval is over."""
        self._rebirth_requests += 1
        if not self._born:  # not born yet: the birth that is about to happen answers it
            return
        loop = asyncio.get_running_loop()
        self._rebirth_wanted = loop.time()
        if (
            self._rebirth_pending is None
            and self._rebirth_wanted >= self._last_birth + self.config.rebirth_min_interval
        ):
            self.log.info("uplink %s: rebirth requested by NCMD", self.config.name)
        elif (n := self._rebirths_coalesced.hit()) is not None:
            self.log.warning("uplink %s: %d Rebirth request(s) within rebirth_min_interval %gs of the last birth "
                             "coalesced into one rebirth (%d in this session)", self.config.name, n,
                             float(self.config.rebirth_min_interval), self._rebirths_coalesced.total)  # fmt: skip
        if self._rebirth_pending is None:
            self._rebirth_pending = tg.create_task(self._rebirth(), name=f"sparkplug:{self.config.name}:rebirth")

    async def _rebirth(self) -> None:
        """Rebirth once the interval since the last birth is over, until no request is newer than the
        last birth's start (a data-driven rebirth answers requests too)."""
        loop = asyncio.get_running_loop()
        try:
            while self._rebirth_wanted >= self._last_birth:
                wait = self._last_birth + self.config.rebirth_min_interval - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                async with self._lock:
                    if self._dead is not None or not self._host_online:
                        return  # the next session starts with a birth
                    if self._rebirth_wanted >= self._last_birth:
                        await self._birth()
        except Transient as exc:  # the session is dead now; the Sender starts a new one, with a birth
            self.log.warning("uplink %s: rebirth not published: %s", self.config.name, exc)
        finally:
            self._rebirth_pending = None

    def _command(
        self, device: str | None, p: pb.Payload, index: int, m: pb.Payload.Metric
    ) -> tuple[Command, tuple[str, str] | None]:
        """The Command a CMD metric asks for, and (code, reason) when the uplink refuses it itself."""
        c = self.config
        path, refusal = self._resolve(device, m)
        metric = self._metrics.get(path)
        value, problem = command_value(m, metric.datatype if metric is not None else pb.Unknown)
        ts_ms = m.timestamp if m.HasField("timestamp") and m.timestamp else p.timestamp
        if refusal is None and problem is not None:
            refusal = ("malformed", f"{_label(m)}: {problem}")
        if refusal is None and not 0 < ts_ms < _MAX_TS_MS:
            why = "no timestamp (neither the metric nor the payload)" if not ts_ms else f"timestamp {ts_ms}"
            refusal = ("malformed", f"{why}: a command must carry when it was issued, in Unix milliseconds")
        ts_ns = ts_ms * 1_000_000 if 0 < ts_ms < _MAX_TS_MS else 0
        tag = GAP_METRIC if path == _GAP_KEY else path
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
            path = f"{device}/{name}" if device is not None else _GAP_KEY if name == GAP_METRIC else name
        elif m.HasField("alias"):
            path = self._by_alias.get(m.alias, "")
        else:
            return "", ("malformed", "a metric without a name or an alias")
        owner = None if path == _GAP_KEY else split_tag(path)[0]
        if path not in self._metrics or owner != device:
            if device is None and owner is not None and path in self._metrics:
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
        self._commands.add(task)
        task.add_done_callback(self._commands.discard)

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
        m = self._metrics.get(path)
        device = split_tag(path)[0]
        if m is None or device is None or result.readback is None or not m.fits(result.readback):
            return
        s = Sample(path, result.ts_ns, result.readback, Status.GOOD, 100, m.unit)
        try:
            async with self._lock:
                if not self._born or self._dead is not None or not self._host_online:
                    return
                payload = self._data([s], historical=False)
                await self._publish(self._device_topic("DDATA", device), payload, self.config.data_qos)
                self._remember(m, s)
        except Transient as exc:  # the session is dead now; the Sender starts a new one
            self.log.warning("uplink %s: read-back of %s not published: %s", self.config.name, path, exc)

    async def _drain_commands(self) -> None:
        """Let writes already at the gate finish when the session ends (bounded), so the audit
        records what the device did rather than an interrupted write."""
        running = [t for t in self._commands if not t.done()]
        if running and self._gate is not None:
            await asyncio.wait(running, timeout=min(_CMD_DRAIN_S, float(self._gate.config.timeout)))

    async def _on_state(self, client: aiomqtt.Client, payload: bytes) -> None:
        text = payload.strip()
        if text in (b"ONLINE", b"OFFLINE"):  # a Sparkplug 2.x host
            state = _HostState(online=text == b"ONLINE")
        else:
            try:
                state = msgspec.json.decode(payload, type=_HostState)
            except msgspec.DecodeError as exc:
                self.log.warning("uplink %s: malformed STATE ignored: %s", self.config.name, exc)
                return
        if state.timestamp is not None and self._host_ts is not None and state.timestamp < self._host_ts:
            self.log.debug("uplink %s: STATE older than the last one ignored (timestamp %d < %d)",
                           self.config.name, state.timestamp, self._host_ts)  # fmt: skip
            return  # older than what we already know: an out-of-order retained message
        self._host_ts = state.timestamp if state.timestamp is not None else self._host_ts
        was, self._host_online = self._host_online, state.online
        self._changed.set()
        if was and not state.online and self._born:
            # Sparkplug 3.0: publish NDEATH, disconnect, and start the session over.
            self.log.warning("uplink %s: primary host %s went offline; ending the session",
                             self.config.name, self.config.primary_host_id)  # fmt: skip
            async with self._lock:
                self._kill(f"primary host {self.config.primary_host_id} is offline")
                await self._send_ndeath(client)
                await self._disconnect(client)

    # ------------------------------------------------------------------ Uplink protocol

    def counters(self) -> dict[str, float]:
        """This session's command-side figures (the Sender shows them in status and metrics)."""
        return {
            "rebirth_requests": self._rebirth_requests,
            "rebirths_coalesced": self._rebirths_coalesced.total,
            "rebirth_pending": int(self._rebirth_pending is not None),
            "commands_oversized": self._oversized.total,
            "commands_malformed_metrics": self._bad_metrics,
            "commands_in_flight": len(self._commands),
        }

    def is_closed(self) -> bool:
        """The session ended (connection lost, primary host offline). The Sender asks while idle,
        so a node re-births after a broker restart without waiting for the next sample."""
        return self._dead is not None

    async def send(self, batch: Batch) -> None:
        if self._dead is not None:
            raise Transient(self._dead)
        if not self._host_online:
            raise Transient(f"primary host {self.config.primary_host_id} is offline")
        groups: dict[str | None, list[Sample]] = {}
        for s in batch.samples:
            groups.setdefault(split_tag(s.tag)[0], []).append(s)
        qos = self.config.data_qos
        async with self._lock:
            if self._absorb(batch.samples):
                self.log.info("uplink %s: new tags or types: rebirth", self.config.name)
                await self._birth()
                await asyncio.to_thread(self._save_state)
            for device, samples in groups.items():
                payload = self._data(samples, batch.historical)
                topic = self._topic["NDATA"] if device is None else self._device_topic("DDATA", device)
                await self._publish(topic, payload, qos)
            if batch.gaps:
                await self._publish(self._topic["NDATA"], self._gaps(batch.gaps), qos)
            for s in batch.samples:
                self._remember(self._metrics[s.tag], s)


plugin = UplinkSpec(config=Config, uplink=Uplink)  # mypy checks it against edged.plugin
