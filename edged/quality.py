"""Per-tag signal conditioning and quality scoring, applied to every sample before it is stored.

The driver reports what it knows (the device answered, the value decoded); this stage adds what
the configuration knows: units, calibration, the plausible range and behaviour of the signal.
Everything a tag needs is resolved when the processor is built (pint and scipy never run here),
and the state per tag is a few numbers plus at most one fixed-size window, so the cost per sample
is flat and memory is bounded by the config, whatever the driver sends.

Per sample: unit conversion -> calibration -> rounding (`decimals`) -> checks -> one status and a
score -> deadband.
docs/quality.md lists the checks, their statuses, penalties and precedence.
"""

from __future__ import annotations

import datetime
import enum
import logging
import math
import operator
import time
from bisect import bisect_left, bisect_right, insort
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import MappingProxyType

from edged import calibration
from edged.config import DeviceBase, TagBase
from edged.conversions.loop import Ne43Band, ne43_band
from edged.model import Sample, Status, Value

log = logging.getLogger("edged.quality")

SCORE_GOOD_MIN = 61  # scores never overlap across severities: Good 61..100, Uncertain 1..60, Bad 0
SCORE_UNCERTAIN = 60
MAD_SCALE = 1.4826  # scales the MAD to the standard deviation of normal noise
_RESERVED = 0xC0000000  # severity bits 0b11: not a valid StatusCode
_UNCERTAIN_MIN = 0x40000000
_BAD_MIN = 0x80000000
_NEVER = 1 << 62


class Check(enum.Enum):
    """What the core can find wrong with a sample, with the status it sets and its score penalty.

    Declaration order is the precedence: when several checks fire, the first one listed names the
    status (Bad ones come first, calibration age last, so it never hides a live problem).
    """

    NOT_FINITE = ("NaN, inf, or a number beyond float range", Status.BAD_SENSOR_FAILURE, 100)
    NE43_FAILURE = ("loop current in an NE43 failure band", Status.BAD_SENSOR_FAILURE, 100)
    STALE = ("source timestamp older than stale_after", Status.UNCERTAIN_LAST_USABLE_VALUE, 30)
    NOT_NUMERIC = ("bool/str value on a tag that converts or calibrates", Status.UNCERTAIN_CONFIGURATION_ERROR, 30)
    RANGE = ("outside low/high", Status.UNCERTAIN_ENGINEERING_UNITS_EXCEEDED, 20)
    NE43_RANGE = ("loop current outside 3.8..20.5 mA", Status.UNCERTAIN_ENGINEERING_UNITS_EXCEEDED, 20)
    TABLE_RANGE = ("outside the calibration table", Status.UNCERTAIN_ENGINEERING_UNITS_EXCEEDED, 20)
    RATE = ("changed faster than max_rate", Status.UNCERTAIN_SENSOR_NOT_ACCURATE, 20)
    SPIKE = ("outlier against the median/MAD of the window", Status.UNCERTAIN_SENSOR_NOT_ACCURATE, 20)
    FLATLINE = ("unchanged for flatline", Status.UNCERTAIN_SENSOR_NOT_ACCURATE, 20)
    CALIBRATION_DUE = ("past calibration_due", Status.UNCERTAIN_SENSOR_CALIBRATION, 10)

    what: str
    status: Status
    penalty: int
    bad: bool

    def __init__(self, what: str, status: Status, penalty: int) -> None:
        self.what = what
        self.status = status
        self.penalty = penalty
        self.bad = status >= _BAD_MIN


_RANK = MappingProxyType({c: i for i, c in enumerate(Check)})


def resolve(status: int, score: int, found: list[Check]) -> tuple[int, int]:
    """(status, score) from the driver's status/score and the core's findings.

    Bad from the driver stays; a Bad finding wins; an Uncertain driver code is kept (the driver knows
    the device) but the findings still lower the score; otherwise the highest-precedence finding
    names the status. Scores stay in the band of their severity (see SCORE_GOOD_MIN).
    """
    if not (isinstance(status, int) and 0 <= status < _RESERVED):
        return Status.BAD, 0
    if status >= _BAD_MIN:
        return status, 0
    if not isinstance(score, int):
        score = 100
    if found:
        worst = min(found, key=_RANK.__getitem__)
        if worst.bad:
            return worst.status, 0
        penalty = sum(c.penalty for c in found)
        return (status if status >= _UNCERTAIN_MIN else worst.status), max(1, min(score, SCORE_UNCERTAIN) - penalty)
    if status >= _UNCERTAIN_MIN:
        return status, max(1, min(score, SCORE_UNCERTAIN))
    return status, max(SCORE_GOOD_MIN, min(score, 100))


def _day_after_ns(day: datetime.date) -> int:
    """Start (UTC) of the day after `day`: a due date is still a valid day."""
    return ((day - datetime.date(1970, 1, 1)).days + 1) * 86_400 * 1_000_000_000


@dataclass(slots=True, eq=False)
class _Tag:
    """One configured tag: its resolved settings and its bounded state."""

    path: str
    unit: str | None  # stamped on samples the core converted or calibrated; otherwise the driver's is kept
    low: float | None
    high: float | None
    deadband: float
    heartbeat_ns: int | None
    factor: float | None = None  # unit conversion; None when there is none (or it is the identity)
    offset: float = 0.0
    curve: calibration.Curve | None = None
    decimals: int | None = None  # round floats to this many places, after calibration, before the checks
    table_lo: float = -math.inf
    table_hi: float = math.inf
    ne43: bool = False
    max_rate: float | None = None
    flat_ns: int | None = None
    flat_tol: float = 0.0
    spike_k: float | None = None  # spike_mad * MAD_SCALE
    spike_floor: float = 0.0  # spike_mad * spike_floor
    stale_ns: int | None = None
    due_ns: int | None = None
    # state: last stored (deadband), rate, flat line, spike window, silence
    last_value: Value = None
    last_status: int | None = None
    last_ts: int = 0
    prev_x: float = 0.0
    prev_ts: int | None = None
    flat_lo: float = 0.0
    flat_hi: float = 0.0
    flat_since: int | None = None
    window: deque[float] | None = None  # arrival order, for eviction
    ranked: list[float] = field(default_factory=list)  # the same values, sorted
    rx_ns: int = 0  # gateway clock when the last sample arrived
    silent: bool = False  # a silence was reported and no sample has come since
    transforms: bool = False  # converts units or calibrates: values are then floats in `unit`


def _build(path: str, t: TagBase, now_ns: int) -> _Tag:
    q = t.quality
    tag = _Tag(
        path=path,
        unit=t.unit,
        low=t.low,
        high=t.high,
        deadband=t.deadband,
        heartbeat_ns=int(t.heartbeat * 1e9) if t.heartbeat is not None else None,
        decimals=t.decimals,
        ne43=q.ne43,
        max_rate=q.max_rate,
        flat_ns=int(q.flatline * 1e9) if q.flatline is not None else None,
        flat_tol=q.flatline_tolerance,
        stale_ns=int(q.stale_after * 1e9) if q.stale_after is not None else None,
        due_ns=_day_after_ns(t.calibration_due) if t.calibration_due is not None else None,
        rx_ns=now_ns,
    )
    if t.source_unit is not None and t.unit is not None:
        from edged.units import conversion  # cached: the config loader already computed it

        factor, offset = conversion(t.source_unit, t.unit)
        if (factor, offset) != (1.0, 0.0):
            tag.factor, tag.offset = factor, offset
    if t.calibration is not None:
        tag.curve = calibration.build(t.calibration)
        span = calibration.domain(t.calibration)
        if span is not None:
            tag.table_lo, tag.table_hi = span
    tag.transforms = tag.factor is not None or tag.curve is not None
    if q.spike_mad is not None:
        tag.spike_k = q.spike_mad * MAD_SCALE
        tag.spike_floor = q.spike_mad * q.spike_floor
        tag.window = deque(maxlen=q.spike_window)
    return tag


class TagProcessor:
    """Conversion, calibration, quality checks and deadband filtering for one device's tags.

    `clock` is the gateway clock (ns) used for staleness; it is read once per `process` call.
    """

    def __init__(self, device: DeviceBase, *, clock: Callable[[], int] = time.time_ns) -> None:
        self._clock = clock
        now = clock()
        self._tags = {device.tag_path(t): _build(device.tag_path(t), t, now) for t in device.tags}
        self._stale = [t for t in self._tags.values() if t.stale_ns is not None]
        self._next_sweep = min((now + t.stale_ns + 1 for t in self._stale if t.stale_ns), default=_NEVER)
        self.malformed = 0  # samples a driver built wrongly (a value of an unsupported type, a bad timestamp)

    def process(self, samples: Iterable[Sample]) -> list[Sample]:
        """The samples to store: checked, scored, minus those the deadband holds back, plus one
        sample per tag that has gone silent for longer than its `stale_after`."""
        now = self._clock()
        out: list[Sample] = []
        tags = self._tags
        for s in samples:
            try:
                tag = tags.get(s.tag)
                r = self._unknown(s) if tag is None else self._one(tag, s, now)
            except (TypeError, ValueError, ArithmeticError) as exc:
                r = self._malformed(s, now, exc)
            if r is not None:
                out.append(r)
        if now >= self._next_sweep:
            out.extend(self.sweep(now))
        return out

    def _one(self, tag: _Tag, s: Sample, now: int) -> Sample | None:
        value, ts = s.value, s.ts_ns
        if ts.__class__ is not int:
            ts = operator.index(ts)  # a numpy integer is fine; None or a float raises TypeError
        if tag.silent:
            tag.silent = False
            self._next_sweep = min(self._next_sweep, now + (tag.stale_ns or 0) + 1)
        tag.rx_ns = now
        found: list[Check] = []
        status = s.status
        driver_bad = not (isinstance(status, int) and 0 <= status < _BAD_MIN)
        cls = value.__class__
        if cls is float or cls is int or (isinstance(value, (int, float)) and cls is not bool):
            # a Bad sample carries no value out of the core
            value = None if driver_bad else self._numeric(tag, value, ts, now, found)  # type: ignore[arg-type]
        elif value is None or cls is bool or cls is str:
            if tag.transforms and value is not None and not driver_bad:
                found.append(Check.NOT_NUMERIC)
            if driver_bad:
                value = None
            else:
                self._timeliness(tag, ts, now, found)
        else:
            raise TypeError(f"unsupported value type {cls.__name__}")
        status, score = resolve(status, s.score, found)
        if status >= _BAD_MIN:
            value = None
        if tag.deadband > 0 and self._suppressed(tag, ts, value, status):
            return None
        tag.last_value, tag.last_status, tag.last_ts = value, status, ts
        unit = tag.unit if tag.transforms and tag.unit is not None else s.unit
        if value is s.value and status == s.status and score == s.score and unit == s.unit and ts is s.ts_ns:
            return s
        return Sample(s.tag, ts, value, status, score, unit, s.seq)

    def _numeric(self, tag: _Tag, value: float, ts: int, now: int, found: list[Check]) -> float | None:
        """Convert, calibrate and check one number; returns the engineering value (None when Bad)."""
        try:
            x = value if value.__class__ is float else float(value)
        except OverflowError:  # an int beyond float range is not a measurement
            x = math.inf
        if not math.isfinite(x):
            found.append(Check.NOT_FINITE)
            return None
        if tag.ne43:
            band = ne43_band(x)
            if band is not Ne43Band.OK:
                found.append(Check.NE43_RANGE if band.quality == "uncertain" else Check.NE43_FAILURE)
                if found[-1].bad:
                    return None
        transformed = False
        if tag.factor is not None:
            x = x * tag.factor + tag.offset
            transformed = True
        if tag.curve is not None:
            if not tag.table_lo <= x <= tag.table_hi:
                found.append(Check.TABLE_RANGE)
            x = tag.curve(x)
            transformed = True
        if transformed and not math.isfinite(x):
            found.append(Check.NOT_FINITE)
            return None
        if tag.decimals is not None and (transformed or isinstance(value, float)):
            # the checks and the deadband judge what is stored; an int stays an exact int
            x = round(x, tag.decimals)
            transformed = True
        if (tag.low is not None and x < tag.low) or (tag.high is not None and x > tag.high):
            found.append(Check.RANGE)
        if tag.max_rate is not None:
            self._rate(tag, x, ts, found)
        if tag.flat_ns is not None:
            self._flatline(tag, x, ts, found)
        if tag.window is not None:
            self._spike(tag, x, found)
        self._timeliness(tag, ts, now, found)
        return x if transformed else value  # untransformed: the driver's object, an int stays an int

    @staticmethod
    def _timeliness(tag: _Tag, ts: int, now: int, found: list[Check]) -> None:
        if tag.stale_ns is not None and now - ts > tag.stale_ns:
            found.append(Check.STALE)
        if tag.due_ns is not None and ts >= tag.due_ns:
            found.append(Check.CALIBRATION_DUE)

    @staticmethod
    def _rate(tag: _Tag, x: float, ts: int, found: list[Check]) -> None:
        """|dx/dt| > max_rate against the previous value; out-of-order timestamps are not judged."""
        prev_ts = tag.prev_ts
        if prev_ts is not None:
            if ts <= prev_ts:
                return
            assert tag.max_rate is not None
            if abs(x - tag.prev_x) * 1e9 > tag.max_rate * (ts - prev_ts):
                found.append(Check.RATE)
        tag.prev_x, tag.prev_ts = x, ts

    @staticmethod
    def _flatline(tag: _Tag, x: float, ts: int, found: list[Check]) -> None:
        """All values since `flat_since` lie within flat_tol of each other, for flat_ns or longer."""
        since = tag.flat_since
        lo = x if x < tag.flat_lo else tag.flat_lo
        hi = x if x > tag.flat_hi else tag.flat_hi
        if since is None or hi - lo > tag.flat_tol:
            tag.flat_lo = tag.flat_hi = x
            tag.flat_since = ts
            return
        tag.flat_lo, tag.flat_hi = lo, hi
        assert tag.flat_ns is not None
        if ts - since >= tag.flat_ns:
            found.append(Check.FLATLINE)

    @staticmethod
    def _spike(tag: _Tag, x: float, found: list[Check]) -> None:
        """|x - median| > spike_mad * max(MAD_SCALE * MAD, spike_floor) over the previous window.

        The window is kept sorted (bisect), so the median is an index and the MAD test needs no
        second sort: MAD < r exactly when more than half the window lies strictly within r of the
        median. With MAD = 0 and no floor there is no scale to judge by, so nothing is flagged.
        """
        window, ranked = tag.window, tag.ranked
        assert window is not None and tag.spike_k is not None
        n = len(ranked)
        if n == window.maxlen:
            half = n >> 1
            m = ranked[half]
            dev = abs(x - m)
            if dev > tag.spike_floor:
                r = dev / tag.spike_k
                if bisect_left(ranked, m + r) - bisect_right(ranked, m - r) > half and (
                    tag.spike_floor > 0 or bisect_right(ranked, m) - bisect_left(ranked, m) <= half
                ):
                    found.append(Check.SPIKE)
            del ranked[bisect_left(ranked, window[0])]
        window.append(x)
        insort(ranked, x)

    @staticmethod
    def _suppressed(tag: _Tag, ts: int, value: Value, status: int) -> bool:
        """Inside the deadband, same status, and the heartbeat not yet due: nothing new to store."""
        if tag.last_status != status:
            return False
        last = tag.last_value
        if not isinstance(value, (int, float)) or not isinstance(last, (int, float)):
            return False
        if abs(value - last) >= tag.deadband:
            return False
        return tag.heartbeat_ns is None or ts - tag.last_ts < tag.heartbeat_ns

    @staticmethod
    def _unknown(s: Sample) -> Sample:
        """A tag the config does not list: no settings, no state; only the universal rules apply."""
        value = s.value
        found = [Check.NOT_FINITE] if isinstance(value, float) and not math.isfinite(value) else []
        if not (value is None or isinstance(value, (int, float, str))):
            raise TypeError(f"unsupported value type {type(value).__name__}")
        status, score = resolve(s.status, s.score, found)
        if status >= _BAD_MIN:
            value = None
        if value is s.value and status == s.status and score == s.score:
            return s
        return Sample(s.tag, s.ts_ns, value, status, score, s.unit, s.seq)

    def _malformed(self, s: Sample, now: int, exc: Exception) -> Sample | None:
        """A sample the driver built wrongly: stored as Bad (so it is seen) and logged, sparingly."""
        self.malformed += 1
        if self.malformed == 1 or self.malformed % 1000 == 0:
            log.warning("malformed sample for %r (%d so far): %s", s.tag, self.malformed, exc)
        if not isinstance(s.tag, str):
            return None
        ts = s.ts_ns if s.ts_ns.__class__ is int else now
        unit = s.unit if s.unit is None or isinstance(s.unit, str) else None
        return Sample(s.tag, ts, None, Status.BAD_DECODING_ERROR, 0, unit)

    def sweep(self, now_ns: int | None = None) -> list[Sample]:
        """One sample for each tag silent for longer than its `stale_after`.

        `process` calls this itself when a deadline has passed, so a tag that drops out of its
        device's batches is reported without a timer per tag. A tag never heard from becomes
        BadWaitingForInitialData; one whose last value was usable gets that value again as
        UncertainLastUsableValue; a tag already Bad adds nothing. Reported once per silence.
        """
        now = self._clock() if now_ns is None else now_ns
        out: list[Sample] = []
        next_sweep = _NEVER
        for tag in self._stale:
            if tag.silent:
                continue
            assert tag.stale_ns is not None
            due = tag.rx_ns + tag.stale_ns
            if now <= due:
                next_sweep = min(next_sweep, due + 1)
                continue
            tag.silent = True
            if tag.last_status is None:
                s = Sample(tag.path, now, None, Status.BAD_WAITING_FOR_INITIAL_DATA, 0, tag.unit)
            elif tag.last_status >= _BAD_MIN:
                continue
            else:
                status, score = resolve(Status.GOOD, 100, [Check.STALE])
                s = Sample(tag.path, now, tag.last_value, status, score, tag.unit)
            tag.last_value, tag.last_status, tag.last_ts = s.value, s.status, now
            out.append(s)
        self._next_sweep = next_sweep
        return out

    def outage(self, status: int, now_ns: int | None = None) -> list[Sample]:
        """One Bad sample per tag for a lost device, recorded as each tag's last stored state, so
        the first value after the outage is stored even when it is inside the deadband."""
        now = self._clock() if now_ns is None else now_ns
        bad = status if isinstance(status, int) and _BAD_MIN <= status < _RESERVED else Status.BAD_NO_COMMUNICATION
        out = []
        for tag in self._tags.values():
            tag.last_value, tag.last_status, tag.last_ts = None, bad, now
            out.append(Sample(tag.path, now, None, bad, 0, tag.unit))
        return out

    def state_size(self) -> int:
        """Values held across all tags (windows included): bounded by the config, for tests and metrics."""
        return sum(len(t.ranked) + (len(t.window) if t.window is not None else 0) for t in self._tags.values())
