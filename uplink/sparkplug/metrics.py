"""The node's metrics: names, aliases (stable across sessions and restarts), birth datatypes, the
encoding of values and properties, and the birth and DATA payloads built from them."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import msgspec

from edged.alarms.config import flood_path
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
# A tag's datatype from its config (TagBase.value_kind); a kind not listed here (None: only the device
# knows) is learnt from the values and kept in the state file.
KIND_TYPES = {"number": pb.Double, "bool": pb.Boolean, "string": pb.String}
BAD_TYPE_MISMATCH = 0x80740000  # OPC UA Bad_TypeMismatch: a value that does not fit the born datatype
_MAX_MS = 2**64 - 1  # Sparkplug timestamps are uint64 milliseconds


@dataclass(slots=True)
class Metric:
    """One Sparkplug metric: an edged tag (or edged's own gap metric) under a node or device."""

    name: str  # within the node or device
    alias: int
    datatype: int  # pb.DataType; fixed until the next birth
    unit: str | None = None
    last: Sample | None = None  # the value the host holds as current: the birth's, then the newest live one
    fixed: bool = False  # datatype from the config (TagBase.value_kind): the same in every session
    typed: bool = False  # a learnt datatype (no kind in the config): from a value or the state file

    def fits(self, value: Value) -> bool:
        if value is None:
            return True
        if not self.fixed and self.datatype == pb.String:
            return True  # a learnt String takes any value (str()), so a tag flipping types costs one rebirth
        return fits(self.datatype, value)

    def retype(self, value: Value) -> bool:
        """A learnt datatype for a value: the value's type for the first one, Int64 widening to
        Double, any other clash String. Never for a datatype from the config. True when it changed."""
        new = datatype_of(value)
        if self.fixed or new is None:
            return False
        old = self.datatype
        if not self.typed or (old == pb.Int64 and new == pb.Double):
            self.datatype = new
        elif not fits(old, value):
            self.datatype = pb.String
        self.typed = True
        if self.last is not None and not self.fits(self.last.value):
            self.last = None  # the old value does not fit the new type: the birth says null
        return self.datatype != old


class _State(msgspec.Struct):
    """What survives a reconnect or restart: aliases (stable names -> numbers), the values the host
    holds as current, and learnt datatypes (tags whose config names no kind), so a metric is born
    with the same datatype in every session."""

    aliases: dict[str, int] = {}
    last: list[Sample] = []
    types: dict[str, int] = {}


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


def usable(s: Sample) -> bool:
    """A sample a birth can carry: its timestamp fits Sparkplug's unsigned milliseconds (a device with
    a broken clock must not make every birth fail; its DATA is the Sender's poison case)."""
    return s.ts_ns >= 0 and ms(s.ts_ns) <= _MAX_MS


class Registry:
    """The metrics of one node, by tag path (or GAP_KEY): created on first sight, each with an alias
    kept in the state file, so a host's alias table stays valid across reconnects and restarts."""

    def __init__(self, config: Config, ctx: PluginContext) -> None:
        self.config = config
        self.log = ctx.log
        self.daemon_config = ctx.config
        self._latest = ctx.latest
        self.state_path = ctx.data_dir / f"sparkplug-{config.name}.state.json"
        self._keep = tag_matcher(config.tags)
        self._codes = _QUALITY_CODES[config.quality_codes]
        self._uint32 = config.uint32_field
        self.metrics: dict[str, Metric] = {}
        self._aliases: dict[str, int] = {}
        self._types: dict[str, int] = {}  # learnt datatypes from the state file
        self.by_alias: dict[int, str] = {}  # alias -> tag path, of the metrics of this session
        self._next_alias = 1
        self.mistyped = 0  # values published as null with Bad_TypeMismatch
        self._mistyped_logged: set[str] = set()

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
        types = {k: m.datatype for k, m in self.metrics.items() if m.typed and not m.fixed}
        state = _State(dict(self._aliases), last, {**self._types, **types})
        try:
            write_atomic(self.state_path, msgspec.json.encode(state), fsync=False)
        except OSError as exc:  # aliases are rebound by every birth: losing them costs no data
            self.log.warning("uplink %s: cannot save %s: %s", self.config.name, self.state_path, exc.strerror)

    # ------------------------------------------------------------------ metrics

    def metric(self, key: str, unit: str | None = None, datatype: int | None = None) -> Metric:
        """The metric for a tag path, created (with a stable alias) on first sight. `datatype`: the
        one its config gives; else a learnt one from the state file, else Double until a value says."""
        m = self.metrics.get(key)
        if m is None:
            alias = self._aliases.get(key)
            if alias is None:
                alias = self._next_alias
                self._aliases[key] = alias
            self._next_alias = max(self._next_alias, alias + 1)
            name = GAP_METRIC if key == GAP_KEY else split_tag(key)[1]
            if key == GAP_KEY:
                datatype = pb.Int64
            learnt = self._types.get(key) if datatype is None else None
            m = Metric(name, alias, datatype or learnt or pb.Double, unit, fixed=datatype is not None,
                       typed=learnt is not None)  # fmt: skip
            self.metrics[key] = m
            self.by_alias[alias] = key
        return m

    def build(self, state: _State) -> None:
        """Births list every configured tag (that the uplink's `tags` patterns keep), with the datatype
        its config gives (TagBase.value_kind), else the one learnt before, and the last values."""
        self._aliases = dict(state.aliases)
        self._types = {k: t for k, t in state.types.items() if t in (pb.Boolean, pb.Int64, pb.Double, pb.String)}
        self._next_alias = max(self._aliases.values(), default=0) + 1
        self.metric(GAP_KEY)
        cfg = self.daemon_config
        for dev in [*cfg.devices, *cfg.computed] if cfg is not None else []:  # computed groups too
            if dev.enabled:
                for tag in dev.tags:
                    path = dev.tag_path(tag)
                    if self._keep(path):
                        self.metric(path, tag.unit, KIND_TYPES.get(tag.value_kind() or ""))
        # each alarm (and its device's flood summary) is a String metric of its device from the first
        # birth on, so a host knows its name (DCMD "ack" / "shelve 1h" / "unshelve") before any event
        alarms = cfg.alarms.tags if cfg is not None else []
        for path in [*(a.path for a in alarms), *sorted({flood_path(a.tag.split("/", 1)[0]) for a in alarms})]:
            if self._keep(path):
                self.metric(path, None, pb.String)
        # a tag dropped from the config is not born again; without a config, all known ones are
        known = [s for s in state.last if s.tag in self.metrics or (cfg is None and self._keep(s.tag))]
        self.adopt(known, create=True)

    def adopt(self, samples: Iterable[Sample], *, create: bool = False) -> None:
        """Take each metric's newest value (by source time) for the next birth; a learnt datatype
        follows a value that does not fit it (no birth has announced the old one yet in this session)."""
        for s in samples:
            if not usable(s):
                continue
            m = self.metrics.get(s.tag)
            if m is None:
                if not create:
                    continue
                m = self.metric(s.tag, s.unit)
            if not m.fixed and s.value is not None and (not m.typed or not m.fits(s.value)):
                m.retype(s.value)
            self.remember(m, s)

    async def refresh(self) -> None:
        """Before a birth: each metric's newest value from the buffer (the daemon's `latest`), not the
        last one this node happened to publish, so a birth after the host was away carries what is
        current now. Without it (the uplink used outside the daemon) births carry the last published."""
        if self._latest is None:
            return
        try:
            latest = await self._latest()
        except Exception as exc:  # the buffer is the daemon's: a birth still goes out, with what is known
            self.log.warning("uplink %s: cannot read the newest values from the buffer (%s); the birth carries "
                             "the last published ones", self.config.name, exc)  # fmt: skip
            return
        self.adopt(latest)

    @staticmethod
    def remember(m: Metric, s: Sample) -> None:
        """Keep the newest sample (by source time: an older one never replaces it)."""
        if m.last is None or s.ts_ns >= m.last.ts_ns:
            m.last = s
            m.unit = s.unit or m.unit

    def absorb(self, samples: Iterable[Sample]) -> bool:
        """Register the batch's tags and learnt types; True when a rebirth must announce a change
        first. A datatype from the config never changes: a value that does not fit it is published
        as null with Bad_TypeMismatch (`data`)."""
        changed = False
        for s in samples:
            m = self.metrics.get(s.tag)
            if m is None:
                m = self.metric(s.tag, s.unit)
                m.retype(s.value)
                changed = True
            elif m.fixed:
                continue
            elif not m.fits(s.value):
                changed = m.retype(s.value) or changed
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
            if self._uint32 == "long_value":
                ps.values.add(type=pb.UInt32, long_value=status & _U32)
            else:
                ps.values.add(type=pb.UInt32, int_value=status & _U32)
        if unit:
            ps.keys.append("engUnit")
            ps.values.add(type=pb.String, string_value=unit)

    def _value(self, pm: pb.Payload.Metric, m: Metric, s: Sample, unit: str | None) -> None:
        """The sample's value and quality; one that does not fit the born datatype is null with
        Bad_TypeMismatch (counted, logged once per tag) rather than a lie in the wrong type."""
        value, status = s.value, s.status
        if not m.fits(value):
            value, status = None, BAD_TYPE_MISMATCH
            self.mistyped += 1
            if s.tag not in self._mistyped_logged:
                self._mistyped_logged.add(s.tag)
                self.log.warning("uplink %s: %s is born %s (from its config) but has a %s value %r: published "
                                 "as null with Bad_TypeMismatch", self.config.name, s.tag,
                                 pb.DataType.Name(m.datatype), type(s.value).__name__, s.value)  # fmt: skip
        _set_value(pm, m.datatype, value)
        self._properties(pm.properties, status, unit)

    def birth_metric(self, p: pb.Payload, m: Metric) -> None:
        pm = p.metrics.add(name=m.name, alias=m.alias, datatype=m.datatype)
        s = m.last
        if s is not None:
            pm.timestamp = ms(s.ts_ns)
            self._value(pm, m, s, m.unit)
        else:
            pm.timestamp = p.timestamp
            if m.name == GAP_METRIC:
                pm.long_value = 0
            else:
                pm.is_null = True
                self._properties(pm.properties, None, m.unit)
        if not pm.properties.keys:
            pm.ClearField("properties")

    def data(self, samples: list[Sample]) -> tuple[pb.Payload, list[tuple[Metric, Sample]]]:
        """A DATA payload, and the values the host will hold as current once it is published (`hold`).

        A metric is live (not historical) only when it is newer than what the host holds as current
        (the birth's value, or the last live one): a host stores a historical metric without touching
        the live value. So a replayed sample newer than the born value updates the live tag, and a
        live-stream sample older than it goes to history only.
        """
        p = pb.Payload(timestamp=now_ms())
        current: dict[str, tuple[Metric, Sample]] = {}
        for s in samples:
            m = self.metrics[s.tag]
            held = current[s.tag][1] if s.tag in current else m.last
            pm = p.metrics.add(alias=m.alias, timestamp=ms(s.ts_ns))
            if held is None or s.ts_ns > held.ts_ns:
                current[s.tag] = (m, s)
            else:
                pm.is_historical = True
            self._value(pm, m, s, None)
        return p, list(current.values())

    def hold(self, published: list[tuple[Metric, Sample]]) -> None:
        for m, s in published:
            self.remember(m, s)

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
