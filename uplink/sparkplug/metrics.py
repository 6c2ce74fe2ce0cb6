"""The node's metrics: names, aliases (stable across sessions and restarts), birth datatypes, the
encoding of values and properties, and the birth and DATA payloads built from them."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import msgspec

from edged.config import tag_matcher
from edged.model import Gap, Sample, Value, severity
from edged.plugin import PluginContext
from uplink.sparkplug import sparkplug_b_pb2 as pb
from uplink.sparkplug.config import Config

REBIRTH = "Node Control/Rebirth"
BDSEQ = "bdSeq"
GAP_METRIC = "edged/gap"  # node metric: samples retention deleted before delivery (README)
GAP_KEY = "@node/edged/gap"  # its key among tag paths; "@" cannot start a tag name
_INT64 = (-(2**63), 2**63 - 1)
_U64 = 0xFFFF_FFFF_FFFF_FFFF
_U32 = 0xFFFF_FFFF
# Quality property values by severity (Good, Uncertain, Bad). "opc_da" is the classic Sparkplug/Tahu
# convention; Ignition 8 reads its own QualityCode, where 0 would mean Good_Unspecified.
_QUALITY_CODES = {"opc_da": (192, 64, 0), "ignition8": (192, 0x40000100, 0x80000200)}


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


def ms(ts_ns: int) -> int:
    return ts_ns // 1_000_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def write_atomic(path: Path, data: bytes, *, fsync: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)


class Registry:
    """The metrics of one node, by tag path (or GAP_KEY): created on first sight, each with an alias
    kept in the state file, so a host's alias table stays valid across reconnects and restarts."""

    def __init__(self, config: Config, ctx: PluginContext) -> None:
        self.config = config
        self.log = ctx.log
        self.daemon_config = ctx.config
        self.state_path = ctx.data_dir / f"sparkplug-{config.name}.state.json"
        self._keep = tag_matcher(config.tags)
        self._codes = _QUALITY_CODES[config.quality_codes]
        self.metrics: dict[str, Metric] = {}
        self._aliases: dict[str, int] = {}
        self.by_alias: dict[int, str] = {}  # alias -> tag path, of the metrics of this session
        self._next_alias = 1

    # ------------------------------------------------------------------ persisted state

    def load_state(self) -> _State:
        try:
            return msgspec.json.decode(self.state_path.read_bytes(), type=_State)
        except FileNotFoundError:
            return _State()
        except (OSError, msgspec.DecodeError) as exc:
            self.log.warning("uplink %s: ignoring %s (%s): aliases are reassigned", self.config.name,
                             self.state_path, exc)  # fmt: skip
            return _State()

    def save_state(self) -> None:
        last = [m.last for m in self.metrics.values() if m.last is not None]
        try:
            write_atomic(self.state_path, msgspec.json.encode(_State(dict(self._aliases), last)), fsync=False)
        except OSError as exc:  # aliases are rebound by every birth: losing them costs no data
            self.log.warning("uplink %s: cannot save %s: %s", self.config.name, self.state_path, exc.strerror)

    # ------------------------------------------------------------------ metrics

    def metric(self, key: str, unit: str | None = None) -> Metric:
        """The metric for a tag path, created (with a stable alias) on first sight."""
        m = self.metrics.get(key)
        if m is None:
            alias = self._aliases.get(key)
            if alias is None:
                alias = self._next_alias
                self._aliases[key] = alias
            self._next_alias = max(self._next_alias, alias + 1)
            name = GAP_METRIC if key == GAP_KEY else split_tag(key)[1]
            m = Metric(name, alias, pb.Int64 if key == GAP_KEY else pb.Double, unit)
            self.metrics[key] = m
            self.by_alias[alias] = key
        return m

    def build(self, state: _State) -> None:
        """Births list every configured tag (that the uplink's `tags` patterns keep), with last values."""
        self._aliases = dict(state.aliases)
        self._next_alias = max(self._aliases.values(), default=0) + 1
        self.metric(GAP_KEY)
        cfg = self.daemon_config
        for dev in cfg.devices if cfg is not None else []:
            if dev.enabled:
                for tag in dev.tags:
                    path = dev.tag_path(tag)
                    if self._keep(path):
                        self.metric(path, tag.unit)
        for s in state.last:
            # a tag dropped from the config is not born again; without a config, all known ones are
            if s.tag in self.metrics or (cfg is None and self._keep(s.tag)):
                m = self.metric(s.tag, s.unit)
                m.retype(s.value)
                self.remember(m, s)

    @staticmethod
    def remember(m: Metric, s: Sample) -> None:
        """Keep the newest sample (a historical batch does not replace a newer value)."""
        if m.last is None or s.ts_ns >= m.last.ts_ns:
            m.last = s
            m.unit = s.unit or m.unit

    def absorb(self, samples: Iterable[Sample]) -> bool:
        """Register the batch's tags and types; True when a rebirth must announce a change first."""
        changed = False
        for s in samples:
            m = self.metrics.get(s.tag)
            if m is None:
                m = self.metric(s.tag, s.unit)
                m.retype(s.value)
                changed = True
            elif not m.fits(s.value):
                m.retype(s.value)
                m.last = None  # the old value does not fit the new type: the birth says null
                changed = True
            elif not m.typed and s.value is not None:
                m.typed = True  # a configured tag's first value fits the Double default: keep it
        return changed

    def by_device(self) -> dict[str | None, list[Metric]]:
        """The metrics a birth announces: the node's (None, always present) and each device's."""
        devices: dict[str | None, list[Metric]] = {None: []}
        for key, m in self.metrics.items():
            devices.setdefault(None if key == GAP_KEY else split_tag(key)[0], []).append(m)
        return devices

    # ------------------------------------------------------------------ payloads

    def _properties(self, ps: pb.Payload.PropertySet, status: int | None, unit: str | None) -> None:
        if status is not None:
            ps.keys.append("Quality")
            ps.values.add(type=pb.Int32, int_value=self._codes[severity(status)] & _U32)
            ps.keys.append("OpcUaStatusCode")
            ps.values.add(type=pb.UInt32, int_value=status & _U32)
        if unit:
            ps.keys.append("engUnit")
            ps.values.add(type=pb.String, string_value=unit)

    def birth_metric(self, p: pb.Payload, m: Metric) -> None:
        pm = p.metrics.add(name=m.name, alias=m.alias, datatype=m.datatype)
        s = m.last
        if s is not None:
            pm.timestamp = ms(s.ts_ns)
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

    def data(self, samples: list[Sample], historical: bool) -> pb.Payload:
        p = pb.Payload(timestamp=now_ms())
        for s in samples:
            m = self.metrics[s.tag]
            pm = p.metrics.add(alias=m.alias, timestamp=ms(s.ts_ns))
            if historical:
                pm.is_historical = True
            _set_value(pm, m.datatype, s.value)
            self._properties(pm.properties, s.status, None)
        return p

    def gaps(self, gaps: list[Gap]) -> pb.Payload:
        p = pb.Payload(timestamp=now_ms())
        alias = self.metrics[GAP_KEY].alias
        for g in gaps:
            pm = p.metrics.add(alias=alias, timestamp=p.timestamp, long_value=g.count)
            props = (("lo_seq", pb.UInt64, g.lo_seq), ("hi_seq", pb.UInt64, g.hi_seq),
                     ("lo_ts", pb.DateTime, ms(g.lo_ts_ns)), ("hi_ts", pb.DateTime, ms(g.hi_ts_ns)))  # fmt: skip
            for key, typ, value in props:
                pm.properties.keys.append(key)
                pm.properties.values.add(type=typ, long_value=value & _U64)
        return p
