"""OPC UA HistoryRead served from the ring buffer: the last day of every tag, no historian needed.

Raw reads (ReadRawModifiedDetails, Part 11) and processed reads (ReadProcessedDetails) with the
Part 13 aggregates Average, Minimum, Maximum and Count, over the buffer's own samples with their
status and source timestamps (`buffer.history`: bounded, stateless pages). asyncua's HistoryManager
stores its own copy of values and has no processed reads, so `BufferHistory` replaces it and reads
the buffer; nothing is stored twice.

Bounds per request: at most MAX_NODES nodes (else BadTooManyOperations), MAX_VALUES values per node
per response, and about `budget` rows of buffer work per node: the rest is a continuation point.
Continuation points carry the position itself (no server state, nothing to leak or expire), and a
hash of the request, so a point reused with other details is BadContinuationPointInvalid.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import sqlite3
import struct
from dataclasses import dataclass
from typing import Any, Final

from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.server.history import HistoryManager
from asyncua.server.internal_server import InternalServer
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes

from buffer.history import MAX_TS, MIN_TS, Position, TagHistory
from edged.model import Sample, Severity, Status, severity
from edged.protocols.opcua.values import datetime_ns, ns_datetime, ua_struct
from uplink.opcua.access import ReadOnly

MAX_NODES: Final = 100  # nodes per HistoryRead request
MAX_VALUES: Final = 10_000  # values (or intervals) per node per response: MaxReturnDataValues
MAX_INTERVALS: Final = 100_000  # intervals a processed read may span in all (its pages included)
ROW_BUDGET: Final = 2_000_000  # buffer rows scanned per node per response (~0.2-0.4 s)
_BOUND_CALLS: Final = 8  # pages a bounding value is looked for in before BadBoundNotFound
_EPOCH_1601: Final = dt.datetime(1601, 1, 2, tzinfo=dt.UTC)  # before this: "not specified" (MinValue)

# StatusCode info bits of a DataValue (Part 4 7.39.1): InfoType DataValue, then the historian bits.
_INFO_DATAVALUE: Final = 0x400
CALCULATED: Final = _INFO_DATAVALUE | 0x1
INTERPOLATED: Final = _INFO_DATAVALUE | 0x2
PARTIAL: Final = _INFO_DATAVALUE | 0x4

AVERAGE: Final = ObjectIds.AggregateFunction_Average
MINIMUM: Final = ObjectIds.AggregateFunction_Minimum
MAXIMUM: Final = ObjectIds.AggregateFunction_Maximum
COUNT: Final = ObjectIds.AggregateFunction_Count
AGGREGATES: Final = {AVERAGE: "Average", MINIMUM: "Minimum", MAXIMUM: "Maximum", COUNT: "Count"}

_HISTORY_READ: Final = ua_struct(ua.NodeId, Identifier=ObjectIds.HistoryReadRequest_Encoding_DefaultBinary)
_CP = struct.Struct(">4sBqq8s")  # magic, phase, ts_ns, seq or interval index, request hash
_MAGIC: Final = b"edH1"


class HistoryReadable(ReadOnly):
    """The read-only services plus HistoryRead: whoever may Read may read history (each node's
    UserAccessLevel HistoryRead bit is checked again per node)."""

    def check_validity(self, user: Any, action_type_id: Any, body: Any) -> bool:
        return action_type_id == _HISTORY_READ or super().check_validity(user, action_type_id, body)


# ----------------------------------------------------------------------------------------- aggregates


@dataclass(frozen=True, slots=True)
class AggConfig:
    """Part 13 AggregateConfiguration; the server's defaults are the spec's."""

    treat_uncertain_as_bad: bool = True
    percent_bad: int = 100
    percent_good: int = 100


@dataclass(slots=True)
class Acc:
    """One interval's raw values, reduced as they stream by (memory per interval, not per value)."""

    start_ns: int
    end_ns: int
    partial: bool = False
    total: int = 0
    good: int = 0
    uncertain: int = 0
    bad: int = 0
    invalid: int = 0  # Good values that are not numbers (strings): no Average/Minimum/Maximum
    total_sum: float = 0.0
    minimum: tuple[float, int] | None = None  # (value, ts_ns) of the first minimum
    maximum: tuple[float, int] | None = None
    non_good_min: float | None = None  # the extreme Uncertain values (Part 13: they make Min/Max Uncertain)
    non_good_max: float | None = None

    def add(self, s: Sample) -> None:
        self.total += 1
        sev = severity(s.status)
        numeric = isinstance(s.value, int | float) and not (isinstance(s.value, float) and math.isnan(s.value))
        if sev == Severity.BAD or s.value is None:
            self.bad += 1
            return
        if sev == Severity.UNCERTAIN:
            self.uncertain += 1
            if numeric:
                v = float(s.value)
                self.non_good_min = v if self.non_good_min is None else min(self.non_good_min, v)
                self.non_good_max = v if self.non_good_max is None else max(self.non_good_max, v)
            return
        self.good += 1
        if not numeric:
            self.invalid += 1
            return
        v = float(s.value)
        self.total_sum += v
        if self.minimum is None or v < self.minimum[0]:
            self.minimum = (v, s.ts_ns)
        if self.maximum is None or v > self.maximum[0]:
            self.maximum = (v, s.ts_ns)


def _percent_status(a: Acc, cfg: AggConfig) -> int:
    """Part 13 5.3 StatusCode calculation, PercentValues method (not time based)."""
    bad = a.bad + (a.uncertain if cfg.treat_uncertain_as_bad else 0)
    good = a.good + (0 if cfg.treat_uncertain_as_bad else a.uncertain)
    if bad * 100 >= cfg.percent_bad * a.total and bad:
        return StatusCodes.Bad
    if good * 100 >= cfg.percent_good * a.total:
        return StatusCodes.Good
    return StatusCodes.UncertainDataSubNormal


def compute(aggregate: int, a: Acc, cfg: AggConfig = AggConfig()) -> tuple[float | None, int]:
    """(value, StatusCode) of one interval, value None where the status carries none (Bad)."""
    partial = PARTIAL if a.partial else 0
    if aggregate == COUNT:
        if a.total == 0:
            return 0.0, StatusCodes.Good | CALCULATED | partial
        st = _percent_status(a, cfg)
        return (
            (None, st | CALCULATED | partial)
            if severity(st) == Severity.BAD
            else (float(a.good), st | CALCULATED | partial)
        )
    if a.total == 0:
        return None, StatusCodes.BadNoData
    if a.invalid:
        return None, StatusCodes.BadAggregateInvalidInputs
    if aggregate == AVERAGE:
        st = _percent_status(a, cfg)
        if a.good == 0 or severity(st) == Severity.BAD:
            return None, (st if a.good else StatusCodes.BadNoData) | (CALCULATED if a.good else 0)
        return a.total_sum / a.good, st | CALCULATED | partial
    ext = a.minimum if aggregate == MINIMUM else a.maximum
    if ext is None:
        return None, StatusCodes.BadNoData
    value, ts = ext
    beaten = a.non_good_min if aggregate == MINIMUM else a.non_good_max  # an Uncertain value beyond it
    beyond = beaten is not None and (beaten < value if aggregate == MINIMUM else beaten > value)
    st = StatusCodes.UncertainDataSubNormal if a.bad or beyond else StatusCodes.Good
    calculated = CALCULATED if ts != a.start_ns else 0  # Part 13: Raw when the extreme is at StartTime
    return value, st | calculated | partial


def intervals(start_ns: int, end_ns: int, step_ns: int) -> list[tuple[int, int, bool]]:
    """Part 13 intervals of [start, end): (start, end, partial), the last one shorter when the range
    is not a multiple of the step; one interval for a step of 0."""
    if step_ns <= 0 or step_ns >= end_ns - start_ns:
        return [(start_ns, end_ns, 0 < step_ns < end_ns - start_ns)]
    n = -(-(end_ns - start_ns) // step_ns)
    if n > MAX_INTERVALS:
        raise _Refused(StatusCodes.BadTooManyOperations)
    return [(a, min(a + step_ns, end_ns), a + step_ns > end_ns) for a in range(start_ns, end_ns, step_ns)]


# ----------------------------------------------------------------------------------------- service


class _Refused(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _time_ns(t: dt.datetime | None) -> int | None:
    """A request time in ns; None when not specified (DateTime.MinValue, or null)."""
    if t is None:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return None if t < _EPOCH_1601 else datetime_ns(t)


def _request_hash(node: ua.NodeId, details: Any, timestamps: Any) -> bytes:
    parts = [node.to_string(), type(details).__name__, str(timestamps)]
    for name in ("StartTime", "EndTime", "NumValuesPerNode", "ReturnBounds", "ProcessingInterval", "AggregateType"):
        parts.append(repr(getattr(details, name, None)))
    return hashlib.blake2b("|".join(parts).encode(), digest_size=8).digest()


@dataclass(frozen=True, slots=True)
class _Cont:
    phase: int  # raw: 1 values, 2 the end bound; processed: 3
    a: int
    b: int

    def pack(self, h: bytes) -> bytes:
        return _CP.pack(_MAGIC, self.phase, self.a, self.b, h)

    @classmethod
    def unpack(cls, raw: bytes, h: bytes) -> _Cont:
        try:
            magic, phase, a, b, got = _CP.unpack(raw)
        except struct.error:
            raise _Refused(StatusCodes.BadContinuationPointInvalid) from None
        if magic != _MAGIC or got != h or phase not in (1, 2, 3):
            raise _Refused(StatusCodes.BadContinuationPointInvalid)
        return cls(phase, a, b)


class BufferHistory(HistoryManager):
    """asyncua's HistoryManager with reads served from the buffer (HistoryUpdate stays refused)."""

    def __init__(
        self,
        iserver: InternalServer,
        history: TagHistory | None,
        *,
        budget: int = ROW_BUDGET,
        config: AggConfig | None = None,
    ) -> None:
        super().__init__(iserver)
        self.tags: dict[ua.NodeId, str] = {}  # historizing variable -> buffer tag
        self.history = history
        self.budget = budget
        self.config = config or AggConfig()

    def track(self, nodeid: ua.NodeId, tag: str) -> None:
        """A tag variable, made Historizing with the HistoryRead access bit (space.variable_items)."""
        self.tags[nodeid] = tag

    async def read_history(self, params: ua.HistoryReadParameters) -> list[ua.HistoryReadResult]:
        nodes = params.NodesToRead
        if len(nodes) > MAX_NODES:
            raise ServiceError(StatusCodes.BadTooManyOperations)
        if not nodes:
            raise ServiceError(StatusCodes.BadNothingToDo)
        if params.TimestampsToReturn not in (
            ua.TimestampsToReturn.Source, ua.TimestampsToReturn.Server, ua.TimestampsToReturn.Both
        ):  # fmt: skip
            raise ServiceError(StatusCodes.BadTimestampsToReturnInvalid)
        details = params.HistoryReadDetails
        if isinstance(details, ua.ReadProcessedDetails) and len(details.AggregateType) != len(nodes):
            raise ServiceError(StatusCodes.BadAggregateListMismatch)
        out = []
        for i, rv in enumerate(nodes):
            try:
                out.append(await self._one(params, details, rv, i))
            except _Refused as r:
                out.append(ua_struct(ua.HistoryReadResult, StatusCode=ua_struct(ua.StatusCode, value=r.status)))
        return out

    async def _one(
        self, params: ua.HistoryReadParameters, details: Any, rv: ua.HistoryReadValueId, i: int
    ) -> ua.HistoryReadResult:
        tag = self.tags.get(rv.NodeId)
        if tag is None:
            known = await self._exists(rv.NodeId)
            raise _Refused(StatusCodes.BadHistoryOperationUnsupported if known else StatusCodes.BadNodeIdUnknown)
        if not await self._history_readable(rv.NodeId):
            raise _Refused(StatusCodes.BadUserAccessDenied)
        if rv.IndexRange:
            raise _Refused(StatusCodes.BadIndexRangeInvalid)
        h = _request_hash(rv.NodeId, details, params.TimestampsToReturn)
        if params.ReleaseContinuationPoints:  # stateless: nothing to release
            if rv.ContinuationPoint:
                _Cont.unpack(rv.ContinuationPoint, h)
            return ua_struct(ua.HistoryReadResult, StatusCode=ua_struct(ua.StatusCode, value=StatusCodes.Good))
        cont = _Cont.unpack(rv.ContinuationPoint, h) if rv.ContinuationPoint else None
        if self.history is None:
            raise _Refused(StatusCodes.BadHistoryOperationUnsupported)  # no buffer (a tool, a test)
        try:
            if isinstance(details, ua.ReadRawModifiedDetails):
                if details.IsReadModified:
                    raise _Refused(StatusCodes.BadHistoryOperationUnsupported)  # samples are never modified
                values, nxt = await self._raw(tag, details, cont, params.TimestampsToReturn)
            elif isinstance(details, ua.ReadProcessedDetails):
                values, nxt = await self._processed(
                    tag, details, details.AggregateType[i], cont, params.TimestampsToReturn
                )
            else:  # ReadAtTime, ReadEvent, ReadAnnotation
                raise _Refused(StatusCodes.BadHistoryOperationUnsupported)
        except sqlite3.Error as exc:
            raise _Refused(StatusCodes.BadResourceUnavailable) from exc
        return ua_struct(
            ua.HistoryReadResult,
            StatusCode=ua_struct(ua.StatusCode, value=StatusCodes.Good),
            ContinuationPoint=nxt.pack(h) if nxt else None,
            HistoryData=ua_struct(ua.HistoryData, DataValues=values),
        )

    async def _exists(self, nodeid: ua.NodeId) -> bool:
        dv = self.iserver.aspace.read_attribute_value(nodeid, AttributeIds.NodeClass)
        return bool(dv.StatusCode is None or dv.StatusCode.is_good())

    async def _history_readable(self, nodeid: ua.NodeId) -> bool:
        dv = self.iserver.aspace.read_attribute_value(nodeid, AttributeIds.UserAccessLevel)
        level = dv.Value.Value if dv.Value is not None else 0
        return bool(isinstance(level, int) and level & ua.AccessLevel.HistoryRead.mask)

    # ------------------------------------------------------------------ raw

    async def _raw(
        self, tag: str, d: ua.ReadRawModifiedDetails, cont: _Cont | None, ts_mode: ua.TimestampsToReturn
    ) -> tuple[list[ua.DataValue], _Cont | None]:
        assert self.history is not None
        start, end = _time_ns(d.StartTime), _time_ns(d.EndTime)
        if start is None and end is None:
            raise _Refused(StatusCodes.BadInvalidTimestampArgument)
        if (start is None or end is None) and d.NumValuesPerNode == 0:
            raise _Refused(StatusCodes.BadInvalidTimestampArgument)  # an open range needs a count
        if start is not None and end is not None:
            reverse = end < start
            lo, hi = (end + 1, start) if reverse else (start, max(start, end - 1))  # end is exclusive
        elif start is not None:
            reverse, lo, hi = False, start, MAX_TS
        else:
            assert end is not None
            reverse, lo, hi = True, MIN_TS, end
        limit = min(d.NumValuesPerNode or MAX_VALUES, MAX_VALUES)
        bounds = bool(d.ReturnBounds) and start is not None and end is not None
        out: list[ua.DataValue] = []
        phase = cont.phase if cont else 1
        if phase == 1:
            pos = Position(cont.a, cont.b) if cont else None
            room = limit - (1 if bounds and cont is None else 0)
            page = await self.history(tag, lo, hi, reverse=reverse, start=pos, limit=max(1, room), budget=self.budget)
            if bounds and cont is None and not (page.samples and page.samples[0].ts_ns == start):
                assert start is not None
                out.append(await self._bound(tag, start, before=not reverse, ts_mode=ts_mode))
            out.extend(data_value(s, ts_mode) for s in page.samples)
            if page.next is not None:
                return out, _Cont(1, page.next.ts_ns, page.next.seq)
            if not bounds:
                return out, None
            if len(out) >= limit:
                return out, _Cont(2, 0, 0)
        assert end is not None and start is not None
        if start != end:  # the end bound: the value at or after end (at or before, reversed)
            out.append(await self._bound(tag, end, before=reverse, ts_mode=ts_mode, inclusive=True))
        return out, None

    async def _bound(
        self, tag: str, at: int, *, before: bool, ts_mode: ua.TimestampsToReturn, inclusive: bool = False
    ) -> ua.DataValue:
        """The nearest value before `at` (or after it), else BadBoundNotFound at `at` (Part 11)."""
        assert self.history is not None
        if before:
            lo, hi, reverse = MIN_TS, at if inclusive else at - 1, True
        else:
            lo, hi, reverse = at if inclusive else at + 1, MAX_TS, False
        pos: Position | None = None
        for _ in range(_BOUND_CALLS):
            page = await self.history(tag, lo, hi, reverse=reverse, start=pos, limit=1, budget=self.budget)
            if page.samples:
                return data_value(page.samples[0], ts_mode)
            if page.next is None:
                break
            pos = page.next
        return ua_struct(
            ua.DataValue,
            Value=ua.Variant(None, ua.VariantType.Null),
            StatusCode=ua_struct(ua.StatusCode, value=StatusCodes.BadBoundNotFound),
            SourceTimestamp=ns_datetime(at) if ts_mode != ua.TimestampsToReturn.Server else None,
            ServerTimestamp=ns_datetime(at) if ts_mode != ua.TimestampsToReturn.Source else None,
        )

    # ------------------------------------------------------------------ processed

    async def _processed(
        self, tag: str, d: ua.ReadProcessedDetails, agg: ua.NodeId, cont: _Cont | None, ts_mode: ua.TimestampsToReturn
    ) -> tuple[list[ua.DataValue], _Cont | None]:
        assert self.history is not None
        if agg.NamespaceIndex != 0 or agg.Identifier not in AGGREGATES:
            raise _Refused(StatusCodes.BadAggregateNotSupported)
        cfg = self._agg_config(d.AggregateConfiguration)
        start, end = _time_ns(d.StartTime), _time_ns(d.EndTime)
        if start is None or end is None or end <= start:
            raise _Refused(StatusCodes.BadInvalidTimestampArgument)  # forward, both times (README)
        if not d.ProcessingInterval >= 0 or math.isinf(d.ProcessingInterval):
            raise _Refused(StatusCodes.BadInvalidArgument)
        grid = intervals(start, end, int(d.ProcessingInterval * 1_000_000))
        k0 = cont.a if cont else 0
        if not 0 <= k0 < len(grid):
            raise _Refused(StatusCodes.BadContinuationPointInvalid)
        todo = grid[k0 : k0 + MAX_VALUES]
        accs = [Acc(a, b, p) for a, b, p in todo]
        lo, hi = todo[0][0], todo[-1][1] - 1
        pos: Position | None = None
        done = len(accs)  # intervals complete so far
        rows = 0
        k = 0
        while True:
            page = await self.history(tag, lo, hi, start=pos, limit=MAX_VALUES, budget=self.budget)
            rows += page.rows
            for s in page.samples:
                while s.ts_ns >= accs[k].end_ns:
                    k += 1
                accs[k].add(s)
            if page.next is None:
                break
            pos = page.next
            if rows >= self.budget:  # enough work for one response: return the complete intervals
                done = next((j for j, a in enumerate(accs) if a.end_ns > pos.ts_ns), len(accs))
                if done:
                    break
        out = []
        for acc in accs[:done]:
            value, status = compute(int(agg.Identifier), acc, cfg)
            out.append(
                ua_struct(
                    ua.DataValue,
                    Value=ua.Variant(value, ua.VariantType.Double)
                    if value is not None
                    else ua.Variant(None, ua.VariantType.Null),
                    StatusCode=ua_struct(ua.StatusCode, value=status),
                    SourceTimestamp=ns_datetime(acc.start_ns) if ts_mode != ua.TimestampsToReturn.Server else None,
                    ServerTimestamp=ns_datetime(acc.start_ns) if ts_mode != ua.TimestampsToReturn.Source else None,
                )
            )
        nk = k0 + done
        if nk >= len(grid):
            return out, None
        return out, _Cont(3, nk, grid[nk][0])

    def _agg_config(self, c: ua.AggregateConfiguration | None) -> AggConfig:
        if c is None or c.UseServerCapabilitiesDefaults:
            return self.config
        if not (0 <= c.PercentDataBad <= 100 and 0 <= c.PercentDataGood <= 100) or (
            c.PercentDataGood < 100 - c.PercentDataBad
        ):
            raise _Refused(StatusCodes.BadAggregateConfigurationRejected)
        return AggConfig(bool(c.TreatUncertainAsBad), int(c.PercentDataBad), int(c.PercentDataGood))


def data_value(s: Sample, ts_mode: ua.TimestampsToReturn = ua.TimestampsToReturn.Both) -> ua.DataValue:
    """A stored sample as a HistoryRead value: as the variable showed it (numbers as Double), with
    its status and source time (the buffer keeps no server time: the source time is given for both)."""
    value, status = s.value, s.status
    if value is None or severity(status) == Severity.BAD:
        variant = ua.Variant(None, ua.VariantType.Null)
        if severity(status) != Severity.BAD:
            status = Status.BAD
    elif isinstance(value, bool):
        variant = ua.Variant(value, ua.VariantType.Boolean)
    elif isinstance(value, int | float):
        variant = ua.Variant(float(value), ua.VariantType.Double)
    else:
        variant = ua.Variant(str(value), ua.VariantType.String)
    t = ns_datetime(s.ts_ns)
    return ua_struct(
        ua.DataValue,
        Value=variant,
        StatusCode=ua_struct(ua.StatusCode, value=status),
        SourceTimestamp=t if ts_mode != ua.TimestampsToReturn.Server else None,
        ServerTimestamp=t if ts_mode != ua.TimestampsToReturn.Source else None,
    )


# ----------------------------------------------------------------------------------------- address space


async def advertise(iserver: InternalServer) -> None:
    """The server's HistoryServerCapabilities filled in, its AggregateFunctions folders listing
    the aggregates served."""
    aspace = iserver.aspace
    caps: dict[int, Any] = {
        ObjectIds.HistoryServerCapabilities_AccessHistoryDataCapability: True,
        ObjectIds.HistoryServerCapabilities_MaxReturnDataValues: ua.Variant(MAX_VALUES, ua.VariantType.UInt32),
    }
    for ident, value in caps.items():
        node = ua_struct(ua.NodeId, Identifier=ident)
        if node in aspace:
            variant = value if isinstance(value, ua.Variant) else ua.Variant(value, ua.VariantType.Boolean)
            await iserver.write_attribute_value(node, ua.DataValue(variant))
    for folder in (
        ObjectIds.HistoryServerCapabilities_AggregateFunctions,
        ObjectIds.Server_ServerCapabilities_AggregateFunctions,
    ):
        src = ua_struct(ua.NodeId, Identifier=folder)
        if src not in aspace:
            continue
        refs = []
        for agg in AGGREGATES:
            ref = ua.AddReferencesItem()
            ref.SourceNodeId = src
            ref.TargetNodeId = ua_struct(ua.NodeId, Identifier=agg)
            ref.ReferenceTypeId = ua_struct(ua.NodeId, Identifier=ObjectIds.Organizes)
            ref.IsForward = True
            ref.TargetNodeClass = ua.NodeClass.Object
            refs.append(ref)
        iserver.node_mgt_service.add_references(refs)
