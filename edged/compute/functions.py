"""The calculations behind computed tags, each a small state machine fed one input sample at a time.

Quality rules (docs/compute.md): a result's status is the worst of the inputs it used (Bad ->
no value, unless the function tolerates it: voting), an input older than its max age is stale
(Uncertain), the score is the smallest input score, the timestamp the newest input's. Nothing is
invented: a window says how much of itself it saw (coverage), a totalizer never integrates across
a Bad stretch or a gap longer than `max_gap` (its total is Uncertain from then until a reset).

Every calculation works on source timestamps, so the same stored samples give the same results
live, after a restart and in a test with an injected clock.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from edged.compute.plan import TagPlan
from edged.model import Sample, Severity, Status, Value, severity

log = logging.getLogger("edged.compute")

Out = tuple[int, Value, int, int]  # ts_ns, value, status, score
_BAD_MIN = 0x80000000
_UNC_MIN = 0x40000000
ALIGNED_GRACE_NS = 2_000_000_000  # an aligned window closes by the clock this long after its end
MAX_WINDOWS_AT_ONCE = 1000  # a silence longer than this many windows is not filled window by window


def usable(status: int) -> bool:
    """Good or Uncertain: a value to compute with (Bad carries none)."""
    return 0 <= status < _BAD_MIN


def worse(a: int, b: int) -> int:
    """The status of worse severity (the first on a tie); statuses are stored ones (0..2^32)."""
    if b < _UNC_MIN:  # b Good: the hot path, kept to one comparison
        return a
    if a < _UNC_MIN:
        return b
    return b if b >= _BAD_MIN > a else a  # both Uncertain or worse (0b11, reserved, counts as Bad)


def number(value: Value) -> float | None:
    """A value as a float for arithmetic; bools are 0/1, strings and None are not numbers."""
    if value is None or isinstance(value, str):
        return None
    return float(value)


@dataclass(slots=True)
class Point:
    ts: int
    value: float | None  # None: Bad (or not a number)
    status: int
    score: int


def point(s: Sample, k: float = 1.0, off: float = 0.0) -> Point:
    x = number(s.value) if usable(s.status) else None
    if x is not None and not math.isfinite(x):
        x = None
    status = s.status if x is not None or not usable(s.status) else Status.BAD_TYPE_MISMATCH
    return Point(s.ts_ns, x * k + off if x is not None else None, status, s.score)


class Events:
    """Where a calculation reports what an alarm may later hook into (drift): counted and logged here."""

    def __init__(self, hook: Callable[[str, str, bool, int, str], None] | None = None) -> None:
        self.hook = hook
        self.counts: dict[str, int] = {}

    def __call__(self, tag: str, kind: str, active: bool, ts_ns: int, detail: str) -> None:
        key = f"{kind}_{'raised' if active else 'cleared'}"
        self.counts[key] = self.counts.get(key, 0) + 1
        (log.warning if active else log.info)("computed %s: %s %s: %s", tag, kind,
                                              "raised" if active else "cleared", detail,
                                              extra={"tag": tag, "event": kind})  # fmt: skip
        if self.hook is not None:
            self.hook(tag, kind, active, ts_ns, detail)


class Calc:
    """One computed tag's state. `push` records an input sample (a stream function may produce a
    result right away); `evaluate` returns what is due after the pushes of one round."""

    def __init__(self, plan: TagPlan, events: Events) -> None:
        self.plan = plan
        self.events = events
        self.pending: list[Out] = []
        self.out_of_order = 0

    def push(self, i: int, s: Sample) -> None:
        raise NotImplementedError

    def evaluate(self) -> list[Out]:
        out, self.pending = self.pending, []
        return out

    def tick(self, now_ns: int) -> list[Out]:
        return []


# ----------------------------------------------------------------------------------------- latest-value


class _Latest(Calc):
    """Functions of the newest value of each input: evaluated once per round in which one changed."""

    def __init__(self, plan: TagPlan, events: Events) -> None:
        super().__init__(plan, events)
        self.latest: list[Sample | None] = [None] * len(plan.inputs)
        self.dirty = False

    def push(self, i: int, s: Sample) -> None:
        prev = self.latest[i]
        if prev is not None and s.ts_ns < prev.ts_ns:
            self.out_of_order += 1
            return
        self.latest[i] = s
        self.dirty = True

    def evaluate(self) -> list[Out]:
        if not self.dirty:
            return []
        self.dirty = False
        return [self.compute()]

    def inputs_quality(self) -> tuple[int, int, int, list[int]]:
        """(status, score, ts, per-input status after the staleness rule) over all inputs."""
        latest = self.latest
        newest = max((s.ts_ns for s in latest if s is not None), default=0)
        status, score = int(Status.GOOD), 100
        each: list[int] = []
        for s, max_age in zip(latest, self.plan.input_max_age_ns, strict=True):
            if s is None:
                st = int(Status.BAD_WAITING_FOR_INITIAL_DATA)
            else:
                st = s.status
                if max_age is not None and usable(st) and newest - s.ts_ns > max_age:
                    st = worse(st, Status.UNCERTAIN_LAST_USABLE_VALUE)
                score = min(score, s.score)
            each.append(st)
            status = worse(status, st)
        return status, score, newest, each

    def compute(self) -> Out:
        raise NotImplementedError


class ExprCalc(_Latest):
    """An expression (and `difference`): any Bad input makes the result Bad."""

    def compute(self) -> Out:
        status, score, ts, _ = self.inputs_quality()
        if not usable(status):
            return (ts, None, status, 0)
        values: list[Any] = []
        for s in self.latest:
            assert s is not None
            v = s.value
            if isinstance(v, str) or v is None:
                return (ts, None, Status.BAD_TYPE_MISMATCH, 0)
            values.append(v)
        expr = self.plan.expr
        assert expr is not None
        try:
            result = expr.fn(values)
        except (ArithmeticError, ValueError, TypeError):  # 1/0, log(-1), sqrt(-1), overflow
            return (ts, None, Status.BAD_AGGREGATE_INVALID_INPUTS, 0)
        if isinstance(result, float) and not math.isfinite(result):
            return (ts, None, Status.BAD_AGGREGATE_INVALID_INPUTS, 0)
        if isinstance(result, int) and not isinstance(result, bool):
            result = float(result)
        return (ts, result, status, score)


class VoteCalc(_Latest):
    """Redundant transmitters: `median` (2oo3 for three) or `mean` of the usable ones, and the
    deviation check that turns the result Uncertain while they drift apart (an alarm can hook it)."""

    def __init__(self, plan: TagPlan, events: Events) -> None:
        super().__init__(plan, events)
        cfg = plan.cfg
        self.max_dev = cfg.max_deviation
        self.delay_ns = int(cfg.deviation_delay * 1e9)
        self.apart_since: int | None = None
        self.drifting = False

    def compute(self) -> Out:
        _, _, ts, each = self.inputs_quality()
        used: list[tuple[float, int, int]] = []
        first_bad: int | None = None  # with no usable input, the result has the first Bad input's status
        for s, st, (k, off) in zip(self.latest, each, self.plan.factors, strict=True):
            x = number(s.value) if s is not None and usable(st) else None
            if x is None or not math.isfinite(x):
                if first_bad is None:
                    first_bad = st if not usable(st) else Status.BAD_TYPE_MISMATCH
                continue
            used.append((x * k + off, st, s.score if s is not None else 0))
        if not used:
            return (ts, None, first_bad if first_bad is not None else Status.BAD, 0)
        xs = sorted(x for x, _, _ in used)
        n = len(self.plan.inputs)
        if self.plan.cfg.function == "median":
            m = len(xs)
            value = xs[m // 2] if m % 2 else (xs[m // 2 - 1] + xs[m // 2]) / 2
            enough = m >= n // 2 + 1
        else:
            value = sum(xs) / len(xs)
            enough = len(xs) >= self.plan.cfg.min_good
        status = int(Status.GOOD)
        for _, st, _ in used:
            status = worse(status, st)
        if not enough:
            status = worse(status, Status.UNCERTAIN_SUB_NORMAL)
        if self.max_dev is not None:
            spread = xs[-1] - xs[0] if len(xs) >= 2 else 0.0
            self._deviation(spread, ts)
            if self.drifting:
                status = worse(status, Status.UNCERTAIN_SENSOR_NOT_ACCURATE)
        return (ts, value, status, min(sc for _, _, sc in used))

    def _deviation(self, spread: float, ts: int) -> None:
        assert self.max_dev is not None
        if spread > self.max_dev:
            if self.apart_since is None:
                self.apart_since = ts
            if not self.drifting and ts - self.apart_since >= self.delay_ns:
                self.drifting = True
                self.events(self.plan.path, "drift", True, ts,
                            f"redundant inputs {spread:g} apart (max_deviation {self.max_dev:g}) for "
                            f"{(ts - self.apart_since) / 1e9:g}s: result Uncertain")  # fmt: skip
        else:
            self.apart_since = None
            if self.drifting:
                self.drifting = False
                self.events(self.plan.path, "drift", False, ts, f"redundant inputs back within {self.max_dev:g}")


# ----------------------------------------------------------------------------------------- streams


class RateCalc(Calc):
    """d(input)/dt between consecutive usable samples, in the tag's unit (or per `time_base`)."""

    def __init__(self, plan: TagPlan, events: Events) -> None:
        super().__init__(plan, events)
        self.prev: Point | None = None
        self.max_gap_ns = int(plan.cfg.max_gap * 1e9) if plan.cfg.max_gap is not None else None

    def push(self, i: int, s: Sample) -> None:
        p = point(s)
        prev = self.prev
        if prev is not None and p.ts <= prev.ts:
            self.out_of_order += 1
            return
        self.prev = p
        if p.value is None:
            self.pending.append((p.ts, None, p.status, 0))
            return
        if prev is None or prev.value is None:
            return
        dt = p.ts - prev.ts
        if self.max_gap_ns is not None and dt > self.max_gap_ns:
            return  # no rate across a silence: the next sample starts again
        rate = (p.value - prev.value) * 1e9 / dt * self.plan.scale
        self.pending.append((p.ts, rate, worse(prev.status, p.status), min(prev.score, p.score)))


class EmaCalc(Calc):
    """Exponential smoothing with a time constant, so irregular sampling weighs time, not samples."""

    def __init__(self, plan: TagPlan, events: Events) -> None:
        super().__init__(plan, events)
        assert plan.cfg.time_constant is not None
        self.tau_ns = float(plan.cfg.time_constant) * 1e9
        self.max_gap_ns = int(plan.cfg.max_gap * 1e9) if plan.cfg.max_gap is not None else None
        self.y: float | None = None
        self.last_ts: int | None = None

    def push(self, i: int, s: Sample) -> None:
        k, off = self.plan.factors[0]
        p = point(s, k, off)
        if self.last_ts is not None and p.ts <= self.last_ts:
            self.out_of_order += 1
            return
        if p.value is None:
            self.pending.append((p.ts, None, p.status, 0))
            return
        gap = self.last_ts is not None and self.max_gap_ns is not None and p.ts - self.last_ts > self.max_gap_ns
        if self.y is None or self.last_ts is None or gap:
            self.y = p.value
        else:
            alpha = 1.0 - math.exp(-(p.ts - self.last_ts) / self.tau_ns)
            self.y += alpha * (p.value - self.y)
        self.last_ts = p.ts
        self.pending.append((p.ts, self.y, p.status, p.score))


class TotalizerCalc(Calc):
    """The integral of a rate (t/h -> t), with no integration across Bad input or a gap longer than
    max_gap (the total is then Uncertain until a reset), optional rollover, and a reset (a write).

    The total is a stored sample whose timestamp is the newest input integrated: `recover` rebuilds
    the state from the newest stored total plus the stored inputs after it, so a restart or a
    SIGKILL neither loses what was stored nor counts anything twice.
    """

    def __init__(self, plan: TagPlan, events: Events) -> None:
        super().__init__(plan, events)
        cfg = plan.cfg
        self.scale = plan.scale  # per ns below
        self.linear = cfg.interpolation == "linear"
        self.max_gap_ns = int(cfg.max_gap * 1e9) if cfg.max_gap is not None else None
        self.rollover = cfg.rollover
        self.total = 0.0
        self.incomplete = False  # a Bad stretch or a gap was not integrated: the total is Uncertain
        self.last: Point | None = None
        self.rollovers = 0
        self.emitted_ns: int | None = None  # gateway clock of the last total handed out (Engine.tick)

    def _advance(self, p: Point) -> bool:
        """Integrate up to p; False for a sample that is not newer than the last one."""
        last = self.last
        if last is not None and p.ts <= last.ts:
            self.out_of_order += 1
            return False
        if last is not None:
            dt = p.ts - last.ts
            if last.value is None or (self.max_gap_ns is not None and dt > self.max_gap_ns):
                self.incomplete = True
            else:
                v = (last.value + p.value) / 2 if self.linear and p.value is not None else last.value
                self.total += v * dt / 1e9 * self.scale
                if self.rollover is not None and self.total >= self.rollover:
                    self.rollovers += int(self.total // self.rollover)
                    self.total = math.fmod(self.total, self.rollover)
        self.last = p
        return True

    def _out(self, ts: int, score: int) -> Out:
        status = Status.UNCERTAIN_DATA_SUB_NORMAL if self.incomplete else Status.GOOD
        return (ts, self.total, status, score)

    def push(self, i: int, s: Sample) -> None:
        p = point(s)
        if self._advance(p):
            self.pending.append(self._out(p.ts, s.score if p.value is not None else 100))

    def refresh(self) -> Out | None:
        """The current total again, stamped with the newest input integrated (what recovery needs):
        stored while the input is silent, so retention never trims the newest total away."""
        if self.last is None:
            return None
        return self._out(self.last.ts, 100)

    def reset(self, value: float, now_ns: int) -> Out:
        """Set the total (0: a reset; another value: a preset), from `now` or the newest input integrated."""
        ts = max(now_ns, self.last.ts if self.last is not None else now_ns)
        if self.last is not None:
            self.last = Point(ts, self.last.value, self.last.status, self.last.score)
        self.total = float(value)
        self.incomplete = False
        return self._out(ts, 100)

    def restore(self, total: Sample | None, bounding: Sample | None, later: Sequence[Sample]) -> None:
        """State after a restart: the newest stored total, the input in effect when it was made, and
        the stored inputs after it (those newer than the total are integrated now, once)."""
        if total is None:
            return  # a new totalizer: it counts from its first input, not the input's stored history
        value = number(total.value)
        self.total = value if value is not None and math.isfinite(value) else 0.0
        self.incomplete = value is None or severity(total.status) != Severity.GOOD
        if bounding is not None:
            b = point(bounding)
            self.last = Point(total.ts_ns, b.value, b.status, b.score)
        else:
            self.last = Point(total.ts_ns, None, Status.BAD_NO_DATA, 0)  # the rate then is unknown
        for s in later:
            if s.ts_ns > total.ts_ns:
                self._advance(point(s))


# ----------------------------------------------------------------------------------------- windows


@dataclass(frozen=True, slots=True)
class Aggregate:
    value: float | None
    status: int
    score: int
    coverage: float  # 0..1 of the window with usable data


def aggregate(
    kind: str, pts: Sequence[Point], start: int, end: int, *, linear: bool, min_coverage: float, closed: bool
) -> Aggregate:
    """One window function over [start, end) (`closed`: [start, end], a sliding window ending at
    its newest sample), OPC UA Part 13 style.

    `pts` are in time order and may begin with the sample in effect at `start` (the bounding value).
    Each sample holds until the next (stepped), or runs linearly towards the next usable one
    (`linear`, average only). A Bad stretch is left out of the time-weighted average and of the
    coverage; the raw-value functions (count, sum, stddev) use the usable samples inside the window,
    minimum/maximum/first/last the values in effect during it (the bounding one included). With no
    usable data the result is Bad (BadNoData); below `min_coverage` percent, UncertainDataSubNormal.
    """
    span = end - start
    n = len(pts)
    covered = 0
    area = 0.0
    status = int(Status.GOOD)
    score = 100
    in_effect: list[Point] = []
    inside: list[Point] = []
    for i in range(n):
        p = pts[i]
        if p.ts > end or (p.ts == end and not closed):
            break
        nxt = pts[i + 1] if i + 1 < n and (pts[i + 1].ts < end or (closed and pts[i + 1].ts == end)) else None
        a = p.ts if p.ts > start else start
        b = nxt.ts if nxt is not None else end
        if b < a:
            b = a
        if p.value is None:
            continue
        if p.ts >= start:
            inside.append(p)
        if p.ts >= start or b > start:
            in_effect.append(p)
        d = b - a
        if d > 0:
            covered += d
            if linear and nxt is not None and nxt.value is not None and nxt.ts > p.ts:
                slope = (nxt.value - p.value) / (nxt.ts - p.ts)
                va = p.value + slope * (a - p.ts)
                vb = p.value + slope * (b - p.ts)
                area += (va + vb) / 2 * d
            else:
                area += p.value * d
    used = in_effect if kind in ("minimum", "maximum", "first", "last", "average") else inside
    for p in used:
        if p.status:
            status = worse(status, p.status)
        if p.score < score:
            score = p.score
    coverage = covered / span if span > 0 else (1.0 if inside else 0.0)
    value: float | None
    if kind == "average":
        value = area / covered if covered > 0 else (inside[-1].value if span == 0 and inside else None)
    elif kind == "count":
        value = float(len(inside)) if (covered > 0 or inside) else None
    elif kind == "sum":
        value = math.fsum(p.value for p in inside if p.value is not None) if (covered > 0 or inside) else None
    elif kind == "stddev":
        xs = [p.value for p in inside if p.value is not None]
        if len(xs) >= 2:
            mean = math.fsum(xs) / len(xs)
            value = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
        else:
            value = None
    else:
        vals = [p.value for p in in_effect if p.value is not None]
        if not vals:
            value = None
        elif kind == "minimum":
            value = min(vals)
        elif kind == "maximum":
            value = max(vals)
        elif kind == "first":
            value = vals[0]
        else:
            value = vals[-1]
    if value is None:
        return Aggregate(None, Status.BAD_NO_DATA, 0, coverage)
    if coverage * 100.0 < min_coverage - 1e-9:
        status = worse(status, Status.UNCERTAIN_DATA_SUB_NORMAL)
    return Aggregate(value, status, score, coverage)


class WindowCalc(Calc):
    """A window function over a sliding window (every input sample: the window ending at it) or
    fixed windows aligned to the clock (one result per window, stamped with its start, Part 13)."""

    def __init__(self, plan: TagPlan, events: Events) -> None:
        super().__init__(plan, events)
        cfg = plan.cfg
        assert cfg.window is not None and cfg.function is not None
        self.kind = cfg.function
        self.width = int(cfg.window * 1e9)
        self.aligned = cfg.aligned
        self.linear = cfg.interpolation == "linear"
        self.min_coverage = cfg.min_coverage
        self.k, self.off = plan.factors[0]
        self.pts: deque[Point] = deque()
        self.start: int | None = None  # aligned: the open window's start
        self.last_coverage = 0.0

    def push(self, i: int, s: Sample) -> None:
        p = point(s, self.k, self.off)
        if self.pts and p.ts < self.pts[-1].ts:
            self.out_of_order += 1
            return
        if self.aligned:
            if self.start is None:
                self.start = p.ts - p.ts % self.width
            self._close_until(p.ts)
            self.pts.append(p)
            return
        self.pts.append(p)
        start = p.ts - self.width
        pts = self.pts
        while len(pts) >= 2 and pts[1].ts <= start:
            pts.popleft()  # keep one sample at or before the start: the value in effect there
        self.pending.append(self._result(start, p.ts, closed=True, ts=p.ts))

    def _close_until(self, ts: int) -> None:
        assert self.start is not None
        if ts - self.start >= self.width * MAX_WINDOWS_AT_ONCE:
            self.start = ts - ts % self.width - self.width * (MAX_WINDOWS_AT_ONCE - 1)
        while ts >= self.start + self.width:
            end = self.start + self.width
            self.pending.append(self._result(self.start, end, closed=False, ts=self.start))
            pts = self.pts
            while len(pts) >= 2 and pts[1].ts <= end:
                pts.popleft()
            self.start = end

    def _result(self, start: int, end: int, *, closed: bool, ts: int) -> Out:
        agg = aggregate(self.kind, self.pts, start, end, linear=self.linear, min_coverage=self.min_coverage,
                        closed=closed)  # fmt: skip
        self.last_coverage = agg.coverage
        return (ts, agg.value, agg.status, agg.score)

    def tick(self, now_ns: int) -> list[Out]:
        if not self.aligned or self.start is None or now_ns < self.start + self.width + ALIGNED_GRACE_NS:
            return []
        self._close_until(now_ns - ALIGNED_GRACE_NS)
        return self.evaluate()


def make(plan: TagPlan, events: Events) -> Calc:
    fn = plan.cfg.function
    if plan.expr is not None:
        return ExprCalc(plan, events)
    if fn in ("median", "mean"):
        return VoteCalc(plan, events)
    if fn == "totalizer":
        return TotalizerCalc(plan, events)
    if fn == "rate":
        return RateCalc(plan, events)
    if fn == "ema":
        return EmaCalc(plan, events)
    return WindowCalc(plan, events)
